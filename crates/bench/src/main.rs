//! `pobox-bench`: the load generator and side-by-side benchmark harness of
//! issue 7. It builds one data set (users, one passwd-file, one TLS
//! certificate, identical Maildirs), starts pobox, a private Dovecot and a
//! raw sender pinned to the server CPU, pins itself to the other CPU, runs
//! the scenarios against each, checks every message it fetches, and writes
//! `results.json`, `summary.md` and SVG charts.
//!
//! It is a measurement tool, not a test; `--quick` is the CI smoke run (it
//! fails on any correctness error and skips Dovecot, with a message, when
//! Dovecot is not installed). It does not tune the machine, and it talks
//! to loopback only.
//!
//! Layout: `client` (POP3/LMTP client), `corpus` (messages, Maildir files,
//! the RETR check), `setup` (users, passwd-file, cert), `servers` and
//! `dovecot` (processes under test), `raw` (the physical-limit sender),
//! `procfs` (CPU and memory), `stats`, `scenarios/*`, `report`.

mod client;
mod corpus;
mod dovecot;
mod postgres;
mod procfs;
mod raw;
mod report;
mod scenarios;
mod servers;
mod setup;
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::scenarios::{Ctx, Plan, fetch::Mode};
use crate::servers::Server;
use crate::setup::Users;

const ALL_SCENARIOS: &[&str] = &["login", "fetch", "fetch-pipelined", "tls-fetch", "deliver", "big-maildrop", "idle"];

