//! Maildir destination: a thin layer over `pobox_store::Maildir`, the
//! project's one Maildir writer (tmp, fsync, link into `new/` without
//! overwriting). The fsync of `new/` is left to [`MaildirDest::sync`], so a
//! batch of messages shares one (group commit).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use pobox_store::{BaseIndex, Maildir, NamedDelivery};

use super::{Delivery, DestError};
use crate::spool::Spool;

/// A Maildir opened for delivery.
#[derive(Debug)]
pub struct MaildirDest {
    maildir: Maildir,
    /// Base names already present, read once: checking the directories
    /// for every message made a fetch into a 30,000-message Maildir 30x
    /// slower.
    index: Mutex<BaseIndex>,
}

impl MaildirDest {
    /// Opens the Maildir, creating `tmp/`, `new/`, `cur/` if needed.
    ///
    /// # Errors
    /// [`DestError::Maildir`].
    pub fn open(path: &Path) -> Result<MaildirDest, DestError> {
        let maildir = Maildir::open_or_create(path)?;
        remove_dead_tmp(&path.join("tmp"));
        let index = Mutex::new(maildir.base_index()?);
        Ok(MaildirDest { maildir, index })
    }

    /// Stores the message under `base` unless a file with that base name is
    /// already in `new/` or `cur/` (a copy stored before a crash). Not
    /// durable until [`sync`](Self::sync) returns.
    ///
    /// # Errors
    /// [`DestError::Maildir`] or [`DestError::Spool`].
    pub fn deliver(&self, base: &str, spool: &mut Spool) -> Result<Delivery, DestError> {
        let mut reader = spool.reader().map_err(DestError::Spool)?;
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        match self.maildir.deliver_named_indexed(&mut index, base, &mut reader, None)? {
            NamedDelivery::Stored(_) => Ok(Delivery::Stored),
            NamedDelivery::AlreadyPresent(_) => Ok(Delivery::AlreadyPresent),
        }
    }

    /// Makes every delivery so far durable: one fsync of `new/` (and `cur/`).
    ///
    /// # Errors
    /// [`DestError::Maildir`].
    pub fn sync(&self) -> Result<(), DestError> {
        Ok(self.maildir.sync_new()?)
    }
}

/// A `tmp/` file untouched for this long, whose writer is gone, is a
/// killed delivery's: a live writer renames its file within moments of
/// its last write (the file is written from a complete local spool).
const DEAD_TMP_AGE: Duration = Duration::from_secs(60);

/// Removes the `tmp/` files that pobox writers killed on this host left
/// behind. The store's writer names them
/// `<secs>.M<usec>P<pid>Q<counter>R<random>.<host>`; a file is removed only
/// when it has that shape, names this host, its pid no longer exists, and
/// it has not been written for [`DEAD_TMP_AGE`]. Such a file can never be
/// renamed into `new/` by anyone, so nothing is lost; everything else in
/// `tmp/` (other programs' files, live writers') is left to the 36-hour
/// convention of maildir(5). Best effort: a messy `tmp/` must not stop a
/// fetch.
fn remove_dead_tmp(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    let host = this_host();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| pobox_writer_pid(n, &host)) else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let gone = rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| matches!(rustix::process::test_kill_process(p), Err(rustix::io::Errno::SRCH)));
        let old = e
            .metadata()
            .is_ok_and(|m| m.is_file() && m.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a > DEAD_TMP_AGE));
        if gone && old {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!(path = %e.path().display(), "removed a killed delivery's tmp file"),
                Err(err) => tracing::debug!(path = %e.path().display(), %err, "cannot remove tmp file"),
            }
        }
    }
}

/// The writer's pid if `name` is a pobox store tmp name for `host`.
fn pobox_writer_pid(name: &str, host: &str) -> Option<i32> {
    let (secs, rest) = name.split_once('.')?;
    let (unique, file_host) = rest.split_once('.')?;
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || file_host != host {
        return None;
    }
    let rest = unique.strip_prefix('M')?;
    let (usec, rest) = rest.split_once('P')?;
    let (pid, rest) = rest.split_once('Q')?;
    let (counter, random) = rest.split_once('R')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(usec) || !digits(counter) || random.len() != 8 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    pid.parse().ok()
}

/// This host's name as the store writes it into file names (maildir(5):
/// `/` and `:` escaped as octal, as Dovecot does; cut at 32 bytes).
fn this_host() -> String {
    let uname = rustix::system::uname();
    let raw = uname.nodename().to_bytes();
    if raw.is_empty() {
        return "localhost".into();
    }
    let mut out = String::new();
    for &b in raw {
        let piece = match b {
            b'/' | b':' | b',' | b'\\' => format!("\\{b:03o}"),
            0x21..=0x7e => char::from(b).to_string(),
            _ => format!("\\{b:03o}"),
        };
        if out.len() + piece.len() > 32 {
            break;
        }
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn killed_writers_tmp_files_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("Mail");
        MaildirDest::open(&md).unwrap();
        let host = this_host();
        let tmp = md.join("tmp");
        // 4194305 is above Linux's pid_max default: never alive.
        let dead_old = tmp.join(format!("1700000000.M1P4194305Q7R0000abcd.{host}"));
        let dead_new = tmp.join(format!("1700000000.M2P4194305Q8R0000abce.{host}"));
        let live_old = tmp.join(format!("1700000000.M3P{}Q9R0000abcf.{host}", std::process::id()));
        let other_host = tmp.join("1700000000.M4P4194305Q1R0000abcd.elsewhere");
        let dovecot = tmp.join(format!("1700000000.M5P4194305.{host}"));
        for f in [&dead_old, &dead_new, &live_old, &other_host, &dovecot] {
            std::fs::write(f, "partial").unwrap();
        }
        for f in [&dead_old, &live_old, &other_host, &dovecot] {
            let h = std::fs::File::options().write(true).open(f).unwrap();
            h.set_modified(std::time::SystemTime::now() - Duration::from_secs(120)).unwrap();
        }
        MaildirDest::open(&md).unwrap();
        assert!(!dead_old.exists(), "a dead pobox writer's old tmp file must go");
        for f in [&dead_new, &live_old, &other_host, &dovecot] {
            assert!(f.exists(), "{} must stay", f.display());
        }
    }
}
