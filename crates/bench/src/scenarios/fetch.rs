//! `fetch`, `fetch` pipelined and `tls-fetch`: USER/PASS, UIDL, LIST, RETR
//! every message, QUIT. Every RETR is checked: octets received = LIST size,
//! and the content digest matches the generated message.

use std::sync::Arc;
use std::time::Instant;

use anyhow::ensure;

use crate::client::{Endpoint, Pop3};
use crate::corpus::Corpus;
use crate::scenarios::{Ctx, Record, Tally, run_workers, user_for};
use crate::servers::Server;
use crate::setup::{Users, password};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Plain,
    Pipelined,
    Tls,
}

impl Mode {
    fn scenario(self) -> &'static str {
        match self {
            Mode::Plain => "fetch",
            Mode::Pipelined => "fetch-pipelined",
            Mode::Tls => "tls-fetch",
        }
    }
}

pub(crate) async fn run(ctx: &mut Ctx, mode: Mode, servers: &[&Server]) {
    let scenario = mode.scenario();
    for conc in ctx.plan.fetch_conc.clone() {
        if conc > ctx.users.fetch.len() {
            ctx.fail("-", scenario, [format!("concurrency {conc} needs at least {conc} users")]);
            continue;
        }
        #[derive(Default)]
        struct Acc {
            mibs: Vec<f64>,
            msgs: Vec<f64>,
            cpu: Vec<f64>,
            client: Vec<f64>,
            tally: Tally,
        }
        let mut per: Vec<Acc> = servers.iter().map(|_| Acc::default()).collect();
        for _ in 0..ctx.plan.reps {
            for (si, server) in servers.iter().enumerate() {
                if mode == Mode::Tls && server.pop3s.is_none() {
                    continue;
                }
                let tls = (mode == Mode::Tls).then(|| ctx.tls.clone());
                let rep = run_workers(server, conc, |w| {
                    let addr = if mode == Mode::Tls { server.pop3s_for(w) } else { Some(server.pop3_for(w)) };
                    let ep = Endpoint { addr: addr.expect("checked above"), tls: tls.clone() };
                    let (users, corpus) = (ctx.users.clone(), ctx.corpus.clone());
                    let (deadline, max) = (Instant::now() + ctx.plan.duration, ctx.plan.max_iters);
                    async move { worker(ep, users, corpus, mode, conc, w, deadline, max).await }
                })
                .await;
                let a = &mut per[si];
                a.mibs.push(rep.per_sec(rep.tally.bytes) / (1024.0 * 1024.0));
                a.msgs.push(rep.per_sec(rep.tally.msgs));
                if rep.tally.bytes > 0 {
                    a.cpu.push(rep.cpu_secs * 1000.0 / rep.mib());
                    a.client.push(rep.client_cpu_secs * 1000.0 / rep.mib());
                }
                a.tally.merge(rep.tally);
            }
        }
        for (server, a) in servers.iter().zip(per) {
            ctx.fail(server.name, scenario, a.tally.errors);
            if let Some(r) = Record::new(scenario, &format!("c{conc}"), server.name, "MiB/s", true, a.mibs) {
                let mut r = r.extra("messages/s", &a.msgs).extra("server CPU ms/MiB", &a.cpu).extra("client CPU ms/MiB", &a.client);
                r.latency = a.tally.lat.summary();
                r.print();
                ctx.records.push(r);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    ep: Endpoint,
    users: Arc<Users>,
    corpus: Arc<Corpus>,
    mode: Mode,
    conc: usize,
    w: usize,
    deadline: Instant,
    max: u64,
) -> Tally {
    let mut t = Tally::default();
    for i in 0..max {
        if Instant::now() >= deadline {
            break;
        }
        let user = user_for(&users.fetch, conc, w, i);
        match session(&ep, user, users.fetch_msgs, &corpus, mode == Mode::Pipelined).await {
            Ok((msgs, bytes, lat)) => {
                t.ops += 1;
                t.msgs += msgs;
                t.bytes += bytes;
                t.lat.merge(lat);
            }
            Err(e) => {
                if t.error(e) {
                    break;
                }
            }
        }
    }
    t
}

/// One full download; returns (messages, POP3 octets, latencies).
pub(crate) async fn session(
    ep: &Endpoint,
    user: &str,
    expect: usize,
    corpus: &Corpus,
    pipelined: bool,
) -> anyhow::Result<(u64, u64, crate::stats::Lat)> {
    let mut p = Pop3::connect(ep).await?;
    p.login(user, &password(user)).await?;
    let n = p.uidl().await?;
    let list = p.list().await?;
    ensure!(n == list.len(), "{user}: UIDL lists {n} messages, LIST {}", list.len());
    ensure!(n == expect, "{user}: {n} messages, expected {expect}");
    let mut octets = 0;
    if pipelined {
        let nums: Vec<u32> = list.iter().map(|&(n, _)| n).collect();
        for r in p.retr_pipelined(&nums, |i, body| corpus.check_retr(body, list[i].1)).await? {
            octets += r?;
        }
    } else {
        for &(num, size) in &list {
            octets += p.retr(num, |body| corpus.check_retr(body, size)).await??;
        }
    }
    p.quit().await?;
    Ok((n as u64, octets, p.lat))
}
