//! `big-maildrop`: connect, USER/PASS, STAT, UIDL, QUIT on a maildrop of
//! 100,000 messages (Dovecot-style names carry the sizes, so neither
//! server needs to read a message). The first session after start is
//! reported separately as "cold" (Dovecot builds its index then); the
//! figure compared is the median of the warm sessions that follow.

use std::time::Instant;

use anyhow::ensure;

use crate::client::{Endpoint, Pop3};
use crate::scenarios::{Ctx, Record};
use crate::servers::Server;
use crate::setup::password;

pub(crate) async fn run(ctx: &mut Ctx, servers: &[&Server]) {
    for server in servers {
        let ep = Endpoint { addr: server.pop3, tls: None };
        let (user, n) = (ctx.users.big.clone(), ctx.users.big_msgs);
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        let mut lat = crate::stats::Lat::default();
        let mut cold = None;
        // One cold session, then `reps` (at least 3) warm ones.
        for i in 0..=ctx.plan.reps.max(3) {
            let cpu0 = server.cpu_secs();
            let t = Instant::now();
            match session(&ep, &user, n).await {
                Ok(l) => {
                    let secs = t.elapsed().as_secs_f64();
                    // See run_workers: let Dovecot reap the session's process.
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    if i == 0 {
                        cold = Some(secs);
                    } else {
                        times.push(secs);
                        cpu.push(server.cpu_secs() - cpu0);
                        lat.merge(l);
                    }
                }
                Err(e) => {
                    ctx.fail(server.name, "big-maildrop", [format!("{e:#}")]);
                    break;
                }
            }
        }
        let variant = format!("{n} msgs");
        if let Some(r) = Record::new("big-maildrop", &variant, server.name, "seconds", false, times) {
            let mut r = r.extra("cold first session s", &cold.into_iter().collect::<Vec<_>>()).extra("server CPU s", &cpu);
            r.latency = lat.summary();
            r.print();
            ctx.records.push(r);
        }
    }
}

async fn session(ep: &Endpoint, user: &str, n: usize) -> anyhow::Result<crate::stats::Lat> {
    let mut p = Pop3::connect(ep).await?;
    p.login(user, &password(user)).await?;
    let (count, _) = p.stat().await?;
    ensure!(count as usize == n, "STAT says {count} messages, expected {n}");
    let listed = p.uidl().await?;
    ensure!(listed == n, "UIDL lists {listed} messages, expected {n}");
    p.quit().await?;
    Ok(p.lat)
}
