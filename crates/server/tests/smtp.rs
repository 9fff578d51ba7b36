//! Receive-only SMTP, end to end: an in-process server (SMTP, POP3, LMTP on
//! loopback ports), real clients (swaks, Python's smtplib, raw sockets),
//! and every message checked by fetching it back over POP3.
//!
//! DNS: the SPF/DKIM/DMARC checks use static TXT records from the config and
//! a resolver on a closed loopback port, so no test needs the network.
//!
//! The Postfix test (`postfix_relays_to_lmtp_then_pop3`) needs Debian's
//! `postfix` and root; swaks and python3 are needed by the others. Missing
//! tools make those tests fail with a message naming the package (CI
//! installs them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pobox_auth::UserDb;
use pobox_server::config::{DnsResolver, MailAuthConfig};
use pobox_server::{Config, Protocol, Services};
use pobox_store::{MailLocation, MaildirStore};

mod support;

const HOST: &str = "mx.example.org";

struct TestServer {
    /// Before the directory: stopped before it is removed.
    _server: support::Running,
    smtp: String,
    pop3: String,
    lmtp: String,
    dir: tempfile::TempDir,
}

fn base_config() -> Config {
    Config {
        hostname: HOST.into(),
        domains: vec!["example.org".into()],
        auth_failure_delay: Duration::ZERO,
        shutdown_grace: Duration::from_millis(200),
        smtp_max_message_size: 100_000,
        smtp_max_recipients: 5,
        expire_interval: Duration::ZERO,
        mail_auth: MailAuthConfig {
            enabled: true,
            // Nothing listens there: anything not static fails fast.
            resolver: DnsResolver::Servers(vec!["127.0.0.1:9".parse().unwrap()]),
            static_txt: vec![
                ("sender.test".into(), "v=spf1 ip4:127.0.0.1 -all".into()),
                ("_dmarc.sender.test".into(), "v=DMARC1; p=reject".into()),
                // The RFC 9989 tree walk also asks the parent.
                ("_dmarc.test".into(), "v=DMARC1; p=none".into()),
                ("forged.test".into(), "v=spf1 ip4:192.0.2.1 -all".into()),
            ],
            timeout: Duration::from_secs(10),
        },
        ..Config::default()
    }
}

fn start(config: Config) -> TestServer {
    start_with(config, |_| {})
}

fn start_with(mut config: Config, setup: impl FnOnce(&Path)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let users = UserDb::open(dir.path().join("users"));
    for u in ["alice", "bob", "postmaster"] {
        users.add(u, b"pw").unwrap();
    }
    setup(dir.path());
    config.sieve.user_dir = Some(dir.path().join("sieve"));
    let location = MailLocation::new(format!("{}/mail/{{user}}", dir.path().display())).unwrap();
    let store = MaildirStore::new(location);
    let tls = pobox_server::tls::load_or_generate_many(&dir.path().join("tls"), Vec::new(), HOST, &[]).unwrap();
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(store), Some(tls)));
    let server = support::spawn(svc, &[Protocol::Smtp, Protocol::Pop3, Protocol::Lmtp]);
    let (smtp, pop3, lmtp) = (server.addrs[0].clone(), server.addrs[1].clone(), server.addrs[2].clone());
    TestServer { _server: server, smtp, pop3, lmtp, dir }
}

impl TestServer {
    fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }
    fn count(&self, user: &str, sub: &str) -> usize {
        std::fs::read_dir(self.maildir(user).join(sub)).map(|d| d.count()).unwrap_or(0)
    }
    /// Every message of `user`, fetched over POP3 (RETR), un-stuffed.
    fn pop3_messages(&self, user: &str) -> Vec<String> {
        let mut c = Line::connect(&self.pop3);
        assert!(c.line().starts_with("+OK"));
        assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
        let pass = c.cmd("PASS pw");
        assert!(pass.starts_with("+OK"), "{pass}");
        let stat = c.cmd("STAT");
        let n: usize = stat.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut out = Vec::new();
        for i in 1..=n {
            assert!(c.cmd(&format!("RETR {i}")).starts_with("+OK"));
            let mut msg = String::new();
            loop {
                let l = c.line();
                if l == ".\r\n" {
                    break;
                }
                msg.push_str(l.strip_prefix('.').unwrap_or(&l));
            }
            out.push(msg);
        }
        c.cmd("QUIT");
        out
    }
}

