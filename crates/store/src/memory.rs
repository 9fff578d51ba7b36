//! [`MemoryStore`]: the whole storage port held in memory (feature
//! `memory`).
//!
//! It exists to prove the port: the behaviour suite (`tests/behaviour.rs`)
//! runs every test against it and against [`MaildirStore`], so a rule that
//! only one backend keeps shows up as a failing test, and server tests can
//! drive POP3 sessions without a filesystem. It keeps the same semantics
//! as Maildir where a client or an admin could tell the difference:
//!
//! * bytes are stored as Maildir stores them (CRLF → LF, a final LF added),
//!   so [`MessageInfo::size`] and what [`Mailbox::open_message`] returns
//!   are the same octets;
//! * one session per maildrop ([`StoreError::InUse`]), and a dropped
//!   session changes nothing;
//! * UIDLs are stable and never reused within a store;
//! * size limit, quota, retention (expiry at open, `EXPIRE 0` at commit,
//!   the restore area and its purge), folders and release.
//!
//! Nothing survives the process, so it is no backend for a server.
//!
//! [`MaildirStore`]: crate::MaildirStore

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::policies::PolicyCell;

use crate::quota::{Quota, QuotaConfig, Usage};
use crate::retention::{self, Policy, RetentionConfig};
use crate::{
    Authenticated,
    CommitReport, Delivered, ExpireReport, ImportOutcome, Mailbox, Mailstore, MailstoreAdmin, MessageInfo, MessageKey,
    RemovedMessage, StoreError, Uidl,
};

/// An in-memory [`Mailstore`] (see the module documentation). Clones share
/// the same maildrops.
#[derive(Debug, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    /// Replaced whole by [`Mailstore::set_policies`], as Maildir's are.
    policies: PolicyCell,
    clock: Clock,
}

/// Where the store reads "now" (delivery time, expiry at open, removal
/// time at commit): the system clock unless a test supplies its own, so
/// retention can be driven by a test's clock (e.g. tokio's paused time).
/// Operations that take a `now` argument use that instead.
#[derive(Clone, Default)]
struct Clock(Option<Arc<dyn Fn() -> SystemTime + Send + Sync>>);

impl Clock {
    fn now(&self) -> SystemTime {
        self.0.as_ref().map_or_else(SystemTime::now, |clock| clock())
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Clock(custom)" } else { "Clock(system)" })
    }
}

/// A clone shares the maildrops and starts with the same policies, but
/// replaces its own (as a cloned `MaildirStore` does).
impl Clone for MemoryStore {
    fn clone(&self) -> Self {
        MemoryStore { shared: Arc::clone(&self.shared), policies: self.policies.clone(), clock: self.clock.clone() }
    }
}

#[derive(Debug, Default)]
struct Shared {
    users: Mutex<HashMap<String, Maildrop>>,
}

/// One user's mail.
#[derive(Debug, Default)]
struct Maildrop {
    /// Delivery order, which is the snapshot order.
    inbox: Vec<Stored>,
    folders: HashMap<String, Vec<Stored>>,
    /// Removed but restorable, with when they were removed.
    restore_area: Vec<(Stored, SystemTime)>,
    /// Held by a session (the RFC 1939 §8 lock).
    locked: bool,
}

/// One stored message.
#[derive(Debug, Clone)]
struct Stored {
    id: u64,
    uidl: Uidl,
    bytes: Arc<[u8]>,
    size: u64,
    received: SystemTime,
    retrieved: Option<SystemTime>,
}

impl Stored {
    fn info(&self) -> MessageInfo {
        MessageInfo {
            uidl: self.uidl.clone(),
            size: self.size,
            key: key_for(self.id),
            received: self.received,
            retrieved: self.retrieved,
        }
    }
}

fn key_for(id: u64) -> MessageKey {
    MessageKey::new(format!("memory/{id}"))
}

impl MemoryStore {
    /// An empty store without a size limit, quota or retention.
    #[must_use]
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Limits delivered messages to `max` POP3 octets.
    #[must_use]
    pub fn with_max_size(self, max: u64) -> Self {
        self.policies.set_max_size(max);
        self
    }

    /// Applies retention policies.
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

