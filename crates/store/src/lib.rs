//! Mail storage for pobox: the [`Mailstore`] / [`Mailbox`] traits and the
//! Maildir backend ([`MaildirStore`]).
//!
//! # What this crate does
//!
//! * Delivers messages into a user's maildrop ([`Mailstore::deliver`]), the
//!   only code in pobox that creates message files (architecture rule 6).
//! * Opens a maildrop for one POP3 session ([`Mailstore::open`]), for the
//!   user an [`Authenticated`] proof names: takes the
//!   RFC 1939 §8 exclusive lock without waiting, snapshots the message list
//!   with the exact octet counts `LIST` must report (RFC 1939 §5, counted with
//!   CRLF line endings) and the persistent `UIDL` identifiers (RFC 1939 §7).
//! * Streams stored messages back ([`Mailbox::open_message`]) and applies the
//!   POP3 UPDATE state ([`Mailbox::commit`]): removes exactly the messages the
//!   client marked, nothing else.
//! * Gives the fetcher an idempotent, name-keyed delivery
//!   ([`Maildir::deliver_named`]) so re-downloads after a crash do not
//!   duplicate mail.
//!
//! # What this crate does NOT do
//!
//! * No network and no protocol: CRLF wire encoding, dot-stuffing and `TOP`
//!   belong to `pobox-proto`; sessions, timeouts and `[IN-USE]` replies to
//!   `pobox-server`.
//! * No authentication. [`Mailstore::open`], the one call a network client
//!   reaches, takes an [`Authenticated`] (from `pobox-identity`) that only
//!   `pobox-auth` mints, so a session cannot open a maildrop without a
//!   login. The other per-user calls take a plain `&str`: their user names
//!   come from the MTA (delivery, quota checks at RCPT), the retention
//!   timer, or the local admin (`pobox mailbox`, `pobox user`, `pobox
//!   import`), who is trusted by running on the host. The Maildir backend
//!   re-checks every name only as defence in depth.
//! * No message parsing: bytes are stored as received, apart from line-ending
//!   normalisation to LF (the classic Maildir format).
//! * No async: see below.
//!
//! # Why the traits are synchronous
//!
//! Every operation here is a handful of blocking filesystem calls (`open`,
//! `read`, `fsync`, `rename`), and Linux offers no useful async file I/O for
//! them, so an async trait would only hide a thread hop. The async server
//! therefore calls this crate inside `tokio::task::spawn_blocking`, and a
//! message body is read through a plain [`std::io::Read`] in constant memory.
//! The network backend (PostgreSQL, crate `pobox-store-pg`) implements
//! the *same* synchronous traits on an async client driven by a runtime
//! of its own (`block_on` from the blocking thread). Keeping the trait sync keeps this crate a leaf
//! with no tokio dependency, which CI checks with `cargo tree`.
//!
//! # Layout
//!
//! * `lib.rs`: the port: the traits ([`Mailstore`], [`Mailbox`],
//!   [`MailstoreAdmin`]), the neutral value types and [`StoreError`]. No
//!   backend's shapes (paths, file names) appear here.
//! * `retention.rs`, `quota.rs`: the backend-neutral policies;
//!   `policies.rs`: the one holder of them every backend uses (a reload
//!   replaces all three at once).
//! * `stamp.rs`: [`stamp::FileStamp`], "has this file changed" for caches.
//! * `maildir/`: the Maildir backend (its `mod.rs` maps its files).
//! * `memory.rs` (feature `memory`): [`MemoryStore`], the in-memory
//!   backend the behaviour suite (`tests/suite/mod.rs`, run by
//!   `tests/behaviour.rs` and by `pobox-store-pg`'s) runs beside Maildir
//!   and PostgreSQL.
//! * `history.rs`: the per-user login history (which credential took what).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::borrow::Borrow;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

pub mod history;
pub mod maildir;
#[cfg(feature = "memory")]
mod memory;
pub mod policies;
pub mod quota;
pub mod retention;
pub mod stamp;

