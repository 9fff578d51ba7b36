//! The RFC 1939 §8 maildrop lock: "the POP3 server then acquires an
//! exclusive-access lock on the maildrop".
//!
//! `flock(LOCK_EX | LOCK_NB)` on `<maildir>/pobox.lock`. Why `flock`:
//!
//! * it belongs to the open file description, so two [`MaildropLock`]s in
//!   one process conflict just like two processes do (POSIX `fcntl` locks
//!   are per process and would let a second session in the same daemon
//!   through);
//! * the kernel drops it when the descriptor closes, including when the
//!   process dies, so a crash never leaves a maildrop locked (unlike a
//!   dot-lock file);
//! * admin tools and a second daemon on the same host see it too
//!   (`rust-deps.md` §6.3, single node).
//!
//! It does not hold across NFS clients; a clustered backend uses leases.
//! Deliveries do not take this lock: Maildir needs no lock for writers,
//! and mail must keep arriving while a session is open.

use std::fs::File;
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::io_error;
use crate::StoreError;

/// The lock file's name inside the Maildir root. Not under `new/`/`cur/`
/// so no Maildir reader mistakes it for a message.
pub(super) const LOCK_FILE: &str = "pobox.lock";

/// A held maildrop lock. Dropping it closes the descriptor, which releases
/// the lock at once.
#[derive(Debug)]
pub(super) struct MaildropLock {
    _file: File,
}

impl MaildropLock {
    /// Takes the lock without waiting.
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`] if another open description holds it;
    /// [`StoreError::Io`] if the lock file cannot be opened.
    pub(super) fn acquire(maildir: &Path) -> Result<Self, StoreError> {
        let path = maildir.join(LOCK_FILE);
        let fd = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io_error(format_args!("opening {}", path.display()), e.into()))?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(MaildropLock {
                _file: File::from(fd),
            }),
            // EWOULDBLOCK == EAGAIN on Linux.
            Err(Errno::WOULDBLOCK) => Err(StoreError::InUse),
            Err(e) => Err(io_error(format_args!("flock {}", path.display()), e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_in_same_process_conflicts_until_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = MaildropLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            MaildropLock::acquire(dir.path()),
            Err(StoreError::InUse)
        ));
        drop(first);
        MaildropLock::acquire(dir.path()).expect("released on drop");
    }
}
