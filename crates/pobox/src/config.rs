//! The configuration file (TOML) and its defaults, turned into the
//! server's validated [`pobox_server::Config`].
//!
//! Unknown keys are errors (a typo must not silently fall back to a
//! default), and every value is checked here, once, with a message that
//! names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::HashMap;

use anyhow::{Context, bail};
use pobox_server::{Config, ListenAddr};
use pobox_store::quota::{Quota, QuotaConfig};
use pobox_store::retention::{Days, Policy, RetentionConfig};
use serde::Deserialize;

/// The system-wide configuration every server-side subcommand reads when
/// neither `--config` nor `POBOX_CONFIG` names one, so that admin commands
/// (`pobox mailbox purge`, `pobox user add`) act on the same data and
/// retention policy as the running server without flags.
pub const SYSTEM_CONFIG: &str = "/etc/pobox/pobox.toml";

/// The data dir when neither `--data`, `POBOX_DATA` nor the config's
/// `data_dir` names one.
pub const DEFAULT_DATA_DIR: &str = "./pobox-data";

/// Where the configuration comes from: the explicit file, else the system
/// file if it exists, else none. `none` (as `--config none` or
/// `POBOX_CONFIG=none`) means the embedded defaults even when the system
/// file exists.
#[must_use]
pub fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    config_path_in(explicit, Path::new(SYSTEM_CONFIG))
}

fn config_path_in(explicit: Option<&Path>, system: &Path) -> Option<PathBuf> {
    match explicit {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.to_path_buf()),
        None => Some(system.to_path_buf()).filter(|p| p.exists()),
    }
}

/// The data dir: `--data`/`POBOX_DATA`, else the config's `data_dir`
/// (relative to the config file's directory), else [`DEFAULT_DATA_DIR`].
///
/// # Errors
/// When the config file cannot be read or parsed.
pub fn data_dir(explicit: Option<&Path>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    if let Some(path) = config {
        let raw = read_raw(path)?;
        if let Some(d) = raw.data_dir {
            let base = path.parent().unwrap_or(Path::new("."));
            return Ok(base.join(d));
        }
    }
    Ok(PathBuf::from(DEFAULT_DATA_DIR))
}

fn read_raw(path: &Path) -> anyhow::Result<RawConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str::<RawConfig>(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// The login history's directory under the data dir (`pobox_store::history`).
pub const LOGIN_HISTORY_DIR: &str = "logins";

/// The file as written by the admin. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The data directory (users, maildrops, certificate) when `--data` and
    /// `POBOX_DATA` are not given; relative to the config file.
    pub data_dir: Option<PathBuf>,
    /// Host name for greetings and trace headers (default: the system's).
    pub hostname: Option<String>,
    /// POP3 (cleartext + STLS) addresses; `[]` disables.
    pub pop3: Option<Vec<String>>,
    /// POP3S (implicit TLS) addresses; `[]` disables.
    pub pop3s: Option<Vec<String>>,
    /// LMTP addresses (`host:port` or `unix:/path`); `[]` disables.
    pub lmtp: Option<Vec<String>>,
    /// SMTP (receive only) addresses; `[]` disables. Default: see `DEFAULT_SMTP`.
    pub smtp: Option<Vec<String>>,
    /// Most recipients per SMTP transaction.
    pub smtp_max_recipients: Option<usize>,
    /// Maximum concurrent SMTP connections from one IP (IPv6: per /64).
    pub smtp_max_connections_per_ip: Option<usize>,
    /// SMTP idle timeout (commands and DATA blocks), seconds; at least 300.
    pub smtp_timeout_secs: Option<u64>,
    /// SMTP: `5xx` replies to commands before `421` and close (default 20).
    pub smtp_hard_error_limit: Option<u32>,
    /// SMTP and LMTP: longest time for a whole DATA, seconds (default 600).
    pub data_timeout_secs: Option<u64>,
    /// SMTP and LMTP: DATA bytes held in memory by all sessions (default
    /// 32 MiB); past it messages spill to the spool early.
    pub data_memory_max: Option<u64>,
    /// SMTP and LMTP: DATA bytes held by all unanswered transactions,
    /// memory and spool (default 1 GiB); past it `452 4.3.1`.
    pub data_in_flight_max: Option<u64>,
    /// Check SPF, DKIM and DMARC on SMTP mail (Authentication-Results).
    pub check_spf_dkim_dmarc: Option<bool>,
    /// DNS servers for those checks: `"system"` (/etc/resolv.conf) or a
    /// list of `IP` / `IP:PORT`.
    pub dns_resolver: Option<DnsResolverKey>,
    /// Where maildrops live; must contain `{user}`.
    pub mail_location: Option<String>,
    /// The Dovecot-format passwd-file.
    pub passwd_file: Option<PathBuf>,
    /// TLS certificate chain (PEM). With `tls_key`; otherwise self-signed.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Allow cleartext passwords on unencrypted non-loopback connections.
    pub allow_plaintext_auth: Option<bool>,
    /// Treat loopback connections as safe for cleartext passwords.
    pub plaintext_auth_on_loopback: Option<bool>,
    /// Offer APOP.
    pub apop: Option<bool>,
    /// Domains LMTP accepts (empty: any).
    pub domains: Option<Vec<String>>,
    /// Idle timeout before login, seconds.
    pub login_timeout_secs: Option<u64>,
    /// Time from connect to a successful POP3 login, seconds, however busy
    /// the client is.
    pub login_deadline_secs: Option<u64>,
    /// Idle timeout after login, seconds (at least 600, RFC 1939 §3).
    pub session_timeout_secs: Option<u64>,
    /// Delay before answering a failed login, milliseconds.
    pub auth_failure_delay_ms: Option<u64>,
    /// Maximum concurrent connections.
    pub max_connections: Option<usize>,
    /// Largest message LMTP and `pobox deliver` accept, bytes.
    pub max_message_size: Option<u64>,
    /// Most recipients per LMTP transaction.
    pub lmtp_max_recipients: Option<usize>,
    /// Seconds SIGTERM waits for open sessions.
    pub shutdown_grace_secs: Option<u64>,
    /// Log filter, e.g. `info` or `pobox_server=debug`.
    pub log: Option<String>,
    /// `"text"` (key=value lines, the default) or `"json"` (one object per line).
    pub log_format: Option<String>,
    /// Retention policies.
    pub retention: Option<RawRetention>,
    /// Sieve scripts.
    pub sieve: Option<RawSieve>,
    /// Quotas.
    pub quota: Option<RawQuota>,
    /// Unprivileged user to switch to when started as root (default: `pobox`
    /// if it exists; `"root"` keeps root).
    pub user: Option<String>,
    /// POP3: most connections from one IP (IPv6: per /64) that have not
    /// authenticated yet.
    pub max_connections_per_ip: Option<usize>,
    /// POP3: most authenticated connections of one user from one IP.
    pub max_connections_per_user_ip: Option<usize>,
    /// Cap on the brute-force penalty interval, milliseconds (0: off).
    pub auth_penalty_max_ms: Option<u64>,
    /// Seconds a successful password check is cached (0: off).
    pub credential_cache_secs: Option<u64>,
    /// Seconds between checks of the certificate files (0: SIGHUP only).
    pub tls_reload_interval_secs: Option<u64>,
    /// More certificates, chosen by SNI (`[[tls_certificates]]` with
    /// `cert` and `key`). The first configured certificate is the default.
    pub tls_certificates: Option<Vec<RawCertPair>>,
    /// OAuth 2.0 bearer tokens (OAUTHBEARER, XOAUTH2).
    pub oauth: Option<RawOAuth>,
    /// Who may connect to LMTP unix sockets (`lmtp = ["unix:/path"]`).
    pub lmtp_socket: Option<RawSocketAccess>,
    /// OpenMetrics endpoint `IP:PORT` (`GET /metrics`, no authentication);
    /// unset: off.
    pub metrics: Option<String>,
    /// Automatic certificates (ACME, RFC 8555); present = enabled.
    pub acme: Option<RawAcme>,
    /// Client autoconfiguration over HTTP(S) (Thunderbird, Outlook, PACC,
    /// Apple); off unless `listen` or `listen_tls` names an address.
    pub autoconfig: Option<RawAutoconfig>,
    /// The Postfix policy service (`check_policy_service`); off unless
    /// `listen` is set.
    pub policy: Option<RawPolicyService>,
    /// The outbound relay for Sieve vacation replies; present = enabled.
    pub relay: Option<RawRelay>,
    /// POP3: refuse the main password (and SCRAM/APOP); devices log in
    /// with app passwords (`pobox user apppass add`). Default false.
    pub require_app_passwords: Option<bool>,
    /// POP3: keep each user's login history in `<data_dir>/logins/`
    /// (which credential logged in from where, what it retrieved and
    /// deleted). Default true.
    pub login_history: Option<bool>,
    /// Listeners behind a load balancer that sends the PROXY protocol
    /// header, and the balancers trusted to send it.
    pub proxy_protocol: Option<RawProxyProtocol>,
    /// The health endpoint for load balancers (`GET /health`).
    pub health: Option<RawHealth>,
    /// `[store]`: the backend (`maildir` or `postgres`) and its keys.
    pub store: Option<crate::store_config::RawStore>,
}

/// `[autoconfig]`: the documents mail clients fetch to set themselves up,
/// and what `pobox dns` publishes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutoconfig {
    /// Plain HTTP addresses (`IP:PORT`), e.g. `["0.0.0.0:80"]`.
    pub listen: Option<Vec<String>>,
    /// HTTPS addresses, with the POP3 certificates, e.g. `["0.0.0.0:443"]`.
    pub listen_tls: Option<Vec<String>>,
    /// The name clients connect to (POP3 and this listener); default
    /// `hostname`.
    pub hostname: Option<String>,
    /// The provider name clients show (default: the first of `domains`, else
    /// the host name).
    pub provider_name: Option<String>,
    /// The outgoing mail server users send through, `HOST:PORT` (465:
    /// implicit TLS, else STARTTLS); pobox has no submission service.
    pub submission: Option<String>,
    /// The POP3S port clients connect to when it is not the listener's
    /// (port forwarding, a proxy); used only while a `pop3s` listener exists.
    pub pop3s_port: Option<u16>,
    /// The same for the POP3 (STLS) port.
    pub pop3_port: Option<u16>,
    /// The user name clients log in with: `"local-part"` (default: what
    /// delivery maps `user@domain` to) or `"address"`.
    pub username: Option<String>,
}

