//! Load and abuse: the real `pobox serve` under idle-connection floods,
//! slow senders, connect/close floods from one address, pipelined garbage
//! and huge AUTH continuations, while an honest client (its own source
//! address, 127.0.0.2) logs in, STATs, RETRs and QUITs.
//!
//! - `abuse_quick_bounded` (the test command): 1,000 garbage connections,
//!   1,000 idle connections held open, 200 huge AUTH continuations, a short
//!   connect/close flood; asserts what RELIABILITY.md claims: every attack
//!   connection ended by the server, every idle one accepted, the honest
//!   client served during and after each within a generous latency bound
//!   (not a speed figure), and the server's RSS within a generous bound.
//! - `abuse_measurements` (`#[ignore]`d from the test command; `.ci/run`
//!   runs it with `POBOX_ABUSE_SAMPLES=50`): 10,000 connections, slow
//!   senders, and the rest at full size, with the honest client's latency
//!   (p50/p99/max) and the server's RSS per attack, RELIABILITY.md's claims
//!   asserted. Writes `target/abuse-report.txt`.
//!
//! Attack connections come from many loopback source addresses (127.1.x.y),
//! as a botnet would, so the per-address limit (20) does not simply refuse
//! them all; the connect/close flood comes from 127.0.0.1 alone.

#![allow(unreachable_pub)]

#[path = "../integration/util.rs"]
#[allow(dead_code)]
mod util;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use util::{Dir, PW, Server};

const HONEST: &str = "honest";

/// Raises the soft NOFILE limit to the hard one (and the hard one to 65,536
/// where allowed); the server inherits it.
fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let want = Rlimit { current: Some(65_536), maximum: Some(65_536) };
    if setrlimit(Resource::Nofile, want).is_err() {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: cur.maximum, maximum: cur.maximum });
    }
    let now = getrlimit(Resource::Nofile);
    eprintln!("abuse: NOFILE soft limit {:?} (was {:?})", now.current, cur.current);
}

/// Attack source address number `i` (127.1.0.1 ...), 20 connections each
/// at most (the server's per-address limit) when `per` is 20.
fn attacker_addr(i: usize, per: usize) -> Ipv4Addr {
    let n = i / per;
    Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8)
}

fn connect_from(src: Ipv4Addr, port: u16, linger0: bool) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((src, 0)).into())?;
    if linger0 {
        s.set_linger(Some(Duration::ZERO))?;
    }
    s.connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into(), Duration::from_secs(10))?;
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(15)))?;
    t.set_write_timeout(Some(Duration::from_secs(15)))?;
    Ok(t)
}

fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        out.push(b[0]);
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
    }
}

/// One honest session from 127.0.0.2: greeting, USER, PASS, STAT, RETR 1,
/// QUIT. Returns its duration, or what went wrong.
fn honest_session(port: u16) -> Result<Duration, String> {
    let t0 = Instant::now();
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    for _attempt in 0..50 {
        let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 2), port, false).map_err(|e| fail("connect", &e))?;
        let g = read_line(&mut s).map_err(|e| fail("greeting", &e))?;
        if !g.starts_with("+OK") {
            return Err(format!("greeting: {}", g.trim_end()));
        }
        s.write_all(format!("USER {HONEST}\r\nPASS {PW}\r\n").as_bytes()).map_err(|e| fail("write", &e))?;
        let _ = read_line(&mut s).map_err(|e| fail("USER", &e))?;
        let p = read_line(&mut s).map_err(|e| fail("PASS", &e))?;
        if p.starts_with("-ERR [IN-USE]") {
            // The previous honest session's lock is released just after
            // its QUIT reply; retry (counted in the latency).
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        if !p.starts_with("+OK") {
            return Err(format!("PASS: {}", p.trim_end()));
        }
        s.write_all(b"STAT\r\nRETR 1\r\n").map_err(|e| fail("write", &e))?;
        let st = read_line(&mut s).map_err(|e| fail("STAT", &e))?;
        if !st.starts_with("+OK 1 ") {
            return Err(format!("STAT: {}", st.trim_end()));
        }
        loop {
            let l = read_line(&mut s).map_err(|e| fail("RETR", &e))?;
            if l == ".\r\n" {
                break;
            }
        }
        s.write_all(b"QUIT\r\n").map_err(|e| fail("write", &e))?;
        let q = read_line(&mut s).map_err(|e| fail("QUIT", &e))?;
        if !q.starts_with("+OK") {
            return Err(format!("QUIT: {}", q.trim_end()));
        }
        return Ok(t0.elapsed());
    }
    Err("maildrop stayed [IN-USE]".into())
}

