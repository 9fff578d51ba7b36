//! Directory handles: how every Maildir access stays inside the maildrop.
//!
//! Where mail users own their Maildir (home-directory Maildirs, a server
//! running as root), they can replace `new/`, `cur/`, `tmp/`, a folder,
//! `maildirsize` or a message with a symbolic link, and a path-string
//! `open`/`rename`/`unlink` would follow it: into a root-only directory,
//! into another user's Maildir. So a Maildir is opened once, directory by
//! directory, with `O_DIRECTORY|O_NOFOLLOW` (a link is refused, not
//! followed), its owner is checked, and every later open, create, unlink,
//! rename and stat is an `*at` call on one name relative to those handles:
//! the kernel then resolves exactly one component, which cannot be a link
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`) and cannot be `..` (names come
//! from directory listings or are generated).
//!
//! # Which path components may be links
//!
//! A [`MailLocation`](super::MailLocation) template is written by the
//! admin: the directories *above* its `{user}` component are theirs, and
//! admins do symlink `/var/mail` or `/srv/mail` elsewhere, so that prefix
//! is opened as a normal path (links followed). From the `{user}`
//! component down (`/home/{user}/Maildir`: `eve`, then `Maildir`) a user
//! may control the entries, so each is opened with `O_NOFOLLOW`: a
//! maildrop whose root is a link is refused like one whose `new/` is.
//! [`Maildir::open_or_create`](super::Maildir::open_or_create) takes an
//! explicit path from its caller's own configuration (the fetcher's
//! destination); that path is followed as given, and only its parts are
//! held to the rules.
//!
//! # The expected owner
//!
//! After the privilege drop `pobox serve` runs as one service user, and
//! every maildrop it creates belongs to that user; admin commands and
//! `pobox deliver` are meant to run as that user too. So for a process
//! that is not root, the expected owner is simply its effective uid: a
//! Maildir root or part owned by anyone else is refused (it could be
//! another user's directory reached through a misconfigured template, or
//! one a user planted in a shared parent).
//!
//! A process running as root (a server that stayed root to serve
//! home-directory Maildirs, an MTA running `pobox deliver` as root) can
//! write anywhere, and the Maildir legitimately belongs to the mail user,
//! whose uid pobox does not know (passwd-file users are virtual). There the
//! owner of the Maildir root is taken as the expected owner, and every part
//! (`tmp/`, `new/`, `cur/`, folders, the restore area, their parts) must
//! belong to it or to root (parts root created itself). A mail user cannot
//! create a directory owned by someone else, nor move another user's
//! directory into theirs without write access to it, so a part that passes
//! is one the user or root made; the link rules above do the rest.

use std::ffi::{OsStr, OsString};
use std::fs::{DirBuilder, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

use super::{Sub, io_error};
use crate::StoreError;

/// The open directories of one Maildir.
#[derive(Debug)]
pub(super) struct Dirs {
    pub(super) root: OwnedFd,
    pub(super) tmp: OwnedFd,
    pub(super) new: OwnedFd,
    pub(super) cur: OwnedFd,
    /// The owner of the root, which every part shares (or root's).
    pub(super) owner: u32,
}

impl Dirs {
    pub(super) fn sub(&self, sub: Sub) -> BorrowedFd<'_> {
        match sub {
            Sub::Tmp => self.tmp.as_fd(),
            Sub::New => self.new.as_fd(),
            Sub::Cur => self.cur.as_fd(),
        }
    }
}

/// Directory flags: never follow a link in the last component.
const DIR_NOFOLLOW: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn unsafe_part(path: &Path, reason: String) -> StoreError {
    StoreError::Unsafe {
        path: path.to_owned(),
        reason,
    }
}

/// Opens `name` in `parent` as a directory without following a link;
/// `Ok(None)` if there is nothing by that name. `path` is for messages.
pub(super) fn open_dir_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
) -> Result<Option<OwnedFd>, StoreError> {
    match rustix::fs::openat(parent, name, DIR_NOFOLLOW, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        // O_DIRECTORY|O_NOFOLLOW on a link fails with ENOTDIR (or ELOOP):
        // say which it is.
        Err(Errno::NOTDIR | Errno::LOOP) => {
            let link = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
            Err(if link {
                unsafe_part(path, "it is a symbolic link".into())
            } else {
                io_error(
                    format_args!("{} exists but is not a directory", path.display()),
                    io::ErrorKind::NotADirectory.into(),
                )
            })
        }
        Err(e) => Err(io_error(format_args!("opening {}", path.display()), e.into())),
    }
}

/// [`open_dir_at`], creating the directory (mode 0700, made durable in
/// `parent`) if it is missing and `create` is set.
fn open_or_make_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    create: bool,
) -> Result<Option<OwnedFd>, StoreError> {
    if let Some(fd) = open_dir_at(parent, name, path)? {
        return Ok(Some(fd));
    }
    if !create {
        return Ok(None);
    }
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        // A concurrent delivery created it first: fine.
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io_error(format_args!("creating {}", path.display()), e.into())),
    }
    // The new entry must be durable in its parent, or a delivery that
    // returned Ok could vanish with its directory in a crash.
    fsync_fd(parent, path.parent().unwrap_or(path))?;
    match open_dir_at(parent, name, path)? {
        Some(fd) => Ok(Some(fd)),
        None => Err(io_error(
            format_args!("opening {}", path.display()),
            io::ErrorKind::NotFound.into(),
        )),
    }
}

/// The uid of the open directory `fd`.
fn owner_of(fd: BorrowedFd<'_>, path: &Path) -> Result<u32, StoreError> {
    rustix::fs::fstat(fd)
        .map(|st| st.st_uid)
        .map_err(|e| io_error(format_args!("stat {}", path.display()), e.into()))
}

/// Checks a part's owner against the rule in the module docs.
fn check_part_owner(fd: BorrowedFd<'_>, path: &Path, maildir_owner: u32) -> Result<(), StoreError> {
    let owner = owner_of(fd, path)?;
    let euid = rustix::process::geteuid().as_raw();
    if owner == maildir_owner || owner == euid {
        return Ok(());
    }
    Err(unsafe_part(
        path,
        format!("it is owned by uid {owner}, not by the Maildir's owner (uid {maildir_owner})"),
    ))
}

/// Opens a Maildir: `components` below the trusted directory `base`
/// (at `base_path`), one at a time without following links, creating
/// what is missing when `create` is set, then its `tmp/`, `new/` and
/// `cur/`. `Ok(None)` if something is missing and `create` is not set.
///
/// `owner`: the uid the root must belong to (a folder must belong to its
/// inbox's owner); `None` for a maildrop root, judged by the rule in the
/// module docs.
pub(super) fn open_maildir(
    base: OwnedFd,
    base_path: &Path,
    components: &[OsString],
    create: bool,
    owner: Option<u32>,
) -> Result<Option<(PathBuf, Dirs)>, StoreError> {
    let mut dir = base;
    let mut path = base_path.to_path_buf();
    for name in components {
        path.push(name);
        match open_or_make_at(dir.as_fd(), name, &path, create)? {
            Some(fd) => dir = fd,
            None => return Ok(None),
        }
    }
    let root_owner = owner_of(dir.as_fd(), &path)?;
    let euid = rustix::process::geteuid().as_raw();
    let owner = match owner {
        Some(expected) => {
            check_part_owner(dir.as_fd(), &path, expected)?;
            expected
        }
        None if euid == 0 || root_owner == euid => root_owner,
        None => {
            return Err(unsafe_part(
                &path,
                format!("it is owned by uid {root_owner}, but pobox runs as uid {euid}"),
            ));
        }
    };
    Ok(open_parts(dir, &path, owner, create)?.map(|dirs| (path, dirs)))
}

/// Opens (creating if `create` is set) the `tmp/`, `new/` and `cur/` of the
/// Maildir whose root is the already checked `root` (at `path`, owned by
/// `owner`). `Ok(None)` if one is missing and `create` is not set.
pub(super) fn open_parts(root: OwnedFd, path: &Path, owner: u32, create: bool) -> Result<Option<Dirs>, StoreError> {
    let mut parts = Vec::with_capacity(3);
    for sub in [Sub::Tmp, Sub::New, Sub::Cur] {
        let sub_path = path.join(sub.as_str());
        let Some(fd) = open_or_make_at(root.as_fd(), OsStr::new(sub.as_str()), &sub_path, create)? else {
            return Ok(None);
        };
        check_part_owner(fd.as_fd(), &sub_path, owner)?;
        parts.push(fd);
    }
    let mut parts = parts.into_iter();
    let (Some(tmp), Some(new), Some(cur)) = (parts.next(), parts.next(), parts.next()) else {
        unreachable!("three parts were pushed");
    };
    Ok(Some(Dirs {
        root,
        tmp,
        new,
        cur,
        owner,
    }))
}

/// Opens the file `sub/name` below the Maildir root `root` read-only,
/// through no link at all: `openat2` with `RESOLVE_BENEATH|
/// RESOLVE_NO_SYMLINKS` (and `RESOLVE_CACHED` when `cached`: fail with
/// `EAGAIN` rather than wait for a disk). A session holds only its root's
/// handle between commands, so this is how it reaches a message: one
/// system call, and `new/` or `cur/` replaced by a link since login fails
/// with `ELOOP` instead of leading elsewhere. Where the kernel lacks
/// `openat2` (before Linux 5.6) the same walk is done one `O_NOFOLLOW`
/// component at a time (not for `cached`: that only ever avoids a wait).
pub(super) fn open_file_below(root: BorrowedFd<'_>, sub: Sub, name: &OsStr, cached: bool) -> io::Result<OwnedFd> {
    use rustix::fs::ResolveFlags;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut rel = OsString::from(sub.as_str());
    rel.push("/");
    rel.push(name);
    let mut resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    if cached {
        resolve |= ResolveFlags::CACHED;
    }
    match rustix::fs::openat2(root, &rel, flags, Mode::empty(), resolve) {
        Err(Errno::NOSYS) if !cached => {}
        other => return Ok(other?),
    }
    let dir = rustix::fs::openat(root, sub.as_str(), DIR_NOFOLLOW, Mode::empty())?;
    Ok(rustix::fs::openat(&dir, name, flags, Mode::empty())?)
}

