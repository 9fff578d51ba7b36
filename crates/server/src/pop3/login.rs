//! Login orchestration for the POP3 driver: USER/PASS and APOP through the
//! credential cache and the user database, the driver-run SASL mechanisms
//! (SCRAM-SHA-256(-PLUS), OAUTHBEARER, XOAUTH2), failure penalties, the
//! per-(user, IP) connection slot, and opening the maildrop at login (with
//! login-time expiry, app-password and login-history hooks). The session
//! in `pobox_proto` decides what is allowed and what is answered; this
//! module runs the blocking checks and hands their results back.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use pobox_auth::oauth;
use pobox_auth::scram::{ChannelBindings, ScramError, ScramServer, ScramStep};
use pobox_auth::{AuthError, Authenticated, Credential};
use pobox_proto::Secret;
use pobox_proto::pop3::maildrop::MessageMeta;
use pobox_proto::pop3::server::{
    Credentials, LoginFailure, LoginGrant, OAUTHBEARER, SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS, XOAUTH2,
};
use pobox_store::history::{Login, LoginHistory};
use pobox_store::StoreError;
use tracing::{debug, info, warn};

use crate::conn::Stream;

use super::{Driver, LOG_TARGET, to_expire, uidl_hash, unix_now};

/// State of a driver-run SASL exchange between client messages.
#[allow(clippy::large_enum_variant)] // stored boxed (`Driver::mech`)
pub(super) enum Mech {
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

fn temporary(detail: &str) -> LoginFailure {
    warn!(target: LOG_TARGET, error = %detail, "user database unavailable");
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
    /// Verifies USER/PASS, PLAIN, LOGIN and APOP credentials, then opens the
    /// maildrop. See [`Driver::authenticate`] for the order of checks.
    pub(super) async fn login(&mut self, credentials: Credentials) -> Result<LoginGrant, LoginFailure> {
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
            let (svc2, user2, pw) = (svc.clone(), user.clone(), password.clone());
            let hit = tokio::task::spawn_blocking(move || {
                svc2.credcache.lookup(&svc2.users, &user2, pw.as_bytes(), Instant::now())
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
            debug!(target: LOG_TARGET, peer = %self.peer, wait_ms = wait.as_millis() as u64, "auth throttled");
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
                    let verified = svc.users.verify(user, password.as_bytes());
                    if let (Ok(proof), Ok(Some(fp))) = (&verified, fingerprint) {
                        svc.credcache.insert(user, password.as_bytes(), fp, proof.clone(), Instant::now());
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
                warn!(target: LOG_TARGET, peer = %self.peer, ip = %self.peer.ip(), %user, %mechanism,
                      "authentication failed");
                tokio::time::sleep(self.svc.config.auth_failure_delay).await;
            }
            LoginFailure::InUse => {
                self.stats.refused += 1;
                info!(target: LOG_TARGET, peer = %self.peer, user = %log_safe(user), "maildrop in use");
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
        // The proof names the credential (a bearer token is `oauth`).
        let credential = authenticated.credential().label().to_owned();
        if self.svc.config.require_app_passwords && *authenticated.credential() == Credential::Password {
            let user = authenticated.user().to_owned();
            info!(target: LOG_TARGET, peer = %self.peer, user = %user, %mechanism,
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
        // tokio's clock, which is the system's monotonic clock except under
        // a paused test runtime: the driver tests move it past LOGIN-DELAY.
        let now = tokio::time::Instant::now().into_std();
        let result = tokio::task::spawn_blocking(move || {
            let user = authenticated.user();
            let policy = svc.store.policy(user);
            let delay = std::time::Duration::from_secs(u64::from(policy.login_delay_secs));
            if let Err(d) = svc.sessions.check_login_delay(user, delay, now) {
                return Err(LoginFailure::LoginDelay(d.as_secs() as u32));
            }
            // Login-time retention is the store's: open expires under the
            // lock it takes, and waits briefly for maintenance holding it.
            // Only the proof auth minted opens a maildrop.
            let opened = svc.store.open(&authenticated);
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
                                warn!(target: LOG_TARGET, %user, error = %e, "cannot record the login in the login history");
                                None
                            }
                        }
                    });
                    Ok((user.to_string(), mailbox, policy, history))
                }
                Err(StoreError::InUse) => Err(LoginFailure::InUse),
                Err(e) => {
                    warn!(target: LOG_TARGET, user = %authenticated.user(), error = %e, "cannot open maildrop");
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
                info!(target: LOG_TARGET, peer = %self.peer, %user, %mechanism, %credential, tls,
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
    pub(super) async fn offer_mechanisms(&mut self) {
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
    pub(super) async fn sasl_step(&mut self, mechanism: &'static str, response: Secret, first: bool) {
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

    async fn scram_step(&mut self, mechanism: &'static str, response: Secret) -> Step {
        let mut server = match self.mech.take().map(|m| *m) {
            None => ScramServer::new(mechanism == SCRAM_SHA_256_PLUS, self.bindings()),
            Some(Mech::Scram(server)) => server,
            // RFC 5034 §4: the client acknowledges the server-final
            // challenge with an empty response; then, and only then, +OK.
            Some(Mech::ScramDone(proof)) if response.is_empty() => return Step::Done(Ok(proof)),
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
            let r = server.step(&svc.users, response.as_bytes());
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
                debug!(target: LOG_TARGET, peer = %self.peer, error = %e, "SCRAM exchange failed");
                Step::Done(Err((user, LoginFailure::BadCredentials)))
            }
        }
    }

    async fn oauth_step(&mut self, mechanism: &'static str, response: Secret) -> Step {
        if let Some(Mech::BearerFailed(user)) = self.mech.take().map(|m| *m) {
            // RFC 7628 §3.2.3: after the error challenge the client sends
            // %x01 (XOAUTH2 clients send an empty line); either way: -ERR.
            return Step::Done(Err((user, LoginFailure::BadCredentials)));
        }
        let parsed = if mechanism == OAUTHBEARER {
            oauth::parse_oauthbearer(response.as_bytes())
        } else {
            oauth::parse_xoauth2(response.as_bytes())
        };
        let bearer = match parsed {
            Ok(b) => b,
            Err(reason) => {
                debug!(target: LOG_TARGET, peer = %self.peer, %reason, "malformed bearer response");
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
                warn!(target: LOG_TARGET, error = %e, "OAuth validation unavailable");
                Step::Done(Err((user, temporary("authentication temporarily unavailable"))))
            }
            Err(e) => {
                // A valid token for no known user is most likely a missing
                // oauth_sub= mapping (or an unverified email): the admin
                // needs to see it without debug logging.
                if matches!(e, oauth::OAuthError::UnmappedSubject(_) | oauth::OAuthError::EmailNotVerified) {
                    info!(target: LOG_TARGET, peer = %self.peer, error = %e, "bearer token refused");
                } else {
                    debug!(target: LOG_TARGET, peer = %self.peer, error = %e, "bearer token refused");
                }
                // RFC 7628 §3.2.2: the failure is a JSON challenge; the
                // client answers it, and only then gets -ERR.
                self.mech = Some(Box::new(Mech::BearerFailed(user)));
                Step::Challenge(oauth::error_challenge())
            }
        }
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
                warn!(target: LOG_TARGET, peer = %self.peer, ip = %self.peer.ip(), %user, limit = max,
                      "login refused: max_connections_per_user_ip reached for this user and address");
                Err(LoginFailure::Temporary(format!(
                    "too many connections of this user from your address (limit {max}), try again later"
                )))
            }
        }
    }
}

/// RFC 1939 §7: a timestamp in msg-id form, different on every greeting.
pub(super) fn apop_timestamp(hostname: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let nonce: u64 = rand::random();
    format!("<{}.{nanos}.{nonce:016x}@{hostname}>", std::process::id())
}
