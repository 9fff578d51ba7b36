//! The Postfix policy service (issue 18, item 1) over a real TCP socket:
//! the decisions at `protocol_state=RCPT` (quota, announced size, unknown
//! users only when asked, other domains and states `DUNNO`), the same
//! recipient mapping as LMTP, many requests per connection however TCP
//! splits them, and garbage answered `DEFER_IF_PERMIT` then closed.
//! `tests/postfix_data.rs` has the same service driven by a real Postfix.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use pobox_auth::UserDb;
use pobox_server::config::MailAuthConfig;
use pobox_server::{Config, Protocol, Services};
use pobox_store::quota::{Quota, QuotaConfig};
use pobox_store::{MailLocation, MaildirStore, Mailstore};

mod support;

struct TestServer {
    /// Before the directory: stopped before it is removed.
    _server: support::Running,
    policy: String,
    lmtp: String,
    _dir: tempfile::TempDir,
}

/// alice (10 messages allowed, none yet), bob (1 allowed, 1 there: full),
/// carol (3000 octets allowed, none yet), dave (no quota).
fn start(permanent: bool, reject_unknown: bool) -> TestServer {
    start_with(permanent, reject_unknown, 100)
}

fn start_with(permanent: bool, reject_unknown: bool, max_connections: usize) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let users = UserDb::open(dir.path().join("users"));
    for u in ["alice", "bob", "carol", "dave"] {
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
        ]
        .into_iter()
        .collect(),
    };
    let store = MaildirStore::new(location).with_quota(quota);
    store.deliver("bob", &mut &b"Subject: old\n\nx\n"[..]).unwrap();
    let config = Config {
        hostname: "mx.example.org".into(),
        domains: vec!["example.org".into()],
        shutdown_grace: Duration::from_millis(200),
        expire_interval: Duration::ZERO,
        quota_permanent: permanent,
        policy_reject_unknown: reject_unknown,
        policy_max_connections: max_connections,
        mail_auth: MailAuthConfig { enabled: false, ..MailAuthConfig::default() },
        ..Config::default()
    };
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(store), None));
    let server = support::spawn(svc, &[Protocol::Policy, Protocol::Lmtp]);
    let (policy, lmtp) = (server.addrs[0].clone(), server.addrs[1].clone());
    TestServer { _server: server, policy, lmtp, _dir: dir }
}

/// A policy request as Postfix's smtpd sends it (a subset of its
/// attributes, in its order), at `state` for `recipient`.
fn request(state: &str, recipient: &str, size: u64) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
         client_address=192.0.2.7\nclient_name=unknown\nreverse_client_name=unknown\n\
         helo_name=client.example.net\nsender=someone@example.net\nrecipient={recipient}\n\
         recipient_count=0\nqueue_id=\ninstance=1a2b.3c4d.0\nsize={size}\netrn_domain=\n\
         stress=\nsasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\nccert_issuer=\n\
         ccert_fingerprint=\nencryption_protocol=\nencryption_cipher=\nencryption_keysize=0\n\n"
    )
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn { reader: BufReader::new(s.try_clone().unwrap()), writer: s }
    }

    /// One answer: its `action=` value; the empty line after it checked.
    fn answer(&mut self) -> String {
        let mut line = String::new();
        assert!(self.reader.read_line(&mut line).unwrap() > 0, "closed without an answer");
        let mut empty = String::new();
        self.reader.read_line(&mut empty).unwrap();
        assert_eq!(empty, "\n", "an answer ends with an empty line (after {line:?})");
        line.strip_prefix("action=").unwrap_or_else(|| panic!("not an action: {line:?}")).trim_end().to_string()
    }

    fn ask(&mut self, req: &str) -> String {
        self.writer.write_all(req.as_bytes()).unwrap();
        self.answer()
    }

    /// True when the server closed the connection (end of stream within
    /// the read timeout; a timeout is not a close).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

#[test]
fn quota_and_size_decide_at_rcpt_on_one_connection() {
    let s = start(false, false);
    let mut c = Conn::open(&s.policy);
    assert_eq!(c.ask(&request("RCPT", "alice@example.org", 0)), "DUNNO");
    assert_eq!(
        c.ask(&request("RCPT", "bob@example.org", 0)),
        "452 4.2.2 <bob@example.org>: mailbox full, try again later"
    );
    // The LMTP mapping: tags, no domain, case of the domain.
    assert_eq!(
        c.ask(&request("RCPT", "bob+news@EXAMPLE.org", 0)),
        "452 4.2.2 <bob+news@EXAMPLE.org>: mailbox full, try again later"
    );
    assert_eq!(c.ask(&request("RCPT", "bob", 0)), "452 4.2.2 <bob>: mailbox full, try again later");
    // The announced size against carol's 3000 octets.
    assert_eq!(c.ask(&request("RCPT", "carol@example.org", 2999)), "DUNNO");
    assert_eq!(
        c.ask(&request("RCPT", "carol@example.org", 3001)),
        "452 4.2.2 <carol@example.org>: mailbox full, try again later"
    );
    // No quota at all: no size is too big for the policy (max size is
    // Postfix's message_size_limit and LMTP's business).
    assert_eq!(c.ask(&request("RCPT", "dave@example.org", 1 << 40)), "DUNNO");
    // Other states, other domains, unknown users without reject_unknown.
    for state in ["CONNECT", "EHLO", "MAIL", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN"] {
        assert_eq!(c.ask(&request(state, "bob@example.org", 0)), "DUNNO", "{state}");
    }
    assert_eq!(c.ask(&request("RCPT", "bob@elsewhere.example", 0)), "DUNNO");
    assert_eq!(c.ask(&request("RCPT", "nobody@example.org", 0)), "DUNNO");
    assert_eq!(c.ask(&request("RCPT", "", 0)), "DUNNO");
    // Not an access policy request: deferred, and the connection goes on.
    assert_eq!(c.ask("request=junk\nrecipient=bob@example.org\n\n"), "DEFER_IF_PERMIT unsupported policy request");
    assert_eq!(c.ask(&request("RCPT", "alice@example.org", 0)), "DUNNO");
}

