//! `pobox fetch --daemon`: every account polled in one process, each on its
//! own interval, and `pobox fetch login`.
//!
//! One tokio task per account loops: get the secret (password command or
//! OAuth refresh, on the blocking pool), fetch, sleep. The sleep is the
//! account's `poll_interval` (at least [`MIN_POLL_INTERVAL`] unless the
//! hidden `--min-poll-interval` lowers it for tests), never less than the
//! server's LOGIN-DELAY, and after failures it doubles per failure up to
//! an hour (or the interval, when that is longer).
//!
//! Signals: SIGTERM/SIGINT set every account's stop flag; a fetch in
//! progress finishes the message it is reading, journals what it stored
//! and sends no further RETR or DELE (`session::fetch_account_until`), then
//! the process exits 0. SIGHUP re-reads the configuration: accounts that
//! are new start, removed ones stop (the same way), changed ones restart;
//! a configuration that does not load is reported and the old one kept.
//!
//! systemd: `READY=1` once the tasks run, `RELOADING=1` (with
//! `MONOTONIC_USEC`, as `Type=notify-reload` wants) and `READY=1` around a
//! reload, `STOPPING=1` on the way out, and `WATCHDOG=1` at half the
//! `WATCHDOG_USEC` period when the unit sets `WatchdogSec=`. Without
//! `NOTIFY_SOCKET` these are no-ops.
//!
//! `on_new_mail` runs (no shell) after a run that stored new mail, with
//! `POBOX_ACCOUNT`, `POBOX_NEW` and `POBOX_BYTES` in its environment; it
//! also runs in one-shot mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::config::{Account, Config, ConfigError, PasswordSource};
use crate::error::FetchError;
use crate::progress::{AccountProgress, Display};
use crate::session::{fetch_account_until, Summary};
use crate::oauth::OAuthError;
use crate::{auth, oauth, summary_line, FetchArgs, EXIT_ATTENTION, EXIT_FAILED, EXIT_FETCHED, EXIT_USAGE};

/// The shortest poll interval in normal use. Gmail announces LOGIN-DELAY
/// 300 and other providers throttle or lock accounts that log in every few
/// seconds; a minute is what users ask for (docker-mailserver #4713).
pub const MIN_POLL_INTERVAL: u64 = 60;

/// Longest wait after repeated failures (unless the interval is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How long an `on_new_mail` command may run before it is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// The accounts file: `--accounts` (or `POBOX_FETCH_CONFIG`), else
/// `pobox --config FILE fetch` typed on the command line, else the default.
pub(crate) fn config_path(args: &FetchArgs) -> Result<PathBuf, ConfigError> {
    match args.accounts_file.clone().or_else(|| args.config.clone()) {
        Some(p) => Ok(p),
        None => Config::default_path(),
    }
}

/// `pobox fetch login ACCOUNT`.
pub(crate) fn login(args: &FetchArgs, name: &str) -> ExitCode {
    let config = match config_path(args).and_then(|p| Config::load(&p)) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let account = match config.select(&[name.to_string()]) {
        Ok(mut a) => a.remove(0),
        Err(e) => return usage(&e),
    };
    let Some(settings) = &account.oauth else {
        return usage(&format!(
            "account {name:?} has no [accounts.{name}.oauth] table: `pobox fetch login` is for auth = \"oauth2\""
        ));
    };
    let mut err = std::io::stderr();
    match oauth::login(&account.name, settings, &mut err) {
        Ok(path) => {
            eprintln!("pobox fetch: {name}: logged in; the refresh token is in {} (mode 0600)", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pobox fetch: {name}: {e}");
            ExitCode::from(if e.needs_attention() { EXIT_ATTENTION } else { EXIT_FAILED })
        }
    }
}

fn usage(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("pobox fetch: {e}");
    ExitCode::from(EXIT_USAGE)
}

/// One fetch of `account`; with built-in OAuth, a token the server refuses
/// is refreshed once and the login retried (it may have been revoked before
/// its expiry, or issued for an older scope).
pub(crate) async fn fetch_once(
    account: &Account,
    secret: auth::Secret,
    state_dir: &Path,
    dry_run: bool,
    progress: &AccountProgress,
    stop: Option<&AtomicBool>,
) -> Result<Summary, FetchError> {
    let first = fetch_account_until(account, secret, state_dir, dry_run, progress, stop).await;
    let (Err(FetchError::Auth(_)), Some(settings)) = (&first, &account.oauth) else { return first };
    let (name, settings) = (account.name.clone(), settings.clone());
    let fresh = tokio::task::spawn_blocking(move || oauth::access_token(&name, &settings, true))
        .await
        .map_err(|e| FetchError::Password(format!("token refresh task failed: {e}")))??;
    tracing::info!(account = %account.name, "server refused the cached OAuth token; retrying with a refreshed one");
    fetch_account_until(account, fresh, state_dir, dry_run, progress, stop).await
}

/// Runs the account's `on_new_mail` command, if any, and waits for it
/// (bounded). Arguments are exactly as configured; the account and counts
/// travel in the environment, so nothing from a server reaches a shell.
pub(crate) async fn run_hook(account: &Account, s: &Summary) {
    let Some((program, args)) = account.on_new_mail.as_ref().and_then(|c| c.split_first()) else { return };
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("POBOX_ACCOUNT", &account.name)
        .env("POBOX_NEW", (s.fetched + s.headers_only).to_string())
        .env("POBOX_BYTES", s.bytes.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let warn = |what: String| eprintln!("pobox fetch: {}: warning: on_new_mail {what}", account.name);
    match child {
        Ok(mut child) => match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => warn(format!("exited with {status}")),
            Ok(Err(e)) => warn(format!("failed: {e}")),
            Err(_) => {
                let _ = child.kill().await;
                warn(format!("ran longer than {} s and was killed", HOOK_TIMEOUT.as_secs()));
            }
        },
        Err(e) => warn(format!("cannot run {program:?}: {e}")),
    }
}

/// When to poll next: the interval, at least the server's LOGIN-DELAY, and
/// after `failures` failed polls in a row, doubled per failure up to
/// [`MAX_BACKOFF`] (or the interval, when that is longer).
pub fn next_delay(interval: Duration, login_delay: Option<u64>, failures: u32) -> Duration {
    let base = interval.max(Duration::from_secs(login_delay.unwrap_or(0)));
    if failures == 0 {
        return base;
    }
    base.saturating_mul(1u32 << failures.min(16)).min(MAX_BACKOFF.max(base))
}

/// An account task's stop signal: a flag the session checks between
/// messages, and a wake-up for the sleep between polls.
#[derive(Default)]
struct Stop {
    flag: AtomicBool,
    wake: Notify,
}

impl Stop {
    fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // notify_one keeps a permit if the task is not waiting yet.
        self.wake.notify_one();
    }
}

