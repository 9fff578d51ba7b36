//! Maildir destination: a thin layer over `pobox_store::Maildir`, the
//! project's one Maildir writer (tmp, fsync, link into `new/` without
//! overwriting). The fsync of `new/` is left to [`MaildirDest::sync`], so a
//! batch of messages shares one (group commit).

use std::path::Path;

use pobox_store::{Maildir, NamedDelivery};

use super::{Delivery, DestError};
use crate::spool::Spool;

/// A Maildir opened for delivery.
#[derive(Debug)]
pub struct MaildirDest {
    maildir: Maildir,
}

impl MaildirDest {
    /// Opens the Maildir, creating `tmp/`, `new/`, `cur/` if needed.
    ///
    /// # Errors
    /// [`DestError::Maildir`].
    pub fn open(path: &Path) -> Result<MaildirDest, DestError> {
        Ok(MaildirDest { maildir: Maildir::open_or_create(path)? })
    }

    /// Stores the message under `base` unless a file with that base name is
    /// already in `new/` or `cur/` (a copy stored before a crash). Not
    /// durable until [`sync`](Self::sync) returns.
    ///
    /// # Errors
    /// [`DestError::Maildir`] or [`DestError::Spool`].
    pub fn deliver(&self, base: &str, spool: &mut Spool) -> Result<Delivery, DestError> {
        let mut reader = spool.reader().map_err(DestError::Spool)?;
        match self.maildir.deliver_named_unsynced(base, &mut reader, None)? {
            NamedDelivery::Stored(_) => Ok(Delivery::Stored),
            NamedDelivery::AlreadyPresent(_) => Ok(Delivery::AlreadyPresent),
        }
    }

    /// Makes every delivery so far durable: one fsync of `new/`.
    ///
    /// # Errors
    /// [`DestError::Maildir`].
    pub fn sync(&self) -> Result<(), DestError> {
        Ok(self.maildir.sync_new()?)
    }
}
