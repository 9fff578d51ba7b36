//! `pobox fetch`: downloads mail from POP3 servers for offline reading,
//! without ever losing, duplicating or truncating a message.
//!
//! What it does: for each configured account (several in parallel) it
//! connects over TLS or mandatory STARTTLS, verifies the server (web PKI
//! roots, an extra CA file, or a SHA-256 pin) *before* sending any
//! credential, logs in (SCRAM-SHA-256, PLAIN, USER/PASS, LOGIN, XOAUTH2,
//! OAUTHBEARER), lists the maildrop, and downloads what is new into a
//! Maildir, an mbox, or an MDA command, pipelining when the server offers
//! PIPELINING and streaming each message in constant memory. Every message
//! is stored durably, then recorded in a per-account journal (fsync), and
//! only then deleted on the server (or kept, or kept for N days). A run
//! killed at any point, or cut off by the network, leaves nothing lost and
//! nothing stored twice: the next run finishes the job (see [`journal`]).
//!
//! OAuth2 is built in ([`oauth`]: `pobox fetch login ACCOUNT`, device or
//! browser flow, refresh before expiry), and `--daemon` ([`daemon`]) polls
//! every account in one process.
//!
//! What it does not do: IMAP, APOP/CRAM-MD5, client certificates,
//! filtering (hand that to an MDA), or a system keyring for tokens.
//! The POP3 codec is `pobox_proto::pop3::client`; this crate does the I/O.
//!
//! # Layout
//! - [`config`]: the TOML file and its validation.
//! - [`tls`]: rustls setup, pinning, refusal messages.
//! - `conn`: one connection: buffering, timeouts, STLS.
//! - [`auth`]: secrets and SASL client mechanisms.
//! - [`session`]: one account's run; [`plan`]: the pure policy decisions.
//! - [`journal`]: the durable record that makes it exactly-once.
//! - [`spool`], [`dest`]: complete messages into Maildir, mbox or an MDA.
//! - [`progress`]: terminal progress bars.
//! - [`remote`]: read-only access to a remote maildrop (`pobox import pop3`).
//!
//! # Exit codes
//! [`run`] returns [`EXIT_FETCHED`] (0) when new mail was stored,
//! [`EXIT_NOTHING_NEW`] (1) when every account worked but had nothing new
//! (fetchmail's convention, so `pobox fetch && notify` works), [`EXIT_USAGE`]
//! (2) for a bad command line or configuration, [`EXIT_FAILED`] (3) when an
//! account failed for a reason that may go away (network, server, disk),
//! and [`EXIT_ATTENTION`] (4) when one failed for a reason that will not go
//! away by itself (credentials refused, no password to be had, certificate
//! untrusted or changed, a TLS mode that does not fit the port).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod config;
mod conn;
pub mod daemon;
pub mod dest;
pub mod error;
#[doc(hidden)]
pub mod fault;
pub mod journal;
pub mod oauth;
pub mod plan;
pub mod progress;
pub mod remote;
pub mod session;
pub mod spool;
pub mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

pub use config::{Account, Config};
pub use error::FetchError;
pub use session::{fetch_account, remote_listing, Summary};

/// New mail was stored.
pub const EXIT_FETCHED: u8 = 0;
/// Every account worked; nothing new.
pub const EXIT_NOTHING_NEW: u8 = 1;
/// Bad command line or configuration.
pub const EXIT_USAGE: u8 = 2;
/// At least one account failed (network, server, local storage); retrying later may work.
pub const EXIT_FAILED: u8 = 3;
/// At least one account failed in a way that needs a human: credentials
/// refused, no password (no terminal, a failing `password_command`), server
/// certificate untrusted or changed, STLS missing, TLS against a plain port
/// or plaintext against a TLS port.
pub const EXIT_ATTENTION: u8 = 4;