/// Opens `sub/` below the Maildir root `root`, not through a link.
pub(super) fn open_sub(root: BorrowedFd<'_>, sub: Sub) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(root, sub.as_str(), DIR_NOFOLLOW, Mode::empty())?)
}

/// Opens the admin's directory `path` following links (see the module
/// docs), creating it and its missing parents (mode 0700, each made
/// durable in its parent) when `create` is set.
pub(super) fn open_trusted(path: &Path, create: bool) -> Result<Option<OwnedFd>, StoreError> {
    let open = || rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty());
    match open() {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::NOENT) if create => {}
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::NOTDIR) => {
            return Err(io_error(
                format_args!("{} exists but is not a directory", path.display()),
                io::ErrorKind::NotADirectory.into(),
            ));
        }
        Err(e) => return Err(io_error(format_args!("opening {}", path.display()), e.into())),
    }
    let missing: Vec<PathBuf> = path
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .map(Path::to_path_buf)
        .collect();
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| io_error(format_args!("creating {}", path.display()), e))?;
    for dir in missing.iter().rev() {
        if let Some(parent) = dir.parent() {
            super::fsync_dir(parent)?;
        }
    }
    open()
        .map(Some)
        .map_err(|e| io_error(format_args!("opening {}", path.display()), e.into()))
}

