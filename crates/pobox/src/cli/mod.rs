//! One module per subcommand.

pub mod check;
pub mod copy;
pub mod db;
pub mod deliver;
pub mod dns;
mod fault;
pub mod import;
mod logins;
pub mod mailbox;
mod reload;
pub mod serve;
pub mod sieve;
pub mod store;
pub mod systemd;
pub mod uidl;
pub mod user;

use std::sync::Arc;

use pobox_auth::UserDb;
pub use store::{Store, open_store};

use crate::config::Settings;

/// Run as root, an admin subcommand acts as the service user (the data
/// dir's owner; see `privdrop::act_as_service_user`), so that what it
/// creates (`mail/`, a maildrop, the passwd-file) stays usable by the
/// server. Call before anything touches the data dir.
///
/// # Errors
/// A configuration error, or a switch that failed.
pub fn act_as_service_user(data: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let settings = Settings::load(data, config)?;
    pobox_server::privdrop::act_as_service_user(settings.user.as_deref(), &settings.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot act as the service user: {e}"))?;
    Ok(())
}

/// What `pobox serve` must be able to read and write once it runs as the
/// service user: (readable files, writable directories that exist). Call
/// before dropping privileges: afterwards a path the service user cannot
/// reach would look like one that does not exist.
pub fn service_paths(settings: &Settings, maildir: Option<&pobox_store::MaildirStore>) -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    let mut read = Vec::new();
    if may_exist(&settings.passwd_file) || settings.passwd_file_configured {
        read.push(settings.passwd_file.clone());
    }
    let app_passwords = UserDb::open(&settings.passwd_file).app_password_path();
    if may_exist(&app_passwords) {
        read.push(app_passwords);
    }
    for pair in &settings.tls_pairs {
        read.push(pair.cert.clone());
        read.push(pair.key.clone());
    }
    if let Some(o) = &settings.server.oauth {
        read.extend(o.jwks_file.clone());
    }
    if let Some(r) = &settings.server.oauth_remote {
        read.extend(r.ca_file.clone());
        read.extend(r.introspection.as_ref().map(|i| i.secret_file.clone()));
    }
    if let Some(o) = &settings.server.outbound {
        read.extend(o.relay.ca_file.iter().chain(&o.relay.password_file).cloned());
    }
    let sieve = &settings.server.sieve;
    read.extend(sieve.before.iter().chain(&sieve.after).cloned());
    let mut write = vec![settings.data_dir.clone()];
    if let Some(parent) = maildir.and_then(|m| m.lock_file().parent()) {
        write.push(parent.to_path_buf());
    }
    if let crate::store_config::StoreSettings::Postgres(pg) = &settings.store {
        read.extend(pg.password_file.iter().chain(&pg.ca_file).cloned());
    }
    write.retain(|d| may_exist(d));
    (read, write)
}

/// False only for a path that certainly does not exist: one we may not
/// look at (EACCES on a parent) must still be checked.
fn may_exist(path: &std::path::Path) -> bool {
    !matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Opens the user database and reports malformed lines on stderr: one bad
/// line must not take the other users down, but the admin must hear of it.
pub fn open_users(settings: &Settings) -> Arc<UserDb> {
    let users = UserDb::open(&settings.passwd_file);
    for w in users.warnings() {
        eprintln!("pobox: warning: {}:{}: {} (line ignored)", settings.passwd_file.display(), w.line, w.reason);
    }
    for w in users.app_password_warnings() {
        eprintln!("pobox: warning: {}:{}: {} (line ignored)", users.app_password_path().display(), w.line, w.reason);
    }
    Arc::new(users)
}
