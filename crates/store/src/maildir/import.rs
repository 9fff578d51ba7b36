//! Moving mail in under the UIDLs another server gave it: what
//! `pobox import dovecot` and `pobox import pop3` build on.
//!
//! A [`UserImport`] holds one maildrop's lock for a whole import (no POP3
//! session can see a half-imported maildrop, and no two importers race)
//! and knows every UIDL and base name in it, so each message costs no
//! directory scan:
//!
//! - [`UserImport::import`] stores a message through the one writer
//!   (`deliver.rs`: tmp → fsync → no-replace rename → fsync `new/`), with
//!   its mtime set to when it was received, under the given UIDL. It is
//!   idempotent by UIDL: a UIDL already in the maildrop stores nothing.
//!   When the UIDL is itself a good base name (Dovecot's hex UIDLs are)
//!   it becomes the base and no override is needed; otherwise the base is
//!   derived from the UIDL's hash and the override line is made durable
//!   *before* the message appears, so after a crash at any point the
//!   message is either absent (a rerun stores it) or present under the
//!   right UIDL.
//! - [`UserImport::assign`] gives an existing message (by base name) a
//!   UIDL, for serving a Dovecot Maildir in place. Assignments are
//!   batched: they are durable once [`UserImport::flush`] returns.
//!
//! A UIDL already used by another message is refused
//! ([`StoreError::UidlRefused`]). A message removed after it was imported
//! leaves no trace, so importing the same source again after users
//! deleted mail brings that mail back: import before users connect.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::uidls::{UidlMap, is_valid_override_base};
use super::{BaseIndex, Maildir, MaildirKey, MaildirStore, NamedDelivery, deliver, lock, name};
use crate::{ImportOutcome, StoreError, Uidl};

/// What [`UserImport::assign`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignOutcome {
    /// The message gets the UIDL (durable after [`UserImport::flush`]).
    Assigned,
    /// The message already had it.
    AlreadyAssigned,
}

/// One maildrop opened for importing, holding its lock until dropped.
#[derive(Debug)]
pub struct UserImport {
    maildir: Maildir,
    _lock: lock::MaildropLock,
    /// Base names present in `new/` and `cur/`.
    index: BaseIndex,
    /// UIDL → base of every message present.
    by_uidl: HashMap<Uidl, OsString>,
    /// Base → UIDL of every message present.
    by_base: HashMap<OsString, Uidl>,
    /// The overrides file as it stands (including stale lines).
    overrides: UidlMap,
    /// Assignments not yet written.
    pending: Vec<(Uidl, OsString)>,
    /// Whether quota bookkeeping applies (recorded per message).
    quota: bool,
}

/// Checks a UIDL from another server.
fn valid_uidl(uidl: &str) -> Result<Uidl, StoreError> {
    Uidl::try_from(uidl.to_owned()).map_err(|_| StoreError::UidlRefused {
        uidl: uidl.to_owned(),
        reason: "not a valid UIDL (RFC 1939: 1 to 70 characters from 0x21 to 0x7E)".into(),
    })
}

/// The base name an imported message with `uidl` is stored under when the
/// UIDL itself cannot be one: `pobox-import-` and 32 hex digits of its
/// SHA-256, so a rerun picks the same name.
fn hashed_base(uidl: &Uidl) -> String {
    format!(
        "pobox-import-{}",
        hex::encode(&Sha256::digest(uidl.as_str().as_bytes())[..16])
    )
}

