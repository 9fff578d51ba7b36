//! `pobox import pop3` (the `pobox` binary) from a private Dovecot
//! (Debian's dovecot-pop3d) on loopback: killed mid-import and resumed,
//! the source killed mid-import, UIDLs that need the store's override
//! file under repeated SIGKILLs, and a server without UIDL refused.
//!
//! What "right" means here: every message of the source is in the pobox
//! maildrop exactly once, byte for byte; pobox lists each one under the
//! UIDL Dovecot gives it (compared over POP3 against Dovecot, message by
//! message, by subject and size); and the source still holds everything.
//! Fails without Dovecot unless `POBOX_ALLOW_SKIP=1` (see `common::require`).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A pobox data directory with the user `tester`, and a password file for
/// the old server.
struct Local {
    dir: tempfile::TempDir,
    data: PathBuf,
    password_file: PathBuf,
}

impl Local {
    fn new() -> Local {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let password_file = dir.path().join("old-password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        set_mode(&password_file, 0o600);
        let local = Local { dir, data, password_file };
        let mut add = local.pobox(&["user", "add", USER, "--password-stdin"]).stdin(Stdio::piped()).spawn().unwrap();
        add.stdin.take().unwrap().write_all(b"a local password\n").unwrap();
        assert!(add.wait().unwrap().success(), "pobox user add failed");
        local
    }

    /// `pobox --config none --data DATA ARGS`, nothing from the caller's
    /// environment.
    fn pobox(&self, args: &[&str]) -> Command {
        let mut c = Command::new(pobox_bin());
        c.arg("--config").arg("none").arg("--data").arg(&self.data).args(args);
        for v in ["POBOX_CONFIG", "POBOX_DATA", "POBOX_FETCH_CONFIG", "POBOX_FETCH_FAULT"] {
            c.env_remove(v);
        }
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    /// `pobox import pop3` of `tester` from Dovecot's POP3S port.
    fn import(&self, dv: &Dovecot, extra: &[&str]) -> Command {
        let server = format!("localhost:{}", dv.pop3s);
        let cert = dv.cert.display().to_string();
        let pw = self.password_file.display().to_string();
        let mut args = vec!["import", "pop3", "--server", &server, "--tls", "--ca-file", &cert];
        args.extend(["--remote-user", USER, "--password-file", &pw, "--to", USER]);
        args.extend(extra);
        self.pobox(&args)
    }

    fn maildir(&self) -> PathBuf {
        self.data.join("mail").join(USER)
    }

    /// Messages in the maildrop (an import writes into `new/`).
    fn count(&self) -> usize {
        ["new", "cur"].iter().map(|s| std::fs::read_dir(self.maildir().join(s)).map_or(0, |r| r.count())).sum()
    }

    /// UIDL → (size, subject), as `pobox mailbox show --json` lists them.
    fn listing(&self) -> BTreeMap<String, (u64, String)> {
        let o = run(self.pobox(&["mailbox", "show", USER, "--json"]));
        assert_eq!(code(&o), 0, "{}", show(&o));
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        let mut out = BTreeMap::new();
        for r in rows {
            let uidl = r["uidl"].as_str().unwrap().to_string();
            let entry = (r["size"].as_u64().unwrap(), r["subject"].as_str().unwrap().to_string());
            assert!(out.insert(uidl.clone(), entry).is_none(), "pobox lists UIDL {uidl} twice");
        }
        out
    }
}

/// Runs a command to completion, bounded to 120 s.
fn run(cmd: Command) -> Output {
    wait(spawn(cmd))
}

fn spawn(mut cmd: Command) -> Child {
    cmd.spawn().unwrap()
}

fn wait(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("pobox did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A minimal POP3 client for Dovecot's plaintext port (loopback).
struct Pop3 {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Pop3 {
    fn login(port: u16) -> Pop3 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut p = Pop3 { r: BufReader::new(s.try_clone().unwrap()), w: s };
        p.line();
        p.ok(&format!("USER {USER}"));
        p.ok(&format!("PASS {PASSWORD}"));
        p
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }

    fn ok(&mut self, cmd: &str) -> String {
        self.w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let l = self.line();
        assert!(l.starts_with("+OK"), "{cmd}: {l}");
        l
    }

    fn multi(&mut self, cmd: &str) -> Vec<String> {
        self.ok(cmd);
        let mut out = Vec::new();
        for _ in 0..1_000_000 {
            let l = self.line();
            if l == "." {
                return out;
            }
            out.push(l.strip_prefix('.').map_or(l.clone(), str::to_string));
        }
        panic!("no end of {cmd}");
    }
}

/// UIDL → (size, subject) of what Dovecot serves.
fn dovecot_listing(dv: &Dovecot) -> BTreeMap<String, (u64, String)> {
    let mut p = Pop3::login(dv.pop3);
    let sizes: BTreeMap<u32, u64> = p
        .multi("LIST")
        .iter()
        .map(|l| {
            let (n, s) = l.split_once(' ').unwrap();
            (n.parse().unwrap(), s.parse().unwrap())
        })
        .collect();
    let mut out = BTreeMap::new();
    for l in p.multi("UIDL") {
        let (n, uidl) = l.split_once(' ').unwrap();
        let n: u32 = n.parse().unwrap();
        let head = p.multi(&format!("TOP {n} 0"));
        let subject = head.iter().find_map(|h| h.strip_prefix("Subject: ")).unwrap().to_string();
        out.insert(uidl.to_string(), (sizes[&n], subject));
    }
    p.ok("QUIT");
    out
}

/// Everything matches: each message once byte for byte, under Dovecot's
/// UIDL for it, and the source untouched.
fn assert_migrated(local: &Local, dv: &Dovecot, msgs: &[Vec<u8>]) {
    assert_exactly_once(&local.maildir(), msgs);
    let theirs = dovecot_listing(dv);
    assert_eq!(theirs.len(), msgs.len(), "the source lost messages");
    assert_eq!(local.listing(), theirs, "pobox's UIDL → (size, subject) differs from Dovecot's");
}

#[test]
fn sigkill_mid_import_then_resume_imports_each_message_once_with_its_uidl() {
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(200, "resume");
    dv.deliver(&msgs);
    let local = Local::new();

    // The certificate is checked before the password goes out.
    let pw = local.password_file.display().to_string();
    let server = format!("localhost:{}", dv.pop3s);
    let o = run(local.pobox(&[
        "import",
        "pop3",
        "--server",
        &server,
        "--remote-user",
        USER,
        "--password-file",
        &pw,
        "--to",
        USER,
    ]));
    assert_ne!(code(&o), 0, "an unknown certificate must be refused: {}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("certificate"), "{}", show(&o));
    assert_eq!(local.count(), 0);

    // SIGKILLed right after the 57th message is stored.
    let mut cmd = local.import(&dv, &[]);
    cmd.env("POBOX_FETCH_FAULT", "import-stored:57");
    let o = run(cmd);
    assert_eq!(o.status.signal(), Some(9), "the fault point must kill it: {}", show(&o));
    assert_eq!(local.count(), 57);

    // A dry run lists the rest and changes nothing.
    let o = run(local.import(&dv, &["--dry-run"]));
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("would import message ").count(), 143, "{out}");
    assert!(out.contains("tester: would import 143, 57 already present, 0 failed"), "{out}");
    assert_eq!(local.count(), 57);

    let o = run(local.import(&dv, &["--auth", "scram-sha-256"]));
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(stdout(&o).contains(" 143 imported ("), "{}", show(&o));
    assert!(stdout(&o).contains("57 already present, 0 failed"), "{}", show(&o));
    assert_migrated(&local, &dv, &msgs);
    assert_eq!(dv.server_count(), 200, "the import must not delete anything on the source");

    // Again, over STARTTLS on port 110 this time: the same maildrop,
    // nothing new.
    let server = format!("localhost:{}", dv.pop3);
    let cert = dv.cert.display().to_string();
    let o = run(local.pobox(&[
        "import",
        "pop3",
        "--server",
        &server,
        "--starttls",
        "--ca-file",
        &cert,
        "--remote-user",
        USER,
        "--password-file",
        &pw,
        "--to",
        USER,
    ]));
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(stdout(&o).contains("tester: 0 imported (0.00 MiB), 200 already present, 0 failed"), "{}", show(&o));
    assert_migrated(&local, &dv, &msgs);
}

/// UIDLs with a ':' cannot be file names: the store keeps them in its
/// override file, written durably before the message appears. Kill the
/// import at arbitrary instants, several times; the end result must be
/// the same as an uninterrupted run.
#[test]
fn override_uidls_survive_sigkills_at_arbitrary_instants() {
    let Some(dv) = Dovecot::start_full(None, "%u:%v") else { return };
    let msgs = messages(120, "override");
    dv.deliver(&msgs);
    let local = Local::new();
    let mut kills = 0;
    for round in 0..6 {
        let before = local.count();
        let mut child = spawn(local.import(&dv, &["--quiet"]));
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            // 10 more messages, plus a few microseconds of jitter so the
            // kill lands anywhere in the next message's write.
            if local.count() >= before + 10 {
                std::thread::sleep(Duration::from_micros(137 * (round + 1)));
                let _ = child.kill();
                kills += 1;
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "import round {round} hangs");
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.wait();
    }
    assert!(kills >= 3, "the test must actually interrupt imports (only {kills} kills)");
    let o = run(local.import(&dv, &[]));
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_migrated(&local, &dv, &msgs);
    let overrides = std::fs::read_to_string(local.maildir().join("pobox-uidls")).unwrap();
    assert!(overrides.lines().count() >= 120, "UIDLs with ':' need override lines");

    // The state a kill between the override line and the message leaves
    // (line durable, message absent): here by removing one message. The
    // next run stores it once, under its UIDL, not as a duplicate.
    let victim = std::fs::read_dir(local.maildir().join("new")).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_file(&victim).unwrap();
    let o = run(local.import(&dv, &[]));
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(stdout(&o).contains(" 1 imported ("), "{}", show(&o));
    assert_migrated(&local, &dv, &msgs);
}

#[test]
fn killing_dovecot_mid_import_is_a_clear_error_and_a_rerun_completes() {
    let Some(mut dv) = Dovecot::start() else { return };
    let mut msgs = messages(200, "source-dies");
    // The received time comes from the topmost Received header.
    msgs.push(
        b"Received: from relay by old.example.net; Tue, 3 Dec 2024 10:00:00 +0000\n\
          Received: from sender by relay; Tue, 3 Dec 2024 09:59:00 +0000\n\
          Date: Mon, 2 Dec 2024 08:00:00 +0000\nSubject: dated\n\nbody\n"
            .to_vec(),
    );
    dv.deliver(&msgs);
    let local = Local::new();
    // The admin's form: a `pobox fetch` accounts file, one table per user.
    let accounts = local.dir.path().join("import.toml");
    std::fs::write(
        &accounts,
        format!(
            "[accounts.{USER}]\nhost = \"localhost\"\nport = {}\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
             ca_file = \"{}\"\nmaildir = \"/nonexistent\"\n",
            dv.pop3s,
            dv.cert.display()
        ),
    )
    .unwrap();
    set_mode(&accounts, 0o600);
    let import = || local.pobox(&["import", "pop3", "--accounts", accounts.to_str().unwrap()]);

    let mut child = spawn(import());
    let start = Instant::now();
    while local.count() < 30 {
        assert!(child.try_wait().unwrap().is_none(), "the import ended before Dovecot was killed");
        assert!(start.elapsed() < Duration::from_secs(120), "the import is stuck");
        std::thread::sleep(Duration::from_millis(1));
    }
    dv.kill_hard();
    let o = wait(child);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("localhost:{}: retrieving message", dv.pop3s)), "{}", show(&o));
    assert!(err.contains("run the same command again to continue"), "{}", show(&o));
    // Where the kill lands decides the words: between replies, inside a
    // message, or a reset.
    let said = ["closed the connection", "connection closed in the middle", "network error"];
    assert!(said.iter().any(|s| err.contains(s)), "{}", show(&o));
    let stored = local.count();
    assert!((30..201).contains(&stored), "{stored} stored before the source died");

    // The source is back (the Maildir as it was): the rerun completes.
    dv.restart();
    let o = run(import());
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(stdout(&o).contains(&format!("{} imported (", 201 - stored)), "{}", show(&o));
    assert_migrated(&local, &dv, &msgs);
    let show = run(local.pobox(&["mailbox", "show", USER, "--json"]));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&show.stdout).unwrap();
    let dated = rows.iter().find(|r| r["subject"] == "dated").unwrap();
    assert_eq!(dated["date"], "2024-12-03T10:00:00Z", "received time from the topmost Received header");
}

/// A scripted POP3 server on loopback for `connections` connections in
/// turn, each answering up to 50 commands with `reply(command line)`.
fn scripted_server(connections: usize, reply: fn(&str) -> Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((s, _)) = listener.accept() else { return };
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let _ = w.write_all(b"+OK old box\r\n");
            for _ in 0..50 {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                // The client may hang up in the middle (it stops reading
                // an over-long message): a failed write ends the connection.
                if w.write_all(&reply(line.trim_end())).is_err() || line.eq_ignore_ascii_case("QUIT\r\n") {
                    break;
                }
            }
        }
    });
    port
}

