//! App passwords: one generated password per device, each revocable on its
//! own and limited to the protocols it was made for.
//!
//! # Why
//!
//! POP3's classic support case is a forgotten phone that empties the
//! mailbox before the laptop sees it. With one password per device the
//! login history (see `pobox_store::history`) can name the device, and
//! revoking it stops that device alone.
//!
//! # File
//!
//! `<passwd-file>.apppass`, beside the passwd-file (which stays exactly
//! what Dovecot reads), one app password per line:
//!
//! ```text
//! # user:label:id:protocols:created:hash
//! alice:phone:kqzt:pop3:1764860000:{ARGON2ID}$argon2id$v=19$...
//! ```
//!
//! `protocols` is a comma list (empty: none); `created` is Unix seconds;
//! the hash is Argon2id, as for `pobox user add`. Edits take the
//! passwd-file's own lock (`<passwd-file>.lock`), rewrite the file
//! atomically (temp file, fsync, rename, directory fsync) and keep its mode
//! and owner; a new file inherits the passwd-file's (mode 0600 when there is
//! none), so the unprivileged server can read it and nobody else can.
//!
//! # Password shape, and why a login costs at most two hash checks
//!
//! A generated password is 24 random lower-case letters shown in groups of
//! four (`kqzt-mvbe-...`): about 113 bits, easy to type on a phone. The
//! first group is the password's *id*, stored in clear beside the hash. A
//! login with the user's plain name and such a password finds the one entry
//! with that id and checks its hash: with the main password that is at most
//! two Argon2 verifications per attempt however many app passwords the user
//! has (at most [`MAX_PER_USER`]), where trying every entry would hand an
//! attacker N verifications per guess. The id is not a secret: knowing it
//! (a 1 in 456 976 guess, visible only as a slower failure) leaves 94 bits.
//! Dashes and spaces are ignored and capitals accepted (phones capitalise
//! the first letter), after SASLprep.
//!
//! # What app passwords do not do
//!
//! SCRAM and APOP: both need a secret derived from the password under the
//! user's name, and the client sends only the name; they stay with the main
//! password. App passwords log in through USER/PASS, AUTH PLAIN and LOGIN.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use crate::hash::{self, StoredPassword};
use crate::saslprep;
use crate::userdb::{FileStamp, LoadWarning, UserDb, UserDbError};
use crate::{AuthError, valid_username};

/// Most app passwords one user may have.
pub const MAX_PER_USER: usize = 20;

/// Longest label, in bytes.
pub const MAX_LABEL_LEN: usize = 32;

/// The protocols an app password can be limited to: the ones that
/// authenticate. LMTP has no authentication, the SMTP listener is
/// receive-only (no AUTH), and the fetcher logs in to other servers.
pub const PROTOCOLS: &[&str] = &["pop3"];

/// Letters in a generated password.
const LETTERS: usize = 24;
/// Letters of the id (the first group).
const ID_LEN: usize = 4;

/// Is `label` usable as an app password's label?
///
/// 1 to [`MAX_LABEL_LEN`] bytes of `A-Z a-z 0-9 . _ -`, not starting with
/// `-` or `.`, and not `password` or `oauth`: those name the main password
/// and bearer tokens in the login history.
#[must_use]
pub fn valid_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    (1..=MAX_LABEL_LEN).contains(&bytes.len())
        && !matches!(bytes[0], b'.' | b'-')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !label.eq_ignore_ascii_case("password")
        && !label.eq_ignore_ascii_case("oauth")
}

/// An app password as listed (no hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPasswordInfo {
    /// The device's label.
    pub label: String,
    /// Protocols it logs in to.
    pub protocols: Vec<String>,
    /// When it was made, Unix seconds.
    pub created: u64,
}

/// A freshly made app password: shown once, never stored in clear.
pub struct NewAppPassword {
    /// The password in its display form (`abcd-efgh-...`).
    pub password: crate::Secret,
}

impl fmt::Debug for NewAppPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewAppPassword(<redacted>)")
    }
}

/// One parsed line.
struct Entry {
    info: AppPasswordInfo,
    id: String,
    stored: StoredPassword,
}

/// One parsed version of the app-password file.
#[derive(Default)]
pub(crate) struct AppSnapshot {
    by_user: HashMap<String, Vec<Entry>>,
    /// SHA-256 over each user's lines, for the credential cache.
    fingerprints: HashMap<String, [u8; 32]>,
    warnings: Vec<LoadWarning>,
}