/// A line-oriented client (bytes in, lossy text out).
struct Line {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Line {
    fn connect(addr: &str) -> Line {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Line { reader: BufReader::new(s.try_clone().unwrap()), writer: s }
    }
    fn line(&mut self) -> String {
        let mut l = Vec::new();
        self.reader.read_until(b'\n', &mut l).unwrap();
        String::from_utf8_lossy(&l).into_owned()
    }
    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }
    fn cmd(&mut self, c: &str) -> String {
        self.send(format!("{c}\r\n").as_bytes());
        self.line()
    }
    /// Reads one (possibly multi-line) SMTP reply; returns all its lines.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "connection closed; got so far: {all:?}");
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    fn smtp(&mut self, c: &str) -> String {
        self.send(format!("{c}\r\n").as_bytes());
        self.reply()
    }
    fn smtp_greeted(addr: &str) -> Line {
        let mut c = Line::connect(addr);
        assert!(c.reply().starts_with("220 "));
        let ehlo = c.smtp("EHLO client.sender.test");
        assert!(ehlo.starts_with("250-"), "{ehlo}");
        c
    }
}

fn tool(name: &str, package: &str) {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().is_ok_and(|o| o.status.success());
    assert!(ok, "`{name}` is needed: apt-get install -y {package}");
}

