//! [`MailstoreAdmin`] for [`PgStore`].

use std::io;
use std::time::SystemTime;

use pobox_store::quota::{Quota, Usage};
use pobox_store::{CommitReport, ImportOutcome, MailstoreAdmin, MessageInfo, RemovedMessage, StoreError, Uidl};

use crate::{PgStore, db_error};

impl MailstoreAdmin for PgStore {
    fn inspect(&self, _user: &str) -> Result<Vec<MessageInfo>, StoreError> {
        Err(db_error("not implemented yet".into()))
    }
    fn head(&self, _user: &str, _info: &MessageInfo, _limit: usize) -> Result<Vec<u8>, StoreError> {
        Err(db_error("not implemented yet".into()))
    }
    fn removed_messages(&self, _user: &str) -> Result<Vec<RemovedMessage>, StoreError> {
        Err(db_error("not implemented yet".into()))
    }
    fn restore(&self, _user: &str, _since: Option<SystemTime>, _now: SystemTime) -> Result<Vec<String>, StoreError> {
        Err(db_error("not implemented yet".into()))
    }
    fn purge(&self, _user: &str, _now: SystemTime) -> Result<CommitReport, StoreError> {
        Err(db_error("not implemented yet".into()))
    }
    fn release(&self, _user: &str, _folder: &str, _uidl: &str) -> Result<String, StoreError> {
        Err(db_error("not implemented yet".into()))
    }
    fn usage(&self, _user: &str) -> Result<(Usage, Quota), StoreError> {
        Err(db_error("not implemented yet".into()))
    }
    fn import_message(&self, _user: &str, _uidl: &Uidl, _received: SystemTime, _message: &mut dyn io::Read) -> Result<ImportOutcome, StoreError> {
        Err(db_error("not implemented yet".into()))
    }
}
