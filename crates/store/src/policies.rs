//! The policies every backend applies (size limit, retention, quota),
//! held so a configuration reload replaces them at once while readers take
//! them without a lock. One type for every backend: each store holds a
//! [`PolicyCell`] and builds itself with its setters.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::quota::QuotaConfig;
use crate::retention::RetentionConfig;

/// What a reload replaces at once: read together by one operation, so a
/// delivery never sees one reload's size limit with another's quota.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// The largest message accepted, in POP3 octets, if limited.
    pub max_size: Option<u64>,
    /// Retention, global and per user.
    pub retention: Arc<RetentionConfig>,
    /// Quotas, global and per user.
    pub quota: Arc<QuotaConfig>,
}

/// The current [`Policies`] of a store.
///
/// A clone starts with the same policies and is replaced on its own, as a
/// cloned store's are.
#[derive(Debug, Default)]
pub struct PolicyCell(ArcSwap<Policies>);

impl Clone for PolicyCell {
    fn clone(&self) -> Self {
        PolicyCell(ArcSwap::new(self.0.load_full()))
    }
}

impl PolicyCell {
    /// The policies now, for one operation.
    pub fn load(&self) -> Guard<Arc<Policies>> {
        self.0.load()
    }

    /// The policies now, to keep beyond one operation.
    #[must_use]
    pub fn load_full(&self) -> Arc<Policies> {
        self.0.load_full()
    }

    /// Replaces all three (a reload); operations under way keep what they
    /// loaded.
    pub fn replace(&self, max_size: Option<u64>, retention: RetentionConfig, quota: QuotaConfig) {
        self.0.store(Arc::new(Policies { max_size, retention: Arc::new(retention), quota: Arc::new(quota) }));
    }

    /// Sets the size limit (a store's `with_max_size`).
    pub fn set_max_size(&self, max: u64) {
        self.update(|p| p.max_size = Some(max));
    }

    /// Sets the retention policies (a store's `with_retention`).
    pub fn set_retention(&self, retention: RetentionConfig) {
        self.update(|p| p.retention = Arc::new(retention));
    }

    /// Sets the quotas (a store's `with_quota`).
    pub fn set_quota(&self, quota: QuotaConfig) {
        self.update(|p| p.quota = Arc::new(quota));
    }

    fn update(&self, change: impl FnOnce(&mut Policies)) {
        let mut p = Policies::clone(&self.0.load());
        change(&mut p);
        self.0.store(Arc::new(p));
    }
}
