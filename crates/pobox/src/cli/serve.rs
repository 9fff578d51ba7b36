//! `pobox serve`: bind, load keys, then serve until SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use pobox_server::{ListenAddr, Protocol, Services, privdrop};
use tracing_subscriber::EnvFilter;

use crate::config::{Settings, parse_listen};

/// Arguments of `pobox serve`. Each address flag replaces the configured
/// list; `none` disables that listener.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// POP3 address (cleartext + STLS), or `none`. Default 0.0.0.0:110.
    #[arg(long, value_name = "ADDR")]
    pop3: Option<String>,
    /// POP3S address (implicit TLS), or `none`. Default 0.0.0.0:995.
    #[arg(long, value_name = "ADDR")]
    pop3s: Option<String>,
    /// LMTP address (IP:PORT or unix:/path), or `none`. Default 127.0.0.1:24.
    #[arg(long, value_name = "ADDR")]
    lmtp: Option<String>,
    /// SMTP address (receive only: mail for local users, never relayed), or
    /// `none`. Default 0.0.0.0:25.
    #[arg(long, value_name = "ADDR")]
    smtp: Option<String>,
    /// Postfix policy service address (IP:PORT or unix:/path), or `none`.
    /// Default none (`[policy] listen`).
    #[arg(long, value_name = "ADDR")]
    policy: Option<String>,
}

/// Applies the address flags to `settings`: at startup and again at each
/// reload, so a flag keeps replacing the configured list of its protocol.
///
/// # Errors
/// A flag that is not an address, or SMTP on a unix socket.
pub(super) fn apply_overrides(settings: &mut Settings, args: &ServeArgs) -> anyhow::Result<()> {
    override_addr(&mut settings.pop3, "pop3", args.pop3.clone())?;
    override_addr(&mut settings.pop3s, "pop3s", args.pop3s.clone())?;
    override_addr(&mut settings.lmtp, "lmtp", args.lmtp.clone())?;
    override_addr(&mut settings.smtp, "smtp", args.smtp.clone())?;
    override_addr(&mut settings.policy, "policy", args.policy.clone())?;
    if settings.smtp.iter().any(|a| matches!(a, ListenAddr::Unix(_))) {
        anyhow::bail!("--smtp: SMTP listens on TCP only (IP:PORT)");
    }
    crate::config::check_proxy_listeners(settings)
}

fn override_addr(list: &mut Vec<ListenAddr>, flag: &str, value: Option<String>) -> anyhow::Result<()> {
    if let Some(v) = value {
        *list = if v == "none" {
            Vec::new()
        } else {
            vec![parse_listen(&v).with_context(|| format!("--{flag} {v}"))?]
        };
    }
    Ok(())
}

