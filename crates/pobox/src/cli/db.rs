//! `pobox db`: the PostgreSQL store's schema. `migrate` applies what is
//! pending (idempotent: a second run does nothing), `status` says where the
//! database stands without changing it.

use std::path::Path;

use clap::Subcommand;

use crate::config::Settings;
use crate::store_config::{PostgresSettings, StoreSettings, display_url};

/// `pobox db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending schema migrations to the PostgreSQL store (safe to
    /// run again, and while nodes are serving).
    Migrate,
    /// Show the schema version, the version this pobox needs and what is
    /// pending. Exits 1 when migrations are pending.
    Status,
}

/// Runs a `pobox db` subcommand; `Ok(false)` when `status` finds
/// migrations pending.
///
/// # Errors
/// Not the PostgreSQL backend, an unreachable database, a failed migration.
pub fn run(data: &Path, config: Option<&Path>, cmd: &DbCommand) -> anyhow::Result<bool> {
    let settings = Settings::load(data, config)?;
    let pg = postgres(&settings)?;
    let cfg = super::store::pg_config(pg);
    let url = display_url(&pg.url);
    match cmd {
        DbCommand::Migrate => {
            let report = pobox_store_pg::migrate(&cfg).map_err(|e| anyhow::anyhow!("PostgreSQL {url}: {e}"))?;
            if report.applied.is_empty() {
                println!("{url}: schema at version {}, nothing to do", report.to);
            } else {
                for (version, name) in &report.applied {
                    println!("{url}: applied migration {version} ({name})");
                }
                println!("{url}: schema now at version {} (was {})", report.to, report.from);
            }
            Ok(true)
        }
        DbCommand::Status => {
            let status = pobox_store_pg::schema_status(&cfg).map_err(|e| anyhow::anyhow!("PostgreSQL {url}: {e}"))?;
            println!("{url}: schema version {}, this pobox needs {}", status.current, status.latest);
            for (version, name) in &status.pending {
                println!("  pending: {version} ({name})");
            }
            if status.is_current() {
                println!("up to date");
            } else {
                println!("run `pobox db migrate` to apply the pending migrations");
            }
            Ok(status.is_current())
        }
    }
}

fn postgres(settings: &Settings) -> anyhow::Result<&PostgresSettings> {
    match &settings.store {
        StoreSettings::Postgres(pg) => Ok(pg),
        StoreSettings::Maildir => anyhow::bail!(
            "pobox db works on the PostgreSQL store, and this configuration uses store.backend = \"maildir\" \
             (set [store] backend = \"postgres\" and [store.postgres] url)"
        ),
    }
}