    /// Reads the time from `clock` instead of the system clock (see
    /// `Clock`): for tests that move time, such as the server's driver
    /// tests under tokio's paused clock.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Clock(Some(Arc::new(clock)));
        self
    }

    fn retention_for(&self, user: &str) -> Policy {
        self.policies.load().retention.for_user(user)
    }

    fn quota_for(&self, user: &str) -> Quota {
        self.policies.load().quota.for_user(user)
    }

    fn users(&self) -> MutexGuard<'_, HashMap<String, Maildrop>> {
        // A panic while the map was held leaves each maildrop consistent:
        // every change below is made in one step.
        self.shared.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `user`'s maildrop, created empty on first use, as Maildir does.
    fn with_maildrop<T>(&self, user: &str, f: impl FnOnce(&mut Maildrop) -> T) -> Result<T, StoreError> {
        check_user(user)?;
        let mut users = self.users();
        Ok(f(users.entry(user.to_owned()).or_default()))
    }

    fn store_bytes(&self, message: &mut dyn io::Read, limit: Option<u64>) -> Result<Stored, StoreError> {
        let id = next_id();
        // Unique in the process, and never reused: the counter only grows.
        let uidl = Uidl::try_from(format!("mem{id:016x}")).expect("hex digits are a valid UIDL");
        self.store_bytes_as(id, uidl, self.clock.now(), message, limit)
    }

    fn store_bytes_as(
        &self,
        id: u64,
        uidl: Uidl,
        received: SystemTime,
        message: &mut dyn io::Read,
        limit: Option<u64>,
    ) -> Result<Stored, StoreError> {
        let mut raw = Vec::new();
        message.read_to_end(&mut raw).map_err(|e| StoreError::Io { context: "reading the message".into(), source: e })?;
        let bytes = normalise(&raw);
        let size = crate::wire_size_of(&bytes[..]).map_err(|e| StoreError::Io { context: "sizing".into(), source: e })?;
        if let Some(limit) = limit
            && size > limit
        {
            return Err(StoreError::TooLarge { limit });
        }
        Ok(Stored { id, uidl, bytes: bytes.into(), size, received, retrieved: None })
    }
}

/// The ids (and so UIDLs) of every message of every store in the process.
fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The names Maildir refuses too (its location template would make them
/// escape or hide).
fn check_user(user: &str) -> Result<(), StoreError> {
    if user.is_empty() || user.starts_with('.') || user.contains(['/', '\0']) {
        return Err(StoreError::NoSuchUser(user.to_owned()));
    }
    Ok(())
}

/// Maildir's storage form: CRLF → LF (a lone CR is kept), and a final LF
/// if the message does not end with one.
fn normalise(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 1);
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    if out.last().is_some_and(|&b| b != b'\n') {
        out.push(b'\n');
    }
    out
}

fn usage_of(drop: &Maildrop) -> Usage {
    Usage { bytes: drop.inbox.iter().map(|m| m.size).sum(), messages: drop.inbox.len() as u64 }
}

/// Removes the messages at the sorted, valid `indices` of the inbox, into
/// the restore area when `aside`.
fn remove(drop: &mut Maildrop, ids: &[u64], aside: bool, now: SystemTime) -> CommitReport {
    let mut report = CommitReport::default();
    let (gone, kept): (Vec<Stored>, Vec<Stored>) =
        std::mem::take(&mut drop.inbox).into_iter().partition(|m| ids.contains(&m.id));
    drop.inbox = kept;
    // A message already gone counts as removed (there is no other program
    // to remove it here, but the rule is the port's).
    report.removed = ids.len();
    if aside {
        report.restorable = gone.len();
        drop.restore_area.extend(gone.into_iter().map(|m| (m, now)));
    }
    report
}

/// Expiry of one maildrop the caller holds.
fn expire_in(drop: &mut Maildrop, policy: &Policy, now: SystemTime, dry_run: bool) -> ExpireReport {
    let mut report = ExpireReport::default();
    let mut expired = Vec::new();
    for m in &drop.inbox {
        if let Some(reason) = retention::expiry(now, policy, m.received, m.retrieved) {
            report.expired.push((m.uidl.as_str().to_owned(), reason));
            expired.push(m.id);
        }
    }
    report.purged = drop.restore_area.iter().filter(|(_, at)| retention::purge_due(now, policy, *at)).count();
    if !dry_run {
        remove(drop, &expired, policy.restore_days > 0, now);
        drop.restore_area.retain(|(_, at)| !retention::purge_due(now, policy, *at));
    }
    report
}

