//! Cache of successful password verifications, so that a client polling
//! every minute does not pay Argon2 (tens of ms of CPU) on each login.
//!
//! The key is `HMAC-SHA256(k, len(user) ‖ user ‖ password)` with `k` random
//! per process: the cache never holds a password or anything an attacker
//! could brute-force offline without `k` (which never leaves memory). The
//! value is the user's passwd-file line fingerprint at verification time;
//! a hit is honoured only while [`UserDb::fingerprint`] still returns the
//! same value, so changing or removing the user (or the password, or the
//! SCRAM secret, or adding or revoking an app password: the fingerprint
//! covers the user's app-password lines) invalidates the entry at once.
//! Entries also expire after a TTL, and the map is bounded.
//!
//! Only successes are cached; a miss falls back to full verification, so
//! the cache cannot make a wrong password succeed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pobox_auth::{AuthError, Authenticated, UserDb};
use ring::hmac;

/// Most entries kept. Each is ~100 bytes.
const MAX_ENTRIES: usize = 50_000;

struct Entry {
    fingerprint: [u8; 32],
    proof: Authenticated,
    at: Instant,
}

/// The cache.
pub struct CredCache {
    key: hmac::Key,
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl std::fmt::Debug for CredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredCache").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl CredCache {
    /// A cache whose entries live `ttl`; zero disables caching.
    ///
    /// # Panics
    /// If the operating system's RNG fails.
    #[must_use]
    pub fn new(ttl: Duration) -> CredCache {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .expect("operating system RNG");
        CredCache { key, ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn mac(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        // Length-prefix the user so ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// A cached proof for this user and password, if one exists, is fresh,
    /// and the user's passwd-file line has not changed since.
    ///
    /// # Errors
    /// [`AuthError::Temporary`] when the passwd-file cannot be read.
    pub fn lookup(&self, users: &UserDb, user: &str, password: &[u8], now: Instant) -> Result<Option<Authenticated>, AuthError> {
        if self.ttl.is_zero() {
            return Ok(None);
        }
        let mac = self.mac(user, password);
        let cached = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries
                .get(&mac)
                .filter(|e| now.saturating_duration_since(e.at) < self.ttl)
                .map(|e| (e.fingerprint, e.proof.clone()))
        };
        let Some((fingerprint, proof)) = cached else { return Ok(None) };
        if users.fingerprint(user)? == Some(fingerprint) {
            return Ok(Some(proof));
        }
        // The line changed (new password, user removed): forget it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(&mac);
        Ok(None)
    }

    /// Remembers a successful verification. `fingerprint` must have been
    /// read *before* verifying, so that a password change racing with the
    /// verification leaves a stale fingerprint that the next lookup rejects.
    pub fn insert(&self, user: &str, password: &[u8], fingerprint: [u8; 32], proof: Authenticated, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mac = self.mac(user, password);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, e| now.saturating_duration_since(e.at) < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(mac, Entry { fingerprint, proof, at: now });
    }

    /// Forgets every entry: after a reload that points `passwd_file`
    /// elsewhere, a proof vouched for by the old file must not log anyone in.
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Number of entries (tests, metrics).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap {SSHA512} line so the test does not pay Argon2.
    fn db() -> (tempfile::TempDir, UserDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "alice:{PLAIN}pw\n").unwrap();
        (dir, UserDb::open(path))
    }

    #[test]
    fn hit_only_for_same_password_and_unchanged_line() {
        let (dir, users) = db();
        let cache = CredCache::new(Duration::from_secs(60));
        let now = Instant::now();
        let fp = users.fingerprint("alice").unwrap().unwrap();
        let proof = users.verify("alice", b"pw").unwrap();
        cache.insert("alice", b"pw", fp, proof, now);
        assert_eq!(cache.lookup(&users, "alice", b"pw", now).unwrap().unwrap().user(), "alice");
        assert!(cache.lookup(&users, "alice", b"pw2", now).unwrap().is_none());
        assert!(cache.lookup(&users, "alicex", b"pw", now).unwrap().is_none());
        // Expired.
        assert!(cache.lookup(&users, "alice", b"pw", now + Duration::from_secs(61)).unwrap().is_none());
        // The line changes (password reset by the admin): entry dropped.
        std::fs::write(dir.path().join("users"), "alice:{PLAIN}new\n").unwrap();
        assert!(cache.lookup(&users, "alice", b"pw", now).unwrap().is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn revoking_an_app_password_drops_its_entry() {
        let (_dir, users) = db();
        let cache = CredCache::new(Duration::from_secs(60));
        let now = Instant::now();
        let new = users.add_app_password("alice", "phone", &["pop3".into()], 1).unwrap();
        let pw = new.password.as_bytes();
        let fp = users.fingerprint("alice").unwrap().unwrap();
        let proof = users.verify("alice", pw).unwrap();
        assert_eq!(proof.credential().label(), "phone");
        cache.insert("alice", pw, fp, proof, now);
        assert_eq!(cache.lookup(&users, "alice", pw, now).unwrap().unwrap().credential().label(), "phone");
        users.revoke_app_password("alice", "phone").unwrap();
        assert!(cache.lookup(&users, "alice", pw, now).unwrap().is_none());
        assert!(users.verify("alice", pw).is_err());
    }

    #[test]
    fn clear_forgets_every_entry() {
        let (_dir, users) = db();
        let cache = CredCache::new(Duration::from_secs(60));
        let now = Instant::now();
        let fp = users.fingerprint("alice").unwrap().unwrap();
        cache.insert("alice", b"pw", fp, users.verify("alice", b"pw").unwrap(), now);
        cache.clear();
        assert!(cache.is_empty());
        assert!(cache.lookup(&users, "alice", b"pw", now).unwrap().is_none());
    }

    #[test]
    fn disabled_with_zero_ttl() {
        let (_dir, users) = db();
        let cache = CredCache::new(Duration::ZERO);
        let fp = users.fingerprint("alice").unwrap().unwrap();
        cache.insert("alice", b"pw", fp, users.verify("alice", b"pw").unwrap(), Instant::now());
        assert!(cache.lookup(&users, "alice", b"pw", Instant::now()).unwrap().is_none());
    }

    #[test]
    fn keys_are_macs_not_passwords() {
        let cache = CredCache::new(Duration::from_secs(60));
        let a = cache.mac("ab", b"c");
        assert_ne!(a, cache.mac("a", b"bc"));
        assert!(!a.windows(2).any(|w| w == b"ab"));
        // Another process (another key) gets other MACs.
        assert_ne!(a, CredCache::new(Duration::from_secs(60)).mac("ab", b"c"));
    }
}