/// Command-line arguments of `pobox fetch`.
#[derive(Debug, Clone, clap::Args)]
pub struct FetchArgs {
    /// Accounts to fetch, by their `[accounts.NAME]` (default: all).
    #[arg(value_name = "ACCOUNT")]
    pub accounts: Vec<String>,
    /// The accounts file (default: $XDG_CONFIG_HOME/pobox/fetch.toml, else
    /// ~/.config/pobox/fetch.toml).
    #[arg(long = "accounts", id = "accounts_file", value_name = "FILE", env = "POBOX_FETCH_CONFIG")]
    pub accounts_file: Option<PathBuf>,
    /// The accounts file as the front end's global `--config` gave it, when
    /// typed on the command line (`pobox --config FILE fetch`, the older
    /// spelling). `POBOX_CONFIG` from the environment is the server's and
    /// never reaches the fetcher.
    #[arg(skip)]
    pub config: Option<PathBuf>,
    /// Show what would be fetched, kept and deleted; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// No progress bars and no summary lines; errors only.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// How many accounts to fetch at the same time.
    #[arg(long, short = 'j', default_value_t = 4)]
    pub jobs: usize,
    /// Keep running: poll each account every `poll_interval` seconds
    /// (default 300, at least 60); SIGHUP re-reads the file, SIGTERM stops
    /// after the message in progress.
    #[arg(long, conflicts_with = "dry_run")]
    pub daemon: bool,
    /// Lowest poll interval `--daemon` accepts, in seconds. For tests only:
    /// real servers throttle or lock out clients that poll faster than a
    /// minute.
    #[arg(long, hide = true, default_value_t = daemon::MIN_POLL_INTERVAL, value_name = "SECS")]
    pub min_poll_interval: u64,
    /// `login ACCOUNT`.
    #[command(subcommand)]
    pub command: Option<FetchCommand>,
}

/// Subcommands of `pobox fetch`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum FetchCommand {
    /// Sign in to an `auth = "oauth2"` account (device code or browser) and
    /// store its refresh token under the state dir (mode 0600).
    Login {
        /// The account, by its `[accounts.NAME]`.
        account: String,
    },
}

