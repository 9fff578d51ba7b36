//! Dropping root after the privileged prelude (architecture rule 7): bind
//! the ports, read the keys, then become an unprivileged user and set
//! `no_new_privs`, before the first byte is read from the network.
//!
//! # Which user
//!
//! * `user = "name"` configured: that user (and its primary group). Started
//!   as root, this is mandatory: failure to switch is a startup error.
//! * not configured, started as root: the `pobox` user if it exists (what a
//!   package creates); otherwise pobox stays root and says so loudly: it
//!   never falls back to `nobody`, which is shared with other daemons and
//!   must own no files, while pobox's data dir has to be owned by it.
//! * `user = "root"`: stay root on purpose (not recommended).
//! * started as non-root: nothing to drop; a configured different user is an
//!   error (we cannot switch), the same user is fine.
//!
//! # Threads
//!
//! `setresuid(2)`/`setresgid(2)`/`setgroups(2)` and `PR_SET_NO_NEW_PRIVS`
//! are per *thread* in the kernel. glibc's wrappers (which `nix` calls)
//! broadcast the id changes to every thread, but not `no_new_privs`. So
//! [`drop_privileges`] refuses to run unless the process has exactly one
//! thread, and `pobox serve` calls it before building the tokio runtime
//! (sockets are bound with `std::net` first): every thread created later
//! inherits the unprivileged ids and `no_new_privs`.
//!
//! `nix` is used because its `User::from_name` (NSS `getpwnam_r`) and
//! `setres[ug]id` are safe APIs; the workspace forbids `unsafe`.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// The default service user looked up when started as root.
pub const DEFAULT_USER: &str = "pobox";

/// What [`drop_privileges`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not started as root: nothing to drop (`no_new_privs` is set).
    NotRoot {
        /// Our uid.
        uid: u32,
    },
    /// Still root: `user = "root"`, or no user configured and no `pobox`
    /// user exists.
    StayedRoot {
        /// True when the admin asked for it (`user = "root"`).
        explicit: bool,
    },
    /// Now running as this user.
    Dropped {
        /// The user name.
        user: String,
        /// Its uid.
        uid: u32,
        /// Its primary gid.
        gid: u32,
    },
}