pub use maildir::{
    AssignOutcome, BaseIndex, InvalidMailLocation, ListingCacheStats, MailLocation, Maildir,
    MaildirStore, NamedDelivery, UserImport, wire_size_of,
};
#[cfg(feature = "memory")]
pub use memory::MemoryStore;

/// The proof of authentication [`Mailstore::open`] takes (`pobox-identity`).
pub use pobox_identity::Authenticated;

/// A storage backend holding the maildrops of many users.
///
/// Implementations are shared by every session of the server (hence
/// `Send + Sync + 'static`) and are called from blocking threads; see the
/// crate documentation for why the trait is synchronous.
pub trait Mailstore: Send + Sync + 'static {
    /// Opens the maildrop of the user `login` names, exclusively, for one
    /// POP3 session.
    ///
    /// Only `pobox-auth` mints an [`Authenticated`], so this cannot be
    /// called for a user who did not log in; a backend opens exactly
    /// `login.user()`.
    ///
    /// ```compile_fail
    /// # fn f(store: &dyn pobox_store::Mailstore) {
    /// store.open("alice"); // a bare name is not a login
    /// # }
    /// ```
    ///
    /// ```
    /// # // The same call with a proof compiles (tests' constructor here).
    /// # fn f(store: &dyn pobox_store::Mailstore) {
    /// # let login = pobox_identity::Authenticated::for_tests("alice");
    /// let mailbox = store.open(&login);
    /// # }
    /// ```
    ///
    /// Takes the maildrop lock **without waiting** (RFC 1939 §8: the server
    /// answers `-ERR` at once if it cannot get exclusive access), then
    /// snapshots the message list. Message numbers, sizes and UIDLs are fixed
    /// for the rest of the session. The Maildir backend creates the maildrop
    /// (`tmp/`, `new/`, `cur/`, mode 0700) if it does not exist yet, so a
    /// user who never received mail sees an empty maildrop.
    ///
    /// Login-time retention happens here, under the lock just taken and
    /// before the snapshot, when the user's policy can expire anything:
    /// mail retrieved N days ago or older than `max_age` is removed as
    /// [`expire`](Mailstore::expire) would, so it is never offered again
    /// ([`Mailbox::expired_at_open`] says what went). A failure of that
    /// expiry is logged and the maildrop opens all the same.
    ///
    /// Dropping the returned [`Mailbox`] without calling
    /// [`Mailbox::commit`] releases the lock and changes nothing (RFC 1939
    /// §6: no UPDATE when the connection is lost).
    ///
    /// # Errors
    ///
    /// * [`StoreError::InUse`] if another session holds the lock. Brief
    ///   maintenance (an expiry run, a restore) is waited for, for a
    ///   bounded time, rather than refused.
    /// * [`StoreError::NoSuchUser`] if the user name cannot name a maildrop.
    /// * [`StoreError::Io`] / [`StoreError::DiskFull`] on filesystem errors.
    fn open(&self, login: &Authenticated) -> Result<Box<dyn Mailbox>, StoreError>;

    /// Delivers one message to `user`'s maildrop.
    ///
    /// This is the only way messages enter a store. The message is streamed
    /// in constant memory; line endings are normalised as the backend
    /// documents. The message counts as delivered only when this returns
    /// `Ok`: by then the data and the directory entry are on stable storage
    /// (`rust-deps.md` §7 trap 11), so an LMTP `250` may be sent.
    ///
    /// # Errors
    ///
    /// * [`StoreError::TooLarge`] if the message exceeds the configured limit
    ///   (nothing is left behind).
    /// * [`StoreError::DiskFull`] on `ENOSPC`/`EDQUOT` (LMTP `452 4.3.1`).
    /// * [`StoreError::NoSuchUser`] if the user name cannot name a maildrop.
    /// * [`StoreError::Io`] on any other I/O error, including a read error
    ///   from `message`.
    fn deliver(&self, user: &str, message: &mut dyn io::Read) -> Result<Delivered, StoreError>;

    /// Applies `user`'s retention policy at `now` (see [`retention`]):
    /// removes expired messages and purges the restore area. Never touches
    /// a maildrop that a session holds.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] / [`StoreError::DiskFull`] on filesystem errors.
    fn expire(&self, user: &str, now: SystemTime, dry_run: bool) -> Result<ExpireReport, StoreError>;

    /// `user`'s retention policy.
    fn policy(&self, user: &str) -> retention::Policy;

    /// The retention policies in use now, global and per user: the one
    /// copy of them (the server derives CAPA `EXPIRE` and `LOGIN-DELAY`
    /// from it; a reload replaces it in the store).
    fn retention(&self) -> std::sync::Arc<retention::RetentionConfig>;

    /// Delivers into one of `user`'s folders (Sieve `fileinto`), which POP3
    /// does not show. The same single writer and durability as
    /// [`deliver`](Mailstore::deliver).
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidFolder`] for an unusable name; otherwise as
    /// [`deliver`](Mailstore::deliver).
    fn deliver_to_folder(&self, user: &str, folder: &str, message: &mut dyn io::Read) -> Result<Delivered, StoreError>;

    /// `user`'s quota limits; no disk access.
    fn quota(&self, user: &str) -> quota::Quota;

    /// Whether `user` is already at or over a quota limit
    /// ([`Quota::is_full`](quota::Quota::is_full)): `Some(usage)` if so.
    /// A user without a quota is `None` without any disk access; otherwise
    /// the usage is the one delivery uses (Maildir++ `maildirsize`, which
    /// may be rescanned), so call it from a blocking thread.
    ///
    /// # Errors
    ///
    /// Filesystem errors reading the usage.
    fn quota_full(&self, user: &str) -> Result<Option<quota::Usage>, StoreError>;

    /// Whether one more message of `size` octets would put `user` over a
    /// quota limit ([`Quota::exceeded_by`](quota::Quota::exceeded_by)):
    /// `Some(usage)` if so. For a size announced before the message
    /// arrives (the Postfix policy service's `size=`); the same usage and
    /// cost as [`quota_full`](Mailstore::quota_full), which is this check
    /// for a size of 1.
    ///
    /// # Errors
    ///
    /// Filesystem errors reading the usage.
    fn quota_exceeded_by(&self, user: &str, size: u64) -> Result<Option<quota::Usage>, StoreError>;

    /// Replaces the size limit, the retention and the quota policies
    /// (a configuration reload). Operations under way are not affected:
    /// an open maildrop keeps the retention policy it was opened with.
    fn set_policies(&self, max_size: Option<u64>, retention: retention::RetentionConfig, quota: quota::QuotaConfig);

    /// A cheap check that the store can be reached now, for the health
    /// endpoint a load balancer probes. Blocking, like every method here;
    /// a networked backend bounds it with a short timeout. The default is
    /// `Ok(())`: a local store (Maildir, memory) has nothing to reach that
    /// every session does not already touch.
    ///
    /// # Errors
    ///
    /// A temporary error when the backend cannot answer (a database that
    /// is down or does not answer in time).
    fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The operations `pobox mailbox` and `pobox user` run on a store while
/// the server may be serving it: listings, the restore area, releasing
/// quarantined mail, usage. Separate from [`Mailstore`] because the
/// server's sessions never need them. Each takes the maildrop lock where it
/// changes anything, so it never disturbs a session.
pub trait MailstoreAdmin: Mailstore {
    /// A lock-free snapshot of `user`'s messages with their retrieval
    /// times, in [`Mailbox::messages`] order.
    ///
    /// # Errors
    ///
    /// Backend errors ([`StoreError::Io`] and the like).
    fn inspect(&self, user: &str) -> Result<Vec<MessageInfo>, StoreError>;

    /// The first `limit` stored bytes of a message from
    /// [`inspect`](MailstoreAdmin::inspect) (enough for its header). No lock.
    ///
    /// # Errors
    ///
    /// [`StoreError::Vanished`] if the message is gone; backend errors.
    fn head(&self, user: &str, info: &MessageInfo, limit: usize) -> Result<Vec<u8>, StoreError>;

    /// The messages in `user`'s restore area.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn removed_messages(&self, user: &str) -> Result<Vec<RemovedMessage>, StoreError>;

    /// Brings messages back from the restore area into the maildrop, with
    /// their original UIDLs; only those removed at or after `since`, if
    /// given. Their retention clock starts afresh at `now`. Returns the
    /// UIDLs restored.
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`] while a session holds the maildrop; backend
    /// errors.
    fn restore(
        &self,
        user: &str,
        since: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError>;

    /// Removes every message of `user` (into the restore area when the
    /// policy has a window). Refuses while a session holds the maildrop.
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`]; backend errors.
    fn purge(&self, user: &str, now: SystemTime) -> Result<CommitReport, StoreError>;

    /// Moves message `uidl` from `folder` (say a Junk quarantine) into the
    /// maildrop as a new message, byte for byte, keeping its UIDL. Returns
    /// where it now lives, for the admin's output.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidFolder`], [`StoreError::Vanished`] if there is
    /// no such message; backend errors.
    fn release(&self, user: &str, folder: &str, uidl: &str) -> Result<String, StoreError>;

    /// `user`'s usage and quota.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn usage(&self, user: &str) -> Result<(quota::Usage, quota::Quota), StoreError>;

    /// Imports one message under a given UIDL and delivery time (export
    /// and import between backends, keeping UIDLs). Idempotent by UIDL:
    /// a message with that UIDL in the maildrop means
    /// [`ImportOutcome::AlreadyPresent`] and nothing is written. Durable
    /// before `Ok`. Not limited by size or quota (the mail was accepted
    /// once already) but counted in the usage. Takes the maildrop lock for
    /// the call, so it fails with [`StoreError::InUse`] while a session
    /// holds the maildrop.
    ///
    /// # Errors
    ///
    /// [`StoreError::InUse`]; [`StoreError::UidlRefused`] if another
    /// message cannot share the UIDL; backend errors (nothing partial is
    /// left behind).
    fn import_message(
        &self,
        user: &str,
        uidl: &Uidl,
        received: SystemTime,
        message: &mut dyn io::Read,
    ) -> Result<ImportOutcome, StoreError>;
}

