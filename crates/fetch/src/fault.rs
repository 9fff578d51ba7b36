//! Crash points for the kill tests. A debug build started with
//! `POBOX_FETCH_FAULT=<point>` (or `<point>:<n>`, the n-th time the point is
//! reached, 1-based) sends itself SIGKILL there. Some windows are far too
//! small to hit from outside (between writing the mbox dot-lock and taking
//! the `flock`, between storing a batch and journalling it), and they are
//! exactly where a crash must leave nothing stuck, lost or doubled.
//!
//! Release builds compile the hook out: no environment variable can make
//! an installed `pobox fetch` kill itself.

/// Crash points read from one environment variable (`<point>` or
/// `<point>:<n>`): the fetcher's, and `pobox import/export maildir`'s,
/// which keep their own variable and counter.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub struct Faults {
    var: &'static str,
    wanted: std::sync::OnceLock<Option<(String, u64)>>,
    hits: std::sync::atomic::AtomicU64,
}

impl Faults {
    /// Crash points named by the environment variable `var`.
    #[must_use]
    pub const fn new(var: &'static str) -> Faults {
        Faults { var, wanted: std::sync::OnceLock::new(), hits: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Dies here if the variable names this point (debug builds only).
    #[cfg(debug_assertions)]
    pub fn point(&self, name: &str) {
        use std::sync::atomic::Ordering;

        let wanted = self.wanted.get_or_init(|| {
            let v = std::env::var(self.var).ok()?;
            let (p, n) = v.split_once(':').unwrap_or((&v, "1"));
            Some((p.to_string(), n.parse().unwrap_or(1)))
        });
        if let Some((p, n)) = wanted
            && p == name
            && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == *n
        {
            // SIGKILL, not abort(): no handler, no unwinding, no destructor
            // runs, exactly like a kill -9 or the OOM killer.
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        }
    }

    /// Release builds: nothing.
    #[cfg(not(debug_assertions))]
    #[inline(always)]
    pub fn point(&self, _name: &str) {}
}

static FETCH: Faults = Faults::new("POBOX_FETCH_FAULT");

/// Dies here if `POBOX_FETCH_FAULT` names this point (debug builds only).
pub fn point(name: &str) {
    FETCH.point(name);
}
