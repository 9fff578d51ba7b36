//! Attack benchmark (not a test): password guessing from one IP while an
//! honest user keeps logging in from another.
//!
//! ```text
//! cargo run --release -p pobox-server --example attack -- [--guesses 1000] [--cap-secs 60] [--no-penalty]
//! ```
//!
//! An in-process server on 127.0.0.1 with the default security settings
//! (2 s failure delay, per-IP/per-user penalties, credential cache, 20
//! connections per IP). The attacker connects from 127.0.0.2 (all of 127/8
//! is loopback) with as many parallel connections as the per-IP limit
//! allows, 3 guesses each (then the server hangs up), against the honest
//! user's own account. The honest user logs in from 127.0.0.1 with
//! USER/PASS/QUIT in a loop. Printed: the attacker's achieved guesses per
//! second, and the honest login latency p50/p99 without and with the attack.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pobox_auth::UserDb;
use pobox_server::{Config, ListenAddr, Protocol, Services};
use pobox_store::{MailLocation, MaildirStore, Mailstore};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

struct Args {
    guesses: u64,
    cap: Duration,
    penalty: bool,
    honest_logins: usize,
}

fn args() -> Args {
    let mut a = Args { guesses: 1000, cap: Duration::from_secs(60), penalty: true, honest_logins: 40 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--guesses" => a.guesses = it.next().and_then(|v| v.parse().ok()).expect("--guesses N"),
            "--cap-secs" => a.cap = Duration::from_secs(it.next().and_then(|v| v.parse().ok()).expect("--cap-secs N")),
            "--honest" => a.honest_logins = it.next().and_then(|v| v.parse().ok()).expect("--honest N"),
            "--no-penalty" => a.penalty = false,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

async fn session(from: [u8; 4], server: &str, user: &str, passwords: &[String], answered: Option<&AtomicU64>) -> std::io::Result<Vec<bool>> {
    let sock = TcpSocket::new_v4()?;
    sock.bind((from, 0).into())?;
    let stream = sock.connect(server.parse().unwrap()).await?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    if !line.starts_with("+OK") {
        return Err(std::io::Error::other(line));
    }
    let mut results = Vec::new();
    for pw in passwords {
        w.write_all(format!("USER {user}\r\nPASS {pw}\r\n").as_bytes()).await?;
        line.clear();
        r.read_line(&mut line).await?;
        line.clear();
        r.read_line(&mut line).await?;
        if line.is_empty() {
            break; // the server hung up
        }
        let ok = line.starts_with("+OK");
        if let Some(n) = answered {
            n.fetch_add(1, Ordering::Relaxed);
        }
        results.push(ok);
        if ok {
            w.write_all(b"QUIT\r\n").await?;
            line.clear();
            r.read_line(&mut line).await?;
            break;
        }
    }
    Ok(results)
}

async fn honest_loop(server: String, n: usize, stop: Arc<AtomicU64>) -> Vec<Duration> {
    let mut lat = Vec::new();
    for _ in 0..n {
        if stop.load(Ordering::Relaxed) == 1 {
            break;
        }
        let t = Instant::now();
        let r = session([127, 0, 0, 1], &server, "alice", &["correct horse".into()], None).await;
        assert_eq!(r.ok().as_deref(), Some(&[true][..]), "honest login failed");
        lat.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lat
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().unwrap();
    let users = UserDb::open(dir.path().join("users"));
    users.add("alice", b"correct horse").unwrap();
    let store = MaildirStore::new(MailLocation::new(format!("{}/mail/{{user}}", dir.path().display())).unwrap());
    store.deliver("alice", &mut &b"Subject: x\n\nbody\n"[..]).unwrap();
    let mut config = Config::default();
    if !a.penalty {
        config.auth_penalty_max = Duration::ZERO;
    }
    let per_ip = config.max_connections_per_ip;
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(store), None));
    let l = pobox_server::bind(Protocol::Pop3, &ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let addr = l.local.clone();
    tokio::spawn(pobox_server::run(svc, vec![l], std::future::pending()));

    // Baseline.
    let mut base = honest_loop(addr.clone(), a.honest_logins, Arc::new(AtomicU64::new(0))).await;

    // Attack.
    let done = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut attackers = Vec::new();
    for w in 0..per_ip {
        let (addr, done, issued, cap, total) = (addr.clone(), done.clone(), issued.clone(), a.cap, a.guesses);
        attackers.push(tokio::spawn(async move {
            while start.elapsed() < cap {
                let first = issued.fetch_add(3, Ordering::Relaxed);
                if first >= total {
                    break;
                }
                let pws: Vec<String> = (first..(first + 3).min(total)).map(|i| format!("guess{w}-{i}")).collect();
                match tokio::time::timeout(cap.saturating_sub(start.elapsed()), session([127, 0, 0, 2], &addr, "alice", &pws, Some(&done))).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(_) => break,
                }
            }
        }));
    }
    let stop = Arc::new(AtomicU64::new(0));
    let honest = tokio::spawn(honest_loop(addr.clone(), a.honest_logins, stop.clone()));
    for t in attackers {
        let _ = t.await;
    }
    let attack_secs = start.elapsed().as_secs_f64();
    stop.store(1, Ordering::Relaxed);
    let mut during = honest.await.unwrap();
    let guesses = done.load(Ordering::Relaxed);

    println!("penalties: {}", if a.penalty { "on (default)" } else { "off" });
    println!(
        "attacker (127.0.0.2, {per_ip} parallel connections): {guesses} of {} guesses answered in {attack_secs:.1} s = {:.2} guesses/s",
        a.guesses,
        guesses as f64 / attack_secs
    );
    println!(
        "honest login latency without attack: p50 {:?} p99 {:?} (n={})",
        pct(&mut base, 0.5),
        pct(&mut base, 0.99),
        base.len()
    );
    println!(
        "honest login latency during attack:  p50 {:?} p99 {:?} (n={})",
        pct(&mut during, 0.5),
        pct(&mut during, 0.99),
        during.len()
    );
}
