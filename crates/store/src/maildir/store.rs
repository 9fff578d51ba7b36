//! [`MaildirStore`]: the Maildir backend's [`Mailstore`], its
//! configuration (location, size limit, retention and quota policies,
//! listing cache) and `open`, which locks, expires and snapshots a maildrop.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::policies::PolicyCell;

use super::mailbox::MaildirMailbox;
use super::{ListingCacheStats, MailLocation, Maildir, cache, lock};
use crate::quota::{Quota, QuotaConfig, Usage};
use crate::retention::{Policy, RetentionConfig};
use crate::{Authenticated, Delivered, ExpireReport, Mailbox, Mailstore, StoreError};

/// The Maildir [`Mailstore`]: one Maildir per user, found through a
/// [`MailLocation`] template.
///
/// Keeps the listings of big maildrops between sessions while their
/// directories are unchanged (see [`with_listing_cache_limits`]); clones
/// share that cache.
///
/// The size limit, retention and quota policies can be replaced while the
/// store is in use ([`set_policies`]): `pobox serve` does so on SIGHUP, and
/// keeps the same store, so that the lock table and the listing cache
/// survive a configuration reload. A clone starts with the same policies
/// but replaces its own.
///
/// [`with_listing_cache_limits`]: MaildirStore::with_listing_cache_limits
/// [`set_policies`]: MaildirStore::set_policies
#[derive(Debug)]
pub struct MaildirStore {
    pub(super) location: MailLocation,
    pub(super) policies: PolicyCell,
    pub(super) listings: Arc<cache::ListingCache>,
    pub(super) locks: Arc<lock::LockTable>,
}

impl Clone for MaildirStore {
    fn clone(&self) -> Self {
        MaildirStore {
            location: self.location.clone(),
            policies: self.policies.clone(),
            listings: Arc::clone(&self.listings),
            locks: Arc::clone(&self.locks),
        }
    }
}


impl MaildirStore {
    /// A store with no message size limit.
    #[must_use]
    pub fn new(location: MailLocation) -> Self {
        MaildirStore {
            policies: PolicyCell::default(),
            listings: Arc::new(cache::ListingCache::new(cache::MIN_MESSAGES, cache::DEFAULT_MAX_MESSAGES)),
            locks: Arc::new(lock::LockTable::new(location.lock_file())),
            location,
        }
    }

    /// The file holding every maildrop's session lock (see
    /// `maildir/lock.rs`): `.pobox-maildrops.lock` in the directory that
    /// holds the maildrops, so every process using the same mail location
    /// agrees on it.
    #[must_use]
    pub fn lock_file(&self) -> &Path {
        self.locks.path()
    }

    /// Opens the lock file now rather than at the first login: the daemon
    /// does this before dropping root, so the directory that holds the
    /// maildrops need not be writable by the daemon's user.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] if the file cannot be opened or created.
    pub fn open_lock_file(&self) -> Result<(), StoreError> {
        self.locks.open()
    }

    /// Sets the listing cache's bounds: only maildrops of at least
    /// `min_messages` messages are cached ([`LISTING_CACHE_MIN`] by
    /// default: smaller ones scan quickly), and at most `max_messages`
    /// messages across all maildrops ([`LISTING_CACHE_DEFAULT_MAX`] by
    /// default, roughly 200 bytes each); `max_messages` 0 turns the cache
    /// off. Only [`open`] uses the cache: a listing is reused while the
    /// `new/` and `cur/` directories stat exactly as when it was taken,
    /// which had then been unchanged for two seconds (the rule is explained
    /// in `maildir/cache.rs`). Starts with an empty cache.
    ///
    /// [`open`]: Mailstore::open
    #[must_use]
    pub fn with_listing_cache_limits(mut self, min_messages: usize, max_messages: usize) -> Self {
        self.listings = Arc::new(cache::ListingCache::new(min_messages, max_messages));
        self
    }

    /// Counters of the listing cache, for diagnostics (logs, tests).
    #[must_use]
    pub fn listing_cache_stats(&self) -> ListingCacheStats {
        self.listings.stats()
    }

    /// Limits delivered messages to `max` POP3 octets (the `W=` size);
    /// larger ones fail with [`StoreError::TooLarge`].
    #[must_use]
    pub fn with_max_size(self, max: u64) -> Self {
        self.policies.set_max_size(max);
        self
    }

    /// Replaces the size limit, the retention and the quota policies.
    /// Operations already under way (an open maildrop keeps the retention
    /// policy it was opened with) are not affected.
    pub fn set_policies(&self, max_size: Option<u64>, retention: RetentionConfig, quota: QuotaConfig) {
        self.policies.replace(max_size, retention, quota);
    }

    /// Applies retention policies: whether removed messages go to the
    /// restore area, and what [`MaildirStore::expire`] removes.
    #[must_use]
    pub fn with_retention(self, retention: RetentionConfig) -> Self {
        self.policies.set_retention(retention);
        self
    }


    /// Applies quotas to deliveries.
    #[must_use]
    pub fn with_quota(self, quota: QuotaConfig) -> Self {
        self.policies.set_quota(quota);
        self
    }

    /// The location template.
    #[must_use]
    pub fn location(&self) -> &MailLocation {
        &self.location
    }

    /// The size limit, if any.
    #[must_use]
    pub fn max_size(&self) -> Option<u64> {
        self.policies.load().max_size
    }

