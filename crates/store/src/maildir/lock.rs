//! The RFC 1939 §8 maildrop lock: "the POP3 server then acquires an
//! exclusive-access lock on the maildrop".
//!
//! One lock file serves every maildrop of a mail location: each maildrop
//! owns one byte of it (at an offset derived from the maildrop directory's
//! device and inode), locked with an open-file-description byte-range lock
//! (`fcntl(F_OFD_SETLK)`), and an in-process table says which maildrops
//! this process holds. Why this shape:
//!
//! * **one descriptor for all sessions.** The earlier design (`flock` on a
//!   `pobox.lock` inside each Maildir) held a second descriptor per
//!   logged-in session beside its socket, so a server under a hard limit of
//!   20,000 open files could not hold 10,000 sessions;
//! * OFD locks conflict between open file descriptions, so a second daemon,
//!   an admin command (`pobox mailbox expire|restore|purge`) or a second
//!   [`LockTable`] in the same process sees the lock; within one table the
//!   in-process set does the excluding (locks of one description never
//!   conflict with each other);
//! * the kernel drops the locks when the descriptor closes, including when
//!   the process dies, so a crash never leaves a maildrop locked (unlike a
//!   dot-lock file);
//! * keyed by (device, inode), not by path: two spellings of one directory
//!   (a symlink, `..`) are one maildrop.
//!
//! Two maildrops whose keys hash to the same byte would only be serialised
//! against *other processes* (the in-process table keys by (device, inode)
//! and counts holders per byte); with 2^62 offsets that is not a practical
//! concern. It does not hold across NFS clients; a clustered backend uses
//! leases. Deliveries do not take this lock: Maildir needs no lock for
//! writers, and mail must keep arriving while a session is open.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;
use rustix::fs::{Mode, OFlags};

use super::io_error;
use crate::StoreError;

/// The lock file's name, in the directory that holds the maildrops (the
/// parent of the mail location's `{user}` component). A dot-file, so no
/// tool takes it for a user.
pub(super) const LOCK_FILE: &str = ".pobox-maildrops.lock";

/// The maildrop locks of one process over one lock file.
#[derive(Debug)]
pub(super) struct LockTable {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Signalled whenever a lock of this table is released: a session's
    /// open waits on it while maintenance holds the maildrop.
    released: Condvar,
}

/// Who holds a maildrop through this table. A POP3 session's open answers
/// `[IN-USE]` at once for another session (RFC 1939 §8) but waits, briefly
/// and without polling, for maintenance (the expiry timer, an admin command
/// run inside the server), which holds a maildrop for a moment only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holder {
    /// A POP3 session, from login to UPDATE.
    Session,
    /// Expiry, restore or purge: short, never waits for a client.
    Maintenance,
}

/// How long a session's open waits for maintenance to let go before it
/// answers `[IN-USE]` after all: the bound the server's old retry loop had.
const MAINTENANCE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Inner {
    /// Opened on first use (or by [`LockTable::open`]) and kept open: every
    /// lock of this table lives on this one description.
    file: Option<File>,
    /// Maildrops (device, inode) locked through this table, and by whom.
    held: HashMap<(u64, u64), Holder>,
    /// Holders per locked byte (more than one only on a hash collision).
    bytes: HashMap<i64, u32>,
}

impl LockTable {
    /// A table over the lock file at `path`; nothing is opened yet.
    #[must_use]
    pub(super) fn new(path: PathBuf) -> Self {
        LockTable { path, inner: Mutex::new(Inner::default()), released: Condvar::new() }
    }