/// `[autoconfig]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoconfigSettings {
    /// Plain HTTP addresses; empty with `listen_tls`: off.
    pub listen: Vec<SocketAddr>,
    /// HTTPS addresses.
    pub listen_tls: Vec<SocketAddr>,
    /// The advertised host name.
    pub hostname: String,
    /// The provider name.
    pub provider: String,
    /// The outgoing server.
    pub submission: Option<pobox_server::autoconfig::Submission>,
    /// Advertised POP3S port instead of the listener's.
    pub pop3s_port: Option<u16>,
    /// Advertised POP3 port instead of the listener's.
    pub pop3_port: Option<u16>,
    /// The login form.
    pub login: pobox_server::autoconfig::LoginForm,
}

impl AutoconfigSettings {
    /// True when a listener is configured.
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.listen_tls.is_empty()
    }
}

fn autoconfig(raw: Option<RawAutoconfig>, server: &Config) -> anyhow::Result<AutoconfigSettings> {
    let raw = raw.unwrap_or_default();
    let addrs = |key: &str, list: Option<Vec<String>>| -> anyhow::Result<Vec<SocketAddr>> {
        list.unwrap_or_default()
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|_| anyhow::anyhow!("autoconfig.{key}: {a:?} is not an IP:PORT address, e.g. \"0.0.0.0:80\""))
            })
            .collect()
    };
    let hostname = raw.hostname.unwrap_or_else(|| server.hostname.clone()).to_ascii_lowercase();
    if !dns_name(&hostname) {
        bail!("autoconfig.hostname: {hostname:?} is not a DNS name (set autoconfig.hostname to the name clients connect to)");
    }
    let submission = match raw.submission {
        None => None,
        Some(text) => {
            let parsed = text.rsplit_once(':').and_then(|(h, p)| Some((h.to_ascii_lowercase(), p.parse::<u16>().ok()?)));
            match parsed {
                Some((host, port)) if port != 0 && dns_name(&host) => Some(pobox_server::autoconfig::Submission { host, port }),
                _ => bail!("autoconfig.submission: {text:?} is not HOST:PORT, e.g. \"smtp.example.org:465\""),
            }
        }
    };
    let provider = raw.provider_name.unwrap_or_else(|| server.domains.first().cloned().unwrap_or_else(|| hostname.clone()));
    if provider.chars().any(char::is_control) {
        bail!("autoconfig.provider_name: control characters are not allowed");
    }
    for (key, port) in [("pop3s_port", raw.pop3s_port), ("pop3_port", raw.pop3_port)] {
        if port == Some(0) {
            bail!("autoconfig.{key}: must be a port number from 1 to 65535");
        }
    }
    let login = match raw.username.as_deref() {
        None | Some("local-part") => pobox_server::autoconfig::LoginForm::LocalPart,
        Some("address") => pobox_server::autoconfig::LoginForm::Address,
        Some(other) => bail!("autoconfig.username: {other:?} must be \"local-part\" or \"address\""),
    };
    Ok(AutoconfigSettings {
        login,
        listen: addrs("listen", raw.listen)?,
        listen_tls: addrs("listen_tls", raw.listen_tls)?,
        hostname,
        provider,
        submission,
        pop3s_port: raw.pop3s_port,
        pop3_port: raw.pop3_port,
    })
}

/// The port clients should use among a protocol's listeners: `preferred`
/// (the standard port) when one listens there, else the first TCP one.
#[must_use]
pub fn preferred_port(list: &[ListenAddr], preferred: u16) -> Option<u16> {
    let ports: Vec<u16> = list
        .iter()
        .filter_map(|a| match a {
            ListenAddr::Tcp(sa) => Some(sa.port()),
            ListenAddr::Unix(_) => None,
        })
        .collect();
    ports.iter().copied().find(|&p| p == preferred).or_else(|| ports.first().copied())
}

/// LDH labels, at most 253 octets (IDNs as A-labels).
fn dns_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

impl Settings {
    /// What the autoconfig documents and `pobox dns` advertise, from the
    /// listeners as configured (after `serve`'s flags).
    #[must_use]
    pub fn autoconfig_offer(&self) -> pobox_server::autoconfig::Offer {
        self.autoconfig_offer_for(&self.pop3s, &self.pop3)
    }

    /// The same for the given POP3S and POP3 listeners (`serve` passes the
    /// bound ones): their ports (995 and 110 preferred when several) unless
    /// `autoconfig.pop3s_port`/`pop3_port` say otherwise, the domains, the
    /// retention default.
    #[must_use]
    pub fn autoconfig_offer_for(&self, pop3s: &[ListenAddr], pop3: &[ListenAddr]) -> pobox_server::autoconfig::Offer {
        use pobox_server::autoconfig::{LeaveOnServer, Offer};
        use pobox_store::retention::Days;
        let ac = &self.autoconfig;
        Offer {
            host: ac.hostname.clone(),
            pop3s_port: preferred_port(pop3s, 995).map(|p| ac.pop3s_port.unwrap_or(p)),
            pop3_port: preferred_port(pop3, 110).map(|p| ac.pop3_port.unwrap_or(p)),
            domains: self.server.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            provider: ac.provider.clone(),
            submission: ac.submission.clone(),
            login: ac.login,
            leave_on_server: match self.retention.default.retrieved {
                Days::After(n) if n > 0 => LeaveOnServer::Days(n),
                _ => LeaveOnServer::No,
            },
        }
    }
}


/// `[policy]`: the Postfix policy service (SMTPD policy delegation).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyService {
    /// Addresses (`IP:PORT` or `unix:/path`); default none (off).
    pub listen: Option<Vec<String>>,
    /// Answer `550 5.1.1` for recipients that are no local user (default
    /// false: `DUNNO`).
    pub reject_unknown: Option<bool>,
    /// Most policy connections at once (default 100).
    pub max_connections: Option<usize>,
}


/// `[proxy_protocol]`: listeners whose connections come from a load
/// balancer and start with its PROXY header (v1 or v2).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyProtocol {
    /// Listener addresses (`IP:PORT`, as in `pop3`, `pop3s`, `lmtp`,
    /// `smtp` or `[policy] listen`) that expect the header.
    pub listeners: Option<Vec<String>>,
    /// Networks (`IP/PREFIX` or `IP`) allowed to connect to those listeners.
    pub trusted_proxies: Option<Vec<String>>,
    /// Seconds the whole header may take (default 5, 1..=60).
    pub header_timeout_secs: Option<u64>,
}

/// `[health]`: the load balancer's health check.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `IP:PORT` of the endpoint; unset: off.
    pub listen: Option<String>,
    /// Seconds after SIGTERM during which the endpoint answers 503 and the
    /// listeners still accept (default 0, at most 30).
    pub drain_delay_secs: Option<u64>,
}

fn proxy_protocol(raw: Option<RawProxyProtocol>) -> anyhow::Result<pobox_server::config::ProxyProtocol> {
    let mut out = pobox_server::config::ProxyProtocol::default();
    let Some(raw) = raw else {
        return Ok(out);
    };
    for a in raw.listeners.unwrap_or_default() {
        let addr = a.parse::<SocketAddr>().map_err(|_| {
            anyhow::anyhow!("proxy_protocol.listeners: {a:?} is not an IP:PORT listener address (unix sockets carry no PROXY header)")
        })?;
        out.listeners.push(addr);
    }
    for n in raw.trusted_proxies.unwrap_or_default() {
        let net = n
            .parse::<ipnet::IpNet>()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| anyhow::anyhow!("proxy_protocol.trusted_proxies: {n:?} is not an IP/PREFIX network or IP address"))?;
        out.trusted_proxies.push(net);
    }
    if !out.listeners.is_empty() && out.trusted_proxies.is_empty() {
        bail!("proxy_protocol.trusted_proxies: empty, so every connection to proxy_protocol.listeners would be refused; name the load balancers' addresses");
    }
    match raw.header_timeout_secs {
        Some(s @ 1..=60) => out.header_timeout = Duration::from_secs(s),
        Some(s) => bail!("proxy_protocol.header_timeout_secs: {s} is outside 1..=60"),
        None => {}
    }
    Ok(out)
}

fn health_drain_delay(raw: Option<&RawHealth>) -> anyhow::Result<Duration> {
    match raw.and_then(|h| h.drain_delay_secs) {
        None => Ok(Duration::ZERO),
        Some(s @ 0..=30) => Ok(Duration::from_secs(s)),
        Some(s) => bail!(
            "health.drain_delay_secs: {s} is above 30 (with shutdown_grace_secs it must fit systemd's TimeoutStopSec, 60 s)"
        ),
    }
}

fn health_listen(raw: Option<&RawHealth>) -> anyhow::Result<Option<SocketAddr>> {
    match raw.and_then(|h| h.listen.clone()) {
        None => Ok(None),
        Some(a) => Ok(Some(a.parse::<SocketAddr>().map_err(|_| {
            anyhow::anyhow!("health.listen: {a:?} is not an IP:PORT address, e.g. \"127.0.0.1:9186\"")
        })?)),
    }
}

/// Every `[proxy_protocol] listeners` address must be a TCP listener of
/// the final list (after `serve`'s address flags): a typo would otherwise
/// leave a balancer's listener taking headers as commands.
///
/// # Errors
/// The address that matches no listener.
pub fn check_proxy_listeners(settings: &Settings) -> anyhow::Result<()> {
    let all: Vec<&ListenAddr> =
        [&settings.pop3, &settings.pop3s, &settings.lmtp, &settings.smtp, &settings.policy].into_iter().flatten().collect();
    for a in &settings.server.proxy_protocol.listeners {
        if !all.contains(&&ListenAddr::Tcp(*a)) {
            bail!("proxy_protocol.listeners: {a} is not one of the configured TCP listeners (pop3, pop3s, lmtp, smtp, policy.listen)");
        }
    }
    Ok(())
}

