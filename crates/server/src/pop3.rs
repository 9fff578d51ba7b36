//! The POP3 connection driver: runs one [`ServerSession`] over a socket,
//! doing the I/O, authentication and storage calls the session asks for.
//!
//! All protocol decisions live in `pobox_proto::pop3::server`; this file
//! only moves bytes and calls services. Storage and password verification
//! are blocking work and run on tokio's blocking pool, so a slow disk or an
//! argon2 verification never stalls other sessions.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pobox_auth::oauth;
use pobox_auth::scram::{ChannelBindings, ScramError, ScramServer, ScramStep};
use pobox_auth::{AuthError, Authenticated, Credential};
use pobox_proto::pop3::command::Sensitive;
use pobox_proto::dot::WireEncoder;
use pobox_proto::line::{LineSplitter, Split};
use pobox_proto::pop3::maildrop::MessageMeta;
use pobox_proto::pop3::server::{
    Action, Credentials, Expire, IdleClass, LoginFailure, LoginGrant, OAUTHBEARER, SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS, ServerSession, SessionConfig, UpdateResult, XOAUTH2, retr_status_line,
};
use pobox_proto::pop3::{RespCode, Status};
use pobox_store::history::{Login, LoginHistory, SessionId, Update};
use pobox_store::retention::{Days, Policy};
use pobox_store::{Mailbox, StoreError};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::Services;
use crate::conn::Stream;
use crate::sessions::Handle;
use crate::shutdown::Shutdown;
use crate::throttle::{IpSlot, UserIpSlot};

/// Flush the output buffer once it holds this much, even mid-pipeline.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// Read size for message files.
const FILE_CHUNK: usize = 64 * 1024;

/// Why a connection ended early. Only logged.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("message {0} became unreadable while being sent: {1}")]
    MessageBroken(usize, String),
}

/// Serves one POP3 connection to the end. `implicit_tls` is true on 995.
/// `ip_slot` is the connection's place under `max_connections_per_ip`,
/// given back once the client authenticates.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    svc: Arc<Services>,
    shutdown: Shutdown,
    ip_slot: Option<IpSlot>,
) {
    let started = Instant::now();
    let _ = tcp.set_nodelay(true);
    // The whole AUTHORIZATION phase, TLS handshakes included, must end by
    // then (see `Config::login_deadline`).
    let login_deadline = tokio::time::Instant::now() + svc.config.login_deadline;
    let stream = if implicit_tls {
        let Some(tls) = &svc.tls else { return };
        match Box::pin(tokio::time::timeout(svc.config.login_timeout, tls.accept(tcp))).await {
            Ok(Ok(s)) => Stream::Tls(Box::new(s)),
            Ok(Err(e)) => {
                // Plaintext on 995, a scanner, or a broken client: nothing to answer.
                debug!(%peer, error = %e, "pop3s handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "pop3s handshake timed out");
                return;
            }
        }
    } else {
        Stream::Plain(tcp)
    };
    let secure = stream.is_tls();
    // The store's retention policies, the only copy (CAPA is derived from them).
    let retention = svc.store.retention();
    let (expire, expire_per_user) = retention.advertised_expire();
    let login_delay = retention.advertised_login_delay();
    let config = SessionConfig {
        greeting: "pobox POP3 server ready".into(),
        secure,
        stls_available: !secure && svc.tls.is_some(),
        plaintext_auth_allowed: secure
            || (svc.config.plaintext_auth_on_loopback && peer.ip().is_loopback())
            || svc.config.allow_plaintext_auth,
        apop_timestamp: svc.config.apop.then(|| apop_timestamp(&svc.config.hostname)),
        expire: to_expire(expire),
        expire_per_user,
        login_delay,
        implementation: svc.config.advertise_implementation.then(|| "pobox".to_string()),
    };
    let registry = svc.clone();
    let handle = registry.sessions.register(peer.to_string(), secure);
    let mut driver = Driver {
        handle,
        retrieved: BTreeSet::new(),
        policy: Policy::default(),
        stream: Some(stream),
        session: ServerSession::new(config),
        splitter: LineSplitter::new(pobox_proto::MAX_COMMAND_LINE),
        inbuf: Vec::new(),
        pos: 0,
        outbuf: Vec::new(),
        mailbox: None,
        svc,
        peer,
        closed: false,
        stats: Stats::default(),
        mech: None,
        history: None,
        slots: Box::new(Slots {
            ip: ip_slot,
            user_ip: None,
            listener: if implicit_tls { crate::Protocol::Pop3s } else { crate::Protocol::Pop3 },
        }),
    };
    driver.offer_mechanisms().await;
    let end = match driver.run(shutdown, login_deadline).await {
        Ok(end) => end,
        Err(e) => {
            debug!(%peer, error = %e, "pop3 connection ended");
            End::Error
        }
    };
    driver.log_summary(end, started.elapsed());
    // Release the maildrop before the socket closes, so a client that sees
    // the connection end can log in again at once. A session that did not
    // reach UPDATE changes nothing (RFC 1939 §6): no message is removed and
    // no retrieval is recorded, so neither EXPIRE 0 nor a retention clock
    // acts on what it sent. The client may never have received it (a reset
    // right after RETR), and RFC 2449's EXPIRE 0 removes at UPDATE too.
    if let Some(mailbox) = driver.mailbox.take() {
        // Unlocking may touch the disk: not on the async worker.
        let _ = tokio::task::spawn_blocking(move || drop(mailbox)).await;
    }
    drop(driver);
}

fn to_expire(days: Days) -> Expire {
    match days {
        Days::Never => Expire::Never,
        Days::After(d) => Expire::Days(d),
    }
}

/// What the session summary line reports (see [`Driver::log_summary`]).
#[derive(Debug, Default)]
struct Stats {
    /// The logged-in user (the session forgets it once closed).
    user: Option<String>,
    /// Messages sent whole by RETR.
    retrieved: u64,
    /// Octets of RETR and TOP replies sent.
    bytes: u64,
    /// Message octets of the last complete RETR (for the metrics).
    retr_octets: u64,
    /// Messages removed at UPDATE.
    deleted: usize,
    /// Messages in the maildrop at login.
    messages: usize,
    /// Failed logins (wrong password or unknown user) on this connection.
    auth_failures: u32,
    /// Logins refused for any other reason: `[IN-USE]`, LOGIN-DELAY, a
    /// connection limit, a temporary error.
    refused: u32,
    /// The mechanism of the successful login.
    mechanism: Option<&'static str>,
    /// First 4 bytes of SHA-256 over the UIDL listing seen at login.
    uidl_hash: Option<[u8; 4]>,
    /// The last command line fed to the session was QUIT.
    quit_sent: bool,
}

/// How a POP3 connection ended, for the summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// QUIT (with or without UPDATE: after login it removes what was marked).
    Quit,
    /// The client closed the connection.
    Eof,
    /// The idle timer or the login deadline.
    Timeout,
    /// `pobox kick`.
    Kicked,
    /// Server shutdown.
    Shutdown,
    /// An I/O or TLS error, or the server closed the connection for
    /// protocol errors (too many failures or bad commands).
    Error,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::Eof => "eof",
            End::Timeout => "timeout",
            End::Kicked => "kicked",
            End::Shutdown => "shutdown",
            End::Error => "error",
        }
    }
}

