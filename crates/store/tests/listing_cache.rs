//! The listing cache of `MaildirStore::open`, on real maildrops: when a
//! listing is reused, and that every change to `new/` or `cur/` is seen.
//!
//! A listing is only kept when both directories were unchanged for two
//! seconds before the scan, so most tests wait that long once
//! ([`settle`]); they run in parallel. Creating thousands of files is
//! slow on some machines, so the tests lower the size threshold to
//! [`MIN`], except the one that checks the default.

// These tests play other programs changing a Maildir behind the store's
// back (renaming a file to change its flags).
#![allow(clippy::disallowed_methods)]

use std::fs::{self, File, FileTimes};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, SystemTime};

use pobox_identity::Authenticated;
use pobox_store::maildir::{LISTING_CACHE_DEFAULT_MAX, LISTING_CACHE_MIN};
use pobox_store::{ListingCacheStats, MailLocation, Mailbox, Maildir, MaildirStore, Mailstore};

/// The size threshold of [`Fixture::store`].
const MIN: usize = 16;
/// Big enough to be cached by [`Fixture::store`].
const BIG: usize = 40;

struct Fixture {
    _dir: tempfile::TempDir,
    location: MailLocation,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let location = MailLocation::new(format!("{}/{{user}}/Maildir", root.display())).unwrap();
        Fixture {
            _dir: dir,
            location,
            root,
        }
    }

    /// A store caching maildrops of at least [`MIN`] messages.
    fn store(&self) -> MaildirStore {
        MaildirStore::new(self.location.clone())
            .with_listing_cache_limits(MIN, LISTING_CACHE_DEFAULT_MAX)
    }

    fn maildir(&self, user: &str) -> PathBuf {
        self.root.join(user).join("Maildir")
    }

    /// A maildrop of `n` messages in `cur/` with Dovecot-style names, as
    /// a migrated or long-kept maildrop looks.
    fn populate(&self, user: &str, n: usize) -> PathBuf {
        let path = self.maildir(user);
        Maildir::open_or_create(&path).unwrap();
        for i in 0..n {
            write_message(
                &path.join("cur"),
                &format!("{}.M{i}P7.testhost", 1_700_000_000 + i),
                ":2,",
            );
        }
        path
    }
}

const BODY: &[u8] = b"Subject: x\n\nbody\n";

/// Writes a message named `<base>,S=..,W=..<info>` into `dir`.
fn write_message(dir: &Path, base: &str, info: &str) -> PathBuf {
    let wire = BODY.len() + BODY.iter().filter(|&&b| b == b'\n').count();
    let path = dir.join(format!("{base},S={},W={wire}{info}", BODY.len()));
    fs::write(&path, BODY).unwrap();
    path
}

/// Waits until the directories written so far count as settled.
fn settle() {
    sleep(Duration::from_millis(2_100));
}

/// What a snapshot shows, for comparisons (UIDL, size, key, time).
fn listing(mailbox: &dyn Mailbox) -> Vec<(String, u64, String, SystemTime)> {
    mailbox
        .messages()
        .iter()
        .map(|m| {
            (
                m.uidl.as_str().to_owned(),
                m.size,
                m.key.to_string(),
                m.received,
            )
        })
        .collect()
}

/// A fresh scan of the maildrop, bypassing any cache.
fn fresh(path: &Path) -> Vec<(String, u64, String, SystemTime)> {
    Maildir::open_or_create(path)
        .unwrap()
        .scan()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m.uidl.as_str().to_owned(),
                m.size,
                m.key.to_string(),
                m.received,
            )
        })
        .collect()
}

fn open_and_list(store: &MaildirStore, user: &str) -> Vec<(String, u64, String, SystemTime)> {
    listing(&*store.open(&Authenticated::for_tests(user)).unwrap())
}

#[test]
fn a_settled_big_maildrop_is_listed_once_and_then_served_from_the_cache() {
    let f = Fixture::new();
    let path = f.populate("big", BIG);
    settle();
    let store = f.store();
    let first = open_and_list(&store, "big");
    assert_eq!(first.len(), BIG);
    assert_eq!(
        store.listing_cache_stats(),
        ListingCacheStats {
            hits: 0,
            misses: 1,
            stored: 1,
            evicted: 0,
            maildrops: 1,
            messages: BIG
        }
    );
    let second = open_and_list(&store, "big");
    assert_eq!(second, first, "same snapshot");
    assert_eq!(second, fresh(&path), "and the same as a scan");
    assert_eq!(store.listing_cache_stats().hits, 1);

    // A session that ends with QUIT and changes nothing (all in cur/,
    // nothing deleted) keeps the listing, as does one that just ends.
    let mailbox = store.open(&Authenticated::for_tests("big")).unwrap();
    assert_eq!(mailbox.commit(&[], &[]).unwrap().removed, 0);
    drop(store.open(&Authenticated::for_tests("big")).unwrap());
    let stats = store.listing_cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.stored), (3, 1, 1));

    // Clones share the cache; a store with the cache off never uses it.
    assert_eq!(open_and_list(&store.clone(), "big"), first);
    assert_eq!(store.listing_cache_stats().hits, 4);
    let off = f.store().with_listing_cache_limits(MIN, 0);
    assert_eq!(open_and_list(&off, "big"), first);
    assert_eq!(off.listing_cache_stats(), ListingCacheStats::default());
}