/// Runs `pobox fetch` to completion on its own tokio runtime and returns the
/// process exit code. Blocking: call it from `main`, not from async code.
pub fn run(args: FetchArgs) -> ExitCode {
    if let (Some(a), Some(c)) = (&args.accounts_file, &args.config)
        && a != c
    {
        return fail_usage(&"--accounts and --config name different files; give one");
    }
    if let Some(FetchCommand::Login { account }) = &args.command {
        return daemon::login(&args, account);
    }
    if args.daemon {
        return daemon::run(args);
    }
    let path = match daemon::config_path(&args) {
        Ok(p) => p,
        Err(e) => return fail_usage(&e),
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(config::ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "pobox fetch: no accounts file at {}\n\
                 Create it (then `chmod 600` it if it holds a password), for example:\n\n{}",
                path.display(),
                config::STARTER
            );
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => return fail_usage(&e),
    };
    let accounts = match config.select(&args.accounts) {
        Ok(a) => a,
        Err(e) => return fail_usage(&e),
    };
    // Secrets first, one account after another: prompts must not interleave,
    // and a failing password_command should not leave half the accounts
    // fetched.
    let mut jobs = Vec::new();
    let mut failed_early: Option<u8> = None;
    for account in accounts {
        match auth::obtain_secret(&account) {
            Ok(secret) => jobs.push((account, secret)),
            Err(e) => {
                eprintln!("pobox fetch: {}: {e}", account.name);
                // A dead OAuth refresh token needs a new login (exit 4).
                failed_early = failed_early.max(Some(if e.needs_attention() { EXIT_ATTENTION } else { EXIT_FAILED }));
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pobox fetch: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let display = progress::Display::new(!args.quiet).with_names(jobs.iter().map(|(a, _)| a.name.as_str()));
    let state_dir = Arc::new(config.state_dir.clone());
    let limit = Arc::new(tokio::sync::Semaphore::new(args.jobs.max(1)));
    let results = runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (account, secret) in jobs {
            let (state_dir, limit, display) = (state_dir.clone(), limit.clone(), display.clone());
            let (dry_run, quiet) = (args.dry_run, args.quiet);
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let bar = display.account(&account.name);
                let started = Instant::now();
                let result = daemon::fetch_once(&account, secret, &state_dir, dry_run, &bar, None).await;
                if let Ok(s) = &result
                    && s.got_mail()
                    && !dry_run
                {
                    daemon::run_hook(&account, s).await;
                }
                bar.finish();
                // Report each account as it finishes, above the bars of the
                // ones still running.
                let secs = started.elapsed().as_secs_f64();
                match &result {
                    Ok(s) if !quiet => {
                        for line in &s.plan {
                            display.println(&format!("{}: {line}", account.name));
                        }
                        display.println(&summary_line(&account.name, s, secs, dry_run));
                        for w in &s.warnings {
                            display.eprintln(&format!("pobox fetch: {}: warning: {w}", account.name));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => display.eprintln(&format!("pobox fetch: {}: {e}", account.name)),
                }
                result
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(r) => out.push(r),
                Err(e) => eprintln!("pobox fetch: internal error: {e}"),
            }
        }
        out
    });
    // A dead OAuth login, a password that cannot be had (no terminal, a
    // failing password_command): none comes back by itself (exit 4).
    let mut worst_failure = failed_early;
    let mut any_mail = false;
    for result in results {
        match result {
            Ok(s) => any_mail |= s.got_mail(),
            Err(e) => {
                let c = if e.needs_attention() { EXIT_ATTENTION } else { EXIT_FAILED };
                worst_failure = worst_failure.max(Some(c));
            }
        }
    }
    ExitCode::from(match worst_failure {
        Some(c) => c,
        None if any_mail => EXIT_FETCHED,
        None => EXIT_NOTHING_NEW,
    })
}

/// The end of `pobox fetch --help`: where the files are (as resolved now,
/// from the environment) and what the exit codes mean.
pub fn help_epilogue() -> String {
    let show = |p: Result<PathBuf, config::ConfigError>| p.map_or_else(|e| e.to_string(), |p| p.display().to_string());
    format!(
        "Files:\n  \
         accounts  {}\n            \
         (--accounts FILE or POBOX_FETCH_CONFIG; `pobox --config FILE fetch` also works)\n  \
         state     {}\n            \
         (journals and locks; `state_dir` in the accounts file changes it)\n\n\
         Exit codes:\n  \
         0  new mail was stored\n  \
         1  every account worked, nothing new\n  \
         2  bad command line or accounts file\n  \
         3  an account failed for a reason that may pass (network, server busy, disk); retry later\n  \
         4  an account needs you: credentials refused, no password, certificate untrusted or\n     \
         changed, TLS mode that does not fit the port, not a POP3 server",
        show(Config::default_path()),
        show(config::default_state_dir()),
    )
}

fn fail_usage(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("pobox fetch: {e}");
    ExitCode::from(EXIT_USAGE)
}

/// The one line printed per account.
pub fn summary_line(name: &str, s: &Summary, secs: f64, dry_run: bool) -> String {
    let mib = s.bytes as f64 / (1024.0 * 1024.0);
    let mut parts = vec![if dry_run {
        format!("would fetch {}", s.fetched)
    } else {
        format!("{} fetched ({mib:.2} MiB)", s.fetched)
    }];
    if s.already_present > 0 {
        parts.push(format!("{} already stored", s.already_present));
    }
    parts.push(format!("{} {}deleted", s.deleted, if dry_run { "to be " } else { "" }));
    if s.kept > 0 {
        parts.push(format!("{} kept on server", s.kept));
    }
    if s.skipped > 0 {
        parts.push(format!("{} skipped (over max_size)", s.skipped));
    }
    if s.oversent > 0 {
        parts.push(format!("{} skipped (server sent more than it announced)", s.oversent));
    }
    if s.headers_only > 0 {
        parts.push(format!("{} headers only", s.headers_only));
    }
    format!("{name}: {} in {secs:.1}s", parts.join(", "))
}