/// Splits a maildrop path into the admin's prefix (the directory holding
/// the component that contains `{user}`) and the components from there on.
pub(super) fn split_at_user(template: &str, full: &Path) -> (PathBuf, Vec<OsString>) {
    let first = template.find("{user}").unwrap_or(0);
    let dir_end = template[..first].rfind('/').unwrap_or(0);
    let prefix = if dir_end == 0 { "/" } else { &template[..dir_end] };
    let rest = full
        .strip_prefix(prefix)
        .unwrap_or(full)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    (PathBuf::from(prefix), rest)
}

/// The names in the directory `dir` (without `.` and `..`), with their
/// types as `getdents` reports them (`Unknown` on some filesystems).
/// Reads through a fresh description of the directory, so handles shared
/// by several readers never share a read position.
pub(super) fn read_names(dir: BorrowedFd<'_>) -> io::Result<Vec<(OsString, FileType)>> {
    let fresh = File::from(rustix::fs::openat(dir, c".", DIR_NOFOLLOW, Mode::empty())?);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut entries = RawDir::new(&fresh, buf.spare_capacity_mut());
    let mut out = Vec::new();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((OsStr::from_bytes(name).to_os_string(), entry.file_type()));
    }
    Ok(out)
}

/// A fresh description of the directory `dir`, for a listing of its own.
pub(super) fn reopen(dir: BorrowedFd<'_>) -> io::Result<File> {
    Ok(File::from(rustix::fs::openat(dir, c".", DIR_NOFOLLOW, Mode::empty())?))
}

/// Makes a directory's entries durable through its handle (see
/// [`fsync_dir`](super::fsync_dir)); `path` is for messages.
pub(super) fn fsync_fd(dir: BorrowedFd<'_>, path: &Path) -> Result<(), StoreError> {
    rustix::fs::fsync(dir).map_err(|e| io_error(format_args!("fsync {}", path.display()), e.into()))
}
