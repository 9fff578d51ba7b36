//! LMTP intake (RFC 2033) with Python's smtplib.LMTP, swaks and raw bytes;
//! every delivery is then checked over POP3 or on disk.

use std::time::Duration;

use crate::util::*;

#[test]
fn smtplib_lmtp_delivery_is_retrievable_over_pop3() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().start();
    srv.python_ok(
        r#"
l = lmtp()
msg = b"From: s@example.org\r\nSubject: via smtplib\r\n\r\n.dot line\r\nbody\r\n"
refused = l.sendmail("s@example.org", ["alice@example.org", "nobody@example.org"], msg)
check(list(refused) == ["nobody@example.org"], refused)
check(refused["nobody@example.org"][0] == 550, refused)
check(refused["nobody@example.org"][1].startswith(b"5.1.1"), refused)
l.quit()

p = pop3()
p.user("alice"); p.pass_(PW)
check(p.stat()[0] == 1)
resp, lines, _ = p.retr(1)
check(lines[0] == b"Return-Path: <s@example.org>", lines)
check(any(l.startswith(b"Received: from client.test") for l in lines), lines)
check(lines[-5:] == [b"From: s@example.org", b"Subject: via smtplib", b"", b".dot line", b"body"], lines)
p.quit()
"#,
    );
}

#[test]
fn swaks_lmtp_unknown_recipient_gets_550_for_itself_only_and_the_others_are_delivered() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.add_user("bob", PW);
    let srv = dir.server().start();
    let out = TestCommand::tool("swaks")
        .args(["--protocol", "LMTP", "--server", "127.0.0.1", "--port", &srv.lmtp.to_string()])
        .args(["--helo", "client.test", "--from", "sender@example.org"])
        .args(["--to", "alice@example.org,nobody@example.org,bob+tag@other.test"])
        .args(["--header", "Subject: via swaks", "--body", "hello from swaks"])
        .output();
    let text = out.stdout();
    assert!(text.contains("RCPT TO:<nobody@example.org>\n<** 550 5.1.1"), "{}", out.dump());
    assert!(text.contains("RCPT TO:<alice@example.org>\n<-  250"), "{}", out.dump());
    assert!(text.contains("RCPT TO:<bob+tag@other.test>\n<-  250"), "{}", out.dump());
    let after_data = text.split("\n -> .\n").nth(1).unwrap_or_else(|| panic!("no end of DATA\n{}", out.dump()));
    let replies: Vec<&str> = after_data.lines().take_while(|l| !l.contains("QUIT")).collect();
    assert_eq!(replies.len(), 2, "one reply per accepted recipient: {replies:?}");
    assert!(replies[0].starts_with("<-  250 ") && replies[0].contains("<alice@example.org>"), "{replies:?}");
    assert!(replies[1].starts_with("<-  250 ") && replies[1].contains("<bob+tag@other.test>"), "{replies:?}");

    for user in ["alice", "bob"] {
        let mut c = srv.login(user, PW);
        let body = String::from_utf8(unstuff(&c.cmd_multi("RETR 1"))).unwrap();
        assert!(body.contains("Subject: via swaks") && body.contains("hello from swaks"), "{user}: {body}");
        c.quit();
    }
    assert!(dir.files("nobody", "new").is_empty());
}

/// RFC 2033 §4.2: one reply per RCPT and, after DATA, one reply per
/// accepted recipient in RCPT order; pipelined in one write.
#[test]
fn raw_lmtp_pipelined_transaction_gets_one_reply_per_recipient_in_order() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.add_user("bob", PW);
    let srv = dir.server().start();
    let mut l = srv.lmtp();
    l.send(
        "MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\n\
         RCPT TO:<bob@example.org>\r\nDATA\r\n",
    );
    assert!(l.reply().starts_with("250"));
    assert!(l.reply().starts_with("250"));
    let r = l.reply();
    assert!(r.starts_with("550 5.1.1"), "{r}");
    assert!(l.reply().starts_with("250"));
    assert!(l.reply().starts_with("354"));
    l.send("Subject: raw\r\n\r\nbody\r\n.\r\n");
    let a = l.reply();
    let b = l.reply();
    assert!(a.starts_with("250 2.0.0 <alice@example.org>"), "{a}");
    assert!(b.starts_with("250 2.0.0 <bob@example.org>"), "{b}");
    assert!(l.cmd("QUIT").starts_with("221"));
    assert_eq!(dir.files("alice", "new").len(), 1);
    assert_eq!(dir.files("bob", "new").len(), 1);
}

