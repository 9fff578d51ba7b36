//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS, server side (RFC 5802, RFC 7677),
//! as a pure step machine: bytes in, bytes out, no I/O beyond the
//! [`UserDb`] lookup, no clock.
//!
//! # Stored secrets
//!
//! The server stores `{SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey`
//! (all base64), which is exactly Dovecot's `{SCRAM-SHA-256}` scheme string,
//! so an entry can move between Dovecot and pobox unchanged. It is not
//! password-equivalent for logging in (RFC 5802 §9: a stolen StoredKey does
//! not let an attacker impersonate the client) but it *is* an offline
//! dictionary-attack target at the cost of PBKDF2 with [`ITERATIONS`]
//! rounds, cheaper than Argon2id; that trade-off is in SECURITY.md.
//!
//! # Exchange (RFC 5802 §5, framed by POP3 AUTH per RFC 5034 §4)
//!
//! ```text
//! C: AUTH SCRAM-SHA-256 <base64 client-first>
//! S: + <base64 server-first>       (ScramStep::Challenge)
//! C: <base64 client-final>
//! S: + <base64 server-final "v=">  (ScramStep::Success: RFC 5034 §4 has no
//! C: (empty line)                   "additional data with success", so the
//! S: +OK ...                        verifier goes out as a last challenge)
//! ```
//!
//! Unknown users get a server-first message built from a salt derived from
//! the user name with a per-process key, so the reply to the first message
//! looks the same for every name and is stable across attempts; the
//! exchange then fails at the proof like a wrong password (RFC 5802 §9
//! recommends exactly this "mock" behaviour).
//!
//! SASLprep (RFC 4013): RFC 5802 §2.2 computes SaltedPassword from the
//! SASLprep'd password, so the secret stored by `pobox user add/passwd` is
//! derived from the prepared form ([`crate::saslprep`]) and
//! [`ScramClient`] prepares too. A secret made before that from a
//! non-ASCII password that SASLprep changes only works with clients that do
//! not normalise; `pobox user passwd` fixes it. User names need no
//! preparation: [`crate::valid_username`] allows only printable ASCII, which
//! SASLprep leaves unchanged.

use std::fmt;
use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::{digest, hmac, pbkdf2, rand as ring_rand};
use subtle::ConstantTimeEq as _;

use crate::secret::Secret;
use crate::{AuthError, Authenticated, Credential, UserDb};

/// PBKDF2 rounds for secrets written by [`ScramSecret::derive`]. RFC 7677
/// §4 asks for at least 4096; Dovecot's default is 4096. We use more
/// because the stored secret is an offline-attack target (see module docs);
/// clients cache the salted password, so this is paid rarely.
pub const ITERATIONS: u32 = 10_000;

/// Lowest iteration count accepted from a stored secret (RFC 7677 §4).
pub const MIN_ITERATIONS: u32 = 4096;

/// Upper bound on a stored iteration count: the client pays it, but a bogus
/// huge value in the file would make every login hang.
const MAX_ITERATIONS: u32 = 1_000_000;

/// Length of SHA-256 output, the size of every SCRAM-SHA-256 key.
const KEY_LEN: usize = 32;

/// Per-process key for deriving the fake salt of unknown users.
static MOCK_KEY: LazyLock<hmac::Key> = LazyLock::new(|| {
    hmac::Key::generate(hmac::HMAC_SHA256, &ring_rand::SystemRandom::new())
        .expect("operating system RNG")
});