/// Why privileges could not be dropped. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivDropError {
    /// The configured user does not exist.
    #[error("user {0:?} (config key `user`) does not exist; create it (e.g. `useradd --system --home-dir /var/lib/pobox pobox`) or set `user` to an existing account")]
    NoSuchUser(String),
    /// Not root, and a different user is configured.
    #[error("cannot switch to user {wanted:?}: pobox was started as uid {uid}, not root; start it as root or remove `user` from the config")]
    NotRoot {
        /// The configured user.
        wanted: String,
        /// Our uid.
        uid: u32,
    },
    /// The data directory belongs to someone else.
    #[error("data dir {path} is owned by uid {owner}, but pobox runs as {user} (uid {uid}); fix with: chown -R {user}: {path}")]
    DataDirOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The service user.
        user: String,
        /// Its uid.
        uid: u32,
    },
    /// The data directory is writable by everyone.
    #[error("data dir {path} is world-writable (mode {mode:o}); any local user could plant mail or users there; fix with: chmod o-w {path}")]
    WorldWritable {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Other threads exist already; see the module docs.
    #[error("internal error: privileges must be dropped before any thread is started ({0} threads running)")]
    Threads(usize),
    /// A system call failed.
    #[error("{what} failed: {errno}")]
    Sys {
        /// Which call.
        what: &'static str,
        /// The error.
        errno: nix::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> PrivDropError {
    move |errno| PrivDropError::Sys { what, errno }
}

/// Switches to the configured user (see the module docs), checking the data
/// dir first, then sets `no_new_privs`.
///
/// `chown_to_user` lists files pobox created as root that the service user
/// must keep reading (the generated TLS key, for reloads); they are given to
/// the user before the switch.
///
/// # Errors
/// A [`PrivDropError`] with the fix in its message.
pub fn drop_privileges(
    user: Option<&str>,
    data_dir: &Path,
    chown_to_user: &[PathBuf],
) -> Result<Outcome, PrivDropError> {
    let threads = thread_count();
    if threads > 1 {
        return Err(PrivDropError::Threads(threads));
    }
    let euid = Uid::effective();
    let outcome = if !euid.is_root() {
        if let Some(wanted) = user {
            let found = User::from_name(wanted).map_err(sys("getpwnam"))?;
            if found.map(|u| u.uid) != Some(euid) {
                return Err(PrivDropError::NotRoot { wanted: wanted.to_owned(), uid: euid.as_raw() });
            }
        }
        check_data_dir(data_dir, "this user", euid.as_raw())?;
        Outcome::NotRoot { uid: euid.as_raw() }
    } else {
        let target = match user {
            Some("root") => None,
            Some(name) => Some(User::from_name(name).map_err(sys("getpwnam"))?.ok_or_else(|| PrivDropError::NoSuchUser(name.to_owned()))?),
            None => User::from_name(DEFAULT_USER).map_err(sys("getpwnam"))?,
        };
        match target {
            None => Outcome::StayedRoot { explicit: user == Some("root") },
            Some(u) => {
                check_data_dir(data_dir, &u.name, u.uid.as_raw())?;
                for path in chown_to_user {
                    if path.exists() {
                        nix::unistd::chown(path, Some(u.uid), Some(u.gid)).map_err(sys("chown"))?;
                    }
                }
                switch(u.uid, u.gid)?;
                Outcome::Dropped { user: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw() }
            }
        }
    };
    // PR_SET_NO_NEW_PRIVS: no execve() from here on can gain privileges
    // (setuid binaries, file capabilities). Inherited by every later thread.
    nix::sys::prctl::set_no_new_privs().map_err(sys("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    Ok(outcome)
}

/// Group first (it needs root), supplementary groups cleared, then user.
/// `setres*id` sets real, effective and saved ids, so there is no way back.
fn switch(uid: Uid, gid: Gid) -> Result<(), PrivDropError> {
    nix::unistd::setgroups(&[gid]).map_err(sys("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
    // Paranoia: regaining root must now fail.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivDropError::Sys { what: "setuid(0) unexpectedly succeeded after drop", errno: nix::Error::EPERM });
    }
    Ok(())
}

/// The data dir must be owned by the service user and not world-writable.
///
/// # Errors
/// [`PrivDropError::DataDirOwner`], [`PrivDropError::WorldWritable`].
pub fn check_data_dir(path: &Path, user: &str, uid: u32) -> Result<(), PrivDropError> {
    let meta = std::fs::metadata(path).map_err(|e| PrivDropError::Sys {
        what: "stat data dir",
        errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(0)),
    })?;
    if meta.uid() != uid {
        return Err(PrivDropError::DataDirOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            user: user.to_owned(),
            uid,
        });
    }
    if meta.mode() & 0o002 != 0 {
        return Err(PrivDropError::WorldWritable { path: path.to_path_buf(), mode: meta.mode() & 0o7777 });
    }
    Ok(())
}

/// Who an admin subcommand (`pobox user`, `deliver`, `mailbox`, `check`,
/// ...) started as root acts as, so that nothing it creates is root-owned
/// and unreadable by the server:
///
/// * the data dir exists and is owned by someone other than root: its
///   owner (with that user's primary group, or the directory's group);
/// * the data dir does not exist yet: the service user `pobox serve` would
///   drop to (`user`, else `pobox` if it exists); the data dir is created
///   for it (0750) first;
/// * otherwise (a root-owned data dir, or no service user): stay root,
///   like `pobox serve` does in that case.
///
/// Not root: nothing to do. Returns the user switched to.
///
/// # Errors
/// A failed lookup, chown or switch.
pub fn act_as_service_user(user: Option<&str>, data_dir: &Path) -> Result<Option<String>, PrivDropError> {
    if !Uid::effective().is_root() || user == Some("root") {
        return Ok(None);
    }
    let threads = thread_count();
    if threads > 1 {
        return Err(PrivDropError::Threads(threads));
    }
    let (uid, gid, name) = match std::fs::metadata(data_dir) {
        Ok(meta) if meta.uid() == 0 => return Ok(None),
        Ok(meta) => {
            let uid = Uid::from_raw(meta.uid());
            match User::from_uid(uid).map_err(sys("getpwuid"))? {
                Some(u) => (u.uid, u.gid, u.name),
                None => (uid, Gid::from_raw(meta.gid()), format!("uid {}", meta.uid())),
            }
        }
        Err(_) => {
            let found = match user {
                Some(name) => Some(User::from_name(name).map_err(sys("getpwnam"))?.ok_or_else(|| PrivDropError::NoSuchUser(name.to_owned()))?),
                None => User::from_name(DEFAULT_USER).map_err(sys("getpwnam"))?,
            };
            let Some(u) = found else { return Ok(None) };
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new().recursive(true).mode(0o750).create(data_dir).map_err(|e| PrivDropError::Sys {
                    what: "create data dir",
                    errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(0)),
                })?;
            }
            nix::unistd::chown(data_dir, Some(u.uid), Some(u.gid)).map_err(sys("chown data dir"))?;
            (u.uid, u.gid, u.name)
        }
    };
    switch(uid, gid)?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    Ok(Some(name))
}

/// After the switch: can this process really use what it must? Each of
/// `readable` must open for reading and each of `writable` (directories)
/// must allow creating files (list only paths that exist: decide that
/// before the switch, when a missing permission cannot hide them), else the error names the first path that
/// fails and the fix. Catches a data dir under a 0700 parent, a passwd-file
/// or key readable only by root, a root-owned `mail/` left by an admin
/// command run as root: without this check the server would start and then
/// fail every login.
///
/// # Errors
/// One line naming the path, the user and the fix.
pub fn verify_access(who: &str, readable: &[PathBuf], writable: &[PathBuf]) -> Result<(), String> {
    use nix::unistd::{AccessFlags, access};
    for path in readable {
        if let Err(e) = std::fs::File::open(path) {
            return Err(format!(
                "{who} cannot read {}: {e}; give it access (chown {who} {0}, or a group it is in with chmod g+r) \
                 and make sure every parent directory lets {who} through",
                path.display(),
            ));
        }
    }
    for dir in writable {
        if let Err(e) = access(dir.as_path(), AccessFlags::W_OK | AccessFlags::X_OK) {
            return Err(format!("{who} cannot write to {}: {}; fix with: chown -R {who}: {0}", dir.display(), e.desc()));
        }
    }
    Ok(())
}

/// Threads of this process, from `/proc/self/status` (1 if unknown).
fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn data_dir_checks_name_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let me = Uid::effective().as_raw();
        check_data_dir(dir.path(), "me", me).unwrap();
        let err = check_data_dir(dir.path(), "pobox", me + 1).unwrap_err();
        assert!(err.to_string().contains("chown -R pobox:"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_data_dir(dir.path(), "me", me).unwrap_err();
        assert!(err.to_string().contains("chmod o-w"), "{err}");
    }

    #[test]
    fn refuses_with_threads_running() {
        // The test harness itself runs tests on several threads.
        let _t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(500)));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(drop_privileges(None, dir.path(), &[]), Err(PrivDropError::Threads(_))));
    }
}
