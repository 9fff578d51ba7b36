//! `deliver`: LMTP messages/s at 1, 8, 32 senders, each sender with its own
//! connection and recipient, MAIL/RCPT/DATA pipelined. Both servers fsync
//! (pobox always; Dovecot's default `mail_fsync = optimized`).
//!
//! Afterwards every recipient's STAT must count exactly the messages that
//! got a 250, and a sample is fetched back and digest-checked.

use std::sync::Arc;
use std::time::Instant;

use anyhow::ensure;

use crate::client::{Endpoint, Lmtp, Pop3};
use crate::corpus::Corpus;
use crate::scenarios::{Ctx, Record, Tally, run_workers};
use crate::servers::Server;
use crate::setup::password;

/// Messages fetched back per server for the digest check.
const VERIFY_SAMPLE: usize = 40;

pub(crate) async fn run(ctx: &mut Ctx, servers: &[&Server]) {
    let mut delivered = vec![0u64; servers.len()];
    for conc in ctx.plan.deliver_conc.clone() {
        if conc > ctx.users.deliver.len() {
            ctx.fail("-", "deliver", [format!("{conc} senders need {conc} deliver users")]);
            continue;
        }
        #[derive(Default)]
        struct Acc {
            rates: Vec<f64>,
            mibs: Vec<f64>,
            cpu: Vec<f64>,
            tally: Tally,
        }
        let mut per: Vec<Acc> = servers.iter().map(|_| Acc::default()).collect();
        for _ in 0..ctx.plan.reps {
            for (si, server) in servers.iter().enumerate() {
                if server.lmtp.is_none() {
                    continue;
                }
                let rep = run_workers(server, conc, |w| {
                    let addr = server.lmtp_for(w).expect("checked above");
                    let rcpt = ctx.users.deliver[w].clone();
                    let corpus = ctx.corpus.clone();
                    let (deadline, max) = (Instant::now() + ctx.plan.duration, ctx.plan.max_iters);
                    async move { worker(addr, rcpt, corpus, w, deadline, max).await }
                })
                .await;
                delivered[si] += rep.tally.msgs;
                let a = &mut per[si];
                a.rates.push(rep.per_sec(rep.tally.msgs));
                a.mibs.push(rep.per_sec(rep.tally.bytes) / (1024.0 * 1024.0));
                if rep.tally.msgs > 0 {
                    a.cpu.push(rep.cpu_secs * 1000.0 / rep.tally.msgs as f64);
                }
                a.tally.merge(rep.tally);
            }
        }
        for (server, a) in servers.iter().zip(per) {
            ctx.fail(server.name, "deliver", a.tally.errors);
            if let Some(r) = Record::new("deliver", &format!("c{conc}"), server.name, "messages/s", true, a.rates) {
                let mut r = r.extra("MiB/s", &a.mibs).extra("server CPU ms/message", &a.cpu);
                r.latency = a.tally.lat.summary();
                r.print();
                ctx.records.push(r);
            }
        }
    }
    for (server, n) in servers.iter().zip(delivered) {
        if let Err(e) = verify(ctx, server, n).await {
            ctx.fail(server.name, "deliver", [format!("verification: {e:#}")]);
        }
    }
}

async fn worker(addr: std::net::SocketAddr, rcpt: String, corpus: Arc<Corpus>, w: usize, deadline: Instant, max: u64) -> Tally {
    let mut t = Tally::default();
    let mut l = match Lmtp::connect(addr).await {
        Ok(l) => l,
        Err(e) => {
            t.error(e);
            return t;
        }
    };
    for i in 0..max {
        if Instant::now() >= deadline {
            break;
        }
        // Senders start at different points of the (randomly ordered) corpus.
        let msg = &corpus.msgs[(w * 37 + i as usize) % corpus.msgs.len()];
        match l.deliver(&rcpt, &msg.wire).await {
            Ok(()) => {
                t.msgs += 1;
                t.bytes += msg.pop3_size;
            }
            Err(e) => {
                t.error(e);
                break; // the connection's state is unknown after an error
            }
        }
    }
    let _ = l.quit().await;
    t.lat.merge(std::mem::take(&mut l.lat));
    t
}

/// STAT every recipient; the total must equal the 250s counted. Then RETR a
/// sample from the first recipient and check each one.
async fn verify(ctx: &Ctx, server: &Server, delivered: u64) -> anyhow::Result<()> {
    let ep = Endpoint { addr: server.pop3, tls: None };
    let mut total = 0;
    for user in &ctx.users.deliver {
        let mut p = Pop3::connect(&ep).await?;
        p.login(user, &password(user)).await?;
        total += p.stat().await?.0;
        p.quit().await?;
    }
    ensure!(total == delivered, "{delivered} deliveries acknowledged, but the maildrops hold {total} messages");
    let user = &ctx.users.deliver[0];
    let mut p = Pop3::connect(&ep).await?;
    p.login(user, &password(user)).await?;
    let list = p.list().await?;
    for &(num, size) in list.iter().take(VERIFY_SAMPLE) {
        p.retr(num, |body| ctx.corpus.check_retr(body, size)).await??;
    }
    p.quit().await?;
    println!("  deliver       verified {:<7} {total} messages counted, {} fetched back and checked", server.name, list.len().min(VERIFY_SAMPLE));
    Ok(())
}
