//! The login history: who logged in with which credential, from where, and
//! what each session took. It answers "which device emptied my mailbox?".
//!
//! # File
//!
//! One append-only file per user, `<dir>/<user>.log` (the server uses
//! `<data_dir>/logins/`, mode 0700, files 0600), tab-separated lines:
//!
//! ```text
//! L  <session>  <unix time>  <credential>  <mechanism>  <client address>
//! U  <session>  <unix time>  <retrieved UIDLs, space-separated>  <deleted UIDLs>
//! ```
//!
//! An `L` line is written at every successful login, a `U` line when the
//! session reaches UPDATE (QUIT); a session that ends any other way has
//! only its `L` line, exactly as it changed nothing in the maildrop. Each
//! append is one `write` and one `fdatasync`: two per session, none per
//! command. Passwords never reach this file; the credential is a label
//! (`password`, `oauth`, or an app password's label).
//!
//! The writer holds the user's maildrop lock (one session per maildrop),
//! so appends and the pruning rewrite never race each other; readers (the
//! CLI) may see a half-written last line after a crash, which is skipped.
//!
//! # Bound
//!
//! When a login finds the file over [`MAX_BYTES`], the file is rewritten
//! (temp file, fsync, rename) keeping the newest lines that fit in half of
//! it. The history is advisory: losing it loses no mail, and a failure to
//! write it is logged by the caller, never refusing the login.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// A user's file is pruned to half when a login finds it larger.
pub const MAX_BYTES: u64 = 1024 * 1024;

/// Where the per-user history files live.
#[derive(Debug, Clone)]
pub struct LoginHistory {
    dir: PathBuf,
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Unix seconds.
    pub time: u64,
    /// `password`, `oauth`, or an app password's label.
    pub credential: String,
    /// The POP3 mechanism: `USER`, `PLAIN`, `LOGIN`, `APOP`, `SCRAM-SHA-256`...
    pub mechanism: String,
    /// The client's address (IP, or `ip:port`).
    pub client: String,
}

/// What a session did at UPDATE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Unix seconds.
    pub time: u64,
    /// UIDLs of the messages sent whole by RETR.
    pub retrieved: Vec<String>,
    /// UIDLs of the messages removed (DELE, or EXPIRE 0).
    pub deleted: Vec<String>,
}

/// One session as read back: its login and, if it reached UPDATE, what it
/// took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's random id (joins the two lines).
    pub id: String,
    /// The login.
    pub login: Login,
    /// `None`: the session ended without QUIT (nothing was taken).
    pub update: Option<Update>,
}

