//! The pobox daemon's async core: accept loops for POP3 (110, STLS), POP3S
//! (995) and LMTP (TCP or unix socket), each connection driven on tokio.
//!
//! What it does not do: parse configuration files or command lines (the
//! `pobox` binary does, and hands over a validated [`Config`]), speak the
//! POP3 protocol itself (`pobox-proto` decides every reply), or touch files
//! directly (`pobox-store` and `pobox-auth` do, on the blocking pool).
//!
//! # Layout
//! - [`config`]: the validated settings.
//! - [`tls`]: certificate loading/generation and the rustls config.
//! - [`acme`]: automatic certificates (RFC 8555), HTTP-01 and TLS-ALPN-01.
//! - `listener` (in this file): binding and accept loops with limits.
//! - `pop3`: the POP3 connection driver.
//! - `lmtp`: the LMTP session loop.
//! - `smtp`: receive-only SMTP (STARTTLS, no relay, SPF/DKIM/DMARC).
//! - `policy`: the Postfix policy service (quota and unknown users at RCPT).
//! - [`shutdown`]: the two-step graceful shutdown.
//! - [`throttle`]: brute-force penalties and per-IP connection limits.
//! - [`credcache`]: the cache of successful password verifications.
//! - [`privdrop`]: switching to the unprivileged user.
//! - [`metrics`]: counters and the OpenMetrics endpoint.
//! - [`http`]: the small HTTP/1.1 server behind metrics, ACME HTTP-01,
//!   autoconfig and the health endpoint.
//! - [`health`]: `GET /health` for load balancers (503 while draining).
//! - [`proxy`]: the PROXY protocol header (v1/v2) from a trusted balancer.
//! - [`autoconfig`]: the client autoconfiguration documents.
//! - `testkit` (feature `testkit`, tests only): a POP3 session over an
//!   in-memory stream, for driver tests under paused time.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acme;
pub mod autoconfig;
pub mod config;
mod conn;
mod control;
pub mod credcache;
pub mod date;
pub mod delivery;
pub mod health;
pub mod http;
mod intake;
mod lmtp;
mod mta_loop;
pub mod metrics;
pub mod oauth_remote;
mod policy;
pub mod outbox;
mod pop3;
mod smtp;
mod spool;
pub mod privdrop;
pub mod proxy;
pub mod relay;
pub mod sessions;
pub mod shutdown;
pub mod throttle;
pub mod tls;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod vacation;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pobox_auth::UserDb;
use pobox_store::Mailstore;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

pub use config::{Config, ListenAddr};
use shutdown::{Phase, Shutdown, Trigger};
pub use tls::Tls;

/// What every connection shares: configuration, users, storage, TLS.
///
/// One value per configuration *generation*: a reload builds the next one
/// with [`Services::next`], which replaces the configuration, users, OAuth,
/// Sieve pipeline and TLS, and shares the long-lived state (sessions,
/// throttle, credential cache, connection counts, DATA budgets, the store)
/// through `Arc`s. A connection keeps the generation it was accepted under.
pub struct Services {
    /// Validated settings.
    pub config: Config,
    /// The user database.
    pub users: Arc<UserDb>,
    /// The mail store.
    pub store: Arc<dyn Mailstore>,
    /// TLS, if a certificate is loaded.
    pub tls: Option<Tls>,
    /// Open sessions and recent logins.
    pub sessions: Arc<sessions::Registry>,
    /// Sieve + storage, for LMTP.
    pub pipeline: delivery::Pipeline,
    /// Bounds concurrent password verifications.
    auth_slots: Arc<Semaphore>,
    /// Brute-force penalties per IP and per user.
    pub throttle: Arc<throttle::Throttle>,
    /// Cache of successful password verifications.
    pub credcache: Arc<credcache::CredCache>,
    /// OAuth token validation (JWKS file or URL, introspection), when
    /// configured.
    pub oauth: Option<oauth_remote::BearerAuth>,
    /// Open POP3 connections per client IP that have not authenticated.
    per_ip: Arc<throttle::PerIpConnections>,
    /// Authenticated POP3 connections per (user, client IP).
    per_user_ip: Arc<throttle::PerUserIpConnections>,
    /// SMTP state shared by sessions (its own per-IP table, DNS checker).
    smtp: Arc<smtp::Shared>,
    /// SMTP and LMTP DATA: the memory and in-flight budgets, the spool.
    intake: Arc<spool::Budget>,
    /// Postfix policy connections (`policy_max_connections`).
    policy_slots: Arc<Semaphore>,
    /// Wakes the outbox sender when a reply is queued (shared by every
    /// generation, like the sender task).
    outbox_wake: Arc<tokio::sync::Notify>,
    /// What the health endpoint reports (shared by every generation).
    pub health: Arc<health::Health>,
}

