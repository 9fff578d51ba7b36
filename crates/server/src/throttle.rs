//! Brute-force throttling: per-IP and per-user penalties that grow with
//! failed logins, in the GCRA style (a "theoretical arrival time" per key).
//!
//! Each key (a client IP, IPv6 by /64, and a claimed user name) has a leaky
//! failure count and a TAT. Every authentication attempt is *admitted* at
//! `max(TAT, now)`, and pushes the TAT forward by the key's current
//! interval, which is zero for the first [`Throttle::free_failures`] recent
//! failures and then doubles with each further failure up to `max_interval`
//! (Dovecot's `auth_penalty` does 2^n seconds up to 15 s, per IP). Because
//! the TAT is per key and not per connection, opening more connections does
//! not help an attacker: attempts from one IP are spaced by the interval
//! whatever their number. The failure count leaks one failure per
//! `leak` interval, so an honest user who mistyped recovers on their own.
//!
//! Why our own and not `governor`: governor answers "allowed now or not"
//! for a fixed quota, while this needs a quota that tightens as failures
//! accumulate and a *wait* rather than a refusal (a refusal would let an
//! attacker lock a victim's account with a few bad guesses). It is ~100
//! lines over a mutex'd `HashMap`, with an explicit memory bound.
//!
//! Honest users are protected from per-user penalties caused by others by
//! the credential cache: a login whose (user, password) MAC is cached skips
//! the throttle, since only someone who knows the password can hit it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys tracked; beyond this, idle keys are pruned, and if that is not
/// enough the oldest half goes (an attacker spraying addresses can then
/// reset some penalties, but memory stays bounded).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    User(u64),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Recent failures, leaking one per `leak`.
    failures: f64,
    /// When `failures` was last updated.
    updated: Instant,
    /// Theoretical arrival time: the earliest the next attempt is admitted.
    tat: Instant,
}

/// The throttle shared by all sessions.
#[derive(Debug)]
pub struct Throttle {
    /// Failures without any penalty (typos).
    pub free_failures: u32,
    /// Interval after the first penalised failure; doubles per failure.
    pub base_interval: Duration,
    /// Cap on the interval (and so on the wait an attempt can see per key).
    pub max_interval: Duration,
    /// One failure is forgotten per this much time.
    pub leak: Duration,
    state: Mutex<HashMap<Key, Bucket>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Throttle {
    /// A throttle capping the penalty interval at `max_interval`; zero
    /// disables throttling altogether.
    #[must_use]
    pub fn new(max_interval: Duration) -> Throttle {
        Throttle {
            free_failures: 3,
            base_interval: Duration::from_millis(500),
            max_interval,
            leak: Duration::from_secs(60),
            state: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn keys(&self, ip: IpAddr, user: &str) -> [Key; 2] {
        use std::hash::BuildHasher;
        // The user name is hashed (keyed, per process) so that the table
        // holds no attacker-chosen strings of arbitrary length.
        [Key::Ip(ip_key(ip)), Key::User(self.hasher.hash_one(user))]
    }

    /// Registers an attempt by `ip` for `user` and returns how long to wait
    /// before verifying it. Zero when neither key has recent failures
    /// beyond the free ones.
    pub fn admit(&self, ip: IpAddr, user: &str, now: Instant) -> Duration {
        if self.max_interval.is_zero() {
            return Duration::ZERO;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = Duration::ZERO;
        for key in self.keys(ip, user) {
            let Some(bucket) = state.get_mut(&key) else { continue };
            self.leak(bucket, now);
            let interval = self.interval(bucket.failures);
            let start = bucket.tat.max(now);
            wait = wait.max(start - now);
            bucket.tat = start + interval;
        }
        if !wait.is_zero() {
            crate::metrics::auth_penalty(wait);
        }
        wait
    }

    /// Records a failed attempt.
    pub fn failed(&self, ip: IpAddr, user: &str, now: Instant) {
        if self.max_interval.is_zero() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() >= MAX_KEYS {
            self.prune(&mut state, now);
        }
        for key in self.keys(ip, user) {
            let bucket = state
                .entry(key)
                .or_insert(Bucket { failures: 0.0, updated: now, tat: now });
            self.leak(bucket, now);
            bucket.failures += 1.0;
        }
    }

    /// Records a successful login: the IP's and the user's slate is wiped
    /// (Dovecot does the same for the IP).
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for key in self.keys(ip, user) {
            state.remove(&key);
        }
    }

    /// Keys currently tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn interval(&self, failures: f64) -> Duration {
        let over = failures - f64::from(self.free_failures);
        if over < 1.0 {
            return Duration::ZERO;
        }
        // 2^(over-1) × base, capped; computed in f64 so large counts
        // cannot overflow.
        let factor = 2f64.powf((over - 1.0).min(30.0));
        self.base_interval.mul_f64(factor).min(self.max_interval)
    }

    fn leak(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated);
        let leaked = elapsed.as_secs_f64() / self.leak.as_secs_f64().max(0.001);
        bucket.failures = (bucket.failures - leaked).max(0.0);
        bucket.updated = now;
    }

    fn prune(&self, state: &mut HashMap<Key, Bucket>, now: Instant) {
        state.retain(|_, b| {
            let mut b2 = *b;
            self.leak(&mut b2, now);
            b2.failures > 0.0 || b2.tat > now
        });
        if state.len() >= MAX_KEYS {
            let mut ages: Vec<Instant> = state.values().map(|b| b.updated).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            state.retain(|_, b| b.updated > cutoff);
        }
    }
}

/// IPv4 addresses as they are; IPv6 by /64, since one host usually owns a
/// whole /64 and could otherwise rotate through 2^64 keys.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Counts open connections per client IP (IPv6 by /64). For POP3 only
/// connections that have not authenticated yet count: the POP3 driver drops
/// its slot once the client has proved a user's credentials (see
/// [`PerUserIpConnections`]), so many users behind one NAT address can all
/// be logged in at once.
#[derive(Debug, Default)]
pub struct PerIpConnections {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Releases the slot when the connection ends.
#[derive(Debug)]
pub struct IpSlot {
    owner: std::sync::Arc<PerIpConnections>,
    ip: IpAddr,
}

impl PerIpConnections {
    /// Takes a slot for `ip`, or `None` when it already has `max` open.
    pub fn try_acquire(self: &std::sync::Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let ip = ip_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot { owner: std::sync::Arc::clone(self), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Counts connections per (user, client IP) that have proved the user's
/// credentials: the one logged in and those refused after authenticating
/// (`[IN-USE]`, LOGIN-DELAY), like Dovecot's `mail_max_userip_connections`.
/// The maildrop lock already allows one logged-in session per user; what
/// this bounds is a client (or several devices behind one address) that
/// keeps opening connections and proving the password while the maildrop
/// is held, each of which would otherwise linger until its login deadline.
#[derive(Debug, Default)]
pub struct PerUserIpConnections {
    open: Mutex<HashMap<(String, IpAddr), usize>>,
}

/// Releases a (user, IP) slot when the connection ends.
#[derive(Debug)]
pub struct UserIpSlot {
    owner: std::sync::Arc<PerUserIpConnections>,
    key: (String, IpAddr),
}

impl PerUserIpConnections {
    /// Takes a slot for `user` from `ip`, or `None` when it already has
    /// `max` open.
    pub fn try_acquire(self: &std::sync::Arc<Self>, user: &str, ip: IpAddr, max: usize) -> Option<UserIpSlot> {
        let key = (user.to_owned(), ip_key(ip));
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UserIpSlot { owner: std::sync::Arc::clone(self), key })
    }
}

impl Drop for UserIpSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn free_failures_then_doubling_intervals_capped() {
        let t = Throttle::new(Duration::from_secs(15));
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.admit(IP, "alice", now), Duration::ZERO);
            t.failed(IP, "alice", now);
        }
        // Fourth failure → 0.5 s spacing, fifth → 1 s...
        t.failed(IP, "alice", now);
        assert_eq!(t.admit(IP, "alice", now), Duration::ZERO);
        assert_eq!(t.admit(IP, "alice", now), Duration::from_millis(500));
        assert_eq!(t.admit(IP, "alice", now), Duration::from_millis(1000));
        for _ in 0..40 {
            t.failed(IP, "x", now);
        }
        assert_eq!(t.interval(1000.0), Duration::from_secs(15));
    }