/// `[relay]`: where Sieve vacation replies are submitted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    /// Host name or IP address of the submission server (required).
    pub host: Option<String>,
    /// Port (default 587; 465 with `tls = "tls"`).
    pub port: Option<u16>,
    /// `"starttls"` (default), `"tls"` (implicit) or `"none"` (loopback only).
    pub tls: Option<String>,
    /// SMTP AUTH user name (with `password_file`).
    pub username: Option<String>,
    /// File whose first line is the SMTP AUTH password.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) to verify the relay with instead of the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Name given in EHLO (default: `hostname`).
    pub helo: Option<String>,
    /// Seconds any one step of a submission may take (default 60).
    pub timeout_secs: Option<u64>,
    /// Seconds before the first retry of a failed submission; doubles up to an hour (default 60).
    pub retry_interval_secs: Option<u64>,
    /// Seconds after which an unsent reply is given up (default 86400).
    pub give_up_after_secs: Option<u64>,
}

/// `[acme]`: certificates from an ACME CA (Let's Encrypt by default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    /// Directory URL (https); default Let's Encrypt production.
    pub directory: Option<String>,
    /// Contact e-mail(s) for the account: `"admin@example.org"` or
    /// `"mailto:admin@example.org"`, or a list of them.
    pub contact: Option<StringOrList>,
    /// Names the certificate covers (default: `[hostname]`).
    pub domains: Option<Vec<String>>,
    /// `"http-01"` (default) or `"tls-alpn-01"`.
    pub challenge: Option<String>,
    /// HTTP-01 listener (default `0.0.0.0:80`).
    pub http_listen: Option<String>,
    /// PEM CA certificate the ACME server is verified with instead of the
    /// system's roots (private CAs, tests).
    pub ca_file: Option<PathBuf>,
    /// Renew this many days before expiry (default 30).
    pub renew_before_days: Option<u32>,
    /// Seconds between expiry checks (default 86400, a day).
    pub check_interval_secs: Option<u64>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `[lmtp_socket]`: permissions of LMTP unix sockets, like Dovecot's
/// `unix_listener { mode user group }`. Postfix's `lmtp` client runs as
/// `postfix`, so it needs the socket's owner or group (or mode 0666).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSocketAccess {
    /// Octal file mode as a string, e.g. `"0660"` (default `"0660"`).
    pub mode: Option<String>,
    /// Owning user name (default: the user `pobox serve` starts as).
    pub owner: Option<String>,
    /// Owning group name (default: that user's group).
    pub group: Option<String>,
}

/// `dns_resolver = "system"` or `dns_resolver = ["192.0.2.53", "[2001:db8::53]:53"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DnsResolverKey {
    /// `"system"`, or one address.
    One(String),
    /// Several addresses.
    Many(Vec<String>),
}

/// One `[[tls_certificates]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
}

/// `[oauth]`: JWT validation against a JWKS (file or URL), RFC 7662
/// introspection of opaque tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    /// JWKS file (`{"keys": [...]}`), refreshed by an external job.
    pub jwks_file: Option<PathBuf>,
    /// The provider's JWKS URL (https; http only to loopback), fetched and
    /// refreshed by pobox. Exactly one of `jwks_file`/`jwks_url`, unless
    /// only introspection is used.
    pub jwks_url: Option<String>,
    /// PEM CA certificates trusted (alone) for the provider's endpoints.
    pub ca_file: Option<PathBuf>,
    /// JWKS refresh interval without `Cache-Control: max-age`, seconds
    /// (300..=86400, default 3600).
    pub jwks_refresh_secs: Option<u64>,
    /// RFC 7662 token introspection endpoint for opaque tokens.
    pub introspection_url: Option<String>,
    /// pobox's client id at the introspection endpoint.
    pub introspection_client_id: Option<String>,
    /// File with pobox's client secret there.
    pub introspection_secret_file: Option<PathBuf>,
    /// A scope every token must carry (`scope` or `scp`).
    pub scope: Option<String>,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` member.
    pub audience: String,
    /// Claim identifying the mail user (default `sub`, mapped through the
    /// passwd-file's `oauth_sub=`; `email` needs `email_verified` true).
    pub username_claim: Option<String>,
    /// Clock-skew leeway, seconds (default 60).
    pub leeway_secs: Option<u64>,
}

/// `[sieve]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSieve {
    /// Per-user scripts `<dir>/<user>.sieve` (default `DATA/sieve`).
    pub dir: Option<PathBuf>,
    /// Global scripts run before the user's.
    pub before: Option<Vec<PathBuf>>,
    /// Global scripts run after the user's.
    pub after: Option<Vec<PathBuf>>,
}

/// `[quota]`: default limits, `[quota.users.NAME]` overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    /// Octets.
    pub bytes: Option<u64>,
    /// Messages.
    pub messages: Option<u64>,
    /// "temporary" (452 4.2.2, default) or "permanent" (552 5.2.2).
    pub over_quota: Option<String>,
    /// Per-user limits (a missing key means unlimited for that user).
    pub users: Option<HashMap<String, RawUserQuota>>,
}

/// One user's limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUserQuota {
    /// Octets.
    pub bytes: Option<u64>,
    /// Messages.
    pub messages: Option<u64>,
}

/// `[retention]`: global policy, with `[retention.users.NAME]` overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// The policy keys, global.
    #[serde(flatten)]
    pub policy: RawPolicy,
    /// Count TOP as a retrieval.
    pub top_counts_as_retrieval: Option<bool>,
    /// Seconds between background expiry runs (0: only at login and by CLI).
    pub expire_interval_secs: Option<u64>,
    /// Per-user overrides; unset keys inherit the global values.
    pub users: Option<HashMap<String, RawPolicy>>,
}

/// The keys of one policy.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Days retrieved mail stays (RFC 2449 EXPIRE): a number or "never".
    pub retrieved_days: Option<DaysValue>,
    /// Days any message stays after delivery: a number or "never".
    pub max_age_days: Option<DaysValue>,
    /// Days removed messages can be restored (0: removal is final).
    pub restore_days: Option<u32>,
    /// RFC 2449 LOGIN-DELAY seconds (0: none).
    pub login_delay_secs: Option<u32>,
}

/// A number of days or the word "never".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DaysValue {
    /// Days.
    Number(u32),
    /// Must be "never".
    Word(String),
}

impl DaysValue {
    fn days(&self, key: &str) -> anyhow::Result<Days> {
        match self {
            DaysValue::Number(n) => Ok(Days::After(*n)),
            DaysValue::Word(w) if w.eq_ignore_ascii_case("never") => Ok(Days::Never),
            DaysValue::Word(w) => bail!("{key}: {w:?} is neither a number of days nor \"never\""),
        }
    }
}

impl RawPolicy {
    fn over(&self, base: Policy, prefix: &str) -> anyhow::Result<Policy> {
        Ok(Policy {
            retrieved: match &self.retrieved_days {
                Some(v) => v.days(&format!("{prefix}retrieved_days"))?,
                None => base.retrieved,
            },
            max_age: match &self.max_age_days {
                Some(v) => v.days(&format!("{prefix}max_age_days"))?,
                None => base.max_age,
            },
            restore_days: self.restore_days.unwrap_or(base.restore_days),
            login_delay_secs: self.login_delay_secs.unwrap_or(base.login_delay_secs),
        })
    }
}

fn retention(raw: Option<RawRetention>) -> anyhow::Result<(RetentionConfig, bool, Duration)> {
    let raw = raw.unwrap_or_default();
    let default = raw.policy.over(Policy::default(), "retention.")?;
    let mut users = HashMap::new();
    for (name, p) in raw.users.unwrap_or_default() {
        users.insert(name.clone(), p.over(default, &format!("retention.users.{name}."))?);
    }
    Ok((
        RetentionConfig { default, users },
        raw.top_counts_as_retrieval.unwrap_or(false),
        Duration::from_secs(raw.expire_interval_secs.unwrap_or(3600)),
    ))
}

/// Everything a subcommand needs, resolved against the data dir.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The data directory (absolute).
    pub data_dir: PathBuf,
    /// The passwd-file.
    pub passwd_file: PathBuf,
    /// Whether `passwd_file` was set in the config (then it must exist: a
    /// typo would otherwise lock every user out) or is the default
    /// `DATA/users`, created by the first `pobox user add`.
    pub passwd_file_configured: bool,
    /// The mail location template.
    pub mail_location: String,
    /// Listener addresses.
    pub pop3: Vec<ListenAddr>,
    /// See `pop3`.
    pub pop3s: Vec<ListenAddr>,
    /// See `pop3`.
    pub lmtp: Vec<ListenAddr>,
    /// See `pop3` (TCP only).
    pub smtp: Vec<ListenAddr>,
    /// The Postfix policy service (`[policy] listen`; default none).
    pub policy: Vec<ListenAddr>,
    /// The server's settings.
    pub server: Config,
    /// Quotas (applied by the store).
    pub quota: QuotaConfig,
    /// Log filter.
    pub log: String,
    /// One JSON object per log line instead of text.
    pub log_json: bool,
    /// Every certificate/key pair (`tls_cert`/`tls_key` first, then
    /// `[[tls_certificates]]`); empty: the generated self-signed one.
    pub tls_pairs: Vec<pobox_server::tls::CertPair>,
    /// The `user` key.
    pub user: Option<String>,
    /// `[lmtp_socket]`: mode and owner of LMTP unix sockets.
    pub lmtp_socket: pobox_server::SocketAccess,
    /// `[acme]`, validated; `None`: no ACME.
    pub acme: Option<pobox_server::acme::AcmeConfig>,
    /// `[autoconfig]`, validated (listeners empty: off).
    pub autoconfig: AutoconfigSettings,
    /// `[retention]`: handed to the store, which holds the only copy a
    /// running server uses (`Mailstore::retention`).
    pub retention: RetentionConfig,
    /// `[store]`: which backend holds the maildrops.
    pub store: crate::store_config::StoreSettings,
}