/// A user's SCRAM-SHA-256 verifier: what the server stores.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_LEN],
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramSecret {
    /// Computes the verifier for `password` with a fresh 16-byte salt and
    /// [`ITERATIONS`] rounds.
    ///
    /// # Panics
    /// If the operating system's RNG fails.
    #[must_use]
    pub fn derive(password: &[u8]) -> Self {
        let mut salt = vec![0u8; 16];
        ring::rand::SecureRandom::fill(&ring_rand::SystemRandom::new(), &mut salt)
            .expect("operating system RNG");
        Self::derive_with(password, &salt, ITERATIONS)
    }

    /// Computes the verifier with a given salt and iteration count.
    #[must_use]
    pub fn derive_with(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// Parses Dovecot's value (without the `{SCRAM-SHA-256}` prefix):
    /// `iterations,base64(salt),base64(StoredKey),base64(ServerKey)`.
    ///
    /// # Errors
    /// A static reason, never quoting the value.
    pub fn parse(body: &str) -> Result<Self, &'static str> {
        let mut parts = body.split(',');
        let (Some(i), Some(salt), Some(stored), Some(server), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("expected iterations,salt,StoredKey,ServerKey");
        };
        let iterations: u32 = i.parse().map_err(|_| "iteration count is not a number")?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err("iteration count out of range (4096..=1000000)");
        }
        let salt = BASE64.decode(salt).map_err(|_| "salt is not base64")?;
        if salt.is_empty() {
            return Err("empty salt");
        }
        let key = |s: &str| -> Result<[u8; KEY_LEN], &'static str> {
            BASE64
                .decode(s)
                .ok()
                .and_then(|v| <[u8; KEY_LEN]>::try_from(v.as_slice()).ok())
                .ok_or("key is not 32 bytes of base64")
        };
        Ok(Self {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// The Dovecot `{SCRAM-SHA-256}...` string.
    #[must_use]
    pub fn to_dovecot(&self) -> String {
        format!(
            "{{SCRAM-SHA-256}}{},{},{},{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }

    /// Verifies a cleartext password against this secret (for USER/PASS
    /// when the passwd-file's password field is `{SCRAM-SHA-256}`, as
    /// Dovecot allows). Constant-time comparison.
    #[must_use]
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let computed = Self::derive_with(password, &self.salt, self.iterations);
        computed.stored_key.ct_eq(&self.stored_key).into()
    }

    /// A plausible secret for a user that has none (unknown user, or no
    /// SCRAM secret stored): deterministic salt per name, random keys, so
    /// the proof check always fails.
    fn mock(user: &str) -> Self {
        let tag = hmac::sign(&MOCK_KEY, user.as_bytes());
        let mut stored_key = [0u8; KEY_LEN];
        let mut server_key = [0u8; KEY_LEN];
        let rng = ring_rand::SystemRandom::new();
        let _ = ring::rand::SecureRandom::fill(&rng, &mut stored_key);
        let _ = ring::rand::SecureRandom::fill(&rng, &mut server_key);
        Self {
            iterations: ITERATIONS,
            salt: tag.as_ref()[..16].to_vec(),
            stored_key,
            server_key,
        }
    }
}

/// TLS channel-binding data the driver extracted from the connection.
#[derive(Default, Clone)]
pub struct ChannelBindings {
    /// RFC 9266 `tls-exporter`: 32 bytes exported with the label
    /// `EXPORTER-Channel-Binding` and no context. Only set on TLS 1.3
    /// (RFC 9266 §3 forbids it on TLS 1.2 without extended master secret;
    /// we do not try to tell the two apart).
    pub tls_exporter: Option<Vec<u8>>,
    /// RFC 5929 §4 `tls-server-end-point`: hash of our certificate.
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl fmt::Debug for ChannelBindings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelBindings")
            .field("tls_exporter", &self.tls_exporter.is_some())
            .field("tls_server_end_point", &self.tls_server_end_point.is_some())
            .finish()
    }
}

impl ChannelBindings {
    /// True when `-PLUS` can be offered.
    #[must_use]
    pub fn any(&self) -> bool {
        self.tls_exporter.is_some() || self.tls_server_end_point.is_some()
    }
}

/// Why a SCRAM exchange failed. Never contains secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// The client's message does not follow RFC 5802 §7.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding was required, refused, downgraded or did not match
    /// (RFC 5802 §6).
    #[error("SCRAM channel binding failure: {0}")]
    ChannelBinding(&'static str),
    /// Proxy authorization (authzid ≠ user) is not supported.
    #[error("SCRAM authzid differs from the user name")]
    AuthzidNotSupported,
    /// The proof is wrong, or the user is unknown (indistinguishable).
    #[error("invalid credentials")]
    InvalidProof,
    /// The user database could not be read.
    #[error("{0}")]
    Temporary(String),
    /// A message arrived after the exchange finished.
    #[error("SCRAM exchange already finished")]
    Finished,
}

/// What to answer after a client message.
#[derive(Debug)]
pub enum ScramStep {
    /// Send this as a `+ base64` challenge and wait for the next message.
    Challenge(Vec<u8>),
    /// The proof is valid: send `server_final` as a last challenge
    /// (RFC 5034 §4), and after the client's empty answer, log the user in.
    Success {
        /// The proof of authentication.
        authenticated: Authenticated,
        /// `v=base64(ServerSignature)`.
        server_final: Vec<u8>,
    },
}

/// The server side of one SCRAM-SHA-256(-PLUS) exchange.
pub struct ScramServer {
    plus: bool,
    bindings: ChannelBindings,
    nonce: String,
    /// The user named in the client-first message, once seen.
    user: Option<String>,
    state: State,
}

enum State {
    /// The RNG failed when the exchange was created: no nonce to offer.
    NoNonce,
    First,
    Final {
        user: String,
        secret: ScramSecret,
        /// The user exists and has a SCRAM secret.
        real: bool,
        /// The gs2 header as sent, and the channel-binding data it selects.
        cbind_input: Vec<u8>,
        auth_prefix: String,
        nonce: String,
    },
    Done,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("plus", &self.plus)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// A new exchange. `plus` is true for `SCRAM-SHA-256-PLUS`; `bindings`
    /// are the TLS channel bindings of this connection (empty on cleartext).
    /// `advertised_plus` tells whether `-PLUS` was offered, which decides
    /// how a client flag `y` is judged (RFC 5802 §6).
    ///
    /// If the operating system's RNG fails, the exchange is created anyway
    /// (the driver has nothing useful to do with the error before the
    /// client's first message) but its first [`step`](Self::step) returns
    /// [`ScramError::Temporary`]: a predictable (all-zero) nonce would let
    /// a recorded exchange be replayed (RFC 5802 §9), so none is ever sent.
    #[must_use]
    pub fn new(plus: bool, bindings: ChannelBindings) -> Self {
        Self::with_random(plus, bindings, |buf| {
            ring::rand::SecureRandom::fill(&ring_rand::SystemRandom::new(), buf)
        })
    }

    /// [`new`](Self::new) with the nonce bytes drawn by `fill` (the tests
    /// inject a failing RNG here; ring's `SecureRandom` is sealed).
    fn with_random(
        plus: bool,
        bindings: ChannelBindings,
        fill: impl FnOnce(&mut [u8]) -> Result<(), ring::error::Unspecified>,
    ) -> Self {
        let mut raw = [0u8; 18];
        match fill(&mut raw) {
            Ok(()) => Self::with_nonce(plus, bindings, &BASE64.encode(raw)),
            Err(_) => Self {
                state: State::NoNonce,
                ..Self::with_nonce(plus, bindings, "")
            },
        }
    }

    /// Like [`new`](Self::new) with a fixed server nonce part (tests only:
    /// RFC 7677's example uses a known nonce).
    #[must_use]
    pub fn with_nonce(plus: bool, bindings: ChannelBindings, nonce: &str) -> Self {
        Self {
            plus,
            bindings,
            nonce: nonce.to_owned(),
            user: None,
            state: State::First,
        }
    }

    /// The user named by the client (after its first message), for logs
    /// and throttling. Says nothing about whether the user exists.
    #[must_use]
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Feeds the next client message (already base64-decoded).
    ///
    /// # Errors
    /// A [`ScramError`]; the exchange is then over and the driver answers
    /// `-ERR [AUTH]`.
    pub fn step(&mut self, users: &UserDb, message: &[u8]) -> Result<ScramStep, ScramError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::NoNonce => Err(ScramError::Temporary(
                "operating system RNG failed: no SCRAM server nonce".to_owned(),
            )),
            State::First => self.client_first(users, message),
            State::Final {
                user,
                secret,
                real,
                cbind_input,
                auth_prefix,
                nonce,
            } => client_final(
                message,
                &user,
                &secret,
                real,
                &cbind_input,
                &auth_prefix,
                &nonce,
            ),
            State::Done => Err(ScramError::Finished),
        }
    }

    fn client_first(&mut self, users: &UserDb, message: &[u8]) -> Result<ScramStep, ScramError> {
        let message =
            std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","   (RFC 5802 §7)
        let (flag, rest) = message
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        let gs2_header = &message[..flag.len() + authzid.len() + 2];
        let cb_data: &[u8] = match flag {
            // The client does not support channel binding: fine for the
            // non-PLUS mechanism only.
            "n" if !self.plus => &[],
            // The client supports channel binding but believes we do not.
            // If we offered -PLUS (we do whenever TLS bindings exist),
            // someone stripped it from CAPA: a downgrade (RFC 5802 §6).
            "y" if !self.plus && self.bindings.any() => {
                return Err(ScramError::ChannelBinding("downgrade detected (flag y)"));
            }
            "y" if !self.plus => &[],
            "n" | "y" => {
                return Err(ScramError::ChannelBinding(
                    "SCRAM-SHA-256-PLUS needs p=<binding type>",
                ));
            }
            _ if !self.plus => {
                return Err(ScramError::ChannelBinding(
                    "channel binding requested with the non-PLUS mechanism",
                ));
            }
            p => match p.strip_prefix("p=") {
                Some("tls-exporter") => self
                    .bindings
                    .tls_exporter
                    .as_deref()
                    .ok_or(ScramError::ChannelBinding("tls-exporter unavailable"))?,
                Some("tls-server-end-point") => self
                    .bindings
                    .tls_server_end_point
                    .as_deref()
                    .ok_or(ScramError::ChannelBinding("tls-server-end-point unavailable"))?,
                Some(_) => return Err(ScramError::ChannelBinding("unsupported binding type")),
                None => return Err(ScramError::Malformed("bad gs2-cbind-flag")),
            },
        };
        let authzid = match authzid {
            "" => None,
            a => Some(decode_saslname(
                a.strip_prefix("a=")
                    .ok_or(ScramError::Malformed("bad authzid"))?,
            )?),
        };
        // client-first-message-bare = [reserved-mext ","] username "," nonce
        if bare.starts_with("m=") {
            return Err(ScramError::Malformed("mandatory extension not supported"));
        }
        let mut attrs = bare.split(',');
        let user = attrs
            .next()
            .and_then(|a| a.strip_prefix("n="))
            .ok_or(ScramError::Malformed("no username"))?;
        let user = decode_saslname(user)?;
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("bad nonce"));
        }
        if user.is_empty() {
            return Err(ScramError::Malformed("empty username"));
        }
        if authzid.as_deref().is_some_and(|a| a != user) {
            return Err(ScramError::AuthzidNotSupported);
        }
        let found = users
            .scram_secret(&user)
            .map_err(|e| ScramError::Temporary(e.to_string()))?;
        let (secret, real) = match found {
            Some(secret) => (secret, true),
            None => (ScramSecret::mock(&user), false),
        };
        self.user = Some(user.clone());
        let nonce = format!("{client_nonce}{}", self.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&secret.salt),
            secret.iterations
        );
        let mut cbind_input = gs2_header.as_bytes().to_vec();
        cbind_input.extend_from_slice(cb_data);
        self.state = State::Final {
            user,
            secret,
            real,
            cbind_input,
            auth_prefix: format!("{bare},{server_first}"),
            nonce,
        };
        Ok(ScramStep::Challenge(server_first.into_bytes()))
    }
}

