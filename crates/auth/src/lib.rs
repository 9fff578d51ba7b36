//! Users and credentials for pobox.
//!
//! What this crate does:
//!
//! * keeps the user database, a Dovecot-compatible passwd-file
//!   ([`UserDb`]), reloading it when it changes on disk and editing it
//!   atomically (`pobox user add/passwd/del`);
//! * verifies passwords in the schemes Dovecot writes ([`hash`]) and hashes
//!   new ones with Argon2id;
//! * checks RFC 1939 `APOP` digests ([`UserDb::verify_apop`]);
//! * keeps per-device app passwords beside the passwd-file ([`apppass`]),
//!   generated here, revocable one by one, scoped to protocols;
//! * runs the server side of SCRAM-SHA-256(-PLUS) as a pure step machine
//!   ([`scram`]) and validates OAuth 2.0 bearer tokens (JWT against a JWKS
//!   file) for OAUTHBEARER and XOAUTH2 ([`oauth`]);
//! * mints [`Authenticated`], the only proof of a successful login. Its field
//!   is private, so code outside this crate cannot fabricate one, and the
//!   server can only open a mailbox for a user who really authenticated.
//!
//! What it does not do:
//!
//! * no network, no async, no tokio. Every call is blocking and password
//!   verification is deliberately slow (Argon2: tens of milliseconds in a
//!   release build); the server calls it inside `spawn_blocking`, behind a
//!   concurrency limit;
//! * no rate limiting or lockout after failed logins, and no logging of
//!   failed attempts: that is the server's job, which knows the peer address;
//! * no mail storage access; the only pobox crate it uses is `pobox-proto`,
//!   for the shared [`Secret`] type;
//! * no SASL framing (challenges, `*` cancel): the session in `pobox-proto`
//!   frames the exchange, the server feeds each decoded message to the
//!   mechanism here;
//! * no proxy authorization (authzid ≠ authcid), no network (the JWKS is a
//!   file).
//!
//! No error message or `Debug` output of this crate contains a password or a
//! password hash.
//!
//! # Example
//!
//! ```
//! use pobox_auth::{AuthError, UserDb};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("passwd");
//! let db = UserDb::open(&path); // a missing file is an empty database
//! db.add("alice", b"correct horse")?; // what `pobox user add` does
//!
//! let proof = db.verify("alice", b"correct horse")?;
//! assert_eq!(proof.user(), "alice");
//! assert!(matches!(db.verify("alice", b"wrong"), Err(AuthError::InvalidCredentials)));
//! assert!(matches!(db.verify("bob", b"correct horse"), Err(AuthError::InvalidCredentials)));
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! * [`userdb`]: the passwd-file, its reload and atomic edits; the verifiers.
//! * [`apppass`]: app passwords (`<passwd-file>.apppass`).
//! * [`hash`]: `{SCHEME}` parsing, hashing and verification.
//! * [`saslprep`]: RFC 4013 SASLprep, applied on every password path.
//! * [`secret`]: re-exports `pobox_proto`'s zeroizing, redacted [`Secret`].

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod apppass;
pub mod hash;
pub mod oauth;
pub mod saslprep;
pub mod scram;
pub mod secret;
pub mod userdb;

pub use apppass::{AppPasswordInfo, NewAppPassword};
pub use secret::Secret;
pub use userdb::{HashedAdd, LoadWarning, UserDb, UserDbError, UserEntry, valid_username};

/// Proof that a user authenticated.
///
/// Only this crate creates values of this type (from [`UserDb::verify`] and
/// [`UserDb::verify_apop`]), so a function that takes `&Authenticated` cannot
/// be reached without a successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    user: String,
    credential: Credential,
}

/// Which of the user's credentials proved the login: what the login
/// history records, so "which device took my mail" has an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// The main password of the passwd-file line, or a secret derived from
    /// it (SCRAM, APOP).
    Password,
    /// The app password with this label ([`apppass`]).
    AppPassword(String),
}

impl Credential {
    /// `password`, or the app password's label (labels cannot be
    /// `password` or `oauth`, see [`apppass::valid_label`]).
    #[must_use]
    pub fn label(&self) -> &str {
        match self {
            Credential::Password => "password",
            Credential::AppPassword(label) => label,
        }
    }
}

impl Authenticated {
    /// Only for this crate's verifiers: a login with the main password.
    fn new(user: &str) -> Self {
        Self {
            user: user.to_owned(),
            credential: Credential::Password,
        }
    }

    /// Only for this crate's verifiers: a login with an app password.
    fn with_app_password(user: &str, label: &str) -> Self {
        Self {
            user: user.to_owned(),
            credential: Credential::AppPassword(label.to_owned()),
        }
    }

    /// The credential that proved this login. A bearer token (OAUTHBEARER,
    /// XOAUTH2) reports [`Credential::Password`] here; the server, which
    /// knows the mechanism, labels those logins `oauth`.
    #[must_use]
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The authenticated user's name, exactly as it appears in the passwd-file.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// Why authentication did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Wrong password **or** unknown user, indistinguishable on purpose so
    /// the reply cannot be used to enumerate users. POP3: `-ERR [AUTH]`.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The user database could not be read (I/O error, permissions). Not the
    /// client's fault; retrying later may work. POP3: `-ERR [SYS/TEMP]`. The
    /// text is for the log (it names the file), not for the client.
    #[error("temporary authentication failure: {0}")]
    Temporary(String),
    /// The request cannot be served for this user, e.g. APOP for a user
    /// whose password is stored hashed. The text is for the log.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl AuthError {
    /// True for [`AuthError::Temporary`]: the server should answer with a
    /// temporary error (`[SYS/TEMP]`, LMTP 4.x.x) rather than a rejection.
    #[must_use]
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Temporary(_))
    }
}