    /// The lock file.
    #[must_use]
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating) the lock file now, if its directory exists. The
    /// daemon calls this before it drops root privileges, so the file may
    /// live in a directory only root can write. A missing directory is left
    /// alone (creating it as root would leave the daemon's user unable to
    /// create maildrops in it): the first lock opens the file, after the
    /// first maildrop (below that directory) has been created.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] if the file cannot be opened or created.
    pub(super) fn open(&self) -> Result<(), StoreError> {
        if self.path.parent().is_some_and(|dir| !dir.is_dir()) {
            return Ok(());
        }
        let mut inner = self.lock_inner();
        self.ensure_open(&mut inner).map(|_| ())
    }

    /// [`acquire`](LockTable::acquire) by path, for tests.
    #[cfg(test)]
    fn acquire_path(self: &Arc<Self>, maildir: &Path) -> Result<MaildropLock, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(maildir)
            .map_err(|e| io_error(format_args!("stat {}", maildir.display()), e))?;
        self.acquire((meta.dev(), meta.ino()), maildir, Holder::Session)
    }

    /// Takes the lock on the maildrop directory with device and inode
    /// `key` (from the handle the Maildir was opened through, so the lock
    /// is on the directory actually used), at `maildir` (for messages),
    /// without waiting, except that a [`Holder::Session`] waits up to
    /// [`MAINTENANCE_WAIT`] for maintenance in this process to finish
    /// (woken by the release, no polling).
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`] if this process or another one holds it;
    /// [`StoreError::Io`] if the lock file cannot be used.
    pub(super) fn acquire(
        self: &Arc<Self>,
        key: (u64, u64),
        maildir: &Path,
        who: Holder,
    ) -> Result<MaildropLock, StoreError> {
        let byte = byte_for(key);
        let mut inner = self.lock_inner();
        let deadline = Instant::now() + MAINTENANCE_WAIT;
        while who == Holder::Session && inner.held.get(&key) == Some(&Holder::Maintenance) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::InUse);
            }
            inner = self.released.wait_timeout(inner, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        if inner.held.contains_key(&key) {
            return Err(StoreError::InUse);
        }
        if !inner.bytes.contains_key(&byte) {
            let file = self.ensure_open(&mut inner)?;
            match fcntl(file, FcntlArg::F_OFD_SETLK(&range(libc::F_WRLCK, byte))) {
                Ok(_) => {}
                // Another description holds the byte: another process (or
                // another table) has this maildrop.
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
                    return Err(StoreError::InUse);
                }
                Err(e) => {
                    return Err(io_error(
                        format_args!("locking {} in {}", maildir.display(), self.path.display()),
                        std::io::Error::from_raw_os_error(e as i32),
                    ));
                }
            }
        }
        *inner.bytes.entry(byte).or_insert(0) += 1;
        inner.held.insert(key, who);
        Ok(MaildropLock { table: Arc::clone(self), key, byte })
    }

    fn release(&self, key: (u64, u64), byte: i64) {
        let mut inner = self.lock_inner();
        inner.held.remove(&key);
        let last = match inner.bytes.get_mut(&byte) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => true,
            None => false,
        };
        if last {
            inner.bytes.remove(&byte);
            if let Some(file) = &inner.file
                && let Err(e) = fcntl(file, FcntlArg::F_OFD_SETLK(&range(libc::F_UNLCK, byte)))
            {
                // Cannot happen for a byte we hold; if it did, the byte
                // stays locked until the process ends (a false [IN-USE] for
                // other processes, never a second session).
                tracing::error!(lock_file = %self.path.display(), error = %e, "cannot unlock maildrop");
            }
        }
        drop(inner);
        self.released.notify_all();
    }

    fn ensure_open<'a>(&self, inner: &'a mut Inner) -> Result<&'a File, StoreError> {
        if inner.file.is_none() {
            let fd = rustix::fs::open(
                &self.path,
                OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| io_error(format_args!("opening lock file {}", self.path.display()), e.into()))?;
            inner.file = Some(File::from(fd));
        }
        Ok(inner.file.as_ref().expect("opened above"))
    }

    /// A poisoned mutex only means a panic elsewhere while it was held; the
    /// sets are updated in single steps, so the data is still consistent.
    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A held maildrop lock; dropping it releases the lock at once.
#[derive(Debug)]
pub(super) struct MaildropLock {
    table: Arc<LockTable>,
    key: (u64, u64),
    byte: i64,
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        self.table.release(self.key, self.byte);
    }
}

/// The byte of the lock file that stands for maildrop `key`: FNV-1a over
/// device and inode, kept within the positive `off_t` range. Fixed (not
/// the std hasher, whose output may change between releases) because
/// every process and every version must agree on it.
fn byte_for((dev, ino): (u64, u64)) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dev.to_le_bytes().into_iter().chain(ino.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 2) as i64
}

fn range(kind: libc::c_int, byte: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        // Must be 0 for OFD locks (fcntl(2)).
        l_pid: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dir: &Path) -> Arc<LockTable> {
        Arc::new(LockTable::new(dir.join(LOCK_FILE)))
    }

    #[test]
    fn second_lock_in_same_table_conflicts_until_drop() {
        let dir = tempfile::tempdir().unwrap();
        let drop_dir = dir.path().join("u");
        std::fs::create_dir(&drop_dir).unwrap();
        let t = table(dir.path());
        let first = t.acquire_path(&drop_dir).unwrap();
        assert!(matches!(t.acquire_path(&drop_dir), Err(StoreError::InUse)));
        drop(first);
        t.acquire_path(&drop_dir).expect("released on drop");
    }

    #[test]
    fn a_session_waits_for_maintenance_but_not_for_a_session() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let drop_dir = dir.path().join("u");
        std::fs::create_dir(&drop_dir).unwrap();
        let meta = std::fs::metadata(&drop_dir).unwrap();
        let key = (meta.dev(), meta.ino());
        let t = table(dir.path());
        // Maintenance that ends: the session's open gets the lock, woken
        // by the release (whether it was already waiting or not).
        let maintenance = t.acquire(key, &drop_dir, Holder::Maintenance).unwrap();
        let waiter = {
            let (t, d) = (Arc::clone(&t), drop_dir.clone());
            std::thread::spawn(move || t.acquire(key, &d, Holder::Session).map(drop))
        };
        drop(maintenance);
        waiter.join().unwrap().expect("maintenance finished, so the session opens");
        // Maintenance never waits, and a session never waits for a session.
        let session = t.acquire(key, &drop_dir, Holder::Session).unwrap();
        assert!(matches!(t.acquire(key, &drop_dir, Holder::Maintenance), Err(StoreError::InUse)));
        assert!(matches!(t.acquire(key, &drop_dir, Holder::Session), Err(StoreError::InUse)));
        drop(session);
        // Maintenance that does not end within the bound: [IN-USE] after all.
        let _stuck = t.acquire(key, &drop_dir, Holder::Maintenance).unwrap();
        assert!(matches!(t.acquire(key, &drop_dir, Holder::Session), Err(StoreError::InUse)));
    }

    #[test]
    fn two_tables_on_one_file_conflict_like_two_processes() {
        let dir = tempfile::tempdir().unwrap();
        let drop_dir = dir.path().join("u");
        std::fs::create_dir(&drop_dir).unwrap();
        let (a, b) = (table(dir.path()), table(dir.path()));
        let held = a.acquire_path(&drop_dir).unwrap();
        assert!(matches!(b.acquire_path(&drop_dir), Err(StoreError::InUse)));
        drop(held);
        let _again = b.acquire_path(&drop_dir).expect("the kernel lock was released");
        assert!(matches!(a.acquire_path(&drop_dir), Err(StoreError::InUse)));
    }

    #[test]
    fn different_maildrops_and_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let (u, v) = (dir.path().join("u"), dir.path().join("v"));
        std::fs::create_dir(&u).unwrap();
        std::fs::create_dir(&v).unwrap();
        std::os::unix::fs::symlink(&u, dir.path().join("u-link")).unwrap();
        let t = table(dir.path());
        let _u = t.acquire_path(&u).unwrap();
        let _v = t.acquire_path(&v).expect("another maildrop is independent");
        assert!(
            matches!(t.acquire_path(&dir.path().join("u-link")), Err(StoreError::InUse)),
            "a symlink to a locked maildrop is the same maildrop"
        );
    }

    #[test]
    fn many_maildrops_one_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        let mut held = Vec::new();
        for i in 0..200 {
            let d = dir.path().join(format!("u{i}"));
            std::fs::create_dir(&d).unwrap();
            held.push(t.acquire_path(&d).unwrap());
        }
        let fds_after = std::fs::read_dir("/proc/self/fd").unwrap().count();
        // Other tests run in parallel threads and may hold a few files.
        assert!(fds_after <= fds_before + 8, "{fds_before} -> {fds_after} descriptors for 200 locks");
        drop(held);
    }

    #[test]
    fn byte_offsets_are_stable_and_in_range() {
        // Fixed values: every version of pobox must lock the same byte.
        // (Computed independently: FNV-1a 64 of the 16 little-endian bytes, >> 2.)
        assert_eq!(byte_for((2049, 123_456)), 762_636_801_048_916_886);
        for key in [(0, 0), (u64::MAX, u64::MAX), (2049, 123_456)] {
            assert!(byte_for(key) >= 0);
        }
        assert_ne!(byte_for((2049, 1)), byte_for((2049, 2)));
    }
}
