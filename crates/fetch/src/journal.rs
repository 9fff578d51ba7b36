//! The per-account journal: which UIDLs are safely stored locally, and since
//! when. It is what makes the fetch exactly-once.
//!
//! A record is appended and `fsync`ed *after* the message is durable in the
//! destination and *before* its DELE is sent. Records are written in
//! batches (one write, one `fsync` for up to 64 messages: group commit), but
//! each only once its whole batch is durable, so the table holds per
//! message. At any crash point:
//!
//! | crash after…                     | next run sees                    | next run does                  |
//! |----------------------------------|----------------------------------|--------------------------------|
//! | partial download                 | no record, no file               | fetches again                  |
//! | file durable, no record          | no record; destination has it    | re-fetch, store says "already present", record |
//! | record durable, DELE not sent    | record; message on server        | sends DELE (pending delete)    |
//! | DELE sent, QUIT not answered     | record; message on server (RFC 1939 §6: no UPDATE) | sends DELE again |
//! | QUIT answered                    | record; UIDL gone from server    | drops the record               |
//!
//! Format: text, one record per line, append-only; a torn last line (crash
//! mid-append) is ignored. `S <unix-time> <F|H> <uidl>` says the message (F)
//! or its header only (H) is stored; `P <uidl> <offset> <len> <sha256> <time>` says
//! an mbox append of that size and hash was about to start at that offset
//! (see `dest::mbox`). The file is rewritten (tmp, fsync, rename, fsync dir)
//! when records for UIDLs no longer on the server are dropped.
//!
//! A `flock` on a sibling `.lock` file keeps two fetchers off one account;
//! the kernel drops it when the process dies, so SIGKILL leaves no stale lock.
//!
//! The state directory is created 0700 and the journal 0600: they name the
//! user's accounts and every message id. A rewrite's temporary file is
//! named after the journal (`.STEM.journal-tmp.*`), so the next holder of
//! the account's lock knows any such file is a killed run's and removes it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Journal failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Another fetch of the same account is running.
    #[error("another pobox fetch is already running for {0}")]
    Busy(String),
    /// Reading or writing the journal failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// What the journal knows about one UIDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When it was first stored (seconds since the epoch).
    pub stored_at: u64,
    /// True when only the header was stored (oversize, `TOP n 0`).
    pub headers_only: bool,
}

/// An mbox append that was announced but not confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAppend {
    /// Offset in the mbox where the append started.
    pub offset: u64,
    /// Length of the bytes appended.
    pub len: u64,
    /// SHA-256 of those bytes.
    pub sha256: [u8; 32],
    /// The time written in the `From ` line, so a retry renders the same
    /// bytes and can recognise its own earlier append.
    pub ts: u64,
}

/// An open, locked journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// `None` for a read-only [`Journal::peek`].
    file: Option<File>,
    _lock: Option<File>,
    entries: HashMap<String, Entry>,
    pending: HashMap<String, PendingAppend>,
    lines: usize,
}

impl Journal {
    /// Opens (creating if needed) and locks the journal for `identity` in
    /// `state_dir`.
    ///
    /// # Errors
    /// [`JournalError::Busy`] if another process holds the lock;
    /// [`JournalError::Io`] otherwise.
    pub fn open(state_dir: &Path, identity: &str) -> Result<Journal, JournalError> {
        let (stem, path) = Journal::path_for(state_dir, identity);
        let err = |source| JournalError::Io { path: path.clone(), source };
        create_dir_durably(state_dir).map_err(err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(state_dir.join(format!("{stem}.lock")))
            .map_err(err)?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(JournalError::Busy(identity.to_string())),
            Err(e) => return Err(err(e.into())),
        }
        remove_dead_rewrites(state_dir, &stem);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        // Journals written by earlier versions were 0644.
        if file.metadata().is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(err)?;
        // A crash mid-append leaves a line without its LF: cut it off so the
        // next record starts on a line of its own.
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        if complete < text.len() {
            file.set_len(complete as u64).map_err(err)?;
            file.sync_all().map_err(err)?;
            text.truncate(complete);
        }
        file.seek(SeekFrom::End(0)).map_err(err)?;
        let mut journal = Journal {
            path: path.clone(),
            file: Some(file),
            _lock: Some(lock),
            entries: HashMap::new(),
            pending: HashMap::new(),
            lines: 0,
        };
        if text.is_empty() {
            journal.append(&format!("# pobox fetch journal for {identity}\n"))?;
        }
        journal.load(&text);
        Ok(journal)
    }

