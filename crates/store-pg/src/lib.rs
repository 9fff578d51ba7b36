//! The PostgreSQL mail store for pobox: the storage port
//! ([`Mailstore`], [`MailstoreAdmin`], [`Mailbox`](pobox_store::Mailbox))
//! on a database that several `pobox serve` nodes share.
//!
//! # What it keeps
//!
//! * Maildrops, messages (UIDL, POP3 size, delivery and retrieval times,
//!   folder, restore area) and bodies in 256 KiB chunks (`message_chunks`),
//!   so delivery and RETR run in constant memory whatever the size. The
//!   stored bytes are what Maildir stores (LF line endings), so every
//!   backend returns the same octets.
//! * The RFC 1939 §8 maildrop lock across nodes as a lease row with a
//!   fencing token (`maildrop_lease`); see `lease.rs` and ARCHITECTURE.md
//!   for why not advisory locks.
//! * A delivery is acknowledged only after its transaction commits; the
//!   quota is checked in that transaction under a row lock on the
//!   maildrop, so concurrent deliveries from any number of nodes never
//!   exceed it.
//!
//! # Threads
//!
//! The port is synchronous, and is called from blocking threads (as the
//! server already does for Maildir). A [`PgStore`] owns a small tokio
//! runtime that drives the async driver (tokio-postgres, a deadpool pool)
//! and waits on the calling thread for each operation (the future is
//! polled there with the store's runtime entered; the runtime's workers
//! drive the sockets). This never panics, even inside another runtime's
//! task, but there it would stall that runtime's worker: call the store
//! from blocking threads (`spawn_blocking`), as the server does for
//! Maildir. One more thread per store renews the leases the node holds
//! every `lease_secs / 3`.
//!
//! # Failures
//!
//! A database that is down, restarting or unreachable gives
//! [`StoreError::Io`] (temporary: POP3 `-ERR [SYS/TEMP]`, LMTP `4xx`); the
//! pool replaces broken connections, so service resumes by itself. A
//! session whose lease was lost cannot commit: [`StoreError::LeaseLost`],
//! nothing removed.
//!
//! # Schema
//!
//! Versioned migrations embedded in the binary ([`migrate`], run by
//! `pobox db migrate`); [`PgStore::connect`] refuses a database that is
//! not at [`schema::latest_version`].

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use pobox_store::policies::PolicyCell;
use pobox_store::StoreError;
use pobox_store::quota::QuotaConfig;
use pobox_store::retention::RetentionConfig;

mod admin;
mod body;
mod connect;
mod lease;
mod mailbox;
pub mod schema;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use body::CHUNK_SIZE;
pub use schema::{MigrationReport, SchemaStatus};

/// How to reach the database and how this node takes part.
#[derive(Clone)]
pub struct PgConfig {
    /// A tokio-postgres connection string, URL or key=value form, e.g.
    /// `postgres://pobox@127.0.0.1:5432/pobox?sslmode=require`. `sslmode`
    /// (`disable`, `prefer`, `require`) comes from here.
    pub url: String,
    /// A file holding the database password (first line), read at
    /// connect and never logged. The URL may carry a password instead.
    pub password_file: Option<PathBuf>,
    /// PEM roots to verify the database's certificate (rustls, ring); the
    /// Mozilla roots (webpki-roots) when unset.
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool (default 16).
    pub pool_size: usize,
    /// How long a maildrop lease lasts without renewal, in seconds
    /// (default 30): how long a crashed node's sessions keep their
    /// maildrops locked. Renewed every third of it.
    pub lease_secs: u64,
    /// This node's name in leases and logs (default: the host name).
    pub node: String,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            url: "postgres://pobox@127.0.0.1:5432/pobox".into(),
            password_file: None,
            ca_file: None,
            pool_size: 16,
            lease_secs: 30,
            node: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        }
    }
}

/// Shows the URL without its password.
impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &connect::redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .field("lease_secs", &self.lease_secs)
            .field("node", &self.node)
            .finish()
    }
}