/// Runs a command with a time bound; returns (success, stdout+stderr).
fn run(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut s = String::new();
            child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
            child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
            return (status.success(), s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn python(script: &str, args: &[&str]) -> (bool, String) {
    tool("python3", "python3");
    run(Command::new("python3").arg("-c").arg(script).args(args), Duration::from_secs(60))
}

// ---------------------------------------------------------------------------

#[test]
fn ehlo_advertises_the_extensions_and_no_auth() {
    let s = start(base_config());
    let mut c = Line::connect(&s.smtp);
    let greeting = c.reply();
    assert!(greeting.starts_with(&format!("220 {HOST} ESMTP")), "{greeting}");
    let ehlo = c.smtp("EHLO client.sender.test");
    for ext in ["PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 100000", "ENHANCEDSTATUSCODES", "STARTTLS"] {
        assert!(ehlo.contains(ext), "{ext} missing: {ehlo}");
    }
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(c.smtp("HELO x").starts_with("250 "));
    assert!(c.smtp("QUIT").starts_with("221 "));
}

#[test]
fn swaks_delivers_and_pop3_retrieves_with_trace_headers() {
    tool("swaks", "swaks");
    let s = start(base_config());
    let (host, port) = s.smtp.rsplit_once(':').unwrap();
    let (ok, out) = run(
        Command::new("swaks")
            .args(["--server", host, "--port", port, "--helo", "client.sender.test"])
            .args(["--from", "someone@sender.test", "--to", "alice+lists@example.org"])
            .args(["--header", "Subject: via swaks", "--body", "hello from swaks"]),
        Duration::from_secs(60),
    );
    assert!(ok, "{out}");
    assert!(out.contains("250 2.0.0"), "{out}");
    let msgs = s.pop3_messages("alice");
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert!(m.contains("Subject: via swaks"), "{m}");
    assert!(m.contains("hello from swaks"), "{m}");
    assert!(m.starts_with("Return-Path: <someone@sender.test>\r\n"), "{m}");
    assert!(m.contains("Received: from client.sender.test ([127.0.0.1])"), "{m}");
    assert!(m.contains(&format!("by {HOST} (pobox) with ESMTP")), "{m}");
    assert!(m.contains("for <alice+lists@example.org>"), "{m}");
    assert!(m.contains(&format!("Authentication-Results: {HOST};")), "{m}");
    assert!(m.contains("spf=pass"), "{m}");
    assert_eq!(s.count("alice", "tmp"), 0);
}

const SMTPLIB: &str = r#"
import smtplib, ssl, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
msg = "From: Someone <someone@sender.test>\r\nTo: alice@example.org, bob@example.org\r\nSubject: smtplib " + mode + "\r\n\r\nbody line\r\n.leading dot\r\n"
s = smtplib.SMTP(host, port, local_hostname="client.sender.test", timeout=30)
s.ehlo()
if mode == "starttls":
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    s.ehlo()
refused = s.sendmail("someone@sender.test", ["alice@example.org", "bob@example.org"], msg.encode())
assert refused == {}, refused
s.quit()
print("sent")
"#;

#[test]
fn smtplib_plain_and_starttls_deliver_to_every_recipient() {
    let s = start(base_config());
    let (host, port) = s.smtp.rsplit_once(':').unwrap();
    for mode in ["plain", "starttls"] {
        let (ok, out) = python(SMTPLIB, &[host, port, mode]);
        assert!(ok, "{mode}: {out}");
    }
    for user in ["alice", "bob"] {
        let msgs = s.pop3_messages(user);
        assert_eq!(msgs.len(), 2, "{user}");
        assert!(msgs[0].contains("Subject: smtplib plain") && msgs[0].contains("with ESMTP\r\n"), "{}", msgs[0]);
        assert!(msgs[1].contains("Subject: smtplib starttls") && msgs[1].contains("with ESMTPS\r\n"), "{}", msgs[1]);
        assert!(msgs[1].contains("\r\n.leading dot\r\n"), "dot-stuffing round trip: {}", msgs[1]);
        assert!(msgs[0].contains(&format!("for <{user}@example.org>")));
    }
}

/// The open-relay test: nothing for a foreign domain, however asked.
#[test]
fn never_relays_with_or_without_tls_or_auth_looking_input() {
    // Over 20 refusals on one connection: above the hard error limit,
    // which has its own tests (data_end.rs).
    let s = start(Config { smtp_hard_error_limit: 100, ..base_config() });
    let foreign = [
        "victim@foreign.example",
        "victim@example.org.foreign.example",
        "victim%foreign.example@example.org",
        "foreign.example!victim@example.org",
        "\"victim@foreign.example\"@example.org",
        "victim@[192.0.2.1]",
        "victim@[127.0.0.1]",
        "@example.org:victim@foreign.example",
    ];
    let check = |c: &mut Line, label: &str| {
        assert!(c.smtp("MAIL FROM:<someone@sender.test>").starts_with("250"), "{label}");
        for rcpt in foreign {
            let r = c.smtp(&format!("RCPT TO:<{rcpt}>"));
            assert!(r.starts_with('5'), "{label}: {rcpt} was not refused: {r}");
            if rcpt.ends_with("foreign.example") && !rcpt.starts_with('@') {
                assert!(r.starts_with("550 5.7.1"), "{label}: {rcpt}: {r}");
            }
        }
        let r = c.smtp("DATA");
        assert!(r.starts_with("554") || r.starts_with("503"), "{label}: DATA with no recipients: {r}");
        assert!(c.smtp("RSET").starts_with("250"));
    };
    // Plain.
    let mut c = Line::smtp_greeted(&s.smtp);
    check(&mut c, "plain");
    // AUTH-looking input: refused, and it changes nothing.
    for auth in ["AUTH PLAIN AGFsaWNlAHB3", "AUTH LOGIN", "AUTH CRAM-MD5", "AUTH XOAUTH2 dXNlcj1hbGljZQ=="] {
        let r = c.smtp(auth);
        assert!(r.starts_with("502") || r.starts_with("503") || r.starts_with("504"), "{auth}: {r}");
    }
    check(&mut c, "after AUTH");
    let r = c.smtp("MAIL FROM:<someone@sender.test> AUTH=alice@example.org");
    assert!(r.starts_with("250") || r.starts_with('5'), "{r}");
    if r.starts_with("250") {
        let r = c.smtp("RCPT TO:<victim@foreign.example>");
        assert!(r.starts_with("550 5.7.1"), "MAIL AUTH= must not enable relaying: {r}");
    }
    c.smtp("QUIT");
    // Over STARTTLS (Python: ssl), plus AUTH there too.
    let script = r#"
import smtplib, ssl, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="client.sender.test", timeout=30)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx); s.ehlo()
print("AUTH", s.docmd("AUTH", "PLAIN AGFsaWNlAHB3"))
print("MAIL", s.mail("someone@sender.test"))
for r in ["victim@foreign.example", "victim%foreign.example@example.org", "victim@[192.0.2.1]"]:
    code, text = s.rcpt(r)
    print("RCPT", r, code, text)
    assert code >= 500, (r, code, text)
    if r == "victim@foreign.example":
        assert code == 550 and b"5.7.1" in text, text
print("DATA", s.docmd("DATA"))
s.quit()
print("done")
"#;
    let (host, port) = s.smtp.rsplit_once(':').unwrap();
    let (ok, out) = python(script, &[host, port]);
    assert!(ok && out.contains("done"), "{out}");
    assert!(!s.maildir("alice").join("new").exists() || s.count("alice", "new") == 0);
}

