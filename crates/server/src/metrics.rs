//! What the server process counts, and the HTTP endpoint that exposes it in
//! the OpenMetrics text format (`metrics = "ADDR"`, off by default).
//!
//! What it does not do: authenticate scrapers (bind it to loopback or a
//! private network), count what other processes do (`pobox mailbox
//! restore` and `purge` are CLI commands; `pobox deliver` runs in the MTA's
//! process), or keep history (Prometheus does).
//!
//! The counters live in one process-wide [`Metrics`] rather than in
//! `Services`: they must survive a configuration reload (which replaces the
//! services), and the code that counts (the delivery pipeline, the throttle)
//! should not need a handle passed through every call. Every series a label
//! combination can produce is created at start-up with the value 0, so a
//! dashboard's `rate()` works from the first scrape, and every label value
//! is a `&'static str` from a fixed list: nothing a client sends can become
//! a label (unbounded series, or forged ones).
//!
//! Series (all `pobox_`-prefixed):
//! - `connections_total{protocol,tls}`: accepted connections, refused ones
//!   included; `tls` is `yes` on implicit-TLS listeners (995). Upgrades by
//!   STLS/STARTTLS are `starttls_total{protocol}`.
//! - `sessions{protocol}`: connections being served now.
//! - `connections_refused_total{protocol,reason}`: `max_connections`, `per_ip`.
//! - `logins_total{mechanism,result}`: `ok`, `failed` (bad credentials),
//!   `in_use` (`[IN-USE]`), `login_delay`, `temporary`, `permanent`.
//! - `login_duration_seconds`: successful logins, credentials to `+OK`.
//! - `pop3_commands_total{command}`: by keyword; `unknown` for anything else.
//! - `pop3_retr_bytes_total`, `pop3_retr_duration_seconds`: message octets
//!   RETR sent (as LIST counts them) and the time to read and encode one.
//! - `pop3_deleted_messages_total`: removed at UPDATE.
//! - `auth_penalties_total`, `auth_penalty_seconds_total`: throttled attempts.
//! - `deliveries_total{protocol,result}`, `delivery_duration_seconds`: per
//!   recipient; the time covers Sieve and the store, fsyncs included.
//! - `sieve_actions_total{action}`.
//! - `expired_messages_total`, `restore_purged_messages_total`: retention
//!   run by the server (at login and by the timer).
//! - `policy_requests_total{result}`: Postfix policy answers: `dunno`,
//!   `over_quota`, `unknown_user`, `defer`, `malformed` (connection closed).
//! - `bdat_chunks_total{protocol}`: `BDAT` chunks received (CHUNKING).
//! - `build_info{version}`: 1.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::Protocol;

/// A label set of `N` fixed names and values.
type Labels<const N: usize> = [(&'static str, &'static str); N];

const PROTOCOLS: [&str; 5] = ["pop3", "pop3s", "lmtp", "smtp", "policy"];

/// The POP3 keywords pobox knows (RFC 1939, 2449, 2595, 5034, 6856); any
/// other is counted as `unknown`.
const POP3_COMMANDS: [&str; 16] = [
    "USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "UTF8", "STAT", "LIST", "RETR", "TOP", "DELE", "UIDL", "NOOP",
    "RSET", "QUIT",
];

/// Every mechanism the POP3 driver reports (`Credentials::mechanism`).
const MECHANISMS: [&str; 8] =
    ["USER", "APOP", "PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "OAUTHBEARER", "XOAUTH2"];

/// How a login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    /// Logged in.
    Ok,
    /// Wrong password, unknown user, refused token.
    Failed,
    /// `[IN-USE]`: another session holds the maildrop.
    InUse,
    /// `[LOGIN-DELAY]`.
    LoginDelay,
    /// `[SYS/TEMP]`.
    Temporary,
    /// `[SYS/PERM]`.
    Permanent,
}

impl LoginResult {
    const ALL: [LoginResult; 6] = [
        LoginResult::Ok,
        LoginResult::Failed,
        LoginResult::InUse,
        LoginResult::LoginDelay,
        LoginResult::Temporary,
        LoginResult::Permanent,
    ];

