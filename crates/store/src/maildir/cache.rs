//! The listing cache: the scan of a big maildrop's `new/` and `cur/`, kept
//! between sessions while the directories are unchanged.
//!
//! Listing 100,000 messages costs a `getdents` pass and a `stat` per file
//! (hundreds of milliseconds); a session that finds the maildrop as the
//! previous one left it needs none of that. Only [`MaildirStore::open`]
//! uses the cache; expiry, delivery, quota and admin listings always scan.
//!
//! # When a cached listing is valid
//!
//! An entry holds, for `new/` and `cur/`, the device, inode, size, and
//! mtime and ctime (nanoseconds) of the directory. Every create, unlink or
//! rename inside a directory sets its mtime and ctime to the current kernel
//! time, so an entry is used only if both directories still stat exactly
//! as stored. But those times come from a coarse clock (a tick of several
//! milliseconds, or a second or two on some filesystems): a change made in
//! the same tick as the previous one leaves the stamps as they were. So a
//! scan is kept only if, like Dovecot's rule for its uidlist, the
//! directories had been still for a while:
//!
//! 1. `scan_started` is read before anything else, and each directory is
//!    stat'ed (through the descriptor it is then read from) before it is
//!    read;
//! 2. both are stat'ed again after both were read; any difference means
//!    something changed during the scan: not kept;
//! 3. both directories' mtime and ctime must be at least [`SETTLED`] older
//!    than `scan_started`. Then any change made after the scan started is
//!    stamped with a time later than the stored ones (the clock has moved
//!    past them by more than a tick), so the next `open` sees different
//!    stamps and scans afresh.
//!
//! The same holds for the UIDL overrides file `pobox-uidls` (see
//! `uidls.rs`), stat'ed before it is read: an entry is used only while it
//! stats as it did (or is still missing).
//!
//! A maildrop that changed less than [`SETTLED`] before a scan is simply
//! scanned again next time. The ctime matters too: setting a directory's
//! mtime back (`touch -d`, `utimensat`) changes its ctime, which cannot be
//! set. What the stamps cannot see is a message file changed in place
//! (Maildir files are never rewritten; the cached mtime and size of such a
//! file stay as first seen, as in Dovecot's index), and timestamps from a
//! server whose clock runs behind ours (NFS).
//!
//! [`MaildirStore::open`]: super::MaildirStore
//!
//! # Bounds
//!
//! Maildrops with fewer than [`MIN_MESSAGES`] messages (the default) are
//! not kept: they scan quickly, and caching them would cost memory for
//! every idle user. The messages kept in all are bounded (by default
//! [`DEFAULT_MAX_MESSAGES`], roughly 200 bytes each); the least recently
//! used maildrops are dropped to stay under the bound.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use super::scan;
use crate::stamp::FileStamp;
use super::{Maildir, Sub};
use crate::{MessageInfo, StoreError};

/// How long both directories must have been unchanged before a scan for
/// it to be kept: twice the coarsest timestamp granularity of the
/// filesystems a Maildir lives on (1 s on ext3; nanoseconds with a tick of
/// a few milliseconds on ext4, XFS, Btrfs, tmpfs).
pub(super) const SETTLED: Duration = Duration::from_secs(2);

/// Smaller maildrops are not cached, by default.
pub const MIN_MESSAGES: usize = 1024;

/// The default bound on the messages cached across all maildrops.
pub const DEFAULT_MAX_MESSAGES: usize = 1_000_000;

/// Counters of the listing cache, for diagnostics and tests: nothing
/// depends on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListingCacheStats {
    /// Opens served from the cache.
    pub hits: u64,
    /// Opens that scanned (no entry, or a stale one).
    pub misses: u64,
    /// Scans kept in the cache.
    pub stored: u64,
    /// Entries dropped to stay under the bound.
    pub evicted: u64,
    /// Maildrops cached now.
    pub maildrops: usize,
    /// Messages cached now, across all maildrops.
    pub messages: usize,
}

/// The cache shared by every session of a [`MaildirStore`](super::MaildirStore).
pub(super) struct ListingCache {
    min_messages: usize,
    max_messages: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<PathBuf, Entry>,
    /// Incremented on every use: entries with the smallest `last_used`
    /// are the least recently used.
    clock: u64,
    stats: ListingCacheStats,
}