    /// Reads the journal without locking or creating anything, for
    /// `--dry-run`. Recording into it fails.
    ///
    /// # Errors
    /// [`JournalError::Io`] if it exists but cannot be read.
    pub fn peek(state_dir: &Path, identity: &str) -> Result<Journal, JournalError> {
        let (_, path) = Journal::path_for(state_dir, identity);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(JournalError::Io { path, source }),
        };
        let mut journal =
            Journal { path, file: None, _lock: None, entries: HashMap::new(), pending: HashMap::new(), lines: 0 };
        journal.load(&text);
        Ok(journal)
    }

    fn path_for(state_dir: &Path, identity: &str) -> (String, PathBuf) {
        let stem = hex::encode(&Sha256::digest(identity.as_bytes())[..8]);
        let path = state_dir.join(format!("{stem}.journal"));
        (stem, path)
    }

    fn load(&mut self, text: &[u8]) {
        for line in text.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            self.lines += 1;
            self.apply(&String::from_utf8_lossy(line));
        }
    }

    fn apply(&mut self, line: &str) {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["S", ts, kind @ ("F" | "H"), uidl] => {
                let Ok(ts) = ts.parse() else { return };
                self.pending.remove(*uidl);
                let entry = self.entries.entry((*uidl).to_string()).or_insert(Entry { stored_at: ts, headers_only: true });
                // A full copy supersedes a header-only one; keep the first time.
                entry.headers_only &= *kind == "H";
            }
            ["P", uidl, off, len, sha, ts] => {
                let (Ok(offset), Ok(len), Ok(ts)) = (off.parse(), len.parse(), ts.parse()) else { return };
                let mut sha256 = [0u8; 32];
                if hex::decode_to_slice(sha, &mut sha256).is_ok() {
                    self.pending.insert((*uidl).to_string(), PendingAppend { offset, len, sha256, ts });
                }
            }
            // Comments, blank lines, and records from a future version.
            _ => {}
        }
    }

    /// The record for `uidl`, if stored.
    pub fn get(&self, uidl: &str) -> Option<&Entry> {
        self.entries.get(uidl)
    }

    /// An announced but unconfirmed mbox append for `uidl`.
    pub fn pending(&self, uidl: &str) -> Option<&PendingAppend> {
        self.pending.get(uidl)
    }

    /// Number of UIDLs recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Durably records that `uidl` is stored. Returns after `fsync`.
    ///
    /// # Errors
    /// [`JournalError::Io`].
    pub fn record_stored(&mut self, uidl: &str, now: u64, headers_only: bool) -> Result<(), JournalError> {
        debug_assert!(!uidl.contains([' ', '\n']));
        let kind = if headers_only { "H" } else { "F" };
        self.append(&format!("S {now} {kind} {uidl}\n"))?;
        self.apply(&format!("S {now} {kind} {uidl}"));
        Ok(())
    }

    /// Durably records a batch of stored messages (`(uidl, headers_only)`)
    /// with one write and one `fsync` (group commit). Call it only once
    /// every message of the batch is durable in the destination. A crash
    /// mid-write leaves some whole records and a torn tail, which
    /// [`open`](Self::open) cuts off; the records that did land are true.
    ///
    /// # Errors
    /// [`JournalError::Io`].
    pub fn record_stored_batch(&mut self, stored: &[(&str, bool)], now: u64) -> Result<(), JournalError> {
        if stored.is_empty() {
            return Ok(());
        }
        let mut text = String::with_capacity(stored.len() * 48);
        for (uidl, headers_only) in stored {
            debug_assert!(!uidl.contains([' ', '\n']));
            let kind = if *headers_only { "H" } else { "F" };
            text.push_str(&format!("S {now} {kind} {uidl}\n"));
        }
        self.append(&text)?;
        self.lines += stored.len() - 1;
        for line in text.lines() {
            self.apply(line);
        }
        Ok(())
    }

    /// Durably announces an mbox append before it starts.
    ///
    /// # Errors
    /// [`JournalError::Io`].
    pub fn record_pending(&mut self, uidl: &str, p: &PendingAppend) -> Result<(), JournalError> {
        let line = format!("P {uidl} {} {} {} {}", p.offset, p.len, hex::encode(p.sha256), p.ts);
        self.append(&format!("{line}\n"))?;
        self.apply(&line);
        Ok(())
    }

    fn append(&mut self, line: &str) -> Result<(), JournalError> {
        let err = |source| JournalError::Io { path: self.path.clone(), source };
        let file = self.file.as_mut().ok_or_else(|| err(io::Error::other("journal opened read-only")))?;
        // One write call per record: with O_APPEND it lands whole or, on a
        // crash, as a torn tail that open() cuts off.
        file.write_all(line.as_bytes()).map_err(err)?;
        file.sync_data().map_err(err)?;
        self.lines += 1;
        Ok(())
    }

    /// Drops records whose UIDL the server no longer lists (the message was
    /// deleted, by us or by someone else; RFC 1939 §7 says a UIDL is never
    /// reused), then rewrites the file if that made it much shorter.
    ///
    /// Only call this with a complete UIDL listing of the maildrop.
    ///
    /// # Errors
    /// [`JournalError::Io`].
    pub fn retain(&mut self, on_server: &dyn Fn(&str) -> bool) -> Result<usize, JournalError> {
        if self.file.is_none() {
            return Ok(0);
        }
        let before = self.entries.len();
        self.entries.retain(|k, _| on_server(k));
        self.pending.retain(|k, _| on_server(k));
        let dropped = before - self.entries.len();
        if dropped > 0 || self.lines > 2 * (self.entries.len() + self.pending.len()) + 64 {
            self.rewrite()?;
        }
        Ok(dropped)
    }

    fn rewrite(&mut self) -> Result<(), JournalError> {
        let err = |source| JournalError::Io { path: self.path.clone(), source };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut text = String::from("# pobox fetch journal (compacted)\n");
        let mut keys: Vec<_> = self.entries.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (k, e) in keys {
            text.push_str(&format!("S {} {} {k}\n", e.stored_at, if e.headers_only { "H" } else { "F" }));
        }
        for (k, p) in &self.pending {
            text.push_str(&format!("P {k} {} {} {} {}\n", p.offset, p.len, hex::encode(p.sha256), p.ts));
        }
        let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        // 0600 (tempfile's default), named so a killed run's leftover is
        // recognised by the next run (see `remove_dead_rewrites`).
        let mut tmp =
            tempfile::Builder::new().prefix(&format!(".{stem}.journal-tmp.")).tempfile_in(dir).map_err(err)?;
        tmp.write_all(text.as_bytes()).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&self.path).map_err(|e| err(e.error))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        self.file = Some(OpenOptions::new().append(true).open(&self.path).map_err(err)?);
        self.lines = text.lines().count();
        Ok(())
    }
}

