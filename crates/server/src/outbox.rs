//! The outbox: mail pobox sends out (Sieve vacation replies), spooled
//! durably in `<data>/outbox/` and handed to the relay by one background
//! task with bounded retries.
//!
//! Why a spool and not a send from the delivery: the incoming message is
//! acknowledged as soon as it is stored; the reply must neither delay that
//! answer (a slow relay would hold the MTA's connection) nor be lost when
//! the relay is down or pobox restarts. `pobox deliver` (a short-lived
//! process) only queues; the running `pobox serve` sends.
//!
//! One file per message, `<time>-<random>.eml`: a JSON header line
//! (envelope, what it is, when it was queued), then the message. Written
//! to a `.tmp-` name, fsynced, renamed, directory fsynced. A file that
//! cannot be parsed is renamed to `.bad` and left for the admin.
//!
//! Retries: the first attempt at once (the queueing wakes the task), then
//! after `retry_interval`, doubling up to an hour, until the message is
//! `give_up_after` old; a 5xx from the relay gives up at once. Giving up
//! is logged with the queue file's name and removes it: a late vacation
//! reply is worth little, and nothing the user received depends on it.
//! Attempt counts live in memory: a restart retries everything at once,
//! and the queue time in the file still bounds the whole.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pobox_store::Mailstore;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::relay::{self, RelayConfig, SendError};

/// Everything outbound mail needs: the relay and the state directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    /// The relay replies are submitted to.
    pub relay: RelayConfig,
    /// The durable queue (`<data>/outbox`).
    pub outbox_dir: PathBuf,
    /// Vacation response tracking, one file per user (`<data>/vacation`).
    pub vacation_dir: PathBuf,
    /// The wait after the first failed attempt (doubles, capped at an hour).
    pub retry_interval: Duration,
    /// A message still unsent this long after it was queued is given up.
    pub give_up_after: Duration,
}

/// The most messages one pass submits (the rest wait for the next pass).
const MAX_PER_PASS: usize = 100;
/// The longest wait between attempts at one message.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The header line of a queue file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// Format version (1).
    pub v: u32,
    /// Queued at, seconds since the epoch.
    pub created: u64,
    /// Envelope sender; `None` is `<>` (every auto-reply, RFC 3834 §3.3).
    pub from: Option<String>,
    /// Envelope recipients.
    pub to: Vec<String>,
    /// What it is (`"vacation"`), for the log.
    pub kind: String,
    /// The user it was sent for.
    pub user: String,
    /// A redirect stored nowhere else: if the relay refuses it or it is
    /// given up, deliver it to `user`'s inbox instead of dropping it.
    #[serde(default)]
    pub keep_on_failure: bool,
}

/// Queues `message` durably; returns the queue file.
///
/// # Errors
/// When the directory cannot be created or the file written and synced.
pub fn enqueue(dir: &Path, envelope: &Envelope, message: &mut dyn io::Read) -> io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("{nanos:024}-{:016x}.eml", rand::random::<u64>());
    let tmp = dir.join(format!(".tmp-{name}"));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut header = serde_json::to_vec(envelope).map_err(io::Error::other)?;
        header.push(b'\n');
        file.write_all(&header)?;
        io::copy(message, &mut file)?;
        file.sync_all()?;
        let path = dir.join(&name);
        rename_state_file(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Splits a queue file into its envelope and message.
fn parse(bytes: &[u8]) -> Option<(Envelope, &[u8])> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    let envelope: Envelope = serde_json::from_slice(&bytes[..end]).ok()?;
    (envelope.v == 1 && !envelope.to.is_empty()).then_some((envelope, &bytes[end + 1..]))
}

/// When to try one queue file next.
#[derive(Debug, Clone, Copy)]
struct Retry {
    attempts: u32,
    next: Instant,
}

/// The sender task: a pass at start, whenever `wake` is notified (a reply
/// was queued) and every `retry_interval`. `config` gives the current
/// generation's settings (a reload changes the relay without a restart).
pub async fn run(
    config: impl Fn() -> Option<OutboundConfig>,
    wake: Arc<Notify>,
    store: Arc<dyn Mailstore>,
) {
    let mut retries: HashMap<String, Retry> = HashMap::new();
    loop {
        let current = config();
        let interval = current
            .as_ref()
            .map_or(Duration::from_secs(60), |c| c.retry_interval);
        if let Some(c) = current {
            pass(&c, &mut retries, &store).await;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One pass over the queue.
async fn pass(
    config: &OutboundConfig,
    retries: &mut HashMap<String, Retry>,
    store: &Arc<dyn Mailstore>,
) {
    let dir = config.outbox_dir.clone();
    let names = match tokio::task::spawn_blocking(move || list(&dir)).await {
        Ok(Ok(names)) => names,
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => return,
        Ok(Err(e)) => {
            warn!(dir = %config.outbox_dir.display(), error = %e, "cannot read the outbox");
            return;
        }
        Err(_) => return,
    };
    retries.retain(|name, _| names.contains(name));
    let now = Instant::now();
    for name in names.into_iter().take(MAX_PER_PASS) {
        if retries.get(&name).is_some_and(|r| r.next > now) {
            continue;
        }
        let path = config.outbox_dir.join(&name);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn!(file = %name, error = %e, "cannot read an outbox file");
                continue;
            }
        };
        let Some((envelope, message)) = parse(&bytes) else {
            warn!(file = %name, "unreadable outbox file; renamed to .bad and not sent");
            let _ = rename_state_file(&path, &config.outbox_dir.join(format!("{name}.bad")));
            continue;
        };
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH + Duration::from_secs(envelope.created))
            .unwrap_or_default();
        let attempts = retries.get(&name).map_or(0, |r| r.attempts) + 1;
        match relay::send(
            &config.relay,
            envelope.from.as_deref(),
            &envelope.to,
            message,
        )
        .await
        {
            Ok(()) => {
                info!(kind = %envelope.kind, user = %envelope.user, to = %envelope.to.join(","), attempts, "sent through the relay");
                remove(&config.outbox_dir, &name);
                retries.remove(&name);
            }
            Err(SendError::Permanent(e)) => {
                warn!(kind = %envelope.kind, user = %envelope.user, file = %name, error = %e, "the relay refused the message; given up");
                give_up(config, &name, &envelope, message, store).await;
                retries.remove(&name);
            }
            Err(SendError::Transient(e)) if age >= config.give_up_after => {
                warn!(kind = %envelope.kind, user = %envelope.user, file = %name, attempts, error = %e, "relay failed; given up after {}s", config.give_up_after.as_secs());
                give_up(config, &name, &envelope, message, store).await;
                retries.remove(&name);
            }
            Err(SendError::Transient(e)) => {
                let wait = backoff(config.retry_interval, attempts);
                warn!(kind = %envelope.kind, user = %envelope.user, file = %name, attempts, error = %e, "relay failed; retrying in {}s", wait.as_secs());
                retries.insert(
                    name,
                    Retry {
                        attempts,
                        next: Instant::now() + wait,
                    },
                );
            }
        }
    }
}

