//! The user database: a Dovecot-compatible passwd-file.
//!
//! # Format
//!
//! One user per line, fields separated by `:`, as Dovecot's `passwd-file`
//! driver reads it:
//!
//! ```text
//! # comment
//! alice:{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$...
//! bob:{SHA512-CRYPT}$6$...:1000:1000::/home/bob::userdb_quota_rule=*:storage=1G
//! ```
//!
//! The first two fields (user, `{SCHEME}hash`; see [`crate::hash`]) are
//! used, and one extra field (see below). Later fields (uid, gid, gecos,
//! home, shell, extra fields) may be absent; when present they are kept
//! unchanged when a line is rewritten.
//!
//! # SCRAM secrets
//!
//! A SCRAM-SHA-256 verifier cannot be computed from an Argon2 hash, so
//! [`UserDb::add`] and [`UserDb::set_password`] store it beside the hash, as
//! the extra field (8th field, space-separated `key=value` tokens, as in
//! Dovecot) `scram={SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey`:
//!
//! ```text
//! alice:{ARGON2ID}$argon2id$...::::::scram={SCRAM-SHA-256}10000,c2FsdA==,...,...
//! ```
//!
//! Why an extra field and not a second line or file: the file stays one
//! line per user and valid for Dovecot, which ignores passdb extra fields
//! it does not know; the value is Dovecot's own scheme string, so moving it
//! into the password field gives Dovecot SCRAM too. A password field that is
//! itself `{SCRAM-SHA-256}` (what Dovecot writes) also serves SCRAM.
//!
//! # OAuth subjects
//!
//! An `oauth_sub=<subject>` token in the same extra field maps a token's
//! `sub` claim (the identifier the identity provider assigns and never
//! reassigns) to this user, for OAUTHBEARER/XOAUTH2 logins
//! ([`UserDb::user_for_oauth_subject`], used by [`crate::oauth`]). A user
//! may have several; a subject claimed by two lines belongs to the first
//! (the second is reported as a [`LoadWarning`]). Dovecot ignores the token.
//!
//! ```text
//! alice:{ARGON2ID}$argon2id$...::::::oauth_sub=248289761001
//! ```
//!
//! Each user's line also has a fingerprint (SHA-256 of the line,
//! [`UserDb::fingerprint`]): caches of successful logins compare it to
//! notice that the user's entry changed.
//! Blank lines and lines whose first non-blank character is `#` are ignored.
//! CRLF line endings are tolerated.
//!
//! A line that cannot be used (not UTF-8, no `:`, empty or invalid user name,
//! unknown scheme, malformed hash, duplicate user) is skipped and reported as
//! a [`LoadWarning`] with its 1-based line number; every other user keeps
//! working. For a duplicate, the first valid line wins, as in Dovecot.
//!
//! User names are matched **exactly** (case-sensitively, no normalisation):
//! `Alice` and `alice` are different users, as they are in Dovecot's
//! passwd-file. A server that wants case-insensitive logins must lowercase
//! names itself, both here and when storing users.
//!
//! # Reloading
//!
//! Every query stats the file (device, inode, size, mtime, ctime) and
//! re-parses it when any of them changed, so a running server sees
//! `pobox user add` without a restart. The mutation methods below always
//! replace the file (new inode), so their changes are always seen. An external
//! in-place edit that keeps the size identical within the file system's
//! timestamp granularity (a few milliseconds) could be missed until the next
//! change; editors that save via rename, and appends, are always seen.
//!
//! # Mutations
//!
//! [`UserDb::add`], [`UserDb::set_password`] and [`UserDb::remove`] each:
//!
//! 1. hash the new password (before taking any lock: Argon2 is slow);
//! 2. take an exclusive `flock(2)` on the sibling file `<file>.lock`, so
//!    concurrent `pobox user ...` runs serialise instead of losing lines;
//! 3. re-read the file from disk (never trusting the cache);
//! 4. write `<file>.tmp.<pid>` in the same directory, `fsync` it, `rename` it
//!    over the file and `fsync` the directory, so a crash leaves either the old
//!    or the new file, never a torn one.
//!
//! A new file is created with mode 0600; an existing file's mode and owner are
//! carried over (so `root` running the CLI does not make the file unreadable
//! for the unprivileged server). Lines that do not name the user being edited
//! are written back byte for byte, malformed ones included.
//!
//! The lock file is never deleted (deleting lock files reintroduces the race
//! they prevent); it must be writable by whoever runs the mutations.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use md5::{Digest as _, Md5};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroize as _;

use sha2::Sha256;

use crate::hash::{self, StoredPassword};
use crate::saslprep;
use crate::scram::ScramSecret;
use crate::{AuthError, Authenticated, Credential};

/// Longest user name [`valid_username`] accepts, in bytes.
pub const MAX_USERNAME_LEN: usize = 64;

/// Mode of a passwd-file created by this module: it holds password hashes.
const NEW_FILE_MODE: u32 = 0o600;

