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
//! | `cur/X,..:2,FLAGS` exists | delivered, seen by a POP3 session or a MUA | `deliver.rs` `place` (for UPDATE, restore), other MUAs |
//! | `tmp/X` older than 36 h | a crashed delivery; removed by the next `open` | `scan.rs` |
//!
//! `X` (the *base name*) never changes once chosen, so the UIDL derived from
//! it survives `new/` → `cur/` moves and flag changes (RFC 1939 §7).
//!
//! # Files, by concept
//!
//! * `mod.rs`: [`MailLocation`], [`Maildir`] (one directory's handles),
//!   message keys, the errno table.
//! * `store.rs`: [`MaildirStore`], its configuration and `open`.
//! * `mailbox.rs`: a session's maildrop: snapshot, reads, UPDATE.
//! * `deliver.rs`: THE writer: `deliver` (tmp → new) and `place` (every
//!   other move of a message file). `clippy.toml` bans rename APIs
//!   elsewhere; the two other `#[allow]`s replace metadata files
//!   (`maildirsize` in `quota.rs`, the retention log in `retention.rs`).
//! * `commit.rs`: which files an UPDATE moves or removes.
//! * `retention.rs`: the retention log, expiry, restore and purge.
//! * `admin.rs`: listings, heads, usage, releasing quarantined mail.
//! * `import.rs`, `uidls.rs`: importing maildrops with their UIDLs.
//! * `scan.rs`, `cache.rs`, `lock.rs`, `dirs.rs`, `name.rs`, `quota.rs`:
//!   listing, the listing cache, the maildrop lock, safe directory access,
//!   file names, Maildir++ quota.

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
mod store;
mod mailbox;
mod admin;
mod uidls;

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustix::fs::{Mode, OFlags};

use std::sync::Arc;

use crate::{
    Delivered, MessageInfo, MessageKey, StoreError,
};

pub use cache::{DEFAULT_MAX_MESSAGES as LISTING_CACHE_DEFAULT_MAX, ListingCacheStats, MIN_MESSAGES as LISTING_CACHE_MIN};
pub use import::{AssignOutcome, UserImport};
pub use crate::ImportOutcome;
pub use scan::wire_size_of;
pub use store::MaildirStore;

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
    fn into_session_root(self) -> Result<mailbox::SessionRoot, StoreError> {
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
        Ok(mailbox::SessionRoot { path: self.root, fd, owner })
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

/// The Maildir++ folder directory name for `folder` (`.<folder>`).
/// Names are checked strictly: they come from Sieve scripts.
fn folder_dir_name(folder: &str) -> Result<String, StoreError> {
    crate::check_folder_name(folder)?;
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
