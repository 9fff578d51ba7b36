//! The Maildir backend.
//!
//! A maildrop is a Maildir as described by maildir(5) (qmail,
//! `notqmail/maildir.5`), using Dovecot's file-name conventions so that
//! sizes are known without reading files:
//!
//! ```text
//! <maildir>/tmp/<unique>                          being written (never read)
//! <maildir>/new/<unique>,S=<stored>,W=<wire>      delivered, not yet seen by POP3
//! <maildir>/cur/<unique>,S=<stored>,W=<wire>:2,   seen (moved at POP3 UPDATE)
//! ```
//!
//! Messages are stored with LF line endings, so mutt, Dovecot and every
//! other Maildir tool read them as usual. `W=` is the POP3 size (every LF
//! counted as CRLF), so `LIST` is answered from names alone; files written
//! by other programs without `W=` are measured once per session.
//!
//! # Invariants
//!
//! | state | meaning | who creates it |
//! |---|---|---|
//! | `tmp/X` exists | a delivery is in progress, or crashed | `deliver.rs` only |
//! | `new/X,S=..,W=..` exists | delivered and durable (file + dir fsynced) | `deliver.rs` only |
//! | `cur/X,..:2,FLAGS` exists | delivered, seen by a POP3 session or a MUA | `commit.rs` (rename), other MUAs |
//! | `tmp/X` older than 36 h | a crashed delivery; removed by the next `open` | `scan.rs` |
//!
//! `X` (the *base name*) never changes once chosen, so the UIDL derived from
//! it survives `new/` → `cur/` moves and flag changes (RFC 1939 §7).

mod cache;
mod commit;
mod deliver;
mod dirs;
mod import;
mod lock;
mod quota;
mod name;
mod retention;
mod scan;
mod uidls;

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use arc_swap::ArcSwap;
use rustix::fs::{Mode, OFlags};

use std::sync::Arc;
use std::time::SystemTime;

use crate::quota::{Quota, QuotaConfig, Usage};
use crate::retention::{self as policy, Policy, RetentionConfig};
use crate::{
    CommitReport, Delivered, ExpireReport, Mailbox, Mailstore, MailstoreAdmin, MessageInfo, MessageKey, RemovedMessage,
    StoreError,
};

pub use cache::{DEFAULT_MAX_MESSAGES as LISTING_CACHE_DEFAULT_MAX, ListingCacheStats, MIN_MESSAGES as LISTING_CACHE_MIN};
pub use import::{AssignOutcome, ImportOutcome, UserImport};
pub use scan::wire_size_of;

/// Where users' Maildirs live: a path template containing `{user}`, like
/// Dovecot's `mail_location` (`/srv/mail/{user}/Maildir`, `/data/mail/{user}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailLocation(String);

/// The placeholder a [`MailLocation`] template must contain.
const USER_PLACEHOLDER: &str = "{user}";

