//! Regression tests for the POP3 findings of the audit in issue 17, each
//! written from the audit's reproduction and run against the real binary:
//!
//! - finding 3: a session that ends without QUIT (here: a reset right after
//!   RETR) changes nothing, not even the retention clocks;
//! - finding 5: error replies, SASL ones included, count toward the
//!   bad-command limit, and an unauthenticated connection has a deadline;
//! - finding 8: CAPA after login announces what CAPA before login did.

use std::time::Duration;

use crate::util::*;

const MSG1: &[u8] = b"From: bob@example.org\nSubject: one\n\nfirst\n";
const MSG2: &[u8] = b"From: bob@example.org\nSubject: two\n\nsecond\n";

/// Logs in, sends `RETR 1`, waits until the reply has reached this socket
/// (so the server has queued it) without reading it, and resets the
/// connection (SO_LINGER 0: the close sends RST).
fn retr_then_reset(server: &Server<'_>) {
    let mut c = server.login("alice", PW);
    socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO)).unwrap();
    c.send("RETR 1\r\n");
    let mut peek = [0u8; 16];
    let n = c.stream.peek(&mut peek).expect("the RETR reply arrives");
    assert!(peek[..n].starts_with(b"+OK"), "{:?}", String::from_utf8_lossy(&peek[..n]));
    drop(c);
}

fn retention_log(dir: &Dir) -> String {
    std::fs::read_to_string(dir.maildir("alice", "pobox-retention.log")).unwrap_or_default()
}

#[test]
fn expire_zero_keeps_mail_retrieved_by_a_session_reset_without_quit() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", MSG1);
    dir.deliver("alice", MSG2);
    let server = dir.server().config("retention", "{ retrieved_days = 0, expire_interval_secs = 0 }").start();
    let mut c = server.login("alice", PW);
    let before = c.uidl();
    c.quit();

    retr_then_reset(&server);
    assert!(server.stderr_eventually_contains("session ended without QUIT; nothing deleted"), "{}", server.dump());

    // RFC 1939 §6: no UPDATE, nothing removed; EXPIRE 0 removes at UPDATE.
    let mut c = server.login_after_close("alice", PW);
    assert_eq!(c.uidl(), before, "the message retrieved before the reset is still there");
    c.quit();
    assert_eq!(dir.message_files("alice").len(), 2);
    let log = retention_log(&dir);
    assert!(!log.lines().any(|l| l.starts_with("R ")), "no retrieval recorded: {log}");
}

#[test]
fn retrieved_days_clock_does_not_start_for_a_session_reset_without_quit() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", MSG1);
    let server = dir.server().config("retention", "{ retrieved_days = 3, expire_interval_secs = 0 }").start();
    let uid = {
        let mut c = server.login("alice", PW);
        let uid = c.uidl()[0].1.clone();
        c.quit();
        uid
    };
    retr_then_reset(&server);
    assert!(server.stderr_eventually_contains("session ended without QUIT; nothing deleted"), "{}", server.dump());
    let mut c = server.login_after_close("alice", PW);
    assert_eq!(c.uidl(), vec![(1, uid.clone())]);
    c.quit();

    // Four days on, a retrieval recorded by that session would have expired it.
    let config = dir.scratch("pobox.toml");
    let later = dir.pobox().arg("--config").arg(&config).args(["mailbox", "expire", "--at", "+4d"]).assert_exit(0);
    assert!(later.stdout().contains("alice: expired 0"), "{}", later.dump());
    let mut c = server.login("alice", PW);
    assert_eq!(c.uidl(), vec![(1, uid)], "never retrieved in a session that reached UPDATE");

    // The same RETR followed by QUIT does start the clock.
    c.cmd_multi("RETR 1");
    c.quit();
    let later = dir.pobox().arg("--config").arg(&config).args(["mailbox", "expire", "--at", "+4d"]).assert_exit(0);
    assert!(later.stdout().contains("alice: expired 1"), "{}", later.dump());
}