#[test]
fn recipients_unknown_malformed_and_too_many() {
    let s = start(base_config());
    let mut c = Line::smtp_greeted(&s.smtp);
    assert!(c.smtp("RCPT TO:<alice@example.org>").starts_with("503"), "RCPT before MAIL");
    assert!(c.smtp("MAIL FROM:<someone@sender.test>").starts_with("250"));
    assert!(c.smtp("MAIL FROM:<x@sender.test>").starts_with("503"), "nested MAIL");
    assert!(c.smtp("RCPT TO:<nobody@example.org>").starts_with("550 5.1.1"));
    assert!(c.smtp("RCPT TO:<../etc@example.org>").starts_with('5'));
    for bad in ["RCPT TO:<alice@@example.org>", "RCPT TO:alice example.org", "RCPT TO:<>", "RCPT TO:<alice>", "RCPT"] {
        let r = c.smtp(bad);
        assert!(r.starts_with('5'), "{bad}: {r}");
    }
    assert!(c.smtp("RCPT TO:<Postmaster>").starts_with("250"), "RFC 5321 §4.5.1 postmaster");
    for u in ["alice", "alice+a", "alice+b", "bob"] {
        assert!(c.smtp(&format!("RCPT TO:<{u}@EXAMPLE.ORG>")).starts_with("250"), "{u}");
    }
    assert!(c.smtp("RCPT TO:<bob+x@example.org>").starts_with("452 4.5.3"), "max recipients is 5");
    // Malformed senders.
    assert!(c.smtp("RSET").starts_with("250"));
    for bad in ["MAIL FROM:<a@b@c>", "MAIL FROM:<", "MAIL FROM:<x@y> SIZE=abc", "MAIL FROM:<x@y> BODY=BINARYMIME"] {
        let r = c.smtp(bad);
        assert!(r.starts_with('5'), "{bad}: {r}");
        c.smtp("RSET");
    }
    // Null reverse path is legal (bounces).
    assert!(c.smtp("MAIL FROM:<>").starts_with("250"));
    assert!(c.smtp("RCPT TO:<alice@example.org>").starts_with("250"));
    c.send(b"DATA\r\n");
    assert!(c.reply().starts_with("354"));
    c.send(b"Subject: bounce\r\n\r\nx\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(s.pop3_messages("alice")[0].starts_with("Return-Path: <>\r\n"));
}

#[test]
fn overlong_command_line_is_500_and_the_session_goes_on() {
    let s = start(base_config());
    let mut c = Line::smtp_greeted(&s.smtp);
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 10_000));
    long.extend_from_slice(b"\r\n");
    c.send(&long);
    let r = c.reply();
    assert!(r.starts_with("500 5.5.2"), "{r}");
    // The rest of the long line was skipped, not parsed as commands.
    assert!(c.smtp("NOOP").starts_with("250"), "session still usable");
}

