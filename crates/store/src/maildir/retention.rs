//! Retention mechanics for a Maildir: the retention log and the restore area.
//!
//! - `pobox-retention.log` in the Maildir root is an append-only text log,
//!   one record per line: `R <unix-secs> <uidl>` (first retrieval),
//!   `D <unix-secs> <uidl>` (moved to the restore area), `U <unix-secs>
//!   <uidl>` (restored: forget R and D). Appends are fsynced. The log is
//!   advisory metadata: losing it only means retrieved messages are kept
//!   longer (their clock restarts), never that one is removed early.
//! - `.pobox-deleted/` is a Maildir++ folder (hidden from POP3, visible as a
//!   folder to IMAP tools) holding removed messages under their original
//!   names, so a restore gives back the same UIDL.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, OFlags};
use rustix::io::Errno;

use super::deliver::{self, Existing};
use super::{Maildir, MaildirStore, Sub, commit, dirs, io_error, lock, name, scan};
use crate::retention::{self as policy, Policy};
use crate::{CommitReport, ExpireReport, RemovedMessage, StoreError};

/// The log's file name in the Maildir root.
pub(crate) const LOG_NAME: &str = "pobox-retention.log";
/// The restore area, a Maildir++ folder in the Maildir root.
pub(crate) const RESTORE_FOLDER: &str = ".pobox-deleted";
/// The compacted log is written under this name, then renamed over it.
const LOG_TMP: &str = "pobox-retention.log.tmp";

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Retrieved(String, SystemTime),
    Deleted(String, SystemTime),
    Restored(String, SystemTime),
}

/// What the log says now.
#[derive(Debug, Default)]
pub(crate) struct LogState {
    pub(crate) retrieved: HashMap<String, SystemTime>,
    pub(crate) deleted: HashMap<String, SystemTime>,
    /// Lines in the file, to decide when to compact.
    pub(crate) lines: usize,
}

impl Maildir {
    fn log_path(&self) -> PathBuf {
        self.path().join(LOG_NAME)
    }

    /// The restore area, a Maildir++ folder opened like every part of the
    /// Maildir (no link followed, see `dirs.rs`); its `new/` and `tmp/`
    /// exist so that other Maildir tools accept the folder. `Ok(None)` if
    /// it does not exist and `create` is not set.
    pub(crate) fn restore_area(&self, create: bool) -> Result<Option<Maildir>, StoreError> {
        self.sub_maildir(RESTORE_FOLDER, create)
    }

    /// The error for the log at `path` failing with `e` while `doing`: a
    /// link where the log belongs (`ELOOP` under `O_NOFOLLOW`) makes the
    /// maildrop unusable, as a linked `new/` does; silently ignoring it
    /// would restart every retention clock, replacing it would discard
    /// records.
    fn log_error(path: &std::path::Path, doing: &str, e: Errno) -> StoreError {
        if e == Errno::LOOP {
            return StoreError::Unsafe {
                path: path.to_owned(),
                reason: "it is a symbolic link".into(),
            };
        }
        io_error(format_args!("{doing} {}", path.display()), e.into())
    }