/// Sends `command` (and `continuation`, when the server asks for one) and
/// returns the status line, or `None` once the server has closed.
fn try_cmd(c: &mut Pop3, command: &str, continuation: &str) -> Option<String> {
    use std::io::{Read, Write};
    let _ = c.stream.write_all(format!("{command}\r\n").as_bytes());
    let mut line = read_status(c)?;
    if line.starts_with("+ ") {
        let _ = c.stream.write_all(format!("{continuation}\r\n").as_bytes());
        line = read_status(c)?;
    }
    // The final error is followed by the close.
    if line.contains("closing connection") {
        let mut rest = Vec::new();
        let _ = c.stream.read_to_end(&mut rest);
    }
    Some(line)
}

fn read_status(c: &mut Pop3) -> Option<String> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match c.stream.read(&mut b) {
            Ok(0) => return None,
            Ok(_) => {
                out.push(b[0]);
                if b[0] == b'\n' {
                    return Some(String::from_utf8_lossy(&out).trim_end().to_string());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("the server neither answered nor closed: {e}; {:?}", String::from_utf8_lossy(&out)),
        }
    }
}

#[test]
fn two_hundred_bad_sasl_responses_end_in_a_disconnect() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let server = dir.server().start();
    let mut c = server.pop3();
    let mut errors = Vec::new();
    let mut closed = false;
    for i in 0..200 {
        let reply = if i < 100 { try_cmd(&mut c, "AUTH PLAIN =", "") } else { try_cmd(&mut c, "AUTH LOGIN", "!!!") };
        match reply {
            Some(line) => {
                assert!(line.starts_with("-ERR"), "{line}");
                errors.push(line);
            }
            None => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "still connected after {} error replies", errors.len());
    assert_eq!(errors.len(), 21, "{errors:#?}");
    assert_eq!(errors.last().unwrap(), "-ERR too many invalid commands, closing connection");
}

#[test]
fn an_unauthenticated_connection_has_a_deadline_even_while_busy() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let server = dir.server().config("login_deadline_secs", "2").start();
    // Valid commands (USER is answered +OK and resets the idle timer),
    // so neither the idle timer nor the error limit can end this: only the
    // deadline can. The loop is bounded (60 s) to fail, not hang.
    let mut c = server.pop3();
    let mut replies = Vec::new();
    let mut closed = false;
    for _ in 0..300 {
        match try_cmd(&mut c, "USER alice", "") {
            Some(line) => replies.push(line),
            None => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(closed, "an unauthenticated client kept its connection for a minute");
    let (last, before) = replies.split_last().unwrap();
    assert_eq!(last, "-ERR login took too long, closing connection");
    assert!(!before.is_empty() && before.iter().all(|l| l == "+OK"), "{replies:?}");
    assert!(server.stderr_eventually_contains("no login within the login deadline"), "{}", server.dump());

    // The deadline is for logging in, not for the session after it.
    let mut c = server.login("alice", PW);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(c.cmd("NOOP").starts_with("+OK"));
    c.quit();
}

#[test]
fn capa_after_login_announces_the_authorization_capabilities() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let server = dir.server().start();
    // Cleartext loopback with a certificate: STLS, USER and SASL on offer.
    let mut c = server.pop3();
    let before = c.cmd_lines("CAPA");
    for cap in ["STLS", "USER"] {
        assert!(before.contains(&cap.to_string()), "{before:?}");
    }
    assert!(before.iter().any(|l| l.starts_with("SASL ")), "{before:?}");
    c.login("alice", PW);
    let after = c.cmd_lines("CAPA");
    assert_eq!(after, before, "RFC 2449 §5: announced in both states");
    c.quit();

    // And through python's poplib, which parses CAPA after login.
    let out = server.python_ok(
        "c = pop3()\nc.user('alice')\nc.pass_(PW)\ncaps = c.capa()\nprint(sorted(caps))\nc.quit()\n",
    );
    for cap in ["'STLS'", "'USER'", "'SASL'"] {
        assert!(out.contains(cap), "{out}");
    }
}
