//! Sieve vacation (RFC 5230, RFC 3834) and redirect end to end: mail delivered over LMTP
//! (and `pobox deliver`) to a user with a vacation script, replies
//! submitted by the real `pobox serve` to an SMTP sink this test runs on
//! 127.0.0.1 (plain, or STARTTLS with the test's own CA and SMTP AUTH).
//!
//! "No reply" is never asserted by waiting: the outbox is sent oldest
//! first, one message at a time, so once the reply to a later message has
//! arrived, anything queued before it would have arrived too.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine as _;

use crate::util::*;

// ---------------------------------------------------------------------------
// The SMTP sink
// ---------------------------------------------------------------------------

/// One message the sink accepted.
#[derive(Debug, Clone)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
    tls: bool,
    auth: Option<String>,
}

impl Mail {
    fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let unfolded = head.replace("\r\n ", " ");
        unfolded.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A minimal SMTP server: EHLO, optional STARTTLS and AUTH PLAIN, MAIL,
/// RCPT, DATA, RSET, NOOP, QUIT. Connections are served one at a time
/// with read timeouts; the thread stops when the sink is dropped.
struct Sink {
    port: u16,
    mail: Arc<Mutex<Vec<Mail>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

impl Sink {
    fn start(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Sink {
        let port = listener.local_addr().unwrap().port();
        let mail = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (mail, stop) = (mail.clone(), stop.clone());
            thread::spawn(move || {
                // Bounded: a test makes a handful of connections.
                for stream in listener.incoming().take(200) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    let _ = serve(stream, tls.clone(), &mail);
                }
            })
        };
        Sink {
            port,
            mail,
            stop,
            thread: Some(thread),
        }
    }

    fn on_free_port(tls: Option<Arc<rustls::ServerConfig>>) -> Sink {
        Sink::start(TcpListener::bind("127.0.0.1:0").unwrap(), tls)
    }