impl Services {
    /// Bundles the services. Password verification runs at most one per CPU
    /// at a time.
    pub fn new(config: Config, users: Arc<UserDb>, store: Arc<dyn Mailstore>, tls: Option<Tls>) -> Services {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let outbox_wake = Arc::new(tokio::sync::Notify::new());
        let pipeline = delivery::Pipeline::new(store.clone(), config.sieve.clone())
            .with_outbound(delivery::Outbound::from_config(&config, Some(outbox_wake.clone())));
        let health = Arc::new(health::Health::new(store.clone()));
        Services {
            pipeline,
            outbox_wake,
            throttle: Arc::new(throttle::Throttle::new(config.auth_penalty_max)),
            credcache: Arc::new(credcache::CredCache::new(config.credential_cache_ttl)),
            oauth: config
                .oauth
                .as_ref()
                .map(|o| oauth_remote::BearerAuth::for_service(o, config.oauth_remote.as_ref(), None)),
            per_ip: Arc::default(),
            per_user_ip: Arc::default(),
            smtp: Arc::new(smtp::Shared::new()),
            intake: Arc::new(spool::Budget::new(
                config.data_memory_max,
                config.data_in_flight_max,
                config.spool_dir.clone(),
            )),
            policy_slots: Arc::new(Semaphore::new(config.policy_max_connections)),
            config,
            users,
            store,
            tls,
            sessions: Arc::default(),
            auth_slots: Arc::new(Semaphore::new(cpus)),
            health,
        }
    }

    /// The next generation: `config`, `users` and `tls` replace this one's
    /// (with the OAuth validator and the Sieve pipeline built from them);
    /// everything that must outlive a reload is shared, not rebuilt, so
    /// `pobox who`, LOGIN-DELAY history, penalties, per-IP counts and the
    /// store's locks and listing cache carry over. The throttle's cap, the
    /// credential cache's lifetime and the DATA budgets stay as they were
    /// built (the caller names them as needing a restart).
    ///
    /// `users_changed`: the passwd-file is another file now, so cached
    /// verifications (made against the old one) are dropped.
    #[must_use]
    pub fn next(&self, config: Config, users: Arc<UserDb>, tls: Option<Tls>, users_changed: bool) -> Services {
        if users_changed {
            self.credcache.clear();
        }
        Services {
            pipeline: delivery::Pipeline::new(self.store.clone(), config.sieve.clone())
                .with_outbound(delivery::Outbound::from_config(&config, Some(self.outbox_wake.clone()))),
            outbox_wake: self.outbox_wake.clone(),
            oauth: config
                .oauth
                .as_ref()
                .map(|o| oauth_remote::BearerAuth::for_service(o, config.oauth_remote.as_ref(), self.oauth.as_ref())),
            throttle: self.throttle.clone(),
            credcache: self.credcache.clone(),
            per_ip: self.per_ip.clone(),
            per_user_ip: self.per_user_ip.clone(),
            smtp: self.smtp.clone(),
            intake: self.intake.clone(),
            policy_slots: self.policy_slots.clone(),
            sessions: self.sessions.clone(),
            auth_slots: self.auth_slots.clone(),
            health: self.health.clone(),
            store: self.store.clone(),
            config,
            users,
            tls,
        }
    }
}

