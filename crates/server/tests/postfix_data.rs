//! Postfix → LMTP with end-of-data look-alikes in the message (issue 17,
//! finding 2): a real Postfix (smtpd, cleanup, qmgr, lmtp) relays a message
//! whose body carries `<CR><LF>.<CR><CR><LF>`, `<CR>.<CR>` and friends and a
//! smuggled second transaction; pobox's LMTP must store exactly one message,
//! and the smuggled one nowhere.
//!
//! And issue 18: Postfix's smtpd asks pobox's policy service
//! (`check_policy_service`) at RCPT, so a message to a full mailbox is
//! refused in the SMTP dialogue and never queued or bounced, while the
//! rest goes on to LMTP and arrives byte for byte. Postfix's LMTP client
//! sees pobox's CHUNKING and still sends DATA: Postfix (3.7 here, and to
//! date) implements BDAT in smtpd only, its smtp/lmtp client never sends
//! it (the string is not even in `/usr/lib/postfix/sbin/lmtp`); the test
//! asserts that, so a Postfix that starts using BDAT is noticed. A real
//! BDAT client is in `tests/dovecot_bdat.rs`.
//!
//! Needs Debian's `postfix` and root (a throwaway Postfix master in a temp
//! dir); fails with a message naming the package otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pobox_auth::UserDb;
use pobox_server::config::MailAuthConfig;
use pobox_server::{Config, Protocol, Services};
use pobox_store::quota::{Quota, QuotaConfig};
use pobox_store::{MailLocation, Mailstore, MaildirStore};

mod support;

struct TestServer {
    /// Before the directory: stopped before it is removed.
    _server: support::Running,
    lmtp: String,
    policy: String,
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
    for u in ["alice", "bob", "carol"] {
        users.add(u, b"pw").unwrap();
    }
    let location = MailLocation::new(format!("{}/mail/{{user}}", dir.path().display())).unwrap();
    // carol may hold one message and holds one: full.
    let quota = QuotaConfig {
        default: Quota::default(),
        users: [("carol".to_string(), Quota { messages: Some(1), bytes: None })].into_iter().collect(),
    };
    let store = MaildirStore::new(location).with_quota(quota);
    store.deliver("carol", &mut &b"Subject: old\n\nx\n"[..]).unwrap();
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(store), None));
    let server = support::spawn(svc, &[Protocol::Lmtp, Protocol::Policy]);
    let (lmtp, policy) = (server.addrs[0].clone(), server.addrs[1].clone());
    TestServer { _server: server, lmtp, policy, dir }
}

