//! Black-box tests of the Maildir backend through the public API, on real
//! files in temporary directories.

// These tests play the other programs sharing a Maildir (a MUA renaming
// new/X to cur/X:2,RS, an admin touching files), so they use the file
// APIs the workspace reserves for `store/src/maildir/`.
#![allow(clippy::disallowed_methods)]

use std::collections::HashSet;
use std::fs::{self, File, FileTimes};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pobox_identity::Authenticated;
use pobox_store::{
    MailLocation, Mailbox, Maildir, MaildirStore, Mailstore, NamedDelivery, StoreError, Uidl,
    wire_size_of,
};

// ---------------------------------------------------------------- helpers

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: MaildirStore,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let location = MailLocation::new(format!("{}/{{user}}/Maildir", root.display())).unwrap();
        Fixture {
            _dir: dir,
            root,
            store: MaildirStore::new(location),
        }
    }

    fn maildir(&self, user: &str) -> PathBuf {
        self.root.join(user).join("Maildir")
    }

    fn deliver(&self, user: &str, msg: &[u8]) -> pobox_store::Delivered {
        self.store.deliver(user, &mut &msg[..]).unwrap()
    }

    fn open(&self, user: &str) -> Box<dyn Mailbox> {
        self.store.open(&Authenticated::for_tests(user)).unwrap()
    }
}

/// Names of the entries in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn read_all(mut r: Box<dyn Read + Send>) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// Reference LF → CRLF encoding of stored bytes, final CRLF ensured.
fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = None;
    for &b in data {
        if b == b'\n' && prev != Some(b'\r') {
            out.push(b'\r');
        }
        out.push(b);
        prev = Some(b);
    }
    if !data.is_empty() && !data.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A reader that hands out one byte per `read`, so every CR/LF pair is
/// split across reads.
struct OneByte<'a>(&'a [u8]);

impl Read for OneByte<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((&b, rest)), Some(slot)) => {
                *slot = b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

/// A reader that yields `good` bytes, then fails (a dropped LMTP client).
struct FailsAfter {
    good: usize,
}

impl Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.good == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer went away",
            ));
        }
        let n = self.good.min(buf.len());
        buf[..n].fill(b'x');
        self.good -= n;
        Ok(n)
    }
}

