//! BDAT from a real client (issue 18, item 5): Dovecot's LMTP proxy
//! (`lmtp_proxy = yes`, Debian's `dovecot-lmtpd`) forwards to pobox's LMTP
//! with its lib-smtp client, which sends `BDAT` when the server offers
//! CHUNKING. Postfix's LMTP client would be the usual peer, but it never
//! sends BDAT (see `tests/postfix_data.rs`). A message large enough for
//! several chunks and the spool must arrive byte for byte, and pobox must
//! have counted the chunks.
//!
//! Needs Debian's `dovecot-core` and `dovecot-lmtpd` and root (Dovecot's
//! master starts as root); fails with a message naming the package
//! otherwise.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pobox_auth::UserDb;
use pobox_server::config::MailAuthConfig;
use pobox_server::{Config, Protocol, Services};
use pobox_store::{MailLocation, MaildirStore};

mod support;

struct TestServer {
    /// Before the directory: stopped before it is removed.
    _server: support::Running,
    lmtp: String,
    dir: tempfile::TempDir,
}

fn start() -> TestServer {
    let config = Config {
        hostname: "mx.example.org".into(),
        domains: vec!["example.org".into()],
        shutdown_grace: Duration::from_millis(200),
        expire_interval: Duration::ZERO,
        mail_auth: MailAuthConfig { enabled: false, ..MailAuthConfig::default() },
        ..Config::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let users = UserDb::open(dir.path().join("users"));
    for u in ["alice", "bob"] {
        users.add(u, b"pw").unwrap();
    }
    let location = MailLocation::new(format!("{}/mail/{{user}}", dir.path().display())).unwrap();
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(MaildirStore::new(location)), None));
    let server = support::spawn(svc, &[Protocol::Lmtp]);
    let lmtp = server.addrs[0].clone();
    TestServer { _server: server, lmtp, dir }
}

impl TestServer {
    fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        let Ok(dir) = std::fs::read_dir(self.dir.path().join("mail").join(user).join("new")) else {
            return Vec::new();
        };
        dir.map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect()
    }
}

/// Stops the throwaway Dovecot even when the test fails.
struct Dovecot(Child);

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A Dovecot whose LMTP service proxies every recipient to `backend`;
/// returns it and its LMTP port.
fn dovecot_proxy(work: &Path, backend: &str) -> (Dovecot, u16) {
    let (host, port) = backend.rsplit_once(':').unwrap();
    for sub in ["run", "state", "log"] {
        std::fs::create_dir_all(work.join(sub)).unwrap();
    }
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = format!(
        "base_dir = {d}/run\nstate_dir = {d}/state\ninstance_name = pobox-bdat-test\n\
         log_path = {d}/log/dovecot.log\ninfo_log_path = {d}/log/info.log\n\
         protocols = lmtp\nlisten = 127.0.0.1\nssl = no\nlmtp_proxy = yes\n\
         passdb {{\n  driver = static\n  args = proxy=y host={host} port={port} protocol=lmtp nopassword=y\n}}\n\
         userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home=/nonexistent\n}}\n\
         service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {listen}\n  }}\n}}\n",
        d = work.display(),
    );
    let path = work.join("dovecot.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("dovecot")
        .arg("-F")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dovecot runs");
    let guard = Dovecot(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", listen)).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(work.join("log/dovecot.log")).unwrap_or_default();
            panic!("Dovecot's LMTP did not come up; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (guard, listen)
}

fn reply(r: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut l = String::new();
        assert!(r.read_line(&mut l).unwrap() > 0, "Dovecot closed; so far {all:?}");
        all.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

fn bdat_chunks_lmtp() -> u64 {
    pobox_server::metrics::get()
        .encode_openmetrics()
        .lines()
        .find_map(|l| l.strip_prefix("pobox_bdat_chunks_total{protocol=\"lmtp\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn dovecot_lmtp_proxy_delivers_to_pobox_with_bdat_byte_for_byte() {
    assert!(Path::new("/usr/sbin/dovecot").exists(), "Dovecot is needed: apt-get install -y dovecot-lmtpd");
    assert!(is_root(), "this test starts a Dovecot master, which needs root");
    let s = start();
    let work = tempfile::tempdir().unwrap();
    let (guard, port) = dovecot_proxy(work.path(), &s.lmtp);

    // ~1.2 MB with lines a DATA client would have to dot-stuff, 8-bit
    // octets and `<CRLF>.<CRLF>` inside: several chunks, spooled.
    let mut message = b"From: a@sender.test\r\nSubject: via dovecot\r\n\r\n".to_vec();
    for i in 0..20_000 {
        message.extend_from_slice(format!(".line {i:05} caf\u{e9} {}\r\n", "y".repeat(40)).as_bytes());
    }
    message.extend_from_slice(b"\r\n.\r\nstill the same message\r\n");
    let before = bdat_chunks_lmtp();

    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    assert!(reply(&mut r).starts_with("220"));
    for c in
        ["LHLO client.test", "MAIL FROM:<a@sender.test>", "RCPT TO:<alice@example.org>", "RCPT TO:<bob@example.org>"]
    {
        w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        let rep = reply(&mut r);
        assert!(rep.starts_with("250"), "{c}: {rep}");
    }
    w.write_all(b"DATA\r\n").unwrap();
    assert!(reply(&mut r).starts_with("354"));
    // DATA toward Dovecot: dot-stuffed.
    let mut stuffed = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    stuffed.extend_from_slice(b".\r\n");
    w.write_all(&stuffed).unwrap();
    for who in ["alice", "bob"] {
        let rep = reply(&mut r);
        assert!(rep.starts_with("250"), "{who}: {rep}");
    }
    w.write_all(b"QUIT\r\n").unwrap();
    let log = std::fs::read_to_string(work.path().join("log/dovecot.log")).unwrap_or_default();
    drop(guard);

    let chunks = bdat_chunks_lmtp() - before;
    assert!(chunks >= 1, "Dovecot's proxy did not use BDAT; its log:\n{log}");
    let mut expect = Vec::new();
    let mut i = 0;
    while i < message.len() {
        if message[i] == b'\r' && message.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        expect.push(message[i]);
        i += 1;
    }
    for who in ["alice", "bob"] {
        let got = s.messages(who);
        assert_eq!(got.len(), 1, "{who}");
        assert!(got[0].ends_with(&expect), "{who}: the message changed on the way");
        assert!(got[0].starts_with(b"Return-Path: <a@sender.test>"), "{who}");
    }
    println!("Dovecot's LMTP proxy sent {chunks} BDAT chunk(s) for a {} octet message", message.len());
}
