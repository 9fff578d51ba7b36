//! Password-guessing defences wired through the real `pobox serve`, with
//! the values from its config file (SECURITY.md "Password guessing"):
//! the failure delay, the per-IP/per-user penalties, the credential cache
//! that lets an honest user past a penalty an attacker caused, and the
//! fail2ban line, parsed by Debian's `fail2ban-regex` with our filter.
//!
//! Delays are read as lower bounds (the server cannot answer before its
//! sleep ends, however loaded the machine); the only upper bounds are far
//! from the penalties they are contrasted with.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::util::{self, Dir, PW};

/// A POP3 connection from a chosen loopback source address, so that the
/// per-IP keys of the throttle are under the test's control.
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn from(src: Ipv4Addr, port: u16) -> Client {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from((src, 0)).into()).unwrap();
        s.connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into()).unwrap();
        let t: TcpStream = s.into();
        // Above the largest penalty the tests provoke (8 s).
        t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Client { r: BufReader::new(t) };
        let g = c.line();
        assert!(g.starts_with("+OK"), "greeting: {g}");
        c
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l
    }
    fn cmd(&mut self, c: &str) -> String {
        self.r.get_mut().write_all(format!("{c}\r\n").as_bytes()).unwrap();
        self.line()
    }
    /// USER + PASS; returns the PASS reply and how long it took.
    fn login(&mut self, user: &str, pw: &str) -> (String, Duration) {
        let u = self.cmd(&format!("USER {user}"));
        assert!(u.starts_with("+OK"), "USER: {u}");
        let t0 = Instant::now();
        let p = self.cmd(&format!("PASS {pw}"));
        (p, t0.elapsed())
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// One wrong password on a fresh connection from `src`: the reply and its
/// latency.
fn wrong_password(port: u16, src: Ipv4Addr, user: &str) -> (String, Duration) {
    let mut c = Client::from(src, port);
    let r = c.login(user, "wrong password");
    assert!(r.0.starts_with("-ERR [AUTH]"), "wrong password answered {:?}", r.0);
    r
}

#[test]
fn failure_delay_from_the_config_is_applied_to_the_failing_session_only() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let delay = Duration::from_millis(3000);
    let srv = dir
        .server()
        .config("auth_failure_delay_ms", &delay.as_millis().to_string())
        .config("auth_penalty_max_ms", "0")
        .start();
    // The failing session: PASS sent, reply not yet read.
    let mut bad = Client::from(ip(5), srv.pop3);
    assert!(bad.cmd("USER alice").starts_with("+OK"));
    let t0 = Instant::now();
    bad.r.get_mut().write_all(b"PASS wrong\r\n").unwrap();
    // Meanwhile another session logs in: the delay is a sleep on the
    // failing session's own task, so this +OK comes first.
    let mut good = Client::from(ip(6), srv.pop3);
    let (ok, _) = good.login("alice", PW);
    let good_done = t0.elapsed();
    assert!(ok.starts_with("+OK"), "{ok}");
    let err = bad.line();
    let failed_after = t0.elapsed();
    assert!(err.starts_with("-ERR [AUTH] authentication failed"), "{err}");
    assert!(failed_after >= delay, "the failure was answered after {failed_after:?}, before the configured {delay:?}");
    assert!(
        good_done < failed_after,
        "an honest login ({good_done:?}) waited for another session's failure delay ({failed_after:?})"
    );
    good.cmd("QUIT");
}