#[test]
fn eight_bit_headers_are_stored_and_bare_lf_or_cr_is_refused() {
    let s = start(base_config());
    let mut c = Line::smtp_greeted(&s.smtp);
    assert!(c.smtp("MAIL FROM:<someone@sender.test> BODY=8BITMIME SMTPUTF8").starts_with("250"));
    assert!(c.smtp("RCPT TO:<alice@example.org>").starts_with("250"));
    c.send(b"DATA\r\n");
    assert!(c.reply().starts_with("354"));
    c.send(b"Subject: caf\xc3\xa9 \xff\xfe junk\r\n\r\nline1\r\nline2\r\n\xe9t\xe9\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    let name = std::fs::read_dir(s.maildir("alice").join("new")).unwrap().next().unwrap().unwrap().path();
    let stored = std::fs::read(name).unwrap();
    let needle = b"Subject: caf\xc3\xa9 \xff\xfe junk\n";
    assert!(stored.windows(needle.len()).any(|w| w == needle), "8-bit header kept as is");
    assert!(stored.windows(6).any(|w| w == b"line1\n"));
    assert!(!stored.windows(2).any(|w| w == b"\r\n"), "CRLF stored as LF");
    // Issue 17: a bare LF or CR (RFC 5321 §2.3.8) is refused after the end
    // of data, and the session goes on (intake.rs argues the policy).
    for body in [&b"X-Bare: lf\n\r\nx\r\n.\r\n"[..], b"X-Cr: a\rb\r\n\r\nx\r\n.\r\n"] {
        assert!(c.smtp("MAIL FROM:<someone@sender.test>").starts_with("250"));
        assert!(c.smtp("RCPT TO:<alice@example.org>").starts_with("250"));
        c.send(b"DATA\r\n");
        assert!(c.reply().starts_with("354"));
        c.send(body);
        let r = c.reply();
        assert!(r.starts_with("550 5.6.0"), "{r}");
    }
    assert!(c.smtp("NOOP").starts_with("250"));
    assert_eq!(s.pop3_messages("alice").len(), 1);
}

#[test]
fn missing_final_dot_at_disconnect_delivers_nothing() {
    let s = start(base_config());
    {
        let mut c = Line::smtp_greeted(&s.smtp);
        assert!(c.smtp("MAIL FROM:<someone@sender.test>").starts_with("250"));
        assert!(c.smtp("RCPT TO:<alice@example.org>").starts_with("250"));
        c.send(b"DATA\r\n");
        assert!(c.reply().starts_with("354"));
        c.send(b"Subject: cut\r\n\r\nhalf a message\r\n.");
        // Dropped here: no CRLF after the dot, so no end of data.
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.count("alice", "new"), 0);
    assert_eq!(s.count("alice", "tmp"), 0, "nothing half-written");
    // The server is still fine.
    let mut c = Line::smtp_greeted(&s.smtp);
    assert!(c.smtp("NOOP").starts_with("250"));
}

#[test]
fn oversized_message_is_552_and_nothing_is_stored() {
    let s = start(base_config());
    let mut c = Line::smtp_greeted(&s.smtp);
    assert!(c.smtp("MAIL FROM:<someone@sender.test> SIZE=200000").starts_with("552 5.3.4"), "declared SIZE");
    assert!(c.smtp("MAIL FROM:<someone@sender.test> SIZE=1000").starts_with("250"));
    assert!(c.smtp("RCPT TO:<alice@example.org>").starts_with("250"));
    c.send(b"DATA\r\n");
    assert!(c.reply().starts_with("354"));
    let line = [b'x'; 998];
    c.send(b"Subject: big\r\n\r\n");
    for _ in 0..200 {
        c.send(&line);
        c.send(b"\r\n");
    }
    c.send(b".\r\n");
    let r = c.reply();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The transaction is over; the session continues.
    assert!(c.smtp("NOOP").starts_with("250"));
    assert_eq!(s.count("alice", "new"), 0);
    assert_eq!(s.count("alice", "tmp"), 0);
}

/// RFC 3207 §4.2 / CVE-2011-0411: commands pipelined after STARTTLS in
/// cleartext are discarded, and the session starts over.
#[test]
fn plaintext_injected_after_starttls_is_discarded() {
    let script = r#"
import socket, ssl, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
f = s.makefile("rb")
def reply(f):
    out = b""
    while True:
        l = f.readline()
        assert l, out
        out += l
        if l[3:4] != b"-":
            return out.decode()
print(reply(f).strip())
s.sendall(b"EHLO inj.sender.test\r\n"); print(reply(f).strip())
s.sendall(b"STARTTLS\r\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<alice@example.org>\r\n")
r = reply(f); print(r.strip()); assert r.startswith("220"), r
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="mx.example.org")
g = t.makefile("rb")
# No EHLO yet after TLS: MAIL must be refused (the session was reset) ...
t.sendall(b"MAIL FROM:<x@sender.test>\r\n"); r = reply(g); print("MAIL before EHLO:", r.strip()); assert r.startswith("503"), r
t.sendall(b"EHLO inj.sender.test\r\n"); r = reply(g); assert "STARTTLS" not in r, r
# ... and the injected MAIL was never executed, so this is not "nested".
t.sendall(b"MAIL FROM:<x@sender.test>\r\n"); r = reply(g); print("MAIL:", r.strip()); assert r.startswith("250"), r
t.sendall(b"DATA\r\n"); r = reply(g); print("DATA:", r.strip()); assert r.startswith("554") or r.startswith("503"), r
t.sendall(b"STARTTLS\r\n"); r = reply(g); assert r.startswith("503"), r
t.sendall(b"QUIT\r\n"); print(reply(g).strip())
print("ok")
"#;
    let s = start(base_config());
    let (host, port) = s.smtp.rsplit_once(':').unwrap();
    let (ok, out) = python(script, &[host, port]);
    assert!(ok && out.contains("\nok"), "{out}");
    assert_eq!(s.count("alice", "new"), 0);
}

