//! The validated configuration the server runs with: plain structs, no
//! serde. The `pobox` binary turns its TOML file and command line into this
//! (and is where unknown keys and bad values are rejected).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;


/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket path (LMTP from a local MTA).
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Everything `pobox serve` needs beyond its listeners.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name in the greeting, the APOP timestamp and Received lines.
    pub hostname: String,
    /// Idle timeout before login.
    pub login_timeout: Duration,
    /// How long a POP3 connection may stay unauthenticated in all, counted
    /// from connect and not reset by commands (Dovecot's login processes
    /// use 3 minutes the same way): without it, a client that keeps sending
    /// anything keeps its connection forever.
    pub login_deadline: Duration,
    /// Idle timeout after login (RFC 1939 §3: at least 10 minutes; the
    /// binary refuses less).
    pub session_timeout: Duration,
    /// Allow USER/PASS and AUTH PLAIN/LOGIN on unencrypted non-loopback
    /// connections. Off by default (RFC 8314).
    pub allow_plaintext_auth: bool,
    /// Treat loopback connections as safe for cleartext passwords (the
    /// traffic never leaves the machine). On by default; turn off when a
    /// local proxy forwards outside connections.
    pub plaintext_auth_on_loopback: bool,
    /// Offer APOP (needs {PLAIN} secrets in the passwd-file).
    pub apop: bool,
    /// Count TOP as a retrieval for the EXPIRE clock (RETR always counts).
    pub top_counts_as_retrieval: bool,
    /// How often the background expiry runs; zero disables it (expiry then
    /// still runs at each login, and by `pobox mailbox expire`).
    pub expire_interval: Duration,
    /// The admin control socket (`pobox who`, `pobox kick`).
    pub control_socket: Option<PathBuf>,
    /// Sieve scripts applied at delivery.
    pub sieve: crate::delivery::SieveConfig,
    /// Over quota is a permanent failure (552 5.2.2, bounce) instead of a
    /// temporary one (452 4.2.2, the MTA retries).
    pub quota_permanent: bool,
    /// Delay before answering a failed login: slows password guessing
    /// without blocking other sessions.
    pub auth_failure_delay: Duration,
    /// At most this many concurrent connections per listener kind.
    pub max_connections: usize,
    /// LMTP: largest message accepted (SIZE, RFC 1870).
    pub lmtp_max_message_size: u64,
    /// LMTP: most recipients per transaction.
    pub lmtp_max_recipients: usize,
    /// Domains LMTP accepts; empty = any domain (local part = user).
    pub domains: Vec<String>,
    /// How long SIGTERM waits for sessions before closing them without UPDATE.
    pub shutdown_grace: Duration,
    /// Advertise `IMPLEMENTATION pobox` in CAPA.
    pub advertise_implementation: bool,
    /// POP3: at most this many connections from one client IP (IPv6: one
    /// /64) that have not authenticated yet, across the POP3 listeners. A
    /// connection stops counting once it proves a user's credentials, so an
    /// office behind one NAT address is limited only by
    /// `max_connections_per_user_ip` per user.
    pub max_connections_per_ip: usize,
    /// POP3: at most this many connections of one user from one client IP
    /// that have authenticated (logged in, or refused after proving the
    /// password, e.g. `[IN-USE]`), like Dovecot's
    /// `mail_max_userip_connections` (also 10).
    pub max_connections_per_user_ip: usize,
    /// Cap on the per-IP/per-user brute-force penalty interval (see
    /// `throttle`); zero disables the penalties (the fixed
    /// `auth_failure_delay` still applies).
    pub auth_penalty_max: Duration,
    /// How long a successful password verification is cached (keyed by a
    /// MAC, dropped when the user's passwd-file line changes); zero disables.
    pub credential_cache_ttl: Duration,
    /// How often certificate files are checked for changes (zero: reload on
    /// SIGHUP only).
    pub tls_reload_interval: Duration,
    /// OAuth 2.0 (OAUTHBEARER, XOAUTH2) token validation; `None`: not offered.
    pub oauth: Option<pobox_auth::oauth::OAuthConfig>,
    /// OAuth's networked parts: the JWKS URL and introspection (issue 18).
    pub oauth_remote: Option<crate::oauth_remote::RemoteConfig>,
    /// SMTP: largest message accepted (SIZE, RFC 1870).
    pub smtp_max_message_size: u64,
    /// SMTP: most recipients per transaction.
    pub smtp_max_recipients: usize,
    /// SMTP: at most this many concurrent SMTP connections from one client
    /// IP (IPv6: one /64), counted apart from `max_connections_per_ip`.
    pub smtp_max_connections_per_ip: usize,
    /// SMTP: how long a read may wait, for a command or a DATA block (RFC
    /// 5321 §4.5.3.2: at least 5 minutes).
    pub smtp_timeout: Duration,
    /// SMTP: SPF, DKIM and DMARC checks.
    pub mail_auth: MailAuthConfig,
    /// SMTP: after this many `5xx` replies to commands (unknown recipients,
    /// bad commands) without a delivery in between, `421 4.7.0` and close,
    /// like Postfix's `smtpd_hard_error_limit` (20).
    pub smtp_hard_error_limit: u32,
    /// SMTP and LMTP: the longest a whole DATA may take, from `354` to the
    /// final dot, on top of the per-read timeout; past it `421 4.4.2`.
    pub data_timeout: Duration,
    /// SMTP and LMTP: DATA bytes all sessions may hold in memory; past it
    /// messages go to their spool file early.
    pub data_memory_max: u64,
    /// SMTP and LMTP: DATA bytes all unanswered transactions may hold
    /// (memory and spool); past it `452 4.3.1`.
    pub data_in_flight_max: u64,
    /// Where messages past 128 KiB are spooled while received (created
    /// 0700, emptied at startup); `None`: the system temporary directory.
    pub spool_dir: Option<PathBuf>,
    /// Where the OpenMetrics endpoint (`GET /metrics`) listens; `None`: off.
    /// It has no authentication: loopback or a private network only.
    pub metrics: Option<SocketAddr>,
    /// Postfix policy service: answer `550 5.1.1` for recipients that are
    /// no local user (default: `DUNNO`, Postfix decides).
    pub policy_reject_unknown: bool,
    /// Postfix policy service: most connections served at once (each
    /// Postfix smtpd process keeps one).
    pub policy_max_connections: usize,
    /// Outbound mail (Sieve vacation replies) through a relay; `None`:
    /// scripts using `vacation` do not compile.
    pub outbound: Option<crate::outbox::OutboundConfig>,
    /// POP3: where each user's login history is kept
    /// (`pobox_store::history`: credential, mechanism, address, and what
    /// each session retrieved and deleted); `None`: not recorded.
    pub login_history_dir: Option<PathBuf>,
    /// POP3: refuse logins proved by the main password (USER/PASS, PLAIN,
    /// LOGIN, and SCRAM and APOP, whose secrets derive from it): every
    /// device must use its own app password. Bearer tokens still work.
    pub require_app_passwords: bool,
    /// The PROXY protocol (`proxy.rs`): which listeners expect the header,
    /// and from whom.
    pub proxy_protocol: ProxyProtocol,
    /// Where the health endpoint (`GET /health`, `health.rs`) listens;
    /// `None`: off.
    pub health: Option<SocketAddr>,
    /// How long after SIGTERM the listeners keep accepting while the health
    /// endpoint already answers 503, so that balancers take the node out
    /// before it refuses connections; zero: drain at once.
    pub health_drain_delay: Duration,
}

