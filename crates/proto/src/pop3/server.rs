//! The POP3 server session as a pure state machine.
//!
//! # Calling order (the async driver in `pobox-server` is the only caller)
//! 1. [`ServerSession::new`], then send what [`ServerSession::poll_action`]
//!    yields (the greeting).
//! 2. While [`ServerSession::wants_input`] is true, split input into lines
//!    and hand each to [`ServerSession::handle_line`] (or
//!    [`ServerSession::handle_line_too_long`]). After each line, drain
//!    [`ServerSession::poll_action`] until it returns `None`, performing each
//!    action in order:
//!    - [`Action::Send`]: write the bytes (they may be batched until the
//!      input buffer holds no complete line, which is how pipelined commands
//!      get one write for many replies);
//!    - [`Action::Authenticate`]: verify the credentials and, on success, lock
//!      and snapshot the maildrop, then call [`ServerSession::handle_login`].
//!      For [`Credentials::SaslStep`] (SCRAM, OAUTHBEARER, XOAUTH2: the
//!      mechanisms whose logic needs secrets or crypto and so lives in the
//!      driver and `pobox-auth`), the driver may instead answer with
//!      [`ServerSession::handle_sasl_challenge`] to send a `+ ` challenge and
//!      receive the client's next message as another `SaslStep`;
//!    - [`Action::SendMessage`]: write `+OK`, then the message through
//!      [`crate::dot::WireEncoder`];
//!    - [`Action::StartTls`]: flush, **discard all buffered input**, run the
//!      TLS handshake, then call [`ServerSession::handle_tls_established`];
//!    - [`Action::Update`]: remove the given messages and release the lock,
//!      then call [`ServerSession::handle_update_result`];
//!    - [`Action::Close`]: flush and close the connection.
//! 3. On a dropped connection or an idle timeout the driver simply drops the
//!    session: nothing is ever deleted without QUIT (RFC 1939 §6).
//!
//! While an `Authenticate` or `Update` is outstanding, `wants_input` is
//! false: pipelined commands wait in the driver's buffer and are answered in
//! order once the result is in.
//!
//! Phases are enum variants that own their data; the TRANSACTION phase can
//! only be entered through `handle_login` with a maildrop, so no command can
//! reach a maildrop before authentication.

use std::collections::VecDeque;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::command::{Command, CommandError, Secret};
use super::maildrop::{Maildrop, MessageMeta};
use super::response::{RespCode, Status};

/// After this many error replies the session is closed (RFC 1939 does not
/// say; Dovecot uses 20). Every `-ERR` the session sends counts, in either
/// state and for the whole connection: unknown or malformed commands,
/// commands in the wrong state, failed SASL exchanges (bad base64, a
/// malformed PLAIN response, a cancel), refused logins. Protects against a
/// peer that is not speaking POP3 at all (an HTTP client, a scanner) and one
/// that only wants replies (probing, holding a connection open). A success
/// does not reset the count: otherwise a `CAPA` between failures would.
pub const MAX_BAD_COMMANDS: u32 = 20;

/// After this many failed logins on one connection the session is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// RFC 7677 SCRAM-SHA-256.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// RFC 7677 SCRAM-SHA-256-PLUS (with TLS channel binding).
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// RFC 7628 OAUTHBEARER.
pub const OAUTHBEARER: &str = "OAUTHBEARER";
/// Google's/Microsoft's XOAUTH2.
pub const XOAUTH2: &str = "XOAUTH2";

/// SASL mechanisms the driver runs (see [`Credentials::SaslStep`]), in the
/// order CAPA lists them.
pub const DRIVER_MECHANISMS: [&str; 4] = [SCRAM_SHA_256_PLUS, SCRAM_SHA_256, OAUTHBEARER, XOAUTH2];

/// Mechanisms that send a replayable secret (a bearer token) and so are
/// only allowed where cleartext passwords are (RFC 7628 §5: TLS required).
fn mechanism_needs_protection(mechanism: &str) -> bool {
    matches!(mechanism, OAUTHBEARER | XOAUTH2)
}

/// Fixed, per-connection facts the session needs. Built by the driver.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The greeting text after `+OK`.
    pub greeting: String,
    /// The connection is already TLS (port 995, or after STLS).
    pub secure: bool,
    /// STLS can be offered (a certificate is loaded and we are not on TLS).
    pub stls_available: bool,
    /// USER/PASS and AUTH PLAIN/LOGIN may be used on this connection:
    /// true on TLS, on loopback, or when the admin allowed plaintext auth.
    pub plaintext_auth_allowed: bool,
    /// The APOP timestamp (`<pid.clock@host>`), only when APOP is enabled.
    pub apop_timestamp: Option<String>,
    /// RFC 2449 §6.7 EXPIRE advertised before login: the shortest value of
    /// any user when `expire_per_user` (then shown with `USER`).
    pub expire: Expire,
    /// Users have different EXPIRE values.
    pub expire_per_user: bool,
    /// RFC 2449 §6.6 LOGIN-DELAY advertised before login, in seconds
    /// (0 = not advertised), and whether it varies per user.
    pub login_delay: (u32, bool),
    /// RFC 2449 IMPLEMENTATION text; `None` to not advertise one.
    pub implementation: Option<String>,
}