/// The connection's places under the connection limits.
#[derive(Debug)]
struct Slots {
    /// Under `max_connections_per_ip` until the client authenticates.
    ip: Option<IpSlot>,
    /// Under `max_connections_per_user_ip` from then on.
    user_ip: Option<UserIpSlot>,
    /// The listener it came in on (for the refusal counter).
    listener: crate::Protocol,
}

/// The UIDL-set hash of the summary line: SHA-256 over every UIDL of the
/// listing, in message order, each followed by a line feed (so it equals
/// `sha256sum` of the UIDL column of a `UIDL` reply). Like Dovecot's
/// `%{uidl_change}`, it shows in the log when the listing a client sees
/// changed between sessions in ways other than new mail.
fn uidl_hash<'a>(uidls: impl Iterator<Item = &'a str>) -> [u8; 4] {
    let mut h = Sha256::new();
    for u in uidls {
        h.update(u.as_bytes());
        h.update(b"\n");
    }
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

struct Driver<'r> {
    /// This connection in the session registry (`pobox who`, kick).
    handle: Handle<'r>,
    /// Messages sent by RETR (and TOP, if configured) this session. Only
    /// recorded (and, under EXPIRE 0, removed) if the session reaches
    /// UPDATE; dropped otherwise.
    retrieved: BTreeSet<usize>,
    /// The logged-in user's retention policy.
    policy: Policy,
    /// `None` only for the instant of a TLS upgrade.
    stream: Option<Stream>,
    session: ServerSession,
    splitter: LineSplitter,
    inbuf: Vec<u8>,
    /// Start of unconsumed input in `inbuf`.
    pos: usize,
    outbuf: Vec<u8>,
    /// The locked maildrop, from login until UPDATE or the end.
    mailbox: Option<Arc<Mutex<Box<dyn Mailbox>>>>,
    svc: Arc<Services>,
    peer: SocketAddr,
    closed: bool,
    stats: Stats,
    /// The driver-run SASL mechanism in progress, if any.
    /// Boxed: most sessions never use it, and the task carries its size.
    mech: Option<Box<Mech>>,
    /// Boxed for the same reason (the task's size): connection limits.
    slots: Box<Slots>,
    /// This session in the user's login history, once logged in (and the
    /// history is kept): its UPDATE line joins the login line by it.
    /// Boxed, like `mech`: it keeps the idle task small.
    history: Option<Box<(LoginHistory, SessionId)>>,
}

/// State of a driver-run SASL exchange between client messages.
#[allow(clippy::large_enum_variant)] // stored boxed (`Driver::mech`)
enum Mech {
    /// SCRAM, waiting for the client-final message.
    Scram(ScramServer),
    /// SCRAM proof verified and server-final sent; waiting for the client's
    /// empty acknowledgement (RFC 5034 §4).
    ScramDone(Authenticated),
    /// OAuth error challenge sent (RFC 7628 §3.2.2); the next message ends
    /// the exchange with -ERR.
    BearerFailed(String),
}

/// What a driver-run SASL step produced.
enum Step {
    Challenge(Vec<u8>),
    Done(Result<Authenticated, (String, LoginFailure)>),
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn temporary(detail: &str) -> LoginFailure {
    warn!(error = %detail, "user database unavailable");
    LoginFailure::Temporary("authentication temporarily unavailable".into())
}

/// A user name as the client sent it, made safe for a log line: valid names
/// are unchanged; anything else (spaces, control characters, `key=value`
/// look-alikes that could fool a log parser such as fail2ban) is quoted and
/// escaped, and cut to 64 characters.
fn log_safe(user: &str) -> String {
    if pobox_auth::valid_username(user) || user.is_empty() {
        return user.to_owned();
    }
    let cut: String = user.chars().take(64).collect();
    format!("{cut:?}")
}

impl Driver<'_> {
    async fn run(&mut self, mut shutdown: Shutdown, login_deadline: tokio::time::Instant) -> Result<End, ConnError> {
        self.run_actions().await?;
        loop {
            self.process_input().await?;
            self.flush().await?;
            if self.closed {
                let _ = self.stream_mut().shutdown().await;
                // Closed by the session: after the client's QUIT, or on its
                // own (too many failures or bad commands).
                return Ok(if self.stats.quit_sent { End::Quit } else { End::Error });
            }
            self.release_idle_buffers();
            // Before login, the idle timer is reset by every command, so
            // it alone would let a client that keeps talking (200 failed
            // AUTHs, or NOOPs) stay unauthenticated forever: the login
            // deadline bounds the phase as a whole. It is checked before
            // waiting, too, since a client that always has input ready
            // would otherwise never let a timer fire.
            let before_login = self.session.idle_class() == IdleClass::BeforeLogin;
            let left = login_deadline.saturating_duration_since(tokio::time::Instant::now());
            let (timeout, deadline_first) = if before_login {
                (left.min(self.svc.config.login_timeout), left <= self.svc.config.login_timeout)
            } else {
                (self.svc.config.session_timeout, false)
            };
            let stream = self.stream.as_mut().expect("stream present outside STLS");
            let inbuf = &mut self.inbuf;
            let event = if before_login && left.is_zero() {
                Event::LoginDeadline
            } else {
                tokio::select! {
                    read = tokio::time::timeout(timeout, read_input(stream, inbuf)) => match read {
                        Err(_) if deadline_first => Event::LoginDeadline,
                        Err(_) => Event::IdleTimeout,
                        Ok(Ok(0)) => Event::Eof,
                        Ok(Ok(_)) => Event::Data,
                        Ok(Err(e)) => return Err(e.into()),
                    },
                    () = shutdown.forced() => Event::Shutdown,
                    _ = self.handle.kicked.wait_for(|k| *k) => Event::Kicked,
                }
            };
            match event {
                Event::Data => {}
                Event::Eof => return Ok(End::Eof),
                // RFC 1939 §3: on the inactivity timer, close without a
                // response and without UPDATE.
                Event::IdleTimeout => {
                    debug!(peer = %self.peer, "idle timeout");
                    return Ok(End::Timeout);
                }
                Event::LoginDeadline => {
                    info!(peer = %self.peer, ip = %self.peer.ip(), "no login within the login deadline; closing");
                    Status::err("login took too long, closing connection").encode(&mut self.outbuf);
                    let _ = self.flush().await;
                    return Ok(End::Timeout);
                }
                Event::Kicked => {
                    info!(peer = %self.peer, user = %self.session.user().unwrap_or_default(), "session kicked by admin");
                    Status::err_code(RespCode::SysTemp, "session closed by the administrator, nothing was deleted")
                        .encode(&mut self.outbuf);
                    let _ = self.flush().await;
                    return Ok(End::Kicked);
                }
                Event::Shutdown => {
                    Status::err_code(RespCode::SysTemp, "server shutting down, nothing was deleted")
                        .encode(&mut self.outbuf);
                    let _ = self.flush().await;
                    return Ok(End::Shutdown);
                }
            }
        }
    }

