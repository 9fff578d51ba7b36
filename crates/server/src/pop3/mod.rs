//! The POP3 connection driver: runs one [`ServerSession`] over a socket,
//! doing the I/O, authentication and storage calls the session asks for.
//!
//! All protocol decisions and every reply text live in
//! `pobox_proto::pop3::server`; this module only moves bytes and calls
//! services. It is the driver loop (read, feed the session, run its
//! actions, write, UPDATE); the login orchestration is in [`login`] and the
//! RETR/TOP paths in [`retr`]. Storage and password verification
//! are blocking work and run on tokio's blocking pool, so a slow disk or an
//! argon2 verification never stalls other sessions.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pobox_proto::line::{LineSplitter, Split};
use pobox_proto::pop3::server::{
    Action, Credentials, DriverReply, Expire, IdleClass, ServerSession, SessionConfig, UpdateResult,
};
use pobox_store::history::{LoginHistory, SessionId, Update};
use pobox_store::retention::{Days, Policy};
use pobox_store::Mailbox;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::Services;
use crate::conn::Stream;
use crate::sessions::Handle;
use crate::shutdown::Shutdown;
use crate::throttle::{IpSlot, UserIpSlot};

mod login;
mod retr;

/// The log target of every POP3 driver line, whichever module writes it:
/// log lines are an interface (the fail2ban filter in `contrib/fail2ban`
/// matches `pobox_server::pop3: authentication failed`), so splitting the
/// driver into modules must not rename them.
const LOG_TARGET: &str = "pobox_server::pop3";

use login::{Mech, apop_timestamp};

/// Flush the output buffer once it holds this much, even mid-pipeline.
const OUT_HIGH_WATER: usize = 64 * 1024;

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
    let listener = if implicit_tls { crate::Protocol::Pop3s } else { crate::Protocol::Pop3 };
    drive(stream, peer, listener, svc, shutdown, ip_slot, started, login_deadline).await;
}

/// Serves a POP3 session over an in-memory stream, from the greeting to
/// the end (see [`crate::testkit::pop3_session`]).
#[cfg(feature = "testkit")]
pub(crate) async fn serve_memory(
    stream: tokio::io::DuplexStream,
    peer: SocketAddr,
    svc: Arc<Services>,
    shutdown: Shutdown,
) {
    let login_deadline = tokio::time::Instant::now() + svc.config.login_deadline;
    drive(Stream::Memory(stream), peer, crate::Protocol::Pop3, svc, shutdown, None, Instant::now(), login_deadline)
        .await;
}

/// Runs one session over an established stream (after any implicit TLS
/// handshake): greeting, AUTHORIZATION, TRANSACTION, UPDATE, and the
/// release of the maildrop. `listener` is the protocol it came in on.
#[allow(clippy::too_many_arguments)] // one call per transport, each naming them all
async fn drive(
    stream: Stream,
    peer: SocketAddr,
    listener: crate::Protocol,
    svc: Arc<Services>,
    shutdown: Shutdown,
    ip_slot: Option<IpSlot>,
    started: Instant,
    login_deadline: tokio::time::Instant,
) {
    let secure = stream.is_tls();
    // The store's retention policies, the only copy (CAPA is derived from them).
    let retention = svc.store.retention();
    let (expire, expire_per_user) = retention.advertised_expire();
    let login_delay = retention.advertised_login_delay();
    let config = SessionConfig {
        greeting: "pobox POP3 server ready".into(),
        secure,
        stls_available: stream.can_start_tls() && svc.tls.is_some(),
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
            listener,
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

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
                    DriverReply::LoginTimedOut.encode(&mut self.outbuf);
                    let _ = self.flush().await;
                    return Ok(End::Timeout);
                }
                Event::Kicked => {
                    info!(peer = %self.peer, user = %self.session.user().unwrap_or_default(), "session kicked by admin");
                    DriverReply::Kicked.encode(&mut self.outbuf);
                    let _ = self.flush().await;
                    return Ok(End::Kicked);
                }
                Event::Shutdown => {
                    DriverReply::ShuttingDown.encode(&mut self.outbuf);
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
        #[cfg(feature = "testkit")]
        Stream::Memory(_) => {
            inbuf.reserve(READ_CHUNK);
            stream.read_buf(inbuf).await
        }
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
