//! A mail user who owns their Maildir (home-directory Maildirs) can plant
//! symbolic links in it. Whatever they plant, the store must not read,
//! write, move or unlink anything outside the maildrop (issue 17,
//! finding 1). Each test builds a canary tree outside the maildrop, plants
//! links into it, runs store operations, and checks the canary is exactly
//! as before: names, types, contents, sizes, modes, owners and mtimes.

// These tests play the hostile mail user, so they use the file APIs the
// workspace reserves for `store/src/maildir/`.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, FileTimes};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pobox_identity::Authenticated;
use pobox_store::MailstoreAdmin as _;
use pobox_store::quota::{Quota, QuotaConfig};
use pobox_store::retention::{Days, Policy, RetentionConfig};
use pobox_store::{MailLocation, MaildirStore, Mailstore};

/// What the canary files hold: any read that returns it is a leak.
const SECRET: &[u8] = b"CANARY secret, root only\n";
/// A name the scan would take for a message (Dovecot's S= and W=).
const CANARY_MSG: &str = "1000000000.M1P1.canary,S=25,W=26";
const DAY: Duration = Duration::from_secs(86_400);

/// One entry of a canary snapshot.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    len: u64,
    mode: u32,
    uid: u32,
    mtime: (i64, i64),
    contents: Option<Vec<u8>>,
}

/// Everything under `root` (itself included), not following links.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let kind = if m.is_dir() {
            "dir"
        } else if m.file_type().is_symlink() {
            "link"
        } else {
            "file"
        };
        let contents = (kind == "file").then(|| fs::read(&p).unwrap());
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        out.insert(
            p,
            Entry { kind, len: m.len(), mode: m.mode(), uid: m.uid(), mtime: (m.mtime(), m.mtime_nsec()), contents },
        );
    }
    out
}

/// Fails naming the first entries that differ (a whole snapshot is too
/// long to read in a failure message).
fn assert_unchanged(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>, ctx: &str) {
    let mut diff = Vec::new();
    for (p, e) in before {
        match after.get(p) {
            None => diff.push(format!("{} removed", p.display())),
            Some(a) if a != e => diff.push(format!("{} changed: {e:?} -> {a:?}", p.display())),
            Some(_) => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        diff.push(format!("{} created", p.display()));
    }
    assert!(diff.is_empty(), "{ctx}: the canary tree changed:\n{}", diff.join("\n"));
}

/// Sets `path`'s mtime and atime two days back: old enough for the tmp/
/// reaper and for any expiry policy to want it.
fn age(path: &Path) {
    let old = SystemTime::now() - 2 * DAY;
    let f = File::open(path).unwrap();
    f.set_times(FileTimes::new().set_accessed(old).set_modified(old)).unwrap();
}

fn write_private(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    age(path);
}

/// `outside/maildir`: a complete Maildir full of canary messages (new/,
/// cur/, tmp/, a restore area), with a `maildirsize` and a retention log;
/// `outside/file`: a victim file. All 0600/0700.
fn canary(top: &Path) -> PathBuf {
    let outside = top.join("outside");
    let md = outside.join("maildir");
    for d in ["tmp", "new", "cur", ".pobox-deleted/cur", ".pobox-deleted/new", ".pobox-deleted/tmp"] {
        fs::create_dir_all(md.join(d)).unwrap();
    }
    write_private(&md.join("new").join(CANARY_MSG), SECRET);
    write_private(&md.join("cur").join(format!("{CANARY_MSG}:2,S")), SECRET);
    write_private(&md.join("tmp").join("1000000000.M9P9.canary"), SECRET);
    write_private(&md.join(".pobox-deleted/cur").join(CANARY_MSG), SECRET);
    write_private(&md.join("maildirsize"), b"1000S\n25 1\n");
    write_private(&md.join("pobox-retention.log"), b"R 1000000000 1000000000.M1P1.canary\n");
    write_private(&outside.join("file"), SECRET);
    for d in ["tmp", "new", "cur", ".pobox-deleted/cur", ".pobox-deleted", ""] {
        fs::set_permissions(md.join(d), fs::Permissions::from_mode(0o700)).unwrap();
        age(&md.join(d));
    }
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).unwrap();
    outside
}

/// A plain Maildir for `user` under `mail/` with one message in `new/`
/// and one in `cur/`, written the way another program would.
fn maildir(mail: &Path, user: &str) -> PathBuf {
    let md = mail.join(user);
    for d in ["tmp", "new", "cur"] {
        fs::create_dir_all(md.join(d)).unwrap();
    }
    fs::write(md.join("new").join(format!("1700000000.M1P1.{user},S=9,W=10")), format!("{user} new\n")).unwrap();
    fs::write(md.join("cur").join(format!("1700000001.M1P1.{user},S=9,W=10:2,S")), format!("{user} cur\n")).unwrap();
    md
}