/// A new configuration for a running server (see [`run_reloadable`]).
pub struct Reload {
    /// The next generation, built with [`Services::next`] from the
    /// previous one.
    pub services: Arc<Services>,
    /// Every configured listener (protocols that systemd passed sockets
    /// for are ignored: those sockets stay).
    pub listeners: Vec<(Protocol, ListenAddr)>,
    /// Mode and owner of newly bound unix sockets.
    pub socket_access: SocketAccess,
    /// Answered once the generation is in use: the listeners that could
    /// not be bound (each with the reason), which need a restart.
    pub done: tokio::sync::oneshot::Sender<Vec<BindError>>,
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// POP3 on a cleartext port, with STLS.
    Pop3,
    /// POP3 over implicit TLS.
    Pop3s,
    /// LMTP.
    Lmtp,
    /// SMTP, receive only (port 25, STARTTLS).
    Smtp,
    /// The Postfix policy service (SMTPD policy delegation).
    Policy,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Pop3 => "pop3",
            Protocol::Pop3s => "pop3s",
            Protocol::Lmtp => "lmtp",
            Protocol::Smtp => "smtp",
            Protocol::Policy => "policy",
        })
    }
}

/// A bound listening socket.
#[derive(Debug)]
pub enum Bound {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket.
    Unix(UnixListener),
}

/// A listener ready to serve.
#[derive(Debug)]
pub struct Listener {
    /// What it speaks.
    pub protocol: Protocol,
    /// The socket.
    pub bound: Bound,
    /// The address actually bound (port 0 resolved).
    pub local: String,
    /// The configured address it was bound for; `None` for a socket
    /// systemd passed, which a reload never replaces.
    pub configured: Option<ListenAddr>,
}

/// Why a listener could not be bound, with the address and the fix.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {protocol} on {addr}: {os_error}{hint}")]
pub struct BindError {
    /// The protocol.
    pub protocol: Protocol,
    /// The address.
    pub addr: String,
    /// The OS error. Part of the message, deliberately not a `source`: the
    /// binary prints error chains, and the reason must appear once.
    pub os_error: io::Error,
    /// What to do about it.
    pub hint: String,
}

/// A socket bound with `std::net` before the async runtime exists, so
/// that privileges can be dropped while the process has a single thread
/// (see [`privdrop`]). Becomes a [`Listener`] inside the runtime.
#[derive(Debug)]
pub struct PreBound {
    /// What it speaks.
    pub protocol: Protocol,
    /// The address actually bound.
    pub local: String,
    configured: Option<ListenAddr>,
    socket: StdSocket,
}

#[derive(Debug)]
enum StdSocket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl PreBound {
    /// A TCP socket someone else bound (systemd socket activation).
    ///
    /// # Errors
    /// If its local address cannot be read.
    pub fn from_tcp(protocol: Protocol, listener: std::net::TcpListener) -> io::Result<PreBound> {
        let local = listener.local_addr()?.to_string();
        Ok(PreBound { protocol, local, configured: None, socket: StdSocket::Tcp(listener) })
    }

    /// A unix socket someone else bound (systemd socket activation).
    ///
    /// # Errors
    /// If its local address cannot be read.
    pub fn from_unix(protocol: Protocol, listener: std::os::unix::net::UnixListener) -> io::Result<PreBound> {
        let addr = listener.local_addr()?;
        let local = addr.as_pathname().map_or_else(|| "unix:(unnamed)".to_string(), |p| format!("unix:{}", p.display()));
        Ok(PreBound { protocol, local, configured: None, socket: StdSocket::Unix(listener) })
    }

    /// Registers the socket with the current tokio runtime.
    ///
    /// # Errors
    /// If the socket cannot be made non-blocking or registered.
    pub fn into_listener(self) -> io::Result<Listener> {
        let bound = match self.socket {
            StdSocket::Tcp(l) => {
                l.set_nonblocking(true)?;
                Bound::Tcp(TcpListener::from_std(l)?)
            }
            StdSocket::Unix(l) => {
                l.set_nonblocking(true)?;
                Bound::Unix(UnixListener::from_std(l)?)
            }
        };
        Ok(Listener { protocol: self.protocol, bound, local: self.local, configured: self.configured })
    }
}