/// Is `name` acceptable as a user name?
///
/// 1 to [`MAX_USERNAME_LEN`] bytes from `A-Z a-z 0-9 . _ @ -`, not starting
/// with `.` or `-`. The restrictions exist because the name travels further
/// than this file:
///
/// * `:` is the passwd-file field separator, and whitespace or control
///   characters would make POP3 `USER` lines and logs ambiguous;
/// * `/` and a leading `.` would let a name escape or hide in the mail
///   store's directory tree (`..`, `.hidden`);
/// * a leading `-` reads as an option to command-line tools;
/// * `+` is reserved for sub-addresses (`user+tag@domain` delivers to `user`).
#[must_use]
pub fn valid_username(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=MAX_USERNAME_LEN).contains(&bytes.len())
        && !matches!(bytes[0], b'.' | b'-')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// A passwd-file line that was skipped when loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadWarning {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong. Never contains the password field.
    pub reason: String,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A user as listed by [`UserDb::entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// The user name.
    pub name: String,
    /// The upper-cased `{SCHEME}` label as written in the file, e.g.
    /// `ARGON2ID`, `SHA512-CRYPT`, `PLAIN.B64`, or `CRYPT` for a bare crypt
    /// string.
    pub scheme: String,
}

/// What [`UserDb::add_hashed`] did for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashedAdd {
    /// A line was added.
    Added,
    /// The user was there with this very password field.
    Same,
    /// The user was there with another password; left unchanged.
    Different,
}

/// Why a mutation of the passwd-file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserDbError {
    /// The name fails [`valid_username`].
    #[error(
        "invalid user name {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ @ -, not starting with '.' or '-'"
    )]
    InvalidName(String),
    /// The app-password label fails [`crate::apppass::valid_label`].
    #[error(
        "invalid label {0:?}: use 1-32 characters from A-Z a-z 0-9 . _ -, not starting with '.' or '-', not 'password' or 'oauth'"
    )]
    InvalidLabel(String),
    /// The user already has an app password with this label.
    #[error("an app password labelled {0} already exists (revoke it first)")]
    LabelExists(String),
    /// The user has no app password with this label.
    #[error("no app password labelled {0}")]
    LabelNotFound(String),
    /// The user has [`crate::apppass::MAX_PER_USER`] app passwords already.
    #[error("at most {0} app passwords per user; revoke one first")]
    TooManyAppPasswords(usize),
    /// A protocol name app passwords cannot be limited to.
    #[error("unknown protocol {0:?} (app passwords log in to: pop3)")]
    UnknownProtocol(String),
    /// [`UserDb::add`] found a line for this user already.
    #[error("user {0} already exists")]
    Exists(String),
    /// [`UserDb::set_password`] or [`UserDb::remove`] found no line for this user.
    #[error("no such user: {0}")]
    NotFound(String),
    /// An empty password was given; it could never be used to log in
    /// (RFC 4616 requires a non-empty password, and `PASS` needs an argument).
    #[error("the password must not be empty")]
    EmptyPassword,
    /// The password is longer than [`hash::MAX_PASSWORD_LEN`] bytes; it
    /// could be stored but never verified.
    #[error("the password is longer than {} bytes", hash::MAX_PASSWORD_LEN)]
    PasswordTooLong,
    /// SASLprep (RFC 4013) rejects the password: a control or other
    /// prohibited character, mixed right-to-left text, or a code point
    /// unassigned in Unicode 3.2 (most emoji). Not quoted: it is a password.
    #[error(
        "the password has characters SASLprep (RFC 4013) does not allow (control characters, mixed-direction text, or characters newer than Unicode 3.2 such as most emoji)"
    )]
    PasswordNotSaslprep,
    /// Reading, locking or replacing the file failed. The message names the
    /// operation and the path.
    #[error("{0}")]
    Io(io::Error),
}

/// A Dovecot-compatible passwd-file, reloaded automatically when it changes.
///
/// Cheap to share: wrap it in an `Arc` and call it from any thread. All
/// methods are blocking (file I/O, and password hashing that takes tens of
/// milliseconds); async callers should use `spawn_blocking`.
///
/// See the [module documentation](self) for the file format, reloading and
/// how mutations stay atomic.
pub struct UserDb {
    path: PathBuf,
    cache: Mutex<Cache>,
    /// The app-password file beside it ([`crate::apppass`]).
    apps: Mutex<crate::apppass::AppCache>,
}

/// What the file looked like when it was last parsed.
struct Cache {
    /// `None` until the first successful load.
    stamp: Option<FileStamp>,
    /// Shared with callers so that slow verification runs without the lock.
    snapshot: Arc<Snapshot>,
}

/// Enough of `stat(2)` to notice a change: a rename gives a new inode, an
/// append a new size, an in-place edit a new mtime/ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileStamp {
    Missing,
    Present {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
}

impl FileStamp {
    pub(crate) fn of(meta: &fs::Metadata) -> Self {
        Self::Present {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// One parsed version of the file.
#[derive(Default)]
struct Snapshot {
    users: HashMap<String, StoredPassword>,
    /// SCRAM verifiers, from the `scram=` extra field or a `{SCRAM-SHA-256}`
    /// password field.
    scram: HashMap<String, ScramSecret>,
    /// SHA-256 of each user's line.
    fingerprints: HashMap<String, [u8; 32]>,
    /// OAuth `sub` → user, from `oauth_sub=` extra-field tokens.
    oauth_subjects: HashMap<String, String>,
    /// User names in file order, for listing.
    order: Vec<String>,
    warnings: Vec<LoadWarning>,
}

impl UserDb {
    /// A database backed by the passwd-file at `path`.
    ///
    /// Nothing is read yet: the file is loaded on first use, and a missing
    /// file is a database with zero users (it is created by the first
    /// [`add`](Self::add)). Never fails and never panics; problems surface as
    /// errors from the query methods.
    #[must_use]
    pub fn open(path: impl Into<PathBuf>) -> UserDb {
        UserDb {
            path: path.into(),
            cache: Mutex::new(Cache {
                stamp: None,
                snapshot: Arc::default(),
            }),
            apps: crate::apppass::new_cache(),
        }
    }

    /// The app-password cache (for [`crate::apppass`]).
    pub(crate) fn app_cache(&self) -> &Mutex<crate::apppass::AppCache> {
        &self.apps
    }

    /// The passwd-file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks `password` for `user` (exact, case-sensitive name match):
    /// first against the user's app password for POP3 whose id the password
    /// carries, if it has an app password's shape (see [`crate::apppass`]),
    /// then against the main password. At most two hash verifications.
    /// The proof names the credential that matched.
    ///
    /// For an unknown user a full Argon2id verification against a fixed
    /// dummy hash still runs, so the response time does not reveal whether
    /// the user exists. The dummy has the cost of [`hash::hash_password`]
    /// hashes; users with imported hashes of a different cost remain
    /// distinguishable by timing until their password is re-set.
    ///
    /// # Errors
    ///
    /// * [`AuthError::InvalidCredentials`] for a wrong password **or** an
    ///   unknown user, deliberately indistinguishable.
    /// * [`AuthError::Temporary`] when the passwd-file exists but cannot be
    ///   read; the server should answer `-ERR [SYS/TEMP]`.
    pub fn verify(&self, user: &str, password: &[u8]) -> Result<Authenticated, AuthError> {
        let snapshot = self.snapshot()?;
        // SASLprep form first, then the raw bytes when they differ (hashes
        // made before normalisation); an unknown user costs the same number
        // of dummy verifications, so timing still does not reveal existence.
        let candidates = saslprep::candidates(password);
        let app = if snapshot.users.contains_key(user) {
            self.check_app_password(user, password, "pop3")
        } else {
            crate::apppass::AppCheck::NoCandidate
        };
        if let crate::apppass::AppCheck::Valid(label) = &app {
            // Minting site: the app password with this label checked out.
            #[allow(clippy::disallowed_methods)]
            let proof = Authenticated::vouched_by_auth(user, Credential::AppPassword(label.clone()));
            return Ok(proof);
        }
        match snapshot.users.get(user) {
            Some(stored) if candidates.iter().any(|c| stored.verify(c)) => {
                // Minting site: the passwd-file's password checked out.
                #[allow(clippy::disallowed_methods)]
                let proof = Authenticated::vouched_by_auth(user, Credential::Password);
                Ok(proof)
            }
            Some(_) => match app {
                // The app-password file could not be read: maybe it was one.
                crate::apppass::AppCheck::Temporary(e) => Err(AuthError::Temporary(e)),
                _ => Err(AuthError::InvalidCredentials),
            },
            None => {
                for c in &candidates {
                    hash::verify_dummy(c);
                }
                Err(AuthError::InvalidCredentials)
            }
        }
    }

    /// Checks an RFC 1939 §7 `APOP` digest: `digest_hex` must be the MD5 of
    /// `timestamp` (the `<...>` string from the server's greeting, brackets
    /// included) followed by the user's cleartext password, in hex. Upper-case
    /// hex is accepted too.
    ///
    /// Only entries with a `{PLAIN}`/`{CLEAR}`/`{CLEARTEXT}` password can be
    /// checked, since the client proves knowledge of the cleartext.
    ///
    /// # Errors
    ///
    /// * [`AuthError::InvalidCredentials`]: unknown user, wrong digest, or a
    ///   digest that is not 32 hex digits.
    /// * [`AuthError::Unsupported`]: the user exists but has a hashed
    ///   password. This reveals that the user exists, so the server should
    ///   send the client the same reply as for `InvalidCredentials` and only
    ///   log the difference (or not offer APOP at all).
    /// * [`AuthError::Temporary`]: the passwd-file cannot be read.
    pub fn verify_apop(
        &self,
        user: &str,
        timestamp: &str,
        digest_hex: &str,
    ) -> Result<Authenticated, AuthError> {
        let snapshot = self.snapshot()?;
        let Some(stored) = snapshot.users.get(user) else {
            return Err(AuthError::InvalidCredentials);
        };
        let Some(secret) = stored.cleartext() else {
            return Err(AuthError::Unsupported(format!(
                "APOP needs a cleartext {{PLAIN}} password; this user has {{{}}}",
                stored.label()
            )));
        };
        let Ok(claimed) = hex::decode(digest_hex) else {
            return Err(AuthError::InvalidCredentials);
        };
        // The client digests its cleartext, SASLprep'd or not: accept both.
        let matches = saslprep::candidates(secret.as_bytes()).iter().any(|cleartext| {
            let expected = Md5::new()
                .chain_update(timestamp.as_bytes())
                .chain_update(cleartext)
                .finalize();
            // The length of `claimed` is attacker-chosen and public, so the
            // early exit of slice `ct_eq` on a length mismatch leaks nothing.
            bool::from(expected.as_slice().ct_eq(&claimed))
        });
        if matches {
            // Minting site: the APOP digest of the cleartext password matched.
            #[allow(clippy::disallowed_methods)]
            let proof = Authenticated::vouched_by_auth(user, Credential::Password);
            Ok(proof)
        } else {
            Err(AuthError::InvalidCredentials)
        }
    }

    /// The SCRAM-SHA-256 verifier of `user`, if the user exists and has one.
    ///
    /// # Errors
    /// [`AuthError::Temporary`] when the passwd-file cannot be read.
    pub fn scram_secret(&self, user: &str) -> Result<Option<ScramSecret>, AuthError> {
        Ok(self.snapshot()?.scram.get(user).cloned())
    }

    /// The user whose line maps the OAuth subject `subject` (an
    /// `oauth_sub=` extra-field token, compared exactly), if any.
    ///
    /// # Errors
    /// [`AuthError::Temporary`] when the passwd-file cannot be read.
    pub fn user_for_oauth_subject(&self, subject: &str) -> Result<Option<String>, AuthError> {
        Ok(self.snapshot()?.oauth_subjects.get(subject).cloned())
    }

    /// True when at least one user has a SCRAM verifier, i.e. when offering
    /// `SASL SCRAM-SHA-256` can succeed for someone.
    ///
    /// # Errors
    /// [`AuthError::Temporary`] when the passwd-file cannot be read.
    pub fn has_scram(&self) -> Result<bool, AuthError> {
        Ok(!self.snapshot()?.scram.is_empty())
    }

    /// SHA-256 of `user`'s line as currently in the file (after reloading
    /// if it changed), combined with the user's app-password lines when
    /// there are any, or `None` for an unknown user. It changes whenever
    /// the line does (new password, new SCRAM secret, removal) and when an
    /// app password is added or revoked, so a cache of successful logins
    /// keyed on it drops stale entries by itself.
    ///
    /// # Errors
    /// [`AuthError::Temporary`] when the passwd-file cannot be read.
    pub fn fingerprint(&self, user: &str) -> Result<Option<[u8; 32]>, AuthError> {
        let Some(line) = self.snapshot()?.fingerprints.get(user).copied() else {
            return Ok(None);
        };
        Ok(Some(match self.app_fingerprint(user) {
            None => line,
            Some(apps) => Sha256::new().chain_update(line).chain_update(apps).finalize().into(),
        }))
    }

    /// Whether `user` has a usable entry (exact name match). For delivery:
    /// is this a local user?
    ///
    /// # Errors
    ///
    /// [`AuthError::Temporary`] when the passwd-file cannot be read; delivery
    /// should answer with a temporary failure (LMTP 4.x.x), not "no such user".
    pub fn exists(&self, user: &str) -> Result<bool, AuthError> {
        Ok(self.snapshot()?.users.contains_key(user))
    }

    /// All user names with a usable entry, in file order.
    ///
    /// # Errors
    ///
    /// [`AuthError::Temporary`] when the passwd-file cannot be read.
    pub fn list(&self) -> Result<Vec<String>, AuthError> {
        Ok(self.snapshot()?.order.clone())
    }

    /// Like [`list`](Self::list), with each user's password scheme.
    ///
    /// # Errors
    ///
    /// [`AuthError::Temporary`] when the passwd-file cannot be read.
    pub fn entries(&self) -> Result<Vec<UserEntry>, AuthError> {
        let snapshot = self.snapshot()?;
        Ok(snapshot
            .order
            .iter()
            .map(|name| UserEntry {
                name: name.clone(),
                scheme: snapshot.users[name].label().to_owned(),
            })
            .collect())
    }

    /// The lines skipped by the most recent load, after reloading if the file
    /// changed. If the file cannot be read now, the warnings of the last
    /// successful load are returned (the read error itself surfaces from the
    /// other methods).
    #[must_use]
    pub fn warnings(&self) -> Vec<LoadWarning> {
        match self.snapshot() {
            Ok(snapshot) => snapshot.warnings.clone(),
            Err(_) => self.lock_cache().snapshot.warnings.clone(),
        }
    }

    /// Adds `user` with `password`, hashed with [`hash::hash_password`].
    ///
    /// # Errors
    ///
    /// * [`UserDbError::InvalidName`] if `user` fails [`valid_username`].
    /// * [`UserDbError::EmptyPassword`].
    /// * [`UserDbError::Exists`] if any line already names `user`, even a
    ///   malformed one (use [`set_password`](Self::set_password) to repair it).
    /// * [`UserDbError::Io`] if the file cannot be locked, read or replaced; the
    ///   file is then unchanged.
    ///
    /// # Panics
    ///
    /// Only if the operating system's RNG fails (see [`hash::hash_password`]).
    pub fn add(&self, user: &str, password: &[u8]) -> Result<(), UserDbError> {
        let password = &*check_args(user, password)?;
        let entry = format!(
            "{user}:{}::::::{SCRAM_FIELD}{}",
            hash::hash_password(password),
            ScramSecret::derive(password).to_dovecot()
        );
        self.edit(|lines| {
            if lines
                .iter()
                .any(|line| line_user(line) == Some(user.as_bytes()))
            {
                return Err(UserDbError::Exists(user.to_owned()));
            }
            lines.push(entry.into_bytes());
            Ok(())
        })
    }

    /// Adds users whose passwords are already hashed (`{SCHEME}value`, or a
    /// bare crypt string), as another server stored them: `pobox import
    /// dovecot`. One rewrite of the file for all of them. A user who
    /// already has a line is left as it is; the outcome says whether that
    /// line's password field is the one given.
    ///
    /// # Errors
    ///
    /// * [`UserDbError::InvalidName`] for a name failing [`valid_username`].
    /// * [`UserDbError::Io`] for a stored value holding `:` or a line break
    ///   (it would break the file), or as for [`add`](Self::add); the file
    ///   is then unchanged.
    pub fn add_hashed(&self, entries: &[(&str, &str)]) -> Result<Vec<HashedAdd>, UserDbError> {
        for (user, stored) in entries {
            if !valid_username(user) {
                return Err(UserDbError::InvalidName((*user).to_owned()));
            }
            if stored.is_empty() || stored.contains([':', '\n', '\r']) {
                return Err(UserDbError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the stored password of {user} is empty or holds ':' or a line break"),
                )));
            }
        }
        let mut outcomes = Vec::with_capacity(entries.len());
        self.edit_if(|lines| {
            for (user, stored) in entries {
                let existing = lines.iter().find(|line| line_user(line) == Some(user.as_bytes()));
                let outcome = match existing {
                    Some(line) => {
                        let body = strip_cr(line);
                        let field = body.split(|&b| b == b':').nth(1).unwrap_or_default();
                        if field == stored.as_bytes() { HashedAdd::Same } else { HashedAdd::Different }
                    }
                    None => {
                        lines.push(format!("{user}:{stored}").into_bytes());
                        HashedAdd::Added
                    }
                };
                outcomes.push(outcome);
            }
            Ok(outcomes.contains(&HashedAdd::Added))
        })?;
        Ok(outcomes)
    }

    /// Replaces `user`'s password with a new [`hash::hash_password`] hash.
    ///
    /// Rewrites the password field of the first line naming `user`, keeping
    /// that line's other fields. This also repairs a line that was skipped as
    /// malformed (say, an unsupported `{MD5-CRYPT}` hash), which becomes the
    /// user's entry again.
    ///
    /// # Errors
    ///
    /// * [`UserDbError::InvalidName`], [`UserDbError::EmptyPassword`].
    /// * [`UserDbError::NotFound`] if no line names `user`.
    /// * [`UserDbError::Io`] as for [`add`](Self::add).
    ///
    /// # Panics
    ///
    /// Only if the operating system's RNG fails (see [`hash::hash_password`]).
    pub fn set_password(&self, user: &str, password: &[u8]) -> Result<(), UserDbError> {
        let password = &*check_args(user, password)?;
        let hashed = hash::hash_password(password);
        let scram = ScramSecret::derive(password).to_dovecot();
        self.edit(|lines| {
            let line = lines
                .iter_mut()
                .find(|line| line_user(line) == Some(user.as_bytes()))
                .ok_or_else(|| UserDbError::NotFound(user.to_owned()))?;
            *line = set_scram_field(&replace_password_field(line, hashed.as_bytes()), &scram);
            Ok(())
        })
    }

    /// Removes `user`: every line naming `user` is deleted, so a later
    /// duplicate cannot take over, and a malformed line for the name goes too.
    ///
    /// # Errors
    ///
    /// * [`UserDbError::InvalidName`].
    /// * [`UserDbError::NotFound`] if no line names `user`.
    /// * [`UserDbError::Io`] as for [`add`](Self::add).
    pub fn remove(&self, user: &str) -> Result<(), UserDbError> {
        if !valid_username(user) {
            return Err(UserDbError::InvalidName(user.to_owned()));
        }
        self.edit(|lines| {
            let before = lines.len();
            lines.retain(|line| line_user(line) != Some(user.as_bytes()));
            if lines.len() == before {
                return Err(UserDbError::NotFound(user.to_owned()));
            }
            Ok(())
        })?;
        self.remove_app_passwords(user)
    }

    /// The current parse of the file, reloading it first if it changed.
    fn snapshot(&self) -> Result<Arc<Snapshot>, AuthError> {
        let mut cache = self.lock_cache();
        let stamp = match fs::metadata(&self.path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(err) if err.kind() == io::ErrorKind::NotFound => FileStamp::Missing,
            Err(err) => return Err(self.temporary("stat", &err)),
        };
        if cache.stamp == Some(stamp) {
            return Ok(Arc::clone(&cache.snapshot));
        }
        let (stamp, mut content) = match File::open(&self.path) {
            Ok(mut file) => {
                // Stamp what was actually read (fstat of the open file), not
                // the earlier stat: if the file was replaced in between, the
                // next call notices the difference and reloads again.
                let meta = file.metadata().map_err(|e| self.temporary("stat", &e))?;
                let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
                file.read_to_end(&mut content)
                    .map_err(|e| self.temporary("read", &e))?;
                (FileStamp::of(&meta), content)
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => (FileStamp::Missing, Vec::new()),
            Err(err) => return Err(self.temporary("open", &err)),
        };
        let snapshot = Arc::new(parse(&content));
        // `{PLAIN}` lines hold cleartext passwords; the parsed copies live in
        // `Secret`s, the raw buffer should not linger on the heap.
        content.zeroize();
        for warning in &snapshot.warnings {
            tracing::warn!(
                path = %self.path.display(),
                line = warning.line,
                reason = %warning.reason,
                "passwd-file line skipped"
            );
        }
        tracing::debug!(
            path = %self.path.display(),
            users = snapshot.order.len(),
            skipped = snapshot.warnings.len(),
            "passwd-file loaded"
        );
        cache.stamp = Some(stamp);
        cache.snapshot = Arc::clone(&snapshot);
        Ok(snapshot)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock cannot leave the cache half-updated
        // (both fields are assigned after all fallible work), so a poisoned
        // lock is safe to use.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn temporary(&self, op: &str, err: &io::Error) -> AuthError {
        AuthError::Temporary(format!(
            "cannot {op} passwd-file {}: {err}",
            self.path.display()
        ))
    }

    /// Read-modify-write of the passwd-file; see the module documentation.
    fn edit(
        &self,
        change: impl FnOnce(&mut Vec<Vec<u8>>) -> Result<(), UserDbError>,
    ) -> Result<(), UserDbError> {
        self.edit_file_if(&self.path.clone(), |lines| change(lines).map(|()| true))
    }

    /// [`edit`](Self::edit), where `change` says whether it changed
    /// anything: `Ok(false)` leaves the file as it is (not even replaced).
    fn edit_if(
        &self,
        change: impl FnOnce(&mut Vec<Vec<u8>>) -> Result<bool, UserDbError>,
    ) -> Result<(), UserDbError> {
        self.edit_file_if(&self.path.clone(), change)
    }

    /// Read-modify-write of `path` (the passwd-file or the app-password
    /// file) under the passwd-file's lock. A new file takes the
    /// passwd-file's mode and owner (0600 when neither exists).
    pub(crate) fn edit_file(
        &self,
        path: &Path,
        change: impl FnOnce(&mut Vec<Vec<u8>>) -> Result<(), UserDbError>,
    ) -> Result<(), UserDbError> {
        self.edit_file_if(path, |lines| change(lines).map(|()| true))
    }

    /// [`edit_file`](Self::edit_file), where `change` says whether it
    /// changed anything: `Ok(false)` leaves the file as it is.
    fn edit_file_if(
        &self,
        path: &Path,
        change: impl FnOnce(&mut Vec<Vec<u8>>) -> Result<bool, UserDbError>,
    ) -> Result<(), UserDbError> {
        let lock_path = sibling(&self.path, ".lock");
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(NEW_FILE_MODE)
            .open(&lock_path)
            .map_err(|e| io_context("open lock file", &lock_path, &e))?;
        lock.lock()
            .map_err(|e| io_context("lock", &lock_path, &e))?;

        // Write next to the real file if the configured path is a symlink:
        // renaming over the link would replace it with a regular file.
        let target = match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                fs::canonicalize(path).map_err(|e| io_context("resolve", path, &e))?
            }
            _ => path.to_path_buf(),
        };
        let (mut content, meta) = match File::open(&target) {
            Ok(mut file) => {
                let meta = file
                    .metadata()
                    .map_err(|e| io_context("stat", &target, &e))?;
                let mut content = Vec::new();
                file.read_to_end(&mut content)
                    .map_err(|e| io_context("read", &target, &e))?;
                (content, Some(meta))
            }
            // A new app-password file: the passwd-file's owner and mode,
            // never readable by others (it holds hashes too).
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                (Vec::new(), fs::metadata(&self.path).ok().filter(|_| path != self.path))
            }
            Err(err) => return Err(io_context("open", &target, &err)),
        };

        let mut lines = split_lines(&content);
        content.zeroize(); // may hold `{PLAIN}` cleartext, see `snapshot`
        let changed = change(&mut lines);
        let mut output = lines.join(&b'\n');
        lines.zeroize();
        if !changed? {
            output.zeroize();
            return Ok(());
        }
        if !output.is_empty() {
            output.push(b'\n');
        }
        let mask = if path == self.path { 0o7777 } else { 0o660 };
        let result = replace_file(&target, &output, meta.as_ref(), mask);
        output.zeroize();
        result
        // `lock` is dropped here, after the rename: closing it releases the flock.
    }
}