fn client_final(
    message: &[u8],
    user: &str,
    secret: &ScramSecret,
    real: bool,
    cbind_input: &[u8],
    auth_prefix: &str,
    nonce: &str,
) -> Result<ScramStep, ScramError> {
    let message = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    // client-final-message = channel-binding "," nonce ["," extensions] "," proof
    let (without_proof, proof) = message
        .rsplit_once(",p=")
        .ok_or(ScramError::Malformed("no proof"))?;
    let mut attrs = without_proof.split(',');
    let cbind = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or(ScramError::Malformed("no channel binding"))?;
    let their_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed("no nonce"))?;
    let cbind = BASE64
        .decode(cbind)
        .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
    // RFC 5802 §6: c= must be the gs2 header plus, for p=, the binding data
    // of *this* TLS connection. A MITM terminating TLS has different data.
    if !bool::from(cbind.ct_eq(cbind_input)) {
        return Err(ScramError::ChannelBinding("channel binding data mismatch"));
    }
    if their_nonce != nonce {
        return Err(ScramError::Malformed("nonce mismatch"));
    }
    let proof = BASE64
        .decode(proof)
        .map_err(|_| ScramError::Malformed("proof is not base64"))?;
    let auth_message = format!("{auth_prefix},{without_proof}");
    let client_signature = hmac_sha256(&secret.stored_key, auth_message.as_bytes());
    if proof.len() != KEY_LEN {
        return Err(ScramError::InvalidProof);
    }
    // ClientKey = ClientProof XOR ClientSignature (RFC 5802 §3); it is a
    // password-equivalent for this user, so it lives in a zeroizing Secret.
    let client_key = Secret::new(
        proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect(),
    );
    let ok = bool::from(sha256(client_key.as_bytes()).ct_eq(&secret.stored_key));
    if !(ok && real) {
        return Err(ScramError::InvalidProof);
    }
    let server_signature = hmac_sha256(&secret.server_key, auth_message.as_bytes());
    // Minting site: the client proved the key derived from the password.
    #[allow(clippy::disallowed_methods)]
    let authenticated = Authenticated::vouched_by_auth(user, Credential::Password);
    Ok(ScramStep::Success {
        authenticated,
        server_final: format!("v={}", BASE64.encode(server_signature)).into_bytes(),
    })
}