/// Like [`bind`], without a runtime (std sockets; SO_REUSEADDR is set by
/// std on Unix, as tokio does).
///
/// # Errors
/// A [`BindError`] whose message names the address and suggests the fix.
pub fn bind_std(protocol: Protocol, addr: &ListenAddr) -> Result<PreBound, BindError> {
    let fail = |source: io::Error| bind_error(protocol, addr, source);
    match addr {
        ListenAddr::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).map_err(fail)?;
            let local = l.local_addr().map_err(fail)?.to_string();
            Ok(PreBound { protocol, local, configured: Some(addr.clone()), socket: StdSocket::Tcp(l) })
        }
        ListenAddr::Unix(p) => {
            clear_stale_socket(p, "socket is in use").map_err(fail)?;
            // /run/pobox does not survive a reboot: create it (0755, so that
            // the socket's own mode decides who may connect).
            if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(fail)?;
            }
            let l = std::os::unix::net::UnixListener::bind(p).map_err(fail)?;
            Ok(PreBound {
                protocol,
                local: format!("unix:{}", p.display()),
                configured: Some(addr.clone()),
                socket: StdSocket::Unix(l),
            })
        }
    }
}

/// Who may connect to a unix socket listener: its mode and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits, e.g. 0o660.
    pub mode: u32,
    /// Owning user name; `None` keeps the creating user.
    pub owner: Option<String>,
    /// Owning group name; `None` keeps the creating user's group.
    pub group: Option<String>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess { mode: 0o660, owner: None, group: None }
    }
}

/// Applies `access` to the socket file at `path`. Call right after binding
/// and before dropping privileges (only root may give a file away).
///
/// # Errors
/// A message naming the socket and the user, group or mode that failed.
pub fn set_socket_access(path: &Path, access: &SocketAccess) -> Result<(), String> {
    use nix::unistd::{Group, User, chown};
    use std::os::unix::fs::PermissionsExt;
    let uid = match &access.owner {
        None => None,
        Some(name) => match User::from_name(name) {
            Ok(Some(u)) => Some(u.uid),
            _ => return Err(format!("lmtp_socket.owner: no user {name:?} on this system")),
        },
    };
    let gid = match &access.group {
        None => None,
        Some(name) => match Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid),
            _ => return Err(format!("lmtp_socket.group: no group {name:?} on this system")),
        },
    };
    if uid.is_some() || gid.is_some() {
        chown(path, uid, gid).map_err(|e| format!("cannot chown the LMTP socket {}: {e}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode))
        .map_err(|e| format!("cannot chmod the LMTP socket {}: {e}", path.display()))
}

fn bind_error(protocol: Protocol, addr: &ListenAddr, source: io::Error) -> BindError {
    let flag = match protocol {
        Protocol::Pop3 => "--pop3",
        Protocol::Pop3s => "--pop3s",
        Protocol::Lmtp => "--lmtp",
        Protocol::Smtp => "--smtp",
        Protocol::Policy => "--policy",
    };
    let hint = match source.kind() {
        io::ErrorKind::PermissionDenied => format!(
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE; or pick another port with {flag} ADDR, or {flag} none)"
        ),
        io::ErrorKind::AddrInUse => format!(
            " (another program is listening there; stop it, or pick another address with {flag} ADDR, or {flag} none)"
        ),
        _ => format!(" (choose another address with {flag} ADDR, or {flag} none)"),
    };
    BindError { protocol, addr: addr.to_string(), os_error: source, hint }
}

/// Binds one listener. Call before dropping privileges.
///
/// # Errors
/// A [`BindError`] whose message names the address and suggests the fix.
pub async fn bind(protocol: Protocol, addr: &ListenAddr) -> Result<Listener, BindError> {
    bind_std(protocol, addr)?.into_listener().map_err(|e| bind_error(protocol, addr, e))
}

/// A socket file left by a previous run blocks bind(): remove it. A live
/// one (something accepts on it) means another server owns it: refuse
/// with `in_use`.
fn clear_stale_socket(path: &Path, in_use: &str) -> io::Result<()> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, in_use.to_owned()));
        }
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Runs every listener until `stop` completes, then shuts down gracefully:
/// stop accepting, give sessions `shutdown_grace` to finish, then close the
/// rest without UPDATE.
pub async fn run(svc: Arc<Services>, listeners: Vec<Listener>, stop: impl std::future::Future<Output = ()>) {
    let (_no_reloads, reloads) = tokio::sync::mpsc::channel(1);
    run_reloadable(svc, listeners, reloads, stop).await;
}

