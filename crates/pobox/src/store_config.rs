//! `[store]`: which backend holds the maildrops (Maildir on this host, or
//! PostgreSQL shared by several nodes), and `[store.postgres]`'s keys.
//!
//! Kept out of `config.rs` so the backend's keys live in one place; the
//! main config only carries the raw table and the validated result.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Deserialize;

/// `[store]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `"maildir"` (default) or `"postgres"`.
    pub backend: Option<String>,
    /// `[store.postgres]`: only read with `backend = "postgres"`.
    pub postgres: Option<RawPostgres>,
}

/// `[store.postgres]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// `postgres://USER@HOST:PORT/DB?sslmode=...` (no password: see
    /// `password_file`).
    pub url: Option<String>,
    /// File whose first line is the database password.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) to verify the database's TLS certificate.
    pub ca_file: Option<PathBuf>,
    /// Most database connections this node opens (default 16).
    pub pool_size: Option<usize>,
    /// Seconds a maildrop lease lasts without renewal (default 30): how
    /// long a dead node's users wait before another node serves them.
    pub lease_secs: Option<u64>,
    /// This node's name in lease rows and logs (default: `hostname`).
    pub node: Option<String>,
    /// Apply pending schema migrations when `pobox serve` starts (default
    /// false: `pobox db migrate` does it, once, on purpose).
    pub migrate_on_start: Option<bool>,
}

/// The validated `[store]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    /// One maildrop directory per user (`mail_location`).
    Maildir,
    /// One PostgreSQL database shared by every node.
    Postgres(PostgresSettings),
}

impl StoreSettings {
    /// The backend's name as the config spells it.
    pub fn name(&self) -> &'static str {
        match self {
            StoreSettings::Maildir => "maildir",
            StoreSettings::Postgres(_) => "postgres",
        }
    }
}

/// The validated `[store.postgres]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// The connection URL, without a password.
    pub url: String,
    /// The password's file (absolute).
    pub password_file: Option<PathBuf>,
    /// The CA file (absolute).
    pub ca_file: Option<PathBuf>,
    /// Pool size, at least 2 (a session's lease renewal must not wait for
    /// the only connection).
    pub pool_size: usize,
    /// Lease time in seconds.
    pub lease_secs: u64,
    /// This node's name.
    pub node: String,
    /// Migrate at `pobox serve` start.
    pub migrate_on_start: bool,
}

/// Default pool size: enough for a busy node's blocking pool without
/// exhausting PostgreSQL's default 100 connections with a few nodes.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Default lease time, the backend's own (renewed every third of it).
pub const DEFAULT_LEASE_SECS: u64 = 30;
/// Shortest lease accepted: renewal runs every third of it, and a lease
/// shorter than a couple of seconds would expire under a busy database.
pub const MIN_LEASE_SECS: u64 = 3;
/// Longest lease accepted: a dead node's users wait this long.
pub const MAX_LEASE_SECS: u64 = 3600;

/// Validates `[store]`; relative paths are relative to `data_dir`;
/// `hostname` is the default node name.
///
/// # Errors
/// A key out of range, a missing `url`, a password in the URL, each
/// naming the key.
pub fn store(raw: Option<RawStore>, data_dir: &Path, hostname: &str) -> anyhow::Result<StoreSettings> {
    let raw = raw.unwrap_or_default();
    match raw.backend.as_deref() {
        None | Some("maildir") => {
            if raw.postgres.is_some() && raw.backend.is_some() {
                bail!(
                    "store.postgres: set, but store.backend is \"maildir\"; remove the table or set backend = \"postgres\""
                );
            }
            Ok(StoreSettings::Maildir)
        }
        Some("postgres") => {
            Ok(StoreSettings::Postgres(postgres(raw.postgres.unwrap_or_default(), data_dir, hostname)?))
        }
        Some(other) => bail!("store.backend: {other:?} is neither \"maildir\" nor \"postgres\""),
    }
}

fn postgres(raw: RawPostgres, data_dir: &Path, hostname: &str) -> anyhow::Result<PostgresSettings> {
    let Some(url) = raw.url.filter(|u| !u.is_empty()) else {
        bail!(
            "store.postgres.url: required with backend = \"postgres\", e.g. \"postgres://pobox@127.0.0.1:5432/pobox\""
        );
    };
    check_url(&url)?;
    let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
    if !(2..=1000).contains(&pool_size) {
        bail!("store.postgres.pool_size: {pool_size} is outside 2..=1000");
    }
    let lease_secs = raw.lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
    if !(MIN_LEASE_SECS..=MAX_LEASE_SECS).contains(&lease_secs) {
        bail!("store.postgres.lease_secs: {lease_secs} is outside {MIN_LEASE_SECS}..={MAX_LEASE_SECS}");
    }
    let node = raw.node.unwrap_or_else(|| hostname.to_string());
    if node.is_empty() || node.len() > 255 || node.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("store.postgres.node: {node:?} must be 1 to 255 printable characters without spaces");
    }
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { data_dir.join(p) };
    Ok(PostgresSettings {
        url,
        password_file: raw.password_file.map(resolve),
        ca_file: raw.ca_file.map(resolve),
        pool_size,
        lease_secs,
        node,
        migrate_on_start: raw.migrate_on_start.unwrap_or(false),
    })
}