#[test]
fn a_maildrop_changed_within_two_seconds_of_the_scan_is_not_cached() {
    let f = Fixture::new();
    f.populate("busy", BIG);
    let store = f.store();
    // cur/ was written just now: every open scans, and nothing is kept.
    for _ in 0..3 {
        assert_eq!(open_and_list(&store, "busy").len(), BIG);
    }
    let stats = store.listing_cache_stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.stored, stats.maildrops),
        (0, 3, 0, 0)
    );

    // Once the maildrop has been still long enough, it is kept.
    settle();
    open_and_list(&store, "busy");
    open_and_list(&store, "busy");
    let stats = store.listing_cache_stats();
    assert_eq!((stats.hits, stats.stored), (1, 1));
}

#[test]
fn by_default_maildrops_under_1024_messages_are_not_cached() {
    assert_eq!(LISTING_CACHE_MIN, 1024);
    let f = Fixture::new();
    f.populate("small", LISTING_CACHE_MIN - 1);
    f.populate("big", LISTING_CACHE_MIN);
    settle();
    let store = MaildirStore::new(f.location.clone());
    for user in ["small", "big", "small", "big"] {
        open_and_list(&store, user);
    }
    let stats = store.listing_cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.stored), (1, 3, 1));
    assert_eq!((stats.maildrops, stats.messages), (1, LISTING_CACHE_MIN));
}

/// One way of changing a cached maildrop behind the store's back, run
/// right after the listing was cached (well within the same second).
type Change = fn(&MaildirStore, &str, &Path);

