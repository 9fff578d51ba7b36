//! SIGHUP in `pobox serve`: re-read the configuration file the server
//! started with, validate all of it, and hand the server a new generation
//! of its services (`pobox_server::run_reloadable`). On any error the
//! server goes on with what it has and one log line says why.
//!
//! What a reload cannot change is compared with the values the server
//! started with and named in one log line: the data dir, the service user,
//! the mail location (the store with its lock table stays), the log
//! settings, and the sizes fixed when shared state was built (connection
//! slots, penalty cap, credential cache lifetime, DATA budgets, DNS
//! resolver, expiry interval), the health endpoint's address, plus any
//! listener that cannot be bound now that privileges are dropped.
//! `[proxy_protocol]` does apply: each connection reads it from the
//! generation it was accepted under.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pobox_server::{ListenAddr, Protocol, Reload, Services, Tls};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::serve::ServeArgs;
use crate::config::Settings;

/// Where the configuration comes from, as at startup.
pub(super) struct Source {
    data: PathBuf,
    config: Option<PathBuf>,
    args: ServeArgs,
    /// The config file's `data_dir` at startup (only a restart moves it).
    data_dir_key: Option<PathBuf>,
}

impl Source {
    pub(super) fn new(data: &Path, config: Option<&Path>, args: ServeArgs) -> Source {
        Source {
            data: data.to_path_buf(),
            config: config.map(Path::to_path_buf),
            data_dir_key: data_dir_key(config),
            args,
        }
    }

    fn describe(&self) -> String {
        self.config.as_deref().map_or_else(|| "the embedded defaults".to_string(), |p| p.display().to_string())
    }
}

fn data_dir_key(config: Option<&Path>) -> Option<PathBuf> {
    config.and_then(|c| crate::config::data_dir(None, Some(c)).ok())
}

/// The SIGHUP handler, installed before the server serves anything: the
/// signal's default action would end the process.
pub(super) fn hangup_signal() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot handle SIGHUP; configuration reload is unavailable");
            None
        }
    }
}

/// Builds and sends a new generation on each SIGHUP.
pub(super) struct Reloader {
    source: Source,
    /// The settings the server started with: what needs a restart is
    /// compared with these, so it is named at every reload until then.
    started: Settings,
    services: Arc<Services>,
    store: super::Store,
    reloads: mpsc::Sender<Reload>,
}

impl Reloader {
    pub(super) fn new(
        source: Source,
        started: Settings,
        services: Arc<Services>,
        store: super::Store,
        reloads: mpsc::Sender<Reload>,
    ) -> Reloader {
        Reloader { source, started, services, store, reloads }
    }

    /// Reloads on every SIGHUP until the server stops.
    pub(super) async fn run(mut self, hup: Option<Signal>) {
        let Some(mut hup) = hup else { return };
        while hup.recv().await.is_some() {
            super::systemd::reloading();
            info!(config = %self.source.describe(), "SIGHUP received: reloading the configuration");
            if !self.reload().await {
                // The server is shutting down.
                return;
            }
            super::systemd::ready();
        }
    }

    /// One reload. False when the server no longer takes reloads.
    async fn reload(&mut self) -> bool {
        let source = (self.source.data.clone(), self.source.config.clone(), self.source.args.clone());
        let tls = self.services.tls.clone();
        let built = tokio::task::spawn_blocking(move || build(&source.0, source.1.as_deref(), &source.2, tls)).await;
        let (settings, users, tls) = match built {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                error!(
                    config = %self.source.describe(),
                    error = %one_line(&format!("{e:#}")),
                    "configuration reload failed; still running on the previous configuration"
                );
                return true;
            }
            Err(e) => {
                error!(error = %e, "configuration reload failed; still running on the previous configuration");
                return true;
            }
        };
        let mut restart = needs_restart(&self.started, &settings);
        if data_dir_key(self.source.config.as_deref()) != self.source.data_dir_key {
            restart.insert(0, "data_dir".into());
        }
        // The store (its lock table and listing cache) stays; only its
        // policies change. Open maildrops keep the policy they opened with.
        self.store.set_policies(&settings);
        let users_changed = settings.passwd_file != self.current_passwd_file();
        let services = Arc::new(self.services.next(settings.server.clone(), users, tls, users_changed));
        let (done, answer) = oneshot::channel();
        let reload = Reload {
            services: services.clone(),
            listeners: listeners(&settings),
            socket_access: settings.lmtp_socket.clone(),
            done,
        };
        if self.reloads.send(reload).await.is_err() {
            return false;
        }
        let Ok(failed) = answer.await else { return false };
        restart.extend(failed.iter().map(|e| format!("{} listener {}", e.protocol, e.addr)));
        self.services = services;
        info!(
            passwd_file = %settings.passwd_file.display(),
            "configuration reloaded; new sessions use it, open ones keep theirs"
        );
        if !restart.is_empty() {
            warn!(
                settings = %restart.join(", "),
                "changed in the configuration but in effect only after a restart"
            );
        }
        true
    }

    fn current_passwd_file(&self) -> PathBuf {
        self.services.users.path().to_path_buf()
    }
}