fn location(mail: &Path) -> MailLocation {
    MailLocation::new(format!("{}/{{user}}", mail.display())).unwrap()
}

/// The two stores every case runs against: classic POP3 (removal is
/// final, no quota) and one with a restore area, quota and EXPIRE 0.
fn stores(mail: &Path) -> [MaildirStore; 2] {
    let keep = Policy { retrieved: Days::After(0), max_age: Days::After(1), restore_days: 7, login_delay_secs: 0 };
    [
        MaildirStore::new(location(mail)),
        MaildirStore::new(location(mail))
            .with_retention(RetentionConfig { default: keep, users: HashMap::new() })
            .with_quota(QuotaConfig {
                default: Quota { bytes: Some(1_000_000), messages: Some(1000) },
                users: HashMap::new(),
            }),
    ]
}

/// Every store operation a session, a delivery or an admin command
/// performs, on `user`. Returns what was read from message files, and
/// the error of `open` if it failed.
fn everything(store: &MaildirStore, user: &str) -> (Vec<u8>, Option<String>) {
    let now = SystemTime::now();
    let mut read = Vec::new();
    let _ = store.deliver(user, &mut &b"Subject: d\n\nbody\n"[..]);
    let _ = store.deliver_to_folder(user, "Junk", &mut &b"Subject: j\n\nbody\n"[..]);
    let _ = store.usage(user);
    if let Ok(list) = store.inspect(user) {
        for m in &list {
            if let Ok(h) = store.head(user, m, 4096) {
                read.extend(h);
            }
        }
    }
    let _ = store.removed_messages(user);
    let _ = store.release(user, "Junk", "1000000000.M1P1.canary");
    let open_error = match store.open(&Authenticated::for_tests(user)) {
        Ok(mut mb) => {
            let n = mb.messages().len();
            for i in 0..n {
                if let Some(bytes) = mb.read_if_cached(i, 1 << 20) {
                    read.extend(bytes);
                }
                if let Ok(mut r) = mb.open_message(i) {
                    let _ = r.read_to_end(&mut read);
                }
            }
            let all: Vec<usize> = (0..n).collect();
            let _ = mb.record_retrievals(&all, now);
            let _ = mb.commit(&all, &[]);
            None
        }
        Err(e) => Some(e.to_string()),
    };
    let _ = store.expire(user, now + 400 * DAY, false);
    let _ = store.restore(user, None, now);
    let _ = store.purge(user, now);
    let _ = store.expire(user, now + 400 * DAY, false);
    (read, open_error)
}

/// Where a link is planted, relative to eve's Maildir, and what it
/// points to, relative to the canary tree.
struct Case {
    name: &'static str,
    link: &'static str,
    target: &'static str,
    /// `open` must fail, naming the link.
    refused: bool,
}

const CASES: &[Case] = &[
    Case { name: "maildir root", link: "", target: "maildir", refused: true },
    Case { name: "tmp", link: "tmp", target: "maildir/new", refused: true },
    Case { name: "new", link: "new", target: "maildir/new", refused: true },
    Case { name: "cur", link: "cur", target: "maildir/cur", refused: true },
    Case { name: "folder", link: ".Junk", target: "maildir", refused: false },
    Case { name: "restore area", link: ".pobox-deleted", target: "maildir", refused: false },
    Case { name: "restore area cur", link: ".pobox-deleted/cur", target: "maildir/cur", refused: false },
    Case { name: "maildirsize", link: "maildirsize", target: "file", refused: false },
    // The log is refused rather than ignored or replaced (see retention.rs).
    Case { name: "retention log", link: "pobox-retention.log", target: "file", refused: true },
    Case { name: "message in new", link: "new/1700000002.M1P1.x,S=25,W=26", target: "file", refused: false },
    Case { name: "message in cur", link: "cur/1700000003.M1P1.x,S=25,W=26:2,", target: "file", refused: false },
    Case { name: "dangling new", link: "new", target: "nonexistent", refused: true },
];

#[test]
fn symlink_matrix_touches_nothing_outside_the_maildrop() {
    for case in CASES {
        for (which, store) in ["classic", "restore+quota+expire"].iter().zip(0..2) {
            let top = tempfile::tempdir().unwrap();
            let outside = canary(top.path());
            let mail = top.path().join("mail");
            let eve = maildir(&mail, "eve");
            if case.name == "restore area cur" {
                for d in ["new", "tmp"] {
                    fs::create_dir_all(eve.join(".pobox-deleted").join(d)).unwrap();
                }
            }
            let link = if case.link.is_empty() { eve.clone() } else { eve.join(case.link) };
            if link.is_dir() {
                fs::remove_dir_all(&link).unwrap();
            }
            symlink(outside.join(case.target), &link).unwrap();
            let before = snapshot(&outside);

            let store = &stores(&mail)[store];
            let (read, open_error) = everything(store, "eve");

            let ctx = format!("case {:?} ({which})", case.name);
            assert_unchanged(&before, &snapshot(&outside), &ctx);
            assert!(
                !read.windows(SECRET.len()).any(|w| w == SECRET),
                "{ctx}: a canary file was read through the link"
            );
            if case.refused {
                let err = open_error.unwrap_or_else(|| panic!("{ctx}: open succeeded"));
                assert!(err.contains(&link.display().to_string()), "{ctx}: the error does not name {}: {err}", link.display());
            } else {
                assert_eq!(open_error, None, "{ctx}: a link beside the mail must not lock the user out");
            }
            if case.refused {
                // A refused maildrop is left exactly as the user made it.
                assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "{ctx}: link removed");
            }
        }
    }
}