    /// Before waiting for the client: drop consumed input and give back
    /// the buffers' memory, so that an idle session holds no I/O buffer at
    /// all (most logged-in sessions are idle most of the time; with 10,000
    /// of them, 8 KiB each was most of the server's memory). Allocating
    /// again per command costs less than the syscall that brings it.
    fn release_idle_buffers(&mut self) {
        if self.pos == self.inbuf.len() {
            self.inbuf = Vec::new();
            self.pos = 0;
        } else if self.pos > 0 {
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        if self.outbuf.is_empty() {
            self.outbuf = Vec::new();
        }
    }

    fn stream_mut(&mut self) -> &mut Stream {
        self.stream.as_mut().expect("stream present outside STLS")
    }

    /// Feeds every complete buffered line to the session, in order.
    async fn process_input(&mut self) -> Result<(), ConnError> {
        while !self.closed && self.session.wants_input() {
            match self.splitter.split(&self.inbuf[self.pos..]) {
                Split::NeedMoreData { consumed } => {
                    self.pos += consumed;
                    if consumed == 0 || self.pos == self.inbuf.len() {
                        break;
                    }
                }
                Split::Line { line, consumed } => {
                    let command = !self.session.in_sasl_exchange();
                    if command {
                        // Only the keyword: arguments may be passwords.
                        debug!(peer = %self.peer, cmd = %keyword(line), "command");
                        crate::metrics::pop3_command(line);
                    }
                    self.stats.quit_sent = command && is_quit(line);
                    self.session.handle_line(line);
                    self.pos += consumed;
                    self.run_actions().await?;
                }
                Split::TooLong { consumed, continued } => {
                    self.pos += consumed;
                    if continued {
                        self.session.handle_garbage();
                    } else {
                        self.session.handle_line_too_long();
                    }
                    self.run_actions().await?;
                }
            }
        }
        Ok(())
    }

    async fn run_actions(&mut self) -> Result<(), ConnError> {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(bytes) => {
                    self.outbuf.extend_from_slice(&bytes);
                    if self.outbuf.len() >= OUT_HIGH_WATER {
                        self.flush().await?;
                    }
                }
                // Each step below is boxed: a task is as big as the largest
                // future it can be suspended in, and these (TLS handshake,
                // SCRAM, streaming) are far bigger than the idle wait that
                // most sessions spend their life in.
                Action::Authenticate(Credentials::SaslStep { mechanism, response, first }) => {
                    Box::pin(self.sasl_step(mechanism, response, first)).await;
                }
                Action::Authenticate(credentials) => {
                    let result = Box::pin(self.login(credentials)).await;
                    self.session.handle_login(result);
                }
                Action::SendMessage { index, size, top_lines } => {
                    let (started, sent_before) = (Instant::now(), self.stats.retrieved);
                    Box::pin(self.send_message(index, size, top_lines)).await?;
                    if self.stats.retrieved > sent_before {
                        crate::metrics::retr(self.stats.retr_octets, started.elapsed());
                    }
                }
                Action::StartTls => Box::pin(self.start_tls()).await?,
                Action::Update(deleted) => {
                    let result = Box::pin(self.update(deleted)).await;
                    self.session.handle_update_result(result);
                }
                Action::Close => self.closed = true,
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.outbuf.is_empty() {
            let stream = self.stream.as_mut().expect("stream present outside STLS");
            stream.write_all(&self.outbuf).await?;
            stream.flush().await?;
            self.outbuf.clear();
        }
        Ok(())
    }

    async fn start_tls(&mut self) -> Result<(), ConnError> {
        self.flush().await?;
        // RFC 2595 §4 / CVE-2011-0411: anything the client pipelined after
        // STLS arrived in cleartext and must not be executed after the
        // handshake. Drop it, and start a fresh line splitter.
        self.inbuf.clear();
        self.pos = 0;
        self.splitter = LineSplitter::new(pobox_proto::MAX_COMMAND_LINE);
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            return Err(ConnError::Handshake(std::io::Error::other("STLS on a TLS stream")));
        };
        let tls = self.svc.tls.as_ref().expect("STLS is offered only with a certificate");
        match tokio::time::timeout(self.svc.config.login_timeout, tls.accept(tcp)).await {
            Ok(Ok(s)) => {
                self.stream = Some(Stream::Tls(Box::new(s)));
                self.handle.set_tls();
                crate::metrics::starttls(crate::Protocol::Pop3);
                self.session.handle_tls_established();
                self.mech = None;
                self.offer_mechanisms().await;
                Ok(())
            }
            Ok(Err(e)) => Err(ConnError::Handshake(e)),
            Err(_) => Err(ConnError::HandshakeTimeout),
        }
    }

    /// Verifies USER/PASS, PLAIN, LOGIN and APOP credentials, then opens the
    /// maildrop. See [`Driver::authenticate`] for the order of checks.
    async fn login(&mut self, credentials: Credentials) -> Result<LoginGrant, LoginFailure> {
        let user = credentials.user().to_string();
        let mechanism = credentials.mechanism();
        let started = Instant::now();
        match self.authenticate(credentials).await {
            Ok(proof) => self.open_maildrop(proof, mechanism, started).await,
            Err(failure) => Err(self.fail(&user, mechanism, failure).await),
        }
    }