#[test]
fn penalties_space_attempts_per_user_and_the_credential_cache_lets_the_owner_in() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    // No fixed delay, so what is measured is the throttle alone; its cap
    // from the config (8 s). Intervals: 3 free failures, then 0.5 s, 1 s,
    // 2 s, 4 s, 8 s per key (crates/server/src/throttle.rs).
    let srv = dir.server().config("auth_failure_delay_ms", "0").config("auth_penalty_max_ms", "8000").start();
    let port = srv.pop3;

    // The owner logs in once: (alice, PW) is now in the credential cache.
    let mut owner = Client::from(ip(2), port);
    assert!(owner.login("alice", PW).0.starts_with("+OK"));
    owner.cmd("QUIT");

    // An attacker from 127.0.0.3 guesses 8 times (a fresh connection per
    // guess; the server closes one after 3). Attempt k is admitted at the
    // user's and the IP's "next allowed time", which the intervals push
    // forward: ~0, 0, 0, 0, 0, 0, +1 s, +2 s (failures leak at one a
    // minute, so the counts sit just below whole numbers and the 0.5 s step
    // is skipped): ~3 s for the 8, whatever the parallelism. Without the
    // penalties they take a few milliseconds.
    let t0 = Instant::now();
    for _ in 0..8 {
        wrong_password(port, ip(3), "alice");
    }
    let attack = t0.elapsed();
    assert!(attack >= Duration::from_millis(2500), "8 failures took {attack:?}: the penalties were not applied");

    // Another address guessing the same user waits for the per-user
    // penalty (next slot ~4 s away), although its own IP is clean.
    let (_, probe) = wrong_password(port, ip(4), "alice");
    assert!(probe >= Duration::from_secs(3), "a guess from a clean IP for a penalised user waited only {probe:?}");

    // The owner, from yet another address, with the cached password, is
    // not held back by the penalty on "alice" (now ~8 s): the cache is
    // consulted before the throttle (SECURITY.md).
    let mut owner = Client::from(ip(7), port);
    let (ok, took) = owner.login("alice", PW);
    assert!(ok.starts_with("+OK"), "{ok}");
    assert!(
        took < Duration::from_secs(4),
        "the owner's cached login waited {took:?}: it went through the penalty (next slot ~8 s)"
    );
    owner.cmd("QUIT");

    // And the success cleared alice's slate: a typo now costs nothing.
    let (_, after) = wrong_password(port, ip(8), "alice");
    assert!(after < Duration::from_secs(4), "after the owner's login a typo still waited {after:?}");
}

#[test]
fn fail2ban_regex_matches_the_failure_line_with_our_filter() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let f2b = "fail2ban-regex";
    if !std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(f2b).is_file())) {
        return util::cannot_run("fail2ban_regex_matches_the_failure_line_with_our_filter", "fail2ban (Debian `fail2ban`)");
    }
    let srv = dir.server().start();
    // A plain failure from 127.0.0.9, and one whose SASL user name tries to
    // smuggle another address into the line (from 127.0.0.10).
    wrong_password(srv.pop3, ip(9), "alice");
    let mut c = Client::from(ip(10), srv.pop3);
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0x ip=6.6.6.6\0wrong");
    let r = c.cmd(&format!("AUTH PLAIN {plain}"));
    assert!(r.starts_with("-ERR [AUTH]"), "{r}");
    assert!(
        util::eventually(Duration::from_secs(10), || srv.stderr().matches("authentication failed").count() >= 2),
        "two failure lines logged\n{}",
        srv.dump()
    );
    let log = dir.scratch("pobox.log");
    let lines: String = srv.stderr().lines().filter(|l| l.contains("authentication failed")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, &lines).unwrap();

    // fail2ban-regex resolves the filter's `before = common.conf` next to
    // the filter: give it a filter.d with ours and Debian's common.conf.
    let filter_d = dir.scratch("fail2ban/filter.d");
    std::fs::create_dir_all(&filter_d).unwrap();
    let ours = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/fail2ban/filter.d/pobox.conf");
    std::fs::copy(ours, filter_d.join("pobox.conf")).unwrap();
    std::fs::copy("/etc/fail2ban/filter.d/common.conf", filter_d.join("common.conf"))
        .expect("Debian's fail2ban ships /etc/fail2ban/filter.d/common.conf");
    let filter = filter_d.join("pobox.conf");
    let out = util::TestCommand::new(f2b).arg(&log).arg(&filter).output();
    let text = out.stdout();
    assert!(out.status.success(), "{}\nlog:\n{lines}", out.dump());
    assert!(text.contains("Failregex: 2 total"), "both lines match:\n{text}\nlog:\n{lines}");
    assert!(text.contains("2 matched, 0 missed"), "{text}");
    // The address each match is attributed to: the real clients, never the
    // one smuggled in through the user name.
    let out = util::TestCommand::new(f2b).args(["--out", "ip"]).arg(&log).arg(&filter).output();
    assert!(out.status.success(), "{}", out.dump());
    let ips: Vec<String> = out.stdout().lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    assert_eq!(ips, ["127.0.0.9", "127.0.0.10"], "addresses fail2ban would ban\nlog:\n{lines}");
}