struct Worker {
    account: Account,
    stop: Arc<Stop>,
    handle: tokio::task::JoinHandle<()>,
}

struct Daemon {
    path: PathBuf,
    names: Vec<String>,
    min: Duration,
    quiet: bool,
    state_dir: PathBuf,
    workers: BTreeMap<String, Worker>,
    /// `--jobs`: how many accounts fetch at the same time.
    jobs: Arc<tokio::sync::Semaphore>,
}

/// `pobox fetch --daemon`. Returns when SIGTERM or SIGINT arrives and every
/// account has stopped.
pub(crate) fn run(args: FetchArgs) -> ExitCode {
    let path = match config_path(&args) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let accounts = match config.select(&args.accounts) {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pobox fetch: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let mut daemon = Daemon {
        path,
        names: args.accounts.clone(),
        min: Duration::from_secs(args.min_poll_interval.max(1)),
        quiet: args.quiet,
        state_dir: config.state_dir.clone(),
        workers: BTreeMap::new(),
        jobs: Arc::new(tokio::sync::Semaphore::new(args.jobs.max(1))),
    };
    runtime.block_on(async move {
        let (mut term, mut int, mut hup) =
            match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) {
                (Ok(t), Ok(i), Ok(h)) => (t, i, h),
                _ => {
                    eprintln!("pobox fetch: cannot install signal handlers");
                    return ExitCode::from(EXIT_FAILED);
                }
            };
        for a in accounts {
            daemon.start(a);
        }
        eprintln!("pobox fetch: daemon started, polling {} account(s)", daemon.workers.len());
        notify(&[NotifyState::Ready, NotifyState::Status("polling")]);
        // WATCHDOG_USEC: ping at half the period, from the main loop, so a
        // wedged runtime stops the pings and systemd restarts us.
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2).filter(|d| !d.is_zero());
        let mut ticker = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let mut states = vec![NotifyState::Reloading];
                    states.extend(NotifyState::monotonic_usec_now().ok());
                    notify(&states);
                    daemon.reload().await;
                    notify(&[NotifyState::Ready, NotifyState::Status("polling")]);
                }
                _ = ticker.tick() => {
                    if watchdog.is_some() {
                        notify(&[NotifyState::Watchdog]);
                    }
                }
            }
        }
        notify(&[NotifyState::Stopping]);
        eprintln!("pobox fetch: stopping: finishing the messages in progress");
        let workers = std::mem::take(&mut daemon.workers);
        for w in workers.values() {
            w.stop.stop();
        }
        for (_, w) in workers {
            let _ = w.handle.await;
        }
        ExitCode::from(EXIT_FETCHED)
    })
}

