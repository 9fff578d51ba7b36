//! [`Mailstore`] for [`PgStore`].

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use pobox_store::quota::{Quota, QuotaConfig, Usage};
use pobox_store::retention::{Policy, RetentionConfig};
use pobox_store::{Delivered, ExpireReport, Mailbox, Mailstore, StoreError};

use crate::{PgStore, db_error};

impl Mailstore for PgStore {
    fn open(&self, _user: &str) -> Result<Box<dyn Mailbox>, StoreError> {
        Err(db_error("not implemented yet".into()))
    }

    fn deliver(&self, _user: &str, _message: &mut dyn io::Read) -> Result<Delivered, StoreError> {
        Err(db_error("not implemented yet".into()))
    }

    fn expire(&self, _user: &str, _now: SystemTime, _dry_run: bool) -> Result<ExpireReport, StoreError> {
        Err(db_error("not implemented yet".into()))
    }

    fn policy(&self, user: &str) -> Policy {
        self.policies.load().retention.for_user(user)
    }

    fn retention(&self) -> Arc<RetentionConfig> {
        Arc::clone(&self.policies.load().retention)
    }

    fn deliver_to_folder(&self, _user: &str, _folder: &str, _message: &mut dyn io::Read) -> Result<Delivered, StoreError> {
        Err(db_error("not implemented yet".into()))
    }

    fn quota(&self, user: &str) -> Quota {
        self.policies.load().quota.for_user(user)
    }

    fn quota_full(&self, user: &str) -> Result<Option<Usage>, StoreError> {
        self.quota_exceeded_by(user, 1)
    }

    fn quota_exceeded_by(&self, _user: &str, _size: u64) -> Result<Option<Usage>, StoreError> {
        Err(db_error("not implemented yet".into()))
    }

    fn set_policies(&self, max_size: Option<u64>, retention: RetentionConfig, quota: QuotaConfig) {
        PgStore::set_policies(self, max_size, retention, quota);
    }
}