/// The PostgreSQL [`Mailstore`](pobox_store::Mailstore). `Send + Sync`;
/// share it by reference or in an `Arc`.
pub struct PgStore {
    pub(crate) db: Arc<connect::Db>,
    pub(crate) policies: PolicyCell,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("node", &self.db.node)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects (the pool opens connections lazily, but one is opened now
    /// to check the schema) and starts the lease renewer.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] if the database cannot be reached, the password
    /// file or CA file cannot be read, or the schema is not at the version
    /// this build needs (the message names `pobox db migrate`).
    pub fn connect(cfg: PgConfig) -> Result<PgStore, StoreError> {
        let db = connect::Db::open(&cfg)?;
        let current = db.run(async {
            let client = db.pool.get().await?;
            schema::current_version(&client).await
        })?;
        if current != schema::latest_version() {
            return Err(schema::version_error(current));
        }
        let db = Arc::new(db);
        lease::Renewer::start(&db);
        Ok(PgStore {
            db,
            policies: PolicyCell::default(),
        })
    }

    /// Limits delivered messages to `max` POP3 octets.
    #[must_use]
    pub fn with_max_size(self, max: u64) -> Self {
        self.policies.set_max_size(max);
        self
    }

    /// Applies retention policies.
    #[must_use]
    pub fn with_retention(self, retention: RetentionConfig) -> Self {
        self.policies.set_retention(retention);
        self
    }

    /// Applies quotas to deliveries.
    #[must_use]
    pub fn with_quota(self, quota: QuotaConfig) -> Self {
        self.policies.set_quota(quota);
        self
    }

    /// Replaces the size limit, retention and quota policies (a reload);
    /// open maildrops keep the retention policy they were opened with.
    pub fn set_policies(
        &self,
        max_size: Option<u64>,
        retention: RetentionConfig,
        quota: QuotaConfig,
    ) {
        self.policies.replace(max_size, retention, quota);
    }

    /// This node's name, as leases record it.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.db.node
    }

    /// Stops renewing this node's leases, as if the node were cut off
    /// from the database: its sessions' leases then expire and other
    /// nodes may take the maildrops over. For tests of the fencing.
    #[cfg(feature = "testkit")]
    pub fn stop_lease_renewal(&self) {
        self.db
            .renewal_stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Applies the pending schema migrations (`pobox db migrate`), each in its
/// own transaction under an advisory transaction lock, so nodes starting
/// at once are safe. Idempotent.
///
/// # Errors
///
/// [`StoreError::Io`] if the database cannot be reached or a migration
/// fails (that migration is rolled back; earlier ones stay applied).
pub fn migrate(cfg: &PgConfig) -> Result<MigrationReport, StoreError> {
    let db = connect::Db::open(cfg)?;
    db.run(async {
        let mut client = db.pool.get().await?;
        schema::apply(&mut client).await
    })
    .map_err(Into::into)
}

/// The schema's version, the version this build needs and the pending
/// migrations.
///
/// # Errors
///
/// [`StoreError::Io`] if the database cannot be reached.
pub fn schema_status(cfg: &PgConfig) -> Result<SchemaStatus, StoreError> {
    let db = connect::Db::open(cfg)?;
    db.run(async {
        let client = db.pool.get().await?;
        schema::status(&client).await
    })
    .map_err(Into::into)
}

/// Errors inside the crate: the driver's, the pool's, or the port's own.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    #[error("database: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PgError {
    /// True for a unique-constraint violation (a UIDL taken meanwhile).
    pub(crate) fn is_unique_violation(&self) -> bool {
        matches!(self, PgError::Db(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
    }
}

/// Database trouble is temporary for clients ([SYS/TEMP], LMTP 4xx).
impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Store(e) => e,
            other => db_error(other.to_string()),
        }
    }
}

/// The driver's error with the server's message and SQLSTATE (its
/// `Display` alone says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

pub(crate) fn db_error(text: String) -> StoreError {
    StoreError::Io {
        context: "PostgreSQL store".into(),
        source: io::Error::other(text),
    }
}
