//! One maildrop opened for a POP3 session: the snapshot, reading
//! messages, and UPDATE (retrievals recorded, EXPIRE 0, removals).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Maildir, MaildirKey, Sub, commit, dirs, io_error, lock, name, retention, scan};
use crate::retention::Policy;
use crate::{CommitReport, ExpireReport, Mailbox, MessageInfo, StoreError};

/// The root handle a session keeps (see [`MaildirMailbox::root`]).
#[derive(Debug)]
pub(super) struct SessionRoot {
    pub(super) path: PathBuf,
    pub(super) fd: std::os::fd::OwnedFd,
    pub(super) owner: u32,
}

impl SessionRoot {
    /// The whole Maildir again, its parts opened afresh from the root's
    /// handle with the same rules as at login (for UPDATE and the log).
    fn reopen(&self) -> Result<Maildir, StoreError> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| io_error(format_args!("opening {}", self.path.display()), e))?;
        match dirs::open_parts(fd, &self.path, self.owner, false)? {
            Some(dirs) => Ok(Maildir { root: self.path.clone(), dirs: Arc::new(dirs) }),
            None => Err(io_error(
                format_args!("reopening {}", self.path.display()),
                io::ErrorKind::NotFound.into(),
            )),
        }
    }
}

/// A maildrop opened by [`MaildirStore::open`]. Holds the lock until it is
/// committed or dropped.
pub(super) struct MaildirMailbox {
    pub(super) user: String,
    /// Only the root's handle is kept for the session: a handle per
    /// `tmp/`, `new/` and `cur/` for every logged-in session would triple
    /// the descriptors a server with 10,000 sessions needs (the budget in
    /// `pobox serve` is three per session: socket, message file, and this).
    /// Messages are opened below it (`dirs::open_file_below`), and UPDATE
    /// reopens the parts from it.
    pub(super) root: SessionRoot,
    /// Possibly shared with the listing cache: changed only through
    /// `Arc::make_mut`.
    pub(super) messages: Arc<Vec<MessageInfo>>,
    pub(super) policy: Policy,
    pub(super) expired: ExpireReport,
    pub(super) lock: lock::MaildropLock,
}

impl Mailbox for MaildirMailbox {
    fn user(&self) -> &str {
        &self.user
    }

    fn messages(&self) -> &[MessageInfo] {
        &self.messages
    }

    fn read_if_cached(&self, index: usize, max: u64) -> Option<Vec<u8>> {
        let (sub, name) = self.messages.get(index)?.key.as_maildir();
        read_if_cached(self.root.fd.as_fd(), sub, name, max)
    }

    fn open_message(&self, index: usize) -> Result<Box<dyn io::Read + Send>, StoreError> {
        let info = self
            .messages
            .get(index)
            .ok_or(StoreError::NoSuchMessage { index })?;
        let (sub, name) = info.key.as_maildir();
        let root = self.root.fd.as_fd();
        match dirs::open_file_below(root, sub, name, false) {
            Ok(f) => return Ok(Box::new(File::from(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format_args!("opening {}", info.key), e)),
        }
        // Another program (a MUA, another server) may have moved the file
        // new/ -> cur/ or changed its flags; the base name never changes
        // (maildir(5)), so look for it in cur/.
        let base = name::base_of(name);
        let cur_path = || self.root.path.join(Sub::Cur.as_str());
        let found = dirs::open_sub(root, Sub::Cur)
            .and_then(|cur| scan::find_by_base(cur.as_fd(), base))
            .map_err(|e| io_error(format_args!("reading {}", cur_path().display()), e))?;
        let Some(current) = found else {
            return Err(StoreError::Vanished(info.key.to_string()));
        };
        match dirs::open_file_below(root, Sub::Cur, &current, false) {
            Ok(f) => Ok(Box::new(File::from(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::Vanished(info.key.to_string()))
            }
            Err(e) => Err(io_error(format_args!("opening {}", info.key), e)),
        }
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn expired_at_open(&self) -> &ExpireReport {
        &self.expired
    }

    fn commit(mut self: Box<Self>, deleted: &[usize], retrieved: &[usize]) -> Result<CommitReport, StoreError> {
        let remove = self.removals(deleted, retrieved);
        if let Some(&bad) = remove.iter().find(|&&i| i >= self.messages.len()) {
            return Err(StoreError::NoSuchMessage { index: bad });
        }
        let now = SystemTime::now();
        if let Err(e) = self.record_retrievals(retrieved, now) {
            tracing::warn!(user = %self.user, error = %e, "cannot record retrievals");
        }
        let this = *self;
        let aside = this.policy.restore_days > 0;
        let result = this
            .root
            .reopen()
            .and_then(|maildir| commit::commit(&maildir, &this.messages, &remove, aside, now));
        // Explicit for the reader: the lock goes only after the removals are
        // durable (or have failed), never before.
        drop(this.lock);
        if let Ok(report) = &result {
            tracing::debug!(
                user = %this.user,
                removed = report.removed,
                failed = report.failed,
                "maildrop committed"
            );
        }
        result
    }

    fn record_retrievals(&mut self, indices: &[usize], when: SystemTime) -> Result<(), StoreError> {
        let mut new = false;
        for &i in indices {
            let m = self
                .messages
                .get(i)
                .ok_or(StoreError::NoSuchMessage { index: i })?;
            new |= m.retrieved.is_none();
        }
        if !new {
            return Ok(());
        }
        // Copies the snapshot if the listing cache shares it.
        let messages = Arc::make_mut(&mut self.messages);
        let mut records = Vec::new();
        for &i in indices {
            let m = &mut messages[i];
            if m.retrieved.is_none() {
                m.retrieved = Some(when);
                records.push(retention::Record::Retrieved(
                    m.uidl.as_str().to_owned(),
                    when,
                ));
            }
        }
        self.root.reopen()?.append_log(&records)
    }
}

/// The whole file `sub/name` if it is at most `max` bytes and
/// reading it cannot block: `openat2(RESOLVE_CACHED)` fails with `EAGAIN`
/// unless the name resolves from the dentry cache, `preadv2(RWF_NOWAIT)`
/// unless the data is in the page cache (Linux 5.12 and 4.14). Anything
/// else (a moved file, a cold cache, an older kernel: `ENOSYS`/`EINVAL`)
/// is `None`, and the caller reads on a blocking thread instead. Resolved
/// below the Maildir root's handle through no link at all
/// ([`dirs::open_file_below`]).
fn read_if_cached(root: BorrowedFd<'_>, sub: Sub, name: &OsStr, max: u64) -> Option<Vec<u8>> {
    use rustix::io::ReadWriteFlags;
    let fd = dirs::open_file_below(root, sub, name, true).ok()?;
    // One byte more than allowed, to notice a file larger than `max`.
    let limit = usize::try_from(max).ok()?.checked_add(1)?;
    // Sized from fstat (one byte more, to see EOF in the same pass).
    let size = usize::try_from(rustix::fs::fstat(&fd).ok()?.st_size).ok()?;
    let mut data = vec![0u8; limit.min(size.saturating_add(1))];
    let mut filled = 0;
    loop {
        if filled == data.len() {
            // The file grew since fstat, or holds more than `max`.
            if data.len() == limit {
                return None;
            }
            data.resize(limit.min(data.len().saturating_mul(2)), 0);
        }
        let n = rustix::io::preadv2(
            &fd,
            &mut [io::IoSliceMut::new(&mut data[filled..])],
            filled as u64,
            ReadWriteFlags::NOWAIT,
        )
        .ok()?;
        if n == 0 {
            data.truncate(filled);
            return Some(data);
        }
        filled += n;
    }
}