/// The reproduction from issue 17: in eve's Maildir `new` points at a
/// root-only directory and `cur` at alice's `new/`. RETR, TOP, DELE+QUIT
/// and a delivery must neither read, unlink nor move anything there.
#[test]
fn eve_links_new_to_a_secret_dir_and_cur_to_alices_new() {
    let top = tempfile::tempdir().unwrap();
    let mail = top.path().join("mail");
    let alice = maildir(&mail, "alice");
    let eve = maildir(&mail, "eve");
    let secret = top.path().join("secret_dir");
    fs::create_dir(&secret).unwrap();
    write_private(&secret.join(CANARY_MSG), SECRET);
    fs::remove_dir_all(eve.join("new")).unwrap();
    fs::remove_dir_all(eve.join("cur")).unwrap();
    symlink(&secret, eve.join("new")).unwrap();
    symlink("../alice/new", eve.join("cur")).unwrap();
    let (secret_before, alice_before) = (snapshot(&secret), snapshot(&alice));

    let store = MaildirStore::new(location(&mail));
    match store.open(&Authenticated::for_tests("eve")) {
        Ok(mut mb) => {
            let mut leaked = Vec::new();
            for i in 0..mb.messages().len() {
                if let Ok(mut r) = mb.open_message(i) {
                    r.read_to_end(&mut leaked).unwrap();
                }
            }
            let all: Vec<usize> = (0..mb.messages().len()).collect();
            let _ = mb.record_retrievals(&all, SystemTime::now());
            let _ = mb.commit(&all, &[]);
            panic!("eve's maildrop opened through the links; read {:?}", String::from_utf8_lossy(&leaked));
        }
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("symbolic link") && e.contains(&eve.display().to_string()), "{e}");
        }
    }
    assert!(store.deliver("eve", &mut &b"Subject: x\n\nplanted\n"[..]).is_err(), "delivered through a link");
    assert_eq!(snapshot(&secret), secret_before, "the secret directory changed");
    assert_eq!(snapshot(&alice), alice_before, "alice's Maildir changed");
}

/// `maildirsize -> victim`: a removal's `-W -1` append must not land in
/// the victim (no quota configured, as in the reproduction).
#[test]
fn maildirsize_link_to_a_victim_is_not_appended_to() {
    let top = tempfile::tempdir().unwrap();
    let mail = top.path().join("mail");
    let eve = maildir(&mail, "eve");
    let victim = top.path().join("victim");
    write_private(&victim, SECRET);
    symlink(&victim, eve.join("maildirsize")).unwrap();
    let before = snapshot(&victim);

    let store = MaildirStore::new(location(&mail));
    let mb = store.open(&Authenticated::for_tests("eve")).unwrap();
    let report = mb.commit(&[0], &[]).unwrap();
    assert_eq!(report.removed, 1);
    assert_eq!(snapshot(&victim), before, "the victim was written through maildirsize");
}

/// The quota rescan writes `maildirsize.<pid>.tmp`: a link planted under
/// that (predictable) name must not make it truncate the victim.
#[test]
fn maildirsize_temp_file_link_is_not_written_through() {
    let top = tempfile::tempdir().unwrap();
    let mail = top.path().join("mail");
    let eve = maildir(&mail, "eve");
    let victim = top.path().join("victim");
    write_private(&victim, SECRET);
    symlink(&victim, eve.join(format!("maildirsize.{}.tmp", std::process::id()))).unwrap();
    let before = snapshot(&victim);

    let store = MaildirStore::new(location(&mail)).with_quota(QuotaConfig {
        default: Quota { bytes: Some(1_000_000), messages: None },
        users: HashMap::new(),
    });
    store.deliver("eve", &mut &b"Subject: q\n\nbody\n"[..]).unwrap();
    assert_eq!(snapshot(&victim), before, "the victim was truncated through the temp file name");
    // The rescan still produced a usable maildirsize.
    let (usage, _) = store.usage("eve").unwrap();
    assert_eq!(usage.messages, 3);
}

