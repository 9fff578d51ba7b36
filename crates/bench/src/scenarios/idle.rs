//! `idle`: K logged-in sessions held open at once; the server's RSS and PSS
//! growth per session (summed over all of Dovecot's processes), and a NOOP
//! on every session at the end to prove all K are alive.

use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Endpoint, Pop3};
use crate::scenarios::{Ctx, Record};
use crate::servers::Server;
use crate::setup::password;

/// Logins in flight while ramping up.
const RAMP_CONCURRENCY: usize = 64;
/// The whole ramp must finish within this.
const RAMP_LIMIT: Duration = Duration::from_secs(300);

pub(crate) async fn run(ctx: &mut Ctx, servers: &[&Server]) {
    for k in ctx.plan.idle_sessions.clone() {
        if k > ctx.users.idle.len() {
            ctx.fail("-", "idle", [format!("{k} sessions need {k} idle users")]);
            continue;
        }
        for server in servers {
            match one(ctx, server, k).await {
                Ok((recs, failures)) => {
                    for r in recs {
                        r.print();
                        ctx.records.push(r);
                    }
                    ctx.fail(server.name, "idle", failures);
                }
                Err(e) => ctx.fail(server.name, "idle", [format!("K={k}: {e:#}")]),
            }
            settle(server).await;
        }
    }
}

async fn one(ctx: &Ctx, server: &Server, k: usize) -> anyhow::Result<(Vec<Record>, Vec<String>)> {
    let m0 = server.mem();
    let ep = Endpoint { addr: server.pop3, tls: None };
    let sem = std::sync::Arc::new(Semaphore::new(RAMP_CONCURRENCY));
    let t = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..k {
        let user = ctx.users.idle[i].clone();
        let (ep, sem) = (ep.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let mut p = Pop3::connect(&ep).await?;
            p.login(&user, &password(&user)).await?;
            p.conn.shrink();
            anyhow::Ok(p)
        });
    }
    let mut sessions = Vec::with_capacity(k);
    let mut errors = Vec::new();
    let joined = tokio::time::timeout(RAMP_LIMIT, async {
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(p)) => sessions.push(p),
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(e) => errors.push(e.to_string()),
            }
        }
    })
    .await;
    let ramp = t.elapsed();
    anyhow::ensure!(joined.is_ok(), "ramp-up of {k} sessions exceeded {RAMP_LIMIT:?}");
    let mut failures = Vec::new();
    if !errors.is_empty() {
        failures.push(format!("K={k}: {} of {k} logins failed, first: {}", errors.len(), errors[0]));
    }
    anyhow::ensure!(!sessions.is_empty(), "no session could log in");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m1 = server.mem();
    let held = sessions.len();
    let mut alive = 0;
    for p in &mut sessions {
        if p.noop().await.is_ok() {
            alive += 1;
        }
    }
    if alive != held {
        failures.push(format!("K={k}: only {alive} of {held} idle sessions answered NOOP"));
    }
    drop(sessions);
    // Per session actually held; a shortfall is reported as a failure and
    // labels the variant, so the 10,000-sessions target is not met by it.
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / held as f64;
    let variant = if held == k { format!("K={k}") } else { format!("K={k} ({held} held)") };
    let rss = Record::measured("idle", &variant, server.name, "KiB RSS/session", false, vec![per(m0.rss_kib, m1.rss_kib)])
        .expect("one value")
        .extra("KiB PSS/session", &[per(m0.pss_kib, m1.pss_kib)])
        .extra("server RSS MiB total", &[m1.rss_kib as f64 / 1024.0])
        .extra("server PSS MiB total", &[m1.pss_kib as f64 / 1024.0])
        .extra("processes", &[m1.processes as f64])
        .extra("logins/s during ramp", &[k as f64 / ramp.as_secs_f64()]);
    let pss = Record::measured("idle", &variant, server.name, "KiB PSS/session", false, vec![per(m0.pss_kib, m1.pss_kib)]).expect("one value");
    Ok((vec![rss, pss], failures))
}

/// Waits (bounded) until the server has cleaned up closed sessions: for
/// Dovecot, until its pop3 processes have exited.
async fn settle(server: &Server) {
    let start = Instant::now();
    let mut last = usize::MAX;
    while start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = crate::procfs::tree(server.pid).len();
        if n == last {
            return;
        }
        last = n;
    }
}