/// What the file looked like when last parsed (like the passwd-file's).
#[derive(Default)]
pub(crate) struct AppCache {
    stamp: Option<FileStamp>,
    snapshot: Arc<AppSnapshot>,
}

/// The outcome of checking a password against a user's app passwords.
pub(crate) enum AppCheck {
    /// Not an app password's shape, or no entry has its id (or the entry
    /// is not for this protocol).
    NoCandidate,
    /// The password of the app password with this label.
    Valid(String),
    /// An entry with that id exists and the password is wrong.
    Invalid,
    /// The file could not be read.
    Temporary(String),
}

/// The 24 letters of `password` if it has an app password's shape.
fn normalize(password: &[u8]) -> Option<[u8; LETTERS]> {
    let prepared = saslprep::prepare(password)?;
    let mut out = [0u8; LETTERS];
    let mut n = 0;
    for &b in prepared.iter() {
        match b {
            b'-' | b' ' => {}
            b'a'..=b'z' | b'A'..=b'Z' if n < LETTERS => {
                out[n] = b.to_ascii_lowercase();
                n += 1;
            }
            _ => return None,
        }
    }
    (n == LETTERS).then_some(out)
}

/// 24 random letters from the operating system's RNG (rejection sampling,
/// so every letter is equally likely).
fn random_letters() -> [u8; LETTERS] {
    use ring::rand::SecureRandom as _;
    let rng = ring::rand::SystemRandom::new();
    let mut out = [0u8; LETTERS];
    let mut n = 0;
    let mut buf = [0u8; 64];
    while n < LETTERS {
        rng.fill(&mut buf).expect("operating system RNG");
        for &b in &buf {
            // 234 = 9 * 26: below it, b % 26 is uniform.
            if b < 234 && n < LETTERS {
                out[n] = b'a' + b % 26;
                n += 1;
            }
        }
    }
    out
}

/// `abcdefgh...` → `abcd-efgh-...`.
fn display_form(letters: &[u8; LETTERS]) -> String {
    letters
        .chunks(ID_LEN)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("-")
}

/// Checks and canonicalises a protocol list: known names, no duplicates.
fn check_protocols(protocols: &[String]) -> Result<Vec<String>, UserDbError> {
    let mut out: Vec<String> = Vec::new();
    for p in protocols {
        let p = p.trim().to_ascii_lowercase();
        if !PROTOCOLS.contains(&p.as_str()) {
            return Err(UserDbError::UnknownProtocol(p));
        }
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

pub(crate) fn parse(content: &[u8]) -> AppSnapshot {
    let mut snapshot = AppSnapshot::default();
    let mut lines_of: HashMap<String, Sha256> = HashMap::new();
    for (index, raw) in content.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) || line.first() == Some(&b'#') {
            continue;
        }
        let mut warn = |reason: String| {
            snapshot.warnings.push(LoadWarning {
                line: index + 1,
                reason,
            });
        };
        let Ok(line) = std::str::from_utf8(line) else {
            warn("not valid UTF-8".into());
            continue;
        };
        let fields: Vec<&str> = line.splitn(6, ':').collect();
        let [user, label, id, protocols, created, hash] = fields[..] else {
            warn("expected user:label:id:protocols:created:hash".into());
            continue;
        };
        if !valid_username(user) || !valid_label(label) {
            warn("invalid user name or label".into());
            continue;
        }
        if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_lowercase()) {
            warn(format!("user {user}, app password {label}: invalid id"));
            continue;
        }
        let Ok(created) = created.parse::<u64>() else {
            warn(format!(
                "user {user}, app password {label}: invalid creation time"
            ));
            continue;
        };
        let stored = match StoredPassword::parse(hash) {
            Ok(s) => s,
            Err(e) => {
                warn(format!("user {user}, app password {label}: {e}"));
                continue;
            }
        };
        let entries = snapshot.by_user.entry(user.to_owned()).or_default();
        if entries.iter().any(|e| e.info.label == label || e.id == id) {
            warn(format!(
                "user {user}: duplicate app password label or id ({label}); the first is used"
            ));
            continue;
        }
        // Unknown protocol names are kept (a newer pobox may know them)
        // and simply never match.
        let protocols = protocols
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        entries.push(Entry {
            info: AppPasswordInfo {
                label: label.to_owned(),
                protocols,
                created,
            },
            id: id.to_owned(),
            stored,
        });
        lines_of
            .entry(user.to_owned())
            .or_default()
            .update(line.as_bytes());
    }
    snapshot.fingerprints = lines_of
        .into_iter()
        .map(|(u, h)| (u, h.finalize().into()))
        .collect();
    snapshot
}

