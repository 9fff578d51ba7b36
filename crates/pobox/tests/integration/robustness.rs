//! Bad input: overlong lines, binary garbage, garbage and plaintext on the
//! TLS port, silent clients, a malformed passwd-file. Each gets a clear
//! error (or a dropped connection), and the server keeps serving others.

use std::io::{Read, Write};

use crate::util::*;

/// Proves the server still serves a normal POP3 and POP3S session.
fn assert_still_serving(srv: &Server<'_>) {
    let mut c = srv.login("alice", PW);
    c.stat();
    c.quit();
    srv.python_ok("p = pop3s(); p.user('alice'); p.pass_(PW); p.stat(); p.quit()");
}

#[test]
fn overlong_line_gets_err_and_the_session_continues() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", b"Subject: x\n\nbody\n");
    let srv = dir.server().start();
    let mut c = srv.pop3();
    let long = format!("NOOP {}", "A".repeat(10 * 1024));
    let r = c.cmd(&long);
    assert!(r.starts_with("-ERR"), "{r}");
    // RFC 2449 §4: commands up to 255 octets (CRLF included) are accepted.
    let r = c.cmd(&format!("USER {}", "u".repeat(255 - 2 - 5)));
    assert!(r.starts_with("+OK"), "a 255-octet command: {r}");
    c.login("alice", PW);
    let r = c.cmd(&format!("LIST {}", "9".repeat(10 * 1024)));
    assert!(r.starts_with("-ERR"), "{r}");
    assert_eq!(c.stat().0, 1, "the session continues in TRANSACTION");
    c.quit();
}

#[test]
fn binary_garbage_gets_errors_then_a_disconnect_and_the_server_keeps_serving() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().start();

    // Garbage in lines.
    let c = srv.pop3();
    let garbage = random_bytes(64 * 1024, 42, true);
    let mut writer = c.stream.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        for chunk in garbage.chunks(4096) {
            if writer.write_all(chunk).is_err() {
                break;
            }
        }
    });
    let out = c.read_until_closed();
    let _ = feeder.join();
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert!(lines.len() >= 2, "{text:?}");
    assert!(lines.iter().all(|l| l.starts_with("-ERR")), "only -ERR replies: {text:?}");
    assert!(lines.len() <= 25, "disconnects after a bounded number of errors: {} lines", lines.len());
    assert!(lines.last().unwrap().contains("too many"), "says why it closes: {text:?}");

    assert_still_serving(&srv);
}

/// A client that streams binary garbage with no line end at all: after the
/// first `-ERR line too long` the splitter discards input until the next LF,
/// which never comes, and every read resets the idle timer. The connection
/// stays open as long as the client keeps sending.
#[test]
fn endless_garbage_without_line_end_is_disconnected() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().start();
    let c = srv.pop3();
    let garbage = random_bytes(4 * 1024 * 1024, 43, false);
    let mut writer = c.stream.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        for chunk in garbage.chunks(16 * 1024) {
            if writer.write_all(chunk).is_err() {
                break;
            }
        }
    });
    let out = c.read_until_closed();
    let _ = feeder.join();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("-ERR"), "{text:?}");
    assert!(text.split_terminator("\r\n").all(|l| l.starts_with("-ERR")), "{text:?}");

    assert!(text.split_terminator("\r\n").count() > 1, "more than one error before closing: {text:?}");
    assert_still_serving(&srv);
}

#[test]
fn garbage_tls_handshake_on_pop3s_is_dropped_and_others_are_served() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().start();
    for (seed, looks_like_tls) in [(1, false), (2, true)] {
        let mut s = tcp(srv.pop3s);
        let mut garbage = random_bytes(8 * 1024, seed, false);
        if looks_like_tls {
            // A TLS record header for a handshake, then nonsense.
            garbage[..5].copy_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00]);
        }
        let _ = s.write_all(&garbage);
        let out = read_until_closed(&mut s);
        assert!(!String::from_utf8_lossy(&out).contains("+OK"), "{out:?}");
    }
    assert_still_serving(&srv);
}

#[test]
fn plaintext_pop3_sent_to_pop3s_is_dropped_and_others_are_served() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().start();
    let mut s = tcp(srv.pop3s);
    s.write_all(b"USER x\r\n").unwrap();
    let out = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("+OK") && !text.contains("-ERR"), "no POP3 in cleartext on 995: {text:?}");
    assert_still_serving(&srv);
}

/// A client that connects to 995 and says nothing does not hold its
/// connection forever: the handshake is bounded by the login timeout.
#[test]
fn silent_client_on_pop3s_is_dropped_after_the_login_timeout() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().config("login_timeout_secs", "1").start();
    let mut s = tcp(srv.pop3s);
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the silent connection, got {other:?}"),
    }
    // And on the cleartext port, before login.
    let c = srv.pop3();
    let rest = c.read_until_closed();
    assert!(rest.is_empty() || String::from_utf8_lossy(&rest).starts_with("-ERR"), "{rest:?}");
    assert_still_serving(&srv);
}

#[test]
fn malformed_passwd_file_lines_are_reported_with_line_numbers_and_alice_still_logs_in() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.append(&dir.users_file(), b"garbage-without-colon\nbob:{NOPE}x\n");
    dir.add_user("carol", PW);

    let out = dir.pobox().args(["user", "list"]).assert_exit(0);
    let stderr = out.stderr();
    let users = dir.users_file().display().to_string();
    assert!(stderr.contains(&format!("{users}:2:")), "line 2 reported: {stderr}");
    assert!(stderr.contains(&format!("{users}:3:")) && stderr.contains("NOPE"), "line 3 reported: {stderr}");
    assert!(!stderr.contains(":1:") && !stderr.contains(":4:"), "{stderr}");
    assert_eq!(out.stdout(), "alice\tSSHA512\ncarol\tSSHA512\n");

    let srv = dir.server().start();
    assert!(srv.stderr_eventually_contains(&format!("{users}:2:")), "serve reports line 2\n{}", srv.dump());
    assert!(srv.stderr_eventually_contains(&format!("{users}:3:")), "serve reports line 3\n{}", srv.dump());
    srv.login("alice", PW).quit();
    srv.login("carol", PW).quit();
    let mut c = srv.pop3();
    assert!(c.cmd("USER bob").starts_with("+OK"));
    assert!(c.cmd("PASS x").starts_with("-ERR [AUTH]"));
}

#[test]
fn lmtp_garbage_gets_5xx_and_the_next_transaction_works() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().start();
    let mut l = srv.lmtp();
    let r = l.cmd("\u{1}\u{2}garbage \u{7f}");
    assert!(r.starts_with('5'), "{r}");
    let r = l.cmd("EHLO wrong.protocol");
    assert!(r.starts_with("500"), "EHLO is not LMTP: {r}");
    assert!(l.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(l.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(l.cmd("DATA").starts_with("354"));
    assert!(l.cmd("Subject: ok\r\n\r\nok\r\n.").starts_with("250"));
    assert_eq!(dir.files("alice", "new").len(), 1);
}

/// Deterministic bytes; with `lines`, a CRLF about every 60 bytes.
fn random_bytes(n: usize, mut seed: u64, lines: bool) -> Vec<u8> {
    seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let b = (seed >> 24) as u8;
        if lines && seed.is_multiple_of(60) {
            v.extend_from_slice(b"\r\n");
        } else if !lines && (b == b'\n' || b == b'\r') {
            v.push(0xff);
        } else {
            v.push(b);
        }
    }
    v
}