impl MaildirStore {
    /// Opens `user`'s maildrop (creating it if missing) for importing:
    /// takes its lock without waiting and reads its listing once.
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`] while a POP3 session (or another import)
    /// holds it; filesystem errors.
    pub fn begin_import(&self, user: &str) -> Result<UserImport, StoreError> {
        let maildir = self.maildir(user)?;
        // Held for the whole import, like a session: logins answer [IN-USE].
        let lock = self.locks.acquire(maildir.lock_key()?, maildir.path(), lock::Holder::Session)?;
        let (overrides, _) = maildir.load_uidls()?;
        let messages = maildir.scan()?;
        let mut by_uidl = HashMap::with_capacity(messages.len());
        let mut by_base = HashMap::with_capacity(messages.len());
        for m in messages {
            let (_, file) = m.key.as_maildir();
            let base = name::base_of(file).to_os_string();
            by_uidl.insert(m.uidl.clone(), base.clone());
            by_base.insert(base, m.uidl);
        }
        let index = maildir.base_index()?;
        let quota = !self.policies.load().quota.for_user(user).is_unlimited();
        Ok(UserImport {
            maildir,
            _lock: lock,
            index,
            by_uidl,
            by_base,
            overrides,
            pending: Vec::new(),
            quota,
        })
    }

    /// [`begin_import`](MaildirStore::begin_import) and one
    /// [`UserImport::import`]: for a single message. Importing many, keep
    /// one [`UserImport`] (this reads the whole maildrop each call).
    ///
    /// # Errors
    ///
    /// As those two.
    pub fn import_message(
        &self,
        user: &str,
        uidl: &str,
        received: SystemTime,
        message: &mut dyn io::Read,
    ) -> Result<ImportOutcome, StoreError> {
        self.begin_import(user)?.import(uidl, received, message)
    }

    /// [`begin_import`](MaildirStore::begin_import), one
    /// [`UserImport::assign`] and [`UserImport::flush`].
    ///
    /// # Errors
    ///
    /// As those.
    pub fn assign_uidl(
        &self,
        user: &str,
        base: &str,
        uidl: &str,
    ) -> Result<AssignOutcome, StoreError> {
        let mut import = self.begin_import(user)?;
        let outcome = import.assign(OsStr::new(base), uidl)?;
        import.flush()?;
        Ok(outcome)
    }

    /// Every message of `user` as (UIDL, POP3 size), in listing order,
    /// without taking the maildrop lock and without creating anything:
    /// `Ok(None)` if the user has no Maildir. For `pobox uidl verify`.
    ///
    /// # Errors
    ///
    /// Filesystem errors, or [`StoreError::Unsafe`] as for any access.
    pub fn uidl_listing(&self, user: &str) -> Result<Option<Vec<(String, u64)>>, StoreError> {
        let Some(maildir) = self.location.open_existing(user)? else {
            return Ok(None);
        };
        Ok(Some(
            maildir
                .scan()?
                .into_iter()
                .map(|m| (m.uidl.into_string(), m.size))
                .collect(),
        ))
    }
}

impl UserImport {
    /// The Maildir being imported into.
    #[must_use]
    pub fn maildir(&self) -> &Maildir {
        &self.maildir
    }

    /// True if a message with this UIDL is in the maildrop.
    #[must_use]
    pub fn contains(&self, uidl: &str) -> bool {
        Uidl::try_from(uidl.to_owned()).is_ok_and(|u| self.by_uidl.contains_key(&u))
    }

    /// The UIDL of the message with base name `base`, if present.
    #[must_use]
    pub fn uidl_of(&self, base: &OsStr) -> Option<&str> {
        self.by_base.get(base).map(Uidl::as_str)
    }

    /// How many messages the maildrop holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_base.len()
    }

    /// True if it holds none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_base.is_empty()
    }

    /// Stores `message` under `uidl`, received at `received`, unless a
    /// message with that UIDL is present. Durable when it returns
    /// `Imported` (pending assignments are written first). Not limited by
    /// size or quota (the mail was already accepted once), but counted in
    /// the quota bookkeeping.
    ///
    /// # Errors
    ///
    /// [`StoreError::UidlRefused`] for an invalid UIDL; I/O errors (no
    /// partial message is left behind).
    pub fn import(
        &mut self,
        uidl: &str,
        received: SystemTime,
        message: &mut dyn io::Read,
    ) -> Result<ImportOutcome, StoreError> {
        let uidl = valid_uidl(uidl)?;
        if self.by_uidl.contains_key(&uidl) {
            return Ok(ImportOutcome::AlreadyPresent);
        }
        let direct = name::is_valid_base(uidl.as_str()) && !self.index.contains(uidl.as_str());
        let base = if direct {
            uidl.as_str().to_owned()
        } else {
            hashed_base(&uidl)
        };
        if self.index.contains(&base) {
            // Only a hash collision or a hand-made file can do this.
            return Err(StoreError::UidlRefused {
                uidl: uidl.into_string(),
                reason: format!(
                    "a message named {base} is already in the maildrop under another UIDL"
                ),
            });
        }
        let base_os = OsString::from(&base);
        // An override is needed unless the base alone gives the UIDL and no
        // stale line for this base says otherwise.
        let current = self.overrides.get(&base_os);
        let needs_line = current != Some(&uidl) && (!direct || current.is_some());
        if needs_line {
            self.pending.push((uidl.clone(), base_os.clone()));
        }
        self.flush()?;
        let stored = deliver::write_message(
            &self.maildir,
            Some(&base),
            message,
            None,
            true,
            Some(&mut self.index),
            Some(received),
        )?;
        match stored {
            NamedDelivery::Stored(mut d) => {
                if self.quota {
                    self.maildir.record_usage(d.size as i64, 1);
                }
                d.uidl = uidl.clone();
                self.by_uidl.insert(uidl.clone(), base_os.clone());
                self.by_base.insert(base_os, uidl);
                Ok(ImportOutcome::Imported(d))
            }
            // Someone else wrote that name meanwhile (we hold the lock, so
            // not a session): it is the same UIDL.
            NamedDelivery::AlreadyPresent(_) => Ok(ImportOutcome::AlreadyPresent),
        }
    }

    /// Gives the message with base name `base` the UIDL `uidl`. Durable
    /// once [`flush`](UserImport::flush) returns.
    ///
    /// # Errors
    ///
    /// [`StoreError::Vanished`] if no message has that base;
    /// [`StoreError::UidlRefused`] if the UIDL is invalid or another
    /// message has it; [`StoreError::InvalidName`] for a base that cannot
    /// be written in the overrides file.
    pub fn assign(&mut self, base: &OsStr, uidl: &str) -> Result<AssignOutcome, StoreError> {
        let uidl = valid_uidl(uidl)?;
        let Some(current) = self.by_base.get(base) else {
            return Err(StoreError::Vanished(base.to_string_lossy().into_owned()));
        };
        if *current == uidl {
            return Ok(AssignOutcome::AlreadyAssigned);
        }
        if let Some(other) = self.by_uidl.get(&uidl) {
            return Err(StoreError::UidlRefused {
                uidl: uidl.into_string(),
                reason: format!("message {} already has it", other.to_string_lossy()),
            });
        }
        if !is_valid_override_base(base.as_encoded_bytes()) {
            return Err(StoreError::InvalidName(base.to_string_lossy().into_owned()));
        }
        let old = self.by_base.insert(base.to_os_string(), uidl.clone());
        if let Some(old) = old {
            self.by_uidl.remove(&old);
        }
        self.by_uidl.insert(uidl.clone(), base.to_os_string());
        self.pending.push((uidl, base.to_os_string()));
        Ok(AssignOutcome::Assigned)
    }

    /// Writes pending assignments and makes them durable (one append and
    /// one fsync for the lot).
    ///
    /// # Errors
    ///
    /// I/O errors; the assignments are then not made.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let entries: Vec<(&Uidl, &OsStr)> = self
            .pending
            .iter()
            .map(|(u, b)| (u, b.as_os_str()))
            .collect();
        self.maildir.append_uidls(&entries)?;
        for (uidl, base) in self.pending.drain(..) {
            self.overrides.insert(base, uidl);
        }
        Ok(())
    }
}
