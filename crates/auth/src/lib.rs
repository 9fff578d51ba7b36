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
//! * mints [`Authenticated`] (type from `pobox-identity`), the only proof
//!   of a successful login, at each successful verification. Its fields are
//!   private and its constructor is fenced in `clippy.toml`, so code outside
//!   these verifiers cannot fabricate one, and the server can only open a
//!   maildrop (`pobox_store::Mailstore::open`) for a user who really
//!   authenticated.
//!
//! What it does not do:
//!
//! * no network, no async, no tokio. Every call is blocking and password
//!   verification is deliberately slow (Argon2: tens of milliseconds in a
//!   release build); the server calls it inside `spawn_blocking`, behind a
//!   concurrency limit;
//! * no rate limiting or lockout after failed logins, and no logging of
//!   failed attempts: that is the server's job, which knows the peer address;
//! * no mail storage access; the only pobox crates it uses are
//!   `pobox-proto`, for the shared [`Secret`] type, and `pobox-identity`,
//!   for the proof it mints;
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

/// The proof of a successful login and the credential that gave it. The
/// type lives in `pobox-identity` (so `pobox-store` can demand it without
/// depending on this crate); this crate is the only place that mints one,
/// in its verifiers: [`UserDb::verify`], [`UserDb::verify_apop`], the SCRAM
/// final step ([`scram`]) and bearer-token validation ([`oauth`]).
pub use pobox_identity::{Authenticated, Credential};

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
