//! Open POP3 sessions, for `pobox who` and `pobox kick`, and the last login
//! time per user, for RFC 2449 LOGIN-DELAY.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What `pobox who` shows for one session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    /// Process-unique session number.
    pub id: u64,
    /// The logged-in user, if any.
    pub user: Option<String>,
    /// The client's address.
    pub peer: String,
    /// Unix seconds when the connection was accepted.
    pub since: u64,
    /// TLS is active.
    pub tls: bool,
}

struct Entry {
    info: SessionInfo,
    kick: watch::Sender<bool>,
}

/// The registry shared by all connections.
#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, Entry>>,
    last_login: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// A connection's entry; removed from the registry when dropped.
pub(crate) struct Handle<'a> {
    id: u64,
    registry: &'a Registry,
    /// Becomes true when an admin kicks the session.
    pub(crate) kicked: watch::Receiver<bool>,
}

impl Registry {
    /// Registers a new connection.
    pub(crate) fn register(&self, peer: String, tls: bool) -> Handle<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (kick, kicked) = watch::channel(false);
        let info = SessionInfo { id, user: None, peer, since, tls };
        self.lock().insert(id, Entry { info, kick });
        Handle { id, registry: self, kicked }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open sessions, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut v: Vec<_> = self.lock().values().map(|e| e.info.clone()).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// True if a session of `user` is logged in.
    pub fn has_user(&self, user: &str) -> bool {
        self.lock().values().any(|e| e.info.user.as_deref() == Some(user))
    }

    /// Asks every session of `user` to close (without UPDATE). Returns how many.
    pub fn kick(&self, user: &str) -> usize {
        let sessions = self.lock();
        let mut n = 0;
        for e in sessions.values().filter(|e| e.info.user.as_deref() == Some(user)) {
            let _ = e.kick.send(true);
            n += 1;
        }
        n
    }

    /// RFC 2449 §6.6: refuses a login within `delay` of the user's previous
    /// one (returns the delay), otherwise records this login.
    pub(crate) fn check_login_delay(&self, user: &str, delay: Duration, now: Instant) -> Result<(), Duration> {
        let mut last = self.last_login.lock().unwrap_or_else(|p| p.into_inner());
        if !delay.is_zero()
            && let Some(prev) = last.get(user)
            && now.duration_since(*prev) < delay
        {
            return Err(delay);
        }
        last.insert(user.to_string(), now);
        // Bound memory: forget logins older than any delay could matter.
        if last.len() > 100_000 {
            last.retain(|_, t| now.duration_since(*t) < Duration::from_secs(86_400));
        }
        Ok(())
    }
}

impl Handle<'_> {
    /// Records the logged-in user.
    pub(crate) fn set_user(&self, user: &str) {
        if let Some(e) = self.registry.lock().get_mut(&self.id) {
            e.info.user = Some(user.to_string());
        }
    }

    /// Records that TLS is now active (after STLS).
    pub(crate) fn set_tls(&self) {
        if let Some(e) = self.registry.lock().get_mut(&self.id) {
            e.info.tls = true;
        }
    }
}

impl Drop for Handle<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_list_kick_and_drop() {
        let r = Registry::default();
        let a = r.register("1.2.3.4:5".into(), false);
        let b = r.register("1.2.3.4:6".into(), true);
        a.set_user("alice");
        assert_eq!(r.list().len(), 2);
        assert_eq!(r.kick("alice"), 1);
        assert!(*a.kicked.borrow());
        assert!(!*b.kicked.borrow());
        drop(a);
        assert_eq!(r.list().iter().map(|s| s.id).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn login_delay_window() {
        let r = Registry::default();
        let t = Instant::now();
        let d = Duration::from_secs(60);
        assert!(r.check_login_delay("alice", d, t).is_ok());
        assert!(r.check_login_delay("alice", d, t + Duration::from_secs(59)).is_err());
        assert!(r.check_login_delay("bob", d, t + Duration::from_secs(1)).is_ok());
        assert!(r.check_login_delay("alice", d, t + Duration::from_secs(60)).is_ok());
        assert!(r.check_login_delay("alice", Duration::ZERO, t + Duration::from_secs(61)).is_ok());
    }
}