/// What [`MailstoreAdmin::import_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The message was stored and is durable.
    Imported(Delivered),
    /// A message with this UIDL is already in the maildrop; nothing was
    /// written.
    AlreadyPresent,
}

/// One user's maildrop, opened exclusively for a POP3 session.
///
/// Obtained from [`Mailstore::open`]. Dropping it without [`commit`]
/// releases the lock and leaves the maildrop untouched.
///
/// [`commit`]: Mailbox::commit
pub trait Mailbox: Send {
    /// The user whose maildrop this is.
    fn user(&self) -> &str;

    /// The snapshot taken at open time, ordered by delivery time (file
    /// modification time, then name).
    ///
    /// Fixed for the whole session: RFC 1939 §4 message numbers are indices
    /// into this slice plus one, and mail delivered during the session only
    /// shows up in the next one.
    fn messages(&self) -> &[MessageInfo];

    /// Opens message `index` (an index into [`messages`](Mailbox::messages))
    /// for reading its raw stored bytes.
    ///
    /// The bytes are as stored (for Maildir: LF line endings); the caller
    /// applies the RFC 1939 §3 wire encoding (CRLF, dot-stuffing), which
    /// yields exactly [`MessageInfo::size`] octets before the stuffing.
    ///
    /// # Errors
    ///
    /// * [`StoreError::NoSuchMessage`] if `index` is out of range.
    /// * [`StoreError::Vanished`] if the message was removed by another
    ///   program since the snapshot.
    /// * [`StoreError::Io`] on other I/O errors.
    fn open_message(&self, index: usize) -> Result<Box<dyn io::Read + Send>, StoreError>;

