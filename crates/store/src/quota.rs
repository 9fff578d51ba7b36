//! Quota limits and the pure over-quota decision.
//!
//! Usage is tracked per Maildir in a Maildir++ `maildirsize` file (see
//! `maildir/quota.rs`), so a delivery does not rescan the maildrop.
//! Sizes are POP3 octets (the `W=` size), the figure users see in STAT.

use std::collections::HashMap;

/// One user's limits; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Total octets.
    pub bytes: Option<u64>,
    /// Total messages.
    pub messages: Option<u64>,
}

impl Quota {
    /// True if neither limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.bytes.is_none() && self.messages.is_none()
    }

    /// Whether adding one message of `size` octets to `usage` exceeds a
    /// limit. A message that alone is larger than the byte quota is over.
    pub fn exceeded_by(&self, usage: Usage, size: u64) -> bool {
        let over_bytes = self.bytes.is_some_and(|limit| usage.bytes.saturating_add(size) > limit);
        let over_count = self.messages.is_some_and(|limit| usage.messages.saturating_add(1) > limit);
        over_bytes || over_count
    }

    /// Whether `usage` is at or over a limit, so that no further message
    /// can be accepted (checked at `RCPT`, before the message is known;
    /// the delivery itself still applies [`exceeded_by`](Quota::exceeded_by)).
    pub fn is_full(&self, usage: Usage) -> bool {
        self.exceeded_by(usage, 1)
    }
}

/// What a maildrop holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Total octets.
    pub bytes: u64,
    /// Message count.
    pub messages: u64,
}

/// The default quota and per-user overrides.
#[derive(Debug, Clone, Default)]
pub struct QuotaConfig {
    /// Applies to users without an override.
    pub default: Quota,
    /// Per-user overrides.
    pub users: HashMap<String, Quota>,
}

impl QuotaConfig {
    /// The quota of `user`.
    pub fn for_user(&self, user: &str) -> Quota {
        self.users.get(user).copied().unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_inclusive() {
        let q = Quota { bytes: Some(100), messages: Some(2) };
        assert!(!q.exceeded_by(Usage { bytes: 50, messages: 1 }, 50), "exactly full is allowed");
        assert!(q.exceeded_by(Usage { bytes: 50, messages: 1 }, 51));
        assert!(q.exceeded_by(Usage { bytes: 0, messages: 2 }, 1));
        assert!(q.exceeded_by(Usage::default(), 101), "a message larger than the quota");
        assert!(!Quota::default().exceeded_by(Usage { bytes: u64::MAX, messages: u64::MAX }, 1));
    }

    #[test]
    fn full_means_at_or_over_either_limit() {
        let q = Quota { bytes: Some(100), messages: Some(2) };
        assert!(!q.is_full(Usage { bytes: 99, messages: 1 }));
        assert!(q.is_full(Usage { bytes: 100, messages: 1 }), "bytes at the limit");
        assert!(q.is_full(Usage { bytes: 150, messages: 1 }), "bytes over the limit");
        assert!(q.is_full(Usage { bytes: 0, messages: 2 }), "messages at the limit");
        assert!(!Quota::default().is_full(Usage { bytes: u64::MAX, messages: u64::MAX }));
    }
}
