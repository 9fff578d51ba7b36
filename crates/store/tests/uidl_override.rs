//! UIDL overrides and the import API on real Maildirs: messages keep the
//! UIDL another server gave them, through sessions, the listing cache, the
//! restore area and repeated imports.

// These tests plant files the way a crash or another program would.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pobox_identity::Authenticated;
use pobox_store::MailstoreAdmin as _;
use pobox_store::quota::{Quota, QuotaConfig};
use pobox_store::retention::{Policy, RetentionConfig};
use pobox_store::{
    AssignOutcome, ImportOutcome, MailLocation, MaildirStore, Mailstore, StoreError,
};

struct Fixture {
    dir: tempfile::TempDir,
    location: MailLocation,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let location = MailLocation::new(format!("{}/{{user}}", dir.path().display())).unwrap();
        Fixture { dir, location }
    }

    fn store(&self) -> MaildirStore {
        MaildirStore::new(self.location.clone())
    }

    fn root(&self, user: &str) -> PathBuf {
        self.dir.path().join(user)
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn msg(i: usize) -> Vec<u8> {
    format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes()
}

/// (UIDL, size) as a POP3 session sees them.
fn session_view(store: &MaildirStore, user: &str) -> Vec<(String, u64)> {
    let mb = store.open(&Authenticated::for_tests(user)).unwrap();
    mb.messages()
        .iter()
        .map(|m| (m.uidl.as_str().to_owned(), m.size))
        .collect()
}

fn uidls(store: &MaildirStore, user: &str) -> Vec<String> {
    let mut v: Vec<String> = session_view(store, user)
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    v.sort();
    v
}

#[test]
fn imported_messages_keep_their_uidl_and_time_and_a_rerun_stores_nothing() {
    let f = Fixture::new();
    let store = f.store();
    // A Dovecot 2.3 UIDL (a valid base name), one with characters a base
    // cannot hold, and one at the 70-character limit.
    let long = "u".repeat(70);
    let given = ["000000015f5e1000", "x/y:z,1", long.as_str()];
    let mut import = store.begin_import("alice").unwrap();
    for (i, uidl) in given.iter().enumerate() {
        let out = import
            .import(uidl, at(1_600_000_000 + i as u64), &mut &msg(i)[..])
            .unwrap();
        match out {
            ImportOutcome::Imported(d) => {
                assert_eq!(d.uidl.as_str(), *uidl);
                assert_eq!(
                    fs::metadata(&d.location).unwrap().modified().unwrap(),
                    at(1_600_000_000 + i as u64)
                );
            }
            other => panic!("{other:?}"),
        }
    }
    drop(import);
    let view = session_view(&store, "alice");
    assert_eq!(
        view.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        given.to_vec(),
        "listed in received order with the given UIDLs"
    );
    assert_eq!(view[0].1, msg(0).len() as u64, "POP3 size is the CRLF size");
    // Only the UIDL that cannot be a file name needed an override line.
    let lines = fs::read_to_string(f.root("alice").join("pobox-uidls")).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(lines.starts_with("x/y:z,1 pobox-import-"));

    // Again, with a fresh store (as a second `pobox import` run would).
    let store = f.store();
    let mut import = store.begin_import("alice").unwrap();
    for (i, uidl) in given.iter().enumerate() {
        assert_eq!(
            import.import(uidl, at(1), &mut &msg(i)[..]).unwrap(),
            ImportOutcome::AlreadyPresent
        );
    }
    drop(import);
    assert_eq!(session_view(&store, "alice"), view);
    assert_eq!(
        store
            .import_message("alice", given[1], at(1), &mut &msg(9)[..])
            .unwrap(),
        ImportOutcome::AlreadyPresent
    );
}

#[test]
fn invalid_and_duplicate_uidls_are_refused() {
    let f = Fixture::new();
    let store = f.store();
    for bad in ["", "has space", &"u".repeat(71), "caf\u{e9}"] {
        let err = store
            .import_message("alice", bad, at(1), &mut &msg(0)[..])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::UidlRefused { .. }),
            "{bad:?}: {err:?}"
        );
    }
    assert!(session_view(&store, "alice").is_empty(), "nothing stored");

    let a = store.deliver("alice", &mut &msg(1)[..]).unwrap();
    let b = store.deliver("alice", &mut &msg(2)[..]).unwrap();
    let base_b = b.uidl.as_str().to_owned();
    // b's UIDL as a's override: refused, both keep theirs.
    let err = store
        .assign_uidl("alice", a.uidl.as_str(), &base_b)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::UidlRefused { reason, .. } if reason.contains(&base_b)),
        "{err:?}"
    );
    // An import under a UIDL already present stores nothing.
    assert_eq!(
        store
            .import_message("alice", &base_b, at(1), &mut &msg(3)[..])
            .unwrap(),
        ImportOutcome::AlreadyPresent
    );
    assert_eq!(session_view(&store, "alice").len(), 2);
    // Unknown base.
    assert!(matches!(
        store.assign_uidl("alice", "no-such-base", "u1"),
        Err(StoreError::Vanished(_))
    ));
}

