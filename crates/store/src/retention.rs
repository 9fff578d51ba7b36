//! Retention policy and the pure expiry decision.
//!
//! Everything here is a function of `(now, policy, message metadata)`: no
//! clock is read and no file is touched, so every rule is tested with any
//! clock. The Maildir backend applies the decisions
//! (`maildir/retention.rs`).
//!
//! Semantics (RFC 2449 §6.7 EXPIRE):
//! - `retrieved = 0`: a message is removed once retrieved (at the end of
//!   the session that retrieved it, or at the next expiry run if that
//!   session ended without QUIT);
//! - `retrieved = N`: a retrieved message is kept at least N days after its
//!   first retrieval, then removed;
//! - `max_age = N`: any message, retrieved or not, is removed N days after
//!   delivery;
//! - "removed" means moved to the restore area when `restore_days > 0`,
//!   from where `pobox mailbox restore` brings it back (same UIDL) until it
//!   is purged `restore_days` after its removal.
//!
//! A boundary is inclusive: a message retrieved at `t` under `retrieved = 3`
//! is kept until `t + 3 days` and expires at exactly that instant, never
//! before (the server "MUST NOT expire messages more quickly" than it
//! advertises).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// A number of days, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Days {
    /// No limit.
    Never,
    /// This many days (0 = immediately).
    After(u32),
}

impl Days {
    fn duration(self) -> Option<Duration> {
        match self {
            Days::Never => None,
            Days::After(d) => Some(Duration::from_secs(u64::from(d) * 86_400)),
        }
    }

    /// The shorter of two limits.
    pub fn min(self, other: Days) -> Days {
        match (self, other) {
            (Days::Never, x) | (x, Days::Never) => x,
            (Days::After(a), Days::After(b)) => Days::After(a.min(b)),
        }
    }
}

/// One user's retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a retrieved message stays (RFC 2449 EXPIRE).
    pub retrieved: Days,
    /// How long any message stays after delivery.
    pub max_age: Days,
    /// How long removed messages can be restored; 0 = removal is final.
    pub restore_days: u32,
    /// RFC 2449 LOGIN-DELAY: minimum seconds between logins; 0 = none.
    pub login_delay_secs: u32,
}

impl Default for Policy {
    /// Classic POP3: the server keeps what the client does not delete.
    fn default() -> Policy {
        Policy {
            retrieved: Days::Never,
            max_age: Days::Never,
            restore_days: 0,
            login_delay_secs: 0,
        }
    }
}

impl Policy {
    /// Whether expiry can remove anything under this policy; when not,
    /// login-time expiry is skipped (it would be a second scan of the
    /// maildrop on every login for nothing; the restore area's purge is
    /// left to the timer).
    #[must_use]
    pub fn can_expire(&self) -> bool {
        self.retrieved != Days::Never || self.max_age != Days::Never
    }

    /// The EXPIRE value that is true for this policy: the shortest time a
    /// retrieved message may stay. `max_age` counts from delivery, which is
    /// never after retrieval, so it bounds the promise too.
    pub fn advertised_expire(&self) -> Days {
        self.retrieved.min(self.max_age)
    }
}

/// Why a message expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryReason {
    /// Its retrieval retention is over.
    Retrieved,
    /// It is older than the maximum age.
    MaxAge,
}

impl std::fmt::Display for ExpiryReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExpiryReason::Retrieved => "retrieved",
            ExpiryReason::MaxAge => "max-age",
        })
    }
}

/// Whether a message expires at `now`, and why.
///
/// `received` is its delivery time; `retrieved` its first retrieval, if any.
pub fn expiry(
    now: SystemTime,
    policy: &Policy,
    received: SystemTime,
    retrieved: Option<SystemTime>,
) -> Option<ExpiryReason> {
    if let (Some(at), Some(keep)) = (retrieved, policy.retrieved.duration())
        && reached(now, at, keep)
    {
        return Some(ExpiryReason::Retrieved);
    }
    if let Some(keep) = policy.max_age.duration()
        && reached(now, received, keep)
    {
        return Some(ExpiryReason::MaxAge);
    }
    None
}

/// Whether a message removed at `deleted_at` is past its restore window.
pub fn purge_due(now: SystemTime, policy: &Policy, deleted_at: SystemTime) -> bool {
    reached(
        now,
        deleted_at,
        Duration::from_secs(u64::from(policy.restore_days) * 86_400),
    )
}

fn reached(now: SystemTime, start: SystemTime, keep: Duration) -> bool {
    match start.checked_add(keep) {
        Some(end) => now >= end,
        None => false,
    }
}

/// The global policy and per-user overrides.
#[derive(Debug, Clone, Default)]
pub struct RetentionConfig {
    /// Applies to users without an override.
    pub default: Policy,
    /// Per-user overrides (whole policies).
    pub users: HashMap<String, Policy>,
}