/// No UIDL command.
fn no_uidl_reply(cmd: &str) -> Vec<u8> {
    let verb = cmd.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    match verb.as_str() {
        "CAPA" => b"+OK\r\nUSER\r\n.\r\n".to_vec(),
        "USER" | "PASS" => b"+OK\r\n".to_vec(),
        "UIDL" => b"-ERR no such command\r\n".to_vec(),
        "LIST" => b"+OK\r\n1 20\r\n2 30\r\n.\r\n".to_vec(),
        "QUIT" => b"+OK bye\r\n".to_vec(),
        _ => b"-ERR unexpected\r\n".to_vec(),
    }
}

/// Three messages; the second is announced as 40 octets and is 200 KB.
fn oversending_reply(cmd: &str) -> Vec<u8> {
    let message = |subject: &str| format!("+OK\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n").into_bytes();
    match cmd.to_ascii_uppercase().as_str() {
        "CAPA" => b"+OK\r\nUSER\r\nUIDL\r\n.\r\n".to_vec(),
        "UIDL" => b"+OK\r\n1 u-one\r\n2 u-two\r\n3 u-three\r\n.\r\n".to_vec(),
        "LIST" => b"+OK\r\n1 40\r\n2 40\r\n3 40\r\n.\r\n".to_vec(),
        "RETR 1" => message("one"),
        "RETR 2" => {
            let mut m = b"+OK\r\nSubject: two\r\n\r\n".to_vec();
            m.extend(
                std::iter::repeat_n(
                    &b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"[..],
                    3000,
                )
                .flatten(),
            );
            m.extend_from_slice(b".\r\n");
            m
        }
        "RETR 3" => message("three"),
        "QUIT" => b"+OK bye\r\n".to_vec(),
        c if c.starts_with("USER") || c.starts_with("PASS") => b"+OK\r\n".to_vec(),
        _ => b"-ERR unexpected\r\n".to_vec(),
    }
}