    /// Password check: credential cache, then the brute-force throttle, then
    /// Argon2 (or whatever the scheme is) on the blocking pool.
    ///
    /// The order matters: a cache hit (only possible with the right
    /// password) skips the throttle, so an attacker hammering a user's name
    /// cannot slow that user's own client down; everything else waits for
    /// its turn per IP and per user ([`crate::throttle`]) and then pays a
    /// full verification, unknown users included.
    async fn authenticate(&mut self, credentials: Credentials) -> Result<Authenticated, LoginFailure> {
        let svc = self.svc.clone();
        let ip = self.peer.ip();
        if let Credentials::Password { user, password, .. } = &credentials {
            let (svc2, user2, pw) = (svc.clone(), user.clone(), Sensitive(password.0.clone()));
            let hit = tokio::task::spawn_blocking(move || {
                svc2.credcache.lookup(&svc2.users, &user2, &pw.0, Instant::now())
            })
            .await;
            match hit {
                Ok(Ok(Some(proof))) => {
                    svc.throttle.succeeded(ip, proof.user());
                    return Ok(proof);
                }
                Ok(Err(e)) => return Err(temporary(&e.to_string())),
                _ => {}
            }
        }
        let wait = svc.throttle.admit(ip, credentials.user(), Instant::now());
        if !wait.is_zero() {
            debug!(peer = %self.peer, wait_ms = wait.as_millis() as u64, "auth throttled");
            tokio::time::sleep(wait).await;
        }
        // Bound concurrent password verifications: argon2 is deliberately
        // expensive, and an attacker must not be able to fill the pool.
        let permit = svc.auth_slots.clone().acquire_owned().await;
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match &credentials {
                Credentials::Password { user, password, .. } => {
                    // Read the line's fingerprint *before* verifying, so a
                    // password change racing with us leaves a stale entry.
                    let fingerprint = svc.users.fingerprint(user);
                    let verified = svc.users.verify(user, &password.0);
                    if let (Ok(proof), Ok(Some(fp))) = (&verified, fingerprint) {
                        svc.credcache.insert(user, &password.0, fp, proof.clone(), Instant::now());
                    }
                    verified
                }
                Credentials::Apop { user, digest, timestamp } => {
                    svc.users.verify_apop(user, timestamp, digest)
                }
                Credentials::SaslStep { .. } => Err(AuthError::InvalidCredentials),
            }
        })
        .await
        .unwrap_or_else(|e| Err(AuthError::Temporary(format!("internal error: {e}"))));
        match result {
            Ok(proof) => {
                self.svc.throttle.succeeded(ip, proof.user());
                Ok(proof)
            }
            Err(AuthError::InvalidCredentials | AuthError::Unsupported(_)) => Err(LoginFailure::BadCredentials),
            Err(e) => Err(temporary(&e.to_string())),
        }
    }

    /// Logs a failed login (the line fail2ban's filter in contrib/ matches;
    /// keep its format), feeds the throttle, and waits `auth_failure_delay`
    /// on this session's own task (never blocking other sessions).
    async fn fail(&mut self, user: &str, mechanism: &'static str, failure: LoginFailure) -> LoginFailure {
        use crate::metrics::LoginResult;
        let result = match &failure {
            LoginFailure::BadCredentials => LoginResult::Failed,
            LoginFailure::InUse => LoginResult::InUse,
            LoginFailure::LoginDelay(_) => LoginResult::LoginDelay,
            LoginFailure::Temporary(_) => LoginResult::Temporary,
            LoginFailure::Permanent(_) => LoginResult::Permanent,
        };
        crate::metrics::login(mechanism, result, None);
        match &failure {
            LoginFailure::BadCredentials => {
                self.stats.auth_failures += 1;
                self.svc.throttle.failed(self.peer.ip(), user, Instant::now());
                let user = log_safe(user);
                warn!(peer = %self.peer, ip = %self.peer.ip(), %user, %mechanism,
                      "authentication failed");
                tokio::time::sleep(self.svc.config.auth_failure_delay).await;
            }
            LoginFailure::InUse => {
                self.stats.refused += 1;
                info!(peer = %self.peer, user = %log_safe(user), "maildrop in use");
            }
            _ => self.stats.refused += 1,
        }
        failure
    }

    /// After authentication: LOGIN-DELAY, retention, lock and snapshot.
    async fn open_maildrop(
        &mut self,
        authenticated: Authenticated,
        mechanism: &'static str,
        started: Instant,
    ) -> Result<LoginGrant, LoginFailure> {
        // Bearer tokens are validated by `oauth`, not by a stored secret:
        // the mechanism says which credential it was.
        let oauth = matches!(mechanism, OAUTHBEARER | XOAUTH2);
        let credential = if oauth { "oauth".to_owned() } else { authenticated.credential().label().to_owned() };
        if self.svc.config.require_app_passwords && !oauth && *authenticated.credential() == Credential::Password {
            let user = authenticated.user().to_owned();
            info!(peer = %self.peer, user = %user, %mechanism,
                  "main password refused: require_app_passwords is set, the device needs an app password");
            return Err(self.fail(&user, mechanism, LoginFailure::BadCredentials).await);
        }
        if let Err(failure) = self.claim_user_ip_slot(authenticated.user()) {
            let user = authenticated.user().to_owned();
            return Err(self.fail(&user, mechanism, failure).await);
        }
        let svc = self.svc.clone();
        let login = Login {
            time: unix_now(),
            credential: credential.clone(),
            mechanism: mechanism.to_owned(),
            client: self.peer.ip().to_string(),
        };
        let result = tokio::task::spawn_blocking(move || {
            let user = authenticated.user();
            let policy = svc.store.policy(user);
            let delay = std::time::Duration::from_secs(u64::from(policy.login_delay_secs));
            if let Err(d) = svc.sessions.check_login_delay(user, delay, Instant::now()) {
                return Err(LoginFailure::LoginDelay(d.as_secs() as u32));
            }
            // Login-time retention is the store's: open expires under the
            // lock it takes, and waits briefly for maintenance holding it.
            let opened = svc.store.open(user);
            if let Ok(mailbox) = &opened {
                let expired = mailbox.expired_at_open();
                crate::metrics::expiry(expired.expired.len(), expired.purged);
            }
            match opened {
                Ok(mailbox) => {
                    // Under the maildrop lock: one writer per history file.
                    let history = svc.config.login_history_dir.as_ref().and_then(|dir| {
                        let history = LoginHistory::new(dir);
                        match history.record_login(user, &login) {
                            Ok(id) => Some(Box::new((history, id))),
                            Err(e) => {
                                warn!(%user, error = %e, "cannot record the login in the login history");
                                None
                            }
                        }
                    });
                    Ok((user.to_string(), mailbox, policy, history))
                }
                Err(StoreError::InUse) => Err(LoginFailure::InUse),
                Err(e) => {
                    warn!(user = %authenticated.user(), error = %e, "cannot open maildrop");
                    Err(LoginFailure::Temporary("cannot open maildrop, try again later".into()))
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(LoginFailure::Temporary(format!("internal error: {e}"))));

        match result {
            Ok((user, mailbox, policy, history)) => {
                self.history = history;
                let messages = mailbox
                    .messages()
                    .iter()
                    .map(|m| MessageMeta { size: m.size, uidl: m.uidl.as_str().to_string() })
                    .collect();
                let tls = self.stream.as_ref().is_some_and(Stream::is_tls);
                info!(peer = %self.peer, %user, %mechanism, %credential, tls,
                      messages = mailbox.messages().len(), "login");
                self.stats.user = Some(user.clone());
                self.stats.mechanism = Some(mechanism);
                self.stats.messages = mailbox.messages().len();
                self.stats.uidl_hash = Some(uidl_hash(mailbox.messages().iter().map(|m| m.uidl.as_str())));
                crate::metrics::login(mechanism, crate::metrics::LoginResult::Ok, Some(started.elapsed()));
                self.mailbox = Some(Arc::new(Mutex::new(mailbox)));
                self.handle.set_user(&user);
                self.policy = policy;
                Ok(LoginGrant {
                    user,
                    messages,
                    expire: to_expire(policy.advertised_expire()),
                    login_delay: policy.login_delay_secs,
                })
            }
            Err(failure) => Err(self.fail("", mechanism, failure).await),
        }
    }

    /// The SASL mechanisms the driver can run on this connection now.
    async fn offer_mechanisms(&mut self) {
        let svc = self.svc.clone();
        // SCRAM secrets derive from the main password, which
        // require_app_passwords refuses: offering it would only fail later.
        let scram = !self.svc.config.require_app_passwords
            && tokio::task::spawn_blocking(move || svc.users.has_scram().unwrap_or(false))
                .await
                .unwrap_or(false);
        let mut list = Vec::new();
        if scram {
            list.push(SCRAM_SHA_256);
            if self.bindings().any() {
                list.push(SCRAM_SHA_256_PLUS);
            }
        }
        if self.svc.oauth.is_some() {
            list.extend([OAUTHBEARER, XOAUTH2]);
        }
        self.session.set_sasl_mechanisms(&list);
    }

    /// Channel bindings of the TLS session (empty on cleartext).
    fn bindings(&self) -> ChannelBindings {
        match (&self.stream, &self.svc.tls) {
            (Some(Stream::Tls(s)), Some(tls)) => crate::tls::channel_bindings(s.get_ref().1, &tls.store),
            _ => ChannelBindings::default(),
        }
    }

    /// One message of a driver-run SASL mechanism (SCRAM, OAUTHBEARER,
    /// XOAUTH2): answers with a challenge or ends the exchange.
    async fn sasl_step(&mut self, mechanism: &'static str, response: Sensitive, first: bool) {
        // The login latency of a SASL exchange: its last step (for SCRAM,
        // the proof was checked in the step before; client round trips
        // are not the server's latency).
        let started = Instant::now();
        if first {
            self.mech = None;
        }
        let outcome = match mechanism {
            SCRAM_SHA_256 | SCRAM_SHA_256_PLUS => self.scram_step(mechanism, response).await,
            _ => self.oauth_step(mechanism, response).await,
        };
        match outcome {
            Step::Challenge(c) => self.session.handle_sasl_challenge(&c),
            Step::Done(Ok(proof)) => {
                self.svc.throttle.succeeded(self.peer.ip(), proof.user());
                let result = self.open_maildrop(proof, mechanism, started).await;
                self.session.handle_login(result);
            }
            Step::Done(Err((user, failure))) => {
                self.mech = None;
                let failure = self.fail(&user, mechanism, failure).await;
                self.session.handle_login(Err(failure));
            }
        }
    }

    async fn scram_step(&mut self, mechanism: &'static str, response: Sensitive) -> Step {
        let mut server = match self.mech.take().map(|m| *m) {
            None => ScramServer::new(mechanism == SCRAM_SHA_256_PLUS, self.bindings()),
            Some(Mech::Scram(server)) => server,
            // RFC 5034 §4: the client acknowledges the server-final
            // challenge with an empty response; then, and only then, +OK.
            Some(Mech::ScramDone(proof)) if response.0.is_empty() => return Step::Done(Ok(proof)),
            Some(Mech::ScramDone(proof)) => {
                return Step::Done(Err((proof.user().to_owned(), LoginFailure::BadCredentials)));
            }
            Some(Mech::BearerFailed(user)) => return Step::Done(Err((user, LoginFailure::BadCredentials))),
        };
        // The proof step is the password check: throttle it like one.
        if let Some(user) = server.user() {
            let wait = self.svc.throttle.admit(self.peer.ip(), user, Instant::now());
            tokio::time::sleep(wait).await;
        }
        let svc = self.svc.clone();
        let (server, result) = tokio::task::spawn_blocking(move || {
            let r = server.step(&svc.users, &response.0);
            (server, r)
        })
        .await
        .expect("SCRAM step does not panic");
        let user = server.user().unwrap_or_default().to_owned();
        match result {
            Ok(ScramStep::Challenge(c)) => {
                self.mech = Some(Box::new(Mech::Scram(server)));
                Step::Challenge(c)
            }
            Ok(ScramStep::Success { authenticated, server_final }) => {
                self.mech = Some(Box::new(Mech::ScramDone(authenticated)));
                Step::Challenge(server_final)
            }
            Err(ScramError::Temporary(e)) => Step::Done(Err((user, temporary(&e)))),
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "SCRAM exchange failed");
                Step::Done(Err((user, LoginFailure::BadCredentials)))
            }
        }
    }

    async fn oauth_step(&mut self, mechanism: &'static str, response: Sensitive) -> Step {
        if let Some(Mech::BearerFailed(user)) = self.mech.take().map(|m| *m) {
            // RFC 7628 §3.2.3: after the error challenge the client sends
            // %x01 (XOAUTH2 clients send an empty line); either way: -ERR.
            return Step::Done(Err((user, LoginFailure::BadCredentials)));
        }
        let parsed = if mechanism == OAUTHBEARER {
            oauth::parse_oauthbearer(&response.0)
        } else {
            oauth::parse_xoauth2(&response.0)
        };
        let bearer = match parsed {
            Ok(b) => b,
            Err(reason) => {
                debug!(peer = %self.peer, %reason, "malformed bearer response");
                return Step::Done(Err((String::new(), LoginFailure::BadCredentials)));
            }
        };
        let user = bearer.user.clone().unwrap_or_default();
        let wait = self.svc.throttle.admit(self.peer.ip(), &user, Instant::now());
        tokio::time::sleep(wait).await;
        let svc = self.svc.clone();
        let result = tokio::task::spawn_blocking(move || match &svc.oauth {
            Some(v) => v.authenticate(&svc.users, bearer.user.as_deref(), &bearer.token, SystemTime::now()),
            None => Err(oauth::OAuthError::User),
        })
        .await
        .unwrap_or(Err(oauth::OAuthError::User));
        match result {
            Ok(proof) => Step::Done(Ok(proof)),
            Err(e) if e.is_temporary() => {
                warn!(error = %e, "OAuth validation unavailable");
                Step::Done(Err((user, temporary("authentication temporarily unavailable"))))
            }
            Err(e) => {
                // A valid token for no known user is most likely a missing
                // oauth_sub= mapping (or an unverified email): the admin
                // needs to see it without debug logging.
                if matches!(e, oauth::OAuthError::UnmappedSubject(_) | oauth::OAuthError::EmailNotVerified) {
                    info!(peer = %self.peer, error = %e, "bearer token refused");
                } else {
                    debug!(peer = %self.peer, error = %e, "bearer token refused");
                }
                // RFC 7628 §3.2.2: the failure is a JSON challenge; the
                // client answers it, and only then gets -ERR.
                self.mech = Some(Box::new(Mech::BearerFailed(user)));
                Step::Challenge(oauth::error_challenge())
            }
        }
    }

    async fn send_message(
        &mut self,
        index: usize,
        size: u64,
        top_lines: Option<u64>,
    ) -> Result<(), ConnError> {
        let mailbox = self.mailbox.clone().expect("TRANSACTION has a mailbox");
        if size <= WHOLE_MESSAGE_MAX {
            // A hot message (name and data in the kernel's caches) is read
            // right here, without a thread hand-off; anything that could
            // wait for a disk goes to the blocking pool.
            let cached = mailbox.lock().unwrap_or_else(|p| p.into_inner()).read_if_cached(index, size);
            let whole = match cached {
                Some(stored) => encode_whole(&stored, size, top_lines),
                None => {
                    let mb = mailbox.clone();
                    tokio::task::spawn_blocking(move || read_whole(&mb, index, size, top_lines))
                        .await
                        .unwrap_or_else(|e| Whole::Failed(format!("reader task: {e}")))
                }
            };
            match whole {
                Whole::Encoded { reply, unstuffed } => {
                    self.stats.bytes += reply.len() as u64;
                    if self.outbuf.is_empty() {
                        self.outbuf = reply;
                    } else {
                        self.outbuf.extend_from_slice(&reply);
                    }
                    if self.outbuf.len() >= OUT_HIGH_WATER {
                        self.flush().await?;
                    }
                    self.message_sent(index, size, top_lines, unstuffed);
                    return Ok(());
                }
                Whole::Failed(reason) => {
                    warn!(peer = %self.peer, index, %reason, "cannot read message");
                    Status::err_code(RespCode::SysTemp, "message cannot be read now").encode(&mut self.outbuf);
                    return Ok(());
                }
                // The file is larger than its listed size: stream it.
                Whole::Larger => {}
            }
        }
        let (tx, mut rx) = mpsc::channel::<Chunk>(4);
        // The file is read on the blocking pool and encoded there; the async
        // side only writes. A bounded channel keeps memory constant for any
        // message size.
        let reader = tokio::task::spawn_blocking(move || read_and_encode(&mailbox, index, top_lines, &tx));
        let result = self.stream_message(&mut rx, index, size, top_lines).await;
        // The reader holds a handle on the maildrop until it returns; wait
        // for it, so that a QUIT right behind this RETR finds the maildrop
        // free for UPDATE. Dropping the receiver first unblocks a reader
        // that is waiting on a full channel after a write error.
        drop(rx);
        let _ = reader.await;
        result
    }

    async fn stream_message(
        &mut self,
        rx: &mut mpsc::Receiver<Chunk>,
        index: usize,
        size: u64,
        top_lines: Option<u64>,
    ) -> Result<(), ConnError> {
        match rx.recv().await {
            Some(Chunk::Opened) => {
                self.outbuf.extend_from_slice(retr_status_line(size, top_lines).as_bytes());
            }
            Some(Chunk::Failed(reason)) | Some(Chunk::Broken(reason)) => {
                warn!(peer = %self.peer, index, %reason, "cannot open message");
                let mut out = Vec::new();
                Status::err_code(RespCode::SysTemp, "message cannot be read now").encode(&mut out);
                self.outbuf.extend_from_slice(&out);
                return Ok(());
            }
            _ => return Err(ConnError::MessageBroken(index, "reader vanished".into())),
        }
        loop {
            match rx.recv().await {
                Some(Chunk::Data(bytes)) => {
                    self.stats.bytes += bytes.len() as u64;
                    if self.outbuf.is_empty() && bytes.len() >= OUT_HIGH_WATER {
                        self.stream_mut().write_all(&bytes).await?;
                    } else {
                        self.outbuf.extend_from_slice(&bytes);
                        if self.outbuf.len() >= OUT_HIGH_WATER {
                            self.flush().await?;
                        }
                    }
                }
                Some(Chunk::End { unstuffed }) => {
                    self.message_sent(index, size, top_lines, unstuffed);
                    return Ok(());
                }
                // After +OK there is no way to signal an error in-band: the
                // only honest thing is to drop the connection (no UPDATE).
                Some(Chunk::Broken(reason)) => return Err(ConnError::MessageBroken(index, reason)),
                Some(Chunk::Opened) | Some(Chunk::Failed(_)) | None => {
                    return Err(ConnError::MessageBroken(index, "reader vanished".into()));
                }
            }
        }
    }

    /// Bookkeeping once a RETR/TOP reply is complete in the output.
    fn message_sent(&mut self, index: usize, size: u64, top_lines: Option<u64>, unstuffed: u64) {
        if top_lines.is_none() || self.svc.config.top_counts_as_retrieval {
            self.retrieved.insert(index);
        }
        if top_lines.is_none() {
            self.stats.retrieved += 1;
            self.stats.retr_octets = unstuffed;
            if unstuffed != size {
                // LIST promised `size`; the file changed under us or
                // the size in its name is wrong. Say so loudly.
                warn!(peer = %self.peer, index, announced = size, sent = unstuffed,
                      "message size differs from the size listed");
            }
        }
    }

    async fn update(&mut self, deleted: Vec<usize>) -> UpdateResult {
        let Some(mailbox) = self.mailbox.take() else {
            return UpdateResult::Failed("no maildrop".into());
        };
        let Ok(mailbox) = Arc::try_unwrap(mailbox) else {
            return UpdateResult::Failed("maildrop busy".into());
        };
        let mailbox = mailbox.into_inner().unwrap_or_else(|p| p.into_inner());
        let user = mailbox.user().to_string();
        let requested = deleted.len();
        let retrieved: Vec<usize> = std::mem::take(&mut self.retrieved).into_iter().collect();
        let history = self.history.take();
        let result = tokio::task::spawn_blocking(move || {
            // The store applies EXPIRE 0 (RFC 2449 §6.7); this is what it
            // will remove, for the history.
            let remove = mailbox.removals(&deleted, &retrieved);
            let uidls = |indices: &[usize]| -> Vec<String> {
                indices
                    .iter()
                    .filter_map(|&i| mailbox.messages().get(i).map(|m| m.uidl.as_str().to_owned()))
                    .collect()
            };
            // Before the commit, which releases the maildrop lock: the
            // lock keeps the history file to one writer. What is recorded
            // as deleted is what the session removes at this UPDATE; a
            // removal that then fails leaves the message listed, so
            // `pobox mailbox show` still shows it in the maildrop.
            if let Some((history, id)) = history.as_deref() {
                let update = Update { time: unix_now(), retrieved: uidls(&retrieved), deleted: uidls(&remove) };
                if let Err(e) = history.record_update(mailbox.user(), id, &update) {
                    warn!(user = %mailbox.user(), error = %e, "cannot record the session in the login history");
                }
            }
            mailbox.commit(&deleted, &retrieved)
        })
        .await
        .map_err(|e| e.to_string());
        if let Ok(Ok(report)) = &result {
            crate::metrics::pop3_deleted(report.removed);
        }
        let outcome = match result {
            // What really happened (issue 17, finding 6): messages moved
            // to the restore area are removed, whether or not the
            // retention log could record it.
            Ok(Ok(report)) if report.failed == 0 && report.restorable > 0 => {
                UpdateResult::RemovedRestorable { removed: report.removed, restorable: report.restorable }
            }
            Ok(Ok(report)) if report.failed == 0 => UpdateResult::Removed(report.removed),
            Ok(Ok(report)) => UpdateResult::Partial { removed: report.removed, failed: report.failed },
            Ok(Err(e)) => {
                warn!(%user, error = %e, "update failed");
                UpdateResult::Failed("storage error".into())
            }
            Err(e) => UpdateResult::Failed(e),
        };
        self.stats.deleted = match &outcome {
            UpdateResult::Removed(n) => *n,
            UpdateResult::RemovedRestorable { removed, .. } | UpdateResult::Partial { removed, .. } => *removed,
            _ => 0,
        };
        debug!(peer = %self.peer, %user, requested, deleted = self.stats.deleted, "update done");
        outcome
    }

    /// After the credentials are proved, before the maildrop: the
    /// connection leaves the per-IP count of unauthenticated connections
    /// and takes a place under `max_connections_per_user_ip`. The only place
    /// a login is refused for that limit.
    fn claim_user_ip_slot(&mut self, user: &str) -> Result<(), LoginFailure> {
        let max = self.svc.config.max_connections_per_user_ip;
        // A second login on the same connection (after [IN-USE]) gives
        // back the first one's place before taking its own.
        self.slots.user_ip = None;
        match self.svc.per_user_ip.try_acquire(user, self.peer.ip(), max) {
            Some(slot) => {
                self.slots.user_ip = Some(slot);
                self.slots.ip = None;
                Ok(())
            }
            None => {
                crate::metrics::refused(self.slots.listener, crate::metrics::Refusal::PerUserIp);
                warn!(peer = %self.peer, ip = %self.peer.ip(), %user, limit = max,
                      "login refused: max_connections_per_user_ip reached for this user and address");
                Err(LoginFailure::Temporary(format!(
                    "too many connections of this user from your address (limit {max}), try again later"
                )))
            }
        }
    }

    /// The one line logged when a connection ends, QUIT or not: what the
    /// session did, for the admin and for log shippers. Connections that
    /// never logged in get a shorter line: at info when they tried (so a
    /// refused or failing client is visible without debug logging), at
    /// debug when they did not (port scanners and health checks would
    /// otherwise fill the log on an Internet-facing server).
    fn log_summary(&self, end: End, duration: Duration) {
        // A bool like the login line's `tls` (a JSON boolean for shippers).
        let tls = self.stream.as_ref().is_some_and(Stream::is_tls);
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let s = &self.stats;
        if let Some(user) = &s.user {
            let uidl_hash = s.uidl_hash.map(hex::encode).unwrap_or_default();
            let mechanism = s.mechanism.unwrap_or_default();
            // Only UPDATE (QUIT after login) removes or records anything.
            let what = if end == End::Quit {
                "pop3 session ended"
            } else {
                "pop3 session ended without QUIT; nothing deleted"
            };
            info!(peer = %self.peer, %user, tls, %mechanism, messages = s.messages, %uidl_hash,
                  retrieved = s.retrieved, deleted = s.deleted, bytes = s.bytes, duration_ms,
                  end = %end.as_str(), "{what}");
        } else if s.auth_failures > 0 || s.refused > 0 {
            info!(peer = %self.peer, tls, end = %end.as_str(), auth_failures = s.auth_failures,
                  refused = s.refused, duration_ms, "pop3 connection ended without login");
        } else {
            debug!(peer = %self.peer, tls, end = %end.as_str(), auth_failures = 0, refused = 0,
                   duration_ms, "pop3 connection ended without login");
        }
    }
}