impl RetentionConfig {
    /// The policy of `user`.
    pub fn for_user(&self, user: &str) -> Policy {
        self.users.get(user).copied().unwrap_or(self.default)
    }

    /// The EXPIRE value to advertise before login and whether it varies per
    /// user. RFC 2449 §6.7: with `USER`, the value shown before login is the
    /// shortest any user has; after login the user's own is shown.
    pub fn advertised_expire(&self) -> (Days, bool) {
        let all = std::iter::once(&self.default).chain(self.users.values());
        let min = all
            .clone()
            .map(Policy::advertised_expire)
            .fold(Days::Never, Days::min);
        let varies = all.map(Policy::advertised_expire).any(|d| d != min);
        (min, varies)
    }

    /// The LOGIN-DELAY to advertise before login (the shortest) and whether
    /// it varies per user (RFC 2449 §6.6).
    pub fn advertised_login_delay(&self) -> (u32, bool) {
        let all = std::iter::once(&self.default).chain(self.users.values());
        let min = all.clone().map(|p| p.login_delay_secs).min().unwrap_or(0);
        let varies = all.map(|p| p.login_delay_secs).any(|d| d != min);
        (min, varies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn policy(retrieved: Days, max_age: Days) -> Policy {
        Policy {
            retrieved,
            max_age,
            ..Policy::default()
        }
    }

    #[test]
    fn never_keeps_everything_forever() {
        let p = Policy::default();
        assert_eq!(expiry(t(10_000 * DAY), &p, t(0), Some(t(0))), None);
    }

    #[test]
    fn expire_zero_removes_once_retrieved_and_only_then() {
        let p = policy(Days::After(0), Days::Never);
        assert_eq!(expiry(t(5), &p, t(0), None), None, "unretrieved mail stays");
        assert_eq!(
            expiry(t(5), &p, t(0), Some(t(5))),
            Some(ExpiryReason::Retrieved)
        );
    }

    #[test]
    fn expire_three_days_boundary_is_exact() {
        let p = policy(Days::After(3), Days::Never);
        let got = t(100);
        assert_eq!(
            expiry(t(100 + 2 * DAY), &p, t(0), Some(got)),
            None,
            "day 2: kept"
        );
        assert_eq!(
            expiry(t(100 + 3 * DAY - 1), &p, t(0), Some(got)),
            None,
            "one second short"
        );
        assert_eq!(
            expiry(t(100 + 3 * DAY), &p, t(0), Some(got)),
            Some(ExpiryReason::Retrieved)
        );
    }

    #[test]
    fn max_age_applies_to_unretrieved_mail_from_delivery() {
        let p = policy(Days::Never, Days::After(30));
        assert_eq!(expiry(t(30 * DAY - 1), &p, t(0), None), None);
        assert_eq!(
            expiry(t(30 * DAY), &p, t(0), None),
            Some(ExpiryReason::MaxAge)
        );
    }

    #[test]
    fn retrieved_rule_wins_when_both_apply() {
        let p = policy(Days::After(1), Days::After(1));
        assert_eq!(
            expiry(t(2 * DAY), &p, t(0), Some(t(0))),
            Some(ExpiryReason::Retrieved)
        );
    }

    #[test]
    fn restore_window_boundary() {
        let p = Policy {
            restore_days: 7,
            ..Policy::default()
        };
        assert!(!purge_due(t(7 * DAY - 1), &p, t(0)));
        assert!(purge_due(t(7 * DAY), &p, t(0)));
        let final_removal = Policy::default();
        assert!(purge_due(t(0), &final_removal, t(0)));
    }

    #[test]
    fn advertised_expire_is_the_promise_that_holds() {
        assert_eq!(
            policy(Days::Never, Days::Never).advertised_expire(),
            Days::Never
        );
        assert_eq!(
            policy(Days::After(5), Days::Never).advertised_expire(),
            Days::After(5)
        );
        assert_eq!(
            policy(Days::Never, Days::After(30)).advertised_expire(),
            Days::After(30)
        );
        assert_eq!(
            policy(Days::After(5), Days::After(2)).advertised_expire(),
            Days::After(2)
        );
    }

    #[test]
    fn per_user_overrides_and_capa_values() {
        let mut c = RetentionConfig {
            default: policy(Days::After(3), Days::Never),
            users: HashMap::new(),
        };
        assert_eq!(c.advertised_expire(), (Days::After(3), false));
        c.users
            .insert("bob".into(), policy(Days::After(0), Days::Never));
        c.users.insert(
            "carol".into(),
            Policy {
                login_delay_secs: 900,
                ..Policy::default()
            },
        );
        assert_eq!(c.for_user("bob").retrieved, Days::After(0));
        assert_eq!(c.for_user("alice").retrieved, Days::After(3));
        assert_eq!(c.advertised_expire(), (Days::After(0), true));
        assert_eq!(c.advertised_login_delay(), (0, true));
    }
}