#[test]
fn assigned_uidls_survive_new_to_cur_and_sessions_and_reruns() {
    let f = Fixture::new();
    let store = f.store();
    let d = store.deliver("alice", &mut &msg(1)[..]).unwrap();
    let base = d.uidl.as_str().to_owned();
    assert_eq!(
        store
            .assign_uidl("alice", &base, "00000001663a1b2c")
            .unwrap(),
        AssignOutcome::Assigned
    );
    assert_eq!(
        store
            .assign_uidl("alice", &base, "00000001663a1b2c")
            .unwrap(),
        AssignOutcome::AlreadyAssigned
    );
    assert_eq!(uidls(&store, "alice"), ["00000001663a1b2c"]);
    // A session that commits moves new/ -> cur/ (flags change the name).
    store.open(&Authenticated::for_tests("alice")).unwrap().commit(&[], &[]).unwrap();
    assert!(fs::read_dir(f.root("alice").join("cur")).unwrap().count() == 1);
    assert_eq!(uidls(&store, "alice"), ["00000001663a1b2c"]);
    let import = store.begin_import("alice").unwrap();
    assert_eq!(import.uidl_of(base.as_ref()), Some("00000001663a1b2c"));
    assert!(import.contains("00000001663a1b2c"));
    assert!(!import.contains(&base));
}

#[test]
fn an_override_equal_to_another_messages_base_name_keeps_uidls_unique() {
    let f = Fixture::new();
    let store = f.store();
    let a = store.deliver("alice", &mut &msg(1)[..]).unwrap();
    // Planted by hand (the API refuses it): b is given a's base as UIDL.
    let b = store.deliver("alice", &mut &msg(2)[..]).unwrap();
    fs::write(
        f.root("alice").join("pobox-uidls"),
        format!("{} {}\n", a.uidl.as_str(), b.uidl.as_str()),
    )
    .unwrap();
    let seen = uidls(&store, "alice");
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0], seen[1], "UIDLs stay unique: {seen:?}");
    assert!(
        seen.contains(&a.uidl.as_str().to_owned()),
        "the override wins"
    );
}

#[test]
fn a_torn_last_line_is_ignored_and_does_not_swallow_the_next() {
    let f = Fixture::new();
    let store = f.store();
    let a = store.deliver("alice", &mut &msg(1)[..]).unwrap();
    let b = store.deliver("alice", &mut &msg(2)[..]).unwrap();
    // A crash in the middle of an append.
    fs::write(
        f.root("alice").join("pobox-uidls"),
        format!("torn {}", a.uidl.as_str()),
    )
    .unwrap();
    assert!(
        uidls(&store, "alice").contains(&a.uidl.as_str().to_owned()),
        "torn line not applied"
    );
    store
        .assign_uidl("alice", b.uidl.as_str(), "uidl-b")
        .unwrap();
    store
        .assign_uidl("alice", a.uidl.as_str(), "uidl-a")
        .unwrap();
    assert_eq!(uidls(&store, "alice"), ["uidl-a", "uidl-b"]);
}

#[test]
fn the_listing_cache_sees_a_new_override() {
    let f = Fixture::new();
    let store = f.store().with_listing_cache_limits(1, 1000);
    let d = store.deliver("alice", &mut &msg(1)[..]).unwrap();
    // Let the directories settle so the listing is cached.
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(uidls(&store, "alice"), [d.uidl.as_str()]);
    assert_eq!(uidls(&store, "alice"), [d.uidl.as_str()]);
    assert_eq!(store.listing_cache_stats().hits, 1, "served from the cache");
    // The same store (shared cache) assigns: new/ and cur/ do not change.
    store
        .assign_uidl("alice", d.uidl.as_str(), "imported-1")
        .unwrap();
    assert_eq!(uidls(&store, "alice"), ["imported-1"]);
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(uidls(&store, "alice"), ["imported-1"]);
    store
        .assign_uidl("alice", d.uidl.as_str(), "imported-2")
        .unwrap();
    assert_eq!(
        uidls(&store, "alice"),
        ["imported-2"],
        "a cached listing with the old override is not reused"
    );
}