/// Running as root (home-directory Maildirs), a part owned by someone
/// other than the Maildir's owner is refused with a message naming it.
/// Needs root to chown; says so and passes vacuously otherwise.
#[test]
fn a_part_owned_by_another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("symlinks: ownership test SKIPPED: needs root to chown");
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let mail = top.path().join("mail");
    let eve = maildir(&mail, "eve");
    std::os::unix::fs::chown(eve.join("cur"), Some(4242), None).unwrap();
    let store = MaildirStore::new(location(&mail));
    let err = store.open(&Authenticated::for_tests("eve")).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains(&eve.join("cur").display().to_string()) && err.contains("4242"), "{err}");
    // The root's own owner may be anyone when we are root: a Maildir
    // owned by the mail user (home directories) is served.
    std::os::unix::fs::chown(eve.join("cur"), Some(0), None).unwrap();
    std::os::unix::fs::chown(&eve, Some(4242), None).unwrap();
    for d in ["tmp", "new", "cur"] {
        std::os::unix::fs::chown(eve.join(d), Some(4242), None).unwrap();
    }
    assert_eq!(store.open(&Authenticated::for_tests("eve")).unwrap().messages().len(), 2);
}

/// An admin's symlink *above* `{user}` (e.g. `/var/mail -> /srv/mail`) is
/// the admin's choice and keeps working; a link at or below `{user}` is
/// not.
#[test]
fn a_link_above_the_user_component_is_followed() {
    let top = tempfile::tempdir().unwrap();
    let real = top.path().join("srv-mail");
    maildir(&real, "eve");
    symlink(&real, top.path().join("mail")).unwrap();
    let store = MaildirStore::new(location(&top.path().join("mail")));
    assert_eq!(store.open(&Authenticated::for_tests("eve")).unwrap().messages().len(), 2);
    store.deliver("eve", &mut &b"Subject: x\n\ny\n"[..]).unwrap();
    assert_eq!(fs::read_dir(real.join("eve/new")).unwrap().count(), 2);

    let nested = MaildirStore::new(MailLocation::new(format!("{}/{{user}}/Maildir", top.path().display())).unwrap());
    fs::create_dir(top.path().join("bob")).unwrap();
    symlink(real.join("eve"), top.path().join("bob/Maildir")).unwrap();
    let err = nested.open(&Authenticated::for_tests("bob")).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("bob/Maildir"), "{err}");
}

/// A link planted *during* a session (after the snapshot): `new/` renamed
/// away and replaced by a link to a directory holding a file of the same
/// name. RETR must not read it, UPDATE must not unlink or move it.
#[test]
fn a_link_planted_during_the_session_is_not_followed() {
    let top = tempfile::tempdir().unwrap();
    let mail = top.path().join("mail");
    let eve = maildir(&mail, "eve");
    let store = MaildirStore::new(location(&mail));
    let mb = store.open(&Authenticated::for_tests("eve")).unwrap();
    let names: Vec<String> = fs::read_dir(eve.join("new")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let decoy = top.path().join("decoy");
    fs::create_dir(&decoy).unwrap();
    for n in &names {
        write_private(&decoy.join(n), SECRET);
    }
    fs::rename(eve.join("new"), eve.join("new.moved")).unwrap();
    symlink(&decoy, eve.join("new")).unwrap();
    let before = snapshot(&decoy);

    for i in 0..mb.messages().len() {
        assert!(mb.read_if_cached(i, 1 << 20).is_none_or(|b| !b.windows(SECRET.len()).any(|w| w == SECRET)));
        if let Ok(mut r) = mb.open_message(i) {
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            assert!(!got.windows(SECRET.len()).any(|w| w == SECRET), "RETR read through the new link");
        }
    }
    let all: Vec<usize> = (0..mb.messages().len()).collect();
    let _ = mb.commit(&all, &[]);
    assert_unchanged(&before, &snapshot(&decoy), "link planted during the session");
}

/// A session keeps one directory handle (its Maildir root) between
/// commands, not one per part: `pobox serve` budgets three descriptors
/// per session (socket, message file, this).
#[test]
fn a_session_holds_one_directory_handle() {
    let top = tempfile::tempdir().unwrap();
    let mail = top.path().join("mail");
    let store = MaildirStore::new(location(&mail));
    for i in 0..50 {
        maildir(&mail, &format!("u{i}"));
    }
    let count = || fs::read_dir("/proc/self/fd").unwrap().count();
    let before = count();
    let sessions: Vec<_> = (0..50).map(|i| store.open(&Authenticated::for_tests(&format!("u{i}"))).unwrap()).collect();
    let after = count();
    // 50 root handles and the shared lock file; other tests of this binary
    // run in parallel threads and may hold a few files meanwhile.
    assert!(after <= before + 50 + 12, "{before} -> {after} descriptors for 50 sessions");
    drop(sessions);
}