#[test]
fn every_change_to_new_or_cur_is_seen_by_the_next_open() {
    let changes: &[(&str, Change)] = &[
        ("file added to cur/", |_, _, path| {
            write_message(&path.join("cur"), "1800000000.M1P7.other", ":2,");
        }),
        ("file added to new/", |_, _, path| {
            write_message(&path.join("new"), "1800000000.M2P7.other", "");
        }),
        ("file removed from cur/", |_, _, path| {
            let victim = fs::read_dir(path.join("cur"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            fs::remove_file(victim.path()).unwrap();
        }),
        ("flags changed in cur/ (a rename)", |_, _, path| {
            let victim = fs::read_dir(path.join("cur"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            let mut flagged = victim.clone().into_os_string();
            flagged.push("S");
            fs::rename(&victim, flagged).unwrap();
        }),
        ("a delivery", |store, user, _| {
            store
                .deliver(user, &mut &b"Subject: new\n\nhello\n"[..])
                .unwrap();
        }),
        (
            "file added, then cur/'s mtime set back to what it was",
            |_, _, path| {
                let cur = path.join("cur");
                let before = fs::metadata(&cur).unwrap().modified().unwrap();
                write_message(&cur, "1800000000.M3P7.sneaky", ":2,");
                File::open(&cur)
                    .unwrap()
                    .set_times(FileTimes::new().set_modified(before))
                    .unwrap();
                // Only the ctime (which cannot be set) gives it away.
                assert_eq!(fs::metadata(&cur).unwrap().modified().unwrap(), before);
            },
        ),
        ("a session deleting a message", |store, user, _| {
            let mailbox = store.open(&Authenticated::for_tests(user)).unwrap();
            assert_eq!(mailbox.commit(&[0], &[]).unwrap().removed, 1);
        }),
        (
            "a message moved new/ -> cur/ by another program",
            |_, _, path| {
                // populate() put one message in new/ for this case.
                let victim = fs::read_dir(path.join("new"))
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap();
                let mut seen = path.join("cur").join(victim.file_name()).into_os_string();
                seen.push(":2,");
                fs::rename(victim.path(), seen).unwrap();
            },
        ),
    ];
    let f = Fixture::new();
    let mut paths = Vec::new();
    for (i, (what, _)) in changes.iter().enumerate() {
        let path = f.populate(&format!("u{i}"), BIG);
        if what.contains("new/ -> cur/") {
            write_message(&path.join("new"), "1700500000.M9P7.testhost", "");
        }
        paths.push(path);
    }
    settle();
    let store = f.store();
    for (i, (what, change)) in changes.iter().enumerate() {
        let user = format!("u{i}");
        let cached = open_and_list(&store, &user);
        let hits = store.listing_cache_stats().hits;
        assert_eq!(open_and_list(&store, &user), cached, "{what}: cached");
        assert_eq!(
            store.listing_cache_stats().hits,
            hits + 1,
            "{what}: served from the cache"
        );

        change(&store, &user, &paths[i]);

        let before = store.listing_cache_stats();
        let after = open_and_list(&store, &user);
        assert_ne!(after, cached, "{what}: the change is seen");
        assert_eq!(after, fresh(&paths[i]), "{what}: as a fresh scan shows it");
        let stats = store.listing_cache_stats();
        assert_eq!(
            (stats.hits, stats.misses),
            (before.hits, before.misses + 1),
            "{what}: not from the cache"
        );
    }
}

#[test]
fn retrieval_times_from_the_log_apply_to_cached_snapshots_without_changing_the_cache() {
    let f = Fixture::new();
    let path = f.populate("r", BIG);
    settle();
    let store = f.store();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let t1 = t0 + Duration::from_secs(60);

    // The first session is the scan that gets cached; it retrieves two.
    let mut mailbox = store.open(&Authenticated::for_tests("r")).unwrap();
    assert!(mailbox.messages().iter().all(|m| m.retrieved.is_none()));
    mailbox.record_retrievals(&[0, 5], t0).unwrap();
    assert_eq!(mailbox.messages()[0].retrieved, Some(t0));
    drop(mailbox);

    // The next one is served from the cache, with the log applied.
    let mut mailbox = store.open(&Authenticated::for_tests("r")).unwrap();
    assert_eq!(store.listing_cache_stats().hits, 1);
    let retrieved: Vec<_> = mailbox.messages().iter().map(|m| m.retrieved).collect();
    assert_eq!(retrieved[0], Some(t0));
    assert_eq!(retrieved[5], Some(t0));
    assert_eq!(retrieved.iter().filter(|r| r.is_some()).count(), 2);
    // The first retrieval wins; a new one is added.
    mailbox.record_retrievals(&[0, 7], t1).unwrap();
    drop(mailbox);
    let mailbox = store.open(&Authenticated::for_tests("r")).unwrap();
    assert_eq!(store.listing_cache_stats().hits, 2);
    assert_eq!(mailbox.messages()[0].retrieved, Some(t0));
    assert_eq!(mailbox.messages()[7].retrieved, Some(t1));
    drop(mailbox);

    // The cached listing itself never carried those times: without the
    // log (it is advisory), a cached snapshot shows none.
    fs::remove_file(path.join("pobox-retention.log")).unwrap();
    let mailbox = store.open(&Authenticated::for_tests("r")).unwrap();
    assert_eq!(store.listing_cache_stats().hits, 3);
    assert!(mailbox.messages().iter().all(|m| m.retrieved.is_none()));
}

#[test]
fn the_cache_stays_within_its_bound_dropping_the_least_recently_used() {
    let f = Fixture::new();
    for user in ["a", "b", "c"] {
        f.populate(user, BIG);
    }
    settle();
    // Room for two of the three maildrops.
    let store = f.store().with_listing_cache_limits(MIN, 2 * BIG + 10);
    open_and_list(&store, "a");
    open_and_list(&store, "b");
    open_and_list(&store, "a"); // a is now used more recently than b
    assert_eq!(store.listing_cache_stats().hits, 1);
    open_and_list(&store, "c"); // evicts b
    let stats = store.listing_cache_stats();
    assert_eq!(
        (stats.stored, stats.evicted, stats.maildrops, stats.messages),
        (3, 1, 2, 2 * BIG)
    );
    open_and_list(&store, "a");
    open_and_list(&store, "c");
    assert_eq!(store.listing_cache_stats().hits, 3, "a and c stayed");
    open_and_list(&store, "b");
    let stats = store.listing_cache_stats();
    assert_eq!(stats.hits, 3, "b had been dropped");
    assert_eq!(
        (stats.evicted, stats.maildrops, stats.messages),
        (2, 2, 2 * BIG)
    );

    // A maildrop larger than the whole bound is never kept.
    let tiny = f.store().with_listing_cache_limits(MIN, BIG - 1);
    open_and_list(&tiny, "a");
    open_and_list(&tiny, "a");
    let stats = tiny.listing_cache_stats();
    assert_eq!((stats.hits, stats.stored, stats.messages), (0, 0, 0));
}