fn set_mtime(path: &Path, t: SystemTime) {
    let f = File::options().write(true).open(path).unwrap();
    f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

const MSG_CRLF: &[u8] = b"From: a@example.org\r\nSubject: hi\r\n\r\nline one\r\n.dot line\r\n";
const MSG_LF: &[u8] = b"From: a@example.org\nSubject: hi\n\nline one\n.dot line\n";

// ------------------------------------------------------------- delivery

#[test]
fn crlf_and_lf_input_store_the_same_bytes_and_size() {
    let fx = Fixture::new();
    let a = fx.deliver("u", MSG_CRLF);
    let b = fx.deliver("u", MSG_LF);
    let stored_a = fs::read(&a.location).unwrap();
    let stored_b = fs::read(&b.location).unwrap();
    assert_eq!(stored_a, MSG_LF, "stored with LF line endings");
    assert_eq!(stored_a, stored_b);
    assert_eq!(a.size, b.size);
    assert_eq!(a.size, MSG_CRLF.len() as u64);
}

#[test]
fn w_equals_crlf_octet_count_and_the_scan_fallback() {
    let fx = Fixture::new();
    let input = b"a\nbb\r\n\nccc\n";
    let d = fx.deliver("u", input);
    let stored = fs::read(&d.location).unwrap();
    let name = std::path::Path::new(&d.location).file_name().unwrap().to_str().unwrap().to_owned();
    let want_w = crlf(input).len() as u64;
    assert!(
        name.ends_with(&format!(",S={},W={want_w}", stored.len())),
        "{name}"
    );
    assert_eq!(d.size, want_w);
    assert_eq!(wire_size_of(&stored[..]).unwrap(), want_w);
    let mb = fx.open("u");
    assert_eq!(mb.messages()[0].size, want_w);
}

#[test]
fn bare_cr_is_preserved() {
    let fx = Fixture::new();
    let d = fx.deliver("u", b"a\rb\r\nc\r\n");
    assert_eq!(fs::read(&d.location).unwrap(), b"a\rb\nc\n");
    assert_eq!(d.size, 8, "a CR b CR LF c CR LF");
}

#[test]
fn missing_final_newline_is_added_and_counted() {
    let fx = Fixture::new();
    let d = fx.deliver("u", b"Subject: x\r\n\r\nno newline");
    assert_eq!(fs::read(&d.location).unwrap(), b"Subject: x\n\nno newline\n");
    assert_eq!(d.size, b"Subject: x\r\n\r\nno newline\r\n".len() as u64);
}

#[test]
fn one_byte_reads_give_the_same_result() {
    let fx = Fixture::new();
    let input = b"a\r\n\r\nb\rc\r\r\nd\r";
    let whole = fx.deliver("u", input);
    let split = fx.store.deliver("u", &mut OneByte(input)).unwrap();
    assert_eq!(
        fs::read(&whole.location).unwrap(),
        fs::read(&split.location).unwrap()
    );
    assert_eq!(whole.size, split.size);
}

#[test]
fn crlf_split_across_the_64k_chunk_boundary() {
    let fx = Fixture::new();
    // The writer reads 64 KiB at a time: put the CR last in the first read
    // and the LF first in the second.
    let mut input = vec![b'a'; 64 * 1024 - 1];
    input.extend_from_slice(b"\r\nb\r\n");
    let d = fx.deliver("u", &input);
    let mut want = vec![b'a'; 64 * 1024 - 1];
    want.extend_from_slice(b"\nb\n");
    assert_eq!(fs::read(&d.location).unwrap(), want);
    assert_eq!(d.size, input.len() as u64);
}

#[test]
fn too_large_leaves_nothing_behind() {
    let fx = Fixture::new();
    let store = fx.store.clone().with_max_size(100);
    let err = store.deliver("u", &mut &[b'x'; 101][..]).unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { limit: 100 }),
        "{err:?}"
    );
    assert!(!err.is_temporary());
    let md = fx.maildir("u");
    assert!(names(&md.join("tmp")).is_empty());
    assert!(names(&md.join("new")).is_empty());
    // The limit is on the POP3 size (CRLF octets), and inclusive.
    let ok = store.deliver("u", &mut &b"x\n".repeat(33)[..]).unwrap();
    assert_eq!(ok.size, 99);
    let exact = store.deliver("u", &mut &[b'y'; 98][..]).unwrap();
    assert_eq!(exact.size, 100);
}

#[test]
fn read_failure_leaves_no_partial_file() {
    let fx = Fixture::new();
    let err = fx
        .store
        .deliver("u", &mut FailsAfter { good: 200_000 })
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.is_temporary());
    let md = fx.maildir("u");
    assert!(names(&md.join("tmp")).is_empty());
    assert!(names(&md.join("new")).is_empty());
}