impl UserDb {
    /// The app-password file: the passwd-file's path + `.apppass`.
    #[must_use]
    pub fn app_password_path(&self) -> std::path::PathBuf {
        crate::userdb::sibling(self.path(), ".apppass")
    }

    /// Makes an app password for `user`, labelled `label`, logging in only
    /// to `protocols` (empty: to nothing until re-made), created at `now`
    /// (Unix seconds). Returns the password, which is not stored anywhere
    /// in clear: show it once.
    ///
    /// # Errors
    ///
    /// * [`UserDbError::InvalidName`], [`UserDbError::NotFound`] (no such
    ///   user in the passwd-file), [`UserDbError::InvalidLabel`],
    ///   [`UserDbError::UnknownProtocol`].
    /// * [`UserDbError::LabelExists`], [`UserDbError::TooManyAppPasswords`].
    /// * [`UserDbError::Io`] if either file cannot be read, locked or
    ///   replaced; the app-password file is then unchanged.
    ///
    /// # Panics
    /// Only if the operating system's RNG fails.
    pub fn add_app_password(
        &self,
        user: &str,
        label: &str,
        protocols: &[String],
        now: u64,
    ) -> Result<NewAppPassword, UserDbError> {
        if !valid_username(user) {
            return Err(UserDbError::InvalidName(user.to_owned()));
        }
        if !valid_label(label) {
            return Err(UserDbError::InvalidLabel(label.to_owned()));
        }
        let protocols = check_protocols(protocols)?;
        match self.exists(user) {
            Ok(true) => {}
            Ok(false) => return Err(UserDbError::NotFound(user.to_owned())),
            Err(e) => return Err(UserDbError::Io(io::Error::other(e.to_string()))),
        }
        let mut letters = random_letters();
        // Hash before taking the lock: Argon2 is slow.
        let hashed = hash::hash_password(&letters);
        let id = String::from_utf8_lossy(&letters[..ID_LEN]).into_owned();
        let password = crate::Secret::new(display_form(&letters).into_bytes());
        zeroize::Zeroize::zeroize(&mut letters[..]);
        let line = format!("{user}:{label}:{id}:{}:{now}:{hashed}", protocols.join(","));
        let path = self.app_password_path();
        self.edit_file(&path, |lines| {
            let mine: Vec<&Vec<u8>> = lines
                .iter()
                .filter(|l| l.starts_with(format!("{user}:").as_bytes()))
                .collect();
            if mine
                .iter()
                .any(|l| l.starts_with(format!("{user}:{label}:").as_bytes()))
            {
                return Err(UserDbError::LabelExists(label.to_owned()));
            }
            if mine.len() >= MAX_PER_USER {
                return Err(UserDbError::TooManyAppPasswords(MAX_PER_USER));
            }
            let id_taken = mine
                .iter()
                .any(|l| String::from_utf8_lossy(l).split(':').nth(2) == Some(id.as_str()));
            if id_taken {
                // 1 in ~23 000 with the maximum of 20: the admin reruns.
                return Err(UserDbError::Io(io::Error::other(
                    "generated app password collides with an existing one; run the command again",
                )));
            }
            lines.push(line.into_bytes());
            Ok(())
        })?;
        Ok(NewAppPassword { password })
    }

    /// Revokes `user`'s app password `label`: its next login fails, even
    /// one the server's credential cache remembers.
    ///
    /// # Errors
    /// [`UserDbError::InvalidName`], [`UserDbError::InvalidLabel`],
    /// [`UserDbError::LabelNotFound`], [`UserDbError::Io`].
    pub fn revoke_app_password(&self, user: &str, label: &str) -> Result<(), UserDbError> {
        if !valid_username(user) {
            return Err(UserDbError::InvalidName(user.to_owned()));
        }
        if !valid_label(label) {
            return Err(UserDbError::InvalidLabel(label.to_owned()));
        }
        let prefix = format!("{user}:{label}:");
        self.edit_file(&self.app_password_path(), |lines| {
            let before = lines.len();
            lines.retain(|l| !l.starts_with(prefix.as_bytes()));
            if lines.len() == before {
                return Err(UserDbError::LabelNotFound(label.to_owned()));
            }
            Ok(())
        })
    }