impl Mailstore for MemoryStore {
    fn open(&self, login: &Authenticated) -> Result<Box<dyn Mailbox>, StoreError> {
        let user = login.user();
        let policy = self.retention_for(user);
        let (messages, expired) = self.with_maildrop(user, |drop| {
            if drop.locked {
                return Err(StoreError::InUse);
            }
            drop.locked = true;
            let expired = match policy.can_expire() {
                true => expire_in(drop, &policy, self.clock.now(), false),
                false => ExpireReport::default(),
            };
            Ok((drop.inbox.clone(), expired))
        })??;
        Ok(Box::new(MemoryMailbox {
            store: self.clone(),
            user: user.to_owned(),
            infos: messages.iter().map(Stored::info).collect(),
            messages,
            policy,
            expired,
            held: true,
        }))
    }

    fn deliver(&self, user: &str, message: &mut dyn io::Read) -> Result<Delivered, StoreError> {
        check_user(user)?;
        let policies = self.policies.load_full();
        let max_size = policies.max_size;
        let quota = policies.quota.for_user(user);
        let usage = self.with_maildrop(user, |d| usage_of(d))?;
        if !quota.is_unlimited() && quota.exceeded_by(usage, 0) {
            return Err(StoreError::OverQuota(format!("{} messages, {} octets in use", usage.messages, usage.bytes)));
        }
        let room = quota.bytes.map(|limit| limit.saturating_sub(usage.bytes));
        let limit = match (max_size, room) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let stored = match self.store_bytes(message, limit) {
            Err(StoreError::TooLarge { .. }) if room.is_some_and(|r| max_size.is_none_or(|m| r < m)) => {
                return Err(StoreError::OverQuota(format!("{} octets free", room.unwrap_or(0))));
            }
            other => other?,
        };
        let delivered = Delivered { uidl: stored.uidl.clone(), size: stored.size, location: format!("memory:{user}/{}", stored.id) };
        self.with_maildrop(user, |d| d.inbox.push(stored))?;
        Ok(delivered)
    }

    fn expire(&self, user: &str, now: SystemTime, dry_run: bool) -> Result<ExpireReport, StoreError> {
        let policy = self.retention_for(user);
        self.with_maildrop(user, |drop| {
            if drop.locked {
                return ExpireReport { skipped_in_use: true, ..Default::default() };
            }
            expire_in(drop, &policy, now, dry_run)
        })
    }

    fn retention(&self) -> Arc<RetentionConfig> {
        Arc::clone(&self.policies.load().retention)
    }

    fn policy(&self, user: &str) -> Policy {
        self.retention_for(user)
    }

    fn set_policies(&self, max_size: Option<u64>, retention: RetentionConfig, quota: QuotaConfig) {
        self.policies.replace(max_size, retention, quota);
    }

    fn deliver_to_folder(&self, user: &str, folder: &str, message: &mut dyn io::Read) -> Result<Delivered, StoreError> {
        check_user(user)?;
        crate::check_folder_name(folder)?;
        let stored = self.store_bytes(message, self.policies.load().max_size)?;
        let delivered =
            Delivered { uidl: stored.uidl.clone(), size: stored.size, location: format!("memory:{user}/{folder}/{}", stored.id) };
        self.with_maildrop(user, |d| d.folders.entry(folder.to_owned()).or_default().push(stored))?;
        Ok(delivered)
    }

    fn quota(&self, user: &str) -> Quota {
        self.quota_for(user)
    }

    fn quota_full(&self, user: &str) -> Result<Option<Usage>, StoreError> {
        self.quota_exceeded_by(user, 1)
    }

    fn quota_exceeded_by(&self, user: &str, size: u64) -> Result<Option<Usage>, StoreError> {
        let quota = self.quota_for(user);
        if quota.is_unlimited() {
            return Ok(None);
        }
        let usage = self.with_maildrop(user, |d| usage_of(d))?;
        Ok(quota.exceeded_by(usage, size).then_some(usage))
    }
}

impl MailstoreAdmin for MemoryStore {
    fn inspect(&self, user: &str) -> Result<Vec<MessageInfo>, StoreError> {
        self.with_maildrop(user, |d| d.inbox.iter().map(Stored::info).collect())
    }

