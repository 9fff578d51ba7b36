//! The scenarios of issue 7 and what they share: the context, the result
//! record, and a bounded worker runner.
//!
//! Every worker loop is bounded twice: by a deadline and by an iteration
//! cap; every network wait by the client's I/O timeout.

pub(crate) mod big;
pub(crate) mod deliver;
pub(crate) mod fetch;
pub(crate) mod idle;
pub(crate) mod login;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::corpus::Corpus;
use crate::servers::Server;
use crate::setup::Users;
use crate::stats::{Lat, Percentiles, Spread};

/// Run-wide parameters.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) duration: Duration,
    pub(crate) reps: usize,
    pub(crate) login_conc: Vec<usize>,
    pub(crate) fetch_conc: Vec<usize>,
    pub(crate) deliver_conc: Vec<usize>,
    pub(crate) idle_sessions: Vec<usize>,
    /// Cap on sessions or messages per worker per repetition.
    pub(crate) max_iters: u64,
}

/// What every scenario needs.
pub(crate) struct Ctx {
    pub(crate) plan: Plan,
    pub(crate) corpus: Arc<Corpus>,
    pub(crate) users: Arc<Users>,
    pub(crate) tls: tokio_rustls::TlsConnector,
    pub(crate) records: Vec<Record>,
    /// Correctness and protocol failures; any makes the run fail.
    pub(crate) errors: Vec<String>,
    /// Dovecot stalls (see [`Ctx::fail`]).
    pub(crate) warnings: Vec<String>,
}

impl Ctx {
    /// Records failures. Every failure of pobox or the raw sender, and
    /// every wrong answer from anyone, fails the run; a Dovecot session
    /// that merely stalled into the client's I/O timeout is a warning
    /// (pobox's CI must not fail on Dovecot's behaviour), reported as such.
    pub(crate) fn fail(&mut self, server: &str, scenario: &str, errs: impl IntoIterator<Item = String>) {
        for e in errs {
            let msg = format!("[{scenario}/{server}] {e}");
            if server == "dovecot" && e.contains("timed out") {
                eprintln!("WARNING {msg}");
                if self.warnings.len() < 1000 {
                    self.warnings.push(msg);
                }
            } else {
                eprintln!("ERROR {msg}");
                if self.errors.len() < 1000 {
                    self.errors.push(msg);
                }
            }
        }
    }
}

/// One measured configuration (scenario × variant × server).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Record {
    pub(crate) scenario: String,
    pub(crate) variant: String,
    pub(crate) server: String,
    pub(crate) metric: String,
    pub(crate) higher_is_better: bool,
    pub(crate) value: Spread,
    pub(crate) reps: Vec<f64>,
    /// Secondary figures (msgs/s, server CPU per MiB, …), each a spread.
    pub(crate) extra: BTreeMap<String, Spread>,
    pub(crate) latency: BTreeMap<String, Percentiles>,
}

impl Record {
    /// `None` when there is nothing to report (no values, or all zero
    /// because every attempt failed — the errors are reported instead).
    pub(crate) fn new(scenario: &str, variant: &str, server: &str, metric: &str, higher_is_better: bool, reps: Vec<f64>) -> Option<Record> {
        if reps.iter().all(|&v| v == 0.0) {
            return None;
        }
        Record::measured(scenario, variant, server, metric, higher_is_better, reps)
    }

    /// Like [`Record::new`], but zero is a valid figure (memory growth).
    pub(crate) fn measured(scenario: &str, variant: &str, server: &str, metric: &str, higher_is_better: bool, reps: Vec<f64>) -> Option<Record> {
        Some(Record {
            scenario: scenario.into(),
            variant: variant.into(),
            server: server.into(),
            metric: metric.into(),
            higher_is_better,
            value: Spread::of(&reps)?,
            reps,
            extra: BTreeMap::new(),
            latency: BTreeMap::new(),
        })
    }

    pub(crate) fn extra(mut self, key: &str, values: &[f64]) -> Record {
        if let Some(s) = Spread::of(values) {
            self.extra.insert(key.into(), s);
        }
        self
    }

    pub(crate) fn print(&self) {
        println!(
            "  {:<13} {:<16} {:<8} {:>12.2} {:<16} (min {:.2}, max {:.2})",
            self.scenario, self.variant, self.server, self.value.median, self.metric, self.value.min, self.value.max
        );
    }
}

/// What a worker did.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) ops: u64,
    pub(crate) msgs: u64,
    pub(crate) bytes: u64,
    pub(crate) lat: Lat,
    pub(crate) errors: Vec<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.ops += o.ops;
        self.msgs += o.msgs;
        self.bytes += o.bytes;
        self.lat.merge(o.lat);
        self.errors.extend(o.errors);
    }

    /// Records an error; true when the worker should stop (too many).
    pub(crate) fn error(&mut self, e: anyhow::Error) -> bool {
        self.errors.push(format!("{e:#}"));
        self.errors.len() >= 5
    }
}

/// One repetition: `conc` workers, wall time and server CPU around them.
pub(crate) struct Rep {
    pub(crate) tally: Tally,
    pub(crate) elapsed: Duration,
    pub(crate) cpu_secs: f64,
    /// CPU used by the load generator itself (is it the bottleneck?).
    pub(crate) client_cpu_secs: f64,
}

impl Rep {
    pub(crate) fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
    pub(crate) fn mib(&self) -> f64 {
        self.tally.bytes as f64 / (1024.0 * 1024.0)
    }
}

/// Runs `conc` workers to completion and measures the server around them.
pub(crate) async fn run_workers<F, Fut>(server: &Server, conc: usize, f: F) -> Rep
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Tally> + Send + 'static,
{
    let cpu0 = server.cpu_secs();
    let me = std::process::id();
    let own = || crate::procfs::stat(me).map_or(0, |s| s.utime + s.stime) as f64 / 100.0;
    let client0 = own();
    let t = Instant::now();
    let mut set = JoinSet::new();
    for w in 0..conc {
        set.spawn(f(w));
    }
    let mut tally = Tally::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(t) => tally.merge(t),
            Err(e) => tally.errors.push(format!("worker panicked: {e}")),
        }
    }
    let elapsed = t.elapsed();
    // Let Dovecot reap the per-session processes that just exited, so their
    // CPU has moved into the master's cutime/cstime when it is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Rep { tally, elapsed, cpu_secs: server.cpu_secs() - cpu0, client_cpu_secs: own() - client0 }
}

/// The user a worker takes on iteration `i`: worker `w` of `conc` only
/// ever uses users `u` with `u % conc == w`, so no two concurrent sessions
/// share a maildrop (pobox locks it, RFC 1939 §8).
pub(crate) fn user_for(users: &[String], conc: usize, w: usize, i: u64) -> &str {
    let per = (users.len() / conc).max(1);
    &users[(w + (i as usize % per) * conc) % users.len()]
}