    /// The stored bytes of message `index`, read whole, but only if that
    /// cannot wait for a disk: the file's name resolves from the kernel's
    /// caches and its data is in the page cache. `None` when it would block,
    /// when the message holds more than `max` bytes, or on any error: the
    /// caller then reads it with [`open_message`](Mailbox::open_message) on
    /// a thread that may block. Lets an async server answer a RETR of a hot
    /// message without a hand-off to another thread.
    ///
    /// The default never reads (always `None`).
    fn read_if_cached(&self, index: usize, max: u64) -> Option<Vec<u8>> {
        let _ = (index, max);
        None
    }

    /// The retention policy the maildrop was opened with; a configuration
    /// reload during the session does not change it.
    fn policy(&self) -> &retention::Policy;

    /// What login-time expiry removed before the snapshot was taken
    /// ([`Mailstore::open`]), for metrics and logs.
    fn expired_at_open(&self) -> &ExpireReport;

    /// The indices [`commit`](Mailbox::commit) removes for `deleted` and
    /// `retrieved`, sorted and without duplicates: the ones marked deleted
    /// and, under RFC 2449 §6.7 `EXPIRE 0` (a policy of
    /// [`Days::After(0)`](retention::Days::After) for retrieved mail), every
    /// one retrieved in the session, whether or not the client sent DELE.
    /// The one place that rule lives; callers use it to record what an
    /// UPDATE will remove (the login history) before committing.
    fn removals(&self, deleted: &[usize], retrieved: &[usize]) -> Vec<usize> {
        let mut remove = deleted.to_vec();
        if self.policy().retrieved == retention::Days::After(0) {
            remove.extend_from_slice(retrieved);
        }
        remove.sort_unstable();
        remove.dedup();
        remove
    }