    fn mail(&self) -> Vec<Mail> {
        self.mail.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` messages have arrived.
    fn wait_for(&self, n: usize, server: &Server<'_>) -> Vec<Mail> {
        let ok = eventually(Duration::from_secs(30), || {
            self.mail.lock().unwrap().len() >= n
        });
        assert!(
            ok,
            "expected {n} replies at the sink, got {:?}\n{}",
            self.mail(),
            server.dump()
        );
        self.mail()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_line(conn: &mut Conn) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() > 100_000 {
            return Err(std::io::Error::other("line too long"));
        }
        match conn.read(&mut byte)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => line.push(byte[0]),
        }
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn angle(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg[start..].find('>').map_or(arg.len(), |i| start + i);
    arg[start..end].to_string()
}

fn serve(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    mail: &Mutex<Vec<Mail>>,
) -> std::io::Result<()> {
    let mut conn = Conn::Plain(stream);
    conn.write_all(b"220 sink.test ESMTP\r\n")?;
    let (mut from, mut to, mut auth) = (None::<String>, Vec::new(), None);
    loop {
        let line = read_line(&mut conn)?;
        let upper = line.to_ascii_uppercase();
        let secure = matches!(conn, Conn::Tls(_));
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            let mut reply = String::from("250-sink.test\r\n250-8BITMIME\r\n");
            if tls.is_some() && !secure {
                reply.push_str("250-STARTTLS\r\n");
            }
            if secure {
                reply.push_str("250-AUTH PLAIN\r\n");
            }
            reply.push_str("250 SIZE 10000000\r\n");
            conn.write_all(reply.as_bytes())?;
        } else if upper == "STARTTLS" && !secure && tls.is_some() {
            conn.write_all(b"220 2.0.0 go ahead\r\n")?;
            let Conn::Plain(tcp) = conn else {
                unreachable!()
            };
            let server = rustls::ServerConnection::new(tls.clone().unwrap())
                .map_err(std::io::Error::other)?;
            conn = Conn::Tls(Box::new(rustls::StreamOwned::new(server, tcp)));
            from = None;
            to.clear();
        } else if upper.starts_with("AUTH PLAIN ") && secure {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&line[11..])
                .unwrap_or_default();
            auth = Some(String::from_utf8_lossy(&decoded).replace('\0', "|"));
            conn.write_all(b"235 2.7.0 ok\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(angle(&line[10..]));
            conn.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = angle(&line[8..]);
            if rcpt.starts_with("refuse") {
                // A permanent refusal, for the redirect fallback.
                conn.write_all(b"550 5.1.1 no such user\r\n")?;
            } else {
                to.push(rcpt);
                conn.write_all(b"250 2.1.5 ok\r\n")?;
            }
        } else if upper == "DATA" {
            conn.write_all(b"354 go\r\n")?;
            let mut data = String::new();
            loop {
                let l = read_line(&mut conn)?;
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                data.push_str("\r\n");
            }
            mail.lock().unwrap().push(Mail {
                from: from.take().unwrap_or_default(),
                to: std::mem::take(&mut to),
                data,
                tls: secure,
                auth: auth.clone(),
            });
            conn.write_all(b"250 2.0.0 queued\r\n")?;
        } else if upper == "RSET" || upper == "NOOP" {
            from = None;
            to.clear();
            conn.write_all(b"250 2.0.0 ok\r\n")?;
        } else if upper == "QUIT" {
            conn.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            conn.write_all(b"502 5.5.1 not here\r\n")?;
        }
        conn.flush()?;
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const SCRIPT: &str = r#"require "vacation";
vacation :days 1 :addresses ["alice@example.org"] "I am away until Monday.";
"#;

fn install_script(dir: &Dir, user: &str, script: &str) {
    let sieve = dir.data().join("sieve");
    std::fs::create_dir_all(&sieve).unwrap();
    std::fs::write(sieve.join(format!("{user}.sieve")), script).unwrap();
}

/// Delivers one message over LMTP to alice; returns the reply to DATA.
fn lmtp_to_alice(server: &Server<'_>, envelope_from: &str, headers: &str, subject: &str) -> String {
    let mut c = server.lmtp();
    assert!(
        c.cmd(&format!("MAIL FROM:<{envelope_from}>"))
            .starts_with("250")
    );
    let r = c.cmd("RCPT TO:<alice@example.org>");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    let from = if envelope_from.is_empty() {
        "MAILER-DAEMON@example.net"
    } else {
        envelope_from
    };
    c.send(format!(
        "From: {from}\r\nTo: Alice <alice@example.org>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.net>\r\n{headers}\r\nHello Alice.\r\n.\r\n"
    ));
    c.reply()
}

fn relay_plain(port: u16) -> String {
    format!("{{ host = \"127.0.0.1\", port = {port}, tls = \"none\", retry_interval_secs = 1 }}")
}

/// A free port nothing listens on (yet).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn vacation_answers_each_sender_once_per_days_and_never_lists_bulk_auto_bounces_or_self() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    install_script(&dir, "alice", SCRIPT);
    let sink = Sink::on_free_port(None);
    let server = dir
        .server()
        .config("relay", &relay_plain(sink.port))
        .start();

    let r = lmtp_to_alice(&server, "bob@example.net", "", "Lunch");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.wait_for(1, &server);
    let reply = &got[0];
    assert_eq!(
        reply.from, "",
        "RFC 3834 §3.3: the reply's envelope sender is <>"
    );
    assert_eq!(reply.to, ["bob@example.net"], "sent to the envelope sender");
    assert_eq!(reply.header("To").as_deref(), Some("<bob@example.net>"));
    assert_eq!(reply.header("From").as_deref(), Some("alice@example.org"));
    assert_eq!(
        reply.header("Subject").as_deref(),
        Some("Auto: Lunch"),
        "RFC 5230 §4.7 default subject"
    );
    assert_eq!(
        reply.header("In-Reply-To").as_deref(),
        Some("<Lunch@example.net>")
    );
    assert_eq!(
        reply.header("References").as_deref(),
        Some("<Lunch@example.net>")
    );
    assert!(
        reply
            .header("Auto-Submitted")
            .is_some_and(|v| v.starts_with("auto-replied")),
        "{reply:?}"
    );
    assert!(
        reply.data.ends_with("\r\n\r\nI am away until Monday.\r\n"),
        "{reply:?}"
    );

    // The same sender again: stored, not answered.
    let r = lmtp_to_alice(&server, "bob@example.net", "", "Again");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(
        server.stderr_eventually_contains("sender already answered"),
        "{}",
        server.dump()
    );
    // RFC 3834 / RFC 5230 §4.6: none of these is answered.
    for (sender, headers, subject) in [
        ("dave@example.net", "Precedence: bulk\r\n", "Bulk"),
        (
            "erin@example.net",
            "List-Id: <list.example.net>\r\n",
            "List",
        ),
        (
            "frank@example.net",
            "Auto-Submitted: auto-generated\r\n",
            "Auto",
        ),
        ("", "", "Bounce"),
        ("alice@example.org", "", "Self"),
        ("owner-list@example.net", "", "Owner"),
    ] {
        let r = lmtp_to_alice(&server, sender, headers, subject);
        assert!(r.starts_with("250 2.0.0"), "{subject}: {r}");
    }
    // A different sender is answered; it was queued after all the above,
    // and the outbox is sent in order, so none of them was queued.
    let r = lmtp_to_alice(&server, "carol@example.net", "", "Hi");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.wait_for(2, &server);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].to, ["carol@example.net"]);

    // Every message was delivered, answered or not.
    let mut c = server.login("alice", PW);
    assert_eq!(c.stat().0, 9);
    c.quit();

    // A day later (the tracking file's expiry moved into the past: no
    // sleeping a day), bob is answered again. The file survived in the
    // data dir, keyed without addresses in the clear.
    let state = dir.data().join("vacation/alice.db");
    let text = std::fs::read_to_string(&state).unwrap();
    assert_eq!(text.lines().count(), 2, "bob and carol: {text}");
    assert!(!text.contains("example.net"), "{text}");
    let past: String = text
        .lines()
        .map(|l| format!("1 {}\n", l.split_once(' ').unwrap().1))
        .collect();
    std::fs::write(&state, past).unwrap();
    let r = lmtp_to_alice(&server, "bob@example.net", "", "Tomorrow");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.wait_for(3, &server);
    assert_eq!(got[2].to, ["bob@example.net"]);
    assert_eq!(got[2].header("Subject").as_deref(), Some("Auto: Tomorrow"));

    // `pobox deliver` (a pipe from the MTA) queues; the running server sends.
    let mut deliver = TestCommand::new(BIN);
    deliver
        .arg("--data")
        .arg(dir.data())
        .arg("--config")
        .arg(dir.scratch("pobox.toml"))
        .args([
            "deliver",
            "alice",
            "-f",
            "gina@example.net",
            "-a",
            "alice@example.org",
        ])
        .stdin("From: gina@example.net\r\nTo: alice@example.org\r\nSubject: Piped\r\n\r\nHi\r\n");
    deliver.assert_exit(0);
    let got = sink.wait_for(4, &server);
    assert_eq!(got[3].to, ["gina@example.net"]);
    assert_eq!(got[3].header("Subject").as_deref(), Some("Auto: Piped"));
    // The sink has the message once the relay accepted its DATA; the
    // outbox file is removed only after the relay's reply reaches pobox,
    // a moment later: wait for it (bounded).
    let outbox_empty = || {
        std::fs::read_dir(dir.data().join("outbox"))
            .unwrap()
            .next()
            .is_none()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !outbox_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(outbox_empty(), "outbox emptied\n{}", server.dump());
}

#[test]
fn relay_down_the_message_is_delivered_and_the_reply_is_retried_until_the_relay_is_up() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    install_script(&dir, "alice", SCRIPT);
    let port = closed_port();
    let server = dir.server().config("relay", &relay_plain(port)).start();

    let r = lmtp_to_alice(&server, "bob@example.net", "", "Down");
    assert!(
        r.starts_with("250 2.0.0"),
        "the relay's state never reaches the MTA: {r}"
    );
    let mut c = server.login("alice", PW);
    assert_eq!(c.stat().0, 1);
    let body = String::from_utf8(c.cmd_multi("RETR 1")).unwrap();
    assert!(body.contains("Subject: Down\r\n"), "{body}");
    c.quit();
    assert!(
        server.stderr_eventually_contains("relay failed; retrying"),
        "{}",
        server.dump()
    );
    assert_eq!(
        std::fs::read_dir(dir.data().join("outbox"))
            .unwrap()
            .count(),
        1,
        "the reply waits in the outbox"
    );

    // The relay comes up on that port: the queued reply goes out.
    let sink = Sink::start(TcpListener::bind(("127.0.0.1", port)).unwrap(), None);
    let got = sink.wait_for(1, &server);
    assert_eq!(got[0].to, ["bob@example.net"]);
    assert_eq!(got[0].header("Subject").as_deref(), Some("Auto: Down"));
    assert!(
        server.stderr_eventually_contains("sent through the relay"),
        "{}",
        server.dump()
    );
}

/// The test's CA, a certificate for 127.0.0.1 it signed, and a rustls
/// server config with it.
fn test_ca(dir: &Dir) -> (std::path::PathBuf, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pobox relay test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let ca_file = dir.scratch("relay-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf_cert.der().clone()], key)
    .unwrap();
    (ca_file, Arc::new(config))
}

#[test]
fn starttls_relay_is_verified_with_the_ca_file_and_authenticated_with_the_password_file() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    install_script(&dir, "alice", SCRIPT);
    let (ca_file, tls) = test_ca(&dir);
    let sink = Sink::on_free_port(Some(tls.clone()));
    let password_file = dir.scratch("relay.pw");
    std::fs::write(&password_file, "relay secret\n").unwrap();
    let relay = format!(
        "{{ host = \"127.0.0.1\", port = {}, ca_file = \"{}\", username = \"pobox\", password_file = \"{}\", retry_interval_secs = 1 }}",
        sink.port,
        ca_file.display(),
        password_file.display()
    );
    let server = dir.server().config("relay", &relay).start();
    let r = lmtp_to_alice(&server, "bob@example.net", "", "Secure");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.wait_for(1, &server);
    assert!(got[0].tls, "submitted after STARTTLS");
    assert_eq!(
        got[0].auth.as_deref(),
        Some("|pobox|relay secret"),
        "AUTH PLAIN with the file's password"
    );
    assert!(
        !server.stderr().contains("relay secret"),
        "the password is never logged"
    );
    drop(server);

    // Without the CA the relay's certificate is not trusted (webpki roots):
    // nothing is sent, in clear or otherwise, and the reply waits.
    let dir = Dir::new();
    dir.add_user("alice", PW);
    install_script(&dir, "alice", SCRIPT);
    let sink = Sink::on_free_port(Some(tls));
    let relay = format!(
        "{{ host = \"127.0.0.1\", port = {}, retry_interval_secs = 1 }}",
        sink.port
    );
    let server = dir.server().config("relay", &relay).start();
    let r = lmtp_to_alice(&server, "bob@example.net", "", "Untrusted");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(
        server.stderr_eventually_contains("relay failed; retrying"),
        "{}",
        server.dump()
    );
    assert!(sink.mail().is_empty(), "{:?}", sink.mail());
    assert_eq!(
        std::fs::read_dir(dir.data().join("outbox"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn without_a_relay_vacation_scripts_do_not_compile_and_mail_is_kept() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    install_script(&dir, "alice", SCRIPT);
    let script = dir.data().join("sieve/alice.sieve");
    let out = dir.pobox().args(["sieve", "check"]).arg(&script).output();
    assert!(
        out.stdout().contains("vacation needs an outbound relay"),
        "{}",
        out.dump()
    );
    let server = dir.server().start();
    let r = lmtp_to_alice(&server, "bob@example.net", "", "Kept");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(!dir.data().join("outbox").exists());
    drop(server);

    // With [relay] in the config, `pobox sieve check` and `pobox check` accept it.
    let config = dir.scratch("relay.toml");
    std::fs::write(
        &config,
        "[relay]\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\n",
    )
    .unwrap();
    let out = TestCommand::new(BIN)
        .arg("--data")
        .arg(dir.data())
        .arg("--config")
        .arg(&config)
        .args(["sieve", "check"])
        .arg(&script)
        .output();
    assert!(out.stdout().contains(": ok"), "{}", out.dump());
    // `pobox check` names the relay and a world-readable password file.
    let pw = dir.scratch("relay.pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(
        &config,
        format!(
            "[relay]\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\nusername = \"u\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let out = TestCommand::new(BIN)
        .arg("--data")
        .arg(dir.data())
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output();
    let all = format!("{}{}", out.stdout(), out.stderr());
    assert!(all.contains("relay 127.0.0.1:2525"), "{}", out.dump());
    assert!(
        all.contains("world-readable") && !all.contains("s3cret"),
        "{}",
        out.dump()
    );
    std::fs::write(
        &config,
        "[relay]\nhost = \"smtp.example.org\"\ntls = \"none\"\n",
    )
    .unwrap();
    let out = TestCommand::new(BIN)
        .arg("--data")
        .arg(dir.data())
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output();
    assert!(
        out.stderr().contains("loopback") || out.stdout().contains("loopback"),
        "{}",
        out.dump()
    );
}

#[test]
fn redirect_goes_through_the_relay_with_the_original_sender_and_never_loops_or_loses_mail() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    install_script(
        &dir,
        "alice",
        r#"require "copy";
if header :contains "subject" "refused" { redirect "refuse@example.com"; }
elsif header :contains "subject" "copy" { redirect :copy "archive@example.com"; }
else { redirect "archive@example.com"; }
"#,
    );
    let sink = Sink::on_free_port(None);
    let server = dir
        .server()
        .config("relay", &relay_plain(sink.port))
        .start();

    let r = lmtp_to_alice(&server, "bob@example.net", "", "Forward");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.wait_for(1, &server);
    assert_eq!(
        got[0].from, "bob@example.net",
        "the original envelope sender (RFC 5228 §4.2)"
    );
    assert_eq!(got[0].to, ["archive@example.com"]);
    assert!(
        got[0]
            .data
            .starts_with("X-Pobox-Loop: alice@example.org\r\n"),
        "{:?}",
        got[0]
    );
    assert!(
        got[0].data.contains("\r\nSubject: Forward\r\n")
            && got[0].data.ends_with("Hello Alice.\r\n"),
        "{:?}",
        got[0]
    );
    assert!(
        dir.message_files("alice").is_empty(),
        "redirect without :copy stores nothing here"
    );

    // Already redirected by alice once: kept, not sent round again.
    let r = lmtp_to_alice(
        &server,
        "bob@example.net",
        "X-Pobox-Loop: alice@example.org\r\n",
        "Looped",
    );
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(
        server.stderr_eventually_contains("already redirected"),
        "{}",
        server.dump()
    );
    assert_eq!(dir.message_files("alice").len(), 1);

    // :copy: forwarded and kept.
    let r = lmtp_to_alice(&server, "bob@example.net", "", "copy");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.wait_for(2, &server);
    assert_eq!(got.len(), 2, "the looped message was not sent: {got:?}");
    assert_eq!(dir.message_files("alice").len(), 2);

    // The relay refuses the target for good: the message is delivered here.
    let r = lmtp_to_alice(&server, "bob@example.net", "", "refused");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(
        server.stderr_eventually_contains("kept in the inbox instead"),
        "{}",
        server.dump()
    );
    assert_eq!(dir.message_files("alice").len(), 3);
    let mut c = server.login("alice", PW);
    let (n, _) = c.stat();
    let last = String::from_utf8(c.cmd_multi(&format!("RETR {n}"))).unwrap();
    assert!(last.contains("Subject: refused\r\n"), "{last}");
    c.quit();
    assert_eq!(sink.mail().len(), 2);
}

#[test]
fn a_relay_added_by_sighup_enables_vacation_without_a_restart() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    install_script(&dir, "alice", SCRIPT);
    let sink = Sink::on_free_port(None);
    let server = dir.server().listeners_in_config().start();
    let r = lmtp_to_alice(&server, "bob@example.net", "", "Before");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(
        server.stderr_eventually_contains("does not compile"),
        "{}",
        server.dump()
    );

    let config = dir.scratch("pobox.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("relay = {}\n", relay_plain(sink.port)));
    std::fs::write(&config, text).unwrap();
    rustix::process::kill_process(server.pid(), rustix::process::Signal::HUP).expect("kill -HUP");
    assert!(
        server.stderr_eventually_contains("configuration reloaded"),
        "{}",
        server.dump()
    );

    let r = lmtp_to_alice(&server, "carol@example.net", "", "After");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.wait_for(1, &server);
    assert_eq!(
        got[0].to,
        ["carol@example.net"],
        "only the message after the reload is answered"
    );
}