/// A DKIM-signed message with SPF and DMARC records (static, no network):
/// all three pass; a forged Authentication-Results in our name is removed,
/// a foreign one kept; and a Sieve script can test the result.
#[test]
fn authentication_results_spf_dkim_dmarc_and_forgery_removal() {
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;
    use ring::signature::KeyPair;

    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    use base64::Engine as _;
    let public = base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref());
    let key = Ed25519Key::from_pkcs8_der(pkcs8.as_ref()).unwrap();

    let body = "From: Someone <someone@sender.test>\r\nTo: alice@example.org\r\nSubject: signed\r\n\
                Authentication-Results: mx.example.org; spf=pass; dkim=pass; dmarc=pass\r\n\
                Authentication-Results: other.example; spf=pass\r\n\r\nsigned body\r\n";
    let signature = DkimSigner::from_key(key)
        .domain("sender.test")
        .selector("sel")
        .headers(["From", "To", "Subject"])
        .sign(body.as_bytes())
        .unwrap();
    let signed = format!("{}{}", signature.to_header(), body);

    let mut config = base_config();
    config.mail_auth.static_txt.push(("sel._domainkey.sender.test".into(), format!("v=DKIM1; k=ed25519; p={public}")));
    let s = start_with(config, |dir| {
        std::fs::create_dir_all(dir.join("sieve")).unwrap();
        std::fs::write(
            dir.join("sieve/bob.sieve"),
            "require \"fileinto\";\n\
             if header :contains \"Authentication-Results\" \"spf=fail\" { fileinto \"Junk\"; }\n",
        )
        .unwrap();
    });
    let mut c = Line::smtp_greeted(&s.smtp);
    assert!(c.smtp("MAIL FROM:<someone@sender.test>").starts_with("250"));
    assert!(c.smtp("RCPT TO:<alice@example.org>").starts_with("250"));
    c.send(b"DATA\r\n");
    assert!(c.reply().starts_with("354"));
    c.send(signed.replace("\r\n.", "\r\n..").as_bytes());
    c.send(b".\r\n");
    assert!(c.reply().starts_with("250"));

    // SPF fail for a forged sender: Sieve files it into Junk.
    assert!(c.smtp("MAIL FROM:<ceo@forged.test>").starts_with("250"));
    assert!(c.smtp("RCPT TO:<bob@example.org>").starts_with("250"));
    c.send(b"DATA\r\n");
    assert!(c.reply().starts_with("354"));
    c.send(b"From: ceo@forged.test\r\nSubject: wire money\r\n\r\nnow\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.smtp("QUIT");

    let m = &s.pop3_messages("alice")[0];
    let ar: Vec<&str> = m.split("\r\n").filter(|l| l.starts_with("Authentication-Results:")).collect();
    assert_eq!(ar.len(), 2, "ours (new) + the foreign one: {m}");
    assert!(ar[0].starts_with(&format!("Authentication-Results: {HOST};")), "{m}");
    assert!(ar[1].contains("other.example"), "{m}");
    let header_block = m.split("\r\n\r\n").next().unwrap();
    assert!(header_block.contains("dkim=pass"), "{m}");
    assert!(header_block.contains("spf=pass"), "{m}");
    assert!(header_block.contains("dmarc=pass"), "{m}");
    assert!(!m.contains("mx.example.org; spf=pass; dkim=pass; dmarc=pass"), "forged header removed: {m}");

    assert!(s.pop3_messages("bob").is_empty(), "SPF-failed message is not in the inbox");
    let junk = s.maildir("bob").join(".Junk/new");
    let files: Vec<_> = std::fs::read_dir(&junk).unwrap().collect();
    assert_eq!(files.len(), 1);
    let stored = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(stored.contains("spf=fail"), "{stored}");
}

/// DNS down (nothing answers): the message is delivered, and the header
/// says temperror/none rather than anything failing.
#[test]
fn dns_unavailable_still_delivers() {
    let mut config = base_config();
    config.mail_auth.static_txt.clear();
    let s = start(config);
    let mut c = Line::smtp_greeted(&s.smtp);
    assert!(c.smtp("MAIL FROM:<someone@unknown.test>").starts_with("250"));
    assert!(c.smtp("RCPT TO:<alice@example.org>").starts_with("250"));
    c.send(b"DATA\r\nFrom: someone@unknown.test\r\nSubject: x\r\n\r\nx\r\n.\r\n");
    assert!(c.reply().starts_with("354"));
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    let m = &s.pop3_messages("alice")[0];
    assert!(m.contains("spf=temperror") || m.contains("none"), "{m}");
}