    fn head(&self, user: &str, info: &MessageInfo, limit: usize) -> Result<Vec<u8>, StoreError> {
        let found = self.with_maildrop(user, |d| {
            d.inbox.iter().find(|m| key_for(m.id) == info.key).map(|m| Arc::clone(&m.bytes))
        })?;
        let bytes = found.ok_or_else(|| StoreError::Vanished(info.key.to_string()))?;
        Ok(bytes[..bytes.len().min(limit)].to_vec())
    }

    fn removed_messages(&self, user: &str) -> Result<Vec<RemovedMessage>, StoreError> {
        self.with_maildrop(user, |d| {
            d.restore_area
                .iter()
                .map(|(m, at)| RemovedMessage { uidl: m.uidl.as_str().to_owned(), removed_at: Some(*at) })
                .collect()
        })
    }

    fn restore(&self, user: &str, since: Option<SystemTime>, _now: SystemTime) -> Result<Vec<String>, StoreError> {
        self.with_maildrop(user, |d| {
            if d.locked {
                return Err(StoreError::InUse);
            }
            let (back, stay): (Vec<_>, Vec<_>) =
                std::mem::take(&mut d.restore_area).into_iter().partition(|(_, at)| since.is_none_or(|s| *at >= s));
            d.restore_area = stay;
            let mut restored = Vec::new();
            for (mut m, _) in back {
                // The retention clock starts afresh, as Maildir's log does.
                m.retrieved = None;
                restored.push(m.uidl.as_str().to_owned());
                d.inbox.push(m);
            }
            // Snapshot order is delivery order, as Maildir's is by mtime.
            d.inbox.sort_by_key(|m| (m.received, m.id));
            Ok(restored)
        })?
    }

    fn purge(&self, user: &str, now: SystemTime) -> Result<CommitReport, StoreError> {
        let aside = self.retention_for(user).restore_days > 0;
        self.with_maildrop(user, |d| {
            if d.locked {
                return Err(StoreError::InUse);
            }
            let all: Vec<u64> = d.inbox.iter().map(|m| m.id).collect();
            Ok(remove(d, &all, aside, now))
        })?
    }

    fn release(&self, user: &str, folder: &str, uidl: &str) -> Result<String, StoreError> {
        crate::check_folder_name(folder)?;
        self.with_maildrop(user, |d| {
            let vanished = || StoreError::Vanished(format!("{folder}/{uidl}"));
            let list = d.folders.get_mut(folder).ok_or_else(vanished)?;
            let at = list.iter().position(|m| m.uidl.as_str() == uidl).ok_or_else(vanished)?;
            let m = list.remove(at);
            let location = format!("memory:{user}/{}", m.id);
            d.inbox.push(m);
            d.inbox.sort_by_key(|m| (m.received, m.id));
            Ok(location)
        })?
    }

    fn usage(&self, user: &str) -> Result<(Usage, Quota), StoreError> {
        Ok((self.with_maildrop(user, |d| usage_of(d))?, self.quota_for(user)))
    }

    fn import_message(
        &self,
        user: &str,
        uidl: &Uidl,
        received: SystemTime,
        message: &mut dyn io::Read,
    ) -> Result<ImportOutcome, StoreError> {
        check_user(user)?;
        // Checked before reading the message, and again when storing it:
        // the lock is not held while the bytes are read.
        let present = self.with_maildrop(user, |d| {
            if d.locked {
                return Err(StoreError::InUse);
            }
            Ok(d.inbox.iter().any(|m| m.uidl == *uidl))
        })??;
        if present {
            return Ok(ImportOutcome::AlreadyPresent);
        }
        let stored = self.store_bytes_as(next_id(), uidl.clone(), received, message, None)?;
        let delivered = Delivered { uidl: uidl.clone(), size: stored.size, location: format!("memory:{user}/{}", stored.id) };
        self.with_maildrop(user, |d| {
            if d.locked {
                return Err(StoreError::InUse);
            }
            if d.inbox.iter().any(|m| m.uidl == *uidl) {
                return Ok(ImportOutcome::AlreadyPresent);
            }
            d.inbox.push(stored);
            d.inbox.sort_by_key(|m| (m.received, m.id));
            Ok(ImportOutcome::Imported(delivered))
        })?
    }
}