    #[test]
    fn parallel_attempts_from_one_ip_are_spaced_not_parallel() {
        let t = Throttle::new(Duration::from_secs(15));
        let now = Instant::now();
        for i in 0..10 {
            t.failed(IP, &format!("u{i}"), now);
        }
        // 10 failures → interval 2^6 × 0.5 s = 32 s, capped at 15 s: ten
        // connections asking at the same instant wait 0, 15, 30, ... s.
        let waits: Vec<u64> = (0..4).map(|i| t.admit(IP, &format!("v{i}"), now).as_secs()).collect();
        assert_eq!(waits, [0, 15, 30, 45]);
        // Another IP guessing another user is not affected.
        assert_eq!(t.admit(OTHER, "bob", now), Duration::ZERO);
    }

    #[test]
    fn failures_leak_and_success_resets() {
        let t = Throttle::new(Duration::from_secs(15));
        let now = Instant::now();
        for _ in 0..6 {
            t.failed(IP, "alice", now);
        }
        assert!(t.interval(6.0) > Duration::ZERO);
        let later = now + Duration::from_secs(60 * 6);
        assert_eq!(t.admit(IP, "alice", later), Duration::ZERO);
        assert_eq!(t.admit(IP, "alice", later), Duration::ZERO, "all failures leaked away");
        t.failed(OTHER, "bob", now);
        t.succeeded(OTHER, "bob");
        assert_eq!(t.len(), 2, "only alice's and IP's buckets remain");
    }

    #[test]
    fn disabled_when_zero() {
        let t = Throttle::new(Duration::ZERO);
        let now = Instant::now();
        for _ in 0..100 {
            t.failed(IP, "alice", now);
        }
        assert_eq!(t.admit(IP, "alice", now), Duration::ZERO);
    }

    #[test]
    fn ipv6_is_keyed_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(mapped), IP);
    }

    #[test]
    fn per_ip_connection_limit() {
        let limits = std::sync::Arc::new(PerIpConnections::default());
        let a = limits.try_acquire(IP, 2).unwrap();
        let _b = limits.try_acquire(IP, 2).unwrap();
        assert!(limits.try_acquire(IP, 2).is_none());
        assert!(limits.try_acquire(OTHER, 2).is_some());
        drop(a);
        assert!(limits.try_acquire(IP, 2).is_some());
    }

    #[test]
    fn per_user_ip_limit_is_per_user_and_per_address() {
        let limits = std::sync::Arc::new(PerUserIpConnections::default());
        let a = limits.try_acquire("alice", IP, 2).unwrap();
        let _b = limits.try_acquire("alice", IP, 2).unwrap();
        assert!(limits.try_acquire("alice", IP, 2).is_none());
        assert!(limits.try_acquire("bob", IP, 2).is_some(), "another user from the same address");
        assert!(limits.try_acquire("alice", OTHER, 2).is_some(), "the same user from another address");
        drop(a);
        assert!(limits.try_acquire("alice", IP, 2).is_some(), "a slot comes back when its connection ends");
    }
}