#[test]
fn sieve_reject_for_all_recipients_is_550_for_some_is_250() {
    let s = start_with(base_config(), |dir| {
        std::fs::create_dir_all(dir.join("sieve")).unwrap();
        std::fs::write(dir.join("sieve/bob.sieve"), "require \"reject\";\nreject \"no thanks\";\n").unwrap();
    });
    let mut c = Line::smtp_greeted(&s.smtp);
    assert!(c.smtp("MAIL FROM:<someone@sender.test>").starts_with("250"));
    assert!(c.smtp("RCPT TO:<bob@example.org>").starts_with("250"));
    c.send(b"DATA\r\nSubject: one\r\n\r\nx\r\n.\r\n");
    assert!(c.reply().starts_with("354"));
    let r = c.reply();
    assert!(r.starts_with("550 5.7.1") && r.contains("no thanks"), "{r}");
    assert!(c.smtp("MAIL FROM:<someone@sender.test>").starts_with("250"));
    assert!(c.smtp("RCPT TO:<bob@example.org>").starts_with("250"));
    assert!(c.smtp("RCPT TO:<alice@example.org>").starts_with("250"));
    c.send(b"DATA\r\nSubject: two\r\n\r\nx\r\n.\r\n");
    assert!(c.reply().starts_with("354"));
    assert!(c.reply().starts_with("250"));
    assert_eq!(s.pop3_messages("alice").len(), 1);
    assert_eq!(s.pop3_messages("bob").len(), 0);
}

#[test]
fn connections_per_ip_are_limited() {
    let config = Config { smtp_max_connections_per_ip: 2, ..base_config() };
    let s = start(config);
    let mut a = Line::connect(&s.smtp);
    assert!(a.reply().starts_with("220"));
    let mut b = Line::connect(&s.smtp);
    assert!(b.reply().starts_with("220"));
    let mut c = Line::connect(&s.smtp);
    assert!(c.line().starts_with("421"), "third connection refused");
    // POP3 is counted apart.
    let mut p = Line::connect(&s.pop3);
    assert!(p.line().starts_with("+OK"));
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    let mut d = Line::connect(&s.smtp);
    assert!(d.reply().starts_with("220"), "slot freed");
}

#[test]
fn idle_timeout_closes_with_421_and_data_is_dropped() {
    let config = Config { smtp_timeout: Duration::from_secs(1), ..base_config() };
    let s = start(config);
    let mut c = Line::smtp_greeted(&s.smtp);
    assert!(c.smtp("MAIL FROM:<someone@sender.test>").starts_with("250"));
    assert!(c.smtp("RCPT TO:<alice@example.org>").starts_with("250"));
    c.send(b"DATA\r\nSubject: slow\r\n\r\npartial");
    assert!(c.reply().starts_with("354"));
    let r = c.line();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert_eq!(s.count("alice", "new"), 0);
    assert_eq!(s.count("alice", "tmp"), 0);
}

// ---------------------------------------------------------------------------
// Postfix → LMTP → POP3
// ---------------------------------------------------------------------------