/// RFC 2449 §6.7 EXPIRE: how long the server keeps retrieved messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expire {
    /// Messages are kept until the client deletes them.
    Never,
    /// Retrieved messages may be removed after this many days.
    Days(u32),
}

/// Credentials collected by the session, to be verified by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// USER/PASS, AUTH PLAIN or AUTH LOGIN.
    Password {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
        /// Which command carried it, for logs.
        mechanism: &'static str,
    },
    /// One client message of a SASL mechanism the driver runs (one of
    /// [`DRIVER_MECHANISMS`]). The driver keeps the mechanism's state per
    /// connection: `first` is true for the first message of an exchange (a
    /// new exchange after a cancelled one starts with `first` again).
    SaslStep {
        /// The mechanism name, e.g. `SCRAM-SHA-256`.
        mechanism: &'static str,
        /// The base64-decoded client message (may be empty).
        response: Secret,
        /// First message of this exchange.
        first: bool,
    },
    /// APOP (RFC 1939 §7): MD5 of the greeting timestamp and the secret.
    Apop {
        /// The user name.
        user: String,
        /// The lowercase hex digest the client sent.
        digest: String,
        /// The timestamp from our greeting.
        timestamp: String,
    },
}

impl Credentials {
    /// The user name the client claims (empty for a SASL step: the driver's
    /// mechanism knows it).
    pub fn user(&self) -> &str {
        match self {
            Credentials::Password { user, .. } | Credentials::Apop { user, .. } => user,
            Credentials::SaslStep { .. } => "",
        }
    }

    /// The mechanism, for logs: `USER`, `PLAIN`, `LOGIN`, `APOP`, `SCRAM-SHA-256`...
    pub fn mechanism(&self) -> &'static str {
        match self {
            Credentials::Password { mechanism, .. } | Credentials::SaslStep { mechanism, .. } => {
                mechanism
            }
            Credentials::Apop { .. } => "APOP",
        }
    }
}

/// A successful login, as the driver reports it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginGrant {
    /// The authenticated user.
    pub user: String,
    /// The maildrop snapshot, numbered 1..=n in this order.
    pub messages: Vec<MessageMeta>,
    /// This user's EXPIRE value, for CAPA after login.
    pub expire: Expire,
    /// This user's LOGIN-DELAY in seconds (0 = none), for CAPA after login.
    pub login_delay: u32,
}

/// Why a login failed, as the driver reports it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginFailure {
    /// Wrong password or unknown user (indistinguishable on purpose).
    BadCredentials,
    /// The maildrop is locked by another session (RFC 2449 `[IN-USE]`).
    InUse,
    /// The user logged in less than this many seconds ago (RFC 2449
    /// `[LOGIN-DELAY]`).
    LoginDelay(u32),
    /// A transient server problem (`[SYS/TEMP]`), e.g. the user db is unreadable.
    Temporary(String),
    /// A permanent server problem (`[SYS/PERM]`).
    Permanent(String),
}

/// The result of UPDATE, as the driver reports it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateResult {
    /// Every marked message was removed.
    Removed(usize),
    /// Every marked message was removed, `restorable` of them into a
    /// restore area an administrator can bring them back from.
    RemovedRestorable {
        /// How many were removed.
        removed: usize,
        /// How many of those can be restored.
        restorable: usize,
    },
    /// Some marked messages could not be removed (RFC 1939 §6 "-ERR some
    /// deleted messages not removed").
    Partial {
        /// How many were removed.
        removed: usize,
        /// How many were not.
        failed: usize,
    },
    /// UPDATE failed as a whole; nothing is known to be removed.
    Failed(String),
}

/// Something the driver must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes (complete reply lines).
    Send(Vec<u8>),
    /// Verify credentials, lock and snapshot the maildrop, then call
    /// [`ServerSession::handle_login`].
    Authenticate(Credentials),
    /// Send message `index` (0-based into the snapshot): `+OK`, the
    /// byte-stuffed content (only the TOP cut when `top_lines` is set), and
    /// `.CRLF`. If the message cannot be opened, send `-ERR [SYS/TEMP] ...`
    /// instead; the session stays usable.
    SendMessage {
        /// 0-based index into the snapshot.
        index: usize,
        /// Its size, for the `+OK` line.
        size: u64,
        /// `Some(n)` for `TOP msg n`.
        top_lines: Option<u64>,
    },
    /// Flush, drop buffered input, start the TLS handshake, then call
    /// [`ServerSession::handle_tls_established`].
    StartTls,
    /// UPDATE: remove these 0-based indices, release the lock, then call
    /// [`ServerSession::handle_update_result`].
    Update(Vec<usize>),
    /// Flush and close the connection.
    Close,
}

/// Which idle timeout applies now (RFC 1939 §3: at least 10 minutes once
/// logged in; before login a shorter one keeps idle sockets from piling up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleClass {
    /// AUTHORIZATION state.
    BeforeLogin,
    /// TRANSACTION state.
    LoggedIn,
}