/// Reads and checks everything the next generation needs, as startup does;
/// nothing is swapped yet. The certificates are read last: when they are
/// the files in use already, reading them replaces the loaded set.
fn build(
    data: &Path,
    config: Option<&Path>,
    args: &ServeArgs,
    current_tls: Option<Tls>,
) -> anyhow::Result<(Settings, Arc<pobox_auth::UserDb>, Option<Tls>)> {
    use anyhow::Context;
    let mut settings = Settings::load(data, config)?;
    super::serve::apply_overrides(&mut settings, args)?;
    if settings.passwd_file_configured
        && let Err(e) = std::fs::metadata(&settings.passwd_file)
    {
        anyhow::bail!("passwd_file {}: {e}; every login would fail", settings.passwd_file.display());
    }
    if let Some(oauth) = &settings.server.oauth {
        pobox_server::oauth_remote::BearerAuth::new(oauth, settings.server.oauth_remote.as_ref())
            .check_local()
            .map_err(|e| anyhow::anyhow!("[oauth]: {e}"))?;
    }
    let users = super::open_users(&settings);
    let needs_tls = !settings.pop3.is_empty() || !settings.pop3s.is_empty() || !settings.smtp.is_empty();
    let tls_dir = settings.data_dir.join("tls");
    let pairs = if settings.tls_pairs.is_empty() {
        vec![pobox_server::tls::CertPair { cert: tls_dir.join("cert.pem"), key: tls_dir.join("key.pem") }]
    } else {
        settings.tls_pairs.clone()
    };
    let tls = match current_tls {
        _ if !needs_tls => None,
        // The same files: re-read them into the resolver in use, so that
        // whatever else swaps certificates into it keeps working.
        Some(tls) if tls.pairs() == pairs.as_slice() => {
            tls.reload().context("TLS certificates")?;
            Some(tls)
        }
        _ => Some(
            pobox_server::tls::load_or_generate_many(
                &tls_dir,
                settings.tls_pairs.clone(),
                &settings.server.hostname,
                &pobox_server::tls::certificate_ips(&super::serve::tls_listeners(&settings)),
            )
            .context("TLS certificates")?,
        ),
    };
    Ok((settings, users, tls))
}

/// `error` on one log line: TOML errors come as several lines (a
/// source excerpt with a caret under the key); the excerpt goes, the
/// position and the reason stay, and serde's list of every valid key is
/// cut (the key at fault is named before it).
fn one_line(error: &str) -> String {
    let excerpt = |l: &str| l.is_empty() || l.starts_with('|') || l.split_once(" |").is_some_and(|(n, _)| n.trim().parse::<u32>().is_ok());
    let parts: Vec<&str> = error.lines().map(str::trim).filter(|l| !excerpt(l)).collect();
    let joined = parts.join("; ");
    match joined.find(", expected one of") {
        Some(cut) => joined[..cut].to_string(),
        None => joined,
    }
}

/// Every configured listener.
fn listeners(settings: &Settings) -> Vec<(Protocol, ListenAddr)> {
    [
        (Protocol::Pop3, &settings.pop3),
        (Protocol::Pop3s, &settings.pop3s),
        (Protocol::Lmtp, &settings.lmtp),
        (Protocol::Smtp, &settings.smtp),
        (Protocol::Policy, &settings.policy),
    ]
    .into_iter()
    .flat_map(|(p, addrs)| addrs.iter().map(move |a| (p, a.clone())))
    .collect()
}