impl From<ScramError> for AuthError {
    fn from(e: ScramError) -> Self {
        match e {
            ScramError::Temporary(t) => AuthError::Temporary(t),
            _ => AuthError::InvalidCredentials,
        }
    }
}

/// RFC 5802 §5.1: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return Err(ScramError::Malformed("bad =XX escape in name"));
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    let rounds = std::num::NonZeroU32::new(iterations.max(1)).expect("max(1) is non-zero");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, password, &mut out);
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// Client side of SCRAM-SHA-256, for tests and the benchmark tool (and a
/// future fetcher): computes the client-final message for a server-first.
#[derive(Debug)]
pub struct ScramClient {
    gs2_header: String,
    cb_data: Vec<u8>,
    client_first_bare: String,
    client_nonce: String,
}

impl ScramClient {
    /// `cb` is `None` for `n,,` or `Some((type, data))` for `p=type,,`.
    #[must_use]
    pub fn new(user: &str, client_nonce: &str, cb: Option<(&str, &[u8])>) -> Self {
        let (gs2_header, cb_data) = match cb {
            None => ("n,,".to_owned(), Vec::new()),
            Some((kind, data)) => (format!("p={kind},,"), data.to_vec()),
        };
        let name = user.replace('=', "=3D").replace(',', "=2C");
        Self {
            gs2_header,
            cb_data,
            client_first_bare: format!("n={name},r={client_nonce}"),
            client_nonce: client_nonce.to_owned(),
        }
    }