impl MailLocation {
    /// Validates a template.
    ///
    /// # Errors
    ///
    /// [`InvalidMailLocation`] if the template does not contain `{user}` (all
    /// users would share one maildrop), is not an absolute path (the
    /// daemon's working directory is not meaningful), or contains a NUL byte.
    pub fn new(template: impl Into<String>) -> Result<Self, InvalidMailLocation> {
        let template = template.into();
        let reason = if !template.contains(USER_PLACEHOLDER) {
            Some("must contain {user}")
        } else if !template.starts_with('/') {
            Some("must be an absolute path")
        } else if template.contains('\0') {
            Some("must not contain NUL")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidMailLocation { template, reason }),
            None => Ok(MailLocation(template)),
        }
    }

    /// The template as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the maildrop lock file lives: in the directory above the first
    /// path component holding `{user}` (`/srv/mail/{user}/Maildir` →
    /// `/srv/mail/.pobox-maildrops.lock`).
    #[must_use]
    pub fn lock_file(&self) -> PathBuf {
        let first = self.0.find(USER_PLACEHOLDER).unwrap_or(0);
        let dir_end = self.0[..first].rfind('/').unwrap_or(0);
        let dir = if dir_end == 0 { "/" } else { &self.0[..dir_end] };
        Path::new(dir).join(lock::LOCK_FILE)
    }

    /// The Maildir path for `user`.
    ///
    /// The name is checked before it is substituted, as defence in depth
    /// (`pobox-auth` validates names too): it must be non-empty, must not
    /// contain `/` or NUL (no escaping the template's directory), and must
    /// not start with `.` (no `..`, no hidden directories).
    ///
    /// # Errors
    ///
    /// [`StoreError::NoSuchUser`] if the name fails those checks.
    pub fn path_for(&self, user: &str) -> Result<PathBuf, StoreError> {
        if user.is_empty() || user.starts_with('.') || user.contains(['/', '\0']) {
            return Err(StoreError::NoSuchUser(user.to_owned()));
        }
        Ok(PathBuf::from(self.0.replace(USER_PLACEHOLDER, user)))
    }

    /// Opens (creating if needed) `user`'s Maildir: the directories above
    /// the `{user}` component as a normal path, everything from there down
    /// without following links (see `maildir/dirs.rs`).
    fn open_maildir(&self, user: &str) -> Result<Maildir, StoreError> {
        let full = self.path_for(user)?;
        let (prefix, rest) = dirs::split_at_user(&self.0, &full);
        let Some(base) = dirs::open_trusted(&prefix, true)? else {
            unreachable!("open_trusted creates what is missing");
        };
        match dirs::open_maildir(base, &prefix, &rest, true, None)? {
            Some((root, dirs)) => Ok(Maildir { root, dirs: Arc::new(dirs) }),
            None => unreachable!("open_maildir creates what is missing"),
        }
    }

    /// Opens `user`'s Maildir as [`open_maildir`](Self::open_maildir)
    /// does, but creates nothing: `Ok(None)` if any part is missing.
    fn open_existing(&self, user: &str) -> Result<Option<Maildir>, StoreError> {
        let full = self.path_for(user)?;
        let (prefix, rest) = dirs::split_at_user(&self.0, &full);
        let Some(base) = dirs::open_trusted(&prefix, false)? else {
            return Ok(None);
        };
        Ok(dirs::open_maildir(base, &prefix, &rest, false, None)?
            .map(|(root, dirs)| Maildir { root, dirs: Arc::new(dirs) }))
    }
}

impl FromStr for MailLocation {
    type Err = InvalidMailLocation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MailLocation::new(s)
    }
}

impl fmt::Display for MailLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A rejected [`MailLocation`] template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mail location {template:?}: {reason}")]
pub struct InvalidMailLocation {
    template: String,
    reason: &'static str,
}

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
    location: MailLocation,
    policies: ArcSwap<Policies>,
    listings: Arc<cache::ListingCache>,
    locks: Arc<lock::LockTable>,
}

impl Clone for MaildirStore {
    fn clone(&self) -> Self {
        MaildirStore {
            location: self.location.clone(),
            policies: ArcSwap::new(self.policies.load_full()),
            listings: Arc::clone(&self.listings),
            locks: Arc::clone(&self.locks),
        }
    }
}

/// What [`MaildirStore::set_policies`] replaces at once: read together by
/// one operation, so a delivery never sees one reload's size limit with
/// another's quota.
#[derive(Debug, Clone, Default)]
struct Policies {
    max_size: Option<u64>,
    retention: Arc<RetentionConfig>,
    quota: Arc<QuotaConfig>,
}

