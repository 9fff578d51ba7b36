//! The kill test: fetch 200 messages while breaking the run at many points:
//! the connection dropped at byte offsets through the stream (mostly inside
//! RETR replies), before the +OK of a DELE, before the reply to QUIT (after
//! the server committed), and the fetch process SIGKILLed at intervals.
//! Then one clean run. Every message must be stored exactly once and byte
//! for byte; in delete mode the server ends empty; in keep mode a further
//! run fetches nothing.
//!
//! Plaintext through the proxy (so it can see commands), against Dovecot.

mod common;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

fn set_port(s: &Setup, port: u16) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| if l.starts_with("port = ") { format!("port = {port}") } else { l.to_string() })
        .collect();
    std::fs::write(&s.config, text.join("\n") + "\n").unwrap();
}

/// Breaks runs in every way we know; returns how many breaks actually hit
/// a running fetch.
fn torture(s: &Setup, upstream: u16, byte_cuts: &[u64], dele_cuts: &[u32], kill_delays_ms: &[u64]) -> usize {
    let mut points = 0;
    for &cut in byte_cuts {
        let (port, fired) = proxy(upstream, Fault::AfterServerBytes(cut));
        set_port(s, port);
        let o = s.run(&["--quiet"]);
        if fired.load(Ordering::SeqCst) {
            points += 1;
            assert_eq!(code(&o), 3, "a dropped connection is a failure: {}", show(&o));
        }
    }
    for &k in dele_cuts {
        let (port, fired) = proxy(upstream, Fault::BeforeDeleOk(k));
        set_port(s, port);
        let o = s.run(&["--quiet"]);
        if fired.load(Ordering::SeqCst) {
            points += 1;
            assert_ne!(code(&o), 0, "{}", show(&o));
        }
    }
    {
        let (port, fired) = proxy(upstream, Fault::BeforeQuitReply);
        set_port(s, port);
        let _ = s.run(&["--quiet"]);
        points += usize::from(fired.load(Ordering::SeqCst));
    }
    set_port(s, upstream);
    for &ms in kill_delays_ms {
        let mut child = s.command(&["--quiet"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        if child.try_wait().unwrap().is_none() {
            points += 1;
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
    }
    points
}

fn finish(s: &Setup) -> i32 {
    let start = Instant::now();
    loop {
        let o = s.run(&["--quiet"]);
        if code(&o) <= 1 || start.elapsed() > Duration::from_secs(60) {
            return code(&o);
        }
    }
}

#[test]
fn kill_test_delete_mode_200_messages() {
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(200, "kill-del");
    dv.deliver(&msgs);
    let s = Setup::new(dv.pop3, "127.0.0.1", "security = \"none\"\nallow_insecure = true\n");
    let points = torture(
        &s,
        dv.pop3,
        &[3_000, 6_000, 9_000, 14_000, 20_000, 30_000, 45_000, 60_000, 80_000, 120_000, 200_000, 310_000],
        &[1, 2, 4, 8, 15],
        &[3, 6, 10, 15, 20, 30, 40, 55, 70, 90, 120, 160, 220, 300, 400, 550, 750, 1000],
    );
    eprintln!("kill test (delete mode): {points} kill points hit a running fetch");
    assert!(points >= 20, "too few kill points landed: {points}");
    let c = finish(&s);
    assert!(c == 0 || c == 1, "final run failed with {c}");
    assert_exactly_once(&s.maildir, &msgs);
    assert_eq!(dv.server_count(), 0, "delete mode: the maildrop must end empty");
    let o = s.run(&[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
}

#[test]
fn kill_test_keep_mode() {
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(120, "kill-keep");
    dv.deliver(&msgs);
    let s = Setup::new(dv.pop3, "127.0.0.1", "security = \"none\"\nallow_insecure = true\nkeep = true\n");
    let points = torture(&s, dv.pop3, &[5_000, 40_000, 150_000, 400_000], &[], &[10, 40, 90, 200, 400, 800]);
    eprintln!("kill test (keep mode): {points} kill points hit a running fetch");
    let c = finish(&s);
    assert!(c == 0 || c == 1, "final run failed with {c}");
    assert_exactly_once(&s.maildir, &msgs);
    assert_eq!(dv.server_count(), 120, "keep mode leaves everything on the server");
    let o = s.run(&[]);
    assert_eq!(code(&o), 1, "a further run fetches nothing: {}", show(&o));
    assert_exactly_once(&s.maildir, &msgs);
}