/// Like [`run`], and applies each [`Reload`] received: new connections are
/// served by its generation (running ones keep theirs), listeners no longer
/// configured stop accepting (their sessions go on), new ones are bound.
/// Binding can fail where startup succeeded (a port below 1024 after the
/// privilege drop): such listeners are logged and returned through
/// [`Reload::done`], and the rest of the reload still applies.
pub async fn run_reloadable(
    svc: Arc<Services>,
    listeners: Vec<Listener>,
    mut reloads: tokio::sync::mpsc::Receiver<Reload>,
    stop: impl std::future::Future<Output = ()>,
) {
    let (trigger, shutdown) = shutdown::channel();
    if let Err(e) = svc.intake.prepare() {
        // Not fatal: small messages need no spool; bigger ones get 452.
        let dir = svc.config.spool_dir.as_deref().unwrap_or(std::path::Path::new("")).display().to_string();
        error!(%dir, error = %e, "DATA spool directory unusable; messages over 128 KiB will be refused (452)");
    }
    // Sized once: the permits are also what the drain waits for.
    let max_connections = svc.config.max_connections;
    let connections = Arc::new(Semaphore::new(max_connections));
    // The generation new connections are accepted under.
    let current = Arc::new(ArcSwap::new(svc.clone()));
    // Protocols systemd passed sockets for: their configured addresses are
    // ignored at startup, and so on reload.
    let activated: Vec<Protocol> = listeners.iter().filter(|l| l.configured.is_none()).map(|l| l.protocol).collect();
    let mut running: Vec<Running> = listeners
        .into_iter()
        .map(|l| Running::start(l, &current, &shutdown, &connections))
        .collect();
    let mut tasks = Vec::new();
    if let Some(path) = &svc.config.control_socket {
        match bind_control(path) {
            Ok(l) => tasks.push(tokio::spawn(control::serve(l, svc.clone()))),
            // Not fatal: the server works without `pobox who`.
            Err(e) => warn!(path = %path.display(), error = %e, "control socket unavailable"),
        }
    }
    if !svc.config.expire_interval.is_zero() {
        tasks.push(tokio::spawn(expiry_loop(current.clone(), svc.config.expire_interval)));
    }
    {
        // Sends queued vacation replies and redirects; follows reloads (a relay added,
        // changed or removed applies to the next pass).
        let current = current.clone();
        tasks.push(tokio::spawn(outbox::run(
            move || current.load().config.outbound.clone(),
            svc.outbox_wake.clone(),
            svc.store.clone(),
        )));
    }
    let mut tls_task = tls_poll(&svc);
    let mut stop = std::pin::pin!(stop);
    let mut reloading = true;
    loop {
        tokio::select! {
            () = &mut stop => break,
            reload = reloads.recv(), if reloading => {
                let Some(reload) = reload else {
                    reloading = false;
                    continue;
                };
                if let Some(t) = tls_task.take() {
                    t.abort();
                }
                tls_task = tls_poll(&reload.services);
                current.store(reload.services.clone());
                let failed = relisten(&mut running, reload.listeners, &activated, &reload.socket_access, &current, &shutdown, &connections).await;
                let _ = reload.done.send(failed);
            }
        }
    }
    let grace = current.load().config.shutdown_grace;
    // First, so that balancers stop sending while sessions finish; with a
    // drain delay, new connections are still served until they have
    // noticed (a balancer checks every few seconds).
    current.load().health.set_draining();
    let delay = current.load().config.health_drain_delay;
    if !delay.is_zero() {
        info!(delay_secs = delay.as_secs(), "health endpoint reports draining; accepting for the drain delay");
        tokio::time::sleep(delay).await;
    }
    drain(&trigger, &connections, max_connections, grace).await;
    for r in running {
        r.task.abort();
    }
    for t in tasks.into_iter().chain(tls_task) {
        t.abort();
    }
    if let Some(path) = &svc.config.control_socket {
        let _ = std::fs::remove_file(path);
    }
}