/// Bytes read per wakeup, at most. Commands are short; a pipelining
/// client's burst is read in several steps.
const READ_CHUNK: usize = 4096;

/// Reads what the client sent into `inbuf`; Ok(0) at end of stream.
///
/// On plain TCP it waits for readiness *before* allocating, so an idle
/// session holds no buffer while it waits. rustls buffers internally
/// anyway, so TLS reads straight into `inbuf`.
async fn read_input(stream: &mut Stream, inbuf: &mut Vec<u8>) -> std::io::Result<usize> {
    match stream {
        Stream::Plain(tcp) => loop {
            tcp.readable().await?;
            inbuf.reserve(READ_CHUNK);
            match tcp.try_read_buf(inbuf) {
                // Readiness was stale (it stays set until a read finds
                // nothing): give the buffer back before waiting again.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if inbuf.is_empty() {
                        *inbuf = Vec::new();
                    }
                }
                other => return other,
            }
        },
        Stream::Tls(_) => {
            inbuf.reserve(READ_CHUNK);
            stream.read_buf(inbuf).await
        }
    }
}

/// What woke the connection up.
enum Event {
    Data,
    Eof,
    IdleTimeout,
    /// Still not logged in at the login deadline.
    LoginDeadline,
    Shutdown,
    Kicked,
}