#[test]
fn plus_tag_at_any_domain_delivers_to_the_user() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().start();
    let mut l = srv.lmtp();
    for rcpt in ["alice+lists@anything.invalid", "alice@example.org", "alice+x+y@other.test"] {
        assert!(l.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
        let r = l.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(r.starts_with("250"), "{rcpt}: {r}");
        assert!(l.cmd("DATA").starts_with("354"));
        let r = l.cmd(&format!("Subject: to {rcpt}\r\n\r\nbody\r\n."));
        assert!(r.starts_with("250"), "{rcpt}: {r}");
    }
    assert_eq!(dir.files("alice", "new").len(), 3);
    assert!(!dir.data().join("mail/alice+lists").exists());
    let mut c = srv.login("alice", PW);
    assert_eq!(c.stat().0, 3);
    c.quit();
}

#[test]
fn data_over_max_message_size_gets_552_and_nothing_is_stored() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().config("max_message_size", "10000").start();
    let mut l = Lmtp::connect(srv.lmtp);
    // Announced: LHLO again to see the capability.
    let caps = l.cmd("LHLO client.test");
    assert!(caps.contains("SIZE 10000"), "{caps}");

    // MAIL FROM with a SIZE over the limit is refused up front.
    let r = l.cmd("MAIL FROM:<s@example.org> SIZE=20000");
    assert!(r.starts_with("552"), "{r}");

    // Without SIZE, the DATA itself is measured.
    assert!(l.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(l.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(l.cmd("DATA").starts_with("354"));
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    while big.len() < 50_000 {
        big.extend_from_slice(b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n");
    }
    big.extend_from_slice(b".\r\n");
    l.send(&big);
    let r = l.reply();
    assert!(r.starts_with("552"), "{r}");
    assert!(dir.files("alice", "new").is_empty() && dir.files("alice", "tmp").is_empty());

    // The session goes on: a small message is delivered.
    assert!(l.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(l.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(l.cmd("DATA").starts_with("354"));
    assert!(l.cmd("Subject: small\r\n\r\nok\r\n.").starts_with("250"));
    assert_eq!(dir.files("alice", "new").len(), 1);
    assert!(dir.files("alice", "tmp").is_empty());
}

#[test]
fn connection_dropped_mid_data_stores_nothing() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().start();
    let mut l = srv.lmtp();
    assert!(l.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(l.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(l.cmd("DATA").starts_with("354"));
    let partial = random_message(2 * 1024 * 1024, 7);
    l.send(stuff(&crlf(&partial)));
    let _ = l.stream.shutdown(std::net::Shutdown::Both);
    drop(l);

    assert!(
        srv.stderr_eventually_contains("connection lost during DATA"),
        "the server noticed the drop\n{}",
        srv.dump()
    );
    assert!(dir.files("alice", "new").is_empty(), "{:?}", dir.files("alice", "new"));
    assert!(dir.files("alice", "tmp").is_empty(), "{:?}", dir.files("alice", "tmp"));
    let mut c = srv.login("alice", PW);
    assert_eq!(c.stat(), (0, 0));
    c.quit();
}

#[test]
fn lmtp_dot_stuffed_data_is_stored_unstuffed_and_retrieved_restuffed() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().start();
    let mut l = srv.lmtp();
    assert!(l.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(l.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(l.cmd("DATA").starts_with("354"));
    // The message starts with a dot on its very first line.
    let r = l.cmd("..first\r\n...two\r\nSubject: s\r\n\r\n..\r\nend\r\n.");
    assert!(r.starts_with("250"), "{r}");
    let files = dir.files("alice", "new");
    let stored = std::fs::read(dir.maildir("alice", "new").join(&files[0])).unwrap();
    let text = String::from_utf8_lossy(&stored);
    assert!(text.ends_with("\n.first\n..two\nSubject: s\n\n.\nend\n"), "stored unstuffed: {text:?}");

    let mut c = srv.login("alice", PW);
    let wire = String::from_utf8(c.cmd_multi("RETR 1")).unwrap();
    assert!(wire.ends_with("\r\n..first\r\n...two\r\nSubject: s\r\n\r\n..\r\nend\r\n"), "{wire:?}");
    c.quit();
}

/// SIGTERM while an LMTP client is in DATA: the transaction may finish
/// within the grace period (250, durable), then the session gets 421.
#[test]
fn sigterm_lets_an_lmtp_transaction_in_data_finish_then_closes_with_421() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let mut srv = dir.server().config("shutdown_grace_secs", "5").start();
    let mut l = srv.lmtp();
    assert!(l.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(l.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(l.cmd("DATA").starts_with("354"));
    l.send("Subject: during shutdown\r\n\r\nfirst half\r\n");
    srv.sigterm();
    std::thread::sleep(Duration::from_millis(200));
    let r = l.cmd("second half\r\n.");
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(dir.files("alice", "new").len(), 1);
    let r = l.reply();
    assert!(r.starts_with("421"), "{r}");
    let status = srv.wait(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

/// CPU time (user + system) the process has used, from /proc.
fn cpu_seconds(pid: rustix::process::Pid) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// While draining, an LMTP session in DATA loops on `shutdown.draining()`,
/// which completes at once every time: the server spins a core until the
/// client finishes or the grace period ends.
#[test]
fn lmtp_session_in_data_does_not_spin_during_shutdown() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let mut srv = dir.server().config("shutdown_grace_secs", "10").start();
    let mut l = srv.lmtp();
    assert!(l.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(l.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(l.cmd("DATA").starts_with("354"));
    l.send("Subject: slow client\r\n\r\nfirst half\r\n");
    let pid = srv.pid();
    srv.sigterm();
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_millis(1500));
    let used = cpu_seconds(pid) - before;
    // Finish, so the server can stop.
    let r = l.cmd(".");
    assert!(r.starts_with("250"), "{r}");
    let _ = srv.wait(Duration::from_secs(15));
    assert!(used < 0.2, "an idle LMTP session used {used:.2} s of CPU in 1.5 s while draining");
}

/// `pobox serve` with `[policy] listen` in its config file: the policy
/// service is listed at start-up and answers like LMTP's RCPT for a full
/// mailbox; `reject_unknown` from the file applies. The protocol and its
/// edge cases are tested in `crates/server/tests/policy.rs`, Postfix
/// driving it in `crates/server/tests/postfix_data.rs`.
#[test]
fn serve_runs_the_policy_service_from_the_config_file() {
    use std::io::{BufRead, BufReader, Write};
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.add_user("bob", PW);
    dir.deliver("bob", b"Subject: old\n\nx\n");
    let srv = dir
        .server()
        .config("quota", "{ users = { bob = { messages = 1 } } }")
        .config("policy", "{ listen = [\"127.0.0.1:0\"], reject_unknown = true }")
        .start();
    let out = srv.stdout();
    let line = out.lines().find(|l| l.trim_start().starts_with("policy")).unwrap_or_else(|| panic!("{out}"));
    let addr = line.split_whitespace().last().unwrap().to_string();
    let s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut ask = |rcpt: &str| {
        w.write_all(format!("request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={rcpt}\nsize=0\n\n").as_bytes())
            .unwrap();
        let (mut action, mut empty) = (String::new(), String::new());
        r.read_line(&mut action).unwrap();
        r.read_line(&mut empty).unwrap();
        assert_eq!(empty, "\n");
        action
    };
    assert_eq!(ask("bob@example.org"), "action=452 4.2.2 <bob@example.org>: mailbox full, try again later\n");
    assert_eq!(ask("alice@example.org"), "action=DUNNO\n");
    assert_eq!(ask("nobody@example.org"), "action=550 5.1.1 <nobody@example.org>: no such user\n");
    let help = dir.pobox().args(["serve", "--help"]).assert_exit(0).stdout();
    assert!(help.contains("--policy <ADDR>"), "{help}");
}
