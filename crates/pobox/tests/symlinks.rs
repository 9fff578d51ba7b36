//! Symbolic links planted in a Maildir, end to end (issue 17, finding 1):
//! the real `pobox` binary serves POP3, LMTP and SMTP, runs `pobox
//! deliver`, expiry and every `pobox mailbox` command over maildrops whose
//! `new`, `cur`, `tmp`, a folder, `maildirsize`, a message file or the
//! Maildir root itself are links into a canary tree. Nothing in that tree
//! may be read, written, moved or unlinked: names, types, contents, sizes,
//! modes and mtimes are compared before and after, and no reply or command
//! output may contain the canary's bytes.
//!
//! The canary files are 0600 and owned by whoever runs the test (root in
//! CI, as in the reproduction); the assertion does not depend on that: a
//! pobox that follows the links changes the tree whatever the owner.

#![allow(unreachable_pub)]

#[path = "integration/util.rs"]
#[allow(dead_code)]
mod util;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::{BIN, Dir, IO_TIMEOUT, PW};

/// What every canary file holds.
const SECRET: &str = "CANARY secret, root only";
/// A name the scan would take for a message.
const CANARY_MSG: &str = "1000000000.M1P1.canary,S=25,W=26";

/// One planted link: the user it is planted for, where (relative to the
/// user's Maildir; empty = the Maildir itself) and what it points to
/// (relative to the canary tree), and whether the maildrop must be
/// refused as a whole. `linkfolder` files every delivery into the linked
/// folder with Sieve, so its deliveries are refused (temporarily: the
/// sender retries, nothing is lost).
struct Case {
    user: &'static str,
    link: &'static str,
    target: &'static str,
    refused: bool,
}

impl Case {
    fn deliveries_refused(&self) -> bool {
        self.refused || self.user == "linkfolder"
    }
}

const CASES: &[Case] = &[
    Case { user: "linkroot", link: "", target: "maildir", refused: true },
    Case { user: "linknew", link: "new", target: "maildir/new", refused: true },
    Case { user: "linkcur", link: "cur", target: "maildir/cur", refused: true },
    Case { user: "linktmp", link: "tmp", target: "maildir/tmp", refused: true },
    Case { user: "linkfolder", link: ".Junk", target: "maildir", refused: false },
    Case { user: "linkrestore", link: ".pobox-deleted", target: "maildir", refused: false },
    Case { user: "linksize", link: "maildirsize", target: "file", refused: false },
    Case { user: "linkmsg", link: "new/1700000002.M1P1.x,S=25,W=26", target: "file", refused: false },
];

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    len: u64,
    mode: u32,
    mtime: (i64, i64),
    contents: Option<Vec<u8>>,
}

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
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        let contents = (kind == "file").then(|| fs::read(&p).unwrap());
        out.insert(p, Entry { kind, len: m.len(), mode: m.mode(), mtime: (m.mtime(), m.mtime_nsec()), contents });
    }
    out
}

fn differences(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
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
    diff
}