    /// The client-first message.
    #[must_use]
    pub fn client_first(&self) -> String {
        format!("{}{}", self.gs2_header, self.client_first_bare)
    }

    /// The client-final message and the expected server-final, or `None`
    /// when the server-first is malformed or its nonce does not extend ours.
    #[must_use]
    pub fn client_final(&self, password: &[u8], server_first: &str) -> Option<(String, String)> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_at_checked(2)? {
                ("r=", v) => nonce = Some(v),
                ("s=", v) => salt = BASE64.decode(v).ok(),
                ("i=", v) => iterations = v.parse().ok(),
                _ => {}
            }
        }
        let (nonce, salt, iterations) = (nonce?, salt?, iterations?);
        if !nonce.starts_with(&self.client_nonce) {
            return None;
        }
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cb_data);
        let without_proof = format!("c={},r={nonce}", BASE64.encode(cbind));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        // RFC 5802 §2.2: Hi(Normalize(password), salt, i); a password
        // SASLprep rejects is used as is (it cannot match a pobox secret).
        let prepared = crate::saslprep::prepare(password);
        let salted = salted_password(prepared.as_deref().unwrap_or(password), &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let signature = hmac_sha256(&sha256(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(a, b)| a ^ b).collect();
        let server_key = hmac_sha256(&salted, b"Server Key");
        let server_final = format!(
            "v={}",
            BASE64.encode(hmac_sha256(&server_key, auth_message.as_bytes()))
        );
        Some((
            format!("{without_proof},p={}", BASE64.encode(proof)),
            server_final,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3 example: user "user", password "pencil".
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_db() -> (tempfile::TempDir, UserDb) {
        let dir = tempfile::tempdir().unwrap();
        let secret = ScramSecret::derive_with(b"pencil", &BASE64.decode(RFC_SALT).unwrap(), 4096);
        let path = dir.path().join("passwd");
        std::fs::write(&path, format!("user:{}\n", secret.to_dovecot())).unwrap();
        (dir, UserDb::open(path))
    }

    #[test]
    fn rfc7677_server_side_vectors() {
        let (_dir, db) = rfc_db();
        let mut server =
            ScramServer::with_nonce(false, ChannelBindings::default(), RFC_SERVER_NONCE);
        let ScramStep::Challenge(first) = server.step(&db, RFC_CLIENT_FIRST.as_bytes()).unwrap()
        else {
            panic!("expected a challenge")
        };
        assert_eq!(String::from_utf8(first).unwrap(), RFC_SERVER_FIRST);
        match server.step(&db, RFC_CLIENT_FINAL.as_bytes()).unwrap() {
            ScramStep::Success {
                authenticated,
                server_final,
            } => {
                assert_eq!(authenticated.user(), "user");
                assert_eq!(String::from_utf8(server_final).unwrap(), RFC_SERVER_FINAL);
            }
            ScramStep::Challenge(_) => panic!("expected success"),
        }
        assert!(matches!(server.step(&db, b"x"), Err(ScramError::Finished)));
    }

    #[test]
    fn rfc7677_client_side_vectors() {
        let client = ScramClient::new("user", "rOprNGfwEbeRWgbNEkqO", None);
        assert_eq!(client.client_first(), RFC_CLIENT_FIRST);
        let (fin, server_final) = client.client_final(b"pencil", RFC_SERVER_FIRST).unwrap();
        assert_eq!(fin, RFC_CLIENT_FINAL);
        assert_eq!(server_final, RFC_SERVER_FINAL);
    }

    #[test]
    fn dovecot_string_roundtrip_and_password_check() {
        let s = ScramSecret::derive_with(b"pencil", &BASE64.decode(RFC_SALT).unwrap(), 4096);
        let text = s.to_dovecot();
        assert!(text.starts_with("{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,"));
        let parsed = ScramSecret::parse(text.strip_prefix("{SCRAM-SHA-256}").unwrap()).unwrap();
        assert_eq!(parsed, s);
        assert!(parsed.verify_password(b"pencil"));
        assert!(!parsed.verify_password(b"pencil2"));
        assert!(ScramSecret::parse("100,AAAA,AAAA,AAAA").is_err(), "too few rounds");
        assert!(ScramSecret::parse("4096,AAAA,AAAA").is_err());
        assert!(!format!("{s:?}").contains(&BASE64.encode(s.stored_key)));
    }

    fn exchange(
        db: &UserDb,
        plus: bool,
        server_cb: ChannelBindings,
        user: &str,
        password: &[u8],
        client_cb: Option<(&str, &[u8])>,
    ) -> Result<ScramStep, ScramError> {
        let client = ScramClient::new(user, "abcdefgh", client_cb);
        let mut server = ScramServer::new(plus, server_cb);
        let ScramStep::Challenge(first) = server.step(db, client.client_first().as_bytes())? else {
            panic!("challenge")
        };
        let first = String::from_utf8(first).unwrap();
        let (fin, expected_final) = client.client_final(password, &first).unwrap();
        let step = server.step(db, fin.as_bytes())?;
        if let ScramStep::Success { server_final, .. } = &step {
            assert_eq!(server_final, expected_final.as_bytes());
        }
        Ok(step)
    }

    /// A non-ASCII password set with `user add` logs in through SCRAM (the
    /// client normalises, RFC 5802 §2.2), PLAIN and USER/PASS (both end in
    /// `UserDb::verify`), whether the client sends it as typed or prepared.
    #[test]
    fn non_ascii_password_works_for_scram_plain_and_pass_alike() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(dir.path().join("passwd"));
        let typed = "\u{FF30}ässwörd\u{00A0}1";
        db.add("alice", typed.as_bytes()).unwrap();
        for pw in [typed, "Pässwörd 1"] {
            let step = exchange(&db, false, ChannelBindings::default(), "alice", pw.as_bytes(), None);
            assert!(matches!(step, Ok(ScramStep::Success { .. })), "SCRAM {pw:?}: {step:?}");
            let mut plain = b"\0alice\0".to_vec();
            plain.extend_from_slice(pw.as_bytes());
            // The decoder the POP3 session runs on AUTH PLAIN.
            let (authcid, password) = pobox_proto::pop3::server::decode_plain(&plain).unwrap();
            assert!(db.verify(&authcid, password.as_bytes()).is_ok(), "PLAIN {pw:?}");
            assert!(db.verify("alice", pw.as_bytes()).is_ok(), "PASS {pw:?}");
        }
        let step = exchange(&db, false, ChannelBindings::default(), "alice", "Pässwörd 2".as_bytes(), None);
        assert!(step.is_err(), "{step:?}");
    }

    #[test]
    fn wrong_password_and_unknown_user_both_fail_at_the_proof() {
        let (_dir, db) = rfc_db();
        let none = ChannelBindings::default;
        assert!(matches!(
            exchange(&db, false, none(), "user", b"pencil", None),
            Ok(ScramStep::Success { .. })
        ));
        assert!(matches!(
            exchange(&db, false, none(), "user", b"wrong", None),
            Err(ScramError::InvalidProof)
        ));
        assert!(matches!(
            exchange(&db, false, none(), "nobody", b"pencil", None),
            Err(ScramError::InvalidProof)
        ));
        // The unknown user's salt is stable, so repeating the first message
        // does not reveal that it is made up.
        let first = |user: &str| {
            let mut s = ScramServer::with_nonce(false, none(), "X");
            match s.step(&db, format!("n,,n={user},r=abc").as_bytes()).unwrap() {
                ScramStep::Challenge(c) => String::from_utf8(c).unwrap(),
                ScramStep::Success { .. } => unreachable!(),
            }
        };
        assert_eq!(first("ghost"), first("ghost"));
        assert_ne!(first("ghost"), first("ghost2"));
        assert!(first("ghost").ends_with(&format!(",i={ITERATIONS}")));
    }

    #[test]
    fn channel_binding_rules() {
        let (_dir, db) = rfc_db();
        let cb = ChannelBindings {
            tls_exporter: Some(vec![7; 32]),
            tls_server_end_point: Some(vec![9; 32]),
        };
        let ok = |r: Result<ScramStep, ScramError>| matches!(r, Ok(ScramStep::Success { .. }));
        assert!(ok(exchange(&db, true, cb.clone(), "user", b"pencil", Some(("tls-exporter", &[7; 32])))));
        assert!(ok(exchange(&db, true, cb.clone(), "user", b"pencil", Some(("tls-server-end-point", &[9; 32])))));
        // A MITM's TLS session has other binding data.
        assert!(matches!(
            exchange(&db, true, cb.clone(), "user", b"pencil", Some(("tls-exporter", &[8; 32]))),
            Err(ScramError::ChannelBinding(_))
        ));
        // -PLUS without binding, binding with non-PLUS, unknown type.
        let mut s = ScramServer::new(true, cb.clone());
        assert!(matches!(s.step(&db, b"n,,n=user,r=a"), Err(ScramError::ChannelBinding(_))));
        let mut s = ScramServer::new(false, cb.clone());
        assert!(matches!(s.step(&db, b"p=tls-exporter,,n=user,r=a"), Err(ScramError::ChannelBinding(_))));
        let mut s = ScramServer::new(true, cb.clone());
        assert!(matches!(s.step(&db, b"p=tls-unique,,n=user,r=a"), Err(ScramError::ChannelBinding(_))));
        // "y" while we offer -PLUS: downgrade.
        let mut s = ScramServer::new(false, cb);
        assert!(matches!(s.step(&db, b"y,,n=user,r=a"), Err(ScramError::ChannelBinding(_))));
        // "y" on cleartext (nothing to offer): fine.
        let mut s = ScramServer::new(false, ChannelBindings::default());
        assert!(s.step(&db, b"y,,n=user,r=a").is_ok());
    }

    #[test]
    fn malformed_messages() {
        let (_dir, db) = rfc_db();
        for bad in [
            &b""[..],
            b"n,",
            b"n,,",
            b"n,,r=abc",
            b"n,,n=user",
            b"n,,m=ext,n=user,r=a",
            b"x,,n=user,r=a",
            b"n,,n=us=zzer,r=a",
            b"n,a=other,n=user,r=a",
            b"\xff,,n=user,r=a",
        ] {
            let mut s = ScramServer::new(false, ChannelBindings::default());
            assert!(s.step(&db, bad).is_err(), "{bad:?}");
        }
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
    }
    /// A failing RNG must end the exchange with a temporary error before
    /// any challenge is sent, never offer a predictable (zero) nonce.
    #[test]
    fn rng_failure_is_a_temporary_error_never_a_zero_nonce() {
        let (_dir, db) = rfc_db();
        let mut server = ScramServer::with_random(false, ChannelBindings::default(), |_| {
            Err(ring::error::Unspecified)
        });
        match server.step(&db, RFC_CLIENT_FIRST.as_bytes()) {
            Err(ScramError::Temporary(why)) => assert!(why.contains("RNG"), "{why}"),
            other => panic!("expected a temporary error, got {other:?}"),
        }
        // The exchange is over: nothing more is answered.
        assert!(matches!(
            server.step(&db, RFC_CLIENT_FIRST.as_bytes()),
            Err(ScramError::Finished)
        ));
    }

    /// The nonce `new` offers comes from the RNG: 18 random bytes, base64,
    /// different every time (a zero or constant nonce fails this).
    #[test]
    fn server_nonces_are_random() {
        let (_dir, db) = rfc_db();
        let zero = BASE64.encode([0u8; 18]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..8 {
            let mut server = ScramServer::new(false, ChannelBindings::default());
            let Ok(ScramStep::Challenge(first)) = server.step(&db, RFC_CLIENT_FIRST.as_bytes())
            else {
                panic!("challenge")
            };
            let first = String::from_utf8(first).unwrap();
            let nonce = first
                .strip_prefix("r=rOprNGfwEbeRWgbNEkqO")
                .and_then(|r| r.split(',').next())
                .unwrap()
                .to_owned();
            assert_eq!(nonce.len(), 24, "{first}");
            assert_ne!(nonce, zero);
            seen.insert(nonce);
        }
        assert_eq!(seen.len(), 8, "server nonces repeat");
    }
}