impl fmt::Debug for UserDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Checks a new user name and password; returns the password's SASLprep
/// form, which is what gets hashed (so it matches what logins verify first).
fn check_args<'a>(user: &str, password: &'a [u8]) -> Result<Cow<'a, [u8]>, UserDbError> {
    if !valid_username(user) {
        return Err(UserDbError::InvalidName(user.to_owned()));
    }
    if password.is_empty() {
        return Err(UserDbError::EmptyPassword);
    }
    let prepared = saslprep::prepare(password).ok_or(UserDbError::PasswordNotSaslprep)?;
    if prepared.is_empty() {
        return Err(UserDbError::EmptyPassword);
    }
    if password.len() > hash::MAX_PASSWORD_LEN || prepared.len() > hash::MAX_PASSWORD_LEN {
        return Err(UserDbError::PasswordTooLong);
    }
    Ok(prepared)
}

/// Parses the whole file. Never fails: bad lines become warnings.
fn parse(content: &[u8]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    // Where each user was first defined, for duplicate warnings.
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (index, raw) in split_lines(content).iter().enumerate() {
        let line_no = index + 1;
        let mut warn = |reason: String| {
            snapshot.warnings.push(LoadWarning {
                line: line_no,
                reason,
            });
        };
        let line = strip_cr(raw);
        if is_blank_or_comment(line) {
            continue;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            warn("not valid UTF-8".into());
            continue;
        };
        let Some((name, rest)) = line.split_once(':') else {
            warn("no ':' after the user name".into());
            continue;
        };
        if name.is_empty() {
            warn("empty user name".into());
            continue;
        }
        // Not echoed: an invalid "name" may well be a password typed into the
        // wrong field.
        if !valid_username(name) {
            warn("invalid user name (allowed: A-Z a-z 0-9 . _ @ -, at most 64, no leading '.' or '-')".into());
            continue;
        }
        let field = rest.split(':').next().unwrap_or_default();
        let stored = match StoredPassword::parse(field) {
            Ok(stored) => stored,
            Err(err) => {
                warn(format!("user {name}: {err}"));
                continue;
            }
        };
        if let Some(first) = first_line.get(name) {
            warn(format!(
                "duplicate entry for user {name}; line {first} is used"
            ));
            continue;
        }
        let extra = rest.splitn(7, ':').nth(6).unwrap_or_default();
        let mut scram = stored.scram().cloned();
        for token in extra.split(' ') {
            if let Some(value) = token.strip_prefix(SCRAM_FIELD) {
                match value
                    .strip_prefix("{SCRAM-SHA-256}")
                    .ok_or("not a {SCRAM-SHA-256} value")
                    .and_then(ScramSecret::parse)
                {
                    Ok(secret) => scram = Some(secret),
                    // The password still works; only SCRAM is off for them.
                    Err(reason) => warn(format!("user {name}: scram field ignored: {reason}")),
                }
            } else if let Some(subject) = token.strip_prefix(OAUTH_SUB_FIELD) {
                match snapshot.oauth_subjects.get(subject) {
                    _ if subject.is_empty() => warn(format!("user {name}: empty oauth_sub ignored")),
                    Some(owner) if owner != name => warn(format!(
                        "user {name}: oauth_sub {subject:?} already belongs to user {owner}; ignored"
                    )),
                    _ => {
                        snapshot.oauth_subjects.insert(subject.to_owned(), name.to_owned());
                    }
                }
            }
        }
        if let Some(secret) = scram {
            snapshot.scram.insert(name.to_owned(), secret);
        }
        snapshot
            .fingerprints
            .insert(name.to_owned(), Sha256::digest(line.as_bytes()).into());
        first_line.insert(name.to_owned(), line_no);
        snapshot.order.push(name.to_owned());
        snapshot.users.insert(name.to_owned(), stored);
    }
    snapshot
}