/// SMTP listens on port 25 by default (issue 4); `smtp = []` or `--smtp none`
/// disables it.
const DEFAULT_SMTP: &[&str] = &["0.0.0.0:25"];

/// The minimum RFC 1939 §3 allows for the logged-in inactivity timer.
const MIN_SESSION_TIMEOUT: u64 = 600;

impl Settings {
    /// Reads `config` (if any) and applies defaults relative to `data_dir`.
    ///
    /// # Errors
    /// An unreadable file, a TOML error (with line and column), an unknown
    /// key, or a value out of range, each naming the key.
    pub fn load(data_dir: &Path, config: Option<&Path>) -> anyhow::Result<Settings> {
        let raw = match config {
            Some(path) => read_raw(path)?,
            None => RawConfig::default(),
        };
        Settings::from_raw(data_dir, raw)
    }

    fn from_raw(data_dir: &Path, raw: RawConfig) -> anyhow::Result<Settings> {
        let data_dir = std::path::absolute(data_dir)
            .with_context(|| format!("invalid data dir {}", data_dir.display()))?;
        let defaults = Config::default();
        let hostname = raw.hostname.unwrap_or_else(system_hostname);
        if hostname.is_empty() || hostname.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("hostname: {hostname:?} is not a valid host name");
        }
        let session_timeout = raw.session_timeout_secs.unwrap_or(MIN_SESSION_TIMEOUT);
        if session_timeout < MIN_SESSION_TIMEOUT {
            bail!(
                "session_timeout_secs: {session_timeout} is below 600; RFC 1939 §3 requires the \
                 inactivity timer to be at least 10 minutes"
            );
        }
        let login_timeout = raw.login_timeout_secs.unwrap_or(defaults.login_timeout.as_secs());
        if login_timeout == 0 {
            bail!("login_timeout_secs: must be at least 1");
        }
        let login_deadline = raw.login_deadline_secs.unwrap_or(defaults.login_deadline.as_secs());
        if login_deadline == 0 {
            bail!("login_deadline_secs: must be at least 1");
        }
        let max_connections = raw.max_connections.unwrap_or(defaults.max_connections);
        if max_connections == 0 {
            bail!("max_connections: must be at least 1");
        }
        let mail_location = match raw.mail_location {
            Some(loc) => {
                if !loc.contains("{user}") {
                    bail!("mail_location: {loc:?} must contain {{user}}, e.g. /srv/mail/{{user}}/Maildir");
                }
                loc
            }
            None => format!("{}/mail/{{user}}", data_dir.display()),
        };
        if raw.tls_cert.is_some() != raw.tls_key.is_some() {
            bail!("tls_cert and tls_key: set both, or neither (a self-signed certificate is then generated)");
        }
        let (retention, top_counts_as_retrieval, expire_interval) = retention(raw.retention)?;
        let raw_sieve = raw.sieve.unwrap_or_default();
        let sieve = pobox_server::delivery::SieveConfig {
            user_dir: Some(resolve(&data_dir, raw_sieve.dir.unwrap_or_else(|| "sieve".into()))),
            before: raw_sieve.before.unwrap_or_default().into_iter().map(|p| resolve(&data_dir, p)).collect(),
            after: raw_sieve.after.unwrap_or_default().into_iter().map(|p| resolve(&data_dir, p)).collect(),
        };
        let raw_quota = raw.quota.unwrap_or_default();
        let quota_permanent = match raw_quota.over_quota.as_deref() {
            None | Some("temporary") => false,
            Some("permanent") => true,
            Some(other) => bail!("quota.over_quota: {other:?} must be \"temporary\" or \"permanent\""),
        };
        let quota = QuotaConfig {
            default: Quota { bytes: raw_quota.bytes, messages: raw_quota.messages },
            users: raw_quota
                .users
                .unwrap_or_default()
                .into_iter()
                .map(|(u, q)| (u, Quota { bytes: q.bytes, messages: q.messages }))
                .collect(),
        };
        let outbound = match raw.relay {
            Some(r) => Some(relay(r, &data_dir, &hostname)?),
            None => None,
        };
        let raw_policy = raw.policy.unwrap_or_default();
        let server = Config {
            hostname,
            login_timeout: Duration::from_secs(login_timeout),
            login_deadline: Duration::from_secs(login_deadline),
            session_timeout: Duration::from_secs(session_timeout),
            allow_plaintext_auth: raw.allow_plaintext_auth.unwrap_or(false),
            plaintext_auth_on_loopback: raw.plaintext_auth_on_loopback.unwrap_or(true),
            apop: raw.apop.unwrap_or(false),
            top_counts_as_retrieval,
            expire_interval,
            control_socket: Some(data_dir.join("pobox.sock")),
            sieve,
            quota_permanent,
            auth_failure_delay: raw
                .auth_failure_delay_ms
                .map_or(defaults.auth_failure_delay, Duration::from_millis),
            max_connections,
            lmtp_max_message_size: raw.max_message_size.unwrap_or(defaults.lmtp_max_message_size),
            lmtp_max_recipients: raw.lmtp_max_recipients.unwrap_or(defaults.lmtp_max_recipients),
            domains: raw.domains.unwrap_or_default(),
            shutdown_grace: raw.shutdown_grace_secs.map_or(defaults.shutdown_grace, Duration::from_secs),
            advertise_implementation: true,
            max_connections_per_ip: match raw.max_connections_per_ip {
                Some(0) => bail!("max_connections_per_ip: must be at least 1"),
                Some(n) => n,
                None => defaults.max_connections_per_ip,
            },
            max_connections_per_user_ip: match raw.max_connections_per_user_ip {
                Some(0) => bail!("max_connections_per_user_ip: must be at least 1"),
                Some(n) => n,
                None => defaults.max_connections_per_user_ip,
            },
            auth_penalty_max: raw.auth_penalty_max_ms.map_or(defaults.auth_penalty_max, Duration::from_millis),
            credential_cache_ttl: raw
                .credential_cache_secs
                .map_or(defaults.credential_cache_ttl, Duration::from_secs),
            tls_reload_interval: raw
                .tls_reload_interval_secs
                .map_or(defaults.tls_reload_interval, Duration::from_secs),
            smtp_max_message_size: raw.max_message_size.unwrap_or(defaults.smtp_max_message_size),
            smtp_max_recipients: match raw.smtp_max_recipients {
                Some(0) => bail!("smtp_max_recipients: must be at least 1"),
                Some(n) => n,
                None => defaults.smtp_max_recipients,
            },
            smtp_max_connections_per_ip: match raw.smtp_max_connections_per_ip {
                Some(0) => bail!("smtp_max_connections_per_ip: must be at least 1"),
                Some(n) => n,
                None => defaults.smtp_max_connections_per_ip,
            },
            smtp_timeout: match raw.smtp_timeout_secs {
                Some(n) if n < 300 => bail!(
                    "smtp_timeout_secs: {n} is below 300; RFC 5321 §4.5.3.2 asks servers to wait at least 5 minutes"
                ),
                Some(n) => Duration::from_secs(n),
                None => defaults.smtp_timeout,
            },
            smtp_hard_error_limit: match raw.smtp_hard_error_limit {
                Some(0) => bail!("smtp_hard_error_limit: must be at least 1"),
                Some(n) => n,
                None => defaults.smtp_hard_error_limit,
            },
            data_timeout: match raw.data_timeout_secs {
                Some(0) => bail!("data_timeout_secs: must be at least 1"),
                Some(n) => Duration::from_secs(n),
                None => defaults.data_timeout,
            },
            data_memory_max: match raw.data_memory_max {
                Some(n) if n < 1024 * 1024 => bail!("data_memory_max: {n} is below 1 MiB (1048576)"),
                Some(n) => n,
                None => defaults.data_memory_max,
            },
            data_in_flight_max: match raw.data_in_flight_max {
                Some(n) if n < 1024 * 1024 => bail!("data_in_flight_max: {n} is below 1 MiB (1048576)"),
                Some(n) => n,
                None => defaults.data_in_flight_max,
            },
            // A directory of the service user's own: see server/src/spool.rs.
            spool_dir: Some(data_dir.join("spool")),
            policy_reject_unknown: raw_policy.reject_unknown.unwrap_or(false),
            policy_max_connections: match raw_policy.max_connections {
                Some(0) => bail!("policy.max_connections: must be at least 1"),
                Some(n) => n,
                None => defaults.policy_max_connections,
            },
            login_history_dir: raw.login_history.unwrap_or(true).then(|| data_dir.join(LOGIN_HISTORY_DIR)),
            require_app_passwords: raw.require_app_passwords.unwrap_or(false),
            metrics: match raw.metrics {
                None => None,
                Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                    anyhow::anyhow!("metrics: {a:?} is not an IP:PORT address, e.g. \"127.0.0.1:9185\"")
                })?),
            },
            mail_auth: pobox_server::config::MailAuthConfig {
                enabled: raw.check_spf_dkim_dmarc.unwrap_or(true),
                resolver: dns_resolver(raw.dns_resolver)?,
                ..Default::default()
            },
            oauth: match &raw.oauth {
                None => None,
                Some(o) => {
                    if o.issuer.is_empty() || o.audience.is_empty() {
                        bail!("oauth: issuer and audience must not be empty");
                    }
                    Some(pobox_auth::oauth::OAuthConfig {
                        jwks_file: o.jwks_file.clone().map(|f| resolve(&data_dir, f)),
                        issuer: o.issuer.clone(),
                        audience: o.audience.clone(),
                        username_claim: o
                            .username_claim
                            .clone()
                            .unwrap_or_else(|| pobox_auth::oauth::OAuthConfig::DEFAULT_USERNAME_CLAIM.into()),
                        leeway: Duration::from_secs(o.leeway_secs.unwrap_or(60)),
                        required_scope: o.scope.clone().filter(|s| !s.is_empty()),
                    })
                }
            },
            outbound,
            oauth_remote: match &raw.oauth {
                None => None,
                Some(o) => oauth_remote(&data_dir, o)?,
            },
            proxy_protocol: proxy_protocol(raw.proxy_protocol)?,
            health: health_listen(raw.health.as_ref())?,
            health_drain_delay: health_drain_delay(raw.health.as_ref())?,
        };
        let mut tls_pairs = Vec::new();
        if let (Some(cert), Some(key)) = (&raw.tls_cert, &raw.tls_key) {
            tls_pairs.push(pobox_server::tls::CertPair { cert: resolve(&data_dir, cert.clone()), key: resolve(&data_dir, key.clone()) });
        }
        for p in raw.tls_certificates.unwrap_or_default() {
            tls_pairs.push(pobox_server::tls::CertPair { cert: resolve(&data_dir, p.cert), key: resolve(&data_dir, p.key) });
        }
        if let Some(user) = &raw.user
            && (user.is_empty() || user.contains(['/', ':', ' ']))
        {
            bail!("user: {user:?} is not a valid user name");
        }
        let addrs = |key: &str, v: Option<Vec<String>>, default: &[&str]| -> anyhow::Result<Vec<ListenAddr>> {
            let list = v.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
            list.iter().map(|a| parse_listen(a).with_context(|| format!("{key}: {a:?}"))).collect()
        };
        Ok(Settings {
            passwd_file_configured: raw.passwd_file.is_some(),
            passwd_file: resolve(&data_dir, raw.passwd_file.unwrap_or_else(|| "users".into())),
            pop3: addrs("pop3", raw.pop3, &["0.0.0.0:110"])?,
            pop3s: addrs("pop3s", raw.pop3s, &["0.0.0.0:995"])?,
            lmtp: addrs("lmtp", raw.lmtp, &["127.0.0.1:24"])?,
            smtp: {
                let list = addrs("smtp", raw.smtp, DEFAULT_SMTP)?;
                if list.iter().any(|a| matches!(a, ListenAddr::Unix(_))) {
                    bail!("smtp: SMTP listens on TCP only (IP:PORT)");
                }
                list
            },
            policy: addrs("policy.listen", raw_policy.listen, &[])?,
            mail_location,
            log: raw.log.unwrap_or_else(|| "info".into()),
            log_json: match raw.log_format.as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => bail!("log_format: {other:?} is neither \"text\" nor \"json\""),
            },
            tls_pairs,
            user: raw.user,
            lmtp_socket: socket_access(raw.lmtp_socket.unwrap_or_default())?,
            acme: match raw.acme {
                Some(a) => Some(acme(a, &data_dir, &server.hostname)?),
                None => None,
            },
            autoconfig: autoconfig(raw.autoconfig, &server)?,
            store: crate::store_config::store(raw.store, &data_dir, &server.hostname)?,
            server,
            quota,
            retention,
            data_dir,
        })
    }
}