/// Removes the temporary files of a rewrite of this journal that a killed
/// run left. Called with the account's lock held, so no live run of this
/// account can be writing one.
fn remove_dead_rewrites(state_dir: &Path, stem: &str) {
    let prefix = format!(".{stem}.journal-tmp.");
    let Ok(entries) = std::fs::read_dir(state_dir) else { return };
    for e in entries.flatten() {
        if e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Creates the state directory (and missing parents) 0700. An existing
/// directory keeps its mode: it may be one the user chose to share.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    if let Some(parent) = dir.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path;
        {
            let mut j = Journal::open(dir.path(), "u@h:995").unwrap();
            j.record_stored("a1", 100, false).unwrap();
            j.record_stored("b2", 200, true).unwrap();
            j.record_stored("b2", 300, false).unwrap();
            path = j.path.clone();
        }
        // Simulate a crash in the middle of an append.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"S 400 F c3").unwrap();
        let mut j = Journal::open(dir.path(), "u@h:995").unwrap();
        assert_eq!(j.get("a1"), Some(&Entry { stored_at: 100, headers_only: false }));
        assert_eq!(j.get("b2"), Some(&Entry { stored_at: 200, headers_only: false }));
        assert_eq!(j.get("c3"), None, "a torn record must not count");
        j.record_stored("d4", 500, false).unwrap();
        drop(j);
        let j = Journal::open(dir.path(), "u@h:995").unwrap();
        assert!(j.get("d4").is_some(), "the record after a torn tail must parse");
        assert_eq!(j.len(), 3);
    }

    #[test]
    fn second_opener_is_refused_until_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "x@y:1").unwrap();
        assert!(matches!(Journal::open(dir.path(), "x@y:1"), Err(JournalError::Busy(_))));
        // A different account is independent.
        Journal::open(dir.path(), "other@y:1").unwrap();
        drop(j);
        Journal::open(dir.path(), "x@y:1").unwrap();
    }

    #[test]
    fn retain_drops_vanished_uidls_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), "u@h:1").unwrap();
        for i in 0..10 {
            j.record_stored(&format!("u{i}"), i, false).unwrap();
        }
        let p = PendingAppend { offset: 5, len: 7, sha256: [9; 32], ts: 11 };
        j.record_pending("u3", &p).unwrap();
        j.record_pending("gone", &p).unwrap();
        assert_eq!(j.retain(&|k| k.starts_with('u') && k < "u5").unwrap(), 5);
        drop(j);
        let j = Journal::open(dir.path(), "u@h:1").unwrap();
        assert_eq!(j.len(), 5);
        assert!(j.get("u4").is_some() && j.get("u5").is_none());
        assert_eq!(j.pending("u3"), Some(&p));
        assert_eq!(j.pending("gone"), None);
        let text = std::fs::read_to_string(&j.path).unwrap();
        assert_eq!(text.lines().count(), 7, "{text}");
    }

    #[test]
    fn batch_records_land_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), "u@h:1").unwrap();
        j.record_pending("m2", &PendingAppend { offset: 0, len: 1, sha256: [0; 32], ts: 0 }).unwrap();
        j.record_stored_batch(&[("m1", false), ("m2", false), ("m3", true)], 42).unwrap();
        j.record_stored_batch(&[], 43).unwrap();
        assert_eq!(j.len(), 3);
        assert_eq!(j.pending("m2"), None, "a stored record clears the announced append");
        drop(j);
        let j = Journal::open(dir.path(), "u@h:1").unwrap();
        assert_eq!(j.get("m1"), Some(&Entry { stored_at: 42, headers_only: false }));
        assert_eq!(j.get("m3"), Some(&Entry { stored_at: 42, headers_only: true }));
        assert_eq!(j.pending("m2"), None);
        assert_eq!(j.lines, 5, "header, P, three S");
    }

    #[test]
    fn state_dir_and_journal_are_private_and_dead_rewrites_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        let j = Journal::open(&state, "u@h").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&j.path), 0o600);
        let (stem, _) = Journal::path_for(&state, "u@h");
        assert_eq!(mode(&state.join(format!("{stem}.lock"))), 0o600);
        drop(j);
        let leftover = state.join(format!(".{stem}.journal-tmp.abc123"));
        let other = state.join(".0123456789abcdef.journal-tmp.abc123");
        std::fs::write(&leftover, "S 1 F x\n").unwrap();
        std::fs::write(&other, "S 1 F x\n").unwrap();
        let (_, path) = Journal::path_for(&state, "u@h");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _j = Journal::open(&state, "u@h").unwrap();
        assert!(!leftover.exists(), "a killed rewrite's temp file must go");
        assert!(other.exists(), "another account's is not ours to remove");
        assert_eq!(mode(&path), 0o600, "an old 0644 journal is tightened");
    }

    #[test]
    fn stored_record_clears_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), "u@h:1").unwrap();
        j.record_pending("m", &PendingAppend { offset: 0, len: 1, sha256: [0; 32], ts: 0 }).unwrap();
        j.record_stored("m", 1, false).unwrap();
        drop(j);
        assert_eq!(Journal::open(dir.path(), "u@h:1").unwrap().pending("m"), None);
    }
}
