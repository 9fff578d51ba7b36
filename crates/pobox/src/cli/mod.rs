//! One module per subcommand.

pub mod check;
pub mod deliver;
pub mod mailbox;
pub mod serve;
pub mod sieve;
pub mod user;

use std::sync::Arc;

use pobox_auth::UserDb;
use pobox_store::{MailLocation, MaildirStore};

use crate::config::Settings;

/// Opens the user database and reports malformed lines on stderr: one bad
/// line must not take the other users down, but the admin must hear of it.
pub fn open_users(settings: &Settings) -> Arc<UserDb> {
    let users = UserDb::open(&settings.passwd_file);
    for w in users.warnings() {
        eprintln!("pobox: warning: {}:{}: {} (line ignored)", settings.passwd_file.display(), w.line, w.reason);
    }
    Arc::new(users)
}

/// The Maildir store for the configured location.
///
/// # Errors
/// When the location template is invalid.
pub fn open_store(settings: &Settings) -> anyhow::Result<MaildirStore> {
    let location = MailLocation::new(settings.mail_location.clone())
        .map_err(|e| anyhow::anyhow!("mail_location: {e}"))?;
    Ok(MaildirStore::new(location)
        .with_max_size(settings.server.lmtp_max_message_size)
        .with_retention(settings.server.retention.clone())
        .with_quota(settings.quota.clone()))
}
