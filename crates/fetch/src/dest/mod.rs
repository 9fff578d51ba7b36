//! Destinations: where a complete, verified message is stored.
//!
//! Each destination gets the whole message from a [`Spool`] (never a partial
//! one) and reports whether it stored it or recognised it as already there,
//! which is how a download repeated after a crash stays a single copy.

pub mod maildir;
pub mod mbox;
pub mod mda;

use std::io;
use std::path::PathBuf;

use pobox_store::StoreError;

use crate::config::Destination;
use crate::journal::{Journal, JournalError};
use crate::spool::Spool;

/// Why a message could not be stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestError {
    /// The Maildir store failed.
    #[error("Maildir: {0}")]
    Maildir(#[from] StoreError),
    /// The mbox file could not be locked, read or written.
    #[error("mbox {path}: {source}")]
    Mbox {
        /// The mbox.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The MDA could not be started or fed.
    #[error("cannot run MDA {command:?}: {source}")]
    MdaSpawn {
        /// The command.
        command: String,
        /// Why.
        source: io::Error,
    },
    /// The MDA exited non-zero: the message was not delivered.
    #[error("MDA {command:?} failed ({status}): {stderr}")]
    MdaFailed {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// Reading the spool failed.
    #[error("spool: {0}")]
    Spool(io::Error),
    /// Recording an mbox append in the journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Most messages in one group commit (see [`Dest::batch_limit`]).
pub const BATCH_MESSAGES: usize = 64;
/// Most octets in one group commit: past this the batch is committed
/// even if it has fewer messages.
pub const BATCH_BYTES: u64 = 8 << 20;

/// What a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The message is now stored.
    Stored,
    /// It was already stored by an earlier, interrupted run; nothing written.
    AlreadyPresent,
}

/// An opened destination.
#[derive(Debug)]
pub enum Dest {
    /// A Maildir.
    Maildir(maildir::MaildirDest),
    /// An mbox file.
    Mbox(mbox::MboxDest),
    /// A delivery command.
    Mda(mda::MdaDest),
}

/// Identifies the message being delivered.
#[derive(Debug, Clone, Copy)]
pub struct MessageId<'a> {
    /// The Maildir base name / MDA id: `pobox-<hash>`.
    pub base: &'a str,
    /// The journal key (the UIDL), when the server has UIDL.
    pub uidl: Option<&'a str>,
    /// The account's name, for the MDA's environment.
    pub account: &'a str,
}

impl Dest {
    /// Opens (creating if needed) a destination.
    ///
    /// # Errors
    /// [`DestError`] when a Maildir or mbox cannot be created.
    pub fn open(d: &Destination) -> Result<Dest, DestError> {
        Ok(match d {
            Destination::Maildir(p) => Dest::Maildir(maildir::MaildirDest::open(p)?),
            Destination::Mbox(p) => Dest::Mbox(mbox::MboxDest::open(p)?),
            Destination::Mda(c) => Dest::Mda(mda::MdaDest::new(c)),
        })
    }

    /// Stores a complete message; durable when this returns. Blocking
    /// (fsync, child processes): call it off the async executor's core
    /// threads.
    ///
    /// # Errors
    /// [`DestError`]; nothing is delivered when it fails.
    pub fn deliver(
        &self,
        id: MessageId<'_>,
        spool: &mut Spool,
        journal: &mut Journal,
        now: u64,
    ) -> Result<Delivery, DestError> {
        let d = self.deliver_deferred(id, spool, journal, now)?;
        self.make_durable()?;
        Ok(d)
    }

    /// Stores a complete message for a group commit: the message is visible
    /// but **not durable** until [`make_durable`](Self::make_durable)
    /// returns `Ok`, so nothing may be journalled or deleted on the server
    /// before that. For a Maildir the message file itself is already
    /// fsynced; only its directory entry in `new/` is pending. mbox and MDA
    /// deliveries are durable at once (their own protocol, see their
    /// modules).
    ///
    /// # Errors
    /// [`DestError`]; nothing is delivered when it fails.
    pub fn deliver_deferred(
        &self,
        id: MessageId<'_>,
        spool: &mut Spool,
        journal: &mut Journal,
        now: u64,
    ) -> Result<Delivery, DestError> {
        match self {
            Dest::Maildir(m) => m.deliver(id.base, spool),
            Dest::Mbox(m) => m.deliver(id.uidl, spool, journal, now),
            Dest::Mda(m) => m.deliver(id, spool),
        }
    }

    /// Makes every earlier [`deliver_deferred`](Self::deliver_deferred)
    /// durable (Maildir: one fsync of `new/`, which also covers a copy
    /// found there by an interrupted earlier run).
    ///
    /// # Errors
    /// [`DestError`]: the batch must then be treated as not stored (never
    /// journalled, never deleted; do not retry the fsync, whose second
    /// success would prove nothing).
    pub fn make_durable(&self) -> Result<(), DestError> {
        match self {
            Dest::Maildir(m) => m.sync(),
            Dest::Mbox(_) | Dest::Mda(_) => Ok(()),
        }
    }

    /// Most messages worth storing before one group commit (journal
    /// fsync, then DELEs). An MDA gets 1: its deliveries cannot be
    /// recognised when repeated, so the window between its exit 0 and the
    /// journal record must stay one message wide.
    pub fn batch_limit(&self) -> usize {
        match self {
            Dest::Maildir(_) | Dest::Mbox(_) => BATCH_MESSAGES,
            Dest::Mda(_) => 1,
        }
    }
}
