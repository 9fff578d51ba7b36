//! `login`: connect, USER/PASS, STAT, QUIT; sessions/s at each concurrency.

use std::sync::Arc;
use std::time::Instant;

use crate::client::{Endpoint, Pop3};
use crate::scenarios::{Ctx, Record, Tally, run_workers, user_for};
use crate::servers::Server;
use crate::setup::password;

pub(crate) async fn run(ctx: &mut Ctx, servers: &[&Server]) {
    for conc in ctx.plan.login_conc.clone() {
        if conc > ctx.users.fetch.len() {
            ctx.fail("-", "login", [format!("concurrency {conc} needs at least {conc} users")]);
            continue;
        }
        let mut per: Vec<(Vec<f64>, Vec<f64>, Tally)> = servers.iter().map(|_| Default::default()).collect();
        for _ in 0..ctx.plan.reps {
            for (si, server) in servers.iter().enumerate() {
                let rep = run_workers(server, conc, |w| {
                    let (ep, users) = (Endpoint { addr: server.pop3_for(w), tls: None }, ctx.users.clone());
                    let (deadline, max) = (Instant::now() + ctx.plan.duration, ctx.plan.max_iters);
                    async move { worker(ep, users, conc, w, deadline, max).await }
                })
                .await;
                let (rates, cpu, tally) = &mut per[si];
                rates.push(rep.per_sec(rep.tally.ops));
                if rep.tally.ops > 0 {
                    cpu.push(rep.cpu_secs * 1000.0 / rep.tally.ops as f64);
                }
                tally.merge(rep.tally);
            }
        }
        for (server, (rates, cpu, tally)) in servers.iter().zip(per) {
            ctx.fail(server.name, "login", tally.errors);
            if let Some(r) = Record::new("login", &format!("c{conc}"), server.name, "sessions/s", true, rates) {
                let mut r = r.extra("server CPU ms/session", &cpu);
                r.latency = tally.lat.summary();
                r.print();
                ctx.records.push(r);
            }
        }
    }
}

async fn worker(ep: Endpoint, users: Arc<crate::setup::Users>, conc: usize, w: usize, deadline: Instant, max: u64) -> Tally {
    let mut t = Tally::default();
    for i in 0..max {
        if Instant::now() >= deadline {
            break;
        }
        let user = user_for(&users.fetch, conc, w, i);
        let r = async {
            let mut p = Pop3::connect(&ep).await?;
            p.login(user, &password(user)).await?;
            let (n, _) = p.stat().await?;
            anyhow::ensure!(n as usize == users.fetch_msgs, "STAT says {n} messages for {user}, expected {}", users.fetch_msgs);
            p.quit().await?;
            Ok(p.lat)
        }
        .await;
        match r {
            Ok(lat) => {
                t.ops += 1;
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