    /// Reads the retention log. A missing log is empty; a malformed line is
    /// skipped with a warning (never fatal: the log is advisory).
    pub(crate) fn load_log(&self) -> Result<LogState, StoreError> {
        let path = self.log_path();
        let file = match self.open_in_root(LOG_NAME, OFlags::RDONLY) {
            Ok(f) => f,
            Err(Errno::NOENT) => return Ok(LogState::default()),
            Err(e) => return Err(Self::log_error(&path, "reading", e)),
        };
        let mut state = LogState::default();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| io_error(format_args!("reading {}", path.display()), e))?;
            state.lines += 1;
            match parse_record(&line) {
                Some(Record::Retrieved(uidl, at)) => {
                    state.retrieved.entry(uidl).or_insert(at);
                }
                Some(Record::Deleted(uidl, at)) => {
                    state.deleted.insert(uidl, at);
                }
                Some(Record::Restored(uidl, _)) => {
                    state.retrieved.remove(&uidl);
                    state.deleted.remove(&uidl);
                }
                None => {
                    tracing::warn!(path = %path.display(), line = n + 1, "malformed retention record skipped")
                }
            }
        }
        Ok(state)
    }

    /// Appends records and fsyncs the log before returning.
    pub(crate) fn append_log(&self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let path = self.log_path();
        let err = |e: io::Error| io_error(format_args!("appending to {}", path.display()), e);
        let mut text = String::new();
        for r in records {
            text.push_str(&format_record(r));
        }
        // Open the existing log first, so that creating it (and making the
        // new entry durable) is known to be our doing.
        let (mut file, created) = match self.open_in_root(LOG_NAME, OFlags::WRONLY | OFlags::APPEND) {
            Ok(f) => (f, false),
            Err(Errno::NOENT) => match self.open_in_root(
                LOG_NAME,
                OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::EXCL,
            ) {
                Ok(f) => (f, true),
                // Another writer created it meanwhile.
                Err(Errno::EXIST) => (
                    self.open_in_root(LOG_NAME, OFlags::WRONLY | OFlags::APPEND)
                        .map_err(|e| Self::log_error(&path, "appending to", e))?,
                    false,
                ),
                Err(e) => return Err(err(e.into())),
            },
            Err(e) => return Err(Self::log_error(&path, "appending to", e)),
        };
        file.write_all(text.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        if created {
            self.sync_root()?;
        }
        Ok(())
    }

    /// Rewrites the log with only the records that still matter (`keep`
    /// holds the UIDLs of messages that exist, live or in the restore
    /// area). Atomic: tmp file, fsync, rename, fsync the directory.
    pub(crate) fn compact_log(
        &self,
        state: &LogState,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(), StoreError> {
        let path = self.log_path();
        let err = |e: io::Error| io_error(format_args!("compacting {}", path.display()), e);
        let mut text = String::new();
        for (uidl, at) in &state.retrieved {
            if keep(uidl) {
                text.push_str(&format_record(&Record::Retrieved(uidl.clone(), *at)));
            }
        }
        for (uidl, at) in &state.deleted {
            if keep(uidl) {
                text.push_str(&format_record(&Record::Deleted(uidl.clone(), *at)));
            }
        }
        // O_EXCL: never write through whatever is at that name (a planted
        // link, a leftover of a crash); a leftover is removed first (the
        // name, not what it may point to). Compaction runs under the
        // maildrop lock, so no other compaction is writing it.
        let create = || self.open_in_root(LOG_TMP, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL);
        let mut file = match create() {
            Err(Errno::EXIST) => {
                rustix::fs::unlinkat(self.root_fd(), LOG_TMP, AtFlags::empty()).map_err(|e| err(e.into()))?;
                create()
            }
            other => other,
        }
        .map_err(|e| err(e.into()))?;
        file.write_all(text.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        // Not a message: the log's own write-then-rename, in the root.
        #[allow(clippy::disallowed_methods, reason = "replaces the retention log, not a message")]
        rustix::fs::renameat(self.root_fd(), LOG_TMP, self.root_fd(), LOG_NAME).map_err(|e| err(e.into()))?;
        self.sync_root()
    }

    /// Moves a message from `sub/` into the restore area `area`'s `cur/`
    /// under the same name. `Ok(false)` if it was already gone.
    pub(crate) fn move_aside(&self, area: &Maildir, sub: Sub, file: &OsStr) -> Result<bool, StoreError> {
        let mut from_sub = sub;
        let mut from: std::ffi::OsString = file.to_os_string();
        let present = rustix::fs::statat(self.fd(sub), file, AtFlags::SYMLINK_NOFOLLOW).is_ok();
        if !present {
            // Another program may have moved it new/ -> cur/ or changed its
            // flags; the base name identifies it (maildir(5)).
            match scan::find_by_base(self.fd(Sub::Cur), name::base_of(file))
                .map_err(|e| io_error(format_args!("reading {}", self.dir(Sub::Cur).display()), e))?
            {
                Some(current) => {
                    from_sub = Sub::Cur;
                    from = current;
                }
                None => return Ok(false),
            }
        }
        match deliver::place(self.fd(from_sub), &from, area.fd(Sub::Cur), &from, Existing::Replace) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(format_args!("moving {} aside", self.dir(from_sub).join(&from).display()), e)),
        }
    }

    /// Messages in the restore area: (file name, UIDL).
    pub(crate) fn list_restore_area(
        &self,
    ) -> Result<Vec<(std::ffi::OsString, String)>, StoreError> {
        let Some(area) = self.restore_area(false)? else {
            return Ok(Vec::new());
        };
        let entries = dirs::read_names(area.fd(Sub::Cur))
            .map_err(|e| io_error(format_args!("reading {}", area.dir(Sub::Cur).display()), e))?;
        // Overrides are keyed by base name, so a message keeps the UIDL it
        // was given while it waits here.
        let (overrides, _) = self.load_uidls()?;
        let mut out = Vec::new();
        for (file, kind) in entries {
            // Only messages: a link or a directory there is not one.
            if file.as_encoded_bytes().first() == Some(&b'.')
                || !matches!(kind, FileType::RegularFile | FileType::Unknown)
            {
                continue;
            }
            let base = name::base_of(&file);
            let uidl = match overrides.get(base) {
                Some(u) => u.as_str().to_owned(),
                None => name::uidl_for(base).into_string(),
            };
            out.push((file, uidl));
        }
        Ok(out)
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn format_record(r: &Record) -> String {
    let (kind, uidl, at) = match r {
        Record::Retrieved(u, t) => ('R', u, t),
        Record::Deleted(u, t) => ('D', u, t),
        Record::Restored(u, t) => ('U', u, t),
    };
    format!("{kind} {} {uidl}\n", secs(*at))
}

fn parse_record(line: &str) -> Option<Record> {
    let mut parts = line.splitn(3, ' ');
    let kind = parts.next()?;
    let at = UNIX_EPOCH + Duration::from_secs(parts.next()?.parse().ok()?);
    let uidl = parts.next()?;
    if !crate::Uidl::is_valid(uidl) {
        return None;
    }
    let uidl = uidl.to_string();
    match kind {
        "R" => Some(Record::Retrieved(uidl, at)),
        "D" => Some(Record::Deleted(uidl, at)),
        "U" => Some(Record::Restored(uidl, at)),
        _ => None,
    }
}

// The retention operations on a maildrop: expiry (the timer, `pobox
// mailbox expire`, and login through `open`), restore and purge.
impl MaildirStore {
    /// Applies `user`'s retention policy at `now`: expired messages are
    /// removed (into the restore area when the policy has a window), and
    /// restore-area messages past their window are purged.
    ///
    /// Takes the maildrop lock without waiting: a maildrop held by a POP3
    /// session is never touched (`skipped_in_use`), so a session's message
    /// numbers never change under it. With `dry_run` nothing changes.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] / [`StoreError::DiskFull`] on filesystem errors.
    pub fn expire(
        &self,
        user: &str,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError> {
        let maildir = self.maildir(user)?;
        let _lock = match self.locks.acquire(maildir.lock_key()?, maildir.path(), lock::Holder::Maintenance) {
            Ok(l) => l,
            Err(StoreError::InUse) => {
                return Ok(ExpireReport {
                    skipped_in_use: true,
                    ..Default::default()
                });
            }
            Err(e) => return Err(e),
        };
        let policy = self.policies.load().retention.for_user(user);
        self.expire_locked(&maildir, user, &policy, now, dry_run)
    }

    /// [`expire`](MaildirStore::expire) for a caller that holds the
    /// maildrop lock (a session's open, or `expire` itself).
    pub(super) fn expire_locked(
        &self,
        maildir: &Maildir,
        user: &str,
        policy: &Policy,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError> {
        let policy = *policy;
        let messages = maildir.scan()?;
        let log = maildir.load_log()?;
        let mut report = ExpireReport::default();
        let mut expired = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let retrieved = log.retrieved.get(m.uidl.as_str()).copied();
            if let Some(reason) = policy::expiry(now, &policy, m.received, retrieved) {
                report.expired.push((m.uidl.as_str().to_owned(), reason));
                expired.push(i);
            }
        }
        let removed = maildir.list_restore_area()?;
        let due: Vec<_> = removed
            .iter()
            .filter(|(_, uidl)| {
                // A file without a D record was moved aside by a run that
                // crashed before logging: its window starts now.
                log.deleted
                    .get(uidl)
                    .is_some_and(|at| policy::purge_due(now, &policy, *at))
            })
            .collect();
        report.purged = due.len();
        if dry_run {
            return Ok(report);
        }
        if !expired.is_empty() {
            let commit =
                commit::commit(maildir, &messages, &expired, policy.restore_days > 0, now)?;
            if commit.unlogged {
                tracing::warn!(%user, "expired messages are in the restore area, but their removal was not logged");
            }
            if commit.failed > 0 {
                tracing::warn!(
                    %user,
                    failed = commit.failed,
                    "some expired messages could not be removed"
                );
            }
        }
        let mut late = Vec::new();
        for (_, uidl) in &removed {
            if !log.deleted.contains_key(uidl) {
                late.push(Record::Deleted(uidl.clone(), now));
            }
        }
        maildir.append_log(&late)?;
        if let Some(area) = maildir.restore_area(false)?
            && !due.is_empty()
        {
            for (file, _) in &due {
                match rustix::fs::unlinkat(area.fd(Sub::Cur), file, rustix::fs::AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => {
                        return Err(io_error(
                            format_args!("purging {}", area.dir(Sub::Cur).join(file).display()),
                            e.into(),
                        ));
                    }
                }
            }
            area.sync(Sub::Cur)?;
        }
        // Keep the log small: once it is mostly records of messages that no
        // longer exist, rewrite it without them.
        let log = maildir.load_log()?;
        if log.lines > 64 {
            let live: std::collections::HashSet<String> = maildir
                .scan()?
                .into_iter()
                .map(|m| m.uidl.into_string())
                .chain(maildir.list_restore_area()?.into_iter().map(|(_, u)| u))
                .collect();
            let live_entries = log
                .retrieved
                .keys()
                .chain(log.deleted.keys())
                .filter(|u| live.contains(*u))
                .count();
            if log.lines > 2 * live_entries {
                maildir.compact_log(&log, &|u| live.contains(u))?;
            }
        }
        Ok(report)
    }

    /// Brings messages back from the restore area into `cur/`, with their
    /// original names and so their original UIDLs; only those removed at
    /// or after `since`, if given. Their retention clock starts afresh.
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`] while a session holds the maildrop;
    /// [`StoreError::Io`] on filesystem errors.
    pub(super) fn restore_removed(
        &self,
        user: &str,
        since: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let maildir = self.maildir(user)?;
        let _lock = self.locks.acquire(maildir.lock_key()?, maildir.path(), lock::Holder::Maintenance)?;
        let log = maildir.load_log()?;
        let Some(area) = maildir.restore_area(false)? else {
            return Ok(Vec::new());
        };
        let mut restored = Vec::new();
        let mut records = Vec::new();
        for (file, uidl) in maildir.list_restore_area()? {
            let removed_at = log.deleted.get(&uidl).copied();
            if let (Some(since), Some(at)) = (since, removed_at)
                && at < since
            {
                continue;
            }
            let from = area.dir(Sub::Cur).join(&file);
            match deliver::place(area.fd(Sub::Cur), &file, maildir.fd(Sub::Cur), &file, Existing::Refuse) {
                Ok(()) => {
                    records.push(Record::Restored(uidl.clone(), now));
                    restored.push(uidl);
                }
                Err(e) => return Err(io_error(format_args!("restoring {}", from.display()), e)),
            }
        }
        if !restored.is_empty() {
            maildir.forget_usage();
            maildir.sync(Sub::Cur)?;
            area.sync(Sub::Cur)?;
            maildir.append_log(&records)?;
        }
        Ok(restored)
    }

    /// The messages in `user`'s restore area.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] on filesystem errors.
    pub(super) fn restore_area(&self, user: &str) -> Result<Vec<RemovedMessage>, StoreError> {
        let maildir = self.maildir(user)?;
        let log = maildir.load_log()?;
        Ok(maildir
            .list_restore_area()?
            .into_iter()
            .map(|(_, uidl)| RemovedMessage {
                removed_at: log.deleted.get(&uidl).copied(),
                uidl,
            })
            .collect())
    }

    /// Removes every message of `user` (into the restore area when the
    /// policy has a window). Refuses while a session holds the maildrop.
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`], or filesystem errors.
    pub(super) fn purge_all(&self, user: &str, now: SystemTime) -> Result<CommitReport, StoreError> {
        let maildir = self.maildir(user)?;
        let _lock = self.locks.acquire(maildir.lock_key()?, maildir.path(), lock::Holder::Maintenance)?;
        let messages = maildir.scan()?;
        let all: Vec<usize> = (0..messages.len()).collect();
        let aside = self.policies.load().retention.for_user(user).restore_days > 0;
        commit::commit(&maildir, &messages, &all, aside, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_skipped() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for r in [
            Record::Retrieved("abc".into(), t),
            Record::Deleted("x.y".into(), t),
            Record::Restored("z".into(), t),
        ] {
            assert_eq!(parse_record(format_record(&r).trim_end()), Some(r));
        }
        assert_eq!(parse_record("R notanumber abc"), None);
        assert_eq!(parse_record("Q 1 abc"), None);
        assert_eq!(parse_record("R 1 has space"), None);
        assert_eq!(parse_record(""), None);
    }
}