/// Listeners behind a load balancer that sends the PROXY protocol header
/// (HAProxy's v1 or v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// The TCP listener addresses (as configured) whose connections must
    /// start with the header; empty: none.
    pub listeners: Vec<SocketAddr>,
    /// Peers allowed to send it; on those listeners every other peer is
    /// closed unread.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long the whole header may take to arrive.
    pub header_timeout: Duration,
}

impl ProxyProtocol {
    /// Whether the listener bound for `configured` (or, for a socket
    /// systemd passed, bound at `local`) expects the header.
    #[must_use]
    pub fn expects(&self, configured: Option<&ListenAddr>, local: &str) -> bool {
        let addr = match configured {
            Some(ListenAddr::Tcp(a)) => Some(*a),
            Some(ListenAddr::Unix(_)) => None,
            None => local.parse().ok(),
        };
        addr.is_some_and(|a| self.listeners.contains(&a))
    }
}

impl Default for ProxyProtocol {
    fn default() -> ProxyProtocol {
        ProxyProtocol { listeners: Vec::new(), trusted_proxies: Vec::new(), header_timeout: Duration::from_secs(5) }
    }
}

/// Which DNS servers the SPF/DKIM/DMARC checks ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsResolver {
    /// `/etc/resolv.conf`.
    System,
    /// These servers (UDP, then TCP).
    Servers(Vec<SocketAddr>),
}