    /// Ends the session (RFC 1939 §6 UPDATE) and releases the lock.
    ///
    /// First durably records that the messages at `retrieved` were
    /// retrieved now, for those not recorded before (the first retrieval
    /// starts the retention clock); a failure there is logged, not an
    /// error: the messages are then simply kept longer. Then removes
    /// exactly [`removals(deleted, retrieved)`](Mailbox::removals) and
    /// nothing else. Backends may also record that the surviving messages
    /// have been seen (Maildir moves them from `new/` to `cur/`). A message
    /// that is already gone counts as removed. The lock is released whether
    /// this succeeds or fails.
    ///
    /// A session that ends without QUIT still calls this with empty
    /// `deleted`, so its retrievals count.
    ///
    /// # Errors
    ///
    /// * [`StoreError::NoSuchMessage`] if an index is out of range; nothing
    ///   is removed in that case.
    /// * [`StoreError::Io`] / [`StoreError::DiskFull`] if the removals could
    ///   not be made durable.
    ///
    /// Individual removals that fail are not errors: they are counted in
    /// [`CommitReport::failed`], and the server then answers
    /// `-ERR [SYS/TEMP] some deleted messages not removed`. Nor is a
    /// failure to write the retention log once messages are in the restore
    /// area: they are removed and restorable all the same (their restore
    /// window then starts at the next expiry run), and the report says so.
    fn commit(self: Box<Self>, deleted: &[usize], retrieved: &[usize]) -> Result<CommitReport, StoreError>;

    /// Durably records that the messages at `indices` were retrieved at
    /// `when`, for those not recorded before. [`commit`](Mailbox::commit)
    /// does this itself with the time of the UPDATE; this is for tools and
    /// tests that need another time.
    ///
    /// # Errors
    ///
    /// [`StoreError::NoSuchMessage`] for an index out of range;
    /// [`StoreError::Io`] / [`StoreError::DiskFull`] if the record could
    /// not be made durable.
    fn record_retrievals(&mut self, indices: &[usize], when: SystemTime) -> Result<(), StoreError>;
}

