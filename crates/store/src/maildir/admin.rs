//! The admin operations (`pobox mailbox`, `pobox user`) on Maildir:
//! listings, heads, usage and releasing quarantined mail. Restore and
//! purge live with the rest of retention (`retention.rs`).

use std::io;
use std::time::SystemTime;

use std::ffi::OsStr;

use super::deliver::{self, Existing};
use super::{MaildirKey, MaildirStore, Sub, dirs, io_error, name, open_read};
use crate::quota::{Quota, Usage};
use crate::{CommitReport, ImportOutcome, MailstoreAdmin, MessageInfo, RemovedMessage, StoreError, Uidl};

impl MailstoreAdmin for MaildirStore {
    /// One [`UserImport`](super::UserImport) for one message: the lock,
    /// idempotence by UIDL and durability are that type's.
    fn import_message(
        &self,
        user: &str,
        uidl: &Uidl,
        received: SystemTime,
        message: &mut dyn io::Read,
    ) -> Result<ImportOutcome, StoreError> {
        self.begin_import(user)?.import(uidl.as_str(), received, message)
    }

    /// `user`'s usage and quota (usage from `maildirsize`, rescanned only
    /// when that file cannot be trusted).
    ///
    /// # Errors
    ///
    /// Filesystem errors.
    fn usage(&self, user: &str) -> Result<(Usage, Quota), StoreError> {
        let quota = self.policies.load().quota.for_user(user);
        Ok((self.maildir(user)?.usage(&quota)?, quota))
    }

    /// Moves message `uidl` from `folder` (e.g. a Junk quarantine) into the
    /// inbox's `new/`, byte for byte, under its own name (so its UIDL stays).
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidFolder`], [`StoreError::Vanished`] if no such
    /// message, or filesystem errors.
    fn release(&self, user: &str, folder: &str, uidl: &str) -> Result<String, StoreError> {
        let inbox = self.maildir(user)?;
        let Some(dir) = inbox.folder(folder, false)? else {
            return Err(StoreError::Vanished(format!("{folder}/{uidl}")));
        };
        for sub in [Sub::New, Sub::Cur] {
            let entries = dirs::read_names(dir.fd(sub))
                .map_err(|e| io_error(format_args!("reading {}", dir.dir(sub).display()), e))?;
            for (file, kind) in entries {
                // Only regular files are messages; a link is not followed
                // (a rename moves the link itself, but it has no business
                // in the inbox either).
                if !matches!(kind, rustix::fs::FileType::RegularFile | rustix::fs::FileType::Unknown)
                    || name::uidl_for(name::base_of(&file)).as_str() != uidl
                {
                    continue;
                }
                // Drop the flags part: the message is new in the inbox.
                let bytes = file.as_encoded_bytes();
                let plain = bytes.split(|&b| b == b':').next().unwrap_or(bytes);
                let plain = String::from_utf8_lossy(plain).into_owned();
                deliver::place(dir.fd(sub), &file, inbox.fd(Sub::New), OsStr::new(&plain), Existing::Refuse)
                    .map_err(|e| io_error(format_args!("releasing {}", file.to_string_lossy()), e))?;
                inbox.sync(Sub::New)?;
                dir.sync(sub)?;
                inbox.forget_usage();
                return Ok(inbox.dir(Sub::New).join(plain).display().to_string());
            }
        }
        Err(StoreError::Vanished(format!("{folder}/{uidl}")))
    }

    /// A lock-free snapshot of `user`'s messages with their retrieval
    /// times, for admin listings.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] on filesystem errors.
    fn inspect(&self, user: &str) -> Result<Vec<MessageInfo>, StoreError> {
        let maildir = self.maildir(user)?;
        let mut messages = maildir.scan()?;
        let log = maildir.load_log()?;
        for m in &mut messages {
            m.retrieved = log.retrieved.get(m.uidl.as_str()).copied();
        }
        Ok(messages)
    }

    /// The first `limit` bytes of a message from [`MaildirStore::inspect`]
    /// (enough for its header), for admin listings. No lock is taken.
    ///
    /// # Errors
    ///
    /// [`StoreError::Vanished`] if the file is gone; I/O errors otherwise.
    fn head(&self, user: &str, info: &MessageInfo, limit: usize) -> Result<Vec<u8>, StoreError> {
        use std::io::Read;
        let maildir = self.maildir(user)?;
        let (sub, name) = info.key.as_maildir();
        let path = maildir.dir(sub).join(name);
        let file = match open_read(maildir.fd(sub), name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Vanished(info.key.to_string()));
            }
            Err(e) => return Err(io_error(format_args!("opening {}", path.display()), e)),
        };
        let mut buf = Vec::with_capacity(limit.min(64 * 1024));
        file.take(limit as u64)
            .read_to_end(&mut buf)
            .map_err(|e| io_error(format_args!("reading {}", path.display()), e))?;
        Ok(buf)
    }

    fn restore(&self, user: &str, since: Option<SystemTime>, now: SystemTime) -> Result<Vec<String>, StoreError> {
        self.restore_removed(user, since, now)
    }

    fn removed_messages(&self, user: &str) -> Result<Vec<RemovedMessage>, StoreError> {
        self.restore_area(user)
    }

    fn purge(&self, user: &str, now: SystemTime) -> Result<CommitReport, StoreError> {
        self.purge_all(user, now)
    }
}