impl MaildirStore {
    /// A store with no message size limit.
    #[must_use]
    pub fn new(location: MailLocation) -> Self {
        MaildirStore {
            policies: ArcSwap::from_pointee(Policies::default()),
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
        self.update(|p| p.max_size = Some(max));
        self
    }

    /// Replaces the size limit, the retention and the quota policies.
    /// Operations already under way (an open maildrop keeps the retention
    /// policy it was opened with) are not affected.
    pub fn set_policies(&self, max_size: Option<u64>, retention: RetentionConfig, quota: QuotaConfig) {
        self.policies.store(Arc::new(Policies { max_size, retention: Arc::new(retention), quota: Arc::new(quota) }));
    }

    fn update(&self, change: impl FnOnce(&mut Policies)) {
        let mut p = Policies::clone(&self.policies.load());
        change(&mut p);
        self.policies.store(Arc::new(p));
    }

    /// Applies retention policies: whether removed messages go to the
    /// restore area, and what [`MaildirStore::expire`] removes.
    #[must_use]
    pub fn with_retention(self, retention: RetentionConfig) -> Self {
        self.update(|p| p.retention = Arc::new(retention));
        self
    }

    /// The retention policies in use now.
    #[must_use]
    pub fn retention(&self) -> Arc<RetentionConfig> {
        Arc::clone(&self.policies.load().retention)
    }

    /// Applies quotas to deliveries.
    #[must_use]
    pub fn with_quota(self, quota: QuotaConfig) -> Self {
        self.update(|p| p.quota = Arc::new(quota));
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
    fn open(&self, user: &str) -> Result<Box<dyn Mailbox>, StoreError> {
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

/// One Maildir directory (the one containing `tmp/`, `new/` and `cur/`).
///
/// Used by [`MaildirStore`] and directly by the fetcher. All writes go
/// through [`deliver`](Maildir::deliver) and
/// [`deliver_named`](Maildir::deliver_named), which share one writer.
#[derive(Debug, Clone)]
pub struct Maildir {
    /// For messages, and the listing cache's key; never resolved again.
    root: PathBuf,
    /// Every access goes through these handles (see `maildir/dirs.rs`).
    dirs: Arc<dirs::Dirs>,
}

/// Base names known to be in a Maildir; see [`Maildir::base_index`].
#[derive(Debug, Clone, Default)]
pub struct BaseIndex(std::collections::HashSet<std::ffi::OsString>);

impl BaseIndex {
    fn contains(&self, base: &str) -> bool {
        self.0.contains(std::ffi::OsStr::new(base))
    }

    fn insert(&mut self, base: &str) {
        self.0.insert(base.into());
    }

    /// How many messages it knows.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if it knows none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Outcome of [`Maildir::deliver_named`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedDelivery {
    /// The message was written.
    Stored(Delivered),
    /// A message with this base name already exists (at the given path, in
    /// `new/` or `cur/`); nothing was written.
    AlreadyPresent(PathBuf),
}

impl Maildir {
    /// Opens the Maildir at `path`, creating it and its `tmp/`, `new/` and
    /// `cur/` subdirectories (mode 0700, parents included) if missing.
    ///
    /// `path` is the caller's own choice (the fetcher's configured
    /// destination) and is followed as given, links included; `tmp/`,
    /// `new/`, `cur/` and everything in them are never reached through a
    /// link (see `maildir/dirs.rs`). Maildrops found through a
    /// [`MailLocation`] are opened by [`MaildirStore`], which refuses a
    /// linked root as well.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] or [`StoreError::DiskFull`] if a directory cannot
    /// be created, or if `path` or a subdirectory exists but is not a
    /// directory; [`StoreError::Unsafe`] if a subdirectory is a link or
    /// owned by someone else.
    pub fn open_or_create(path: impl Into<PathBuf>) -> Result<Maildir, StoreError> {
        let root = path.into();
        let Some(base) = dirs::open_trusted(&root, true)? else {
            unreachable!("open_trusted creates what is missing");
        };
        match dirs::open_maildir(base, &root, &[], true, None)? {
            Some((root, dirs)) => Ok(Maildir { root, dirs: Arc::new(dirs) }),
            None => unreachable!("open_maildir creates what is missing"),
        }
    }

    /// The Maildir++ folder `name` (a directory in this Maildir's root,
    /// e.g. `.Junk` or the restore area), opened like the root's parts: no
    /// link followed, owned by this Maildir's owner. `Ok(None)` if it does
    /// not exist and `create` is not set.
    pub(crate) fn sub_maildir(&self, name: &str, create: bool) -> Result<Option<Maildir>, StoreError> {
        // A duplicate of the root's handle: the walk consumes its base.
        let base = self
            .dirs
            .root
            .try_clone()
            .map_err(|e| io_error(format_args!("opening {}", self.root.display()), e))?;
        let components = [std::ffi::OsString::from(name)];
        Ok(dirs::open_maildir(base, &self.root, &components, create, Some(self.dirs.owner))?
            .map(|(root, dirs)| Maildir { root, dirs: Arc::new(dirs) }))
    }

    /// The Maildir++ folder for a Sieve `fileinto` name (`.<folder>`).
    fn folder(&self, folder: &str, create: bool) -> Result<Option<Maildir>, StoreError> {
        self.sub_maildir(&folder_dir_name(folder)?, create)
    }

    /// Keeps only the root's handle, for a session (the parts' handles
    /// close here).
    fn into_session_root(self) -> Result<SessionRoot, StoreError> {
        let owner = self.dirs.owner;
        let fd = match Arc::try_unwrap(self.dirs) {
            Ok(dirs) => dirs.root,
            // Not shared at this point; if it were, a duplicate of the root
            // is as good (the other handles close with the last clone).
            Err(shared) => shared
                .root
                .try_clone()
                .map_err(|e| io_error(format_args!("opening {}", self.root.display()), e))?,
        };
        Ok(SessionRoot { path: self.root, fd, owner })
    }

    /// The handle of `sub/`.
    pub(crate) fn fd(&self, sub: Sub) -> BorrowedFd<'_> {
        self.dirs.sub(sub)
    }

    /// The handle of the root.
    pub(crate) fn root_fd(&self) -> BorrowedFd<'_> {
        self.dirs.root.as_fd()
    }

    /// Opens the bookkeeping file `name` (`maildirsize`, the retention log,
    /// their temp files) in the root with `flags`, never through a link: a
    /// user who owns the Maildir could point it at any file.
    pub(crate) fn open_in_root(&self, name: &str, flags: OFlags) -> Result<File, rustix::io::Errno> {
        rustix::fs::openat(self.root_fd(), name, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))
            .map(File::from)
    }

    /// Makes `sub/`'s entries durable.
    pub(crate) fn sync(&self, sub: Sub) -> Result<(), StoreError> {
        dirs::fsync_fd(self.fd(sub), &self.dir(sub))
    }

    /// Makes the root's entries durable.
    pub(crate) fn sync_root(&self) -> Result<(), StoreError> {
        dirs::fsync_fd(self.root_fd(), &self.root)
    }

    /// The maildrop lock's key: the root directory's device and inode.
    fn lock_key(&self) -> Result<(u64, u64), StoreError> {
        let st = rustix::fs::fstat(self.root_fd())
            .map_err(|e| io_error(format_args!("stat {}", self.root.display()), e.into()))?;
        // The field types differ between targets.
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Ok((st.st_dev as u64, st.st_ino as u64))
    }

    /// The Maildir's root directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Delivers a message under a freshly generated unique name.
    ///
    /// CRLF line endings become LF, a final LF is added if missing, and the
    /// file lands in `new/` as `<unique>,S=<stored>,W=<wire>`. Memory use is
    /// constant whatever the message size.
    ///
    /// # Errors
    ///
    /// [`StoreError::TooLarge`] if the POP3 size would exceed `max`;
    /// [`StoreError::DiskFull`] / [`StoreError::Io`] on I/O errors (including
    /// read errors from `msg`). On error no file is left in `tmp/` or `new/`,
    /// except in one case: if the final fsync of `new/` fails the message
    /// stays in `new/` (a retry may then duplicate it, which beats losing it).
    pub fn deliver(
        &self,
        msg: &mut dyn io::Read,
        max: Option<u64>,
    ) -> Result<Delivered, StoreError> {
        match deliver::write_message(self, None, msg, max, true, None, None)? {
            NamedDelivery::Stored(d) => Ok(d),
            // Generated names are unique; write_message reports a clash on
            // one as an error rather than as AlreadyPresent.
            NamedDelivery::AlreadyPresent(p) => Err(io_error(
                format_args!("delivering to {}", p.display()),
                io::ErrorKind::AlreadyExists.into(),
            )),
        }
    }

    /// Delivers a message under a caller-chosen base name, unless one with
    /// that base name is already in `new/` or `cur/`.
    ///
    /// The fetcher uses the remote server's UIDL-derived name so that a
    /// download repeated after a crash is stored once. The base name must be
    /// 1..=100 bytes of `[A-Za-z0-9._-]` and must not start with `.`
    /// (maildir(5) readers skip dot-files). The final rename refuses to
    /// replace an existing file, so two racing writers never overwrite each
    /// other; the loser gets [`NamedDelivery::AlreadyPresent`]. (Two racers
    /// with *different* content for the same base would both be stored,
    /// since their `S=`/`W=` differ; the fetcher never does that.)
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidName`] for a malformed base name; otherwise as
    /// [`deliver`](Maildir::deliver).
    pub fn deliver_named(
        &self,
        base: &str,
        msg: &mut dyn io::Read,
        max: Option<u64>,
    ) -> Result<NamedDelivery, StoreError> {
        self.write_named(base, msg, max, true)
    }

    /// [`deliver_named`](Maildir::deliver_named) for batches: the same
    /// single writer, but the message is **not durable** until
    /// [`sync_new`](Maildir::sync_new) returns `Ok`. The fetcher stores a
    /// batch this way, syncs `new/` once, and only then journals and
    /// deletes the batch on the server.
    ///
    /// # Errors
    ///
    /// As [`deliver_named`](Maildir::deliver_named).
    pub fn deliver_named_unsynced(
        &self,
        base: &str,
        msg: &mut dyn io::Read,
        max: Option<u64>,
    ) -> Result<NamedDelivery, StoreError> {
        self.write_named(base, msg, max, false)
    }

    fn write_named(
        &self,
        base: &str,
        msg: &mut dyn io::Read,
        max: Option<u64>,
        sync_dir: bool,
    ) -> Result<NamedDelivery, StoreError> {
        if !name::is_valid_base(base) {
            return Err(StoreError::InvalidName(base.to_owned()));
        }
        deliver::write_message(self, Some(base), msg, max, sync_dir, None, None)
    }

    /// The base names of every message in `new/` and `cur/`, read once, for
    /// [`deliver_named_indexed`](Maildir::deliver_named_indexed).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] if a directory cannot be read.
    pub fn base_index(&self) -> Result<BaseIndex, StoreError> {
        let mut set = std::collections::HashSet::new();
        for sub in [Sub::New, Sub::Cur] {
            let entries = dirs::read_names(self.fd(sub))
                .map_err(|e| io_error(format_args!("reading {}", self.dir(sub).display()), e))?;
            for (file, _) in entries {
                set.insert(name::base_of(&file).to_os_string());
            }
        }
        Ok(BaseIndex(set))
    }

    /// [`deliver_named_unsynced`](Maildir::deliver_named_unsynced) that checks
    /// `index` (from [`base_index`](Maildir::base_index)) instead of reading
    /// the directories for every message, and records what it stores. For a
    /// single writer per Maildir at a time (the fetcher holds its journal
    /// lock); a racing writer of the same name is still refused by the
    /// no-replace rename. Not durable until [`sync_new`](Maildir::sync_new).
    ///
    /// # Errors
    ///
    /// As [`deliver_named`](Maildir::deliver_named).
    pub fn deliver_named_indexed(
        &self,
        index: &mut BaseIndex,
        base: &str,
        msg: &mut dyn io::Read,
        max: Option<u64>,
    ) -> Result<NamedDelivery, StoreError> {
        if !name::is_valid_base(base) {
            return Err(StoreError::InvalidName(base.to_owned()));
        }
        deliver::write_message(self, Some(base), msg, max, false, Some(index), None)
    }

    /// Makes every earlier [`deliver_named_unsynced`](Maildir::deliver_named_unsynced)
    /// durable: one fsync of `new/`, and of `cur/` (where a copy found
    /// "already present" may have been moved by a mail reader before an
    /// earlier run's directory fsync).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] / [`StoreError::DiskFull`] if the fsync fails;
    /// the batch must then be treated as not delivered.
    pub fn sync_new(&self) -> Result<(), StoreError> {
        self.sync(Sub::New)?;
        self.sync(Sub::Cur)
    }

    /// True if a message with base name `base` is in `new/` or `cur/`.
    ///
    /// Reads both directories (names only, no file contents), so a call
    /// costs O(messages in the Maildir).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a malformed base name (see
    /// [`deliver_named`](Maildir::deliver_named)); otherwise errors from
    /// reading the directories.
    pub fn contains_base(&self, base: &str) -> io::Result<bool> {
        if !name::is_valid_base(base) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid Maildir base name {base:?}"),
            ));
        }
        Ok(self.find_base(base.as_ref())?.is_some())
    }

    /// Lists `new/` and `cur/` without taking the maildrop lock: the same
    /// snapshot [`Mailstore::open`] takes, for admin tools.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] if a directory cannot be read.
    pub fn scan(&self) -> Result<Vec<MessageInfo>, StoreError> {
        scan::scan(self)
    }

    /// The path of `sub/`, for messages only: every access goes through
    /// the handles.
    fn dir(&self, sub: Sub) -> PathBuf {
        self.root.join(sub.as_str())
    }

    /// The path of a message with this base name in `new/` or `cur/`.
    fn find_base(&self, base: &OsStr) -> io::Result<Option<PathBuf>> {
        for sub in [Sub::New, Sub::Cur] {
            if let Some(name) = scan::find_by_base(self.fd(sub), base)? {
                return Ok(Some(self.dir(sub).join(name)));
            }
        }
        Ok(None)
    }

    fn reap_tmp(&self) {
        scan::reap_tmp(self.fd(Sub::Tmp), &self.dir(Sub::Tmp), std::time::SystemTime::now());
    }
}

/// The root handle a session keeps (see [`MaildirMailbox::root`]).
#[derive(Debug)]
struct SessionRoot {
    path: PathBuf,
    fd: std::os::fd::OwnedFd,
    owner: u32,
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
struct MaildirMailbox {
    user: String,
    /// Only the root's handle is kept for the session: a handle per
    /// `tmp/`, `new/` and `cur/` for every logged-in session would triple
    /// the descriptors a server with 10,000 sessions needs (the budget in
    /// `pobox serve` is three per session: socket, message file, and this).
    /// Messages are opened below it (`dirs::open_file_below`), and UPDATE
    /// reopens the parts from it.
    root: SessionRoot,
    /// Possibly shared with the listing cache: changed only through
    /// `Arc::make_mut`.
    messages: Arc<Vec<MessageInfo>>,
    policy: Policy,
    expired: ExpireReport,
    lock: lock::MaildropLock,
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

impl MaildirStore {
    /// Applies `user`'s retention policy at `now`: expired messages are
    /// removed (into the restore area when the policy has a window), and
    /// restore-area messages past their window are purged.
    ///
    /// Takes the maildrop lock without waiting: a maildrop held by a POP3
    /// session is never touched (`skipped_in_use`), so a session's message
    /// numbers never change under it. With `dry_run` nothing changes.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] / [`StoreError::DiskFull`] on filesystem errors.
    pub fn expire(
        &self,
        user: &str,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError> {
        let maildir = self.maildir(user)?;
        let _lock = match self.locks.acquire(maildir.lock_key()?, maildir.path(), lock::Holder::Maintenance) {
            Ok(l) => l,
            Err(StoreError::InUse) => {
                return Ok(ExpireReport {
                    skipped_in_use: true,
                    ..Default::default()
                });
            }
            Err(e) => return Err(e),
        };
        let policy = self.policies.load().retention.for_user(user);
        self.expire_locked(&maildir, user, &policy, now, dry_run)
    }

    /// [`expire`](MaildirStore::expire) for a caller that holds the
    /// maildrop lock (a session's open, or `expire` itself).
    fn expire_locked(
        &self,
        maildir: &Maildir,
        user: &str,
        policy: &Policy,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError> {
        let policy = policy.clone();
        let messages = maildir.scan()?;
        let log = maildir.load_log()?;
        let mut report = ExpireReport::default();
        let mut expired = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let retrieved = log.retrieved.get(m.uidl.as_str()).copied();
            if let Some(reason) = policy::expiry(now, &policy, m.received, retrieved) {
                report.expired.push((m.uidl.as_str().to_owned(), reason));
                expired.push(i);
            }
        }
        let removed = maildir.list_restore_area()?;
        let due: Vec<_> = removed
            .iter()
            .filter(|(_, uidl)| {
                // A file without a D record was moved aside by a run that
                // crashed before logging: its window starts now.
                log.deleted
                    .get(uidl)
                    .is_some_and(|at| policy::purge_due(now, &policy, *at))
            })
            .collect();
        report.purged = due.len();
        if dry_run {
            return Ok(report);
        }
        if !expired.is_empty() {
            let commit =
                commit::commit(maildir, &messages, &expired, policy.restore_days > 0, now)?;
            if commit.unlogged {
                tracing::warn!(%user, "expired messages are in the restore area, but their removal was not logged");
            }
            if commit.failed > 0 {
                tracing::warn!(
                    %user,
                    failed = commit.failed,
                    "some expired messages could not be removed"
                );
            }
        }
        let mut late = Vec::new();
        for (_, uidl) in &removed {
            if !log.deleted.contains_key(uidl) {
                late.push(retention::Record::Deleted(uidl.clone(), now));
            }
        }
        maildir.append_log(&late)?;
        if let Some(area) = maildir.restore_area(false)?
            && !due.is_empty()
        {
            for (file, _) in &due {
                match rustix::fs::unlinkat(area.fd(Sub::Cur), file, rustix::fs::AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => {
                        return Err(io_error(
                            format_args!("purging {}", area.dir(Sub::Cur).join(file).display()),
                            e.into(),
                        ));
                    }
                }
            }
            area.sync(Sub::Cur)?;
        }
        // Keep the log small: once it is mostly records of messages that no
        // longer exist, rewrite it without them.
        let log = maildir.load_log()?;
        if log.lines > 64 {
            let live: std::collections::HashSet<String> = maildir
                .scan()?
                .into_iter()
                .map(|m| m.uidl.into_string())
                .chain(maildir.list_restore_area()?.into_iter().map(|(_, u)| u))
                .collect();
            let live_entries = log
                .retrieved
                .keys()
                .chain(log.deleted.keys())
                .filter(|u| live.contains(*u))
                .count();
            if log.lines > 2 * live_entries {
                maildir.compact_log(&log, &|u| live.contains(u))?;
            }
        }
        Ok(report)
    }

}

impl MailstoreAdmin for MaildirStore {
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
                // (renameat moves the link itself, but it has no business
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
                rustix::fs::renameat_with(
                    dir.fd(sub),
                    &file,
                    inbox.fd(Sub::New),
                    plain.as_str(),
                    rustix::fs::RenameFlags::NOREPLACE,
                )
                .map_err(|e| io_error(format_args!("releasing {}", file.to_string_lossy()), e.into()))?;
                inbox.sync(Sub::New)?;
                dir.sync(sub)?;
                inbox.forget_usage();
                return Ok(inbox.dir(Sub::New).join(plain).display().to_string());
            }
        }
        Err(StoreError::Vanished(format!("{folder}/{uidl}")))
    }

    /// Brings messages back from the restore area into `cur/`, with their
    /// original names and so their original UIDLs; only those removed at
    /// or after `since`, if given. Their retention clock starts afresh.
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`] while a session holds the maildrop;
    /// [`StoreError::Io`] on filesystem errors.
    fn restore(
        &self,
        user: &str,
        since: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let maildir = self.maildir(user)?;
        let _lock = self.locks.acquire(maildir.lock_key()?, maildir.path(), lock::Holder::Maintenance)?;
        let log = maildir.load_log()?;
        let Some(area) = maildir.restore_area(false)? else {
            return Ok(Vec::new());
        };
        let mut restored = Vec::new();
        let mut records = Vec::new();
        for (file, uidl) in maildir.list_restore_area()? {
            let removed_at = log.deleted.get(&uidl).copied();
            if let (Some(since), Some(at)) = (since, removed_at)
                && at < since
            {
                continue;
            }
            let from = area.dir(Sub::Cur).join(&file);
            match rustix::fs::renameat_with(
                area.fd(Sub::Cur),
                &file,
                maildir.fd(Sub::Cur),
                &file,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    records.push(retention::Record::Restored(uidl.clone(), now));
                    restored.push(uidl);
                }
                Err(e) => {
                    return Err(io_error(
                        format_args!("restoring {}", from.display()),
                        e.into(),
                    ));
                }
            }
        }
        if !restored.is_empty() {
            maildir.forget_usage();
            maildir.sync(Sub::Cur)?;
            area.sync(Sub::Cur)?;
            maildir.append_log(&records)?;
        }
        Ok(restored)
    }

    /// The messages in `user`'s restore area.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] on filesystem errors.
    fn removed_messages(&self, user: &str) -> Result<Vec<RemovedMessage>, StoreError> {
        let maildir = self.maildir(user)?;
        let log = maildir.load_log()?;
        Ok(maildir
            .list_restore_area()?
            .into_iter()
            .map(|(_, uidl)| RemovedMessage {
                removed_at: log.deleted.get(&uidl).copied(),
                uidl,
            })
            .collect())
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

    /// Removes every message of `user` (into the restore area when the
    /// policy has a window). Refuses while a session holds the maildrop.
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`], or filesystem errors.
    fn purge(&self, user: &str, now: SystemTime) -> Result<CommitReport, StoreError> {
        let maildir = self.maildir(user)?;
        let _lock = self.locks.acquire(maildir.lock_key()?, maildir.path(), lock::Holder::Maintenance)?;
        let messages = maildir.scan()?;
        let all: Vec<usize> = (0..messages.len()).collect();
        let aside = self.policies.load().retention.for_user(user).restore_days > 0;
        commit::commit(&maildir, &messages, &all, aside, now)
    }
}

/// The Maildir++ folder directory name for `folder` (`.<folder>`).
/// Names are checked strictly: they come from Sieve scripts.
fn folder_dir_name(folder: &str) -> Result<String, StoreError> {
    let ok = !folder.is_empty()
        && folder.len() <= 255
        && !folder.starts_with('.')
        && !folder.contains("..")
        && !folder.eq_ignore_ascii_case("INBOX")
        && folder.chars().all(|c| c.is_alphanumeric() || " _-+.@".contains(c));
    if !ok {
        return Err(StoreError::InvalidFolder(folder.to_owned()));
    }
    Ok(format!(".{folder}"))
}

/// The key of the Maildir file `name` in `sub`: `new/<name>` or
/// `cur/<name>`, the name's bytes as they are (maildir(5) tells readers not
/// to assume anything about names other programs write, not even UTF-8).
pub(crate) fn maildir_key(sub: Sub, name: &OsStr) -> MessageKey {
    use std::os::unix::ffi::OsStrExt;
    let mut bytes = Vec::with_capacity(4 + name.len());
    bytes.extend_from_slice(sub.as_str().as_bytes());
    bytes.push(b'/');
    bytes.extend_from_slice(name.as_bytes());
    MessageKey::new(bytes)
}

/// Reading a [`MessageKey`] this backend made back into its parts.
pub(crate) trait MaildirKey {
    /// The subdirectory and file name. A key another backend made (a caller
    /// bug) reads as a name in `cur/` that does not exist, so it is simply
    /// [`StoreError::Vanished`].
    fn as_maildir(&self) -> (Sub, &OsStr);
}

impl MaildirKey for MessageKey {
    fn as_maildir(&self) -> (Sub, &OsStr) {
        use std::os::unix::ffi::OsStrExt;
        let bytes = self.as_bytes();
        let (sub, name) = match bytes.split_at_checked(4) {
            Some((b"new/", name)) => (Sub::New, name),
            Some((b"cur/", name)) => (Sub::Cur, name),
            _ => (Sub::Cur, &b"/"[..]),
        };
        (sub, OsStr::from_bytes(name))
    }
}

/// The Maildir subdirectories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Sub {
    Tmp,
    New,
    Cur,
}

impl Sub {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Sub::Tmp => "tmp",
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// THE errno table (architecture rule 5): every `io::Error` leaving the
/// Maildir backend passes through here.
///
/// `ENOSPC` and `EDQUOT` become [`StoreError::DiskFull`] so that LMTP can
/// answer `452 4.3.1` (RFC 3463: mail system full) instead of a generic
/// temporary failure, as Postfix's `mbox_dsn()` and Dovecot's
/// `MAIL_ERROR_NOQUOTA` do. Everything else, `EACCES` included, is a
/// temporary [`StoreError::Io`] carrying what we were doing and where: an
/// admin can fix permissions and the MTA will retry.
pub(crate) fn io_error(context: impl fmt::Display, err: io::Error) -> StoreError {
    match err.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            StoreError::DiskFull(format!("{context}: {err}"))
        }
        _ => StoreError::Io {
            context: context.to_string(),
            source: err,
        },
    }
}

/// Opens the message file `name` in `dir` read-only, refusing symlinks
/// (a file we did not write must not redirect a session to another
/// user's mail).
fn open_read(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
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

/// Makes a directory's entries durable: after a rename or unlink, the
/// change is only on disk once the directory itself is fsynced (the step
/// `staktrace/maildir` misses; Dovecot's `maildir_transaction_fsync_dirs`).
fn fsync_dir(path: &Path) -> Result<(), StoreError> {
    let sync = || -> io::Result<()> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fsync(&fd)?;
        Ok(())
    };
    sync().map_err(|e| io_error(format_args!("fsync {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use rustix::io::Errno;

    use super::*;

    fn os_error(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.raw_os_error())
    }

    #[test]
    fn errno_table() {
        for full in [Errno::NOSPC, Errno::DQUOT] {
            let err = io_error("writing /m/tmp/x", os_error(full));
            assert!(
                matches!(&err, StoreError::DiskFull(c) if c.contains("/m/tmp/x")),
                "{err:?}"
            );
            assert!(err.is_temporary());
        }
        let err = io_error("opening /m/new", os_error(Errno::ACCESS));
        match &err {
            StoreError::Io { context, source } => {
                assert_eq!(context, "opening /m/new");
                assert_eq!(source.kind(), io::ErrorKind::PermissionDenied);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.is_temporary());
    }

    #[test]
    fn open_or_create_makes_parents_and_refuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/Maildir");
        let md = Maildir::open_or_create(&deep).unwrap();
        assert_eq!(md.path(), deep);
        assert!(std::fs::metadata(deep.join("cur")).unwrap().is_dir());
        // Idempotent.
        Maildir::open_or_create(&deep).unwrap();

        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            Maildir::open_or_create(&file),
            Err(StoreError::Io { .. })
        ));
    }
}