/// What the blocking reader sends to the connection.
enum Chunk {
    Opened,
    Data(Vec<u8>),
    End { unstuffed: u64 },
    /// Could not open: the session continues with `-ERR [SYS/TEMP]`.
    Failed(String),
    /// Failed mid-message: the connection must be dropped.
    Broken(String),
}

/// Messages listed at up to this many octets are read and encoded in one
/// call on the blocking pool and leave in one buffer: one hand-off per RETR
/// instead of a channel round trip per chunk (with one client doing RETR
/// after RETR, those wakeups were a large part of the server's time).
/// Larger ones stream through [`read_and_encode`] in constant memory.
const WHOLE_MESSAGE_MAX: u64 = 256 * 1024;

/// A whole RETR/TOP reply, or why there is none.
enum Whole {
    /// Status line, dot-stuffed body and terminator.
    Encoded { reply: Vec<u8>, unstuffed: u64 },
    /// Could not be opened or read: nothing was sent, the session goes on
    /// with `-ERR [SYS/TEMP]`.
    Failed(String),
    /// The file holds more than its listed size: use the streaming path.
    Larger,
}

fn read_whole(mailbox: &Mutex<Box<dyn Mailbox>>, index: usize, size: u64, top_lines: Option<u64>) -> Whole {
    let reader = mailbox.lock().unwrap_or_else(|p| p.into_inner()).open_message(index);
    let reader = match reader {
        Ok(r) => r,
        Err(e) => return Whole::Failed(e.to_string()),
    };
    // Stored bytes never exceed the wire size (CRLF only adds), so a file
    // longer than `size` has changed: read one byte more to notice.
    let mut stored = Vec::with_capacity(size as usize);
    if let Err(e) = std::io::Read::read_to_end(&mut std::io::Read::take(reader, size + 1), &mut stored) {
        return Whole::Failed(e.to_string());
    }
    encode_whole(&stored, size, top_lines)
}