    fn label(self) -> &'static str {
        match self {
            LoginResult::Ok => "ok",
            LoginResult::Failed => "failed",
            LoginResult::InUse => "in_use",
            LoginResult::LoginDelay => "login_delay",
            LoginResult::Temporary => "temporary",
            LoginResult::Permanent => "permanent",
        }
    }
}

/// What happened to one recipient's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Stored (inbox or folders).
    Stored,
    /// Sieve `discard`.
    Discarded,
    /// Sieve `reject`/`ereject`.
    Rejected,
    /// Over quota (452 4.2.2 or 552 5.2.2).
    OverQuota,
    /// Larger than the limit.
    TooLarge,
    /// No disk space, or no room in the DATA budget (452 4.3.1).
    NoRoom,
    /// Any other temporary failure (451 4.3.0).
    Failed,
}

impl DeliveryResult {
    const ALL: [DeliveryResult; 7] = [
        DeliveryResult::Stored,
        DeliveryResult::Discarded,
        DeliveryResult::Rejected,
        DeliveryResult::OverQuota,
        DeliveryResult::TooLarge,
        DeliveryResult::NoRoom,
        DeliveryResult::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            DeliveryResult::Stored => "stored",
            DeliveryResult::Discarded => "discarded",
            DeliveryResult::Rejected => "rejected",
            DeliveryResult::OverQuota => "over_quota",
            DeliveryResult::TooLarge => "too_large",
            DeliveryResult::NoRoom => "no_room",
            DeliveryResult::Failed => "failed",
        }
    }

    /// The result of a pipeline run (`None`: the delivery task died).
    pub(crate) fn of(outcome: Option<&crate::delivery::Outcome>) -> DeliveryResult {
        use crate::delivery::Outcome;
        use pobox_store::StoreError;
        match outcome {
            Some(Outcome::Stored(_)) => DeliveryResult::Stored,
            Some(Outcome::Discarded) => DeliveryResult::Discarded,
            Some(Outcome::Rejected(_)) => DeliveryResult::Rejected,
            Some(Outcome::Failed(StoreError::OverQuota(_))) => DeliveryResult::OverQuota,
            Some(Outcome::Failed(StoreError::TooLarge { .. })) => DeliveryResult::TooLarge,
            Some(Outcome::Failed(StoreError::DiskFull(_))) => DeliveryResult::NoRoom,
            Some(Outcome::Failed(_)) | None => DeliveryResult::Failed,
        }
    }
}

/// What the Postfix policy service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyResult {
    /// `DUNNO`.
    Dunno,
    /// The quota refusal.
    OverQuota,
    /// `550 5.1.1` (`reject_unknown`).
    UnknownUser,
    /// `DEFER_IF_PERMIT`.
    Defer,
    /// Not a policy request: answered and closed.
    Malformed,
}

impl PolicyResult {
    const ALL: [PolicyResult; 5] =
        [PolicyResult::Dunno, PolicyResult::OverQuota, PolicyResult::UnknownUser, PolicyResult::Defer, PolicyResult::Malformed];

    fn label(self) -> &'static str {
        match self {
            PolicyResult::Dunno => "dunno",
            PolicyResult::OverQuota => "over_quota",
            PolicyResult::UnknownUser => "unknown_user",
            PolicyResult::Defer => "defer",
            PolicyResult::Malformed => "malformed",
        }
    }
}

/// Why a connection was refused before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    MaxConnections,
    /// `max_connections_per_ip` (or `smtp_max_connections_per_ip`) reached.
    PerIp,
    /// `max_connections_per_user_ip` reached (POP3, at login).
    PerUserIp,
    /// On a PROXY protocol listener: an untrusted peer, or no valid
    /// header in time.
    ProxyHeader,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerIp => "per_ip",
            Refusal::PerUserIp => "per_user_ip",
            Refusal::ProxyHeader => "proxy_header",
        }
    }
}

const SIEVE_ACTIONS: [&str; 7] = ["keep", "fileinto", "discard", "reject", "ereject", "redirect", "vacation"];

