//! Quota at RCPT (issue 18, item 1): LMTP and SMTP refuse a recipient who
//! is already at or over quota with `452 4.2.2` (`552 5.2.2` when over
//! quota is permanent) before DATA, over raw sockets; other recipients of
//! the same transaction are delivered; the DATA-time check still refuses
//! a message that would push a user over.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pobox_auth::UserDb;
use pobox_server::config::MailAuthConfig;
use pobox_server::{Config, Protocol, Services};
use pobox_store::quota::{Quota, QuotaConfig};
use pobox_store::{MailLocation, Mailstore, MaildirStore};

mod support;

struct TestServer {
    /// Before the directory: stopped before it is removed.
    _server: support::Running,
    smtp: String,
    lmtp: String,
    dir: tempfile::TempDir,
}

impl TestServer {
    fn count(&self, user: &str) -> usize {
        let dir: PathBuf = self.dir.path().join("mail").join(user).join("new");
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }
}

/// alice and bob, bob with 1 message against a quota of 1 (full), carol
/// with a byte quota of 3000 and nothing yet, dave with no quota and 1
/// message. `prepare` runs on the data directory before the server starts.
fn start(permanent: bool, hard_error_limit: u32, prepare: impl FnOnce(&std::path::Path)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let users = UserDb::open(dir.path().join("users"));
    for u in ["alice", "bob", "carol", "dave", "erin"] {
        users.add(u, b"pw").unwrap();
    }
    let location = MailLocation::new(format!("{}/mail/{{user}}", dir.path().display())).unwrap();
    let limited = |messages, bytes| Quota { messages, bytes };
    let quota = QuotaConfig {
        default: Quota::default(),
        users: [
            ("alice".to_string(), limited(Some(10), None)),
            ("bob".to_string(), limited(Some(1), None)),
            ("carol".to_string(), limited(None, Some(3000))),
            ("erin".to_string(), limited(Some(5), None)),
        ]
        .into_iter()
        .collect(),
    };
    let store = MaildirStore::new(location).with_quota(quota);
    for user in ["bob", "dave"] {
        store.deliver(user, &mut &b"Subject: old\n\nx\n"[..]).unwrap();
    }
    prepare(dir.path());
    let config = Config {
        hostname: "mx.example.org".into(),
        domains: vec!["example.org".into()],
        shutdown_grace: Duration::from_millis(200),
        expire_interval: Duration::ZERO,
        quota_permanent: permanent,
        smtp_hard_error_limit: hard_error_limit,
        mail_auth: MailAuthConfig { enabled: false, ..MailAuthConfig::default() },
        ..Config::default()
    };
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(store), None));
    let server = support::spawn(svc, &[Protocol::Smtp, Protocol::Lmtp]);
    let (smtp, lmtp) = (server.addrs[0].clone(), server.addrs[1].clone());
    TestServer { _server: server, smtp, lmtp, dir }
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: &str, hello: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client { reader: BufReader::new(s.try_clone().unwrap()), writer: s };
        assert!(c.reply().starts_with("220 "));
        assert!(c.cmd(hello).starts_with("250"), "{hello}");
        c
    }
    /// One reply, all its lines; empty if the connection closed.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut l = Vec::new();
            if self.reader.read_until(b'\n', &mut l).unwrap_or(0) == 0 {
                return all;
            }
            let l = String::from_utf8_lossy(&l).into_owned();
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    fn cmd(&mut self, c: &str) -> String {
        self.writer.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        self.reply()
    }
}

