//! Maildir destination: a thin layer over `pobox_store::Maildir`, the
//! project's one Maildir writer (tmp, fsync, link into `new/` without
//! overwriting). The fsync of `new/` is left to [`MaildirDest::sync`], so a
//! batch of messages shares one (group commit).

use std::path::Path;

use std::sync::Mutex;

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