/// Splits on `\n`, without a phantom empty line after a final newline.
/// Lines keep a trailing `\r`, so rewriting preserves CRLF files.
fn split_lines(content: &[u8]) -> Vec<Vec<u8>> {
    let content = content.strip_suffix(b"\n").unwrap_or(content);
    if content.is_empty() {
        return Vec::new();
    }
    content.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_blank_or_comment(line: &[u8]) -> bool {
    match line.iter().find(|b| !b.is_ascii_whitespace()) {
        None => true,
        Some(&first) => first == b'#',
    }
}

/// The user-name field of a line, for matching during mutations: anything
/// before the first `:` on a line that is not blank or a comment.
fn line_user(line: &[u8]) -> Option<&[u8]> {
    let line = strip_cr(line);
    if is_blank_or_comment(line) {
        return None;
    }
    let colon = line.iter().position(|&b| b == b':')?;
    Some(&line[..colon])
}

/// `name:old:rest...` → `name:new:rest...`, keeping a trailing `\r`.
/// Only called on lines for which [`line_user`] found a `:`.
fn replace_password_field(line: &[u8], new: &[u8]) -> Vec<u8> {
    let had_cr = line.ends_with(b"\r");
    let body = strip_cr(line);
    let (name, rest) = body.split_at(body.iter().position(|&b| b == b':').unwrap_or(body.len()));
    let rest = rest.get(1..).unwrap_or_default(); // after the first ':'
    let tail = rest
        .iter()
        .position(|&b| b == b':')
        .map_or(&[][..], |i| &rest[i..]);
    let mut out = Vec::with_capacity(line.len() + new.len());
    out.extend_from_slice(name);
    out.push(b':');
    out.extend_from_slice(new);
    out.extend_from_slice(tail);
    if had_cr {
        out.push(b'\r');
    }
    out
}

/// The extra-field key holding the SCRAM verifier.
const SCRAM_FIELD: &str = "scram=";

/// The extra-field key mapping an OAuth `sub` claim to the user.
const OAUTH_SUB_FIELD: &str = "oauth_sub=";

/// Sets the `scram=` token in the 8th (extra) field of `line`, adding the
/// missing empty fields, and keeping every other token and a trailing `\r`.
fn set_scram_field(line: &[u8], scram: &str) -> Vec<u8> {
    let had_cr = line.ends_with(b"\r");
    let body = String::from_utf8_lossy(strip_cr(line)).into_owned();
    let mut fields: Vec<String> = body.splitn(8, ':').map(str::to_owned).collect();
    fields.resize(8, String::new());
    let mut tokens: Vec<&str> = fields[7]
        .split(' ')
        .filter(|t| !t.is_empty() && !t.starts_with(SCRAM_FIELD))
        .collect();
    let token = format!("{SCRAM_FIELD}{scram}");
    tokens.push(&token);
    let extra = tokens.join(" ");
    fields[7] = extra;
    let mut out = fields.join(":").into_bytes();
    if had_cr {
        out.push(b'\r');
    }
    out
}

/// `path` with `suffix` appended to its file name (`passwd` → `passwd.lock`).
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Atomically replaces `path` with `content`: temp file, fsync, rename, fsync
/// of the directory. `existing` is the old file's metadata, whose mode and
/// owner the new file inherits.
fn replace_file(
    path: &Path,
    content: &[u8],
    existing: Option<&fs::Metadata>,
    mode_mask: u32,
) -> Result<(), UserDbError> {
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    // We hold the lock, so a file by this name is debris from a crashed
    // process that had our pid; nobody else can be writing it.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_context("remove stale", &tmp, &err)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(NEW_FILE_MODE)
        .open(&tmp)
        .map_err(|e| io_context("create", &tmp, &e))?;
    let guard = RemoveOnDrop(Some(tmp.clone()));

    if let Some(meta) = existing {
        let created = file.metadata().map_err(|e| io_context("stat", &tmp, &e))?;
        if (created.uid(), created.gid()) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| io_context("chown", &tmp, &e))?;
        }
        // After chown, which may clear set-id bits; fchmod ignores the umask.
        file.set_permissions(fs::Permissions::from_mode(meta.permissions().mode() & mode_mask))
            .map_err(|e| io_context("chmod", &tmp, &e))?;
    }
    file.write_all(content)
        .map_err(|e| io_context("write", &tmp, &e))?;
    file.sync_all().map_err(|e| io_context("fsync", &tmp, &e))?;
    drop(file);

    // The passwd-file's atomic replace, not a Maildir write (clippy.toml).
    #[allow(clippy::disallowed_methods)]
    fs::rename(&tmp, path).map_err(|e| io_context("rename over", path, &e))?;
    guard.disarm();

    // The rename is only durable once the directory entry is on disk.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_context("fsync directory", dir, &e))?;
    Ok(())
}