    /// Removes every app password of `user` (for `pobox user del`: a user
    /// added again later must not inherit the old devices). No error when
    /// there were none.
    ///
    /// # Errors
    /// [`UserDbError::InvalidName`], [`UserDbError::Io`].
    pub fn remove_app_passwords(&self, user: &str) -> Result<(), UserDbError> {
        if !valid_username(user) {
            return Err(UserDbError::InvalidName(user.to_owned()));
        }
        let path = self.app_password_path();
        if !path.exists() {
            return Ok(());
        }
        let prefix = format!("{user}:");
        self.edit_file(&path, |lines| {
            lines.retain(|l| !l.starts_with(prefix.as_bytes()));
            Ok(())
        })
    }

    /// `user`'s app passwords, in file order.
    ///
    /// # Errors
    /// [`AuthError::Temporary`] when the file cannot be read.
    pub fn app_passwords(&self, user: &str) -> Result<Vec<AppPasswordInfo>, AuthError> {
        let snapshot = self.app_snapshot()?;
        Ok(snapshot
            .by_user
            .get(user)
            .map(|entries| entries.iter().map(|e| e.info.clone()).collect())
            .unwrap_or_default())
    }

    /// Lines of the app-password file skipped by the latest load.
    #[must_use]
    pub fn app_password_warnings(&self) -> Vec<LoadWarning> {
        self.app_snapshot()
            .map(|s| s.warnings.clone())
            .unwrap_or_default()
    }

    /// Checks `password` against `user`'s app password whose id it carries,
    /// for `protocol`. At most one hash verification.
    pub(crate) fn check_app_password(
        &self,
        user: &str,
        password: &[u8],
        protocol: &str,
    ) -> AppCheck {
        let Some(mut letters) = normalize(password) else {
            return AppCheck::NoCandidate;
        };
        let snapshot = match self.app_snapshot() {
            Ok(s) => s,
            Err(e) => return AppCheck::Temporary(e.to_string()),
        };
        let id = &letters[..ID_LEN];
        let entry = snapshot.by_user.get(user).and_then(|entries| {
            entries
                .iter()
                .find(|e| e.id.as_bytes() == id && e.info.protocols.iter().any(|p| p == protocol))
        });
        let result = match entry {
            None => AppCheck::NoCandidate,
            Some(e) if e.stored.verify(&letters) => AppCheck::Valid(e.info.label.clone()),
            Some(_) => AppCheck::Invalid,
        };
        zeroize::Zeroize::zeroize(&mut letters[..]);
        result
    }

    /// SHA-256 over `user`'s app-password lines; `None` when there are
    /// none; a fixed marker when the file cannot be read (so a cached
    /// login made with a now-unreadable file is not honoured).
    pub(crate) fn app_fingerprint(&self, user: &str) -> Option<[u8; 32]> {
        match self.app_snapshot() {
            Ok(s) => s.fingerprints.get(user).copied(),
            Err(_) => Some(Sha256::digest(b"pobox: app-password file unreadable").into()),
        }
    }

    /// The current parse of the app-password file, reloaded when it changed.
    fn app_snapshot(&self) -> Result<Arc<AppSnapshot>, AuthError> {
        let path = self.app_password_path();
        let mut cache = self
            .app_cache()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let temporary = |op: &str, e: &io::Error| {
            AuthError::Temporary(format!(
                "cannot {op} app-password file {}: {e}",
                path.display()
            ))
        };
        let stamp = match fs::metadata(&path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => FileStamp::Missing,
            Err(e) => return Err(temporary("stat", &e)),
        };
        if cache.stamp == Some(stamp) {
            return Ok(Arc::clone(&cache.snapshot));
        }
        let (stamp, content) = match fs::File::open(&path) {
            Ok(mut file) => {
                use std::io::Read as _;
                let meta = file.metadata().map_err(|e| temporary("stat", &e))?;
                let mut content = Vec::new();
                file.read_to_end(&mut content)
                    .map_err(|e| temporary("read", &e))?;
                (FileStamp::of(&meta), content)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (FileStamp::Missing, Vec::new()),
            Err(e) => return Err(temporary("open", &e)),
        };
        let snapshot = Arc::new(parse(&content));
        for w in &snapshot.warnings {
            tracing::warn!(path = %path.display(), line = w.line, reason = %w.reason,
                           "app-password line skipped");
        }
        cache.stamp = Some(stamp);
        cache.snapshot = Arc::clone(&snapshot);
        Ok(snapshot)
    }
}

/// For [`UserDb`]'s constructor.
pub(crate) fn new_cache() -> Mutex<AppCache> {
    Mutex::new(AppCache::default())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::Credential;

    fn db() -> (tempfile::TempDir, UserDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "alice:{PLAIN}main pw\nbob:{PLAIN}bob pw\n").unwrap();
        (dir, UserDb::open(path))
    }

