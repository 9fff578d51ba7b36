//! `pobox mailbox ls|show|expire|restore|purge`, `pobox who`, `pobox kick`.
//!
//! The mailbox commands work offline on the store (they respect a session's
//! lock); `who` and `kick` ask the running server over its control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::Subcommand;
use pobox_server::date::{parse_time, rfc3339};
use pobox_server::sessions::SessionInfo;
use pobox_store::StoreError;
use serde::Serialize;

use crate::config::Settings;

/// Mailbox administration.
#[derive(Debug, Subcommand)]
pub enum MailboxCommand {
    /// Per user: messages, bytes, oldest message, removed (restorable) messages.
    Ls {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One user's messages: UIDL, size, date, from, subject, retrieved-at,
    /// and which credentials (devices) retrieved each.
    Show {
        /// The user.
        user: String,
        /// Also the removed messages in the restore area, with the
        /// credential that deleted each.
        #[arg(long)]
        removed: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Apply retention now (all users, or one).
    Expire {
        /// Only this user.
        user: Option<String>,
        /// Show what would be removed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Judge as if it were TIME (e.g. +3d): with --dry-run, a preview;
        /// without, it removes what will have expired by then.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Bring removed messages back, with their original UIDLs.
    Restore {
        /// The user.
        user: String,
        /// Only messages removed at or after TIME (2026-11-27, 2026-11-27T10:00:00Z, @unix, or 3d/12h/30m ago).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Move a message from a folder (e.g. the Junk quarantine) into the inbox, intact.
    Release {
        /// The user.
        user: String,
        /// The folder (as in Sieve `fileinto`).
        folder: String,
        /// The message's UIDL: the file name up to the first ',' or ':'.
        id: String,
    },
    /// Remove every message of a user (into the restore area if the policy
    /// has one; otherwise for good). Asks first on a terminal.
    Purge {
        /// The user.
        user: String,
        /// Say what would be removed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask (for scripts; required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Runs a mailbox subcommand.
///
/// # Errors
/// Configuration and storage errors, with what to do.
pub fn run(data: &Path, config: Option<&Path>, cmd: MailboxCommand) -> anyhow::Result<()> {
    let settings = Settings::load(data, config)?;
    let store = super::open_store(&settings)?;
    let users = super::open_users(&settings);
    let now = SystemTime::now();
    match cmd {
        MailboxCommand::Ls { json } => {
            let mut rows = Vec::new();
            for user in users.list()? {
                let messages = store.inspect(&user)?;
                rows.push(UserRow {
                    bytes: messages.iter().map(|m| m.size).sum(),
                    oldest: messages.iter().map(|m| m.received).min().map(rfc3339),
                    messages: messages.len(),
                    removed: store.removed_messages(&user)?.len(),
                    user,
                });
            }
            if json {
                print_json(&rows)?;
            } else {
                table(
                    &["USER", "MESSAGES", "BYTES", "OLDEST", "REMOVED"],
                    rows.iter().map(|r| {
                        vec![
                            r.user.clone(),
                            r.messages.to_string(),
                            r.bytes.to_string(),
                            r.oldest.clone().unwrap_or_else(|| "-".into()),
                            r.removed.to_string(),
                        ]
                    }),
                );
            }
        }
        MailboxCommand::Show { user, removed, json } => {
            ensure_user(&users, &user)?;
            let takers = super::logins::Takers::of(&super::logins::sessions(&settings, &user)?);
            let mut rows = Vec::new();
            for (i, m) in store.inspect(&user)?.iter().enumerate() {
                let head = store.head(&user, m, 64 * 1024).unwrap_or_default();
                rows.push(MessageRow {
                    number: Some(i + 1),
                    uidl: m.uidl.to_string(),
                    size: m.size,
                    date: rfc3339(m.received),
                    from: header(&head, "from").unwrap_or_default(),
                    subject: header(&head, "subject").unwrap_or_default(),
                    retrieved: m.retrieved.map(rfc3339),
                    retrieved_by: takers.retrieved_by(m.uidl.as_str()),
                    removed: None,
                    deleted_by: None,
                });
            }
            if removed {
                for m in store.removed_messages(&user)? {
                    rows.push(MessageRow {
                        number: None,
                        retrieved_by: takers.retrieved_by(&m.uidl),
                        deleted_by: takers.deleted_by(&m.uidl),
                        removed: Some(m.removed_at.map_or_else(|| "unknown".into(), rfc3339)),
                        uidl: m.uidl,
                        size: 0,
                        date: String::new(),
                        from: String::new(),
                        subject: String::new(),
                        retrieved: None,
                    });
                }
            }
            if json {
                print_json(&rows)?;
            } else {
                let by = |list: &Vec<String>| if list.is_empty() { "-".into() } else { list.join(",") };
                table(
                    &["#", "UIDL", "SIZE", "DATE", "RETRIEVED", "BY", "FROM", "SUBJECT"],
                    rows.iter().filter(|r| r.removed.is_none()).map(|r| {
                        vec![
                            r.number.map(|n| n.to_string()).unwrap_or_default(),
                            r.uidl.clone(),
                            r.size.to_string(),
                            r.date.clone(),
                            r.retrieved.clone().unwrap_or_else(|| "-".into()),
                            by(&r.retrieved_by),
                            clip(&r.from, 30),
                            clip(&r.subject, 40),
                        ]
                    }),
                );
                if removed {
                    println!();
                    println!("Removed (restorable with `pobox mailbox restore {user}`):");
                    table(
                        &["UIDL", "REMOVED", "RETRIEVED BY", "DELETED BY"],
                        rows.iter().filter_map(|r| {
                            Some(vec![
                                r.uidl.clone(),
                                r.removed.clone()?,
                                by(&r.retrieved_by),
                                r.deleted_by.clone().unwrap_or_else(|| "- (expiry or admin)".into()),
                            ])
                        }),
                    );
                }
            }
        }
        MailboxCommand::Expire { user, dry_run, at, json } => {
            let now = match at {
                Some(text) => parse_time(&text, now)
                    .with_context(|| format!("--at {text:?}: use +3d, 2026-12-01, @UNIXSECS ..."))?,
                None => now,
            };
            let targets = match user {
                Some(u) => {
                    ensure_user(&users, &u)?;
                    vec![u]
                }
                None => users.list()?,
            };
            let mut rows = Vec::new();
            for user in targets {
                let report = store.expire(&user, now, dry_run)?;
                rows.push(ExpireRow {
                    expired: report.expired.iter().map(|(u, r)| format!("{u} ({r})")).collect(),
                    purged: report.purged,
                    skipped_in_use: report.skipped_in_use,
                    user,
                });
            }
            if json {
                print_json(&rows)?;
            } else {
                let verb = if dry_run { "would expire" } else { "expired" };
                for r in &rows {
                    if r.skipped_in_use {
                        println!("{}: skipped (a POP3 session holds the maildrop; retried next run)", r.user);
                        continue;
                    }
                    println!("{}: {verb} {}, purged {} from the restore area", r.user, r.expired.len(), r.purged);
                    for e in &r.expired {
                        println!("  {e}");
                    }
                }
            }
        }
        MailboxCommand::Restore { user, since } => {
            ensure_user(&users, &user)?;
            let since = match since {
                Some(text) => Some(parse_time(&text, now).with_context(|| {
                    format!("--since {text:?}: use 2026-11-27, 2026-11-27T10:00:00Z, @UNIXSECS or an age like 3d, 12h, 30m")
                })?),
                None => None,
            };
            let restored = store.restore(&user, since, now).map_err(in_use_hint)?;
            println!("restored {} message(s) for {user}", restored.len());
            for uidl in restored {
                println!("  {uidl}");
            }
        }
        MailboxCommand::Release { user, folder, id } => {
            ensure_user(&users, &user)?;
            let location = store.release(&user, &folder, &id)?;
            println!("released {id} from {folder} into {user}'s inbox ({location})");
        }
        MailboxCommand::Purge { user, dry_run, yes } => {
            ensure_user(&users, &user)?;
            let window = store.policy(&user).restore_days;
            let messages = store.inspect(&user)?;
            let bytes: u64 = messages.iter().map(|m| m.size).sum();
            let fate = if window > 0 {
                format!("restorable for {window} days with: pobox mailbox restore {user}")
            } else {
                "for good: restore_days is 0, this cannot be undone".to_string()
            };
            if dry_run {
                println!("would remove {} message(s) ({bytes} bytes) of {user}, {fate}", messages.len());
                return Ok(());
            }
            if messages.is_empty() {
                println!("{user} has no messages; nothing removed");
                return Ok(());
            }
            if !yes {
                confirm(&format!("remove {} message(s) ({bytes} bytes) of {user}, {fate}?", messages.len()))?;
            }
            let report = store.purge(&user, now).map_err(in_use_hint)?;
            println!("removed {} message(s) of {user}, {fate}", report.removed);
            if report.failed > 0 {
                bail!("{} message(s) could not be removed", report.failed);
            }
        }
    }
    Ok(())
}

/// Asks `question` on the terminal; anything but y/yes stops the command.
/// Without a terminal there is no one to ask: the command needs `--yes`.
fn confirm(question: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("{question}\nnot asked: stdin is not a terminal; add --yes to confirm (or --dry-run to look first)");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => bail!("nothing removed"),
    }
}

/// `pobox who`: the sessions open in the running server.
///
/// # Errors
/// When no server runs on this data dir.
pub fn who(data: &Path, config: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let settings = Settings::load(data, config)?;
    let reply = control(&settings, "who")?;
    let mut sessions = Vec::new();
    for line in reply.lines().take_while(|l| *l != ".") {
        let s: SessionInfo = serde_json::from_str(line).context("unexpected reply from the server")?;
        sessions.push(s);
    }
    if json {
        return print_json(&sessions);
    }
    table(
        &["ID", "USER", "PEER", "SINCE", "TLS"],
        sessions.iter().map(|s| {
            vec![
                s.id.to_string(),
                s.user.clone().unwrap_or_else(|| "(not logged in)".into()),
                s.peer.clone(),
                rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s.since)),
                if s.tls { "yes" } else { "no" }.into(),
            ]
        }),
    );
    Ok(())
}

/// `pobox kick USER`: closes the user's sessions without UPDATE.
///
/// # Errors
/// When no server runs on this data dir.
pub fn kick(data: &Path, config: Option<&Path>, user: &str) -> anyhow::Result<()> {
    let settings = Settings::load(data, config)?;
    let reply = control(&settings, &format!("kick {user}"))?;
    match reply.trim().strip_prefix("kicked ") {
        Some(n) => println!("closed {n} session(s) of {user} (nothing was deleted)"),
        None => bail!("server answered: {}", reply.trim()),
    }
    Ok(())
}

fn control(settings: &Settings, request: &str) -> anyhow::Result<String> {
    let path = settings.data_dir.join("pobox.sock");
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!("no running `pobox serve` found at {} (is the server started with this --data?)", path.display())
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut reply = String::new();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let end = line == "." || line.starts_with("kicked ") || line.starts_with("error ");
        reply.push_str(&line);
        reply.push('\n');
        if end {
            break;
        }
    }
    Ok(reply)
}

fn ensure_user(users: &pobox_auth::UserDb, user: &str) -> anyhow::Result<()> {
    if !users.exists(user)? {
        bail!("no such user: {user}");
    }
    Ok(())
}

fn in_use_hint(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::InUse => anyhow::anyhow!(
            "the maildrop is held by a POP3 session; retry when it ends (see `pobox who`, or `pobox kick USER`)"
        ),
        other => other.into(),
    }
}

#[derive(Serialize)]
struct UserRow {
    user: String,
    messages: usize,
    bytes: u64,
    oldest: Option<String>,
    removed: usize,
}

#[derive(Serialize)]
struct MessageRow {
    /// The POP3 message number; `None` for a removed message.
    number: Option<usize>,
    uidl: String,
    size: u64,
    date: String,
    from: String,
    subject: String,
    retrieved: Option<String>,
    /// Credentials (`password`, `oauth`, app password labels) whose
    /// sessions retrieved it, from the login history.
    retrieved_by: Vec<String>,
    /// Only with `--removed`, for messages in the restore area: when.
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<String>,
    /// ... and the credential whose session deleted it (none: removed by
    /// expiry or an admin command).
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_by: Option<String>,
}

#[derive(Serialize)]
struct ExpireRow {
    user: String,
    expired: Vec<String>,
    purged: usize,
    skipped_in_use: bool,
}

pub(super) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A header's unfolded value (RFC 5322 §2.2.3), raw (encoded words are
/// shown as they are).
fn header(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = value.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim().eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_string());
        }
    }
    value.map(|v| v.chars().filter(|c| !c.is_control()).collect())
}

pub(super) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max - 1).collect();
        out.push('…');
        out
    }
}

pub(super) fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_unfolds_and_stops_at_the_body() {
        let head = b"From: Alice\r\n <a@example.org>\r\nSubject: hi\r\n\r\nSubject: body\r\n";
        assert_eq!(header(head, "from").as_deref(), Some("Alice <a@example.org>"));
        assert_eq!(header(head, "SUBJECT").as_deref(), Some("hi"));
        assert_eq!(header(b"X: y\n\nFrom: no\n", "from"), None);
    }
}