#[test]
fn delivered_file_is_private_and_maildir_is_0700() {
    let fx = Fixture::new();
    let d = fx.deliver("u", b"x\n");
    assert_eq!(
        fs::metadata(&d.location).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for sub in ["", "tmp", "new", "cur"] {
        let mode = fs::metadata(fx.maildir("u").join(sub))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{sub}");
    }
}

#[test]
fn empty_message_stays_empty() {
    let fx = Fixture::new();
    let d = fx.deliver("u", b"");
    assert_eq!(fs::read(&d.location).unwrap(), b"");
    assert_eq!(d.size, 0);
}

#[test]
fn uidls_unique_over_10000_deliveries() {
    // fsync dominates here and is not what this test is about: use tmpfs
    // when the machine has one.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let md = Maildir::open_or_create(dir.path().join("Maildir")).unwrap();
    let mut uidls = HashSet::new();
    for i in 0..10_000u32 {
        let msg = format!("Subject: {i}\n\nbody\n");
        let d = md.deliver(&mut msg.as_bytes(), None).unwrap();
        assert!(Uidl::is_valid(d.uidl.as_str()));
        assert!(uidls.insert(d.uidl), "duplicate UIDL at {i}");
    }
    let listed: HashSet<Uidl> = md.scan().unwrap().into_iter().map(|m| m.uidl).collect();
    assert_eq!(listed, uidls);
}

#[test]
fn ten_mib_round_trip_is_byte_exact() {
    let fx = Fixture::new();
    let mut input = Vec::with_capacity(11 << 20);
    let mut i = 0u64;
    while input.len() < 10 << 20 {
        // Lines of varying length, some starting with '.', some with a bare CR.
        let line = format!(
            "{}line {i} {}\r\n",
            if i.is_multiple_of(7) { "." } else { "" },
            "z".repeat((i % 97) as usize)
        );
        input.extend_from_slice(line.as_bytes());
        if i.is_multiple_of(1000) {
            input.extend_from_slice(b"bare\rcr\r\n");
        }
        i += 1;
    }
    let d = fx.deliver("u", &input);
    assert_eq!(d.size, input.len() as u64);
    let mb = fx.open("u");
    assert_eq!(mb.messages()[0].size, input.len() as u64);
    let stored = read_all(mb.open_message(0).unwrap());
    // The stored form is LF; LF -> CRLF gives back the input exactly.
    assert_eq!(crlf(&stored), input);
    assert_eq!(
        stored.len() as u64,
        input.len() as u64 - (i + i.div_ceil(1000))
    );
}

// -------------------------------------------------------- names, location

#[test]
fn location_template_must_contain_user_and_be_absolute() {
    assert!(MailLocation::new("/srv/mail/Maildir").is_err());
    assert!(MailLocation::new("mail/{user}").is_err());
    let loc: MailLocation = "/srv/mail/{user}/Maildir".parse().unwrap();
    assert_eq!(
        loc.path_for("alice").unwrap(),
        Path::new("/srv/mail/alice/Maildir")
    );
    assert_eq!(
        MailLocation::new("/data/{user}")
            .unwrap()
            .path_for("b@example.org")
            .unwrap(),
        Path::new("/data/b@example.org")
    );
}

#[test]
fn user_names_that_escape_the_template_are_refused() {
    let loc = MailLocation::new("/srv/mail/{user}/Maildir").unwrap();
    for bad in ["", "..", ".hidden", "a/b", "../etc", "a\0b"] {
        assert!(
            matches!(loc.path_for(bad), Err(StoreError::NoSuchUser(_))),
            "{bad:?}"
        );
    }
    let fx = Fixture::new();
    assert!(matches!(
        fx.store.deliver("../x", &mut &b"m\n"[..]),
        Err(StoreError::NoSuchUser(_))
    ));
    assert!(matches!(
        fx.store.open(&Authenticated::for_tests("a/b")),
        Err(StoreError::NoSuchUser(_))
    ));
}

// ------------------------------------------------------------ sessions

#[test]
fn open_creates_an_empty_maildrop() {
    let fx = Fixture::new();
    let mb = fx.open("newbie");
    assert!(mb.messages().is_empty());
    assert_eq!(mb.user(), "newbie");
    for sub in ["tmp", "new", "cur"] {
        assert!(fx.maildir("newbie").join(sub).is_dir());
    }
}

#[test]
fn failed_commit_releases_the_lock_and_removes_nothing() {
    let fx = Fixture::new();
    fx.deliver("u", b"x\n");
    let mb = fx.open("u");
    let err = mb.commit(&[0, 5], &[]).unwrap_err();
    assert!(
        matches!(err, StoreError::NoSuchMessage { index: 5 }),
        "{err:?}"
    );
    let mb = fx.open("u");
    assert_eq!(mb.messages().len(), 1, "index 0 must not be removed either");
}

#[test]
fn snapshot_is_ordered_by_delivery_time() {
    let fx = Fixture::new();
    let a = fx.deliver("u", b"first\n");
    let b = fx.deliver("u", b"second\n");
    let c = fx.deliver("u", b"third\n");
    // Make delivery times explicit so the test does not rely on timestamp
    // resolution: c oldest, then a, then b.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    set_mtime(std::path::Path::new(&c.location), t0);
    set_mtime(std::path::Path::new(&a.location), t0 + Duration::from_secs(1));
    set_mtime(std::path::Path::new(&b.location), t0 + Duration::from_secs(2));
    let mb = fx.open("u");
    let order: Vec<&Uidl> = mb.messages().iter().map(|m| &m.uidl).collect();
    assert_eq!(order, [&c.uidl, &a.uidl, &b.uidl]);
    assert_eq!(mb.messages()[0].received, t0);
    assert_eq!(read_all(mb.open_message(0).unwrap()), b"third\n");
}

#[test]
fn drop_without_commit_changes_nothing() {
    let fx = Fixture::new();
    fx.deliver("u", b"one\n");
    fx.deliver("u", b"two\n");
    let md = fx.maildir("u");
    let before = names(&md.join("new"));
    let mb = fx.open("u");
    assert_eq!(mb.messages().len(), 2);
    drop(mb); // connection lost: no UPDATE (RFC 1939 §6)
    assert_eq!(names(&md.join("new")), before);
    assert!(names(&md.join("cur")).is_empty());
}

#[test]
fn commit_deletes_only_marked_and_moves_the_rest_to_cur() {
    let fx = Fixture::new();
    let ds: Vec<_> = (0..4)
        .map(|i| fx.deliver("u", format!("m{i}\n").as_bytes()))
        .collect();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (i, d) in ds.iter().enumerate() {
        set_mtime(std::path::Path::new(&d.location), t0 + Duration::from_secs(i as u64));
    }
    let mb = fx.open("u");
    let report = mb.commit(&[1, 3, 3], &[]).unwrap();
    assert_eq!((report.removed, report.failed), (2, 0));
    let md = fx.maildir("u");
    assert!(names(&md.join("new")).is_empty());
    let cur = names(&md.join("cur"));
    assert_eq!(cur.len(), 2);
    // Names sort by their text, not by delivery order (the microsecond
    // field is not zero-padded), so compare as sets.
    let mut expected: Vec<String> = [&ds[0], &ds[2]]
        .iter()
        .map(|kept| format!("{}:2,", std::path::Path::new(&kept.location).file_name().unwrap().to_str().unwrap()))
        .collect();
    expected.sort();
    let mut cur = cur;
    cur.sort();
    assert_eq!(cur, expected);
    let mb = fx.open("u");
    let left: Vec<_> = mb.messages().iter().map(|m| m.uidl.clone()).collect();
    assert_eq!(left, [ds[0].uidl.clone(), ds[2].uidl.clone()]);
}

#[test]
fn mail_delivered_during_a_session_stays_new() {
    let fx = Fixture::new();
    fx.deliver("u", b"old\n");
    let mb = fx.open("u");
    let late = fx.deliver("u", b"late\n");
    assert_eq!(mb.messages().len(), 1, "the snapshot is fixed");
    mb.commit(&[], &[]).unwrap();
    assert!(std::path::Path::new(&late.location).exists(), "not seen by the client, so not moved");
}

#[test]
fn uidl_is_stable_across_commit_and_reopen() {
    let fx = Fixture::new();
    let d = fx.deliver("u", b"x\n");
    let first = fx.open("u");
    let before = first.messages()[0].clone();
    assert_eq!(before.uidl, d.uidl);
    assert_eq!(
        before.key.to_string(),
        format!("new/{}", std::path::Path::new(&d.location).file_name().unwrap().to_str().unwrap())
    );
    first.commit(&[], &[]).unwrap();

    let again = fx.open("u");
    let after = &again.messages()[0];
    assert!(after.key.to_string().starts_with("cur/"), "{}", after.key);
    assert_eq!(after.uidl, before.uidl);
    assert_eq!(after.size, before.size);
    drop(again);
    assert_eq!(fx.open("u").messages()[0].uidl, before.uidl);
}

#[test]
fn externally_removed_message_counts_as_removed() {
    let fx = Fixture::new();
    let d = fx.deliver("u", b"x\n");
    let mb = fx.open("u");
    fs::remove_file(std::path::Path::new(&d.location)).unwrap();
    assert!(matches!(mb.open_message(0), Err(StoreError::Vanished(_))));
    let report = mb.commit(&[0], &[]).unwrap();
    assert_eq!((report.removed, report.failed), (1, 0));
}

#[test]
fn message_moved_by_another_program_is_still_served_and_deleted() {
    let fx = Fixture::new();
    let d = fx.deliver("u", b"moved\n");
    let mb = fx.open("u");
    // A MUA marks it seen and replied: new/X -> cur/X:2,RS
    let name = std::path::Path::new(&d.location).file_name().unwrap().to_str().unwrap();
    let moved = fx.maildir("u").join("cur").join(format!("{name}:2,RS"));
    fs::rename(std::path::Path::new(&d.location), &moved).unwrap();
    assert_eq!(read_all(mb.open_message(0).unwrap()), b"moved\n");
    let report = mb.commit(&[0], &[]).unwrap();
    assert_eq!((report.removed, report.failed), (1, 0));
    assert!(!moved.exists());
}

#[test]
fn unremovable_message_counts_as_failed() {
    let fx = Fixture::new();
    let d = fx.deliver("u", b"x\n");
    fx.deliver("u", b"y\n");
    let mb = fx.open("u");
    // Replace the file with a non-empty directory of the same name: unlink
    // fails with EISDIR, which even root cannot override.
    fs::remove_file(std::path::Path::new(&d.location)).unwrap();
    fs::create_dir(std::path::Path::new(&d.location)).unwrap();
    fs::write(std::path::Path::new(&d.location).join("f"), b"").unwrap();
    let report = mb.commit(&[0, 1], &[]).unwrap();
    assert_eq!((report.removed, report.failed), (1, 1));
}

#[test]
fn open_message_out_of_range() {
    let fx = Fixture::new();
    let mb = fx.open("u");
    assert!(matches!(
        mb.open_message(0),
        Err(StoreError::NoSuchMessage { index: 0 })
    ));
}

// --------------------------------------------------- foreign Maildirs

#[test]
fn foreign_file_names_are_listed_with_correct_sizes() {
    let fx = Fixture::new();
    fx.open("u"); // create the Maildir
    let md = fx.maildir("u");
    // Dovecot: sizes in the name, trusted without reading.
    let dovecot = "1700000000.M1P2.host,S=10,W=12:2,S";
    fs::write(md.join("cur").join(dovecot), b"abcd\nefgh\n").unwrap();
    // qmail: no sizes; LF file without a final newline.
    let qmail = "1700000001.4242.mail.example.org";
    fs::write(md.join("new").join(qmail), b"Subject: q\n\nbody").unwrap();
    // mutt-style in cur/ with flags, CRLF already in the file.
    let mutt = "1700000002.R123.box:2,FS";
    fs::write(md.join("cur").join(mutt), b"a\r\nb\n").unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    set_mtime(&md.join("cur").join(dovecot), t0);
    set_mtime(&md.join("new").join(qmail), t0 + Duration::from_secs(1));
    set_mtime(&md.join("cur").join(mutt), t0 + Duration::from_secs(2));

    let mb = fx.open("u");
    let got: Vec<(String, u64)> = mb
        .messages()
        .iter()
        .map(|m| (m.uidl.to_string(), m.size))
        .collect();
    assert_eq!(
        got,
        [
            ("1700000000.M1P2.host".to_owned(), 12),
            (qmail.to_owned(), b"Subject: q\r\n\r\nbody\r\n".len() as u64),
            ("1700000002.R123.box".to_owned(), b"a\r\nb\r\n".len() as u64),
        ]
    );
    assert_eq!(read_all(mb.open_message(1).unwrap()), b"Subject: q\n\nbody");
}

#[test]
fn long_or_odd_base_names_get_a_hashed_uidl() {
    let fx = Fixture::new();
    fx.open("u");
    let long = "x".repeat(80);
    fs::write(fx.maildir("u").join("new").join(&long), b"m\n").unwrap();
    let first = fx.open("u").messages()[0].uidl.clone();
    assert_eq!(first.as_str().len(), 32);
    assert_eq!(
        fx.open("u").messages()[0].uidl,
        first,
        "stable across sessions"
    );
}

#[test]
fn dot_files_directories_symlinks_and_tmp_are_ignored() {
    let fx = Fixture::new();
    let d = fx.deliver("u", b"real\n");
    let md = fx.maildir("u");
    fs::write(md.join("new").join(".hidden"), b"no\n").unwrap();
    fs::write(md.join("cur").join(".uidlist"), b"no\n").unwrap();
    fs::create_dir(md.join("cur").join("subdir")).unwrap();
    std::os::unix::fs::symlink(std::path::Path::new(&d.location), md.join("cur").join("link:2,")).unwrap();
    fs::write(md.join("tmp").join("inflight"), b"no\n").unwrap();
    let mb = fx.open("u");
    assert_eq!(mb.messages().len(), 1);
    assert_eq!(mb.messages()[0].uidl, d.uidl);
    assert!(
        md.join("tmp").join("inflight").exists(),
        "fresh tmp files are kept"
    );
}

#[test]
fn stale_tmp_files_are_reaped_on_open() {
    let fx = Fixture::new();
    fx.open("u");
    let tmp = fx.maildir("u").join("tmp");
    let stale = tmp.join("1.M1P1.host");
    let recent = tmp.join("2.M2P2.host");
    fs::write(&stale, b"crashed").unwrap();
    fs::write(&recent, b"in progress").unwrap();
    let now = SystemTime::now();
    set_mtime(&stale, now - Duration::from_hours(37));
    set_mtime(&recent, now - Duration::from_hours(35));
    fx.open("u");
    assert!(!stale.exists());
    assert!(recent.exists());
}

// ------------------------------------------------------ named delivery

#[test]
fn deliver_named_is_idempotent_in_new_and_cur() {
    let dir = tempfile::tempdir().unwrap();
    let md = Maildir::open_or_create(dir.path().join("M")).unwrap();
    let base = "fetch-pop.example.org-UID123";
    assert!(!md.contains_base(base).unwrap());

    let first = md
        .deliver_named(base, &mut &b"a\r\nb\r\n"[..], None)
        .unwrap();
    let NamedDelivery::Stored(d) = first else {
        panic!("{first:?}")
    };
    assert_eq!(d.uidl.as_str(), base);
    assert_eq!(d.size, 6);
    assert_eq!(
        std::path::Path::new(&d.location).file_name().unwrap().to_str().unwrap(),
        format!("{base},S=4,W=6")
    );
    assert!(md.contains_base(base).unwrap());

    let again = md
        .deliver_named(base, &mut &b"a\r\nb\r\n"[..], None)
        .unwrap();
    assert_eq!(again, NamedDelivery::AlreadyPresent(std::path::PathBuf::from(&d.location)));

    // A POP3 session or MUA moves it to cur/ with flags.
    let in_cur = dir.path().join("M/cur").join(format!("{base},S=4,W=6:2,S"));
    fs::rename(std::path::Path::new(&d.location), &in_cur).unwrap();
    assert!(md.contains_base(base).unwrap());
    let third = md
        .deliver_named(base, &mut &b"different\n"[..], None)
        .unwrap();
    assert_eq!(third, NamedDelivery::AlreadyPresent(in_cur));

    assert!(names(&dir.path().join("M/new")).is_empty());
    assert!(names(&dir.path().join("M/tmp")).is_empty());
    assert_eq!(names(&dir.path().join("M/cur")).len(), 1);
}

#[test]
fn deliver_named_does_not_match_a_longer_base() {
    let dir = tempfile::tempdir().unwrap();
    let md = Maildir::open_or_create(dir.path().join("M")).unwrap();
    md.deliver_named("abc1", &mut &b"x\n"[..], None).unwrap();
    assert!(!md.contains_base("abc").unwrap());
    let r = md.deliver_named("abc", &mut &b"x\n"[..], None).unwrap();
    assert!(matches!(r, NamedDelivery::Stored(_)));
}

#[test]
fn deliver_named_rejects_bad_bases_and_respects_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let md = Maildir::open_or_create(dir.path().join("M")).unwrap();
    for bad in ["", ".x", "a/b", "a:b", "a,b", "a b", &"a".repeat(101)] {
        assert!(
            matches!(
                md.deliver_named(bad, &mut &b"x\n"[..], None),
                Err(StoreError::InvalidName(_))
            ),
            "{bad:?}"
        );
        assert_eq!(
            md.contains_base(bad).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
    let err = md
        .deliver_named("big", &mut &[b'x'; 50][..], Some(10))
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { limit: 10 }));
    assert!(names(&dir.path().join("M/tmp")).is_empty());
    assert!(!md.contains_base("big").unwrap());
}