/// A SASL exchange in progress (RFC 5034 §4).
#[derive(Debug)]
enum SaslStep {
    /// `AUTH PLAIN` sent without initial response; waiting for it.
    Plain,
    /// `AUTH LOGIN`: waiting for the user name.
    LoginUser,
    /// `AUTH LOGIN`: waiting for the password of this user.
    LoginPassword(String),
    /// A driver-run mechanism: waiting for the client's next message
    /// (`first`: no message of this exchange was sent to the driver yet),
    /// or, while `awaiting_login`, for the driver's answer.
    Driver { mechanism: &'static str, first: bool },
}

#[derive(Debug)]
enum Phase {
    /// RFC 1939 AUTHORIZATION.
    Authorization {
        /// The name given by USER, if PASS may follow.
        user: Option<String>,
        sasl: Option<SaslStep>,
        /// An Authenticate action is outstanding.
        awaiting_login: bool,
        auth_failures: u32,
    },
    /// RFC 1939 TRANSACTION.
    Transaction { user: String, maildrop: Maildrop, expire: Expire, login_delay: u32 },
    /// QUIT received; UPDATE is outstanding.
    Update,
    /// STLS accepted; waiting for the handshake.
    TlsHandshake,
    /// The session is over.
    Closed,
}

/// The POP3 server session. See the module docs for the calling order.
#[derive(Debug)]
pub struct ServerSession {
    config: SessionConfig,
    phase: Phase,
    actions: VecDeque<Action>,
    bad_commands: u32,
    utf8: bool,
    /// Driver-run SASL mechanisms usable now (set by the driver).
    extra_mechanisms: Vec<&'static str>,
}

impl ServerSession {
    /// A new session; the greeting is the first action.
    pub fn new(config: SessionConfig) -> ServerSession {
        let mut session = ServerSession {
            phase: Phase::Authorization {
                user: None,
                sasl: None,
                awaiting_login: false,
                auth_failures: 0,
            },
            actions: VecDeque::new(),
            bad_commands: 0,
            utf8: false,
            extra_mechanisms: Vec::new(),
            config,
        };
        let greeting = match &session.config.apop_timestamp {
            Some(ts) => format!("{} {}", session.config.greeting, ts),
            None => session.config.greeting.clone(),
        };
        session.reply(Status::ok(greeting));
        session
    }

    /// Sets which driver-run SASL mechanisms ([`DRIVER_MECHANISMS`]) are
    /// offered and accepted: the driver knows whether the user db has SCRAM
    /// secrets, whether OAuth is configured and whether TLS channel binding
    /// exists (call again after STLS). Unknown names are ignored. OAUTHBEARER
    /// and XOAUTH2 are still refused where cleartext passwords are.
    pub fn set_sasl_mechanisms(&mut self, mechanisms: &[&str]) {
        self.extra_mechanisms = DRIVER_MECHANISMS
            .iter()
            .copied()
            .filter(|m| mechanisms.contains(m))
            .collect();
    }

    /// The SASL mechanisms usable on this connection right now.
    fn mechanisms(&self) -> Vec<&'static str> {
        let mut list = Vec::new();
        if self.config.plaintext_auth_allowed {
            list.extend(["PLAIN", "LOGIN"]);
        }
        for &m in &self.extra_mechanisms {
            if self.config.plaintext_auth_allowed || !mechanism_needs_protection(m) {
                list.push(m);
            }
        }
        list
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// True when the session can take another input line now.
    pub fn wants_input(&self) -> bool {
        match &self.phase {
            Phase::Authorization { awaiting_login, .. } => !awaiting_login,
            Phase::Transaction { .. } => true,
            Phase::Update | Phase::TlsHandshake | Phase::Closed => false,
        }
    }

    /// Which idle timeout applies now.
    pub fn idle_class(&self) -> IdleClass {
        match self.phase {
            Phase::Transaction { .. } | Phase::Update => IdleClass::LoggedIn,
            _ => IdleClass::BeforeLogin,
        }
    }

    /// The logged-in user, if any (for logs).
    pub fn user(&self) -> Option<&str> {
        match &self.phase {
            Phase::Transaction { user, .. } => Some(user),
            _ => None,
        }
    }

    /// True if the client switched to UTF-8 mode (RFC 6856 §2).
    pub fn utf8_enabled(&self) -> bool {
        self.utf8
    }

    /// True while a SASL exchange waits for a continuation line: the driver
    /// must not log the next line.
    pub fn in_sasl_exchange(&self) -> bool {
        matches!(&self.phase, Phase::Authorization { sasl: Some(_), .. })
    }

    /// The driver's input line was longer than [`crate::MAX_COMMAND_LINE`].
    pub fn handle_line_too_long(&mut self) {
        if let Phase::Authorization { sasl: sasl @ Some(_), .. } = &mut self.phase {
            // A SASL response that does not fit: abort the exchange.
            *sasl = None;
        }
        self.reply(Status::err("line too long"));
    }