#[test]
fn pipelined_and_byte_by_byte_requests_get_one_answer_each() {
    let s = start(false, false);
    let mut c = Conn::open(&s.policy);
    let mut both = request("RCPT", "alice@example.org", 0);
    both.push_str(&request("RCPT", "bob@example.org", 0));
    both.push_str(&request("RCPT", "carol@example.org", 9999));
    c.writer.write_all(both.as_bytes()).unwrap();
    assert_eq!(c.answer(), "DUNNO");
    assert!(c.answer().starts_with("452 4.2.2 <bob@example.org>"));
    assert!(c.answer().starts_with("452 4.2.2 <carol@example.org>"));
    c.writer.set_nodelay(true).unwrap();
    for b in request("RCPT", "bob@example.org", 0).bytes() {
        c.writer.write_all(&[b]).unwrap();
    }
    assert!(c.answer().starts_with("452 4.2.2 <bob@example.org>"));
    // CRLF line ends (a hand-written client) mean the same.
    let crlf = request("RCPT", "bob@example.org", 0).replace('\n', "\r\n");
    assert!(c.ask(&crlf).starts_with("452 4.2.2 <bob@example.org>"));
}

#[test]
fn permanent_over_quota_and_reject_unknown() {
    let s = start(true, true);
    let mut c = Conn::open(&s.policy);
    assert_eq!(c.ask(&request("RCPT", "bob@example.org", 0)), "552 5.2.2 <bob@example.org>: mailbox full");
    assert_eq!(c.ask(&request("RCPT", "nobody@example.org", 0)), "550 5.1.1 <nobody@example.org>: no such user");
    // Not a valid user name at all: unknown too.
    assert_eq!(c.ask(&request("RCPT", "../etc@example.org", 0)), "550 5.1.1 <../etc@example.org>: no such user");
    // Other domains stay Postfix's business even so.
    assert_eq!(c.ask(&request("RCPT", "nobody@elsewhere.example", 0)), "DUNNO");
    assert_eq!(c.ask(&request("RCPT", "alice@example.org", 0)), "DUNNO");
    // LMTP's RCPT gives the same verdicts.
    let l = TcpStream::connect(&s.lmtp).unwrap();
    l.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(l.try_clone().unwrap());
    let mut w = l;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    w.write_all(b"LHLO t\r\n").unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.as_bytes()[3] == b' ' {
            break;
        }
    }
    for (rcpt, code) in
        [("bob@example.org", "552 5.2.2"), ("nobody@example.org", "550 5.1.1"), ("alice@example.org", "250")]
    {
        if rcpt.starts_with("bob") {
            w.write_all(b"MAIL FROM:<s@example.net>\r\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        w.write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with(code), "LMTP RCPT {rcpt}: {line}");
    }
}

#[test]
fn garbage_gets_a_deferral_and_a_close() {
    let s = start(false, false);
    let cases: [&[u8]; 4] = [
        b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
        b"request=smtpd_access_policy\nno equals sign here\n\n",
        b"request=smtpd_access_policy\n\xff\xfe=\x00\n\n",
        &[b'a'; 10_000],
    ];
    for input in cases {
        let mut c = Conn::open(&s.policy);
        c.writer.write_all(input).unwrap();
        let answer = c.answer();
        assert!(answer.starts_with("DEFER_IF_PERMIT malformed policy request"), "{answer}");
        assert!(c.closed(), "closed after garbage");
    }
    // Too many attributes and too large requests.
    let many: String = (0..200).map(|i| format!("a{i}=x\n")).collect();
    let mut c = Conn::open(&s.policy);
    assert_eq!(c.ask(&many), "DEFER_IF_PERMIT malformed policy request: too many attributes");
    assert!(c.closed());
    let big: String = (0..40).map(|i| format!("a{i}={}\n", "v".repeat(1000))).collect();
    let mut c = Conn::open(&s.policy);
    assert_eq!(c.ask(&big), "DEFER_IF_PERMIT malformed policy request: request too large");
    assert!(c.closed());
    // The service still answers.
    assert_eq!(Conn::open(&s.policy).ask(&request("RCPT", "alice@example.org", 0)), "DUNNO");
}

#[test]
fn connections_past_the_cap_are_closed_and_a_freed_slot_is_reused() {
    let s = start_with(false, false, 1);
    let mut first = Conn::open(&s.policy);
    assert_eq!(first.ask(&request("RCPT", "alice@example.org", 0)), "DUNNO");
    let mut second = Conn::open(&s.policy);
    assert!(second.closed(), "a second connection is closed at once");
    assert_eq!(first.ask(&request("RCPT", "bob@example.org", 0)).get(..9), Some("452 4.2.2"));
    drop(first);
    // The slot comes back when the first session's task ends: retry a
    // bounded number of times.
    let mut answered = false;
    for _ in 0..100 {
        let mut c = Conn::open(&s.policy);
        c.writer.write_all(request("RCPT", "alice@example.org", 0).as_bytes()).unwrap();
        let mut line = String::new();
        if c.reader.read_line(&mut line).unwrap_or(0) > 0 {
            assert_eq!(line, "action=DUNNO\n");
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(answered, "the freed slot was never reused");
}