fn notify(states: &[NotifyState<'_>]) {
    // Not under systemd, or its socket gone: nothing to tell anyone.
    let _ = sd_notify::notify(states);
}

impl Daemon {
    fn start(&mut self, account: Account) {
        if account.password == PasswordSource::Prompt {
            eprintln!(
                "pobox fetch: {}: not polled: the daemon cannot ask for a password (set password_command or password)",
                account.name
            );
            return;
        }
        let interval = account.poll_interval.max(self.min);
        if account.poll_interval < self.min {
            eprintln!(
                "pobox fetch: {}: poll_interval {} s is below the minimum; polling every {} s",
                account.name,
                account.poll_interval.as_secs(),
                interval.as_secs()
            );
        }
        let stop = Arc::new(Stop::default());
        let handle = tokio::spawn(poll(
            account.clone(),
            self.state_dir.clone(),
            interval,
            stop.clone(),
            self.jobs.clone(),
            self.quiet,
        ));
        self.workers.insert(account.name.clone(), Worker { account, stop, handle });
    }

    /// SIGHUP: re-read the file; start, stop or restart accounts.
    async fn reload(&mut self) {
        let config = match Config::load(&self.path).and_then(|c| Ok((c.select(&self.names)?, c.state_dir))) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("pobox fetch: reload failed, keeping the running configuration: {e}");
                return;
            }
        };
        let (accounts, state_dir) = config;
        let restart_all = state_dir != self.state_dir;
        self.state_dir = state_dir;
        let mut stopping = Vec::new();
        let names: Vec<String> = self.workers.keys().cloned().collect();
        for name in names {
            let keep = !restart_all && accounts.iter().any(|a| a.name == name && *a == self.workers[&name].account);
            if !keep && let Some(w) = self.workers.remove(&name) {
                w.stop.stop();
                stopping.push((name, w.handle));
            }
        }
        // A restarted account must release its journal lock before the new
        // task takes it.
        let stopped: Vec<String> = stopping.iter().map(|(n, _)| n.clone()).collect();
        for (_, h) in stopping {
            let _ = h.await;
        }
        let mut started = Vec::new();
        for a in accounts {
            if !self.workers.contains_key(&a.name) {
                started.push(a.name.clone());
                self.start(a);
            }
        }
        eprintln!(
            "pobox fetch: configuration reloaded: {} account(s); started [{}], stopped [{}]",
            self.workers.len(),
            started.join(", "),
            stopped.join(", ")
        );
    }
}

/// One account's polling loop.
async fn poll(
    account: Account,
    state_dir: PathBuf,
    interval: Duration,
    stop: Arc<Stop>,
    jobs: Arc<tokio::sync::Semaphore>,
    quiet: bool,
) {
    let display = Display::new(false);
    let mut failures = 0u32;
    while !stop.flag.load(Ordering::SeqCst) {
        // Waiting for a turn must not delay a SIGTERM.
        let permit = tokio::select! {
            p = jobs.clone().acquire_owned() => p,
            () = stop.wake.notified() => break,
        };
        let bar = display.account(&account.name);
        let started = std::time::Instant::now();
        let for_secret = account.clone();
        let result = match tokio::task::spawn_blocking(move || auth::obtain_secret(&for_secret)).await {
            Ok(Ok(secret)) => fetch_once(&account, secret, &state_dir, false, &bar, Some(&stop.flag)).await,
            Ok(Err(e)) => Err(e),
            Err(e) => Err(FetchError::Password(format!("secret task failed: {e}"))),
        };
        drop(permit);
        let delay = match result {
            Ok(s) => {
                failures = 0;
                if !quiet && (s.got_mail() || s.deleted > 0) {
                    println!("{}", summary_line(&account.name, &s, started.elapsed().as_secs_f64(), false));
                }
                for w in &s.warnings {
                    eprintln!("pobox fetch: {}: warning: {w}", account.name);
                }
                if s.got_mail() {
                    run_hook(&account, &s).await;
                }
                next_delay(interval, s.login_delay, 0)
            }
            Err(FetchError::Interrupted) => break,
            // Waiting for `pobox fetch login`: no server was contacted, and
            // the new token should be picked up at the next regular poll,
            // not hours later.
            Err(e @ FetchError::OAuth(OAuthError::NotLoggedIn { .. } | OAuthError::LoginAgain { .. })) => {
                eprintln!("pobox fetch: {}: {e} (next try in {} s)", account.name, interval.as_secs());
                interval
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = next_delay(interval, None, failures);
                eprintln!("pobox fetch: {}: {e} (next try in {} s)", account.name, delay.as_secs());
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_honour_login_delay_and_back_off_with_a_cap() {
        let m = Duration::from_secs(60);
        assert_eq!(next_delay(m, None, 0), m);
        assert_eq!(next_delay(m, Some(300), 0), Duration::from_secs(300), "LOGIN-DELAY wins");
        assert_eq!(next_delay(m, Some(10), 0), m);
        assert_eq!(next_delay(m, None, 1), Duration::from_secs(120));
        assert_eq!(next_delay(m, None, 3), Duration::from_secs(480));
        assert_eq!(next_delay(m, None, 10), MAX_BACKOFF, "capped");
        assert_eq!(next_delay(m, None, u32::MAX), MAX_BACKOFF, "no overflow");
        let day = Duration::from_secs(86_400);
        assert_eq!(next_delay(day, None, 5), day, "a long interval is its own cap");
    }
}