/// Removes a message that will not be sent; a redirect stored nowhere else
/// goes to the user's inbox first (and stays queued as `.failed`, logged,
/// if even that fails).
async fn give_up(
    config: &OutboundConfig,
    name: &str,
    envelope: &Envelope,
    message: &[u8],
    store: &Arc<dyn Mailstore>,
) {
    if envelope.keep_on_failure {
        let (store, user, bytes) = (store.clone(), envelope.user.clone(), message.to_vec());
        let kept =
            tokio::task::spawn_blocking(move || store.deliver(&user, &mut bytes.as_slice())).await;
        match kept {
            Ok(Ok(d)) => {
                warn!(user = %envelope.user, uidl = %d.uidl.as_str(), "the redirected message was not sent; kept in the inbox instead");
            }
            Ok(Err(e)) => {
                error!(user = %envelope.user, file = %name, error = %e, "the redirected message was not sent and cannot be kept; left in the outbox as .failed");
                let _ = rename_state_file(
                    &config.outbox_dir.join(name),
                    &config.outbox_dir.join(format!("{name}.failed")),
                );
                return;
            }
            Err(_) => return,
        }
    }
    remove(&config.outbox_dir, name);
}

/// `retry_interval` × 2^(attempts−1), at most [`MAX_BACKOFF`].
fn backoff(interval: Duration, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF)
        .max(interval.min(MAX_BACKOFF))
}

/// The queue files, oldest first. Temporary files a crash left behind
/// (older than [`STALE_TMP`], so never one being written) are removed: a
/// message that was still being queued was never acknowledged as queued.
fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with(".tmp-") {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TMP));
            if stale {
                warn!(file = %name, "removing a partly written outbox file left by a crash");
                let _ = std::fs::remove_file(entry.path());
            }
        } else if name.ends_with(".eml") && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Age past which a `.tmp-` file in the outbox is a crash's leftover.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// A rename inside pobox's own state directories (`outbox/`,
/// `vacation/`), which belong to the service user and are no Maildir: the
/// store's delivery rules (no replace, per-component handles) are not
/// needed here, and replacing is the point (atomic update of a state file).
#[allow(clippy::disallowed_methods)]
pub(crate) fn rename_state_file(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)
}

fn remove(dir: &Path, name: &str) {
    if let Err(e) = std::fs::remove_file(dir.join(name)) {
        warn!(file = %name, error = %e, "cannot remove a sent outbox file; it may be sent again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueued_files_parse_back_and_garbage_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let env = Envelope {
            v: 1,
            created: 5,
            from: None,
            to: vec!["a@b.example".into()],
            kind: "vacation".into(),
            user: "u".into(),
            keep_on_failure: false,
        };
        let path = enqueue(
            &dir.path().join("outbox"),
            &env,
            &mut &b"Subject: x\r\n\r\nhi\r\n"[..],
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (back, msg) = parse(&bytes).unwrap();
        assert_eq!(back, env);
        assert_eq!(msg, b"Subject: x\r\n\r\nhi\r\n");
        assert_eq!(list(&dir.path().join("outbox")).unwrap().len(), 1);
        // A fresh temporary file is someone's enqueue in progress: kept,
        // and not listed. An old one is a crash's leftover: removed.
        let fresh = dir.path().join("outbox/.tmp-fresh.eml");
        let old = dir.path().join("outbox/.tmp-old.eml");
        std::fs::write(&fresh, b"x").unwrap();
        std::fs::write(&old, b"x").unwrap();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        assert_eq!(list(&dir.path().join("outbox")).unwrap().len(), 1);
        assert!(fresh.exists() && !old.exists());
        assert!(parse(b"not json\nbody").is_none());
        assert!(
            parse(
                b"{\"v\":1,\"created\":1,\"from\":null,\"to\":[],\"kind\":\"k\",\"user\":\"u\"}\nx"
            )
            .is_none(),
            "no recipient"
        );
        assert!(parse(b"no newline at all").is_none());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs(60);
        assert_eq!(backoff(s, 1), s);
        assert_eq!(backoff(s, 2), s * 2);
        assert_eq!(backoff(s, 3), s * 4);
        assert_eq!(backoff(s, 40), MAX_BACKOFF);
    }
}