/// The RETR/TOP reply for a message's stored bytes read whole.
fn encode_whole(stored: &[u8], size: u64, top_lines: Option<u64>) -> Whole {
    if stored.len() as u64 > size {
        return Whole::Larger;
    }
    let mut encoder = match top_lines {
        Some(n) => WireEncoder::top(n),
        None => WireEncoder::new(),
    };
    let status = retr_status_line(size, top_lines);
    let mut reply = Vec::with_capacity(status.len() + stored.len() + stored.len() / 16 + 16);
    reply.extend_from_slice(status.as_bytes());
    encoder.encode(stored, &mut reply);
    encoder.finish(&mut reply);
    Whole::Encoded { reply, unstuffed: encoder.unstuffed_octets() }
}

fn read_and_encode(
    mailbox: &Mutex<Box<dyn Mailbox>>,
    index: usize,
    top_lines: Option<u64>,
    tx: &mpsc::Sender<Chunk>,
) {
    let reader = mailbox.lock().unwrap_or_else(|p| p.into_inner()).open_message(index);
    let mut reader = match reader {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Chunk::Failed(e.to_string()));
            return;
        }
    };
    if tx.blocking_send(Chunk::Opened).is_err() {
        return;
    }
    let mut encoder = match top_lines {
        Some(n) => WireEncoder::top(n),
        None => WireEncoder::new(),
    };
    let mut buf = vec![0u8; FILE_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Chunk::Broken(e.to_string()));
                return;
            }
        };
        let mut out = Vec::with_capacity(n + n / 16 + 8);
        encoder.encode(&buf[..n], &mut out);
        if !out.is_empty() && tx.blocking_send(Chunk::Data(out)).is_err() {
            return;
        }
        if encoder.is_done() {
            break;
        }
    }
    let mut out = Vec::with_capacity(8);
    encoder.finish(&mut out);
    let unstuffed = encoder.unstuffed_octets();
    if tx.blocking_send(Chunk::Data(out)).is_ok() {
        let _ = tx.blocking_send(Chunk::End { unstuffed });
    }
}