#[test]
fn racing_named_deliveries_store_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("M");
    Maildir::open_or_create(&path).unwrap();
    let results: Vec<NamedDelivery> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                s.spawn(move || {
                    let md = Maildir::open_or_create(path).unwrap();
                    md.deliver_named("same", &mut &b"same body\n"[..], None)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored = results
        .iter()
        .filter(|r| matches!(r, NamedDelivery::Stored(_)))
        .count();
    assert_eq!(stored, 1, "{results:?}");
    assert_eq!(names(&path.join("new")).len(), 1);
    assert!(names(&path.join("tmp")).is_empty());
}

// ---------------------------------------------------- the trait object

#[test]
fn store_is_usable_as_a_trait_object_across_threads() {
    let fx = Fixture::new();
    let store: std::sync::Arc<dyn Mailstore> = std::sync::Arc::new(fx.store.clone());
    let s2 = store.clone();
    std::thread::spawn(move || s2.deliver("u", &mut &b"hi\n"[..]).unwrap())
        .join()
        .unwrap();
    let mb = store.open(&Authenticated::for_tests("u")).unwrap();
    let mb = std::thread::spawn(move || {
        assert_eq!(mb.messages().len(), 1);
        mb
    })
    .join()
    .unwrap();
    assert_eq!(mb.commit(&[0], &[]).unwrap().removed, 1);
    assert!(store.open(&Authenticated::for_tests("u")).unwrap().messages().is_empty());
}

/// `read_if_cached` returns a hot message whole, and nothing when reading
/// would wait for the disk (its pages dropped from the page cache), when
/// the message is bigger than allowed, or when its file is gone: in each
/// of those cases the server falls back to `open_message` on a blocking
/// thread.
#[test]
fn read_if_cached_reads_only_what_cannot_block() {
    // One CPU for this thread: pages enter the LRU through per-CPU batches,
    // and POSIX_FADV_DONTNEED only drains the local one, so writing and
    // evicting on the same CPU makes the eviction below reliable.
    let mut one = nix::sched::CpuSet::new();
    let cpu = (0..nix::sched::CpuSet::count())
        .find(|&c| nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap().is_set(c).unwrap_or(false))
        .unwrap();
    one.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).unwrap();
    let f = Fixture::new();
    let body = b"Subject: hot\n\nbody line\n".repeat(100);
    f.deliver("alice", &body);
    let mb = f.open("alice");
    let size = mb.messages()[0].size;
    let path = {
        let files = names(&f.maildir("alice").join("new"));
        f.maildir("alice").join("new").join(&files[0])
    };
    // Warm: just written (and read by nothing else yet, but in the cache).
    let _ = fs::read(&path).unwrap();
    assert_eq!(mb.read_if_cached(0, size).as_deref(), Some(&body[..]), "a hot message is read whole");
    assert_eq!(mb.read_if_cached(0, body.len() as u64 - 1), None, "more than max: not read");
    assert_eq!(mb.read_if_cached(1, size), None, "no such message");

    // Cold: delivery fsynced the file, so its pages are clean and
    // POSIX_FADV_DONTNEED drops them (on ext4/xfs/btrfs; tmpfs keeps them).
    // Retried for up to 3 s in case writeback still holds a page.
    let file = File::open(&path).unwrap();
    let on_tmpfs = rustix::fs::fstatfs(&file).unwrap().f_type == 0x0102_1994;
    if !on_tmpfs {
        let cold = (0..300).any(|_| {
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            let cold = mb.read_if_cached(0, size).is_none();
            if !cold {
                std::thread::sleep(Duration::from_millis(10));
            }
            cold
        });
        assert!(cold, "pages dropped from the page cache, but read_if_cached still read the file");
        assert_eq!(read_all(mb.open_message(0).unwrap()), body, "the blocking path still reads it");
        assert_eq!(mb.read_if_cached(0, size).as_deref(), Some(&body[..]), "hot again after a read");
    }

    fs::remove_file(&path).unwrap();
    assert_eq!(mb.read_if_cached(0, size), None, "a vanished file is left to open_message");
}