    fn pop3() -> Vec<String> {
        vec!["pop3".into()]
    }

    #[test]
    fn labels() {
        for ok in ["phone", "old-PC", "a", "laptop_2", "x.y"] {
            assert!(valid_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a:b",
            "a b",
            "password",
            "OAuth",
            &"x".repeat(33),
            "é",
        ] {
            assert!(!valid_label(bad), "{bad}");
        }
    }

    #[test]
    fn generated_passwords_have_the_shape_and_differ() {
        let a = random_letters();
        let b = random_letters();
        assert_ne!(a, b);
        let shown = display_form(&a);
        assert_eq!(shown.len(), 24 + 5);
        assert_eq!(normalize(shown.as_bytes()), Some(a));
        // Without dashes, with spaces, capitalised by a phone keyboard.
        let loose = shown.replace('-', " ");
        let mut caps = loose.clone().into_bytes();
        caps[0] = caps[0].to_ascii_uppercase();
        assert_eq!(normalize(&caps), Some(a));
        assert_eq!(normalize(shown.replace('-', "").as_bytes()), Some(a));
        assert_eq!(normalize(b"too-short"), None);
        assert_eq!(normalize(format!("{shown}a").as_bytes()), None);
        assert_eq!(normalize(format!("{shown}1").as_bytes()), None);
    }

    #[test]
    fn add_login_list_revoke() {
        let (dir, db) = db();
        let phone = db
            .add_app_password("alice", "phone", &pop3(), 1000)
            .unwrap();
        let pc = db
            .add_app_password("alice", "old-pc", &pop3(), 2000)
            .unwrap();
        let phone_pw = phone.password.as_bytes().to_vec();
        let pc_pw = pc.password.as_bytes().to_vec();

        let proof = db.verify("alice", &phone_pw).unwrap();
        assert_eq!(proof.credential(), &Credential::AppPassword("phone".into()));
        assert_eq!(
            db.verify("alice", &pc_pw).unwrap().credential().label(),
            "old-pc"
        );
        assert_eq!(
            db.verify("alice", b"main pw").unwrap().credential(),
            &Credential::Password
        );
        // Another user's name with alice's app password: refused.
        assert!(matches!(
            db.verify("bob", &phone_pw),
            Err(AuthError::InvalidCredentials)
        ));
        // Right id, wrong rest.
        let mut wrong = phone_pw.clone();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'a' { b'b' } else { b'a' };
        assert!(matches!(
            db.verify("alice", &wrong),
            Err(AuthError::InvalidCredentials)
        ));

        let list = db.app_passwords("alice").unwrap();
        assert_eq!(
            list,
            vec![
                AppPasswordInfo {
                    label: "phone".into(),
                    protocols: pop3(),
                    created: 1000
                },
                AppPasswordInfo {
                    label: "old-pc".into(),
                    protocols: pop3(),
                    created: 2000
                },
            ]
        );
        assert!(db.app_passwords("bob").unwrap().is_empty());

        // Only a hash is stored, in a 0600 file.
        let path = dir.path().join("users.apppass");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(std::str::from_utf8(&phone_pw).unwrap()));
        assert!(text.contains("{ARGON2ID}"));
        // The passwd-file is 0644 here: the new file takes its owner and
        // mode, minus the bits for others.
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // The passwd-file is untouched (Dovecot keeps reading it).
        assert_eq!(
            std::fs::read_to_string(dir.path().join("users")).unwrap(),
            "alice:{PLAIN}main pw\nbob:{PLAIN}bob pw\n"
        );

        let before = db.fingerprint("alice").unwrap();
        db.revoke_app_password("alice", "phone").unwrap();
        assert_ne!(
            db.fingerprint("alice").unwrap(),
            before,
            "the cache must notice a revocation"
        );
        assert!(matches!(
            db.verify("alice", &phone_pw),
            Err(AuthError::InvalidCredentials)
        ));
        assert!(db.verify("alice", &pc_pw).is_ok());
        assert!(matches!(
            db.revoke_app_password("alice", "phone"),
            Err(UserDbError::LabelNotFound(_))
        ));
    }