/// `[relay]`: checked here so a typo fails at start, not at the first reply.
fn relay(raw: RawRelay, data_dir: &Path, hostname: &str) -> anyhow::Result<pobox_server::outbox::OutboundConfig> {
    use pobox_server::relay::{RelayConfig, RelayTls};
    let Some(host) = raw.host.filter(|h| !h.is_empty()) else {
        bail!("relay.host: required, the submission server's name or IP address (e.g. \"smtp.example.org\")");
    };
    if host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':') && host.parse::<std::net::IpAddr>().is_err() {
        bail!("relay.host: {host:?} is not a host name or IP address");
    }
    let tls = match raw.tls.as_deref() {
        None | Some("starttls") => RelayTls::StartTls,
        Some("tls") => RelayTls::Tls,
        Some("none") => RelayTls::None,
        Some(other) => bail!("relay.tls: {other:?} must be \"starttls\", \"tls\" or \"none\""),
    };
    let loopback = host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if tls == RelayTls::None && !loopback {
        bail!("relay.tls: \"none\" sends mail and passwords in clear; it is allowed only to a relay on loopback (127.0.0.1, ::1, localhost), not {host:?}");
    }
    if raw.username.is_some() != raw.password_file.is_some() {
        bail!("relay.username and relay.password_file: set both, or neither");
    }
    if let Some(u) = &raw.username
        && (u.is_empty() || u.chars().any(char::is_control))
    {
        bail!("relay.username: {u:?} is not a valid user name");
    }
    let helo = raw.helo.unwrap_or_else(|| hostname.to_owned());
    if helo.is_empty() || helo.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("relay.helo: {helo:?} is not a host name");
    }
    let positive = |key: &str, v: Option<u64>, default: u64| -> anyhow::Result<Duration> {
        match v {
            Some(0) => bail!("relay.{key}: must be at least 1"),
            Some(n) => Ok(Duration::from_secs(n)),
            None => Ok(Duration::from_secs(default)),
        }
    };
    Ok(pobox_server::outbox::OutboundConfig {
        relay: RelayConfig {
            port: raw.port.unwrap_or(if tls == RelayTls::Tls { 465 } else { 587 }),
            host,
            tls,
            username: raw.username,
            password_file: raw.password_file.map(|p| resolve(data_dir, p)),
            ca_file: raw.ca_file.map(|p| resolve(data_dir, p)),
            helo,
            timeout: positive("timeout_secs", raw.timeout_secs, 60)?,
        },
        outbox_dir: data_dir.join("outbox"),
        vacation_dir: data_dir.join("vacation"),
        retry_interval: positive("retry_interval_secs", raw.retry_interval_secs, 60)?,
        give_up_after: positive("give_up_after_secs", raw.give_up_after_secs, 86_400)?,
    })
}

/// `[acme]`: every value checked here, so a typo fails at start, not at
/// the first renewal months later.
fn acme(raw: RawAcme, data_dir: &Path, hostname: &str) -> anyhow::Result<pobox_server::acme::AcmeConfig> {
    use pobox_server::acme::{AcmeConfig, ChallengeKind, LETS_ENCRYPT};
    let directory = raw.directory.unwrap_or_else(|| LETS_ENCRYPT.to_string());
    if !directory.starts_with("https://") {
        bail!("acme.directory: {directory:?} must be an https:// URL (RFC 8555 §6.1)");
    }
    let contact = match raw.contact {
        None => Vec::new(),
        Some(StringOrList::One(c)) => vec![c],
        Some(StringOrList::Many(v)) => v,
    };
    let contact = contact
        .into_iter()
        .map(|c| {
            let address = c.strip_prefix("mailto:").unwrap_or(&c);
            if address.is_empty() || !address.contains('@') || address.contains([' ', ',', '<', '>']) {
                bail!("acme.contact: {c:?} is not an e-mail address");
            }
            Ok(format!("mailto:{address}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let domains = raw.domains.unwrap_or_else(|| vec![hostname.to_string()]);
    if domains.is_empty() {
        bail!("acme.domains: give at least one name (default: the hostname)");
    }
    let domains: Vec<String> = domains.into_iter().map(|d| d.to_ascii_lowercase()).collect();
    for d in &domains {
        if d.starts_with("*.") {
            bail!("acme.domains: {d:?}: wildcards need the dns-01 challenge, which pobox does not do");
        }
        let valid = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !valid {
            bail!("acme.domains: {d:?} is not a DNS name");
        }
    }
    let challenge = match raw.challenge.as_deref() {
        None | Some("http-01") => ChallengeKind::Http01,
        Some("tls-alpn-01") => ChallengeKind::TlsAlpn01,
        Some(other) => bail!("acme.challenge: {other:?} must be \"http-01\" or \"tls-alpn-01\""),
    };
    let http_listen = raw.http_listen.as_deref().unwrap_or("0.0.0.0:80");
    let http_listen: SocketAddr = http_listen
        .parse()
        .map_err(|_| anyhow::anyhow!("acme.http_listen: {http_listen:?} is not IP:PORT"))?;
    let renew_before_days = raw.renew_before_days.unwrap_or(30);
    if renew_before_days == 0 {
        bail!("acme.renew_before_days: must be at least 1");
    }
    let check_interval = raw.check_interval_secs.unwrap_or(86_400);
    if check_interval == 0 {
        bail!("acme.check_interval_secs: must be at least 1");
    }
    Ok(AcmeConfig {
        directory,
        contact,
        domains,
        challenge,
        http_listen,
        ca_file: raw.ca_file.map(|p| resolve(data_dir, p)),
        renew_before: Duration::from_secs(u64::from(renew_before_days) * 86_400),
        check_interval: Duration::from_secs(check_interval),
        dir: data_dir.join("acme"),
    })
}

/// `[lmtp_socket]`: the mode is an octal permission mode (at most 0777);
/// owner and group are names, resolved when the socket is created.
fn socket_access(raw: RawSocketAccess) -> anyhow::Result<pobox_server::SocketAccess> {
    let mode = match raw.mode.as_deref() {
        None => 0o660,
        Some(text) => {
            let digits = text.strip_prefix("0o").unwrap_or(text);
            match u32::from_str_radix(digits, 8) {
                Ok(m) if m <= 0o777 => m,
                _ => bail!("lmtp_socket.mode: {text:?} is not an octal mode such as \"0660\""),
            }
        }
    };
    for (key, v) in [("owner", &raw.owner), ("group", &raw.group)] {
        if let Some(name) = v
            && (name.is_empty() || name.contains(['/', ':', ' ']))
        {
            bail!("lmtp_socket.{key}: {name:?} is not a valid name");
        }
    }
    Ok(pobox_server::SocketAccess { mode, owner: raw.owner, group: raw.group })
}

/// `dns_resolver`: `"system"`, or DNS server addresses (port 53 unless given).
fn dns_resolver(key: Option<DnsResolverKey>) -> anyhow::Result<pobox_server::config::DnsResolver> {
    use pobox_server::config::DnsResolver;
    let list = match key {
        None => return Ok(DnsResolver::System),
        Some(DnsResolverKey::One(s)) if s == "system" => return Ok(DnsResolver::System),
        Some(DnsResolverKey::One(s)) => vec![s],
        Some(DnsResolverKey::Many(v)) => v,
    };
    if list.is_empty() {
        bail!("dns_resolver: give \"system\" or at least one address");
    }
    let mut servers = Vec::new();
    for s in list {
        let addr = match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => match s.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, 53),
                Err(_) => bail!("dns_resolver: {s:?} is not an IP or IP:PORT (or \"system\")"),
            },
        };
        servers.push(addr);
    }
    Ok(DnsResolver::Servers(servers))
}

/// `host:port`, `[v6]:port`, or `unix:/path`.
///
/// # Errors
/// When the text is neither.
pub fn parse_listen(s: &str) -> anyhow::Result<ListenAddr> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            bail!("a unix socket needs a path, e.g. unix:/run/pobox/lmtp");
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| anyhow::anyhow!("not an address: use IP:PORT (e.g. 127.0.0.1:24, [::]:110) or unix:/path"))?;
    Ok(ListenAddr::Tcp(addr))
}