/// SPF, DKIM and DMARC checking of mail received over SMTP, recorded in an
/// `Authentication-Results` header (RFC 8601).
#[derive(Debug, Clone)]
pub struct MailAuthConfig {
    /// Run the checks (the header is added only when on).
    pub enabled: bool,
    /// The DNS servers.
    pub resolver: DnsResolver,
    /// TXT records answered locally instead of by DNS (name, value): SPF,
    /// `_dmarc.` and `._domainkey.` records. For tests, and to pin records.
    pub static_txt: Vec<(String, String)>,
    /// Longest time all checks of one message may take; past it the header
    /// says `none` and the message is delivered anyway.
    pub timeout: Duration,
}

impl Default for MailAuthConfig {
    fn default() -> MailAuthConfig {
        MailAuthConfig {
            enabled: true,
            resolver: DnsResolver::System,
            static_txt: Vec::new(),
            timeout: Duration::from_secs(20),
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            hostname: "localhost".into(),
            login_timeout: Duration::from_secs(120),
            login_deadline: Duration::from_secs(180),
            session_timeout: Duration::from_secs(600),
            allow_plaintext_auth: false,
            plaintext_auth_on_loopback: true,
            apop: false,
            top_counts_as_retrieval: false,
            expire_interval: Duration::from_secs(3600),
            control_socket: None,
            sieve: crate::delivery::SieveConfig::default(),
            quota_permanent: false,
            auth_failure_delay: Duration::from_secs(2),
            max_connections: 10_000,
            lmtp_max_message_size: 64 * 1024 * 1024,
            lmtp_max_recipients: 100,
            domains: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            advertise_implementation: true,
            // An office NAT: 30+ people whose clients poll at the same
            // moment, each unauthenticated for a round trip or two. Password
            // guessing is bounded by the throttle, not by this.
            max_connections_per_ip: 100,
            max_connections_per_user_ip: 10,
            auth_penalty_max: Duration::from_secs(15),
            credential_cache_ttl: Duration::from_secs(3600),
            tls_reload_interval: Duration::from_secs(60),
            oauth: None,
            oauth_remote: None,
            smtp_max_message_size: 64 * 1024 * 1024,
            smtp_max_recipients: 100,
            smtp_max_connections_per_ip: 10,
            smtp_timeout: Duration::from_secs(300),
            mail_auth: MailAuthConfig::default(),
            smtp_hard_error_limit: 20,
            data_timeout: Duration::from_secs(600),
            data_memory_max: 32 * 1024 * 1024,
            data_in_flight_max: 1024 * 1024 * 1024,
            spool_dir: None,
            metrics: None,
            policy_reject_unknown: false,
            // Postfix's default_process_limit: one per smtpd process.
            policy_max_connections: 100,
            outbound: None,
            login_history_dir: None,
            require_app_passwords: false,
            proxy_protocol: ProxyProtocol::default(),
            health: None,
            health_drain_delay: Duration::ZERO,
        }
    }
}