impl TestServer {
    fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        let Ok(dir) = std::fs::read_dir(self.dir.path().join("mail").join(user).join("new")) else {
            return Vec::new();
        };
        dir.map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect()
    }
}

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

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A Postfix that relays `example.org` to `lmtp`, with `extra` lines for
/// main.cf; returns it and its smtpd port.
fn postfix(pf: &Path, lmtp: &str, extra: &str) -> (Postfix, u16) {
    let conf = pf.join("etc");
    let queue = pf.join("queue");
    let data = pf.join("data");
    for d in [&conf, &queue, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    for d in [pf, &conf, &queue, &data] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // smtpd_forbid_bare_newline = no is Debian's default for 3.7: Postfix
    // keeps a bare CR inside a line and passes it on over LMTP.
    let main_cf = format!(
        "compatibility_level = 3.6\nqueue_directory = {queue}\ndata_directory = {data}\n\
         command_directory = /usr/sbin\ndaemon_directory = /usr/lib/postfix/sbin\n\
         shlib_directory = /usr/lib/postfix\nmail_owner = postfix\nsetgid_group = postdrop\n\
         myhostname = relay.example.net\nmydomain = example.net\nmyorigin = example.net\nmydestination =\n\
         relayhost =\ninet_interfaces = loopback-only\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
         smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
         virtual_mailbox_domains = example.org\nvirtual_transport = lmtp:inet:{lmtp}\n\
         smtp_dns_support_level = disabled\ndisable_dns_lookups = yes\nlmtp_host_lookup = native\n\
         alias_maps =\nalias_database =\nlocal_recipient_maps =\nbiff = no\n\
         maillog_file = {log}\nmaillog_file_prefixes = {base}\nmaster_service_disable =\n\
         queue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n{extra}",
        queue = queue.display(),
        data = data.display(),
        log = pf.join("maillog").display(),
        base = pf.display(),
    );
    std::fs::write(conf.join("main.cf"), main_cf).unwrap();
    let master_cf = format!(
        "127.0.0.1:{port} inet n - n - - smtpd\n\
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
    let cmd = |args: &[&str]| run(Command::new("postfix").arg("-c").arg(&conf).args(args), Duration::from_secs(60));
    let (ok, out) = cmd(&["set-permissions"]);
    assert!(ok, "postfix set-permissions: {out}");
    let guard = Postfix { config_dir: conf.clone() };
    let (ok, out) = cmd(&["start"]);
    assert!(ok, "postfix start: {out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "Postfix smtpd did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    (guard, port)
}

fn reply(r: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut l = String::new();
        assert!(r.read_line(&mut l).unwrap() > 0, "Postfix closed; so far {all:?}");
        all.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

#[test]
fn postfix_relays_end_of_data_look_alikes_to_lmtp_as_one_message() {
    assert!(Path::new("/usr/sbin/postfix").exists(), "Postfix is needed: apt-get install -y postfix");
    assert!(is_root(), "this test starts a Postfix master, which needs root");
    let s = start();
    let pf = tempfile::tempdir().unwrap();
    let (guard, port) = postfix(pf.path(), &s.lmtp, "");

    // Raw SMTP to Postfix, with look-alikes its smtpd keeps as content.
    // Not `<CR><LF>.<CR><CR><LF>` or bare-LF dots: Debian's Postfix 3.7
    // with its defaults ends DATA there itself (seen in this test's first
    // version: two transactions reached LMTP), which no receiver behind it
    // can undo; `smtpd_forbid_bare_newline = yes` and
    // `smtpd_data_restrictions = reject_unauth_pipelining` are Postfix's
    // own answer. What Postfix relays of the rest is what pobox must take
    // as one message.
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    assert!(reply(&mut r).starts_with("220"));
    for c in ["EHLO client.sender.test", "MAIL FROM:<a@sender.test>", "RCPT TO:<alice@example.org>", "DATA"] {
        w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        let rep = reply(&mut r);
        assert!(rep.starts_with('2') || rep.starts_with('3'), "{c}: {rep}");
    }
    w.write_all(
        b"From: a@sender.test\r\nSubject: look-alikes\r\nX-Cr: one\rtwo\r\n\r\n\
          first\r\n.\rx\r.\r\nMAIL FROM:<ceo@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n\
          Subject: smuggled\r\n\r\nforged\r.\rthen\r\n.\rafter\r.\r\nend\r\n..stuffed\r\n.\r\n",
    )
    .unwrap();
    let rep = reply(&mut r);
    assert!(rep.starts_with("250"), "Postfix: {rep}");
    w.write_all(b"QUIT\r\n").unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while s.messages("alice").is_empty() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(pf.path().join("maillog")).unwrap_or_default();
            panic!("Postfix did not deliver within 60 s; maillog:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let a second (smuggled) delivery, if any, arrive too.
    std::thread::sleep(Duration::from_secs(3));
    let log = std::fs::read_to_string(pf.path().join("maillog")).unwrap_or_default();
    drop(guard);
    let alice = s.messages("alice");
    assert_eq!(alice.len(), 1, "exactly one message; maillog:\n{log}");
    assert!(s.messages("bob").is_empty(), "the smuggled message was delivered; maillog:\n{log}");
    let m = &alice[0];
    let text = String::from_utf8_lossy(m);
    assert!(text.contains("by relay.example.net (Postfix)") && text.contains("with LMTP"), "{text}");
    // Stored with LF line ends. Postfix removed the dots that started
    // ".\rx\r." and ".\rafter\r." (stuffing, to it) and its cleanup
    // turned every bare CR into a space: what its LMTP client sends is
    // plain CRLF lines (intake.rs relies on this for the LMTP policy).
    let parts: [&[u8]; 6] = [
        b"first\n x .\nMAIL FROM:<ceo@example.org>\n",
        b"forged . then\n",
        b"\n after .\nend\n",
        b"\n.stuffed\n",
        b"X-Cr: one two\n",
        b"RCPT TO:<bob@example.org>\nDATA\nSubject: smuggled\n",
    ];
    for part in parts {
        assert!(m.windows(part.len()).any(|w| w == part), "{part:?} not in {text:?}");
    }
    assert!(log.contains("status=sent"), "{log}");
    assert!(!m.contains(&b'\r'), "Postfix relays no bare CR: {text:?}");
}

#[test]
fn postfix_asks_the_policy_service_at_rcpt_and_relays_the_rest_to_lmtp() {
    assert!(Path::new("/usr/sbin/postfix").exists(), "Postfix is needed: apt-get install -y postfix");
    assert!(is_root(), "this test starts a Postfix master, which needs root");
    let s = start();
    let pf = tempfile::tempdir().unwrap();
    // debug_peer_list makes Postfix log its LMTP dialogue.
    let extra = format!(
        "smtpd_recipient_restrictions = check_policy_service inet:{}\n\
         smtpd_policy_service_timeout = 30s\ndebug_peer_list = 127.0.0.1\n",
        s.policy
    );
    let (guard, port) = postfix(pf.path(), &s.lmtp, &extra);
    let conf = pf.path().join("etc");

    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let greeting = reply(&mut r);
    assert!(greeting.starts_with("220"), "{greeting}");
    let mut cmd = |c: &str| {
        w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        reply(&mut r)
    };
    assert!(cmd("EHLO client.sender.test").starts_with("250"));
    // A transaction for carol alone: refused at RCPT, so nothing to send.
    assert!(cmd("MAIL FROM:<a@sender.test> SIZE=300").starts_with("250"));
    let carol = cmd("RCPT TO:<carol@example.org>");
    assert!(carol.starts_with("452 4.2.2") && carol.contains("mailbox full"), "Postfix passed on the policy answer: {carol}");
    let data = cmd("DATA");
    assert!(data.starts_with("554"), "no valid recipients: {data}");
    assert!(cmd("RSET").starts_with("250"));
    // carol and alice: carol refused, alice accepted and delivered.
    assert!(cmd("MAIL FROM:<a@sender.test> SIZE=300 BODY=8BITMIME").starts_with("250"));
    assert!(cmd("RCPT TO:<carol+tag@example.org>").starts_with("452 4.2.2"));
    assert!(cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(cmd("DATA").starts_with("354"));
    // SMTP dot-stuffing toward Postfix; BDAT toward pobox has none.
    let body: &[u8] = b"From: a@sender.test\r\nSubject: chunked\r\n\r\n..leading dot\r\n8bit \xc3\xa9t\xc3\xa9\r\nend\r\n";
    w.write_all(body).unwrap();
    w.write_all(b".\r\n").unwrap();
    let rep = reply(&mut r);
    assert!(rep.starts_with("250"), "Postfix: {rep}");
    w.write_all(b"QUIT\r\n").unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while s.messages("alice").is_empty() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(pf.path().join("maillog")).unwrap_or_default();
            panic!("Postfix did not deliver within 60 s; maillog:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Anything else (a bounce to the sender, a deferred copy for carol)
    // would be in the queue by now.
    std::thread::sleep(Duration::from_secs(2));
    let (ok, queue) = run(Command::new("postqueue").arg("-c").arg(&conf).arg("-p"), Duration::from_secs(30));
    let log = std::fs::read_to_string(pf.path().join("maillog")).unwrap_or_default();
    drop(guard);
    assert!(ok && queue.contains("Mail queue is empty"), "Postfix queued something: {queue}\nmaillog:\n{log}");
    assert!(log.contains("NOQUEUE: reject: RCPT from") && log.contains("452 4.2.2 <carol@example.org>"), "{log}");
    assert!(!log.contains("status=bounced") && !log.contains("status=deferred"), "{log}");
    assert_eq!(s.messages("carol").len(), 1, "carol still has only her old message");
    assert_eq!(s.messages("alice").len(), 1);
    // Postfix saw CHUNKING offered and sent DATA (see the module comment).
    assert!(log.contains(": 250-CHUNKING"), "pobox did not offer CHUNKING:\n{log}");
    assert!(log.contains(": DATA") && !log.contains(": BDAT "), "Postfix's LMTP client changed:\n{log}");
    // The message arrived byte for byte (LF line ends in the Maildir, the
    // stuffed dot removed once, the 8-bit octets kept).
    let m = &s.messages("alice")[0];
    let text = String::from_utf8_lossy(m);
    assert!(text.contains("by relay.example.net (Postfix)") && text.contains("with LMTP"), "{text}");
    // Postfix adds Message-ID and Date to the header; the body is as sent.
    assert!(text.contains("\nSubject: chunked\n"), "{text}");
    let expect: &[u8] = b"\n\n.leading dot\n8bit \xc3\xa9t\xc3\xa9\nend\n";
    assert!(m.ends_with(expect), "{text}");
}