/// One message in a maildrop snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// The persistent unique identifier (RFC 1939 §7 `UIDL`).
    pub uidl: Uidl,
    /// The exact number of octets `RETR` sends before dot-stuffing: stored
    /// bytes with every bare LF counted as CRLF, and a final CRLF included
    /// if the message does not end with a line ending (RFC 1939 §5 `LIST`).
    pub size: u64,
    /// The backend's handle for the message (for Maildir: the file name
    /// and whether it lives in `new/` or `cur/`).
    pub key: MessageKey,
    /// When the message was delivered (the file's modification time for
    /// Maildir, as maildir(5) readers use it).
    pub received: SystemTime,
    /// When a POP3 session first retrieved it (RETR), if ever; the clock of
    /// the `retrieved` retention rule. `None` from a plain scan.
    pub retrieved: Option<SystemTime>,
}

/// A unique-id listing value (RFC 1939 §7): 1 to 70 characters in the range
/// 0x21 to 0x7E.
///
/// Backends guarantee it is stable across sessions (even ones that end
/// without UPDATE) and never reused for another message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uidl(String);

impl Uidl {
    /// The longest UIDL RFC 1939 §7 allows.
    pub const MAX_LEN: usize = 70;

    /// The identifier as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the identifier, returning the inner string.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }

    /// True if `s` is a valid UIDL: 1..=70 octets, each in 0x21..=0x7E.
    #[must_use]
    pub fn is_valid(s: &str) -> bool {
        is_valid_uidl(s.as_bytes())
    }
}

/// The folder names every backend accepts (Sieve `fileinto`, checked
/// strictly because they come from users' scripts): 1 to 255 characters,
/// letters, digits and ` _-+.@`, not starting with `.`, no `..`, not
/// `INBOX` (the maildrop itself).
///
/// # Errors
///
/// [`StoreError::InvalidFolder`] for any other name.
pub fn check_folder_name(folder: &str) -> Result<(), StoreError> {
    let ok = !folder.is_empty()
        && folder.len() <= 255
        && !folder.starts_with('.')
        && !folder.contains("..")
        && !folder.eq_ignore_ascii_case("INBOX")
        && folder.chars().all(|c| c.is_alphanumeric() || " _-+.@".contains(c));
    if !ok {
        return Err(StoreError::InvalidFolder(folder.to_owned()));
    }
    Ok(())
}

/// True if `b` is 1..=70 octets, each in 0x21..=0x7E (RFC 1939 §7).
pub(crate) fn is_valid_uidl(b: &[u8]) -> bool {
    (1..=Uidl::MAX_LEN).contains(&b.len()) && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

impl fmt::Display for Uidl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Uidl {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets a `HashSet<Uidl>` (the fetcher's seen list) be queried with `&str`.
impl Borrow<str> for Uidl {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<Uidl> for String {
    fn from(u: Uidl) -> Self {
        u.0
    }
}

impl TryFrom<String> for Uidl {
    type Error = InvalidUidl;

    /// # Errors
    ///
    /// [`InvalidUidl`] unless the string is 1..=70 octets in 0x21..=0x7E.
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if is_valid_uidl(s.as_bytes()) {
            Ok(Uidl(s))
        } else {
            Err(InvalidUidl(s))
        }
    }
}

impl TryFrom<&str> for Uidl {
    type Error = InvalidUidl;

    /// # Errors
    ///
    /// [`InvalidUidl`] unless the string is 1..=70 octets in 0x21..=0x7E.
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Uidl::try_from(s.to_owned())
    }
}

/// A string rejected as a [`Uidl`] (empty, longer than 70 octets, or with an
/// octet outside 0x21..=0x7E). Carries the rejected string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid UIDL {0:?}: RFC 1939 requires 1 to 70 characters in 0x21..=0x7E")]
pub struct InvalidUidl(pub String);

/// An opaque handle to a stored message, meaningful only to the backend that
/// produced it: bytes the backend chose (for Maildir, `new/<file>` or
/// `cur/<file>`; a database backend might use a row id). No caller may
/// interpret them.
///
/// Callers address messages by index ([`Mailbox::open_message`]); the key is
/// exposed for logging and for tools that want to tell messages apart.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageKey(Box<[u8]>);

impl MessageKey {
    /// A key made of backend-chosen bytes; only a backend calls this.
    #[must_use]
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        MessageKey(bytes.into().into_boxed_slice())
    }

    /// The backend's bytes, for the backend that made the key.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Shows the key's bytes as text (lossy for non-UTF-8 bytes), for logs.
impl fmt::Display for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// The result of a successful delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The new message's UIDL, as [`Mailbox::messages`] will report it.
    pub uidl: Uidl,
    /// The message's POP3 size, with the same meaning as
    /// [`MessageInfo::size`] (CRLF octets, final CRLF included).
    pub size: u64,
    /// Where the message now lives, for logs and admin output (for
    /// Maildir: the path of the file in `new/`). Not an address callers
    /// can use: read messages through [`Mailstore::open`].
    pub location: String,
}

/// What [`Mailstore::expire`] did (or would do, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpireReport {
    /// Messages that expired: UIDL and why.
    pub expired: Vec<(String, retention::ExpiryReason)>,
    /// Messages purged from the restore area (their window is over).
    pub purged: usize,
    /// True if the maildrop was in use and left alone.
    pub skipped_in_use: bool,
}

