//! The configured mail store, whatever its backend: every subcommand opens
//! it here and talks to it through the storage port
//! (`pobox_store::MailstoreAdmin`), so `pobox mailbox`, `pobox user`,
//! `pobox deliver` and `pobox serve` work the same on Maildir and on
//! PostgreSQL. The few operations that only make sense on files (Dovecot's
//! in-place import, the lock file's path) ask for [`Store::maildir`], which
//! says clearly that they need the Maildir backend.

use std::sync::Arc;

use pobox_store::{MailLocation, MaildirStore, Mailstore, MailstoreAdmin};

use crate::config::Settings;
use crate::store_config::{PostgresSettings, StoreSettings};
use pobox_store_pg::{PgConfig, PgStore};

/// An opened store: the port, plus the concrete Maildir store when that is
/// the backend.
#[derive(Clone)]
pub struct Store {
    admin: Arc<dyn MailstoreAdmin>,
    maildir: Option<Arc<MaildirStore>>,
    backend: StoreSettings,
}

impl std::ops::Deref for Store {
    type Target = dyn MailstoreAdmin;
    fn deref(&self) -> &Self::Target {
        &*self.admin
    }
}

impl Store {
    /// The store as the server and the delivery pipeline take it.
    pub fn mailstore(&self) -> Arc<dyn Mailstore> {
        self.admin.clone()
    }

    /// The backend's settings (`[store]`).
    pub fn backend(&self) -> &StoreSettings {
        &self.backend
    }

    /// The Maildir store, for `what`, an operation that works on files.
    ///
    /// # Errors
    /// Another backend is configured; the message names `what`.
    pub fn maildir(&self, what: &str) -> anyhow::Result<&MaildirStore> {
        self.maildir.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "{what} needs the Maildir backend, and this configuration uses store.backend = \"{}\"",
                self.backend.name()
            )
        })
    }

    /// The Maildir store if that is the backend.
    pub fn as_maildir(&self) -> Option<&MaildirStore> {
        self.maildir.as_deref()
    }

    /// `user`'s UIDLs and sizes without taking the maildrop lock (so it
    /// works while a client is connected); empty for a user who has none.
    ///
    /// # Errors
    /// Backend errors.
    pub fn uidl_listing(&self, user: &str) -> anyhow::Result<Vec<(String, u64)>> {
        Ok(match &self.maildir {
            Some(m) => m.uidl_listing(user)?.unwrap_or_default(),
            None => self.admin.inspect(user)?.into_iter().map(|m| (m.uidl.into_string(), m.size)).collect(),
        })
    }

    /// Replaces the size limit, retention and quota policies (a reload);
    /// open maildrops keep the policy they opened with.
    pub fn set_policies(&self, settings: &Settings) {
        self.admin.set_policies(
            Some(settings.server.lmtp_max_message_size),
            settings.retention.clone(),
            settings.quota.clone(),
        );
    }
}

/// Opens the configured store. For PostgreSQL this connects and checks the
/// schema (an outdated one is refused, naming `pobox db migrate`).
///
/// # Errors
/// An invalid `mail_location`, or a database that cannot be reached.
pub fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    match &settings.store {
        StoreSettings::Maildir => {
            let location =
                MailLocation::new(settings.mail_location.clone()).map_err(|e| anyhow::anyhow!("mail_location: {e}"))?;
            let store = Arc::new(
                MaildirStore::new(location)
                    .with_max_size(settings.server.lmtp_max_message_size)
                    .with_retention(settings.retention.clone())
                    .with_quota(settings.quota.clone()),
            );
            Ok(Store { admin: store.clone(), maildir: Some(store), backend: settings.store.clone() })
        }
        StoreSettings::Postgres(pg) => {
            let store = PgStore::connect(pg_config(pg))
                .map_err(|e| anyhow::anyhow!("PostgreSQL {}: {e}", crate::store_config::display_url(&pg.url)))?;
            let store = Arc::new(
                store
                    .with_max_size(settings.server.lmtp_max_message_size)
                    .with_retention(settings.retention.clone())
                    .with_quota(settings.quota.clone()),
            );
            Ok(Store { admin: store, maildir: None, backend: settings.store.clone() })
        }
    }
}

/// A Maildir store at `template` (a `mail_location`-style path with
/// `{user}`), without size limit or policies: the other end of `pobox
/// import maildir` and `pobox export maildir`.
///
/// # Errors
/// An invalid template.
pub fn maildir_at(template: &str) -> anyhow::Result<MaildirStore> {
    let location = MailLocation::new(template.to_string()).map_err(|e| anyhow::anyhow!("{template}: {e}"))?;
    Ok(MaildirStore::new(location))
}

/// The backend's connection settings from `[store.postgres]`.
pub fn pg_config(pg: &PostgresSettings) -> PgConfig {
    PgConfig {
        url: pg.url.clone(),
        password_file: pg.password_file.clone(),
        ca_file: pg.ca_file.clone(),
        pool_size: pg.pool_size,
        lease_secs: pg.lease_secs,
        node: pg.node.clone(),
    }
}

/// Opens the store for `pobox serve`: with `migrate_on_start`, applies
/// pending migrations first (safe when several nodes start at once: the
/// backend serialises them); otherwise an outdated schema is refused.
///
/// # Errors
/// As [`open_store`], and a failed migration.
pub fn open_for_serve(settings: &Settings) -> anyhow::Result<Store> {
    if let StoreSettings::Postgres(pg) = &settings.store {
        if pg.migrate_on_start {
            let report = pobox_store_pg::migrate(&pg_config(pg))
                .map_err(|e| anyhow::anyhow!("store.postgres.migrate_on_start: {e}"))?;
            for (version, name) in &report.applied {
                tracing::info!(version, name = %name, "schema migration applied");
            }
        } else {
            let status = pobox_store_pg::schema_status(&pg_config(pg))
                .map_err(|e| anyhow::anyhow!("PostgreSQL {}: {e}", crate::store_config::display_url(&pg.url)))?;
            if !status.is_current() {
                anyhow::bail!(
                    "PostgreSQL {}: the schema is at version {} and this pobox needs {}; run `pobox db migrate` \
                     (or set store.postgres.migrate_on_start = true)",
                    crate::store_config::display_url(&pg.url),
                    status.current,
                    status.latest
                );
            }
        }
    }
    open_store(settings)
}