/// An accept loop and what it was started for.
struct Running {
    protocol: Protocol,
    configured: Option<ListenAddr>,
    local: String,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(listener: Listener, current: &Arc<ArcSwap<Services>>, shutdown: &Shutdown, connections: &Arc<Semaphore>) -> Running {
        let (protocol, configured, local) = (listener.protocol, listener.configured.clone(), listener.local.clone());
        let task = tokio::spawn(accept_loop(listener, current.clone(), shutdown.clone(), connections.clone()));
        Running { protocol, configured, local, task }
    }
}

/// Checks the generation's certificate files for changes (a SIGHUP reload
/// re-reads them anyway, as part of the new generation).
fn tls_poll(svc: &Services) -> Option<tokio::task::JoinHandle<()>> {
    let tls = svc.tls.as_ref()?;
    Some(tokio::spawn(tls::reload_task(tls.clone(), svc.config.tls_reload_interval)))
}

/// Makes the running listeners match `wanted`: removed ones stop accepting
/// first (so that an address can move to another protocol), then new ones
/// are bound. Returns the bind failures.
async fn relisten(
    running: &mut Vec<Running>,
    wanted: Vec<(Protocol, ListenAddr)>,
    activated: &[Protocol],
    socket_access: &SocketAccess,
    current: &Arc<ArcSwap<Services>>,
    shutdown: &Shutdown,
    connections: &Arc<Semaphore>,
) -> Vec<BindError> {
    let wanted: Vec<(Protocol, ListenAddr)> = wanted.into_iter().filter(|(p, _)| !activated.contains(p)).collect();
    let (keep, removed): (Vec<Running>, Vec<Running>) = std::mem::take(running).into_iter().partition(|r| match &r.configured {
        None => true,
        Some(addr) => wanted.iter().any(|(p, a)| *p == r.protocol && a == addr),
    });
    *running = keep;
    for r in removed {
        // Only the accept loop ends: sessions are tasks of their own.
        r.task.abort();
        let _ = r.task.await;
        if let Some(ListenAddr::Unix(path)) = &r.configured {
            let _ = std::fs::remove_file(path);
        }
        info!(protocol = %r.protocol, address = %r.local, "listener removed; its open sessions go on");
    }
    let mut failed = Vec::new();
    for (protocol, addr) in wanted {
        if running.iter().any(|r| r.protocol == protocol && r.configured.as_ref() == Some(&addr)) {
            continue;
        }
        match bind(protocol, &addr).await {
            Ok(listener) => {
                if let ListenAddr::Unix(path) = &addr
                    && let Err(e) = set_socket_access(path, socket_access)
                {
                    // Likely an owner or group only root may set: the
                    // socket works, with the running user's ownership.
                    warn!(error = %e, "new LMTP socket keeps its default owner");
                }
                info!(%protocol, address = %listener.local, "listener added");
                running.push(Running::start(listener, current, shutdown, connections));
            }
            Err(e) => {
                error!(%protocol, error = %e, "cannot add listener; it needs a restart");
                failed.push(e);
            }
        }
    }
    failed
}

fn bind_control(path: &std::path::Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    clear_stale_socket(path, "another pobox serve owns it")?;
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Runs retention for every user at `interval`. Maildrops held by a
/// session are skipped (the store checks the lock) and caught next time.
async fn expiry_loop(current: Arc<ArcSwap<Services>>, interval: Duration) {
    // The first run comes one interval after start: each login already
    // applies retention to its own maildrop.
    let start = tokio::time::Instant::now() + interval;
    let mut tick = tokio::time::interval_at(start, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The users of the configuration in use now.
        let svc = current.load_full();
        let result = tokio::task::spawn_blocking(move || {
            let users = svc.users.list().map_err(|e| e.to_string())?;
            let now = std::time::SystemTime::now();
            let (mut expired, mut purged, mut skipped) = (0, 0, 0);
            for user in users {
                match svc.store.expire(&user, now, false) {
                    Ok(r) => {
                        metrics::expiry(r.expired.len(), r.purged);
                        expired += r.expired.len();
                        purged += r.purged;
                        skipped += usize::from(r.skipped_in_use);
                    }
                    Err(e) => warn!(%user, error = %e, "expiry failed"),
                }
            }
            Ok::<_, String>((expired, purged, skipped))
        })
        .await;
        match result {
            Ok(Ok((expired, purged, skipped))) if expired + purged + skipped > 0 => {
                info!(expired, purged, skipped_in_use = skipped, "expiry run");
            }
            Ok(Err(e)) => warn!(error = %e, "expiry run failed: user database unavailable"),
            _ => {}
        }
    }
}

async fn drain(trigger: &Trigger, connections: &Arc<Semaphore>, max: usize, grace: Duration) {
    trigger.set(Phase::Draining);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let open = max - connections.available_permits();
    info!(open_sessions = open, grace_secs = grace.as_secs(), "shutting down: no new connections");
    if tokio::time::timeout(grace, connections.acquire_many(all)).await.is_ok() {
        return;
    }
    warn!("grace period over; closing remaining sessions without UPDATE");
    trigger.set(Phase::Forced);
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.acquire_many(all)).await;
}