/// Deletes the temp file if the replacement fails before the rename.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: the original error is what the caller needs to see.
            let _ = fs::remove_file(path);
        }
    }
}

fn io_context(op: &str, path: &Path, err: &io::Error) -> UserDbError {
    UserDbError::Io(io::Error::new(
        err.kind(),
        format!("cannot {op} {}: {err}", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// Fast schemes for tests that are not about hashing; doveadm output for
    /// the password "correct horse".
    const ALICE: &str = "alice:{PLAIN}correct horse";
    const BOB_SHA512: &str = "bob:{SHA512}VraY3v7bWkNbY0r+MyC7rz/c2SC2xQOkRvx7endrKY1HnRumqLYXgI6wv1ec6aldZoNHvKtxSQhayTyyeZUZew==";
    const PW: &[u8] = b"correct horse";

    fn db_with(content: &str) -> (tempfile::TempDir, UserDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, content).unwrap();
        let db = UserDb::open(&path);
        (dir, db)
    }

    fn read(db: &UserDb) -> String {
        fs::read_to_string(db.path()).unwrap()
    }

    #[test]
    fn valid_usernames() {
        for ok in [
            "a",
            "alice",
            "a.b",
            "a_b",
            "a-b",
            "alice@example.org",
            "A1",
            "_x",
            "@x",
        ] {
            assert!(valid_username(ok), "{ok}");
        }
        assert!(valid_username(&"x".repeat(64)));
        for bad in [
            "", ".alice", "-alice", "a+tag", "a:b", "a/b", "a b", "a\tb", "a\nb", "ä", "..",
            "a\0b", "a%b", "a\\b",
        ] {
            assert!(!valid_username(bad), "{bad:?}");
        }
        assert!(!valid_username(&"x".repeat(65)));
    }

    #[test]
    fn missing_file_is_an_empty_db() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(dir.path().join("nope"));
        assert_eq!(db.list().unwrap(), Vec::<String>::new());
        assert!(!db.exists("alice").unwrap());
        assert!(db.warnings().is_empty());
        assert!(matches!(
            db.verify("alice", PW),
            Err(AuthError::InvalidCredentials)
        ));
    }

    #[test]
    fn unreadable_file_is_a_temporary_error() {
        // A directory where the file should be: open succeeds on Linux but
        // read fails (EISDIR), independent of running as root.
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(dir.path());
        let err = db.verify("alice", PW).unwrap_err();
        assert!(matches!(err, AuthError::Temporary(_)), "{err:?}");
        assert!(err.is_temporary());
        assert!(matches!(db.exists("alice"), Err(AuthError::Temporary(_))));
        // A path below a regular file: ENOTDIR from stat.
        let file = dir.path().join("f");
        fs::write(&file, "").unwrap();
        let db = UserDb::open(file.join("passwd"));
        assert!(matches!(db.list(), Err(AuthError::Temporary(_))));
        assert!(db.warnings().is_empty());
    }

    #[test]
    fn parses_dovecot_lines_with_trailing_fields() {
        let (_dir, db) = db_with(&format!(
            "# users\n\n{ALICE}:1000:1000::/home/alice::userdb_mail=maildir:~/Maildir\n   \n{BOB_SHA512}\n"
        ));
        assert_eq!(db.list().unwrap(), ["alice", "bob"]);
        assert!(db.warnings().is_empty());
        assert_eq!(db.verify("alice", PW).unwrap().user(), "alice");
        assert_eq!(db.verify("bob", PW).unwrap().user(), "bob");
        assert_eq!(
            db.entries().unwrap(),
            [
                UserEntry {
                    name: "alice".into(),
                    scheme: "PLAIN".into()
                },
                UserEntry {
                    name: "bob".into(),
                    scheme: "SHA512".into()
                },
            ]
        );
    }

    #[test]
    fn oauth_subjects_map_to_their_first_line() {
        let (_dir, db) = db_with(&format!(
            "{ALICE}::::::userdb_x=1 oauth_sub=248289761001 oauth_sub=auth0|5f1c\n\
             {BOB_SHA512}::::::oauth_sub=248289761001 oauth_sub= oauth_sub=b-42\n\
             carol:{{PLAIN}}x\n"
        ));
        let map = |s: &str| db.user_for_oauth_subject(s).unwrap();
        assert_eq!(map("248289761001").as_deref(), Some("alice"));
        assert_eq!(map("auth0|5f1c").as_deref(), Some("alice"));
        assert_eq!(map("b-42").as_deref(), Some("bob"));
        for none in ["carol", "alice", "", "24828976100"] {
            assert_eq!(map(none), None, "{none:?}");
        }
        let warnings = db.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].reason.contains("already belongs to user alice"), "{warnings:?}");
        assert!(warnings[1].reason.contains("empty oauth_sub"), "{warnings:?}");
        assert!(db.verify("bob", PW).is_ok(), "the line itself still works");
    }

    #[test]
    fn crlf_lines_are_accepted() {
        let (_dir, db) = db_with(&format!("{ALICE}\r\n{BOB_SHA512}\r\n"));
        assert!(db.verify("alice", PW).is_ok());
        assert!(db.verify("bob", PW).is_ok());
        assert!(db.warnings().is_empty());
    }

    #[test]
    fn wrong_password_and_unknown_user_look_the_same() {
        let (_dir, db) = db_with(&format!("{ALICE}\n"));
        let wrong = db.verify("alice", b"correct horsE").unwrap_err();
        let unknown = db.verify("mallory", PW).unwrap_err();
        assert!(matches!(wrong, AuthError::InvalidCredentials));
        assert!(matches!(unknown, AuthError::InvalidCredentials));
        assert_eq!(wrong.to_string(), unknown.to_string());
        // Exact, case-sensitive match.
        assert!(matches!(
            db.verify("Alice", PW),
            Err(AuthError::InvalidCredentials)
        ));
        assert!(!db.exists("Alice").unwrap());
        // Invalid names are simply unknown users.
        assert!(matches!(
            db.verify("../alice", PW),
            Err(AuthError::InvalidCredentials)
        ));
    }

    #[test]
    fn malformed_lines_are_skipped_with_line_numbers() {
        let content = [
            "# header",                      // 1
            ALICE,                           // 2
            "no-colon-here",                 // 3
            ":{PLAIN}x",                     // 4
            "carol:{MD5-CRYPT}$1$abc$def",   // 5
            "dave:{SHA512}bm90IGEgZGlnZXN0", // 6
            "eve+tag:{PLAIN}x",              // 7
            "alice:{PLAIN}other",            // 8: duplicate
            "frank:secretpassword",          // 9: bare value = CRYPT
            BOB_SHA512,                      // 10
        ]
        .join("\n");
        let (_dir, db) = db_with(&content);
        let warnings = db.warnings();
        let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9], "{warnings:#?}");
        assert!(warnings[0].reason.contains("no ':'"));
        assert!(warnings[1].reason.contains("empty user name"));
        assert!(warnings[2].reason.contains("MD5-CRYPT"), "{}", warnings[2]);
        assert!(warnings[3].reason.contains("user dave"));
        assert!(warnings[5].reason.contains("line 2 is used"));
        assert_eq!(
            warnings[0].to_string(),
            format!("line 3: {}", warnings[0].reason)
        );
        // No warning quotes a password field.
        for w in &warnings {
            for secret in ["bm90IGEgZGlnZXN0", "secretpassword", "other", "$1$abc$def"] {
                assert!(!w.reason.contains(secret), "{w}");
            }
        }
        // Everyone else still works; the first alice line wins.
        assert_eq!(db.list().unwrap(), ["alice", "bob"]);
        assert!(db.verify("alice", PW).is_ok());
        assert!(db.verify("alice", b"other").is_err());
        assert!(db.verify("bob", PW).is_ok());
        assert!(!db.exists("carol").unwrap());
    }

    #[test]
    fn non_utf8_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let mut content = b"j\xfcrgen:{PLAIN}x\n".to_vec();
        content.extend_from_slice(ALICE.as_bytes());
        fs::write(&path, content).unwrap();
        let db = UserDb::open(&path);
        assert_eq!(
            db.warnings(),
            [LoadWarning {
                line: 1,
                reason: "not valid UTF-8".into()
            }]
        );
        assert!(db.verify("alice", PW).is_ok());
    }

    #[test]
    fn reloads_after_external_changes() {
        let (_dir, db) = db_with(&format!("{ALICE}\n"));
        assert!(!db.exists("bob").unwrap());

        // Append in place: same inode, new size.
        let mut file = OpenOptions::new().append(true).open(db.path()).unwrap();
        writeln!(file, "{BOB_SHA512}").unwrap();
        drop(file);
        assert!(db.exists("bob").unwrap());
        assert!(db.verify("bob", PW).is_ok());

        // Replace via rename, as editors and `pobox user` do: new inode.
        let tmp = db.path().with_extension("new");
        fs::write(&tmp, format!("{BOB_SHA512}\n")).unwrap();
        #[allow(clippy::disallowed_methods)]
        fs::rename(&tmp, db.path()).unwrap();
        assert_eq!(db.list().unwrap(), ["bob"]);
        assert!(matches!(
            db.verify("alice", PW),
            Err(AuthError::InvalidCredentials)
        ));

        // A malformed edit shows up in the warnings of the new load.
        fs::write(db.path(), format!("{BOB_SHA512}\nbroken\n")).unwrap();
        assert_eq!(db.warnings()[0].line, 2);

        // Deleting the file empties the db.
        fs::remove_file(db.path()).unwrap();
        assert!(db.list().unwrap().is_empty());
        assert!(db.warnings().is_empty());
    }

    #[test]
    fn apop_rfc1939_example() {
        // RFC 1939 §7: "S: +OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>",
        // "C: APOP mrose c4c9334bac560ecc979e58001b3e22fb", shared secret "tanstaaf".
        let (_dir, db) = db_with(&format!("mrose:{{PLAIN}}tanstaaf\n{BOB_SHA512}\n"));
        let ts = "<1896.697170952@dbc.mtview.ca.us>";
        let ok = db
            .verify_apop("mrose", ts, "c4c9334bac560ecc979e58001b3e22fb")
            .unwrap();
        assert_eq!(ok.user(), "mrose");
        // Upper-case hex is the same digest.
        assert!(
            db.verify_apop("mrose", ts, "C4C9334BAC560ECC979E58001B3E22FB")
                .is_ok()
        );
        for bad in [
            "c4c9334bac560ecc979e58001b3e22fc", // last digit off
            "c4c9334bac560ecc979e58001b3e22",   // too short
            "c4c9334bac560ecc979e58001b3e22fb00",
            "not hex at all",
            "",
        ] {
            assert!(
                matches!(
                    db.verify_apop("mrose", ts, bad),
                    Err(AuthError::InvalidCredentials)
                ),
                "{bad}"
            );
        }
        // A different greeting timestamp gives a different digest (replay).
        assert!(matches!(
            db.verify_apop(
                "mrose",
                "<1897.697170952@dbc.mtview.ca.us>",
                "c4c9334bac560ecc979e58001b3e22fb"
            ),
            Err(AuthError::InvalidCredentials)
        ));
        assert!(matches!(
            db.verify_apop("nobody", ts, "c4c9334bac560ecc979e58001b3e22fb"),
            Err(AuthError::InvalidCredentials)
        ));
        // Hashed password: APOP cannot work.
        let err = db
            .verify_apop("bob", ts, "c4c9334bac560ecc979e58001b3e22fb")
            .unwrap_err();
        assert!(matches!(err, AuthError::Unsupported(_)), "{err:?}");
        assert!(!err.to_string().contains("VraY3v7b"));
    }

    /// Fullwidth P and NO-BREAK SPACE: SASLprep maps them to "P" and " ".
    const INTL: &str = "\u{FF30}ässwörd\u{00A0}1";
    const INTL_PREPARED: &str = "Pässwörd 1";

    #[test]
    fn saslprep_new_password_logs_in_in_either_form() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(dir.path().join("passwd"));
        db.add("alice", INTL.as_bytes()).unwrap();
        assert!(db.verify("alice", INTL.as_bytes()).is_ok());
        assert!(db.verify("alice", INTL_PREPARED.as_bytes()).is_ok());
        // Decomposed ä (a + U+0308) is the same password after NFKC.
        assert!(db.verify("alice", "Pa\u{0308}sswörd 1".as_bytes()).is_ok());
        assert!(matches!(
            db.verify("alice", "Pässwörd  1".as_bytes()),
            Err(AuthError::InvalidCredentials)
        ));
        db.set_password("alice", "\u{2168}".as_bytes()).unwrap();
        assert!(db.verify("alice", b"IX").is_ok());
        assert!(db.verify("alice", "I\u{00AD}X".as_bytes()).is_ok());
        assert!(db.verify("alice", b"ix").is_err());
    }

    #[test]
    fn saslprep_rejected_new_passwords_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(dir.path().join("passwd"));
        for bad in ["pass\u{0007}word", "\u{0627}\u{0031}", "\u{00AD}"] {
            let err = db.add("alice", bad.as_bytes()).unwrap_err();
            assert!(
                matches!(err, UserDbError::PasswordNotSaslprep | UserDbError::EmptyPassword),
                "{err:?}"
            );
            assert!(!err.to_string().contains(bad));
        }
        assert!(matches!(
            db.add("alice", b"caf\xe9"),
            Err(UserDbError::PasswordNotSaslprep)
        ));
        assert!(!db.exists("alice").unwrap());
    }

    #[test]
    fn saslprep_legacy_hashes_of_raw_bytes_still_verify() {
        // Made before SASLprep (or imported from Dovecot, which does not
        // normalise): the raw bytes are tried after the prepared form.
        let (_dir, db) = db_with(&format!(
            "alice:{{PLAIN}}{INTL}\nbob:{{PLAIN}}a\x07b\ncarol:{{PLAIN}}{INTL_PREPARED}\n"
        ));
        assert!(db.verify("alice", INTL.as_bytes()).is_ok());
        // A client that normalises cannot match a hash of the raw form.
        assert!(db.verify("alice", INTL_PREPARED.as_bytes()).is_err());
        // SASLprep rejects it, but it is exactly the stored legacy password.
        assert!(db.verify("bob", "a\u{0007}b".as_bytes()).is_ok());
        assert!(db.verify("bob", "a\u{0008}b".as_bytes()).is_err());
        assert!(db.verify("carol", INTL.as_bytes()).is_ok());
        assert!(db.verify("carol", INTL_PREPARED.as_bytes()).is_ok());
        // Rejected passwords fail like any other wrong password.
        assert!(matches!(
            db.verify("carol", "Pässwörd 1\u{0007}".as_bytes()),
            Err(AuthError::InvalidCredentials)
        ));
        assert!(matches!(
            db.verify("nobody", INTL.as_bytes()),
            Err(AuthError::InvalidCredentials)
        ));
    }

    #[test]
    fn apop_accepts_digest_of_prepared_or_raw_cleartext() {
        let (_dir, db) = db_with(&format!("alice:{{PLAIN}}{INTL}\n"));
        let ts = "<1.2@example.org>";
        let digest = |pw: &str| hex::encode(Md5::new().chain_update(ts).chain_update(pw).finalize());
        assert!(db.verify_apop("alice", ts, &digest(INTL)).is_ok());
        assert!(db.verify_apop("alice", ts, &digest(INTL_PREPARED)).is_ok());
        assert!(db.verify_apop("alice", ts, &digest("Pässwörd 2")).is_err());
    }

    #[test]
    fn add_hashed_keeps_schemes_skips_existing_and_rewrites_only_when_new() {
        let (dir, db) = db_with(&format!("{ALICE}\n"));
        let path = dir.path().join("passwd");
        let out = db
            .add_hashed(&[("alice", "{PLAIN}correct horse"), ("bob", BOB_SHA512.split_once(':').unwrap().1), ("carol", "{PLAIN}other")])
            .unwrap();
        assert_eq!(out, [HashedAdd::Same, HashedAdd::Added, HashedAdd::Added]);
        assert!(db.verify("bob", PW).is_ok(), "the SHA512 hash verifies as it was");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("carol:{PLAIN}other\n"), "{text}");
        // Nothing new: the file is not even replaced.
        let ino = fs::metadata(&path).unwrap().ino();
        let out = db.add_hashed(&[("alice", "{PLAIN}changed"), ("carol", "{PLAIN}other")]).unwrap();
        assert_eq!(out, [HashedAdd::Different, HashedAdd::Same]);
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
        assert!(db.verify("alice", PW).is_ok(), "an existing password is left alone");
        // A value that would break the file, or a bad name: nothing written.
        assert!(matches!(db.add_hashed(&[("dave", "{PLAIN}a:b")]), Err(UserDbError::Io(_))));
        assert!(matches!(db.add_hashed(&[("-x", "{PLAIN}a")]), Err(UserDbError::InvalidName(_))));
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn add_set_password_remove_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(dir.path().join("passwd"));

        db.add("alice", b"first").unwrap();
        let mode = fs::metadata(db.path()).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "new file must not be world-readable");
        assert!(read(&db).starts_with("alice:{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(db.verify("alice", b"first").is_ok());

        db.set_password("alice", b"second").unwrap();
        assert!(db.verify("alice", b"second").is_ok());
        assert!(matches!(
            db.verify("alice", b"first"),
            Err(AuthError::InvalidCredentials)
        ));

        db.remove("alice").unwrap();
        assert!(!db.exists("alice").unwrap());
        assert_eq!(read(&db), "");
        // No temp files left behind; only the lock file.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["passwd", "passwd.lock"]);
    }

    #[test]
    fn mutation_errors() {
        let (_dir, db) = db_with(&format!("{ALICE}\ncarol:{{MD5-CRYPT}}$1$abc$def\n"));
        let before = read(&db);
        assert!(matches!(db.add("alice", b"x"), Err(UserDbError::Exists(n)) if n == "alice"));
        // A malformed line still occupies the name.
        assert!(matches!(db.add("carol", b"x"), Err(UserDbError::Exists(_))));
        assert!(matches!(
            db.add("a:b", b"x"),
            Err(UserDbError::InvalidName(_))
        ));
        assert!(matches!(
            db.add("new", b""),
            Err(UserDbError::EmptyPassword)
        ));
        assert!(matches!(
            db.add("new", &[b'x'; hash::MAX_PASSWORD_LEN + 1]),
            Err(UserDbError::PasswordTooLong)
        ));
        assert!(matches!(
            db.set_password("nobody", b"x"),
            Err(UserDbError::NotFound(_))
        ));
        assert!(matches!(
            db.set_password("bad name", b"x"),
            Err(UserDbError::InvalidName(_))
        ));
        assert!(matches!(db.remove("nobody"), Err(UserDbError::NotFound(_))));
        assert!(matches!(db.remove("-x"), Err(UserDbError::InvalidName(_))));
        assert_eq!(
            read(&db),
            before,
            "failed mutations must not touch the file"
        );
        assert!(
            UserDbError::InvalidName("a:b".into())
                .to_string()
                .contains("\"a:b\"")
        );
    }

    #[test]
    fn rewrite_preserves_other_lines_byte_for_byte() {
        let original = format!(
            "# managed by hand\r\n{ALICE}:1000:1000::/home/alice::userdb_mail=maildir:~/M\r\nthis line is broken\n\n{BOB_SHA512}:::\nno-final-newline:{{PLAIN}}x"
        );
        let (_dir, db) = db_with(&original);
        assert_eq!(db.warnings().len(), 1);

        db.set_password("alice", b"new password").unwrap();
        let text = read(&db);
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "# managed by hand\r");
        assert!(
            lines[1].starts_with("alice:{ARGON2ID}$argon2id$"),
            "{}",
            lines[1]
        );
        // Other fields and extra-field tokens kept; the SCRAM secret added.
        assert!(
            lines[1].contains(":1000:1000::/home/alice::userdb_mail=maildir:~/M scram={SCRAM-SHA-256}10000,"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with('\r'), "{}", lines[1]);
        assert_eq!(lines[2], "this line is broken");
        assert_eq!(lines[3], "");
        assert_eq!(lines[4], format!("{BOB_SHA512}:::"));
        assert_eq!(lines[5], "no-final-newline:{PLAIN}x");
        assert_eq!(lines[6], "", "file now ends with a newline");
        assert_eq!(lines.len(), 7);

        // The malformed line still is malformed, at the same line number.
        assert_eq!(db.warnings()[0].line, 3);
        assert!(db.verify("alice", b"new password").is_ok());
        assert!(db.verify("bob", PW).is_ok());

        db.add("zed", b"pw").unwrap();
        db.remove("bob").unwrap();
        let text = read(&db);
        assert!(text.contains("this line is broken\n"));
        assert!(!text.contains("bob:"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[lines.len() - 2], "no-final-newline:{PLAIN}x");
        assert!(
            lines[lines.len() - 1].starts_with("zed:{ARGON2ID}$"),
            "{text}"
        );
        assert_eq!(db.list().unwrap(), ["alice", "no-final-newline", "zed"]);
    }

    #[test]
    fn set_password_repairs_a_malformed_entry_and_remove_clears_duplicates() {
        let (_dir, db) = db_with(&format!(
            "carol:{{MD5-CRYPT}}$1$abc$def:1001\n{ALICE}\ncarol:{{PLAIN}}old\nalice:{{PLAIN}}dup\n"
        ));
        // Line 3 is carol's effective entry, line 1 is skipped.
        assert!(db.verify("carol", b"old").is_ok());
        db.set_password("carol", b"fixed").unwrap();
        let text = read(&db);
        assert!(text.starts_with("carol:{ARGON2ID}"), "{text}");
        // uid kept; empty fields filled up to the extra field with the SCRAM secret.
        assert!(text.lines().next().unwrap().contains(":1001:::::scram={SCRAM-SHA-256}"), "{text}");
        assert!(db.scram_secret("carol").unwrap().unwrap().verify_password(b"fixed"));
        assert!(db.verify("carol", b"fixed").is_ok());
        assert!(db.verify("carol", b"old").is_err());

        // Removing alice removes her duplicate too, so it cannot take over.
        db.remove("alice").unwrap();
        assert!(!db.exists("alice").unwrap());
        assert!(!read(&db).contains("alice"));
    }

    #[test]
    fn existing_mode_is_kept() {
        let (_dir, db) = db_with(&format!("{ALICE}\n"));
        fs::set_permissions(db.path(), fs::Permissions::from_mode(0o640)).unwrap();
        db.remove("alice").unwrap();
        let mode = fs::metadata(db.path()).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn symlinked_file_stays_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-passwd");
        fs::write(&real, format!("{ALICE}\n")).unwrap();
        let link = dir.path().join("passwd");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let db = UserDb::open(&link);
        db.remove("alice").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).unwrap(), "");
    }

    #[test]
    fn concurrent_adds_lose_no_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, "# hand-written header\n").unwrap();
        let threads = 4;
        let per_thread = 2;
        std::thread::scope(|scope| {
            for t in 0..threads {
                let path = &path;
                scope.spawn(move || {
                    // Separate UserDb values, as separate `pobox user add`
                    // processes would have; each has its own lock fd.
                    let db = UserDb::open(path);
                    for i in 0..per_thread {
                        db.add(&format!("u{t}-{i}"), b"pw").unwrap();
                    }
                });
            }
        });
        let db = UserDb::open(&path);
        let mut users = db.list().unwrap();
        users.sort();
        let mut expected: Vec<String> = (0..threads)
            .flat_map(|t| (0..per_thread).map(move |i| format!("u{t}-{i}")))
            .collect();
        expected.sort();
        assert_eq!(users, expected);
        assert!(read(&db).starts_with("# hand-written header\n"));
    }

    #[test]
    fn user_db_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<UserDb>();
        assert_send_sync::<Authenticated>();
    }
}