/// A maildrop a session holds.
struct MemoryMailbox {
    store: MemoryStore,
    user: String,
    /// The snapshot: what the session reads, whatever happens to the store.
    messages: Vec<Stored>,
    infos: Vec<MessageInfo>,
    policy: Policy,
    expired: ExpireReport,
    /// Cleared by commit, which releases the lock itself.
    held: bool,
}

impl Drop for MemoryMailbox {
    fn drop(&mut self) {
        if self.held {
            let _ = self.store.with_maildrop(&self.user, |d| d.locked = false);
        }
    }
}

impl Mailbox for MemoryMailbox {
    fn user(&self) -> &str {
        &self.user
    }

    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn open_message(&self, index: usize) -> Result<Box<dyn io::Read + Send>, StoreError> {
        let m = self.messages.get(index).ok_or(StoreError::NoSuchMessage { index })?;
        Ok(Box::new(io::Cursor::new(Arc::clone(&m.bytes))))
    }

    fn read_if_cached(&self, index: usize, max: u64) -> Option<Vec<u8>> {
        let m = self.messages.get(index)?;
        (m.bytes.len() as u64 <= max).then(|| m.bytes.to_vec())
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn expired_at_open(&self) -> &ExpireReport {
        &self.expired
    }

    fn commit(mut self: Box<Self>, deleted: &[usize], retrieved: &[usize]) -> Result<CommitReport, StoreError> {
        let remove_at = self.removals(deleted, retrieved);
        if let Some(&index) = remove_at.iter().find(|&&i| i >= self.messages.len()) {
            return Err(StoreError::NoSuchMessage { index });
        }
        let now = self.store.clock.now();
        if let Err(e) = self.record_retrievals(retrieved, now) {
            tracing::warn!(user = %self.user, error = %e, "cannot record retrievals");
        }
        let ids: Vec<u64> = remove_at.iter().map(|&i| self.messages[i].id).collect();
        let aside = self.policy.restore_days > 0;
        self.held = false;
        self.store.with_maildrop(&self.user, |d| {
            d.locked = false;
            remove(d, &ids, aside, now)
        })
    }

    fn record_retrievals(&mut self, indices: &[usize], when: SystemTime) -> Result<(), StoreError> {
        if let Some(&index) = indices.iter().find(|&&i| i >= self.messages.len()) {
            return Err(StoreError::NoSuchMessage { index });
        }
        let ids: Vec<u64> = indices.iter().map(|&i| self.messages[i].id).collect();
        for &i in indices {
            self.infos[i].retrieved.get_or_insert(when);
        }
        self.store.with_maildrop(&self.user, |d| {
            for m in d.inbox.iter_mut().filter(|m| ids.contains(&m.id)) {
                m.retrieved.get_or_insert(when);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::normalise;
    use crate::retention::{Days, Policy, RetentionConfig};
    use crate::{Mailstore, MailstoreAdmin, MemoryStore};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    /// Delivery time and expiry at open read the injected clock, not the
    /// system's: a message one second short of `max_age` stays, and goes
    /// once the clock reaches it.
    #[test]
    fn retention_follows_the_injected_clock() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let now = Arc::new(Mutex::new(start));
        let clock = Arc::clone(&now);
        let policy = Policy { max_age: Days::After(1), ..Policy::default() };
        let store = MemoryStore::new()
            .with_retention(RetentionConfig { default: policy, ..RetentionConfig::default() })
            .with_clock(move || *clock.lock().unwrap());
        store.deliver("alice", &mut &b"x\n"[..]).unwrap();
        assert_eq!(store.inspect("alice").unwrap()[0].received, start);
        *now.lock().unwrap() = start + Duration::from_secs(86_399);
        assert_eq!(store.open(&crate::Authenticated::for_tests("alice")).unwrap().messages().len(), 1);
        *now.lock().unwrap() = start + Duration::from_secs(86_400);
        let mailbox = store.open(&crate::Authenticated::for_tests("alice")).unwrap();
        assert_eq!(mailbox.messages().len(), 0);
        assert_eq!(mailbox.expired_at_open().expired.len(), 1);
    }

    #[test]
    fn stores_what_maildir_stores() {
        assert_eq!(normalise(b"a\r\nb\r\n"), b"a\nb\n");
        assert_eq!(normalise(b"a\rb\n"), b"a\rb\n");
        assert_eq!(normalise(b"no newline"), b"no newline\n");
        assert_eq!(normalise(b""), b"");
    }
}
