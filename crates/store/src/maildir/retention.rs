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
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Maildir, Sub, fsync_dir, io_error, name, scan};
use crate::StoreError;

/// The log's file name in the Maildir root.
pub(crate) const LOG_NAME: &str = "pobox-retention.log";
/// The restore area, a Maildir++ folder in the Maildir root.
pub(crate) const RESTORE_FOLDER: &str = ".pobox-deleted";

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

    /// The restore area's `cur/` (its `new/` and `tmp/` exist so that other
    /// Maildir tools accept the folder).
    pub(crate) fn restore_cur(&self) -> PathBuf {
        self.path().join(RESTORE_FOLDER).join("cur")
    }

    fn ensure_restore_area(&self) -> Result<(), StoreError> {
        let folder = self.path().join(RESTORE_FOLDER);
        for sub in ["cur", "new", "tmp"] {
            let dir = folder.join(sub);
            match std::fs::create_dir_all(&dir) {
                Ok(()) => {}
                Err(e) => return Err(io_error(format_args!("creating {}", dir.display()), e)),
            }
        }
        Ok(())
    }

    /// Reads the retention log. A missing log is empty; a malformed line is
    /// skipped with a warning (never fatal: the log is advisory).
    pub(crate) fn load_log(&self) -> Result<LogState, StoreError> {
        let path = self.log_path();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LogState::default()),
            Err(e) => return Err(io_error(format_args!("reading {}", path.display()), e)),
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
        let err = |e| io_error(format_args!("appending to {}", path.display()), e);
        let mut text = String::new();
        for r in records {
            text.push_str(&format_record(r));
        }
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(&path)
            .map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        if !existed {
            fsync_dir(self.path())?;
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
        let tmp = self.path().join(format!("{LOG_NAME}.tmp"));
        let err = |e| io_error(format_args!("compacting {}", path.display()), e);
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
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(&tmp)
            .map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        rustix::fs::rename(&tmp, &path).map_err(|e| err(e.into()))?;
        fsync_dir(self.path())
    }

    /// Moves a message from `sub/` into the restore area under the same
    /// name. `Ok(false)` if it was already gone.
    pub(crate) fn move_aside(&self, sub: Sub, file: &OsStr) -> Result<bool, StoreError> {
        self.ensure_restore_area()?;
        let dest_dir = self.restore_cur();
        let mut from = self.dir(sub).join(file);
        if !from.exists() {
            // Another program may have moved it new/ -> cur/ or changed its
            // flags; the base name identifies it (maildir(5)).
            let cur = self.dir(Sub::Cur);
            match scan::find_by_base(&cur, name::base_of(file))
                .map_err(|e| io_error(format_args!("reading {}", cur.display()), e))?
            {
                Some(current) => from = cur.join(current),
                None => return Ok(false),
            }
        }
        let to = dest_dir.join(from.file_name().unwrap_or(file));
        match rustix::fs::rename(&from, &to) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(io_error(
                format_args!("moving {} aside", from.display()),
                e.into(),
            )),
        }
    }

    /// Messages in the restore area: (file name, UIDL).
    pub(crate) fn list_restore_area(
        &self,
    ) -> Result<Vec<(std::ffi::OsString, String)>, StoreError> {
        let dir = self.restore_cur();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(format_args!("reading {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| io_error(format_args!("reading {}", dir.display()), e))?;
            let file = entry.file_name();
            if file.as_encoded_bytes().first() == Some(&b'.') {
                continue;
            }
            let uidl = name::uidl_for(name::base_of(&file)).into_string();
            out.push((file, uidl));
        }
        Ok(out)
    }
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
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