async fn accept_loop(listener: Listener, current: Arc<ArcSwap<Services>>, shutdown: Shutdown, connections: Arc<Semaphore>) {
    let mut backoff = Duration::from_millis(10);
    let protocol = listener.protocol;
    loop {
        let mut draining = shutdown.clone();
        let accepted = tokio::select! {
            a = accept(&listener.bound) => a,
            () = draining.draining() => return,
        };
        let (conn, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!(%protocol, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Each connection is served by the generation current when it
        // arrived, for its whole life.
        let svc = current.load_full();
        metrics::connection(protocol);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::refused(protocol, metrics::Refusal::MaxConnections);
            warn!(%protocol, %peer, limit = svc.config.max_connections, "connection refused: max_connections reached");
            tokio::spawn(refuse_busy(conn, protocol));
            continue;
        };
        let shutdown = shutdown.clone();
        match conn {
            Accepted::Tcp(tcp, addr)
                if svc.config.proxy_protocol.expects(listener.configured.as_ref(), &listener.local) =>
            {
                // The header is read in the connection's own task, holding
                // its global slot for at most the header timeout: a slow
                // peer never stalls the accept loop.
                tokio::spawn(async move {
                    let mut tcp = tcp;
                    tracing::debug!(%protocol, proxy = %addr, "reading the PROXY header");
                    let mut stopping = shutdown.clone();
                    // A shutdown that starts draining meanwhile ends the
                    // wait: no new session starts on a draining server.
                    let header = tokio::select! {
                        h = proxy::accept(&mut tcp, addr, &svc.config.proxy_protocol) => h,
                        () = stopping.draining() => return,
                    };
                    match header {
                        Ok(client) => {
                            tracing::debug!(%protocol, proxy = %addr, client = %client, "PROXY header accepted");
                            dispatch(protocol, Accepted::Tcp(tcp, client), client.to_string(), svc, shutdown, permit);
                        }
                        Err(why) => {
                            metrics::refused(protocol, metrics::Refusal::ProxyHeader);
                            warn!(%protocol, %peer, reason = %why, "connection refused: PROXY protocol");
                        }
                    }
                });
            }
            conn => dispatch(protocol, conn, peer, svc, shutdown, permit),
        }
    }
}

/// Serves an accepted connection whose client address is known (the
/// socket's peer, or the one a trusted PROXY header named): applies the
/// per-IP limit and starts the protocol's session.
fn dispatch(
    protocol: Protocol,
    conn: Accepted,
    peer: String,
    svc: Arc<Services>,
    shutdown: Shutdown,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    // Per-IP limit: one host cannot take all the slots (LMTP over a
    // unix socket has no IP and is not limited). For POP3 it counts
    // connections that have not authenticated yet: the driver gives
    // the slot back once the client proves a user's credentials.
    let ip_slot = match &conn {
        Accepted::Tcp(_, addr) if !matches!(protocol, Protocol::Lmtp | Protocol::Policy) => {
            let (table, max) = if protocol == Protocol::Smtp {
                (&svc.smtp.per_ip, svc.config.smtp_max_connections_per_ip)
            } else {
                (&svc.per_ip, svc.config.max_connections_per_ip)
            };
            match table.try_acquire(addr.ip(), max) {
                Some(slot) => Some(slot),
                None => {
                    metrics::refused(protocol, metrics::Refusal::PerIp);
                    // The one place a connection is refused for its
                    // address: before login for POP3, always for SMTP.
                    let what = if protocol == Protocol::Smtp {
                        "smtp_max_connections_per_ip"
                    } else {
                        "max_connections_per_ip (connections not logged in yet)"
                    };
                    warn!(%protocol, %peer, ip = %addr.ip(), limit = max,
                          "connection refused: {what} reached for this address");
                    tokio::spawn(refuse_busy(conn, protocol));
                    return;
                }
            }
        }
        _ => None,
    };
    // One spawn per protocol, not one async block matching on it: a
    // task's memory is its future's size, and a shared block would make
    // every idle POP3 session as big as the largest SMTP state.
    let slots = (permit, ip_slot, metrics::session(protocol));
    match (protocol, conn) {
        // POP3 holds its per-IP slot itself, to release it at login.
        (Protocol::Pop3, Accepted::Tcp(tcp, addr)) => {
            spawn_holding(slots.0, pop3::serve(tcp, addr, false, svc, shutdown, slots.1));
        }
        (Protocol::Pop3s, Accepted::Tcp(tcp, addr)) => {
            spawn_holding(slots.0, pop3::serve(tcp, addr, true, svc, shutdown, slots.1));
        }
        (Protocol::Lmtp, Accepted::Tcp(tcp, addr)) => {
            // Replies are small and pipelined; do not let Nagle hold them.
            let _ = tcp.set_nodelay(true);
            spawn_holding(slots, lmtp::serve(tcp, addr.to_string(), svc, shutdown));
        }
        (Protocol::Lmtp, Accepted::Unix(s)) => spawn_holding(slots, lmtp::serve(s, "unix".into(), svc, shutdown)),
        (Protocol::Smtp, Accepted::Tcp(tcp, addr)) => spawn_holding(slots, smtp::serve(tcp, addr, svc, shutdown)),
        (Protocol::Policy, conn) => {
            // Its own cap as well: policy connections are long-lived
            // (one per Postfix smtpd) and must not use up POP3's room.
            let Ok(policy_slot) = svc.policy_slots.clone().try_acquire_owned() else {
                metrics::refused(protocol, metrics::Refusal::MaxConnections);
                warn!(%peer, limit = svc.config.policy_max_connections, "policy connection refused: [policy] max_connections reached");
                return;
            };
            let slots = (slots, policy_slot);
            match conn {
                Accepted::Tcp(tcp, addr) => {
                    let _ = tcp.set_nodelay(true);
                    spawn_holding(slots, policy::serve(tcp, addr.to_string(), svc, shutdown));
                }
                Accepted::Unix(s) => spawn_holding(slots, policy::serve(s, "unix".into(), svc, shutdown)),
            }
        }
        (_, Accepted::Unix(_)) => {}
    }
}

/// Runs a connection's future as its own task, holding its connection
/// slots (global and per-IP) until it ends.
fn spawn_holding<S: Send + 'static>(slots: S, connection: impl std::future::Future<Output = ()> + Send + 'static) {
    // Boxed: an async block that awaits a future it captured keeps room
    // for it twice (the capture and the await), which doubled every task.
    let connection = Box::pin(connection);
    tokio::spawn(async move {
        let _slots = slots;
        connection.await;
    });
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(bound: &Bound) -> io::Result<(Accepted, String)> {
    match bound {
        Bound::Tcp(l) => {
            let (s, a) = l.accept().await?;
            Ok((Accepted::Tcp(s, a), a.to_string()))
        }
        Bound::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok((Accepted::Unix(s), "unix".into()))
        }
    }
}

async fn refuse_busy(conn: Accepted, protocol: Protocol) {
    use tokio::io::AsyncWriteExt;
    let msg: &[u8] = match protocol {
        Protocol::Lmtp | Protocol::Smtp => b"421 4.3.2 too many connections, try again later\r\n",
        // Postfix treats a closed policy connection as a temporary failure.
        Protocol::Policy => b"",
        Protocol::Pop3 => b"-ERR [SYS/TEMP] too many connections, try again later\r\n",
        // No TLS handshake for a refused client: just close.
        Protocol::Pop3s => b"",
    };
    let fut = async {
        match conn {
            Accepted::Tcp(mut s, _) => s.write_all(msg).await,
            Accepted::Unix(mut s) => s.write_all(msg).await,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), fut).await;
}