#[test]
fn a_server_without_uidl_is_refused_and_plaintext_needs_the_flag() {
    let local = Local::new();
    let pw = local.password_file.display().to_string();
    let port = scripted_server(1, no_uidl_reply);
    let server = format!("127.0.0.1:{port}");
    let base = ["import", "pop3", "--server", &server, "--remote-user", USER, "--password-file", &pw, "--to", USER];
    let o = run(local.pobox(&[&base[..], &["--insecure-plaintext"]].concat()));
    assert_eq!(code(&o), 1, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not give UIDLs") && err.contains("refusing to import"), "{}", show(&o));
    assert!(err.contains("loopback"), "plaintext is noted: {}", show(&o));
    assert_eq!(local.count(), 0);

    // A password file others can read is refused before any connection.
    set_mode(&local.password_file, 0o644);
    let o = run(local.pobox(&[&base[..], &["--insecure-plaintext"]].concat()));
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("chmod 600"), "{}", show(&o));
    set_mode(&local.password_file, 0o600);

    // The local user must exist.
    let o = run(local.pobox(&[
        "import",
        "pop3",
        "--server",
        &server,
        "--insecure-plaintext",
        "--remote-user",
        USER,
        "--password-file",
        &pw,
        "--to",
        "nobody-here",
    ]));
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("pobox user add nobody-here"), "{}", show(&o));
}

#[test]
fn a_message_longer_than_announced_is_left_out_and_the_rest_imported() {
    let local = Local::new();
    let pw = local.password_file.display().to_string();
    let server = format!("127.0.0.1:{}", scripted_server(4, oversending_reply));
    let args = [
        "import",
        "pop3",
        "--server",
        &server,
        "--insecure-plaintext",
        "--remote-user",
        USER,
        "--password-file",
        &pw,
        "--to",
        USER,
    ];
    let o = run(local.pobox(&args));
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stdout(&o).contains("tester: 2 imported ("), "{}", show(&o));
    assert!(stdout(&o).contains("0 already present, 1 failed"), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("message 2 (UIDL u-two): the server sent more than") && err.contains("LIST said 40"),
        "{}",
        show(&o)
    );
    let uidls: Vec<String> = local.listing().into_keys().collect();
    assert_eq!(uidls, ["u-one", "u-three"]);
    // Again: the two are there, the third still refused.
    let o = run(local.pobox(&args));
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stdout(&o).contains("tester: 0 imported (0.00 MiB), 2 already present, 1 failed"), "{}", show(&o));
    assert_eq!(local.count(), 2);
}