#[test]
fn a_message_keeps_its_imported_uidl_through_the_restore_area() {
    let f = Fixture::new();
    let store = f.store().with_retention(RetentionConfig {
        default: Policy {
            restore_days: 7,
            ..Policy::default()
        },
        users: HashMap::new(),
    });
    store
        .import_message("alice", "a:1", at(1_600_000_000), &mut &msg(1)[..])
        .unwrap();
    store
        .import_message(
            "alice",
            "00000002aaaaaaaa",
            at(1_600_000_001),
            &mut &msg(2)[..],
        )
        .unwrap();
    store.open(&Authenticated::for_tests("alice")).unwrap().commit(&[0, 1], &[]).unwrap();
    assert!(uidls(&store, "alice").is_empty());
    let mut removed: Vec<String> = store
        .removed_messages("alice")
        .unwrap()
        .into_iter()
        .map(|r| r.uidl)
        .collect();
    removed.sort();
    assert_eq!(removed, ["00000002aaaaaaaa", "a:1"]);
    store.restore("alice", None, SystemTime::now()).unwrap();
    assert_eq!(uidls(&store, "alice"), ["00000002aaaaaaaa", "a:1"]);
}

#[test]
fn imports_are_counted_in_the_quota_bookkeeping_but_not_limited() {
    let f = Fixture::new();
    let quota = Quota {
        bytes: Some(10),
        messages: None,
    };
    let store = f.store().with_quota(QuotaConfig {
        default: quota,
        users: HashMap::new(),
    });
    let (before, _) = store.usage("alice").unwrap();
    assert_eq!(before.messages, 0);
    // maildirsize now exists; imports append to it.
    for i in 0..3 {
        store
            .import_message(
                "alice",
                &format!("u{i}"),
                at(1_600_000_000),
                &mut &msg(i)[..],
            )
            .unwrap();
    }
    let text = fs::read_to_string(f.root("alice").join("maildirsize")).unwrap();
    assert_eq!(text.lines().count(), 1 + 1 + 3, "{text}");
    let (after, _) = store.usage("alice").unwrap();
    assert_eq!(after.messages, 3);
    assert_eq!(
        after.bytes,
        (0..3).map(|i| msg(i).len() as u64).sum::<u64>()
    );
}

#[test]
fn importing_refuses_a_maildrop_a_session_holds() {
    let f = Fixture::new();
    let store = f.store();
    let session = store.open(&Authenticated::for_tests("alice")).unwrap();
    assert!(matches!(
        store.begin_import("alice"),
        Err(StoreError::InUse)
    ));
    drop(session);
    store.begin_import("alice").unwrap();
}

#[test]
fn the_uidl_listing_takes_no_lock_and_creates_nothing() {
    let f = Fixture::new();
    let store = f.store();
    assert_eq!(store.uidl_listing("nobody").unwrap(), None);
    assert!(!f.root("nobody").exists(), "nothing created");
    store
        .import_message("alice", "x y", at(1), &mut &msg(0)[..])
        .unwrap_err();
    store
        .import_message("alice", "u-1", at(1), &mut &msg(0)[..])
        .unwrap();
    let _session = store.open(&Authenticated::for_tests("alice")).unwrap();
    assert_eq!(
        store.uidl_listing("alice").unwrap(),
        Some(vec![("u-1".to_owned(), msg(0).len() as u64)])
    );
}

#[test]
fn a_linked_overrides_file_is_refused_and_its_target_untouched() {
    let f = Fixture::new();
    let store = f.store();
    let d = store.deliver("alice", &mut &msg(1)[..]).unwrap();
    let canary = f.dir.path().join("canary");
    fs::write(&canary, "precious\n").unwrap();
    std::os::unix::fs::symlink(&canary, f.root("alice").join("pobox-uidls")).unwrap();
    assert!(matches!(
        store.open(&Authenticated::for_tests("alice")).err(),
        Some(StoreError::Unsafe { .. })
    ));
    assert!(matches!(
        store.assign_uidl("alice", d.uidl.as_str(), "u1"),
        Err(StoreError::Unsafe { .. })
    ));
    assert_eq!(fs::read_to_string(&canary).unwrap(), "precious\n");
}