    /// Opens (creating if needed) `user`'s Maildir, for admin tools and the
    /// fetcher. Takes no lock.
    ///
    /// # Errors
    ///
    /// [`StoreError::NoSuchUser`] for an unusable name; [`StoreError::Io`]
    /// or [`StoreError::DiskFull`] if the directories cannot be created.
    /// The Maildir is opened as `maildir/dirs.rs` describes: a link at or
    /// below the `{user}` component, or a part owned by someone else, is
    /// refused with [`StoreError::Unsafe`] naming it.
    pub fn maildir(&self, user: &str) -> Result<Maildir, StoreError> {
        self.location.open_maildir(user)
    }
}

impl Mailstore for MaildirStore {
    fn set_policies(&self, max_size: Option<u64>, retention: RetentionConfig, quota: QuotaConfig) {
        MaildirStore::set_policies(self, max_size, retention, quota);
    }

    fn open(&self, login: &Authenticated) -> Result<Box<dyn Mailbox>, StoreError> {
        let user = login.user();
        let maildir = self.maildir(user)?;
        // Lock first, then look: the snapshot must be taken under the lock so
        // that two sessions never both believe they own a message.
        let lock = self.locks.acquire(maildir.lock_key()?, maildir.path(), lock::Holder::Session)?;
        let policy = self.policies.load().retention.for_user(user);
        // Retention before the snapshot, under the lock just taken, so
        // what has expired is not offered again.
        let expired = match policy.can_expire() {
            false => ExpireReport::default(),
            true => self.expire_locked(&maildir, user, &policy, SystemTime::now(), false).unwrap_or_else(|e| {
                tracing::warn!(%user, error = %e, "expiry at login failed");
                ExpireReport::default()
            }),
        };
        maildir.reap_tmp();
        // Shared with the listing cache (and other sessions' snapshots) as
        // long as nothing needs changing in it.
        let mut messages = self.listings.listing(&maildir)?;
        let log = maildir.load_log()?;
        let first_logged = match log.retrieved.is_empty() {
            true => None,
            false => messages.iter().position(|m| log.retrieved.contains_key(m.uidl.as_str())),
        };
        if let Some(first) = first_logged {
            // Copy on write: only sessions with logged retrievals pay.
            for m in &mut Arc::make_mut(&mut messages)[first..] {
                m.retrieved = log.retrieved.get(m.uidl.as_str()).copied();
            }
        }
        tracing::debug!(%user, count = messages.len(), "maildrop opened");
        Ok(Box::new(MaildirMailbox {
            user: user.to_owned(),
            root: maildir.into_session_root()?,
            messages,
            policy,
            expired,
            lock,
        }))
    }

    fn deliver(&self, user: &str, message: &mut dyn io::Read) -> Result<Delivered, StoreError> {
        let maildir = self.maildir(user)?;
        let policies = self.policies.load_full();
        let quota = policies.quota.for_user(user);
        if quota.is_unlimited() {
            return maildir.deliver(message, policies.max_size);
        }
        // No rescan per delivery: usage comes from maildirsize. The byte
        // limit becomes the writer's size limit, so an over-quota message is
        // refused while it streams, before anything reaches new/.
        let usage = maildir.usage(&quota)?;
        if quota.exceeded_by(usage, 0) {
            return Err(StoreError::OverQuota(format!("{} messages, {} octets in use", usage.messages, usage.bytes)));
        }
        let room = quota.bytes.map(|limit| limit.saturating_sub(usage.bytes));
        let limit = match (policies.max_size, room) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match maildir.deliver(message, limit) {
            Ok(d) => {
                maildir.record_usage(d.size as i64, 1);
                Ok(d)
            }
            Err(StoreError::TooLarge { .. }) if room.is_some_and(|r| policies.max_size.is_none_or(|m| r < m)) => {
                Err(StoreError::OverQuota(format!("{} octets free", room.unwrap_or(0))))
            }
            Err(e) => Err(e),
        }
    }

    fn deliver_to_folder(&self, user: &str, folder: &str, message: &mut dyn io::Read) -> Result<Delivered, StoreError> {
        let inbox = self.maildir(user)?;
        match inbox.folder(folder, true)? {
            Some(dir) => dir.deliver(message, self.max_size()),
            None => unreachable!("folder() creates what is missing"),
        }
    }

    fn expire(&self, user: &str, now: SystemTime, dry_run: bool) -> Result<ExpireReport, StoreError> {
        MaildirStore::expire(self, user, now, dry_run)
    }

    fn retention(&self) -> Arc<RetentionConfig> {
        Arc::clone(&self.policies.load().retention)
    }

    fn policy(&self, user: &str) -> Policy {
        self.policies.load().retention.for_user(user)
    }

    fn quota(&self, user: &str) -> Quota {
        self.policies.load().quota.for_user(user)
    }

    fn quota_full(&self, user: &str) -> Result<Option<Usage>, StoreError> {
        // `Quota::is_full` is `exceeded_by(usage, 1)`.
        self.quota_exceeded_by(user, 1)
    }

    fn quota_exceeded_by(&self, user: &str, size: u64) -> Result<Option<Usage>, StoreError> {
        let quota = Mailstore::quota(self, user);
        if quota.is_unlimited() {
            return Ok(None);
        }
        let usage = self.maildir(user)?.usage(&quota)?;
        Ok(quota.exceeded_by(usage, size).then_some(usage))
    }
}