    #[test]
    fn refusals() {
        let (_dir, db) = db();
        db.add_app_password("alice", "phone", &pop3(), 1).unwrap();
        assert!(matches!(
            db.add_app_password("alice", "phone", &pop3(), 1),
            Err(UserDbError::LabelExists(_))
        ));
        assert!(matches!(
            db.add_app_password("carol", "phone", &pop3(), 1),
            Err(UserDbError::NotFound(_))
        ));
        assert!(matches!(
            db.add_app_password("alice", "password", &pop3(), 1),
            Err(UserDbError::InvalidLabel(_))
        ));
        assert!(matches!(
            db.add_app_password("alice", "x", &["imap".into()], 1),
            Err(UserDbError::UnknownProtocol(_))
        ));
    }

    #[test]
    fn at_most_max_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "alice:{PLAIN}pw\n").unwrap();
        // Written directly: 20 Argon2 hashes would make the test slow.
        let lines: String = (0..MAX_PER_USER)
            .map(|i| {
                let id: String = [b'a' + (i / 26) as u8, b'a' + (i % 26) as u8, b'q', b'q']
                    .iter()
                    .map(|&b| b as char)
                    .collect();
                format!("alice:dev{i}:{id}:pop3:1:{{PLAIN}}x\n")
            })
            .collect();
        std::fs::write(dir.path().join("users.apppass"), lines).unwrap();
        let db = UserDb::open(path);
        assert_eq!(db.app_passwords("alice").unwrap().len(), MAX_PER_USER);
        assert!(matches!(
            db.add_app_password("alice", "one-more", &pop3(), 1),
            Err(UserDbError::TooManyAppPasswords(MAX_PER_USER))
        ));
    }

    #[test]
    fn protocol_scope_is_enforced() {
        let (dir, db) = db();
        let none = db.add_app_password("alice", "tablet", &[], 1).unwrap();
        assert!(matches!(
            db.verify("alice", none.password.as_bytes()),
            Err(AuthError::InvalidCredentials)
        ));
        // A protocol this version does not know (hand-written, or from a
        // newer pobox): kept, never matches POP3.
        let letters = *b"imapimapimapimapimapimap";
        let line = format!(
            "alice:imap-only:imap:imap:1:{}\n",
            hash::hash_password(&letters)
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("users.apppass"))
            .unwrap()
            .write_all_at_end(line.as_bytes());
        assert_eq!(
            db.app_passwords("alice").unwrap()[1].protocols,
            vec!["imap".to_string()]
        );
        assert!(matches!(
            db.verify("alice", &letters),
            Err(AuthError::InvalidCredentials)
        ));
    }

    #[test]
    fn bad_lines_are_skipped_with_warnings() {
        let snapshot = parse(
            b"# comment\n\
              alice:phone:abcd:pop3:1:{PLAIN}x\n\
              alice:phone:efgh:pop3:1:{PLAIN}y\n\
              bob:x:AB1:pop3:1:{PLAIN}x\n\
              carol:x:abcd:pop3:never:{PLAIN}x\n\
              dave:x:abcd:pop3:1:{NOPE}x\n\
              short:line\n",
        );
        assert_eq!(snapshot.by_user.get("alice").map(Vec::len), Some(1));
        assert_eq!(
            snapshot.warnings.iter().map(|w| w.line).collect::<Vec<_>>(),
            vec![3, 4, 5, 6, 7]
        );
        assert!(
            snapshot
                .warnings
                .iter()
                .all(|w| !w.reason.contains("{PLAIN}"))
        );
    }

    #[test]
    fn removing_the_user_removes_the_app_passwords() {
        let (_dir, db) = db();
        db.add_app_password("alice", "phone", &pop3(), 1).unwrap();
        db.add_app_password("bob", "phone", &pop3(), 1).unwrap();
        db.remove("alice").unwrap();
        assert!(db.app_passwords("alice").unwrap().is_empty());
        assert_eq!(db.app_passwords("bob").unwrap().len(), 1);
    }

    /// Appends in one write (test helper).
    trait AppendAll {
        fn write_all_at_end(self, bytes: &[u8]);
    }
    impl AppendAll for fs::File {
        fn write_all_at_end(mut self, bytes: &[u8]) {
            use std::io::Write as _;
            self.write_all(bytes).unwrap();
        }
    }
}