/// The process's metrics. Obtain it with [`get`].
pub struct Metrics {
    registry: Registry,
    connections: Family<Labels<2>, Counter>,
    starttls: Family<Labels<1>, Counter>,
    sessions: Family<Labels<1>, Gauge>,
    refused: Family<Labels<2>, Counter>,
    logins: Family<Labels<2>, Counter>,
    login_duration: Histogram,
    pop3_commands: Family<Labels<1>, Counter>,
    /// The same counters as `pop3_commands`, one per entry of
    /// `POP3_COMMANDS` and a last one for `unknown`, resolved once: the
    /// per-command path is then an atomic add, not a lock and a lookup.
    pop3_command_counters: Vec<Counter>,
    retr_bytes: Counter,
    retr_duration: Histogram,
    deleted: Counter,
    penalties: Counter,
    penalty_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    deliveries: Family<Labels<2>, Counter>,
    delivery_duration: Histogram,
    sieve_actions: Family<Labels<1>, Counter>,
    expired: Counter,
    restore_purged: Counter,
    policy: Family<Labels<1>, Counter>,
    bdat_chunks: Family<Labels<1>, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Seconds; from a fast cached read (sub-millisecond) to a slow disk or an
/// argon2 verification under load.
fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0].into_iter()
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pobox");
        let m = Metrics {
            connections: Family::default(),
            starttls: Family::default(),
            sessions: Family::default(),
            refused: Family::default(),
            logins: Family::default(),
            login_duration: Histogram::new(latency_buckets()),
            pop3_commands: Family::default(),
            pop3_command_counters: Vec::new(),
            retr_bytes: Counter::default(),
            retr_duration: Histogram::new(latency_buckets()),
            deleted: Counter::default(),
            penalties: Counter::default(),
            penalty_seconds: Counter::default(),
            deliveries: Family::default(),
            delivery_duration: Histogram::new(latency_buckets()),
            sieve_actions: Family::default(),
            expired: Counter::default(),
            restore_purged: Counter::default(),
            policy: Family::default(),
            bdat_chunks: Family::default(),
            registry: Registry::default(),
        };
        // Every series at 0 from the start (see the module comment).
        for p in PROTOCOLS {
            let tls = if p == "pop3s" { "yes" } else { "no" };
            let _ = m.connections.get_or_create(&[("protocol", p), ("tls", tls)]);
            let _ = m.sessions.get_or_create(&[("protocol", p)]);
            if p != "lmtp" && p != "policy" {
                let _ = m.refused.get_or_create(&[("protocol", p), ("reason", Refusal::PerIp.label())]);
            }
            if p.starts_with("pop3") {
                let _ = m.refused.get_or_create(&[("protocol", p), ("reason", Refusal::PerUserIp.label())]);
            }
            let _ = m.refused.get_or_create(&[("protocol", p), ("reason", Refusal::MaxConnections.label())]);
            let _ = m.refused.get_or_create(&[("protocol", p), ("reason", Refusal::ProxyHeader.label())]);
        }
        for p in ["pop3", "smtp"] {
            let _ = m.starttls.get_or_create(&[("protocol", p)]);
        }
        for mech in MECHANISMS {
            for r in LoginResult::ALL {
                let _ = m.logins.get_or_create(&[("mechanism", mech), ("result", r.label())]);
            }
        }
        let pop3_command_counters: Vec<Counter> = POP3_COMMANDS
            .into_iter()
            .chain(["unknown"])
            .map(|c| m.pop3_commands.get_or_create(&[("command", c)]).clone())
            .collect();
        for p in ["lmtp", "smtp"] {
            for r in DeliveryResult::ALL {
                let _ = m.deliveries.get_or_create(&[("protocol", p), ("result", r.label())]);
            }
        }
        for r in PolicyResult::ALL {
            let _ = m.policy.get_or_create(&[("result", r.label())]);
        }
        for p in ["lmtp", "smtp"] {
            let _ = m.bdat_chunks.get_or_create(&[("protocol", p)]);
        }
        for a in SIEVE_ACTIONS {
            let _ = m.sieve_actions.get_or_create(&[("action", a)]);
        }

        let r = &mut registry;
        r.register("connections", "Connections accepted, by listener protocol and implicit TLS", m.connections.clone());
        r.register("starttls", "Connections upgraded to TLS by STLS or STARTTLS", m.starttls.clone());
        r.register("sessions", "Connections being served now", m.sessions.clone());
        r.register("connections_refused", "Connections refused by a connection limit", m.refused.clone());
        r.register("logins", "POP3 logins by mechanism and result", m.logins.clone());
        r.register_with_unit(
            "login_duration",
            "Successful POP3 logins: from the credentials to +OK (check, lock, listing)",
            Unit::Seconds,
            m.login_duration.clone(),
        );
        r.register("pop3_commands", "POP3 commands received, by keyword", m.pop3_commands.clone());
        r.register_with_unit(
            "pop3_retr",
            "Message octets sent by RETR, counted as LIST counts them",
            Unit::Bytes,
            m.retr_bytes.clone(),
        );
        r.register_with_unit(
            "pop3_retr_duration",
            "RETR: time to read and encode the message",
            Unit::Seconds,
            m.retr_duration.clone(),
        );
        r.register("pop3_deleted_messages", "Messages removed at POP3 UPDATE", m.deleted.clone());
        r.register("auth_penalties", "Authentication attempts delayed by the brute-force throttle", m.penalties.clone());
        r.register_with_unit(
            "auth_penalty",
            "Time authentication attempts were delayed by the throttle",
            Unit::Seconds,
            m.penalty_seconds.clone(),
        );
        r.register("deliveries", "Deliveries per recipient, by protocol and result", m.deliveries.clone());
        r.register_with_unit(
            "delivery_duration",
            "Delivery of one recipient's copy: Sieve and the store, fsyncs included",
            Unit::Seconds,
            m.delivery_duration.clone(),
        );
        r.register("sieve_actions", "Actions decided by Sieve scripts", m.sieve_actions.clone());
        r.register("policy_requests", "Postfix policy service answers, by result", m.policy.clone());
        r.register("bdat_chunks", "BDAT chunks received (CHUNKING, RFC 3030), by protocol", m.bdat_chunks.clone());
        r.register("expired_messages", "Messages removed by retention (at login and by the timer)", m.expired.clone());
        r.register(
            "restore_purged_messages",
            "Messages purged from the restore area when their window ended",
            m.restore_purged.clone(),
        );
        r.register("build", "pobox build information", Info::new([("version", env!("CARGO_PKG_VERSION"))]));
        Metrics { registry, pop3_command_counters, ..m }
    }

    /// The OpenMetrics text exposition, ending with `# EOF`.
    #[must_use]
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format 0.0.4, for scrapers that ask only for it.
    #[must_use]
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