#[derive(Parser, Debug)]
#[command(name = "pobox-bench", about = "Side-by-side POP3/LMTP benchmark: pobox vs Dovecot vs a raw sender")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Small everything (the CI smoke run, well under a minute).
    #[arg(long)]
    quick: bool,
    /// Scratch directory for users, Maildirs, configs and logs.
    #[arg(long, default_value = "/tmp/pobox-bench")]
    work: PathBuf,
    /// Where results.json, summary.md and the charts go
    /// (default: bench/results, or WORK/results-quick with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The pobox binary (default: next to this one; built if missing).
    #[arg(long)]
    pobox: Option<PathBuf>,
    /// Do not start Dovecot.
    #[arg(long)]
    no_dovecot: bool,
    /// Also run pobox on PostgreSQL: one node (`pobox-pg`) and two nodes on
    /// one database (`pobox-pg2`), on a throwaway PostgreSQL 15 cluster
    /// loaded with the same Maildirs.
    #[arg(long)]
    postgres: bool,
    /// Do not pin servers and load generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// CPU list for the servers (taskset -c).
    #[arg(long, default_value = "0")]
    server_cpu: String,
    /// CPU list for the load generator.
    #[arg(long, default_value = "1")]
    client_cpu: String,
    /// Comma-separated subset of: login, fetch, fetch-pipelined, tls-fetch,
    /// deliver, big-maildrop, idle.
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
    /// Repetitions per measurement (default 3; 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Length of one timed repetition in ms (default 3000; 300 with --quick).
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Idle session counts (default 1000,10000; 50 with --quick).
    #[arg(long, value_delimiter = ',')]
    idle: Option<Vec<usize>>,
    /// Messages in the big maildrop (default 100000; 2000 with --quick).
    #[arg(long)]
    big: Option<usize>,
    /// Corpus seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Internal: the raw sender (started by the harness).
    RawServer {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        mail_root: PathBuf,
    },
    /// Re-render summary.md and the charts from a results.json.
    Report {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::RawServer { listen, mail_root }) = &args.cmd {
        return match raw::serve(listen, mail_root) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("raw-server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Cmd::Report { results, out }) = &args.cmd {
        return match report::rerender(results, out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("report: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(0) => {
            println!("pobox-bench: OK");
            ExitCode::SUCCESS
        }
        Ok(n) => {
            eprintln!("\npobox-bench: FAILED — {n} correctness/protocol error(s), see ERROR lines above");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("\npobox-bench: FAILED — {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn plan(args: &Args) -> (Plan, Users, usize) {
    let q = args.quick;
    let plan = Plan {
        duration: Duration::from_millis(args.duration_ms.unwrap_or(if q { 300 } else { 3000 })),
        reps: args.reps.unwrap_or(if q { 1 } else { 3 }).max(1),
        login_conc: if q { vec![1, 4] } else { vec![1, 16, 64] },
        fetch_conc: if q { vec![1, 4] } else { vec![1, 16, 64] },
        deliver_conc: if q { vec![1, 4] } else { vec![1, 8, 32] },
        idle_sessions: args.idle.clone().unwrap_or(if q { vec![50] } else { vec![1000, 10_000] }),
        max_iters: 1_000_000,
    };
    let idle_users = plan.idle_sessions.iter().copied().max().unwrap_or(0);
    let big = args.big.unwrap_or(if q { 2000 } else { 100_000 });
    let users = if q { Users::new(8, 8, 4, idle_users, big) } else { Users::new(64, 40, 32, idle_users, big) };
    let corpus_len = if q { 40 } else { 200 };
    (plan, users, corpus_len)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd).args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn run(args: Args) -> anyhow::Result<usize> {
    let started = Instant::now();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let pin = !args.no_pin && nproc >= 2;
    if pin {
        // Before any thread exists, so every later thread inherits it.
        let st = Command::new("taskset").args(["-cp", &args.client_cpu, &std::process::id().to_string()]).output();
        if !st.is_ok_and(|o| o.status.success()) {
            bail!("taskset failed (install util-linux, or pass --no-pin)");
        }
    } else {
        println!("note: not pinning (--no-pin or fewer than 2 CPUs); figures are not comparable to pinned runs");
    }
    raise_nofile();
    let selected: Vec<String> = match &args.scenarios {
        Some(v) => {
            for s in v {
                if !ALL_SCENARIOS.contains(&s.as_str()) {
                    bail!("unknown scenario {s:?}; known: {}", ALL_SCENARIOS.join(", "));
                }
            }
            v.clone()
        }
        None => ALL_SCENARIOS.iter().map(|s| s.to_string()).collect(),
    };
    let want = |s: &str| selected.iter().any(|x| x == s);
    let (plan, users, corpus_len) = plan(&args);
    let loadavg_start = procfs::loadavg();
    println!("pobox-bench: {} run, load average {loadavg_start}", if args.quick { "quick" } else { "full" });

    let mut skipped = Vec::new();
    let dovecot_reason = if args.no_dovecot { Some("Dovecot disabled by --no-dovecot".to_string()) } else { dovecot::unavailable() };
    if let Some(r) = &dovecot_reason {
        println!("SKIP Dovecot comparison: {r}");
        skipped.push(format!("Dovecot comparison: {r}"));
    }
    let with_dovecot = dovecot_reason.is_none();

    let work = std::path::absolute(&args.work)?;
    std::fs::create_dir_all(&work)?;
    let (uid, gid) = if with_dovecot { dovecot::mail_user()? } else { (uid_of_self(), uid_of_self()) };
    let t = Instant::now();
    let corpus = corpus::Corpus::generate(args.seed, corpus_len);
    let passwd = setup::passwd_file(&work, &users, uid, gid)?;
    let (cert, key) = setup::tls_cert(&work)?;
    let mut trees = vec!["pobox"];
    if with_dovecot {
        trees.push("dovecot");
    }
    setup::maildrops(&work, &trees, &users, &corpus)?;
    if with_dovecot {
        let root = setup::mail_root(&work, "dovecot");
        setup::chown(&root, &format!("{uid}:{gid}"))?;
        // Dovecot's auth and mail processes must reach W and read the
        // passwd-file (and nothing else: Dovecot checks its run dir's modes).
        Command::new("chmod").arg("a+x").arg(&work).status()?;
        Command::new("chmod").arg("a+r").arg(&passwd).status()?;
    }
    let corpus_mib: f64 = corpus.msgs.iter().map(|m| m.stored.len() as f64).sum::<f64>() / 1048576.0;
    println!(
        "data: {} corpus messages ({corpus_mib:.1} MiB), {} fetch users × {} messages, {} idle users, big maildrop {} messages; ready in {:.1} s",
        corpus.msgs.len(), users.fetch.len(), users.fetch_msgs, users.idle.len(), users.big_msgs, t.elapsed().as_secs_f64()
    );

    let pobox_bin = find_pobox(args.pobox.as_deref())?;
    let server_pin = pin.then_some(args.server_cpu.as_str());
    let cluster = if args.postgres { Some(postgres::start_cluster(server_pin)?) } else { None };
    let mut pg_servers = Vec::new();
    if let Some(pg) = &cluster {
        let one = postgres::PgServer::prepare("pobox-pg", 1, &work, &pobox_bin, pg, None, &passwd, &cert, &key)?;
        let two = postgres::PgServer::prepare("pobox-pg2", 2, &work, &pobox_bin, pg, Some(&one), &passwd, &cert, &key)?;
        pg_servers.extend([one, two]);
    }
    let start_servers = || -> anyhow::Result<Vec<Server>> {
        let mut v = vec![servers::start_pobox(&work, &pobox_bin, server_pin, &passwd, &cert, &key)?];
        if with_dovecot {
            v.push(dovecot::start(&work, server_pin, &passwd, &cert, &key, uid)?);
        }
        if let Some(pg) = &cluster {
            for p in &pg_servers {
                v.push(p.start(&pobox_bin, server_pin, pg)?);
            }
        }
        for s in &v {
            println!("started {:<8} pid {:<7} pop3 {} pop3s {:?} lmtp {:?}", s.name, s.pid, s.pop3, s.pop3s, s.lmtp);
        }
        Ok(v)
    };
    let mut servers = start_servers()?;
    let raw = if want("fetch") || want("fetch-pipelined") { Some(servers::start_raw(&work, server_pin)?) } else { None };
    let mut loads = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut ctx = Ctx {
        plan: plan.clone(),
        corpus: Arc::new(corpus),
        users: Arc::new(users),
        tls: client::tls_connector(),
        records: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        warm_up(&mut ctx, &servers, raw.as_ref()).await;
        for name in ALL_SCENARIOS.iter().filter(|s| want(s)) {
            if *name == "idle" {
                // Fresh processes: memory freed by earlier scenarios but kept
                // by the allocators would hide the sessions' growth.
                for s in servers.drain(..) {
                    s.stop();
                }
                servers = start_servers()?;
            }
            let load = procfs::loadavg();
            println!("== {name} (load average {load})");
            loads.push(format!("{name}: {load}"));
            // The big maildrop and the idle sessions are one node's
            // figures: the two-node server adds nothing there.
            let single_node = matches!(*name, "idle" | "big-maildrop");
            let srv: Vec<&Server> = servers.iter().filter(|s| !single_node || s.nodes() == 1).collect();
            let mut with_raw = srv.clone();
            with_raw.extend(raw.as_ref());
            match *name {
                "login" => scenarios::login::run(&mut ctx, &srv).await,
                "fetch" => scenarios::fetch::run(&mut ctx, Mode::Plain, &with_raw).await,
                "fetch-pipelined" => scenarios::fetch::run(&mut ctx, Mode::Pipelined, &with_raw).await,
                "tls-fetch" => scenarios::fetch::run(&mut ctx, Mode::Tls, &srv).await,
                "deliver" => scenarios::deliver::run(&mut ctx, &srv).await,
                "big-maildrop" => scenarios::big::run(&mut ctx, &srv).await,
                "idle" => scenarios::idle::run(&mut ctx, &srv).await,
                _ => unreachable!("validated above"),
            }
            for s in servers.iter_mut() {
                s.check_alive()?;
            }
        }
        Ok(())
    });
    for s in servers.into_iter().chain(raw) {
        s.stop();
    }
    result?;

    let out = args.out.clone().unwrap_or_else(|| {
        if args.quick { work.join("results-quick") } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/results") }
    });
    let meta = report::Meta {
        date: sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        nproc,
        cpu_model: std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
            .unwrap_or_default(),
        kernel: sh("uname", &["-r"]),
        loadavg_start,
        loadavg_end: procfs::loadavg(),
        loadavg_per_scenario: loads,
        dovecot: if with_dovecot { dovecot::version() } else { String::new() },
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        quick: args.quick,
        server_cpu: pin.then(|| args.server_cpu.clone()),
        client_cpu: pin.then(|| args.client_cpu.clone()),
        plan: format!(
            "{} reps × {:?}; login c{:?}; fetch c{:?}; deliver c{:?}; idle K={:?}; big {} msgs; {} fetch users × {} msgs; seed {}",
            plan.reps, plan.duration, plan.login_conc, plan.fetch_conc, plan.deliver_conc, plan.idle_sessions,
            ctx.users.big_msgs, ctx.users.fetch.len(), ctx.users.fetch_msgs, args.seed
        ),
        skipped,
        wall_seconds: started.elapsed().as_secs_f64(),
        errors: ctx.errors.clone(),
        warnings: ctx.warnings.clone(),
    };
    report::write_all(&out, &meta, &ctx.records)?;
    println!("\nresults: {}/summary.md (+ results.json, charts)", out.display());
    for t in report::targets(&ctx.records) {
        println!("  target {:<48} {:<10} measured {:<24} met {:<7} by CPU cost {}", t.0, t.1, t.2, t.3, t.4);
    }
    Ok(ctx.errors.len())
}

/// One full fetch per fetch user on every server before anything is timed:
/// Dovecot builds its index files, everyone's page cache is warm, and every
/// maildrop is checked once.
async fn warm_up(ctx: &mut Ctx, servers: &[Server], raw: Option<&Server>) {
    for s in servers.iter().chain(raw) {
        let ep = client::Endpoint { addr: s.pop3, tls: None };
        let mut errs = Vec::new();
        for user in ctx.users.fetch.iter() {
            if let Err(e) = scenarios::fetch::session(&ep, user, ctx.users.fetch_msgs, &ctx.corpus, false).await {
                errs.push(format!("warm-up {user}: {e:#}"));
            }
        }
        ctx.fail(s.name, "warm-up", errs);
    }
}

fn uid_of_self() -> u32 {
    sh("id", &["-u"]).parse().unwrap_or(0)
}

fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if let Some(max) = lim.maximum {
        let _ = setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(max), maximum: Some(max) });
        println!("open files limit: {max}");
    }
}

fn find_pobox(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("pobox");
    if sibling.exists() {
        return Ok(sibling);
    }
    println!("{} not found: building it (cargo build --release -p pobox)", sibling.display());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "pobox"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !st.success() || !sibling.exists() {
        bail!("could not build pobox; pass --pobox PATH");
    }
    Ok(sibling)
}