/// The keys whose new values differ from the running ones and which only a
/// restart applies (see the module docs for why each is fixed).
fn needs_restart(started: &Settings, new: &Settings) -> Vec<String> {
    let (a, b) = (&started.server, &new.server);
    [
        ("user", started.user != new.user),
        ("mail_location", started.mail_location != new.mail_location),
        // The store, its pool and its leases are built once.
        ("[store] (backend and connection)", started.store != new.store),
        ("log", started.log != new.log),
        ("log_format", started.log_json != new.log_json),
        ("lmtp_socket (of existing sockets)", started.lmtp_socket != new.lmtp_socket),
        ("max_connections", a.max_connections != b.max_connections),
        ("auth_penalty_max_ms", a.auth_penalty_max != b.auth_penalty_max),
        ("credential_cache_secs", a.credential_cache_ttl != b.credential_cache_ttl),
        ("data_memory_max", a.data_memory_max != b.data_memory_max),
        ("data_in_flight_max", a.data_in_flight_max != b.data_in_flight_max),
        ("policy.max_connections", a.policy_max_connections != b.policy_max_connections),
        ("dns_resolver", a.mail_auth.resolver != b.mail_auth.resolver),
        ("retention.expire_interval_secs", a.expire_interval != b.expire_interval),
        // Its listeners and documents are built once at start.
        ("[autoconfig] (listeners and the documents they serve)", autoconfig_changed(started, new)),
        // Bound once at start (`a` holds the bound address: port 0 resolved).
        ("health.listen", health_moved(a.health, b.health)),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key.to_string())
    .collect()
}

/// A `[health] listen` that names another address than the bound one
/// (port 0 in the file matches the port it resolved to).
fn health_moved(bound: Option<std::net::SocketAddr>, wanted: Option<std::net::SocketAddr>) -> bool {
    match (bound, wanted) {
        (Some(b), Some(w)) => b.ip() != w.ip() || (w.port() != 0 && w.port() != b.port()),
        (b, w) => b.is_some() != w.is_some(),
    }
}

fn autoconfig_changed(started: &Settings, new: &Settings) -> bool {
    let (a, b) = (&started.autoconfig, &new.autoconfig);
    (a.enabled() || b.enabled()) && (a != b || started.autoconfig_offer() != new.autoconfig_offer())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pobox.toml");
        std::fs::write(&path, text).unwrap();
        // One data dir for all: the default mail location depends on it.
        Settings::load(Path::new("/nonexistent/pobox-data"), Some(&path)).unwrap()
    }

    #[test]
    fn toml_errors_fit_one_line_and_keep_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pobox.toml");
        std::fs::write(&path, "hostname = \"a\"\nbogus_key = 1\n").unwrap();
        let e = Settings::load(dir.path(), Some(&path)).err().unwrap();
        let line = one_line(&format!("{e:#}"));
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("line 2") && line.contains("unknown field `bogus_key`"), "{line}");
        assert!(!line.contains("expected one of"), "{line}");
    }

    #[test]
    fn only_keys_fixed_at_startup_need_a_restart() {
        let old = settings("max_connections = 10\n[retention]\nretrieved_days = 3\n");
        let same_fixed = settings("max_connections = 10\nlogin_timeout_secs = 30\n[retention]\nretrieved_days = 0\n");
        assert!(needs_restart(&old, &same_fixed).is_empty());
        let moved = settings("max_connections = 11\nmail_location = \"/srv/{user}\"\nuser = \"mail\"\n");
        assert_eq!(needs_restart(&old, &moved), ["user", "mail_location", "max_connections"]);
    }

    #[test]
    fn the_health_listener_needs_a_restart_to_move_and_proxy_protocol_does_not() {
        let mut old = settings("[health]\nlisten = \"127.0.0.1:0\"\n");
        // What serve keeps after binding: the resolved port.
        old.server.health = Some("127.0.0.1:41234".parse().unwrap());
        let same = settings(
            "[health]\nlisten = \"127.0.0.1:0\"\n[proxy_protocol]\nlisteners = []\ntrusted_proxies = [\"10.0.0.1\"]\n",
        );
        assert!(needs_restart(&old, &same).is_empty());
        assert!(needs_restart(&old, &settings("[health]\nlisten = \"127.0.0.1:41234\"\n")).is_empty());
        assert_eq!(needs_restart(&old, &settings("[health]\nlisten = \"127.0.0.1:9186\"\n")), ["health.listen"]);
        assert_eq!(needs_restart(&old, &settings("")), ["health.listen"]);
    }
}