fn protocol_label(p: Protocol) -> &'static str {
    match p {
        Protocol::Pop3 => "pop3",
        Protocol::Pop3s => "pop3s",
        Protocol::Lmtp => "lmtp",
        Protocol::Smtp => "smtp",
        Protocol::Policy => "policy",
    }
}

/// The Postfix policy service answered a request.
pub(crate) fn policy(result: PolicyResult) {
    get().policy.get_or_create(&[("result", result.label())]).inc();
}

/// A `BDAT` chunk arrived on `protocol` (LMTP or SMTP).
pub(crate) fn bdat_chunk(protocol: Protocol) {
    get().bdat_chunks.get_or_create(&[("protocol", protocol_label(protocol))]).inc();
}

/// A connection was accepted on a listener of `protocol`.
pub(crate) fn connection(protocol: Protocol) {
    let tls = if protocol == Protocol::Pop3s { "yes" } else { "no" };
    get().connections.get_or_create(&[("protocol", protocol_label(protocol)), ("tls", tls)]).inc();
}

/// A connection was refused by a limit.
pub(crate) fn refused(protocol: Protocol, reason: Refusal) {
    get().refused.get_or_create(&[("protocol", protocol_label(protocol)), ("reason", reason.label())]).inc();
}

/// A POP3 STLS or SMTP STARTTLS handshake succeeded.
pub(crate) fn starttls(protocol: Protocol) {
    get().starttls.get_or_create(&[("protocol", protocol_label(protocol))]).inc();
}