struct Latency {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "honest {}/{} ok, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.ok,
            self.ok + self.failed,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )?;
        if let Some(e) = &self.first_error {
            write!(f, " (first error: {e})")?;
        }
        Ok(())
    }
}

/// `n` honest sessions, one after another, `gap` apart.
fn measure(port: u16, n: usize, gap: Duration) -> Latency {
    let mut times = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for _ in 0..n {
        match honest_session(port) {
            Ok(d) => times.push(d),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        std::thread::sleep(gap);
    }
    times.sort();
    let pct = |p: f64| times.get(((times.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default();
    Latency { ok: times.len(), failed, first_error, p50: pct(0.5), p99: pct(0.99), max: times.last().copied().unwrap_or_default() }
}

/// (VmRSS, VmHWM) of the server in KiB.
fn rss(srv: &Server<'_>) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid().as_raw_nonzero())).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn start<'d>(dir: &'d Dir, extra: &[(&str, &str)]) -> Server<'d> {
    let mut b = dir.server();
    for (k, v) in extra {
        b = b.config(k, v);
    }
    b.start()
}

fn setup() -> Dir {
    raise_nofile();
    let dir = Dir::new();
    dir.add_user(HONEST, PW);
    dir.deliver(HONEST, b"From: a@example.org\nSubject: honest\n\nthe honest client's message\n");
    dir
}

// ---------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------

/// Opens `n` connections (20 per source address) and reads each greeting;
/// returns the open ones.
fn open_idle(port: u16, n: usize) -> (Vec<TcpStream>, usize) {
    let mut v = Vec::with_capacity(n);
    let mut refused = 0;
    for i in 0..n {
        match connect_from(attacker_addr(i, 20), port, true) {
            Ok(mut s) => match read_line(&mut s) {
                Ok(g) if g.starts_with("+OK") => v.push(s),
                _ => refused += 1,
            },
            Err(_) => refused += 1,
        }
    }
    (v, refused)
}

/// `n` connections, `threads` at a time, each writing `bytes` of pipelined
/// garbage commands without reading, then draining until the server closes.
fn garbage(port: u16, n: usize, threads: usize, bytes: usize) -> (u64, u64) {
    let closed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut payload = Vec::new();
    let mut i = 0u32;
    while payload.len() < bytes {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        match i % 4 {
            0 => payload.extend_from_slice(b"XYZZY garbage command\r\n"),
            1 => payload.extend_from_slice(b"RETR 1\r\nDELE 1\r\n"),
            2 => payload.extend((0..200).map(|k| (k as u32 ^ i) as u8)),
            _ => payload.extend_from_slice(b"\x00\xff\r\n"),
        }
    }
    let payload = Arc::new(payload);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (closed, errors, next, payload) = (closed.clone(), errors.clone(), next.clone(), payload.clone());
            s.spawn(move || {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if k >= n {
                        break;
                    }
                    let Ok(mut c) = connect_from(attacker_addr(k % 5000, 1), port, true) else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let _ = c.write_all(&payload);
                    let mut sink = [0u8; 4096];
                    loop {
                        match c.read(&mut sink) {
                            Ok(0) => {
                                closed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                                closed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (closed.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
}

/// `n` connections sending `AUTH PLAIN` and then a continuation of `size`
/// bytes of base64 without a line end, then CRLF. Returns (ended by the
/// server: it closed the connection, or reset it; not ended: the client's
/// read timed out or failed otherwise, or it could not connect).
fn huge_auth(port: u16, n: usize, threads: usize, size: usize) -> (u64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let not_done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (done, not_done, next) = (done.clone(), not_done.clone(), next.clone());
            s.spawn(move || {
                let chunk = vec![b'A'; 64 * 1024];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if k >= n {
                        break;
                    }
                    let Ok(mut c) = connect_from(attacker_addr(k % 5000, 1), port, true) else {
                        not_done.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let _ = read_line(&mut c);
                    let _ = c.write_all(b"AUTH PLAIN\r\n");
                    let mut sent = 0;
                    while sent < size {
                        if c.write_all(&chunk).is_err() {
                            break;
                        }
                        sent += chunk.len();
                    }
                    let _ = c.write_all(b"\r\n");
                    let _ = c.shutdown(std::net::Shutdown::Write);
                    // Ended means the server ended it: EOF or a reset. A
                    // read that times out (15 s) is a connection the server
                    // kept, and is counted as such.
                    let mut sink = Vec::new();
                    match c.read_to_end(&mut sink) {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            done.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => not_done.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    });
    (done.load(Ordering::Relaxed), not_done.load(Ordering::Relaxed))
}

/// Connect/close from 127.0.0.1 alone, `threads` in parallel, until `stop`
/// or `max` connections, counting them in `count`. Returns the number of
/// connections made.
fn flood(port: u16, threads: usize, max: u64, stop: &AtomicBool, count: &AtomicU64) -> u64 {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) && count.load(Ordering::Relaxed) < max {
                    if let Ok(c) = connect_from(Ipv4Addr::LOCALHOST, port, true) {
                        count.fetch_add(1, Ordering::Relaxed);
                        drop(c);
                    }
                }
            });
        }
    });
    count.load(Ordering::Relaxed)
}

/// `n` connections (20 per address) each sending one byte of
/// `USER honest\r\n` every `every`, for `duration`.
fn slow_senders(port: u16, n: usize, every: Duration, duration: Duration, stop: &AtomicBool) -> usize {
    let (mut conns, _) = open_idle(port, n);
    let text = b"USER slowloris\r\nPASS x\r\n";
    let t0 = Instant::now();
    let mut k = 0;
    while t0.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        conns.retain_mut(|c| c.write_all(&text[k % text.len()..k % text.len() + 1]).is_ok());
        k += 1;
        let tick = Instant::now();
        while tick.elapsed() < every && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    conns.len()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Generous bound on one honest session (login, STAT, RETR, QUIT) while
/// under attack, for a debug build on a loaded 2-core CI machine: measured
/// worst cases are ~0.5 s (quick) and 2.7 s (full-size attacks). It catches
/// an honest client queued behind the attackers (seconds to minutes), not
/// a slow machine.
const HONEST_BOUND: Duration = Duration::from_secs(10);

/// The same bound for the measurement run's full-size attacks (which saw
/// a 2.7 s worst case).
const MEASURE_BOUND: Duration = Duration::from_secs(15);

/// The honest client was served every time, each session within `bound`.
fn assert_served(what: &str, l: &Latency, n: usize, bound: Duration, srv: &Server<'_>) {
    assert_eq!((l.ok, l.failed), (n, 0), "honest client {what}: {l}\n{}", srv.dump());
    assert!(l.max <= bound, "honest session {what} took {:?} (bound {bound:?}): {l}", l.max);
}

/// CI: what RELIABILITY.md claims for the quick variant: every garbage and
/// huge-AUTH connection ended by the server, every idle connection
/// accepted, the honest client served during and after each attack within
/// [`HONEST_BOUND`], RSS bounded.
#[test]
fn abuse_quick_bounded() {
    let dir = setup();
    let srv = start(&dir, &[]);
    let port = srv.pop3;
    let base = measure(port, 5, Duration::ZERO);
    assert_served("at baseline", &base, 5, HONEST_BOUND, &srv);
    let (rss0, _) = rss(&srv);

    let (closed, errors) = garbage(port, 1000, 16, 64 * 1024);
    let after = measure(port, 5, Duration::ZERO);
    eprintln!("abuse-quick: 1000 garbage connections: {closed} closed by the server, {errors} errors; {after}");
    assert_eq!((closed, errors), (1000, 0), "every garbage connection is closed by the server\n{}", srv.dump());
    assert_served("after garbage", &after, 5, HONEST_BOUND, &srv);

    let (ended, kept) = huge_auth(port, 200, 8, 1 << 20);
    let after = measure(port, 5, Duration::ZERO);
    eprintln!("abuse-quick: 200 AUTH continuations of 1 MiB: {ended} ended by the server, {kept} not; {after}");
    assert_eq!((ended, kept), (200, 0), "every huge AUTH connection is ended by the server\n{}", srv.dump());
    assert_served("after huge AUTH", &after, 5, HONEST_BOUND, &srv);

    let (idle, refused) = open_idle(port, 1000);
    let during = measure(port, 5, Duration::ZERO);
    let (rss_held, _) = rss(&srv);
    eprintln!("abuse-quick: 1000 idle connections held ({refused} refused); {during}; RSS {rss_held} KiB");
    assert_eq!((idle.len(), refused), (1000, 0), "1000 idle connections from 50 addresses fit the limits");
    assert_served("with 1000 idle connections", &during, 5, HONEST_BOUND, &srv);
    drop(idle);

    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let (made, during) = std::thread::scope(|s| {
        let f = s.spawn(|| flood(port, 4, 5000, &stop, &count));
        // Let the flood get going (bounded wait), so the honest sessions
        // run inside it.
        util::eventually(Duration::from_secs(10), || count.load(Ordering::Relaxed) >= 50);
        let during = measure(port, 5, Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        (f.join().unwrap(), during)
    });
    eprintln!("abuse-quick: connect/close flood from 127.0.0.1: {made} connections; {during}");
    assert!(made >= 50, "the flood made only {made} connections: it did not run alongside the honest client");
    assert_served("during a flood from another address", &during, 5, HONEST_BOUND, &srv);

    std::thread::sleep(Duration::from_millis(500));
    let (rss1, hwm) = rss(&srv);
    eprintln!("abuse-quick: server RSS {rss0} KiB before, {rss1} KiB after, peak {hwm} KiB");
    assert!(rss1 < rss0 + 256 * 1024, "RSS grew from {rss0} KiB to {rss1} KiB");
    assert!(hwm < 1024 * 1024, "peak RSS {hwm} KiB over 1 GiB");
}

/// The measurement run behind RELIABILITY.md (minutes at 200 samples):
/// `cargo test -p pobox --release --test abuse -- --ignored --nocapture`.
#[test]
#[ignore = "measurement run, loads the machine: .ci/run runs it with POBOX_ABUSE_SAMPLES=50 (RELIABILITY.md)"]
fn abuse_measurements() {
    let samples: usize = std::env::var("POBOX_ABUSE_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = setup();
    let mut report = Vec::new();
    let mut line = |s: String| {
        eprintln!("{s}");
        report.push(s);
    };
    let gap = Duration::from_millis(5);

    // max_connections above 10,000 so 10,000 attackers leave room for the
    // honest client (at exactly the limit it gets [SYS/TEMP], by design).
    let srv = start(&dir, &[("max_connections", "10100")]);
    let port = srv.pop3;
    let (r0, _) = rss(&srv);
    let base = measure(port, samples, gap);
    line(format!("baseline (no attack): {base}; RSS {r0} KiB"));

    let t0 = Instant::now();
    let (idle, refused) = open_idle(port, 10_000);
    let opened = t0.elapsed();
    let (r1, _) = rss(&srv);
    let m_idle = measure(port, samples, gap);
    let m = &m_idle;
    let idle_open = idle.len();
    line(format!(
        "10,000 idle connections ({} open, {refused} refused, opened in {:.1} s): {m}; RSS {r1} KiB ({:+} KiB, {:.1} KiB/conn)",
        idle.len(),
        opened.as_secs_f64(),
        r1 as i64 - r0 as i64,
        (r1 as f64 - r0 as f64) / idle.len().max(1) as f64
    ));
    drop(idle);
    std::thread::sleep(Duration::from_secs(2));
    let (r2, _) = rss(&srv);
    line(format!("  after closing them: RSS {r2} KiB"));

    let stop = AtomicBool::new(false);
    let (kept, m_slow) = std::thread::scope(|s| {
        let h = s.spawn(|| slow_senders(port, 1000, Duration::from_secs(3), Duration::from_secs(60), &stop));
        std::thread::sleep(Duration::from_secs(3));
        let m = measure(port, samples, gap);
        stop.store(true, Ordering::Relaxed);
        (h.join().unwrap(), m)
    });
    let (r3, _) = rss(&srv);
    line(format!("1,000 slow senders (1 byte / 3 s, {kept} still open at the end): {m_slow}; RSS {r3} KiB"));

    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let count = AtomicU64::new(0);
    let (made, m_flood) = std::thread::scope(|s| {
        let f = s.spawn(|| flood(port, 8, u64::MAX, &stop, &count));
        std::thread::sleep(Duration::from_millis(500));
        let m = measure(port, samples, gap);
        stop.store(true, Ordering::Relaxed);
        (f.join().unwrap(), m)
    });
    let (r4, _) = rss(&srv);
    line(format!(
        "connect/close flood from 127.0.0.1 ({made} connections in {:.1} s, {:.0}/s): {m_flood}; RSS {r4} KiB",
        t0.elapsed().as_secs_f64(),
        made as f64 / t0.elapsed().as_secs_f64()
    ));

    let done = AtomicBool::new(false);
    let (res, m_garbage) = std::thread::scope(|s| {
        let g = s.spawn(|| {
            let r = garbage(port, 10_000, 32, 256 * 1024);
            done.store(true, Ordering::Relaxed);
            r
        });
        let m = measure(port, samples, gap);
        (g.join().unwrap(), m)
    });
    let (r5, _) = rss(&srv);
    line(format!(
        "pipelined garbage (10,000 connections x 256 KiB, 32 parallel; {} closed by the server, {} errors): {m_garbage}; RSS {r5} KiB",
        res.0, res.1
    ));

    let ((ended, not_ended), m_auth) = std::thread::scope(|s| {
        let g = s.spawn(|| huge_auth(port, 300, 32, 8 << 20));
        let m = measure(port, samples, gap);
        (g.join().unwrap(), m)
    });
    let (r6, hwm) = rss(&srv);
    line(format!(
        "huge AUTH continuations (300 x 8 MiB, 32 parallel; {ended} ended by the server, {not_ended} not): {m_auth}; RSS {r6} KiB"
    ));
    std::thread::sleep(Duration::from_secs(2));
    let (r7, _) = rss(&srv);
    line(format!("end: RSS {r7} KiB, peak (VmHWM) {hwm} KiB"));
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("abuse-report.txt");
    std::fs::write(&path, report.join("\n") + "\n").unwrap();

    // What RELIABILITY.md §4 says about this run, asserted (the figures
    // themselves vary with the machine; these are its claims, with margins).
    for (what, m) in [
        ("at baseline", &base),
        ("with 10,000 idle connections", &m_idle),
        ("with 1,000 slow senders", &m_slow),
        ("during the connect/close flood", &m_flood),
        ("during pipelined garbage", &m_garbage),
        ("during huge AUTH continuations", &m_auth),
    ] {
        assert_served(what, m, samples, MEASURE_BOUND, &srv);
    }
    assert_eq!((idle_open, refused), (10_000, 0), "10,000 idle connections all accepted");
    let per_conn = (r1 as f64 - r0 as f64) / 10_000.0;
    assert!(per_conn < 64.0, "{per_conn:.1} KiB of RSS per idle connection (claim: ~17 KiB in a debug build)");
    assert_eq!(kept, 1000, "all 1,000 slow senders still open at the end (none dropped for being slow)");
    // The flood lasts as long as the honest sessions (a few seconds with
    // POBOX_ABUSE_SAMPLES=50): a floor that shows it ran alongside them.
    assert!(made >= 100, "the flood made only {made} connections");
    assert_eq!(res, (10_000, 0), "all 10,000 garbage connections closed by the server");
    assert_eq!((ended, not_ended), (300, 0), "all 300 huge AUTH connections ended by the server");
    // Bounded by open connections, not by bytes sent: 2.4 GiB of garbage
    // and of AUTH continuations must not grow RSS beyond noise, and the
    // peak is the 10,000 idle connections'.
    assert!(r6 < r4 + 64 * 1024, "RSS grew from {r4} to {r6} KiB under byte-heavy attacks");
    assert!(hwm < r1 + 128 * 1024, "peak RSS {hwm} KiB well above the 10,000-connection level {r1} KiB");
}
