//! Crash points for the kill tests. A debug build started with
//! `POBOX_FETCH_FAULT=<point>` (or `<point>:<n>`, the n-th time the point is
//! reached, 1-based) sends itself SIGKILL there. Some windows are far too
//! small to hit from outside (between writing the mbox dot-lock and taking
//! the `flock`, between storing a batch and journalling it), and they are
//! exactly where a crash must leave nothing stuck, lost or doubled.
//!
//! Release builds compile the hook out: no environment variable can make
//! an installed `pobox fetch` kill itself.

/// Dies here if `POBOX_FETCH_FAULT` names this point (debug builds only).
#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static WANTED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let wanted = WANTED.get_or_init(|| {
        let v = std::env::var("POBOX_FETCH_FAULT").ok()?;
        let (p, n) = v.split_once(':').unwrap_or((&v, "1"));
        Some((p.to_string(), n.parse().unwrap_or(1)))
    });
    if let Some((p, n)) = wanted
        && p == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        // SIGKILL, not abort(): no handler, no unwinding, no destructor runs,
        // exactly like a kill -9 or the OOM killer.
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
