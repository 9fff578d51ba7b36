//! Crash points for the kill tests of `pobox import maildir` and `pobox
//! export maildir`. A debug build started with `POBOX_FAULT=<point>:<n>`
//! sends itself SIGKILL the n-th time (1-based) it reaches `<point>`, so a
//! test can stop a copy after exactly n messages and check that a rerun
//! copies each message exactly once. Release builds compile it out: no
//! environment variable can make an installed pobox kill itself.

/// Dies here if `POBOX_FAULT` names this point (debug builds only).
#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static WANTED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let wanted = WANTED.get_or_init(|| {
        let v = std::env::var("POBOX_FAULT").ok()?;
        let (p, n) = v.split_once(':').unwrap_or((&v, "1"));
        Some((p.to_string(), n.parse().unwrap_or(1)))
    });
    if let Some((p, n)) = wanted
        && p == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        // SIGKILL: no handler, no unwinding, no destructor, like kill -9.
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
