//! Versioned schema migrations: embedded `.sql` files, applied in order,
//! each in its own transaction, recorded in `pobox_schema`.
//!
//! Every migration transaction first takes a transaction-scoped advisory
//! lock, so two nodes starting (or two `pobox db migrate` runs) at once
//! apply each version exactly once: the second waits, then sees the
//! version recorded and skips it. This is the one place the store uses an
//! advisory lock; it is held for a transaction, never for a session, so
//! it works through PgBouncer's transaction pooling too.

use tokio_postgres::Client;

use crate::{PgError, db_error};
use pobox_store::StoreError;

/// One embedded migration.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration this build knows, in order; the last is the version
/// the store requires.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "initial",
    sql: include_str!("../migrations/0001_initial.sql"),
}];

/// The advisory lock key of migrations ("pobox" in ASCII, as a number).
const MIGRATION_LOCK: i64 = 0x0070_6f62_6f78;

/// The schema version this build needs.
#[must_use]
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Where a database's schema stands ([`schema_status`](crate::schema_status)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The highest version applied (0: none, an empty database).
    pub current: i32,
    /// The version this build of pobox needs.
    pub latest: i32,
    /// Versions and names known here but not applied yet.
    pub pending: Vec<(i32, String)>,
}

impl SchemaStatus {
    /// True if the database is at the version this build needs.
    #[must_use]
    pub fn is_current(&self) -> bool {
        self.current == self.latest
    }
}

/// What [`migrate`](crate::migrate) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The version before.
    pub from: i32,
    /// The version now.
    pub to: i32,
    /// The migrations this run applied (another node may have applied
    /// some of the pending ones meanwhile).
    pub applied: Vec<(i32, String)>,
}

const CREATE_SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS pobox_schema (
    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())";

/// The highest applied version, 0 if the table does not exist.
pub(crate) async fn current_version(client: &Client) -> Result<i32, PgError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('pobox_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one("SELECT coalesce(max(version), 0) FROM pobox_schema", &[])
        .await?
        .get(0))
}

pub(crate) async fn status(client: &Client) -> Result<SchemaStatus, PgError> {
    let current = current_version(client).await?;
    Ok(SchemaStatus {
        current,
        latest: latest_version(),
        pending: MIGRATIONS
            .iter()
            .filter(|m| m.version > current)
            .map(|m| (m.version, m.name.to_owned()))
            .collect(),
    })
}

pub(crate) async fn apply(client: &mut Client) -> Result<MigrationReport, PgError> {
    let from = current_version(client).await?;
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(CREATE_SCHEMA_TABLE).await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM pobox_schema WHERE version = $1",
                &[&m.version],
            )
            .await?
            .is_some();
        if done {
            tx.rollback().await?;
            continue;
        }
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO pobox_schema (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied database migration"
        );
        applied.push((m.version, m.name.to_owned()));
    }
    let to = current_version(client).await?;
    Ok(MigrationReport { from, to, applied })
}

/// The error `connect` gives for a database at another version.
pub(crate) fn version_error(current: i32) -> StoreError {
    let latest = latest_version();
    let text = if current < latest {
        format!(
            "the database schema is at version {current}, this pobox needs version {latest}: \
             run `pobox db migrate` first"
        )
    } else {
        format!(
            "the database schema is at version {current}, newer than this pobox knows ({latest}): \
             upgrade pobox on this node"
        )
    };
    db_error(text)
}