/// Counts a session in `pobox_sessions` for as long as it is held.
#[derive(Debug)]
pub(crate) struct SessionGuard(Gauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A connection of `protocol` is being served until the guard is dropped.
pub(crate) fn session(protocol: Protocol) -> SessionGuard {
    let gauge = get().sessions.get_or_create(&[("protocol", protocol_label(protocol))]).clone();
    gauge.inc();
    SessionGuard(gauge)
}

/// A POP3 login ended; `elapsed` is observed for successful ones.
pub(crate) fn login(mechanism: &'static str, result: LoginResult, elapsed: Option<Duration>) {
    // Mechanism names are the driver's own constants; anything else would
    // be a bug, counted rather than turned into a new series.
    let mechanism = MECHANISMS.into_iter().find(|m| *m == mechanism).unwrap_or("other");
    get().logins.get_or_create(&[("mechanism", mechanism), ("result", result.label())]).inc();
    if let Some(d) = elapsed {
        get().login_duration.observe(d.as_secs_f64());
    }
}

/// A POP3 command line arrived (outside a SASL exchange). Only its keyword
/// is looked at, and only a known keyword becomes a label.
pub(crate) fn pop3_command(line: &[u8]) {
    let keyword = line.split(|&b| b == b' ').next().unwrap_or_default();
    let index = POP3_COMMANDS.iter().position(|c| c.as_bytes().eq_ignore_ascii_case(keyword)).unwrap_or(POP3_COMMANDS.len());
    get().pop3_command_counters[index].inc();
}

/// A RETR reply is complete: `octets` of message sent, produced in `elapsed`.
pub(crate) fn retr(octets: u64, elapsed: Duration) {
    get().retr_bytes.inc_by(octets);
    get().retr_duration.observe(elapsed.as_secs_f64());
}

/// UPDATE removed `n` messages.
pub(crate) fn pop3_deleted(n: usize) {
    get().deleted.inc_by(n as u64);
}

/// The throttle delayed an authentication attempt by `wait`.
pub(crate) fn auth_penalty(wait: Duration) {
    get().penalties.inc();
    get().penalty_seconds.inc_by(wait.as_secs_f64());
}

/// One recipient's delivery over `protocol` ended with `result`.
pub(crate) fn delivery(protocol: Protocol, result: DeliveryResult, elapsed: Option<Duration>) {
    get().deliveries.get_or_create(&[("protocol", protocol_label(protocol)), ("result", result.label())]).inc();
    if let Some(d) = elapsed {
        get().delivery_duration.observe(d.as_secs_f64());
    }
}

/// Sieve decided `action`.
pub(crate) fn sieve_action(action: &pobox_sieve::Action) {
    use pobox_sieve::Action;
    let name = match action {
        Action::Keep { .. } => "keep",
        Action::FileInto { .. } => "fileinto",
        Action::Discard => "discard",
        Action::Reject { .. } => "reject",
        Action::Ereject { .. } => "ereject",
        Action::Redirect { .. } => "redirect",
        Action::Vacation(_) => "vacation",
        // A future action (the enum is non_exhaustive): counted, not lost.
        _ => "other",
    };
    get().sieve_actions.get_or_create(&[("action", name)]).inc();
}

/// Retention removed `expired` messages and purged `purged` from the
/// restore area.
pub(crate) fn expiry(expired: usize, purged: usize) {
    get().expired.inc_by(expired as u64);
    get().restore_purged.inc_by(purged as u64);
}

// ---------------------------------------------------------------------------
// The HTTP endpoint
// ---------------------------------------------------------------------------

/// The OpenMetrics content type (OpenMetrics 1.0 §"Overall structure").
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The endpoint's bounds: a scraper's request is a few hundred bytes and
/// has no body; a few scrapes at once; 10 s for the whole exchange.
pub const LIMITS: crate::http::Limits =
    crate::http::Limits { max_head: 8 * 1024, max_body: 0, timeout: Duration::from_secs(10), max_connections: 8 };

/// Binds the metrics listener with `std::net`, before the runtime starts
/// and privileges are dropped (like the mail listeners).
///
/// # Errors
/// The OS error, with the address and the fix.
pub fn bind_std(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
    crate::http::bind_std(addr, "metrics")
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Each
/// connection gets one answer and is closed (`Connection: close`), so a
/// scraper cannot hold a connection open.
pub async fn serve(listener: std::net::TcpListener) {
    crate::http::serve(listener, None, LIMITS, "metrics", std::sync::Arc::new(respond)).await;
}

/// The response to a request: the pure part of the endpoint.
fn respond(request: &crate::http::Request) -> crate::http::Response {
    use crate::http::Response;
    if request.method != "GET" && request.method != "HEAD" {
        return Response::text(405, "Method Not Allowed");
    }
    // The query string is ignored (Prometheus adds none by default).
    if request.path != "/metrics" {
        return Response::text(404, "Not Found");
    }
    let accept = request.header("accept").unwrap_or_default().to_ascii_lowercase();
    // OpenMetrics unless the scraper asks for text/plain and not for
    // OpenMetrics (an old Prometheus, or a human with curl -H).
    if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
        Response::ok(prometheus_client::encoding::prometheus_text::CONTENT_TYPE, get().encode_prometheus())
    } else {
        Response::ok(OPENMETRICS_CONTENT_TYPE, get().encode_openmetrics())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(head: &str) -> String {
        let request = crate::http::Request::parse_head(head.as_bytes()).unwrap();
        String::from_utf8(respond(&request).to_bytes(request.method == "HEAD")).unwrap()
    }

    #[test]
    fn only_get_metrics_is_served() {
        assert!(response("GET / HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(response("GET /metrics/x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(response("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        let ok = response("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(&format!("Content-Type: {OPENMETRICS_CONTENT_TYPE}\r\n")));
        assert!(ok.ends_with("# EOF\n"), "{ok}");
    }

    #[test]
    fn text_plain_only_gets_the_prometheus_format() {
        let plain = response("GET /metrics HTTP/1.1\r\nAccept: text/plain\r\n\r\n");
        assert!(plain.contains("Content-Type: text/plain; version=0.0.4"), "{plain}");
        assert!(!plain.contains("# EOF"));
        // What Prometheus itself sends: OpenMetrics preferred.
        let prom = response(
            "GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
        );
        assert!(prom.contains(OPENMETRICS_CONTENT_TYPE));
        let head = response("HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    }

    #[test]
    fn throttle_penalties_are_counted_when_an_attempt_must_wait() {
        use std::net::{IpAddr, Ipv4Addr};
        let throttle = crate::throttle::Throttle::new(Duration::from_secs(15));
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let now = std::time::Instant::now();
        for _ in 0..6 {
            throttle.failed(ip, "victim", now);
        }
        let before = get().penalties.get();
        // Same instant, no leak: the first attempt pushes the schedule, the
        // second must wait for it.
        assert!(throttle.admit(ip, "victim", now).is_zero());
        assert!(!throttle.admit(ip, "victim", now).is_zero());
        // Other tests in this binary may count penalties concurrently.
        assert!(get().penalties.get() > before);
        assert!(get().encode_openmetrics().contains("pobox_auth_penalty_seconds_total"));
    }

    #[test]
    fn client_text_never_becomes_a_label() {
        pop3_command(b"XYZZY\"} 1\nevil 2");
        pop3_command(b"retr 1");
        let text = get().encode_openmetrics();
        assert!(!text.contains("XYZZY") && !text.contains("evil"), "{text}");
        assert!(text.contains("pobox_pop3_commands_total{command=\"unknown\"}"));
        assert!(text.contains("pobox_pop3_commands_total{command=\"RETR\"}"));
        assert!(text.contains("pobox_build_info{version=\""));
    }
}