struct Entry {
    /// `[new/, cur/]`.
    stamps: [FileStamp; 2],
    /// `pobox-uidls` (`None`: there was none).
    uidls: Option<FileStamp>,
    /// With `retrieved: None` everywhere: retrieval times come from the
    /// retention log at each open.
    messages: Arc<Vec<MessageInfo>>,
    last_used: u64,
}

impl ListingCache {
    /// A cache of maildrops with at least `min_messages` messages, keeping
    /// at most `max_messages` messages in all (0: keeps nothing).
    pub(super) fn new(min_messages: usize, max_messages: usize) -> ListingCache {
        ListingCache {
            min_messages,
            max_messages,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent whatever panicked while it was held.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The listing of `md` (sorted as [`scan::scan`] sorts it, with
    /// `retrieved: None`), from the cache if still valid, else from a
    /// fresh scan that is kept if the rules in the module docs allow.
    /// Call with the maildrop lock held.
    ///
    /// # Errors
    ///
    /// As [`scan::scan`].
    pub(super) fn listing(&self, md: &Maildir) -> Result<Arc<Vec<MessageInfo>>, StoreError> {
        let path = md.path();
        if self.max_messages == 0 {
            return Ok(Arc::new(scan::scan(md)?));
        }
        // Stat outside the mutex; a failure just means "scan", which then
        // reports the error properly.
        let current = current_stamps(md);
        {
            let mut inner = self.lock();
            inner.clock += 1;
            let clock = inner.clock;
            let fresh = match (inner.entries.get_mut(path), current) {
                (Some(entry), Some((now, uidls))) if entry.stamps == now && entry.uidls == uidls => {
                    entry.last_used = clock;
                    Some(Arc::clone(&entry.messages))
                }
                _ => None,
            };
            match fresh {
                Some(messages) => {
                    inner.stats.hits += 1;
                    return Ok(messages);
                }
                None => {
                    inner.stats.misses += 1;
                    inner.remove(path);
                }
            }
        }
        let scan_started = SystemTime::now();
        let listing = scan::scan_listing(md)?;
        let messages = Arc::new(listing.messages);
        let size_fits = (self.min_messages..=self.max_messages).contains(&messages.len());
        if let Some(stamps) = listing.stamps
            && size_fits
            && stamps
                .iter()
                .chain(&listing.uidls)
                .all(|s| s.unchanged_since(scan_started, SETTLED))
        {
            let mut inner = self.lock();
            inner.insert(path, (stamps, listing.uidls), Arc::clone(&messages), self.max_messages);
        }
        Ok(messages)
    }

    pub(super) fn stats(&self) -> ListingCacheStats {
        self.lock().stats
    }
}

impl Inner {
    fn remove(&mut self, path: &Path) {
        if let Some(old) = self.entries.remove(path) {
            self.stats.messages -= old.messages.len();
            self.stats.maildrops -= 1;
        }
    }

    fn insert(
        &mut self,
        path: &Path,
        (stamps, uidls): ([FileStamp; 2], Option<FileStamp>),
        messages: Arc<Vec<MessageInfo>>,
        max: usize,
    ) {
        // Opens run under the maildrop lock, so there is no entry for
        // `path` now; removing is only for the accounting's sake.
        self.remove(path);
        let n = messages.len();
        while self.stats.messages + n > max {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            self.remove(&oldest);
            self.stats.evicted += 1;
        }
        self.clock += 1;
        self.entries.insert(
            path.to_owned(),
            Entry {
                stamps,
                uidls,
                messages,
                last_used: self.clock,
            },
        );
        self.stats.messages += n;
        self.stats.maildrops += 1;
        self.stats.stored += 1;
    }
}

/// The stamps of `md`'s `new/` and `cur/` now, through the handles the
/// scan reads them by, and of its UIDL overrides; `None` if any cannot be
/// stat'ed.
fn current_stamps(md: &Maildir) -> Option<([FileStamp; 2], Option<FileStamp>)> {
    let stamp = |sub: Sub| rustix::fs::fstat(md.fd(sub)).ok().map(|st| FileStamp::of_stat(&st));
    Some(([stamp(Sub::New)?, stamp(Sub::Cur)?], md.uidls_stamp().ok()?))
}

impl fmt::Debug for ListingCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListingCache")
            .field("min_messages", &self.min_messages)
            .field("max_messages", &self.max_messages)
            .field("stats", &self.stats())
            .finish()
    }
}