/// True for a QUIT command line (any case, no argument).
fn is_quit(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n")).unwrap_or(line);
    line.eq_ignore_ascii_case(b"QUIT")
}

/// The command keyword of a line, for logs; never its arguments.
fn keyword(line: &[u8]) -> String {
    let kw = line.split(|&b| b == b' ').next().unwrap_or_default();
    String::from_utf8_lossy(&kw[..kw.len().min(8)]).to_ascii_uppercase()
}

/// RFC 1939 §7: a timestamp in msg-id form, different on every greeting.
fn apop_timestamp(hostname: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let nonce: u64 = rand::random();
    format!("<{}.{nanos}.{nonce:016x}@{hostname}>", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's memory is the size of its future, held for the whole
    /// connection: with 10,000 idle sessions every KiB here is 10 MiB.
    /// Before the rarely-taken steps were boxed (and POP3 got its own
    /// spawn) a POP3 task was 10,896 bytes; it is 1,776 now. This fails
    /// when a change makes it grow noticeably again; box the new big step.
    #[tokio::test]
    async fn an_idle_session_task_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let users = pobox_auth::UserDb::open(dir.path().join("users"));
        let location =
            pobox_store::MailLocation::new(format!("{}/mail/{{user}}", dir.path().display())).unwrap();
        let store = pobox_store::MaildirStore::new(location);
        let svc = Arc::new(Services::new(crate::config::Config::default(), Arc::new(users), Arc::new(store), None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let (_trigger, shutdown) = crate::shutdown::channel();
        let task = serve(tcp, peer, false, svc, shutdown, None);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2560, "the POP3 connection future is {size} bytes");
        drop((task, client));
    }
}