    /// The peer goes on sending an overlong line: `max` more octets without
    /// a line end. Counted as a bad command, without a reply (the line was
    /// answered once already), so endless garbage ends in a disconnect.
    pub fn handle_garbage(&mut self) {
        self.count_bad_command();
    }

    /// Handles one complete input line (without CRLF).
    pub fn handle_line(&mut self, line: &[u8]) {
        if !self.wants_input() {
            // A driver bug would land here; refusing is safer than guessing.
            return;
        }
        if let Phase::Authorization { sasl: Some(_), .. } = &self.phase {
            self.handle_sasl_line(line);
            return;
        }
        match Command::parse(line) {
            Ok(cmd) => self.handle_command(cmd),
            Err(err) => {
                self.reply(Status::err(match err {
                    CommandError::Unknown => "unknown command",
                    CommandError::Empty => "empty command",
                    CommandError::MissingArgument => "missing argument",
                    CommandError::TooManyArguments => "too many arguments",
                    CommandError::BadNumber => "invalid message number",
                    _ => "invalid argument",
                }));
            }
        }
    }

    /// Counts one error toward [`MAX_BAD_COMMANDS`]; at the limit the
    /// session says so and closes (without UPDATE).
    fn count_bad_command(&mut self) {
        // UPDATE's own -ERR is the last reply anyway.
        if matches!(self.phase, Phase::Closed | Phase::Update) {
            return;
        }
        self.bad_commands += 1;
        if self.bad_commands >= MAX_BAD_COMMANDS {
            self.close_with(Status::err("too many invalid commands, closing connection"));
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        // Commands valid in every state.
        match cmd {
            Command::Capa => return self.send_capa(),
            Command::Noop if matches!(self.phase, Phase::Transaction { .. }) => {
                return self.reply(Status::ok(""));
            }
            _ => {}
        }
        match &mut self.phase {
            Phase::Authorization { .. } => self.handle_authorization(cmd),
            Phase::Transaction { .. } => self.handle_transaction(cmd),
            // wants_input() is false in the other phases.
            Phase::Update | Phase::TlsHandshake | Phase::Closed => {}
        }
    }

    // --- AUTHORIZATION ---------------------------------------------------

    fn handle_authorization(&mut self, cmd: Command) {
        match cmd {
            Command::User(name) => {
                if !self.config.plaintext_auth_allowed {
                    return self.refuse_plaintext();
                }
                self.set_pending_user(Some(name));
                self.reply(Status::ok(""));
            }
            Command::Pass(password) => {
                let user = match &mut self.phase {
                    Phase::Authorization { user, .. } => user.take(),
                    _ => None,
                };
                match user {
                    // Checked again here: a USER accepted before is no excuse.
                    _ if !self.config.plaintext_auth_allowed => self.refuse_plaintext(),
                    None => self.reply(Status::err("USER first")),
                    Some(user) => self.authenticate(Credentials::Password {
                        user,
                        password,
                        mechanism: "USER",
                    }),
                }
            }
            Command::Apop(user, digest) => match self.config.apop_timestamp.clone() {
                Some(timestamp) => {
                    self.authenticate(Credentials::Apop { user, digest, timestamp })
                }
                None => self.reply(Status::err("APOP not enabled")),
            },
            Command::Auth(None, _) => {
                // RFC 1734-era probe: list mechanisms as a multi-line reply.
                let lines: Vec<String> = self.mechanisms().iter().map(|m| m.to_string()).collect();
                self.reply_multi(Status::ok("supported mechanisms"), &lines);
            }
            Command::Auth(Some(mech), initial) => self.start_sasl(&mech, initial),
            Command::Stls => {
                if self.config.secure {
                    self.reply(Status::err("already using TLS"));
                } else if !self.config.stls_available {
                    self.reply(Status::err("STLS not available"));
                } else {
                    self.reply(Status::ok("begin TLS negotiation"));
                    self.phase = Phase::TlsHandshake;
                    self.actions.push_back(Action::StartTls);
                }
            }
            Command::Utf8 => {
                self.utf8 = true;
                self.reply(Status::ok("UTF8 enabled"));
            }
            Command::Quit => {
                self.reply(Status::ok("pobox signing off"));
                self.close();
            }
            _ => self.reply(Status::err("not valid before login")),
        }
    }

    fn refuse_plaintext(&mut self) {
        // RFC 2595 §2.1 / RFC 8314: no cleartext passwords on an unprotected
        // link. [AUTH] tells the client this is about credentials.
        let hint = if self.config.stls_available { " (use STLS or port 995)" } else { "" };
        self.reply(Status::err_code(
            RespCode::Auth,
            format!("plaintext authentication disallowed on non-secure connections{hint}"),
        ));
    }

    fn set_pending_user(&mut self, name: Option<String>) {
        if let Phase::Authorization { user, .. } = &mut self.phase {
            *user = name;
        }
    }

    fn start_sasl(&mut self, mech: &str, initial: Option<Secret>) {
        // Mechanism names are case-insensitive (RFC 4422 §3.1).
        let mech = mech.to_ascii_uppercase();
        let driver = self.extra_mechanisms.iter().copied().find(|m| *m == mech);
        let protected = driver.is_some_and(|m| !mechanism_needs_protection(m));
        if !self.config.plaintext_auth_allowed && !protected {
            return self.refuse_plaintext();
        }
        let step = match (mech.as_str(), driver) {
            ("PLAIN", _) => SaslStep::Plain,
            ("LOGIN", _) => SaslStep::LoginUser,
            (_, Some(mechanism)) => SaslStep::Driver { mechanism, first: true },
            _ => return self.reply(Status::err("unsupported authentication mechanism")),
        };
        self.set_pending_user(None);
        if let Phase::Authorization { sasl, .. } = &mut self.phase {
            *sasl = Some(step);
        }
        match initial {
            Some(response) => self.handle_sasl_line(response.as_bytes()),
            None => self.send_challenge(),
        }
    }

    fn send_challenge(&mut self) {
        let challenge = match &self.phase {
            Phase::Authorization { sasl: Some(SaslStep::LoginUser), .. } => "+ VXNlcm5hbWU6\r\n",
            Phase::Authorization { sasl: Some(SaslStep::LoginPassword(_)), .. } => {
                "+ UGFzc3dvcmQ6\r\n"
            }
            _ => "+ \r\n",
        };
        self.send(challenge.as_bytes());
    }

    fn handle_sasl_line(&mut self, line: &[u8]) {
        let Phase::Authorization { sasl, .. } = &mut self.phase else { return };
        let Some(step) = sasl.take() else { return };
        if line == b"*" {
            return self.reply(Status::err("authentication cancelled"));
        }
        // RFC 5034 §4: "=" is an empty response.
        let decoded = if line == b"=" { Ok(Vec::new()) } else { BASE64.decode(line) };
        let Ok(decoded) = decoded.map(Secret::new) else {
            return self.reply(Status::err("invalid base64 in SASL response"));
        };
        match step {
            SaslStep::Plain => match decode_plain(decoded.as_bytes()) {
                Some((user, password)) => self.authenticate(Credentials::Password {
                    user,
                    password,
                    mechanism: "PLAIN",
                }),
                None => self.reply(Status::err("malformed PLAIN response")),
            },
            SaslStep::LoginUser => match String::from_utf8(decoded.as_bytes().to_vec()) {
                Ok(user) if !user.is_empty() => {
                    if let Phase::Authorization { sasl, .. } = &mut self.phase {
                        *sasl = Some(SaslStep::LoginPassword(user));
                    }
                    self.send_challenge();
                }
                _ => self.reply(Status::err("malformed LOGIN user name")),
            },
            SaslStep::LoginPassword(user) => self.authenticate(Credentials::Password {
                user,
                password: decoded,
                mechanism: "LOGIN",
            }),
            SaslStep::Driver { mechanism, first } => {
                // Remember the mechanism while the driver works on it, so a
                // challenge can continue the same exchange.
                if let Phase::Authorization { sasl, .. } = &mut self.phase {
                    *sasl = Some(SaslStep::Driver { mechanism, first: false });
                }
                self.authenticate(Credentials::SaslStep { mechanism, response: decoded, first })
            }
        }
    }

    /// The driver's answer to an [`Action::Authenticate`] carrying a
    /// [`Credentials::SaslStep`] when the exchange goes on: sends
    /// `+ base64(challenge)` (RFC 5034 §4) and passes the client's next line
    /// back as another `SaslStep` (or cancels on `*`). To end the exchange,
    /// the driver calls [`handle_login`](Self::handle_login) instead. Ignored
    /// unless such a step is outstanding.
    pub fn handle_sasl_challenge(&mut self, challenge: &[u8]) {
        let Phase::Authorization {
            awaiting_login: awaiting @ true,
            sasl: Some(SaslStep::Driver { .. }),
            ..
        } = &mut self.phase
        else {
            return;
        };
        *awaiting = false;
        let mut line = b"+ ".to_vec();
        line.extend_from_slice(BASE64.encode(challenge).as_bytes());
        line.extend_from_slice(b"\r\n");
        self.send_owned(line);
    }

    fn authenticate(&mut self, credentials: Credentials) {
        if let Phase::Authorization { awaiting_login, .. } = &mut self.phase {
            *awaiting_login = true;
        }
        self.actions.push_back(Action::Authenticate(credentials));
    }

    /// The driver's answer to [`Action::Authenticate`]: the maildrop snapshot
    /// on success (the lock is held by the driver from now until UPDATE or
    /// the end of the connection).
    pub fn handle_login(&mut self, result: Result<LoginGrant, LoginFailure>) {
        let Phase::Authorization { awaiting_login: true, auth_failures, .. } = &mut self.phase
        else {
            return;
        };
        match result {
            Ok(grant) => {
                let maildrop = Maildrop::new(grant.messages);
                let (count, octets) = maildrop.stat();
                self.phase = Phase::Transaction {
                    user: grant.user,
                    maildrop,
                    expire: grant.expire,
                    login_delay: grant.login_delay,
                };
                self.reply(Status::ok(format!(
                    "logged in, maildrop has {count} messages ({octets} octets)"
                )));
            }
            Err(failure) => {
                let failures = *auth_failures + 1;
                self.phase = Phase::Authorization {
                    user: None,
                    sasl: None,
                    awaiting_login: false,
                    auth_failures: failures,
                };
                match failure {
                    LoginFailure::BadCredentials => {
                        self.reply(Status::err_code(RespCode::Auth, "authentication failed"));
                        // Unless that reply reached the error limit and
                        // closed the session already.
                        if failures >= MAX_AUTH_FAILURES && !matches!(self.phase, Phase::Closed) {
                            self.close_with(Status::err("too many authentication failures"));
                        }
                    }
                    LoginFailure::InUse => self.reply(Status::err_code(
                        RespCode::InUse,
                        "maildrop is locked by another session",
                    )),
                    LoginFailure::LoginDelay(secs) => self.reply(Status::err_code(
                        RespCode::LoginDelay,
                        format!("minimum time between logins is {secs} seconds"),
                    )),
                    LoginFailure::Temporary(text) => {
                        self.reply(Status::err_code(RespCode::SysTemp, text))
                    }
                    LoginFailure::Permanent(text) => {
                        self.reply(Status::err_code(RespCode::SysPerm, text))
                    }
                }
            }
        }
    }

    /// The driver finished the TLS handshake after STLS. The session starts
    /// AUTHORIZATION afresh (RFC 2595 §4: the client must re-issue CAPA; any
    /// state from before the handshake is forgotten).
    pub fn handle_tls_established(&mut self) {
        if let Phase::TlsHandshake = self.phase {
            self.config.secure = true;
            self.config.stls_available = false;
            self.config.plaintext_auth_allowed = true;
            self.phase = Phase::Authorization {
                user: None,
                sasl: None,
                awaiting_login: false,
                auth_failures: 0,
            };
        }
    }

    // --- TRANSACTION -----------------------------------------------------

    fn handle_transaction(&mut self, cmd: Command) {
        let Phase::Transaction { maildrop, .. } = &mut self.phase else { return };
        match cmd {
            Command::Stat => {
                let (count, octets) = maildrop.stat();
                self.reply(Status::ok(format!("{count} {octets}")));
            }
            Command::List(None) => {
                let (count, octets) = maildrop.stat();
                // "n size\r\n": at most 10 + 1 + 20 + 2 octets.
                let mut out = Vec::with_capacity(64 + count * 33);
                Status::ok(format!("{count} messages ({octets} octets)")).encode(&mut out);
                for (n, m) in maildrop.iter_live() {
                    push_decimal(&mut out, u64::from(n));
                    out.push(b' ');
                    push_decimal(&mut out, m.size);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b".\r\n");
                self.send_owned(out);
            }
            Command::List(Some(n)) => match maildrop.live(n) {
                Some((_, m)) => {
                    let status = Status::ok(format!("{n} {}", m.size));
                    self.reply(status);
                }
                None => self.reply(Status::err("no such message")),
            },
            Command::Uidl(None) => {
                // "n uidl\r\n": at most 10 + 1 + len + 2 octets; one pass
                // over the lengths saves the copies of a growing buffer.
                let size: usize = maildrop.iter_live().map(|(_, m)| 13 + m.uidl.len()).sum();
                let mut out = Vec::with_capacity(8 + size);
                Status::ok("").encode(&mut out);
                for (n, m) in maildrop.iter_live() {
                    push_decimal(&mut out, u64::from(n));
                    out.push(b' ');
                    out.extend_from_slice(m.uidl.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b".\r\n");
                self.send_owned(out);
            }
            Command::Uidl(Some(n)) => match maildrop.live(n) {
                Some((_, m)) => {
                    let status = Status::ok(format!("{n} {}", m.uidl));
                    self.reply(status);
                }
                None => self.reply(Status::err("no such message")),
            },
            Command::Retr(n) => match maildrop.live(n) {
                Some((index, m)) => {
                    let size = m.size;
                    self.actions.push_back(Action::SendMessage { index, size, top_lines: None })
                }
                None => self.reply(Status::err("no such message")),
            },
            Command::Top(n, lines) => match maildrop.live(n) {
                Some((index, m)) => {
                    let size = m.size;
                    self.actions.push_back(Action::SendMessage {
                        index,
                        size,
                        top_lines: Some(lines),
                    })
                }
                None => self.reply(Status::err("no such message")),
            },
            Command::Dele(n) => {
                if maildrop.mark_deleted(n) {
                    self.reply(Status::ok(format!("message {n} deleted")));
                } else {
                    self.reply(Status::err("no such message"));
                }
            }
            Command::Rset => {
                maildrop.unmark_all();
                let (count, octets) = maildrop.stat();
                self.reply(Status::ok(format!("maildrop has {count} messages ({octets} octets)")));
            }
            Command::Quit => {
                let deleted = maildrop.deleted_indices();
                self.phase = Phase::Update;
                self.actions.push_back(Action::Update(deleted));
            }
            Command::User(_)
            | Command::Pass(_)
            | Command::Apop(..)
            | Command::Auth(..)
            | Command::Stls
            | Command::Utf8 => self.reply(Status::err("already logged in")),
            Command::Capa | Command::Noop => {}
        }
    }

    /// The driver's answer to [`Action::Update`]. The session then closes.
    pub fn handle_update_result(&mut self, result: UpdateResult) {
        if !matches!(self.phase, Phase::Update) {
            return;
        }
        match result {
            UpdateResult::Removed(n) => {
                self.reply(Status::ok(format!("pobox signing off ({n} messages deleted)")))
            }
            UpdateResult::RemovedRestorable { removed, restorable } => self.reply(Status::ok(format!(
                "pobox signing off ({removed} messages deleted, {restorable} restorable)"
            ))),
            UpdateResult::Partial { removed, failed } => self.reply(Status::err_code(
                RespCode::SysTemp,
                format!("some deleted messages not removed ({removed} removed, {failed} failed)"),
            )),
            UpdateResult::Failed(text) => self.reply(Status::err_code(
                RespCode::SysTemp,
                format!("some deleted messages not removed: {text}"),
            )),
        }
        self.close();
    }

    // --- CAPA and output ---------------------------------------------------

    fn send_capa(&mut self) {
        let mut caps: Vec<String> = vec!["TOP".into(), "UIDL".into(), "RESP-CODES".into()];
        caps.push("AUTH-RESP-CODE".into());
        caps.push("PIPELINING".into());
        // RFC 2449 §6.6/§6.7: before login, per-user values are announced
        // as the shortest with "USER"; after login, the user's own value.
        let (expire, expire_user, delay, delay_user) = match &self.phase {
            Phase::Transaction { expire, login_delay, .. } => (*expire, false, *login_delay, false),
            _ => (
                self.config.expire,
                self.config.expire_per_user,
                self.config.login_delay.0,
                self.config.login_delay.1,
            ),
        };
        let user_tag = |per_user: bool| if per_user { " USER" } else { "" };
        caps.push(match expire {
            Expire::Never => format!("EXPIRE NEVER{}", user_tag(expire_user)),
            Expire::Days(d) => format!("EXPIRE {d}{}", user_tag(expire_user)),
        });
        if delay > 0 || delay_user {
            caps.push(format!("LOGIN-DELAY {delay}{}", user_tag(delay_user)));
        }
        caps.push("UTF8".into());
        // RFC 2449 §5: "Capabilities available in the AUTHORIZATION state
        // MUST be announced in both states", and the IANA registry lists
        // USER, SASL and STLS (RFC 2595) as announced in both states with no
        // differences. So after login CAPA still says what this connection
        // offers before login: the same USER, the same mechanism list, and
        // STLS while the link is cleartext with a certificate. They describe
        // the connection; the commands themselves stay AUTHORIZATION-only
        // and get "-ERR already logged in" in TRANSACTION.
        if self.config.stls_available && !self.config.secure {
            caps.push("STLS".into());
        }
        if self.config.plaintext_auth_allowed {
            caps.push("USER".into());
        }
        let mechanisms = self.mechanisms();
        if !mechanisms.is_empty() {
            caps.push(format!("SASL {}", mechanisms.join(" ")));
        }
        if let Some(imp) = &self.config.implementation {
            caps.push(format!("IMPLEMENTATION {imp}"));
        }
        self.reply_multi(Status::ok("capability list follows"), &caps);
    }

    /// Sends a status line; an `-ERR` counts toward [`MAX_BAD_COMMANDS`].
    /// Every error reply goes through here, so none can be drawn forever.
    fn reply(&mut self, status: Status) {
        let failed = matches!(status, Status::Err(..));
        self.send_status(status);
        if failed {
            self.count_bad_command();
        }
    }

    fn send_status(&mut self, status: Status) {
        let mut out = Vec::with_capacity(64);
        status.encode(&mut out);
        self.send_owned(out);
    }

    /// The last reply of a session that ends here (not counted: it ends).
    fn close_with(&mut self, status: Status) {
        self.send_status(status);
        self.close();
    }

    fn reply_multi(&mut self, status: Status, lines: &[String]) {
        let mut out = Vec::new();
        status.encode(&mut out);
        for line in lines {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.send_owned(out);
    }

    fn send(&mut self, bytes: &[u8]) {
        // Coalesce consecutive writes so pipelined replies leave in one write.
        if let Some(Action::Send(buf)) = self.actions.back_mut() {
            buf.extend_from_slice(bytes);
        } else {
            self.actions.push_back(Action::Send(bytes.to_vec()));
        }
    }

    /// [`send`](Self::send) for a reply built here: moved into the action,
    /// not copied, unless it is appended to a queued one.
    fn send_owned(&mut self, bytes: Vec<u8>) {
        if let Some(Action::Send(buf)) = self.actions.back_mut() {
            buf.extend_from_slice(&bytes);
        } else {
            self.actions.push_back(Action::Send(bytes));
        }
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.actions.push_back(Action::Close);
    }
}

/// The `+OK` line that precedes a message: RETR announces the octet count
/// (RFC 1939 §10 example), TOP only says that the cut follows, because the
/// count of a TOP cut is not known before it is sent.
pub fn retr_status_line(size: u64, top_lines: Option<u64>) -> String {
    match top_lines {
        None => format!("+OK {size} octets\r\n"),
        Some(_) => "+OK top of message follows\r\n".to_string(),
    }
}

/// Replies the driver writes on its own rather than in answer to the
/// command at hand: the connection ends (login deadline, an admin's kick,
/// server shutdown), or a message the session announced cannot be read.
/// Their texts live here with every other reply, so the driver builds none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverReply {
    /// Still not logged in at the login deadline; the connection closes.
    LoginTimedOut,
    /// `pobox kick` ended the session; nothing was deleted (no UPDATE).
    Kicked,
    /// The server is shutting down; nothing was deleted (no UPDATE).
    ShuttingDown,
    /// RETR/TOP: the message could not be opened; the session goes on
    /// (RFC 3206 `SYS/TEMP`: trying again later may work).
    MessageUnreadable,
}

impl DriverReply {
    /// The status line.
    #[must_use]
    pub fn status(self) -> Status {
        match self {
            DriverReply::LoginTimedOut => Status::err("login took too long, closing connection"),
            DriverReply::Kicked => {
                Status::err_code(RespCode::SysTemp, "session closed by the administrator, nothing was deleted")
            }
            DriverReply::ShuttingDown => Status::err_code(RespCode::SysTemp, "server shutting down, nothing was deleted"),
            DriverReply::MessageUnreadable => Status::err_code(RespCode::SysTemp, "message cannot be read now"),
        }
    }

    /// Appends the status line, CRLF included, to `out`.
    pub fn encode(self, out: &mut Vec<u8>) {
        self.status().encode(out);
    }
}

/// Appends `value` in decimal, as `format!("{value}")` would, without
/// allocating: LIST and UIDL write one or two numbers per message.
fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// RFC 4616 PLAIN: `[authzid] NUL authcid NUL passwd`. Proxy authorization
/// (an authzid different from authcid) is not supported and fails.
/// Public so that `pobox-auth`'s tests drive the same decoder the server
/// uses.
#[must_use]
pub fn decode_plain(msg: &[u8]) -> Option<(String, Secret)> {
    let mut parts = msg.splitn(3, |&b| b == 0);
    let authzid = parts.next()?;
    let authcid = parts.next()?;
    let password = parts.next()?;
    if authcid.is_empty() || password.contains(&0) {
        return None;
    }
    let authcid = String::from_utf8(authcid.to_vec()).ok()?;
    if !authzid.is_empty() && authzid != authcid.as_bytes() {
        return None;
    }
    Some((authcid, Secret::from(password)))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod decimal_tests {
    use super::push_decimal;

    #[test]
    fn push_decimal_matches_format() {
        let mut values = vec![0, 1, 9, 10, 99, 100, 4_294_967_295, u64::MAX - 1, u64::MAX];
        values.extend((0..20).map(|p| 10u64.pow(p)));
        values.extend((1..20).map(|p| 10u64.pow(p) - 1));
        for v in values {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, v);
            assert_eq!(out, format!("x{v}").into_bytes());
        }
    }
}

/// Times building the UIDL and LIST replies of a 100,000-message maildrop:
/// `cargo test --release -p pobox-proto uidl_list_timing -- --ignored --nocapture`
#[cfg(test)]
mod uidl_list_timing {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    #[ignore = "a timing, not a check: run by hand in release mode"]
    fn uidl_list_timing() {
        let n = 100_000u64;
        let messages: Vec<MessageMeta> = (0..n)
            .map(|i| MessageMeta {
                size: 18 + i % 5000,
                uidl: format!("{}.M{i}P4242.benchhost", 1_700_000_000 + i),
            })
            .collect();
        let config = SessionConfig {
            greeting: "ready".into(),
            secure: true,
            stls_available: false,
            plaintext_auth_allowed: true,
            apop_timestamp: None,
            expire: Expire::Never,
            expire_per_user: false,
            login_delay: (0, false),
            implementation: None,
        };
        let mut times: [Vec<Duration>; 2] = Default::default();
        for _ in 0..21 {
            let mut s = ServerSession::new(config.clone());
            s.handle_line(b"USER u");
            s.handle_line(b"PASS p");
            while s.poll_action().is_some() {}
            s.handle_login(Ok(LoginGrant {
                user: "u".into(),
                messages: messages.clone(),
                expire: Expire::Never,
                login_delay: 0,
            }));
            while s.poll_action().is_some() {}
            for (k, cmd) in [&b"UIDL"[..], b"LIST"].into_iter().enumerate() {
                let t = Instant::now();
                s.handle_line(cmd);
                let mut bytes = 0;
                while let Some(action) = s.poll_action() {
                    if let Action::Send(b) = action {
                        bytes += b.len();
                    }
                }
                times[k].push(t.elapsed());
                assert!(bytes > n as usize * 8);
            }
        }
        for t in &mut times {
            t.sort();
        }
        println!(
            "{n} messages: UIDL reply {:?}, LIST reply {:?} (medians of 21)",
            times[0][10], times[1][10]
        );
    }
}