/// Runs the server until a signal stops it.
///
/// The privileged prelude runs on the main thread alone (architecture
/// rule 7): read config, users and keys, bind every socket with `std::net`,
/// then drop to the unprivileged user and set `no_new_privs`; only then is
/// the tokio runtime (and its threads) started. See
/// `pobox_server::privdrop` for why the order matters.
///
/// # Errors
/// Configuration, TLS, bind or privilege-drop failures, each with the fix in
/// the message.
pub fn run(data: &Path, config: Option<&Path>, args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = Settings::load(data, config)?;
    apply_overrides(&mut settings, &args)?;
    // What SIGHUP needs to read the same file again the same way.
    let source = super::reload::Source::new(data, config, args);
    init_logging(&settings.log, settings.log_json);

    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
    // Held (by this open descriptor) until the process exits.
    let _instance = claim_data_dir(&settings.data_dir)?;
    if settings.passwd_file_configured
        && let Err(e) = std::fs::metadata(&settings.passwd_file)
    {
        anyhow::bail!(
            "passwd_file {}: {e}; every login would fail. Fix the path in the config, or create the file",
            settings.passwd_file.display()
        );
    }
    let users = super::open_users(&settings);
    // Maildir now, as root; PostgreSQL after the privilege drop: its
    // client runs threads, and privileges are dropped while the process
    // has only one (see `privdrop`).
    let maildir = match settings.store {
        crate::store_config::StoreSettings::Maildir => Some(super::open_store(&settings)?),
        crate::store_config::StoreSettings::Postgres(_) => None,
    };
    // Now, while still root: the directory holding the maildrops may not be
    // writable by the user the daemon drops to.
    if let Some(maildir) = maildir.as_ref().and_then(super::Store::as_maildir) {
        maildir
            .open_lock_file()
            .with_context(|| format!("cannot open the maildrop lock file {}", maildir.lock_file().display()))?;
    }
    let needs_tls = !settings.pop3.is_empty()
        || !settings.pop3s.is_empty()
        || !settings.smtp.is_empty()
        || !settings.autoconfig.listen_tls.is_empty();
    let tls_dir = settings.data_dir.join("tls");
    let tls = if needs_tls {
        Some(
            pobox_server::tls::load_or_generate_many(
                &tls_dir,
                settings.tls_pairs.clone(),
                &settings.server.hostname,
                &pobox_server::tls::certificate_ips(&tls_listeners(&settings)),
            )
            .context("TLS setup failed")?,
        )
    } else {
        None
    };
    // ACME: DATA/acme and the HTTP-01 port now, while still root; a
    // certificate from an earlier run is served from the first handshake.
    let mut acme = match (settings.acme.clone(), &tls) {
        (None, _) => None,
        (Some(_), None) => anyhow::bail!("[acme] needs a TLS listener (pop3, pop3s or smtp)"),
        (Some(cfg), Some(tls)) => {
            if cfg.challenge == pobox_server::acme::ChallengeKind::TlsAlpn01 && settings.pop3s.is_empty() {
                anyhow::bail!("acme.challenge = \"tls-alpn-01\" is answered on the pop3s listener, and there is none");
            }
            let acme = pobox_server::acme::Acme::prepare(cfg).context("[acme] setup failed")?;
            if let Some(cert) = acme.load_existing() {
                tls.store.set_acme(cert);
            }
            Some(acme)
        }
    };
    if let Some(oauth) = &settings.server.oauth {
        // No network here: a JWKS URL is fetched in the background, so an
        // unreachable provider does not keep POP3 down.
        pobox_server::oauth_remote::BearerAuth::new(oauth, settings.server.oauth_remote.as_ref())
            .check_local()
            .map_err(|e| anyhow::anyhow!("[oauth] setup failed: {e}"))?;
    }

    // Bind everything before serving anything: a port that cannot be bound
    // is a startup error, not a half-running server.
    // Sockets systemd passed (pobox.socket) replace the configured
    // addresses of their protocol.
    let mut bound = super::systemd::activated_listeners()?;
    let activated: Vec<Protocol> = bound.iter().map(|b| b.protocol).collect();
    for (protocol, addrs) in [
        (Protocol::Pop3, &settings.pop3),
        (Protocol::Pop3s, &settings.pop3s),
        (Protocol::Lmtp, &settings.lmtp),
        (Protocol::Smtp, &settings.smtp),
        (Protocol::Policy, &settings.policy),
    ] {
        if activated.contains(&protocol) {
            continue;
        }
        for addr in addrs {
            bound.push(pobox_server::bind_std(protocol, addr)?);
            if let ListenAddr::Unix(path) = addr {
                pobox_server::set_socket_access(path, &settings.lmtp_socket).map_err(anyhow::Error::msg)?;
            }
        }
    }
    if bound.is_empty() {
        anyhow::bail!("every listener is disabled; enable at least one of --pop3, --pop3s, --lmtp, --smtp");
    }
    let metrics = settings.server.metrics.map(pobox_server::metrics::bind_std).transpose().map_err(anyhow::Error::msg)?;
    // The bound address (port 0 resolved), for the banner.
    if let Some(m) = &metrics {
        settings.server.metrics = m.local_addr().ok();
    }
    let health = settings
        .server
        .health
        .map(|a| pobox_server::http::bind_std(a, "health.listen"))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if let Some(h) = &health {
        settings.server.health = h.local_addr().ok();
    }
    let autoconfig = bind_autoconfig(&settings, &bound, acme.as_mut(), tls.as_ref())?;

    // The self-signed pair we generated as root must stay readable for
    // reloads after the switch.
    let mut own_files = if settings.tls_pairs.is_empty() {
        vec![tls_dir.clone(), tls_dir.join("cert.pem"), tls_dir.join("key.pem")]
    } else {
        Vec::new()
    };
    // The ACME account, key and certificate: renewals run after the drop.
    own_files.extend(acme.iter().flat_map(pobox_server::acme::Acme::files));
    // The maildrop lock file, if root just created it: admin commands run
    // as the service user must be able to open it too.
    own_files.extend(maildir.as_ref().and_then(super::Store::as_maildir).map(|m| m.lock_file().to_path_buf()));
    // So that the next start, as the service user, can open it again.
    own_files.push(settings.data_dir.join(INSTANCE_FILE));
    // A spool dir left by a run as root: big messages are spooled there.
    own_files.extend(settings.server.spool_dir.clone());
    // The login history, if a run as root wrote it: sessions append to it.
    if let Some(dir) = &settings.server.login_history_dir {
        own_files.push(dir.clone());
        if let Ok(entries) = std::fs::read_dir(dir) {
            own_files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    // Before the switch: only root may raise the hard limit.
    let open_files = raise_open_files(settings.server.max_connections);
    let (must_read, must_write) = super::service_paths(&settings, maildir.as_ref().and_then(super::Store::as_maildir));
    let dropped = privdrop::drop_privileges(settings.user.as_deref(), &settings.data_dir, &own_files)
        .context("cannot drop privileges")?;
    // Refuse now rather than print a banner and then fail every login.
    let who = match &dropped {
        privdrop::Outcome::Dropped { user, .. } => Some(user.clone()),
        privdrop::Outcome::NotRoot { uid } => Some(format!("uid {uid}")),
        privdrop::Outcome::StayedRoot { .. } => None,
    };
    if let Some(who) = who {
        privdrop::verify_access(&who, &must_read, &must_write).map_err(anyhow::Error::msg)?;
    }
    let store = match maildir {
        Some(store) => store,
        None => super::store::open_for_serve(&settings)?,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if let Some(m) = metrics {
        runtime.spawn(pobox_server::metrics::serve(m));
    }
    let autoconfig_urls = autoconfig.urls();
    for (listener, tls, handler) in autoconfig.listeners {
        runtime.spawn(pobox_server::http::serve(listener, tls, pobox_server::autoconfig::LIMITS, "autoconfig", handler));
    }
    runtime.block_on(serve(settings, source, users, store, tls, bound, dropped, open_files, acme, autoconfig_urls, health))
}

/// The autoconfig listeners, bound, each with its TLS (HTTPS) and handler.
struct AutoconfigListeners {
    listeners: Vec<(std::net::TcpListener, Option<pobox_server::Tls>, pobox_server::http::Handler)>,
}

impl AutoconfigListeners {
    /// `http://ADDR/` and `https://ADDR/` for the banner (port 0 resolved).
    fn urls(&self) -> Vec<String> {
        self.listeners
            .iter()
            .filter_map(|(l, tls, _)| {
                let addr = l.local_addr().ok()?;
                Some(format!("{}://{addr}/", if tls.is_some() { "https" } else { "http" }))
            })
            .collect()
    }
}

/// Binds `[autoconfig]`'s listeners (before privileges are dropped: ports
/// 80 and 443). A plain address that is also ACME's HTTP-01 address takes
/// over ACME's bound socket and answers its challenges too, so both can
/// share port 80. The documents name the POP3 ports really bound
/// (systemd's sockets, port 0 resolved).
fn bind_autoconfig(
    settings: &Settings,
    bound: &[pobox_server::PreBound],
    mut acme: Option<&mut pobox_server::acme::Acme>,
    tls: Option<&pobox_server::Tls>,
) -> anyhow::Result<AutoconfigListeners> {
    use pobox_server::{autoconfig, http};
    let cfg = &settings.autoconfig;
    let mut listeners = Vec::new();
    if !cfg.enabled() {
        return Ok(AutoconfigListeners { listeners });
    }
    let actual = |protocol: Protocol| -> Vec<ListenAddr> {
        bound.iter().filter(|b| b.protocol == protocol).filter_map(|b| parse_listen(&b.local).ok()).collect()
    };
    let offer = settings.autoconfig_offer_for(&actual(Protocol::Pop3s), &actual(Protocol::Pop3));
    for addr in &cfg.listen {
        let shared = match acme.as_deref_mut() {
            Some(a)
                if a.config().challenge == pobox_server::acme::ChallengeKind::Http01
                    && a.config().http_listen == *addr =>
            {
                a.take_http_listener()
            }
            _ => None,
        };
        let challenges = shared.as_ref().and(tls).map(|t| t.store.challenges());
        let listener = match shared {
            Some(l) => l,
            None => http::bind_std(*addr, "autoconfig.listen").map_err(anyhow::Error::msg)?,
        };
        listeners.push((listener, None, autoconfig::handler(offer.clone(), challenges)));
    }
    for addr in &cfg.listen_tls {
        let listener = http::bind_std(*addr, "autoconfig.listen_tls").map_err(anyhow::Error::msg)?;
        listeners.push((listener, tls.cloned(), autoconfig::handler(offer.clone(), None)));
    }
    Ok(AutoconfigListeners { listeners })
}

/// The file whose lock marks the data dir as served; it holds the PID.
const INSTANCE_FILE: &str = "pobox.pid";

/// Makes sure no other `pobox serve` uses `data_dir`: two servers on one
/// data dir would fight over the control socket (`pobox who` would reach
/// either), run expiry twice, and each keep its own listing cache. The lock
/// is an exclusive `flock` on `DATA/pobox.pid`, so it is released by the
/// kernel however the holder dies; a stale file is harmless.
fn claim_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(INSTANCE_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
        if e == rustix::io::Errno::WOULDBLOCK {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = text.trim();
            let who = if pid.is_empty() { "another pobox serve".to_string() } else { format!("another pobox serve (PID {pid})") };
            anyhow::bail!(
                "{who} is already serving {}; stop it first, or give this one its own --data directory",
                data_dir.display()
            );
        }
        return Err(anyhow::Error::from(std::io::Error::from(e)).context(format!("cannot lock {}", path.display())));
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

/// The TCP addresses of the listeners that speak TLS.
pub(super) fn tls_listeners(settings: &Settings) -> Vec<std::net::SocketAddr> {
    [&settings.pop3, &settings.pop3s, &settings.smtp]
        .into_iter()
        .flatten()
        .filter_map(|a| match a {
            ListenAddr::Tcp(sa) => Some(*sa),
            ListenAddr::Unix(_) => None,
        })
        .collect()
}

/// The open-files limit the server ended up with, and what it wanted.
struct OpenFiles {
    limit: u64,
    wanted: u64,
}

/// Descriptors one POP3 session can hold at once: its socket, the maildrop
/// lock file, and a message file while RETR streams it.
const FDS_PER_SESSION: u64 = 3;
/// Listeners, the passwd file, logs, the blocking pool's files, LMTP.
const FDS_RESERVE: u64 = 1024;

/// Raises RLIMIT_NOFILE so that `max_connections` sessions fit: the soft
/// limit up to the hard one, and (as root) the hard one up to what is
/// needed, capped by the kernel's `fs.nr_open`. The usual default soft
/// limit (1,024) would cap a POP3 server at a few hundred sessions, each
/// failing with "too many open files" at login. Never lowers anything.
fn raise_open_files(max_connections: usize) -> OpenFiles {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let wanted = (max_connections as u64).saturating_mul(FDS_PER_SESSION).saturating_add(FDS_RESERVE);
    let now = getrlimit(Resource::Nofile);
    let (soft, hard) = (now.current.unwrap_or(u64::MAX), now.maximum.unwrap_or(u64::MAX));
    if soft >= wanted {
        return OpenFiles { limit: soft, wanted };
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    // Try the hard limit too (works as root); fall back to soft = hard.
    let target = wanted.min(nr_open.max(hard));
    let raised = setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: Some(target.max(hard)) }).is_ok()
        || setrlimit(Resource::Nofile, Rlimit { current: Some(hard.min(wanted)), maximum: Some(hard) }).is_ok();
    let limit = if raised { getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX) } else { soft };
    OpenFiles { limit, wanted }
}

#[allow(clippy::too_many_arguments)] // the prelude's results, handed over once
async fn serve(
    settings: Settings,
    source: super::reload::Source,
    users: Arc<pobox_auth::UserDb>,
    store: super::Store,
    tls: Option<pobox_server::Tls>,
    bound: Vec<pobox_server::PreBound>,
    dropped: privdrop::Outcome,
    open_files: OpenFiles,
    acme: Option<pobox_server::acme::Acme>,
    autoconfig_urls: Vec<String>,
    health: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    let stop = stop_signal();
    // Now too: without a handler, SIGHUP would end the process.
    let hup = super::reload::hangup_signal();
    let mut listeners = Vec::new();
    for b in bound {
        let local = b.local.clone();
        listeners.push(b.into_listener().with_context(|| format!("cannot listen on {local}"))?);
    }

    println!("pobox {} serving from {}", env!("CARGO_PKG_VERSION"), settings.data_dir.display());
    for l in &listeners {
        let what = match l.protocol {
            Protocol::Pop3 => "POP3 (STLS)",
            Protocol::Pop3s => "POP3S (TLS)",
            Protocol::Lmtp => "LMTP",
            Protocol::Smtp => "SMTP",
            Protocol::Policy => "policy",
        };
        println!("  {what:<12} {}", l.local);
    }
    let proxy = &settings.server.proxy_protocol;
    let proxied: Vec<&str> =
        listeners.iter().filter(|l| proxy.expects(l.configured.as_ref(), &l.local)).map(|l| l.local.as_str()).collect();
    if !proxied.is_empty() {
        let trusted: Vec<String> = proxy.trusted_proxies.iter().map(ToString::to_string).collect();
        println!("  PROXY header {} (from {} only)", proxied.join(", "), trusted.join(", "));
    }
    if let Some(addr) = settings.server.metrics {
        println!("  metrics      http://{addr}/metrics");
    }
    if let Some(addr) = settings.server.health {
        println!("  health       http://{addr}/health");
    }
    for url in &autoconfig_urls {
        println!("  autoconfig   {url}");
    }
    println!("  users        {} ({} users)", settings.passwd_file.display(), users.list().map(|u| u.len()).unwrap_or(0));
    match &settings.store {
        crate::store_config::StoreSettings::Maildir => println!("  maildrops    {}", settings.mail_location),
        crate::store_config::StoreSettings::Postgres(pg) => println!(
            "  maildrops    PostgreSQL {} (node {}, lease {} s)",
            crate::store_config::display_url(&pg.url),
            pg.node,
            pg.lease_secs
        ),
    }
    if let Some(tls) = &tls {
        let origin = if tls.generated { "generated now, self-signed" } else { "loaded" };
        println!("  certificate  {} ({origin})", tls.cert_path.display());
        println!("  SHA-256      {}", tls.fingerprint);
    }
    if let (Some(acme), Some(tls)) = (&acme, &tls) {
        let cfg = acme.config();
        let via = match acme.http_local_addr() {
            Some(addr) => format!("{} on {addr}", cfg.challenge),
            // Handed to the autoconfig listener on the same address.
            None if cfg.challenge == pobox_server::acme::ChallengeKind::Http01 => {
                format!("{} on {} (the autoconfig listener)", cfg.challenge, cfg.http_listen)
            }
            None => cfg.challenge.to_string(),
        };
        let state = match tls.store.acme() {
            Some(c) => format!("certificate {}", c.fingerprint),
            None => "requesting a certificate; the one above is served until then".to_string(),
        };
        println!("  ACME         {} via {via}: {state}", cfg.domains.join(", "));
    }
    match &dropped {
        privdrop::Outcome::Dropped { user, uid, .. } => println!("  running as   {user} (uid {uid})"),
        privdrop::Outcome::NotRoot { uid } => println!("  running as   uid {uid}"),
        privdrop::Outcome::StayedRoot { explicit } => {
            println!("  running as   root");
            if !explicit {
                tracing::warn!(
                    "running as root: no `user` configured and no `{}` user exists; create one \
                     (useradd --system pobox) or set `user` in the config",
                    privdrop::DEFAULT_USER
                );
            }
        }
    }
    println!("  open files   {} (max_connections {})", open_files.limit, settings.server.max_connections);
    if open_files.limit < open_files.wanted {
        tracing::warn!(
            limit = open_files.limit,
            wanted = open_files.wanted,
            "the open-files limit is below {} per connection for max_connections; sessions beyond \
             about {} will fail to open their maildrop. Raise it (systemd: LimitNOFILE=) or lower \
             max_connections",
            FDS_PER_SESSION,
            open_files.limit.saturating_sub(FDS_RESERVE) / FDS_PER_SESSION,
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let svc = Arc::new(Services::new(settings.server.clone(), users, store.mailstore(), tls));
    if let Some(listener) = health {
        // Answers 503 from the moment a shutdown starts draining.
        tokio::spawn(pobox_server::health::serve(listener, svc.health.clone()));
    }
    let (reloads, reload_rx) = tokio::sync::mpsc::channel(1);
    let reloader = super::reload::Reloader::new(source, settings, svc.clone(), store, reloads);
    let reload_task = tokio::spawn(reloader.run(hup));
    // Dropped with the runtime when the server stops. It swaps certificates
    // in the first generation's TLS store, which a reload keeps as long as
    // the certificate files stay the same.
    if let (Some(acme), Some(tls)) = (acme, &svc.tls) {
        tokio::spawn(acme.run(tls.store.clone()));
    }
    super::systemd::ready();
    super::systemd::spawn_watchdog();
    let stop = async {
        stop.await;
        super::systemd::stopping();
    };
    pobox_server::run_reloadable(svc, listeners, reload_rx, stop).await;
    reload_task.abort();
    println!("pobox stopped");
    Ok(())
}

/// Installs the SIGTERM/SIGINT handlers now (before anything is served:
/// a signal that arrives right after the banner must still mean a graceful
/// shutdown) and returns the future that completes on the first signal.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers the process still dies on SIGTERM.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

fn init_logging(filter: &str, json: bool) {
    let filter = EnvFilter::try_from_env("POBOX_LOG")
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and the journal are parsed by
    // tools (fail2ban's filter in contrib/ expects plain text).
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        // For log shippers (Loki, Elasticsearch): fields as JSON members.
        builder.json().flatten_event(true).with_current_span(false).try_init()
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}