fn resolve(data_dir: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { data_dir.join(p) }
}

fn system_hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() { "localhost".into() } else { name }
}

/// `[oauth]`'s networked keys (issue 18): the JWKS URL and introspection,
/// checked here so a bad URL or a missing credential is a config error.
fn oauth_remote(
    data_dir: &Path,
    o: &RawOAuth,
) -> anyhow::Result<Option<pobox_server::oauth_remote::RemoteConfig>> {
    use pobox_server::oauth_remote::{
        IntrospectionConfig, REFRESH_DEFAULT, REFRESH_MAX, REFRESH_MIN, RemoteConfig,
        check_endpoint_url,
    };
    match (&o.jwks_file, &o.jwks_url, &o.introspection_url) {
        (Some(_), Some(_), _) => bail!("oauth: jwks_file and jwks_url are alternatives; set one"),
        (None, None, None) => bail!(
            "oauth: set jwks_file or jwks_url (JWT tokens), or introspection_url (opaque tokens)"
        ),
        _ => {}
    }
    if let Some(url) = &o.jwks_url {
        check_endpoint_url(url).map_err(|e| anyhow::anyhow!("oauth: jwks_url {e}"))?;
    }
    let introspection = match &o.introspection_url {
        None => {
            if o.introspection_client_id.is_some() || o.introspection_secret_file.is_some() {
                bail!(
                    "oauth: introspection_client_id/introspection_secret_file need introspection_url"
                );
            }
            None
        }
        Some(url) => {
            check_endpoint_url(url).map_err(|e| anyhow::anyhow!("oauth: introspection_url {e}"))?;
            let (Some(client_id), Some(secret_file)) =
                (&o.introspection_client_id, &o.introspection_secret_file)
            else {
                bail!(
                    "oauth: introspection_url needs introspection_client_id and introspection_secret_file (RFC 7662 §2.1: the endpoint authenticates pobox)"
                );
            };
            if client_id.is_empty() || client_id.contains(':') {
                bail!("oauth: introspection_client_id must be non-empty and without ':'");
            }
            Some(IntrospectionConfig {
                url: url.clone(),
                client_id: client_id.clone(),
                secret_file: resolve(data_dir, secret_file.clone()),
            })
        }
    };
    if o.jwks_url.is_none() && introspection.is_none() {
        if o.ca_file.is_some() || o.jwks_refresh_secs.is_some() {
            bail!(
                "oauth: ca_file and jwks_refresh_secs apply to jwks_url and introspection_url only"
            );
        }
        return Ok(None);
    }
    let jwks_refresh = match o.jwks_refresh_secs {
        None => REFRESH_DEFAULT,
        Some(s) if (REFRESH_MIN.as_secs()..=REFRESH_MAX.as_secs()).contains(&s) => {
            Duration::from_secs(s)
        }
        Some(s) => bail!(
            "oauth: jwks_refresh_secs = {s}: must be {}..={}",
            REFRESH_MIN.as_secs(),
            REFRESH_MAX.as_secs()
        ),
    };
    if o.jwks_refresh_secs.is_some() && o.jwks_url.is_none() {
        bail!("oauth: jwks_refresh_secs applies to jwks_url only");
    }
    Ok(Some(RemoteConfig {
        jwks_url: o.jwks_url.clone(),
        ca_file: o.ca_file.clone().map(|f| resolve(data_dir, f)),
        jwks_refresh,
        jwks_cache_file: o
            .jwks_url
            .as_ref()
            .map(|_| data_dir.join(pobox_server::oauth_remote::JWKS_CACHE_FILE)),
        introspection,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Settings> {
        let raw: RawConfig = toml::from_str(text)?;
        Settings::from_raw(Path::new("/tmp/pobox-test"), raw)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = parse("").unwrap();
        assert_eq!(s.pop3, vec![ListenAddr::Tcp("0.0.0.0:110".parse().unwrap())]);
        assert_eq!(s.pop3s, vec![ListenAddr::Tcp("0.0.0.0:995".parse().unwrap())]);
        assert_eq!(s.lmtp, vec![ListenAddr::Tcp("127.0.0.1:24".parse().unwrap())]);
        assert_eq!(s.passwd_file, PathBuf::from("/tmp/pobox-test/users"));
        assert_eq!(s.mail_location, "/tmp/pobox-test/mail/{user}");
        assert_eq!(s.server.session_timeout, Duration::from_secs(600));
        assert!(!s.server.allow_plaintext_auth);
    }

    #[test]
    fn proxy_protocol_and_health_keys() {
        let s = parse("").unwrap();
        assert!(s.server.proxy_protocol.listeners.is_empty());
        assert_eq!(s.server.health, None);
        let s = parse(
            "pop3 = [\"0.0.0.0:110\"]\n[proxy_protocol]\nlisteners = [\"0.0.0.0:110\"]\n\
             trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\", \"2001:db8::/32\"]\nheader_timeout_secs = 3\n\
             [health]\nlisten = \"127.0.0.1:9186\"\ndrain_delay_secs = 4",
        )
        .unwrap();
        let p = &s.server.proxy_protocol;
        assert_eq!(p.listeners, vec!["0.0.0.0:110".parse().unwrap()]);
        assert_eq!(p.trusted_proxies.len(), 3);
        assert_eq!(p.trusted_proxies[1].to_string(), "192.0.2.1/32", "a bare address is one host");
        assert_eq!(p.header_timeout, Duration::from_secs(3));
        assert_eq!(s.server.health, Some("127.0.0.1:9186".parse().unwrap()));
        assert_eq!(s.server.health_drain_delay, Duration::from_secs(4));
        check_proxy_listeners(&s).unwrap();
        for (text, key) in [
            ("[proxy_protocol]\nlisteners = [\"unix:/run/x\"]\ntrusted_proxies = [\"127.0.0.1\"]", "listeners"),
            ("[proxy_protocol]\nlisteners = [\"127.0.0.1:110\"]", "trusted_proxies: empty"),
            ("[proxy_protocol]\ntrusted_proxies = [\"10.0.0.0/33\"]", "trusted_proxies"),
            ("[proxy_protocol]\nheader_timeout_secs = 0", "header_timeout_secs"),
            ("[proxy_protocol]\nlisten = []", "unknown field"),
            ("[health]\nlisten = \"localhost:1\"", "health.listen"),
            ("[health]\ndrain_delay_secs = 31", "health.drain_delay_secs"),
        ] {
            let err = format!("{:#}", parse(text).err().unwrap_or_else(|| panic!("{text:?} accepted")));
            assert!(err.contains(key), "{text:?}: {err}");
        }
        // An address that is no listener (a typo, or a flag replaced it).
        let s = parse("pop3 = [\"0.0.0.0:110\"]\n[proxy_protocol]\nlisteners = [\"0.0.0.0:111\"]\ntrusted_proxies = [\"127.0.0.1\"]").unwrap();
        let err = check_proxy_listeners(&s).unwrap_err().to_string();
        assert!(err.contains("0.0.0.0:111") && err.contains("not one of the configured"), "{err}");
    }

    #[test]
    fn metrics_key_is_off_by_default_and_names_itself_when_invalid() {
        assert_eq!(parse("").unwrap().server.metrics, None);
        let s = parse("metrics = \"127.0.0.1:9185\"").unwrap();
        assert_eq!(s.server.metrics, Some("127.0.0.1:9185".parse().unwrap()));
        let err = format!("{:#}", parse("metrics = \"localhost:9185\"").err().unwrap());
        assert!(err.contains("metrics") && err.contains("IP:PORT"), "{err}");
    }

    #[test]
    fn policy_service_is_off_by_default_and_configurable() {
        let s = parse("").unwrap();
        assert!(s.policy.is_empty());
        assert!(!s.server.policy_reject_unknown);
        assert_eq!(s.server.policy_max_connections, 100);
        let s = parse("[policy]\nlisten = [\"127.0.0.1:10031\", \"unix:/run/pobox/policy\"]\nreject_unknown = true\nmax_connections = 7").unwrap();
        assert_eq!(
            s.policy,
            vec![ListenAddr::Tcp("127.0.0.1:10031".parse().unwrap()), ListenAddr::Unix("/run/pobox/policy".into())]
        );
        assert!(s.server.policy_reject_unknown);
        assert_eq!(s.server.policy_max_connections, 7);
        let err = format!("{:#}", parse("[policy]\nlisten = [\"localhost\"]").err().unwrap());
        assert!(err.contains("policy.listen"), "{err}");
        let err = format!("{:#}", parse("[policy]\nmax_connections = 0").err().unwrap());
        assert!(err.contains("policy.max_connections"), "{err}");
        assert!(parse("[policy]\nlisten_on = []").is_err());
    }

    #[test]
    fn login_deadline_key() {
        assert_eq!(parse("").unwrap().server.login_deadline, Duration::from_secs(180));
        let s = parse("login_deadline_secs = 30").unwrap();
        assert_eq!(s.server.login_deadline, Duration::from_secs(30));
        let err = parse("login_deadline_secs = 0").err().unwrap();
        assert!(err.to_string().contains("login_deadline_secs"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse("pop3_listen = []").err().unwrap();
        assert!(format!("{err:#}").contains("unknown field `pop3_listen`"), "{err:#}");
    }

    #[test]
    fn values_are_checked_with_the_key_named() {
        let err = parse("session_timeout_secs = 60").err().unwrap();
        assert!(err.to_string().contains("session_timeout_secs"), "{err}");
        let err = parse("mail_location = \"/srv/mail\"").err().unwrap();
        assert!(err.to_string().contains("{user}"), "{err}");
        let s = parse("[lmtp_socket]\nmode = \"0666\"\ngroup = \"postfix\"").unwrap();
        assert_eq!(s.lmtp_socket.mode, 0o666);
        assert_eq!(s.lmtp_socket.group.as_deref(), Some("postfix"));
        assert_eq!(parse("").unwrap().lmtp_socket.mode, 0o660);
        let err = parse("[lmtp_socket]\nmode = \"rw\"").err().unwrap();
        assert!(format!("{err:#}").contains("lmtp_socket.mode"), "{err:#}");
        let err = parse("lmtp = [\"localhost\"]").err().unwrap();
        assert!(format!("{err:#}").contains("lmtp"), "{err:#}");
        let err = parse("tls_cert = \"c.pem\"").err().unwrap();
        assert!(err.to_string().contains("tls_key"), "{err}");
    }

    #[test]
    fn retention_with_per_user_overrides() {
        let s = parse(
            "[retention]\nretrieved_days = 3\nrestore_days = 7\n\
             [retention.users.bob]\nretrieved_days = \"never\"\n\
             [retention.users.carol]\nretrieved_days = 0\nlogin_delay_secs = 900\n",
        )
        .unwrap();
        let r = &s.retention;
        assert_eq!(r.for_user("alice").retrieved, Days::After(3));
        assert_eq!(r.for_user("bob").retrieved, Days::Never);
        assert_eq!(r.for_user("bob").restore_days, 7, "unset keys inherit");
        assert_eq!(r.for_user("carol").login_delay_secs, 900);
        assert!(parse("[retention]\nretrieved_days = \"soon\"").is_err());
        assert!(parse("[retention]\nkeep = 1").is_err());
    }

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen("unix:/run/x").unwrap(), ListenAddr::Unix("/run/x".into()));
        assert!(parse_listen("[::1]:110").is_ok());
        assert!(parse_listen("unix:").is_err());
        assert!(parse_listen("110").is_err());
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Settings> {
        let raw: RawConfig = toml::from_str(text)?;
        Settings::from_raw(Path::new("/tmp/pobox-test"), raw)
    }

    #[test]
    fn security_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.user, None);
        assert_eq!(s.server.max_connections_per_ip, 100);
        assert_eq!(s.server.max_connections_per_user_ip, 10);
        assert_eq!(s.server.auth_penalty_max, Duration::from_secs(15));
        assert_eq!(s.server.credential_cache_ttl, Duration::from_secs(3600));
        assert_eq!(s.server.tls_reload_interval, Duration::from_secs(60));
        assert!(s.server.oauth.is_none());
        assert!(s.tls_pairs.is_empty());
    }

    #[test]
    fn security_keys() {
        let s = parse(
            "user = \"mail\"\nmax_connections_per_ip = 5\nauth_penalty_max_ms = 0\n\
             credential_cache_secs = 0\ntls_cert = \"a.crt\"\ntls_key = \"a.key\"\n\
             [[tls_certificates]]\ncert = \"/etc/b.crt\"\nkey = \"/etc/b.key\"\n\
             [oauth]\njwks_file = \"jwks.json\"\nissuer = \"https://idp\"\naudience = \"pop\"\n",
        )
        .unwrap();
        assert_eq!(s.user.as_deref(), Some("mail"));
        assert_eq!(s.tls_pairs.len(), 2);
        assert_eq!(s.tls_pairs[0].cert, PathBuf::from("/tmp/pobox-test/a.crt"));
        assert_eq!(s.tls_pairs[1].key, PathBuf::from("/etc/b.key"));
        let o = s.server.oauth.unwrap();
        assert_eq!(
            o.jwks_file,
            Some(PathBuf::from("/tmp/pobox-test/jwks.json"))
        );
        // Issue 17, finding 7: the default is the provider-assigned subject.
        assert_eq!(o.username_claim, "sub");
        assert!(parse("max_connections_per_ip = 0").is_err());
        assert!(parse("max_connections_per_user_ip = 0").is_err());
        assert_eq!(parse("max_connections_per_user_ip = 3").unwrap().server.max_connections_per_user_ip, 3);
        assert!(parse("[oauth]\njwks_file = \"j\"\nissuer = \"\"\naudience = \"a\"").is_err());
        assert!(parse("[oauth]\njwks = \"j\"").is_err(), "unknown keys in [oauth]");
        assert!(parse("[[tls_certificates]]\ncert = \"x\"").is_err(), "key is required");
    }

    /// Issue 18: the JWKS URL and introspection keys, and the mistakes
    /// they are refused for.
    #[test]
    fn oauth_remote_keys() {
        let base = "[oauth]\nissuer = \"https://idp\"\naudience = \"pop\"\n";
        let s = parse(&format!(
            "{base}jwks_url = \"https://idp.example/jwks\"\nca_file = \"idp-ca.pem\"\njwks_refresh_secs = 600\n\
             introspection_url = \"https://idp.example/introspect\"\nintrospection_client_id = \"pobox\"\n\
             introspection_secret_file = \"/etc/pobox/secret\"\nscope = \"pop3\"\n"
        ))
        .unwrap();
        let o = s.server.oauth.unwrap();
        assert_eq!(o.jwks_file, None);
        assert_eq!(o.required_scope.as_deref(), Some("pop3"));
        let r = s.server.oauth_remote.unwrap();
        assert_eq!(r.jwks_url.as_deref(), Some("https://idp.example/jwks"));
        assert_eq!(r.ca_file, Some(PathBuf::from("/tmp/pobox-test/idp-ca.pem")));
        assert_eq!(r.jwks_refresh, Duration::from_secs(600));
        assert_eq!(
            r.jwks_cache_file,
            Some(PathBuf::from("/tmp/pobox-test/oauth-jwks.json"))
        );
        let i = r.introspection.unwrap();
        assert_eq!(
            (i.url.as_str(), i.client_id.as_str()),
            ("https://idp.example/introspect", "pobox")
        );
        assert_eq!(i.secret_file, PathBuf::from("/etc/pobox/secret"));

        // Introspection only, and a loopback http:// URL.
        let s = parse(&format!(
            "{base}introspection_url = \"http://127.0.0.1:8080/i\"\nintrospection_client_id = \"p\"\n\
             introspection_secret_file = \"s\"\n"
        ))
        .unwrap();
        assert!(s.server.oauth_remote.unwrap().jwks_url.is_none());
        // A file alone needs nothing networked.
        assert!(
            parse(&format!("{base}jwks_file = \"j\"\n"))
                .unwrap()
                .server
                .oauth_remote
                .is_none()
        );

        let refused = [
            ("", "no key source at all"),
            (
                "jwks_file = \"j\"\njwks_url = \"https://idp/j\"\n",
                "both file and URL",
            ),
            (
                "jwks_url = \"http://idp.example/jwks\"\n",
                "http:// to a remote host",
            ),
            ("jwks_url = \"idp.example/jwks\"\n", "not a URL"),
            (
                "jwks_url = \"https://idp/j\"\njwks_refresh_secs = 10\n",
                "refresh below 5 min",
            ),
            (
                "jwks_url = \"https://idp/j\"\njwks_refresh_secs = 100000\n",
                "refresh above 24 h",
            ),
            (
                "jwks_file = \"j\"\nca_file = \"c\"\n",
                "ca_file without a URL",
            ),
            (
                "introspection_url = \"https://idp/i\"\n",
                "introspection without credentials",
            ),
            (
                "introspection_url = \"https://idp/i\"\nintrospection_client_id = \"p\"\n",
                "no secret file",
            ),
            (
                "jwks_file = \"j\"\nintrospection_client_id = \"p\"\n",
                "credentials without introspection",
            ),
        ];
        for (keys, why) in refused {
            assert!(parse(&format!("{base}{keys}")).is_err(), "{why}");
        }
    }

    #[test]
    fn smtp_keys() {
        use pobox_server::config::DnsResolver;
        let s = parse("").unwrap();
        assert_eq!(s.smtp, DEFAULT_SMTP.iter().map(|a| parse_listen(a).unwrap()).collect::<Vec<_>>());
        assert_eq!(s.server.smtp_max_recipients, 100);
        assert_eq!(s.server.smtp_max_connections_per_ip, 10);
        assert_eq!(s.server.smtp_timeout, Duration::from_secs(300));
        assert!(s.server.mail_auth.enabled);
        assert_eq!(s.server.mail_auth.resolver, DnsResolver::System);
        let s = parse(
            "smtp = [\"127.0.0.1:2525\"]\nsmtp_max_recipients = 7\nsmtp_max_connections_per_ip = 3\n\
             smtp_timeout_secs = 600\ncheck_spf_dkim_dmarc = false\ndns_resolver = [\"192.0.2.53\", \"[::1]:5353\"]\n\
             max_message_size = 1000\n",
        )
        .unwrap();
        assert_eq!(s.smtp, vec![ListenAddr::Tcp("127.0.0.1:2525".parse().unwrap())]);
        assert_eq!(s.server.smtp_max_recipients, 7);
        assert_eq!(s.server.smtp_max_connections_per_ip, 3);
        assert_eq!(s.server.smtp_timeout, Duration::from_secs(600));
        assert_eq!(s.server.smtp_max_message_size, 1000);
        assert!(!s.server.mail_auth.enabled);
        assert_eq!(
            s.server.mail_auth.resolver,
            DnsResolver::Servers(vec!["192.0.2.53:53".parse().unwrap(), "[::1]:5353".parse().unwrap()])
        );
        assert!(parse("smtp = []").unwrap().smtp.is_empty());
        assert_eq!(parse("dns_resolver = \"system\"").unwrap().server.mail_auth.resolver, DnsResolver::System);
        assert!(parse("dns_resolver = \"dns.example\"").is_err());
        assert!(parse("smtp = [\"unix:/run/x\"]").is_err(), "SMTP is TCP only");
        assert!(parse("smtp_timeout_secs = 60").is_err(), "RFC 5321 minimum");
        assert!(parse("smtp_max_recipients = 0").is_err());
        assert!(parse("smtp_relay = true").is_err(), "unknown keys");
    }

    #[test]
    fn config_path_prefers_explicit_then_the_system_file_and_none_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("pobox.toml");
        let mine = dir.path().join("mine.toml");
        assert_eq!(config_path_in(None, &system), None, "no system file: embedded defaults");
        std::fs::write(&system, "data_dir = \"/srv/pobox\"\n").unwrap();
        assert_eq!(config_path_in(None, &system), Some(system.clone()));
        assert_eq!(config_path_in(Some(&mine), &system), Some(mine.clone()));
        assert_eq!(config_path_in(Some(Path::new("none")), &system), None);
        // data_dir: the flag wins, then the config's key, then ./pobox-data.
        assert_eq!(data_dir(None, Some(&system)).unwrap(), PathBuf::from("/srv/pobox"));
        assert_eq!(data_dir(Some(Path::new("/x")), Some(&system)).unwrap(), PathBuf::from("/x"));
        assert_eq!(data_dir(None, None).unwrap(), PathBuf::from(DEFAULT_DATA_DIR));
        std::fs::write(&mine, "data_dir = \"rel\"\n").unwrap();
        assert_eq!(data_dir(None, Some(&mine)).unwrap(), dir.path().join("rel"), "relative to the config file");
    }

    #[test]
    fn acme_keys() {
        use pobox_server::acme::{ChallengeKind, LETS_ENCRYPT};
        assert!(parse("").unwrap().acme.is_none(), "off unless [acme] is present");
        let s = parse("hostname = \"Mail.Example.org\"\n[acme]\ncontact = \"admin@example.org\"\n").unwrap();
        let a = s.acme.unwrap();
        assert_eq!(a.directory, LETS_ENCRYPT);
        assert_eq!(a.contact, ["mailto:admin@example.org"]);
        assert_eq!(a.domains, ["mail.example.org"], "default: the host name");
        assert_eq!(a.challenge, ChallengeKind::Http01);
        assert_eq!(a.http_listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(a.renew_before, Duration::from_secs(30 * 86_400));
        assert_eq!(a.check_interval, Duration::from_secs(86_400));
        assert_eq!(a.dir, PathBuf::from("/tmp/pobox-test/acme"));
        let a = parse(
            "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ndomains = [\"a.example\", \"b.example\"]\n\
             challenge = \"tls-alpn-01\"\nca_file = \"pebble.pem\"\nrenew_before_days = 10\ncontact = [\"mailto:x@y.z\"]\n",
        )
        .unwrap()
        .acme
        .unwrap();
        assert_eq!(a.challenge, ChallengeKind::TlsAlpn01);
        assert_eq!(a.ca_file, Some(PathBuf::from("/tmp/pobox-test/pebble.pem")));
        assert_eq!(a.domains, ["a.example", "b.example"]);
        for bad in [
            "directory = \"http://x/dir\"",
            "challenge = \"dns-01\"",
            "domains = [\"*.example.org\"]",
            "domains = []",
            "domains = [\"a b\"]",
            "contact = \"nobody\"",
            "http_listen = \"80\"",
            "renew_before_days = 0",
            "email = \"x@y.z\"",
        ] {
            let err = parse(&format!("[acme]\n{bad}\n")).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(format!("{err:#}").contains("acme") || format!("{err:#}").contains("unknown field"), "{bad}: {err:#}");
        }
    }

    #[test]
    fn relay_keys() {
        use pobox_server::relay::RelayTls;
        assert!(parse("").unwrap().server.outbound.is_none(), "off unless [relay] is present");
        let s = parse("hostname = \"mx.example.org\"\n[relay]\nhost = \"smtp.example.org\"\n").unwrap();
        let o = s.server.outbound.unwrap();
        assert_eq!(o.relay.port, 587);
        assert_eq!(o.relay.tls, RelayTls::StartTls);
        assert_eq!(o.relay.helo, "mx.example.org");
        assert_eq!(o.outbox_dir, PathBuf::from("/tmp/pobox-test/outbox"));
        assert_eq!(o.vacation_dir, PathBuf::from("/tmp/pobox-test/vacation"));
        assert_eq!(o.retry_interval, Duration::from_secs(60));
        assert_eq!(o.give_up_after, Duration::from_secs(86_400));
        let o = parse(
            "[relay]\nhost = \"smtp.example.org\"\ntls = \"tls\"\nusername = \"pobox\"\npassword_file = \"relay.pw\"\n\
             ca_file = \"/etc/ca.pem\"\nretry_interval_secs = 5\n",
        )
        .unwrap()
        .server
        .outbound
        .unwrap();
        assert_eq!(o.relay.port, 465, "implicit TLS defaults to 465");
        assert_eq!(o.relay.password_file, Some(PathBuf::from("/tmp/pobox-test/relay.pw")));
        assert_eq!(o.relay.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(o.retry_interval, Duration::from_secs(5));
        assert_eq!(
            parse("[relay]\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\n").unwrap().server.outbound.unwrap().relay.tls,
            RelayTls::None
        );
        for (bad, key) in [
            ("tls = \"none\"\nhost = \"smtp.example.org\"", "loopback"),
            ("host = \"\"", "relay.host"),
            ("port = 587", "relay.host"),
            ("host = \"a b\"", "relay.host"),
            ("host = \"h\"\ntls = \"ssl\"", "relay.tls"),
            ("host = \"h\"\nusername = \"u\"", "password_file"),
            ("host = \"h\"\nretry_interval_secs = 0", "retry_interval_secs"),
            ("host = \"h\"\npassword = \"x\"", "unknown field"),
        ] {
            let err = parse(&format!("[relay]\n{bad}\n")).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(format!("{err:#}").contains(key), "{bad}: {err:#}");
        }
    }

    #[test]
    fn app_password_and_login_history_keys() {
        let s = parse("").unwrap();
        assert!(!s.server.require_app_passwords);
        assert_eq!(s.server.login_history_dir.as_deref(), Some(s.data_dir.join("logins").as_path()));
        let s = parse("require_app_passwords = true\nlogin_history = false\n").unwrap();
        assert!(s.server.require_app_passwords);
        assert_eq!(s.server.login_history_dir, None);
        assert!(parse("require_app_passwords = \"yes\"\n").is_err());
    }

    #[test]
    fn data_keys() {
        let s = parse("").unwrap();
        assert_eq!(s.server.smtp_hard_error_limit, 20);
        assert_eq!(s.server.data_timeout, Duration::from_secs(600));
        assert_eq!(s.server.data_memory_max, 32 * 1024 * 1024);
        assert_eq!(s.server.data_in_flight_max, 1024 * 1024 * 1024);
        assert_eq!(s.server.spool_dir.as_deref(), Some(s.data_dir.join("spool").as_path()));
        let s = parse(
            "smtp_hard_error_limit = 5\ndata_timeout_secs = 60\ndata_memory_max = 2097152\n\
             data_in_flight_max = 10485760\n",
        )
        .unwrap();
        assert_eq!(s.server.smtp_hard_error_limit, 5);
        assert_eq!(s.server.data_timeout, Duration::from_secs(60));
        assert_eq!(s.server.data_memory_max, 2 * 1024 * 1024);
        assert_eq!(s.server.data_in_flight_max, 10 * 1024 * 1024);
        assert!(parse("smtp_hard_error_limit = 0").is_err());
        assert!(parse("data_timeout_secs = 0").is_err());
        assert!(parse("data_memory_max = 1000").is_err());
        assert!(parse("data_in_flight_max = 1000").is_err());
    }
}

#[cfg(test)]
mod autoconfig_tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Settings> {
        let raw: RawConfig = toml::from_str(text)?;
        Settings::from_raw(Path::new("/tmp/pobox-test"), raw)
    }

    #[test]
    fn autoconfig_is_off_by_default_and_advertises_the_standard_ports() {
        let s = parse("hostname = \"Mail.Example.org\"\ndomains = [\"example.org\"]\n").unwrap();
        assert!(!s.autoconfig.enabled());
        let offer = s.autoconfig_offer();
        assert_eq!((offer.host.as_str(), offer.provider.as_str()), ("mail.example.org", "example.org"));
        assert_eq!((offer.pop3s_port, offer.pop3_port), (Some(995), Some(110)));
        let s = parse("pop3 = []\npop3s = [\"127.0.0.1:1995\", \"0.0.0.0:995\"]\n[autoconfig]\npop3s_port = 2995\n").unwrap();
        assert_eq!((s.autoconfig_offer().pop3s_port, s.autoconfig_offer().pop3_port), (Some(2995), None));
    }

    #[test]
    fn bad_autoconfig_values_name_their_key() {
        for (text, key) in [
            ("[autoconfig]\nlisten = [\"80\"]", "autoconfig.listen"),
            ("[autoconfig]\nlisten_tls = [\"x:443\"]", "autoconfig.listen_tls"),
            ("[autoconfig]\nsubmission = \"smtp.example.org\"", "autoconfig.submission"),
            ("[autoconfig]\nsubmission = \"smtp example:587\"", "autoconfig.submission"),
            ("[autoconfig]\nhostname = \"mail/x\"", "autoconfig.hostname"),
            ("[autoconfig]\nusername = \"uid\"", "autoconfig.username"),
            ("[autoconfig]\npop3s_port = 0", "autoconfig.pop3s_port"),
        ] {
            let e = format!("{:#}", parse(text).err().unwrap_or_else(|| panic!("accepted: {text}")));
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(parse("[autoconfig]\nbogus = 1").is_err(), "unknown keys are errors");
    }
}