/// Mail and password hashes cross this connection: to another host it
/// must say what it wants. tokio-postgres's default, `sslmode=prefer`,
/// falls back to plaintext when the server (or someone in the path)
/// declines TLS, so it is refused unless the host is this machine.
fn check_tls(authority: &str, query: &str) -> anyhow::Result<()> {
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => hostport.split(':').next().unwrap_or(""),
    };
    let local = host.is_empty()
        || host.starts_with('%')
        || host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let mode = query
        .split('&')
        .find_map(|kv| kv.split_once('=').filter(|(k, _)| k.eq_ignore_ascii_case("sslmode")).map(|(_, v)| v))
        .unwrap_or("prefer");
    if !local && mode.eq_ignore_ascii_case("prefer") {
        bail!(
            "store.postgres.url: the database at {host} is reached without sslmode, which falls back to plaintext; \
             add ?sslmode=require (TLS verified with ca_file or the Mozilla roots), or sslmode=disable on a network you trust"
        );
    }
    Ok(())
}

/// A `postgres://` or `postgresql://` URL without a password: the URL is
/// printed by `pobox check` and `pobox serve`, and may reach logs, so the
/// secret belongs in `password_file` (mode 0600) instead.
fn check_url(url: &str) -> anyhow::Result<()> {
    let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) else {
        // Not echoed: a key=value connection string may carry a password.
        bail!("store.postgres.url must be a URL starting with postgres:// or postgresql://");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        bail!(
            "store.postgres.url: contains a password; put it in store.postgres.password_file instead (the URL is shown in logs)"
        );
    }
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|kv| kv.split('=').next().is_some_and(|k| k.eq_ignore_ascii_case("password"))) {
        bail!("store.postgres.url: contains a password parameter; put it in store.postgres.password_file instead");
    }
    check_tls(authority, query)?;
    Ok(())
}

/// The URL with its user name kept and anything secret-looking removed,
/// for banners and `pobox check` (the URL is already password-free; this
/// only drops the query, which may carry TLS key paths).
pub fn display_url(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<StoreSettings> {
        let raw: RawStore = toml::from_str(text)?;
        store(Some(raw), Path::new("/srv/pobox"), "mx1.example.org")
    }

    #[test]
    fn maildir_is_the_default() {
        assert_eq!(store(None, Path::new("/d"), "h").unwrap(), StoreSettings::Maildir);
        assert_eq!(parse("backend = \"maildir\"").unwrap(), StoreSettings::Maildir);
    }

    #[test]
    fn postgres_defaults_and_relative_paths() {
        let s = parse(
            "backend = \"postgres\"\n[postgres]\nurl = \"postgres://pobox@127.0.0.1:5432/pobox\"\n\
             password_file = \"db.pass\"\nca_file = \"/etc/ssl/db.pem\"\n",
        )
        .unwrap();
        let StoreSettings::Postgres(p) = s else { panic!("not postgres") };
        assert_eq!(p.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(p.lease_secs, DEFAULT_LEASE_SECS);
        assert_eq!(p.node, "mx1.example.org");
        assert!(!p.migrate_on_start);
        assert_eq!(p.password_file.as_deref(), Some(Path::new("/srv/pobox/db.pass")));
        assert_eq!(p.ca_file.as_deref(), Some(Path::new("/etc/ssl/db.pem")));
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(err("backend = \"sqlite\"").contains("store.backend"));
        assert!(err("backend = \"postgres\"").contains("store.postgres.url: required"));
        let pg = |extra: &str| {
            format!("backend = \"postgres\"\n[postgres]\nurl = \"postgres://p@h/db?sslmode=require\"\n{extra}")
        };
        assert!(err(&pg("lease_secs = 1")).contains("store.postgres.lease_secs"));
        assert!(err(&pg("pool_size = 1")).contains("store.postgres.pool_size"));
        assert!(err(&pg("node = \"a b\"")).contains("store.postgres.node"));
        assert!(err(&pg("port = 5")).contains("unknown field"));
        assert!(err("backend = \"maildir\"\n[postgres]\nurl = \"postgres://h/d\"").contains("store.postgres: set"));
    }

    #[test]
    fn a_password_in_the_url_is_refused() {
        let err = |url: &str| {
            format!("{:#}", parse(&format!("backend = \"postgres\"\n[postgres]\nurl = \"{url}\"")).unwrap_err())
        };
        assert!(err("postgres://pobox:secret@db/pobox").contains("password_file"));
        assert!(err("postgresql://db/pobox?sslmode=require&password=x").contains("password_file"));
        assert!(err("mysql://db/pobox").contains("postgres://"));
        assert!(
            parse("backend = \"postgres\"\n[postgres]\nurl = \"postgres://pobox@db:5432/pobox?sslmode=require\"")
                .is_ok()
        );
        assert_eq!(display_url("postgres://p@h/db?sslmode=require"), "postgres://p@h/db");
    }

    #[test]
    fn another_host_needs_an_explicit_sslmode() {
        let url = |url: &str| parse(&format!("backend = \"postgres\"\n[postgres]\nurl = \"{url}\""));
        let err = format!("{:#}", url("postgres://pobox@db.example.org/pobox").unwrap_err());
        assert!(err.contains("sslmode=require"), "{err}");
        assert!(url("postgres://pobox@db.example.org/pobox?sslmode=prefer").is_err());
        assert!(url("postgres://pobox@db.example.org/pobox?sslmode=require").is_ok());
        assert!(url("postgres://pobox@10.0.0.5:5432/pobox?sslmode=disable").is_ok());
        for local in ["postgres://pobox@127.0.0.1/pobox", "postgres://pobox@localhost/pobox", "postgres://pobox@[::1]:5432/pobox"] {
            assert!(url(local).is_ok(), "{local}");
        }
        // Not echoed: a connection string may carry a password.
        let err = format!("{:#}", url("host=db password=hunter2").unwrap_err());
        assert!(!err.contains("hunter2"), "{err}");
    }
}