/// A message in the restore area ([`MailstoreAdmin::removed_messages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedMessage {
    /// Its UIDL, the same it had before removal.
    pub uidl: String,
    /// When it was removed, if the backend knows.
    pub removed_at: Option<SystemTime>,
}


/// What [`Mailbox::commit`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Messages removed, including ones that were already gone.
    pub removed: usize,
    /// Of the removed messages, those moved into the restore area (an
    /// admin can bring them back) rather than deleted.
    pub restorable: usize,
    /// True if the retention log could not record that messages went to
    /// the restore area (a full disk): they stay restorable, and their
    /// restore window starts at the next expiry run instead of now.
    pub unlogged: bool,
    /// Messages marked for deletion that could not be removed. If non-zero
    /// the server answers `-ERR [SYS/TEMP] some deleted messages not removed`
    /// (RFC 1939 §6 QUIT, RFC 3206).
    pub failed: usize,
}

/// Everything that can go wrong in a store operation.
///
/// [`Display`](fmt::Display) is for logs: it can contain paths and OS error
/// text. Send [`StoreError::public_message`] to clients instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The maildrop lock is held by another session (RFC 2449 `[IN-USE]`).
    #[error("maildrop is locked by another session")]
    InUse,
    /// The user has no maildrop, or the name cannot name one.
    #[error("no maildrop for user {0:?}")]
    NoSuchUser(String),
    /// The message exceeds the configured maximum size (in POP3 octets).
    #[error("message exceeds the maximum size of {limit} octets")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// A message index outside the session's snapshot (a caller bug).
    #[error("no message at index {index}")]
    NoSuchMessage {
        /// The offending index.
        index: usize,
    },
    /// The message file disappeared since the snapshot (removed by another
    /// program). Carries the message's key for the log.
    #[error("message {0} has vanished")]
    Vanished(String),
    /// A name given to the store is malformed (for example a
    /// [`Maildir::deliver_named`] base name with forbidden characters).
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// The filesystem is full or the user is over quota (`ENOSPC`,
    /// `EDQUOT`); LMTP `452 4.3.1`. Carries the failed operation and path.
    #[error("out of disk space or quota: {0}")]
    DiskFull(String),
    /// The user's quota would be exceeded (Maildir++ `maildirsize`).
    #[error("quota exceeded: {0}")]
    OverQuota(String),
    /// A folder name that cannot be used (Sieve `fileinto`).
    #[error("invalid folder name {0:?}")]
    InvalidFolder(String),
    /// A UIDL that another message in the maildrop already has (UIDLs
    /// are unique within a maildrop, RFC 1939 §7), or that is not a valid
    /// UIDL at all (1..=70 characters in 0x21..=0x7E).
    #[error("UIDL {uidl:?} refused: {reason}")]
    UidlRefused {
        /// The UIDL asked for.
        uidl: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A Maildir directory that must not be used: a symbolic link where a
    /// directory belongs, or one owned by someone else (see the Maildir
    /// backend's `dirs.rs`). Temporary, like other filesystem problems: an
    /// admin can fix it and the MTA will retry.
    #[error("refusing Maildir directory {}: {reason}", path.display())]
    Unsafe {
        /// The offending directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The session's hold on its maildrop ran out and another session
    /// may have taken it (a database backend's lease, renewed too late
    /// after a network or database outage). The UPDATE was refused as a
    /// whole: nothing was removed. Temporary: the client logs in again.
    #[error("maildrop lock lost before UPDATE; nothing was changed")]
    LeaseLost,
    /// Any other I/O error. Treated as temporary.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and on which path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// True if retrying later may succeed: POP3 `-ERR [SYS/TEMP]` or
    /// `[IN-USE]`, LMTP `4.x.x`. False means permanent: `[SYS/PERM]`,
    /// LMTP `5.x.x`.
    #[must_use]
    pub fn is_temporary(&self) -> bool {
        match self {
            StoreError::InUse
            | StoreError::LeaseLost
            | StoreError::DiskFull(_)
            | StoreError::Io { .. }
            | StoreError::Unsafe { .. } => true,
            StoreError::NoSuchUser(_)
            | StoreError::TooLarge { .. }
            | StoreError::NoSuchMessage { .. }
            | StoreError::Vanished(_)
            | StoreError::InvalidName(_)
            | StoreError::OverQuota(_)
            | StoreError::InvalidFolder(_)
            | StoreError::UidlRefused { .. } => false,
        }
    }

    /// Text that is safe to show a client: no paths, no OS detail (the
    /// split Dovecot makes with `MAIL_ERRSTR_CRITICAL_MSG`).
    #[must_use]
    pub fn public_message(&self) -> &'static str {
        match self {
            StoreError::InUse => "maildrop already locked by another session",
            StoreError::LeaseLost => "maildrop lock lost, no messages deleted; try again",
            StoreError::NoSuchUser(_) => "no such mailbox",
            StoreError::TooLarge { .. } => "message too large",
            StoreError::NoSuchMessage { .. } => "no such message",
            StoreError::Vanished(_) => "message was removed by another program",
            StoreError::InvalidName(_) => "invalid name",
            StoreError::DiskFull(_) => "mailbox full, try again later",
            StoreError::OverQuota(_) => "mailbox over quota",
            StoreError::InvalidFolder(_) => "invalid folder name",
            StoreError::UidlRefused { .. } => "UIDL refused",
            StoreError::Io { .. } | StoreError::Unsafe { .. } => {
                "internal storage error, try again later"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uidl_accepts_rfc1939_range() {
        assert!(Uidl::try_from("whqtswO00WBw418f9t5JxYwZ").is_ok());
        assert!(Uidl::try_from("!").is_ok());
        assert!(Uidl::try_from("~".repeat(70)).is_ok());
    }

    #[test]
    fn uidl_rejects_empty_long_space_and_control() {
        assert!(Uidl::try_from("").is_err());
        assert!(Uidl::try_from("a".repeat(71)).is_err());
        assert!(Uidl::try_from("a b").is_err());
        assert!(Uidl::try_from("a\x7f").is_err());
        assert!(Uidl::try_from("é").is_err());
        let err = Uidl::try_from("a b").unwrap_err();
        assert_eq!(err.0, "a b");
    }

    #[test]
    fn error_classes() {
        assert!(StoreError::InUse.is_temporary());
        assert!(StoreError::DiskFull("x".into()).is_temporary());
        assert!(!StoreError::TooLarge { limit: 1 }.is_temporary());
        assert!(!StoreError::NoSuchUser("u".into()).is_temporary());
        assert!(!StoreError::Vanished("k".into()).is_temporary());
        let io = StoreError::Io {
            context: "open /x".into(),
            source: io::Error::other("boom"),
        };
        assert!(io.is_temporary());
        assert!(!io.public_message().contains("/x"));
    }
}