/// A session's id, returned by [`LoginHistory::record_login`] for
/// [`LoginHistory::record_update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl LoginHistory {
    /// History files under `dir` (created on the first write).
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> LoginHistory {
        LoginHistory { dir: dir.into() }
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a login and makes it durable; prunes the file first when it
    /// is over [`MAX_BYTES`]. Call with the user's maildrop lock held.
    ///
    /// # Errors
    /// The directory or file cannot be created, written or synced; an
    /// invalid user name (`InvalidInput`).
    pub fn record_login(&self, user: &str, login: &Login) -> io::Result<SessionId> {
        let path = self.path(user)?;
        if fs::metadata(&path).is_ok_and(|m| m.len() > MAX_BYTES) {
            prune(&path, MAX_BYTES / 2)?;
        }
        let id = SessionId(format!("{:016x}", rand::random::<u64>()));
        let line = format!(
            "L\t{}\t{}\t{}\t{}\t{}\n",
            id.0,
            login.time,
            field(&login.credential),
            field(&login.mechanism),
            field(&login.client)
        );
        self.append(&path, line.as_bytes())?;
        Ok(id)
    }

    /// Appends what session `id` retrieved and deleted, durably. Call with
    /// the user's maildrop lock held (at UPDATE).
    ///
    /// # Errors
    /// As for [`record_login`](Self::record_login).
    pub fn record_update(&self, user: &str, id: &SessionId, update: &Update) -> io::Result<()> {
        let path = self.path(user)?;
        let line = format!(
            "U\t{}\t{}\t{}\t{}\n",
            id.0,
            update.time,
            uidls(&update.retrieved),
            uidls(&update.deleted)
        );
        self.append(&path, line.as_bytes())
    }

    /// `user`'s sessions, oldest first. No file: none.
    ///
    /// # Errors
    /// The file exists but cannot be read; an invalid user name.
    pub fn sessions(&self, user: &str) -> io::Result<Vec<Session>> {
        let path = self.path(user)?;
        let mut content = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut content)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        Ok(parse(&String::from_utf8_lossy(&content)))
    }

    fn path(&self, user: &str) -> io::Result<PathBuf> {
        // Defence in depth: names come from pobox-auth, already validated.
        let safe = (1..=64).contains(&user.len())
            && !user.starts_with(['.', '-'])
            && user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
        if !safe {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid user name {user:?}"),
            ));
        }
        Ok(self.dir.join(format!("{user}.log")))
    }

    fn append(&self, path: &Path, line: &[u8]) -> io::Result<()> {
        if !self.dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)?;
            // The new directory's entry must be durable too.
            if let Some(parent) = self.dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)?;
        let new_file = file.metadata()?.len() == 0;
        // One write call: concurrent readers see whole lines or none.
        file.write_all(line)?;
        file.sync_data()?;
        if new_file {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// A free-text field made safe for the tab-separated line.
fn field(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(128)
        .collect();
    if cleaned.is_empty() {
        "-".into()
    } else {
        cleaned
    }
}

/// UIDLs are printable ASCII without spaces (RFC 1939 §7); anything else
/// could not be written unambiguously and is left out.
fn uidls(list: &[String]) -> String {
    list.iter()
        .filter(|u| !u.is_empty() && u.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse(content: &str) -> Vec<Session> {
    let mut sessions: Vec<Session> = Vec::new();
    for line in content.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields[..] {
            ["L", id, time, credential, mechanism, client] => {
                let Ok(time) = time.parse() else { continue };
                sessions.push(Session {
                    id: id.to_owned(),
                    login: Login {
                        time,
                        credential: credential.to_owned(),
                        mechanism: mechanism.to_owned(),
                        client: client.to_owned(),
                    },
                    update: None,
                });
            }
            ["U", id, time, retrieved, deleted] => {
                let Ok(time) = time.parse() else { continue };
                // Its login is recent: search from the end.
                if let Some(s) = sessions.iter_mut().rev().find(|s| s.id == id) {
                    let split = |s: &str| {
                        s.split(' ')
                            .filter(|u| !u.is_empty())
                            .map(str::to_owned)
                            .collect()
                    };
                    s.update = Some(Update {
                        time,
                        retrieved: split(retrieved),
                        deleted: split(deleted),
                    });
                }
            }
            // A torn last line after a crash, or a line from a newer version.
            _ => {}
        }
    }
    sessions
}

/// Rewrites `path` keeping the newest whole lines that fit in `keep` bytes.
fn prune(path: &Path, keep: u64) -> io::Result<()> {
    let content = fs::read(path)?;
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let mut start = content.len().saturating_sub(keep);
    // Start at a line boundary.
    if start > 0 {
        start = content[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(content.len(), |i| start + i + 1);
    }
    let tmp = path.with_extension(format!("log.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&content[start..])?;
    file.sync_all()?;
    drop(file);
    // The history file's own atomic replace, not a Maildir write.
    #[allow(clippy::disallowed_methods)]
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn login(credential: &str, time: u64) -> Login {
        Login {
            time,
            credential: credential.into(),
            mechanism: "USER".into(),
            client: "127.0.0.1".into(),
        }
    }

    #[test]
    fn logins_and_updates_are_joined_per_session() {
        let dir = tempfile::tempdir().unwrap();
        let h = LoginHistory::new(dir.path().join("logins"));
        assert!(h.sessions("alice").unwrap().is_empty());
        let a = h.record_login("alice", &login("phone", 10)).unwrap();
        let b = h.record_login("alice", &login("laptop", 11)).unwrap();
        h.record_update(
            "alice",
            &b,
            &Update {
                time: 12,
                retrieved: vec!["u1".into(), "u2".into()],
                deleted: vec![],
            },
        )
        .unwrap();
        h.record_update(
            "alice",
            &a,
            &Update {
                time: 13,
                retrieved: vec!["u3".into()],
                deleted: vec!["u3".into()],
            },
        )
        .unwrap();
        let c = h.record_login("alice", &login("password", 14)).unwrap();
        let s = h.sessions("alice").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].login.credential, "phone");
        assert_eq!(
            s[0].update.as_ref().unwrap().deleted,
            vec!["u3".to_string()]
        );
        assert_eq!(
            s[1].update.as_ref().unwrap().retrieved,
            vec!["u1".to_string(), "u2".into()]
        );
        assert_eq!(s[2].id, c.0);
        assert!(s[2].update.is_none(), "no UPDATE: login only");
        // Other users are separate; permissions are private.
        assert!(h.sessions("bob").unwrap().is_empty());
        let meta = fs::metadata(dir.path().join("logins/alice.log")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(dir.path().join("logins"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[test]
    fn fields_cannot_break_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let h = LoginHistory::new(dir.path());
        let id = h
            .record_login(
                "alice",
                &Login {
                    time: 1,
                    credential: "a\tb\nc".into(),
                    mechanism: String::new(),
                    client: "x".into(),
                },
            )
            .unwrap();
        h.record_update(
            "alice",
            &id,
            &Update {
                time: 2,
                retrieved: vec!["ok".into(), "bad uidl".into()],
                deleted: vec![],
            },
        )
        .unwrap();
        let s = h.sessions("alice").unwrap();
        assert_eq!(s[0].login.credential, "a?b?c");
        assert_eq!(s[0].login.mechanism, "-");
        assert_eq!(
            s[0].update.as_ref().unwrap().retrieved,
            vec!["ok".to_string()]
        );
        assert!(h.record_login("../x", &login("p", 1)).is_err());
    }

    #[test]
    fn torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let h = LoginHistory::new(dir.path());
        h.record_login("alice", &login("phone", 1)).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("alice.log"))
            .unwrap();
        f.write_all(b"L\tdeadbeef\t2\tlap").unwrap();
        assert_eq!(h.sessions("alice").unwrap().len(), 1);
    }

    #[test]
    fn a_full_file_is_pruned_to_the_newest_half() {
        let dir = tempfile::tempdir().unwrap();
        let h = LoginHistory::new(dir.path());
        let path = dir.path().join("alice.log");
        let line = format!("L\t{:016x}\t1\told\tUSER\t127.0.0.1\n", 0);
        let n = usize::try_from(MAX_BYTES).unwrap() / line.len() + 10;
        fs::write(&path, line.repeat(n)).unwrap();
        h.record_login("alice", &login("newest", 2)).unwrap();
        let len = fs::metadata(&path).unwrap().len();
        assert!(len <= MAX_BYTES / 2 + 100, "{len}");
        let s = h.sessions("alice").unwrap();
        assert_eq!(s.last().unwrap().login.credential, "newest");
        assert!(s.len() > 1000 && s[..s.len() - 1].iter().all(|s| s.login.credential == "old"));
    }
}