fn private(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A canary tree for one case: a complete Maildir full of message-looking
/// files, a restore area, a `maildirsize`, a victim `file`; with mtimes two
/// days old, so the tmp/ reaper and expiry would want them.
fn canary(at: &Path) {
    let md = at.join("maildir");
    for d in ["tmp", "new", "cur", ".pobox-deleted/cur", ".pobox-deleted/new", ".pobox-deleted/tmp"] {
        fs::create_dir_all(md.join(d)).unwrap();
    }
    let files = [
        md.join("new").join(CANARY_MSG),
        md.join("cur").join(format!("{CANARY_MSG}:2,S")),
        md.join("tmp").join("1000000000.M9P9.canary"),
        md.join(".pobox-deleted/cur").join(CANARY_MSG),
        at.join("file"),
    ];
    for f in &files {
        fs::write(f, format!("{SECRET}\n")).unwrap();
        private(f, 0o600);
    }
    fs::write(md.join("maildirsize"), "1000000S\n25 1\n").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    let times = fs::FileTimes::new().set_accessed(old).set_modified(old);
    for f in files.iter().chain([&md.join("maildirsize")]) {
        fs::File::open(f).unwrap().set_times(times).unwrap();
    }
    for d in ["tmp", "new", "cur", ".pobox-deleted/cur", ".pobox-deleted", ""] {
        private(&md.join(d), 0o700);
        fs::File::open(md.join(d)).unwrap().set_times(times).unwrap();
    }
    private(at, 0o700);
}

/// The user's Maildir with one message in new/ and one in cur/, then the
/// link planted.
fn plant(dir: &Dir, case: &Case, canary_dir: &Path) -> PathBuf {
    let md = dir.data().join("mail").join(case.user);
    for d in ["tmp", "new", "cur"] {
        fs::create_dir_all(md.join(d)).unwrap();
    }
    fs::write(md.join("new/1700000000.M1P1.own,S=13,W=14"), "Subject: o\n\nn\n").unwrap();
    fs::write(md.join("cur/1700000001.M1P1.own,S=13,W=14:2,S"), "Subject: o\n\nc\n").unwrap();
    let link = if case.link.is_empty() { md.clone() } else { md.join(case.link) };
    if link.is_dir() {
        fs::remove_dir_all(&link).unwrap();
    }
    symlink(canary_dir.join(case.target), &link).unwrap();
    link
}

/// A second `pobox serve` with only the SMTP listener (the test helper's
/// server runs without SMTP). Killed on drop.
struct Smtp {
    child: Child,
    port: u16,
}

impl Smtp {
    fn start(dir: &Dir, config: &Path) -> Smtp {
        let mut child = Command::new(BIN)
            .env_remove("POBOX_DATA")
            .env_remove("POBOX_CONFIG")
            .env("POBOX_LOG", "info")
            .arg("--data")
            .arg(dir.scratch("smtp-data"))
            .arg("--config")
            .arg(config)
            .args(["serve", "--pop3", "none", "--pop3s", "none", "--lmtp", "none", "--smtp", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pobox serve");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("SMTP server did not print its address in time");
            };
            if let Some(addr) = line.trim().strip_prefix("SMTP") {
                let port = addr.trim().rsplit(':').next().unwrap().parse().unwrap();
                return Smtp { child, port };
            }
        }
    }

    /// One message to `rcpt` over SMTP; returns the final reply to DATA
    /// (or the refusal of an earlier step).
    fn send(&self, rcpt: &str) -> String {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut reply = || {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                all.push_str(&line);
                if line.len() < 4 || line.as_bytes()[3] != b'-' {
                    return all;
                }
            }
        };
        assert!(reply().starts_with("220"));
        for (cmd, ok) in [
            ("EHLO client.test\r\n".to_string(), "250"),
            ("MAIL FROM:<sender@example.org>\r\n".to_string(), "250"),
            (format!("RCPT TO:<{rcpt}@example.test>\r\n"), "250"),
            ("DATA\r\n".to_string(), "354"),
        ] {
            w.write_all(cmd.as_bytes()).unwrap();
            let got = reply();
            if !got.starts_with(ok) {
                return got;
            }
        }
        w.write_all(b"From: s@example.org\r\nSubject: smtp\r\n\r\nbody\r\n.\r\n").unwrap();
        let got = reply();
        let _ = w.write_all(b"QUIT\r\n");
        got
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything a session does: LIST, RETR and TOP of every message, DELE of
/// all, QUIT. Returns the greeting-to-QUIT transcript.
fn pop3_session(srv: &util::Server<'_>, user: &str) -> (bool, String) {
    let mut c = srv.pop3();
    let mut log = String::new();
    let r = c.cmd(&format!("USER {user}"));
    log.push_str(&r);
    let r = c.cmd(&format!("PASS {PW}"));
    log.push_str(&r);
    if !r.starts_with("+OK") {
        return (false, log);
    }
    let list = c.cmd_lines("LIST");
    log.push_str(&list.join("\n"));
    for i in 1..=list.len() {
        log.push_str(&String::from_utf8_lossy(&c.cmd_multi(&format!("RETR {i}"))));
        log.push_str(&String::from_utf8_lossy(&c.cmd_multi(&format!("TOP {i} 0"))));
        log.push_str(&c.cmd(&format!("DELE {i}")));
    }
    let r = c.cmd("QUIT");
    log.push_str(&r);
    // With the restore area a link, nothing can be moved aside: the
    // truthful answer is that nothing was removed.
    let truthful = r.starts_with("+OK") || r.starts_with("-ERR [SYS/TEMP] some deleted messages not removed (0 removed");
    assert!(truthful, "{user}: QUIT answered {r}");
    (true, log)
}

#[test]
fn links_in_maildirs_reach_nothing_outside_them() {
    let dir = Dir::new();
    let canaries = dir.scratch("canaries");
    let mut links = Vec::new();
    for case in CASES {
        dir.add_user(case.user, PW);
        let at = canaries.join(case.user);
        fs::create_dir_all(&at).unwrap();
        canary(&at);
        links.push(plant(&dir, case, &at));
    }
    let sieve = dir.data().join("sieve");
    fs::create_dir_all(&sieve).unwrap();
    fs::write(sieve.join("linkfolder.sieve"), "require \"fileinto\";\nfileinto \"Junk\";\n").unwrap();
    let before = snapshot(&canaries);
    // A restore area (so UPDATE moves rather than unlinks), a quota (so
    // maildirsize is read, appended and rebuilt), expiry of everything
    // old, and local domains for SMTP.
    let retention = "{ expire_interval_secs = 0, restore_days = 7, max_age_days = 1 }";
    let srv = dir
        .server()
        .config("retention", retention)
        .config("quota", "{ bytes = 10000000 }")
        .config("domains", "[\"example.test\"]")
        .config("check_spf_dkim_dmarc", "false")
        .start();
    let smtp_config = dir.scratch("smtp.toml");
    fs::write(
        &smtp_config,
        // A second server cannot share the first one's data dir (one server
        // per data dir): it gets its own, with the same users, maildrops and
        // Sieve scripts.
        format!(
            "retention = {retention}\nquota = {{ bytes = 10000000 }}\ndomains = [\"example.test\"]\n\
             check_spf_dkim_dmarc = false\nauth_failure_delay_ms = 0\n\
             passwd_file = {:?}\nmail_location = {:?}\n[sieve]\ndir = {:?}\n",
            dir.users_file().display().to_string(),
            format!("{}/mail/{{user}}", dir.data().display()),
            dir.data().join("sieve").display().to_string(),
        ),
    )
    .unwrap();
    let smtp = Smtp::start(&dir, &smtp_config);
    let mut lmtp = srv.lmtp();
    let mut outputs = String::new();

    for (case, link) in CASES.iter().zip(&links) {
        let user = case.user;
        let ctx = format!("{user} ({} -> {})", if case.link.is_empty() { "Maildir" } else { case.link }, case.target);

        let (logged_in, transcript) = pop3_session(&srv, user);
        outputs.push_str(&transcript);
        assert_eq!(logged_in, !case.refused, "{ctx}: POP3 login\n{transcript}");

        let r = lmtp.cmd("MAIL FROM:<s@example.org>");
        assert!(r.starts_with("250"), "{ctx}: {r}");
        let r = lmtp.cmd(&format!("RCPT TO:<{user}@example.test>"));
        assert!(r.starts_with("250"), "{ctx}: RCPT {r}");
        let r = lmtp.cmd("DATA");
        assert!(r.starts_with("354"), "{ctx}: DATA {r}");
        lmtp.send(b"Subject: lmtp\r\n\r\nbody\r\n.\r\n");
        let r = lmtp.reply();
        assert_eq!(r.starts_with("250"), !case.deliveries_refused(), "{ctx}: LMTP delivery answered {r}");
        if case.deliveries_refused() {
            assert!(r.starts_with('4'), "{ctx}: a refused maildrop is a temporary failure: {r}");
        }

        let r = smtp.send(user);
        assert_eq!(r.starts_with("250"), !case.deliveries_refused(), "{ctx}: SMTP delivery answered {r}");

        let out = dir.pobox().args(["deliver", user]).stdin("Subject: deliver\n\nbody\n").output();
        outputs.push_str(&out.stdout());
        outputs.push_str(&out.stderr());
        let want = if case.deliveries_refused() { Some(75) } else { Some(0) };
        assert_eq!(out.status.code(), want, "{ctx}: pobox deliver\n{}", out.dump());
        if case.refused {
            assert!(out.stderr().contains(&link.display().to_string()), "{ctx}: error does not name the link\n{}", out.dump());
        }

        // Every `pobox mailbox` command; their exit codes vary (a refused
        // maildrop is an error), what matters is the canary.
        for args in [
            vec!["mailbox", "ls"],
            vec!["mailbox", "ls", "--json"],
            vec!["mailbox", "show", user],
            vec!["mailbox", "show", user, "--json"],
            vec!["mailbox", "expire", user, "--dry-run"],
            vec!["mailbox", "expire", user, "--at", "+400d"],
            vec!["mailbox", "expire"],
            vec!["mailbox", "restore", user],
            vec!["mailbox", "release", user, "Junk", "1000000000.M1P1.canary"],
            vec!["mailbox", "purge", user],
        ] {
            let out = dir.pobox().arg("--config").arg(&smtp_config).args(&args).output();
            outputs.push_str(&out.stdout());
            outputs.push_str(&out.stderr());
            if case.refused && args.len() > 2 && args[2] == user && args[1] != "release" {
                assert!(!out.status.success(), "{ctx}: {args:?} succeeded on a refused maildrop\n{}", out.dump());
            }
        }

        let diff = differences(&before, &snapshot(&canaries));
        assert!(diff.is_empty(), "{ctx}: the canary tree changed:\n{}\n{}", diff.join("\n"), srv.dump());
    }
    assert!(!outputs.contains(SECRET), "a canary's content reached a client or an admin command");
    lmtp.cmd("QUIT");
    for (case, link) in CASES.iter().zip(&links) {
        if case.refused {
            let needle = format!("refusing Maildir directory {}: it is a symbolic link", link.display());
            assert!(srv.stderr_eventually_contains(&needle), "no log line names {}\n{}", link.display(), srv.dump());
        }
    }
    drop(smtp);
}