/// MAIL, RCPT to each of `rcpts` (replies returned), then DATA if any was
/// accepted (the per-recipient (LMTP) or single (SMTP) replies returned).
fn transaction(c: &mut Client, lmtp: bool, rcpts: &[&str]) -> (Vec<String>, Vec<String>) {
    assert!(c.cmd("MAIL FROM:<x@sender.test>").starts_with("250"));
    let at_rcpt: Vec<String> = rcpts.iter().map(|r| c.cmd(&format!("RCPT TO:<{r}>"))).collect();
    let accepted = at_rcpt.iter().filter(|r| r.starts_with("250")).count();
    if accepted == 0 {
        assert!(c.cmd("RSET").starts_with("250"));
        return (at_rcpt, Vec::new());
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.writer.write_all(b"Subject: new\r\n\r\nhello\r\n.\r\n").unwrap();
    let n = if lmtp { accepted } else { 1 };
    (at_rcpt, (0..n).map(|_| c.reply()).collect())
}

#[test]
fn lmtp_rcpt_over_quota_is_452_before_data_and_the_other_recipient_is_delivered() {
    let s = start(false, 20, |_| {});
    let mut c = Client::connect(&s.lmtp, "LHLO mta.example.org");
    let (rcpt, data) = transaction(&mut c, true, &["bob@example.org", "alice@example.org", "dave@example.org"]);
    assert!(rcpt[0].starts_with("452 4.2.2 "), "bob is full: {rcpt:?}");
    assert!(rcpt[1].starts_with("250") && rcpt[2].starts_with("250"), "{rcpt:?}");
    assert_eq!(data.len(), 2, "one reply per accepted recipient: {data:?}");
    assert!(data.iter().all(|r| r.starts_with("250 2.0.0")), "{data:?}");
    assert_eq!((s.count("alice"), s.count("bob"), s.count("dave")), (1, 1, 2));
    // Alone, bob is refused at RCPT and DATA has no recipient.
    let (rcpt, _) = transaction(&mut c, true, &["bob+tag@example.org"]);
    assert!(rcpt[0].starts_with("452 4.2.2 "), "{rcpt:?}");
    assert!(c.cmd("MAIL FROM:<x@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.org>").starts_with("452"));
    assert!(c.cmd("DATA").starts_with("503"), "no valid recipients");
}

#[test]
fn lmtp_rcpt_over_quota_is_552_when_permanent() {
    let s = start(true, 20, |_| {});
    let mut c = Client::connect(&s.lmtp, "LHLO mta.example.org");
    let (rcpt, data) = transaction(&mut c, true, &["alice@example.org", "bob@example.org"]);
    assert!(rcpt[0].starts_with("250") && rcpt[1].starts_with("552 5.2.2 "), "{rcpt:?}");
    assert!(data.len() == 1 && data[0].starts_with("250 2.0.0"), "{data:?}");
    assert_eq!((s.count("alice"), s.count("bob")), (1, 1));
}

#[test]
fn smtp_rcpt_over_quota_is_452_and_does_not_count_toward_the_error_limit() {
    let s = start(false, 3, |_| {});
    let mut c = Client::connect(&s.smtp, "EHLO client.sender.test");
    assert!(c.cmd("MAIL FROM:<x@sender.test>").starts_with("250"));
    for _ in 0..5 {
        let r = c.cmd("RCPT TO:<bob@example.org>");
        assert!(r.starts_with("452 4.2.2 "), "{r}");
    }
    assert!(c.cmd("RSET").starts_with("250"), "still open: 452 is not a hard error");
    let (rcpt, data) = transaction(&mut c, false, &["bob@example.org", "alice@example.org"]);
    assert!(rcpt[0].starts_with("452 4.2.2 ") && rcpt[1].starts_with("250"), "{rcpt:?}");
    assert!(data[0].starts_with("250"), "{data:?}");
    assert_eq!((s.count("alice"), s.count("bob")), (1, 1));
}

#[test]
fn smtp_rcpt_over_quota_is_552_when_permanent_and_counts_as_a_hard_error() {
    let s = start(true, 3, |_| {});
    let mut c = Client::connect(&s.smtp, "EHLO client.sender.test");
    let (rcpt, data) = transaction(&mut c, false, &["alice@example.org", "bob@example.org"]);
    assert!(rcpt[0].starts_with("250") && rcpt[1].starts_with("552 5.2.2 "), "{rcpt:?}");
    assert!(data[0].starts_with("250"), "{data:?}");
    assert_eq!((s.count("alice"), s.count("bob")), (1, 1));
    // The delivery reset the count; three 552s reach the limit of 3.
    assert!(c.cmd("MAIL FROM:<x@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.org>").starts_with("552"));
    assert!(c.cmd("RCPT TO:<bob@example.org>").starts_with("552"));
    let third = c.cmd("RCPT TO:<bob@example.org>");
    assert!(third.starts_with("552 5.2.2"), "{third}");
    let closing = c.reply();
    assert!(closing.starts_with("421 4.7.0"), "closed at the limit of 3: {closing:?}");
    assert_eq!(c.reply(), "", "connection closed");
}

#[test]
fn under_quota_and_unlimited_users_are_unaffected_and_data_still_checks() {
    let s = start(false, 20, |_| {});
    for (addr, lmtp) in [(&s.lmtp, true), (&s.smtp, false)] {
        let hello = if lmtp { "LHLO mta.example.org" } else { "EHLO client.sender.test" };
        let mut c = Client::connect(addr, hello);
        let (rcpt, data) = transaction(&mut c, lmtp, &["alice@example.org", "dave@example.org", "carol@example.org"]);
        assert!(rcpt.iter().all(|r| r.starts_with("250")), "{rcpt:?}");
        assert!(data.iter().all(|r| r.starts_with("250")), "{data:?}");
    }
    assert_eq!((s.count("alice"), s.count("dave"), s.count("carol")), (2, 3, 2));
    // carol (3000 octets) is under quota at RCPT; a message that would
    // push her over is still refused after DATA, and nothing is stored.
    let mut c = Client::connect(&s.lmtp, "LHLO mta.example.org");
    assert!(c.cmd("MAIL FROM:<x@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<carol@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.writer.write_all(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(5000)).as_bytes()).unwrap();
    let r = c.reply();
    assert!(r.starts_with("452 4.2.2"), "{r}");
    assert_eq!(s.count("carol"), 2);
}

#[test]
fn an_unreadable_usage_accepts_the_recipient() {
    // erin has a quota, but her maildrop path is a regular file: reading
    // her usage fails, RCPT is still 250 (delivery then fails, 4xx).
    let s = start(false, 20, |dir| {
        std::fs::write(dir.join("mail").join("erin"), b"not a directory").unwrap();
    });
    let mut c = Client::connect(&s.lmtp, "LHLO mta.example.org");
    let (rcpt, data) = transaction(&mut c, true, &["erin@example.org"]);
    assert!(rcpt[0].starts_with("250"), "{rcpt:?}");
    assert!(data[0].starts_with('4'), "{data:?}");
}