/// Stops the throwaway Postfix even when the test fails.
struct Postfix {
    config_dir: PathBuf,
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn postfix_relays_to_lmtp_then_pop3() {
    assert!(
        Path::new("/usr/sbin/postfix").exists(),
        "Postfix is needed for the real-world path: apt-get install -y postfix"
    );
    assert!(rustix_is_root(), "the Postfix test starts a Postfix master, which needs root");
    let s = start(base_config());
    let pf = tempfile::tempdir().unwrap();
    let conf = pf.path().join("etc");
    let queue = pf.path().join("queue");
    let data = pf.path().join("data");
    for d in [&conf, &queue, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Postfix refuses group/world-writable paths and wants its queue owned
    // by root with the subdirectories owned by the postfix user.
    for d in [pf.path(), &conf, &queue, &data] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let smtpd_port = free_port();
    let lmtp = s.lmtp.clone();
    let main_cf = format!(
        "compatibility_level = 3.6\n\
         queue_directory = {queue}\n\
         data_directory = {data}\n\
         command_directory = /usr/sbin\n\
         daemon_directory = /usr/lib/postfix/sbin\n\
         shlib_directory = /usr/lib/postfix\n\
         mail_owner = postfix\n\
         setgid_group = postdrop\n\
         myhostname = relay.example.net\n\
         mydomain = example.net\n\
         myorigin = example.net\n\
         mydestination =\n\
         relayhost =\n\
         inet_interfaces = loopback-only\n\
         inet_protocols = ipv4\n\
         mynetworks = 127.0.0.0/8\n\
         smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
         virtual_mailbox_domains = example.org\n\
         virtual_transport = lmtp:inet:{lmtp}\n\
         smtputf8_enable = yes\n\
         smtp_dns_support_level = disabled\n\
         disable_dns_lookups = yes\n\
         lmtp_host_lookup = native\n\
         alias_maps =\n\
         alias_database =\n\
         local_recipient_maps =\n\
         biff = no\n\
         maillog_file = {log}\n\
         maillog_file_prefixes = {base}\n\
         master_service_disable =\n\
         queue_run_delay = 1s\n\
         minimal_backoff_time = 1s\n\
         maximal_backoff_time = 2s\n",
        queue = queue.display(),
        data = data.display(),
        log = pf.path().join("maillog").display(),
        base = pf.path().display(),
    );
    std::fs::write(conf.join("main.cf"), main_cf).unwrap();
    // master.cf: only what this test uses, smtpd on a loopback port.
    let master_cf = format!(
        "127.0.0.1:{smtpd_port} inet n - n - - smtpd\n\
         pickup    unix  n       -       n       60      1       pickup\n\
         cleanup   unix  n       -       n       -       0       cleanup\n\
         qmgr      unix  n       -       n       300     1       qmgr\n\
         rewrite   unix  -       -       n       -       -       trivial-rewrite\n\
         bounce    unix  -       -       n       -       0       bounce\n\
         defer     unix  -       -       n       -       0       bounce\n\
         trace     unix  -       -       n       -       0       bounce\n\
         verify    unix  -       -       n       -       1       verify\n\
         flush     unix  n       -       n       1000?   0       flush\n\
         proxymap  unix  -       -       n       -       -       proxymap\n\
         smtp      unix  -       -       n       -       -       smtp\n\
         relay     unix  -       -       n       -       -       smtp\n\
         showq     unix  n       -       n       -       -       showq\n\
         error     unix  -       -       n       -       -       error\n\
         retry     unix  -       -       n       -       -       error\n\
         discard   unix  -       -       n       -       -       discard\n\
         local     unix  -       n       n       -       -       local\n\
         virtual   unix  -       n       n       -       -       virtual\n\
         lmtp      unix  -       -       n       -       -       lmtp\n\
         anvil     unix  -       -       n       -       1       anvil\n\
         scache    unix  -       -       n       -       1       scache\n\
         postlog   unix-dgram n  -       n       -       1       postlogd\n"
    );
    std::fs::write(conf.join("master.cf"), master_cf).unwrap();
    let postfix = |args: &[&str]| {
        run(Command::new("postfix").arg("-c").arg(&conf).args(args), Duration::from_secs(60))
    };
    let (ok, out) = postfix(&["set-permissions"]);
    assert!(ok, "postfix set-permissions: {out}");
    let (ok, out) = postfix(&["check"]);
    assert!(ok, "postfix check: {out}");
    let guard = Postfix { config_dir: conf.clone() };
    let (ok, out) = postfix(&["start"]);
    assert!(ok, "postfix start: {out}");

    // Wait for smtpd, then inject over SMTP with smtplib.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", smtpd_port)).is_err() {
        assert!(Instant::now() < deadline, "Postfix smtpd did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.sender.test", timeout=30)
msg = "From: someone@sender.test\r\nTo: alice@example.org\r\nSubject: via postfix \u00e9\r\n\r\nthrough Postfix and LMTP\r\n".encode("utf-8")
refused = s.sendmail("someone@sender.test", ["alice+pf@example.org", "bob@example.org"], msg, mail_options=["SMTPUTF8"])
assert refused == {}, refused
try:
    s.sendmail("someone@sender.test", ["victim@foreign.example"], b"Subject: relay?\r\n\r\nx\r\n")
    print("RELAYED")
except smtplib.SMTPRecipientsRefused as e:
    print("foreign refused", e)
s.quit()
print("sent")
"#;
    let (ok, out) = python(script, &[&smtpd_port.to_string()]);
    assert!(ok && out.contains("sent"), "{out}");

    // Postfix delivers asynchronously: poll the maildrops (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.count("alice", "new") + s.count("bob", "new") < 2 {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(pf.path().join("maillog")).unwrap_or_default();
            panic!("Postfix did not deliver within 60 s; maillog:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(guard);
    for user in ["alice", "bob"] {
        let msgs = s.pop3_messages(user);
        assert_eq!(msgs.len(), 1, "{user}");
        let m = &msgs[0];
        assert!(m.contains("through Postfix and LMTP"), "{m}");
        assert!(m.contains("with LMTP"), "pobox's LMTP trace: {m}");
        assert!(m.contains("by relay.example.net (Postfix)"), "Postfix's trace: {m}");
        assert!(m.contains("Subject: via postfix \u{e9}"), "SMTPUTF8 round trip: {m}");
    }
}

fn rustix_is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
