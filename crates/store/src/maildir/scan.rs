//! Reading a Maildir: the session snapshot, POP3 sizes, and `tmp/` cleanup.
//!
//! Rules from maildir(5): list `new/` and `cur/`; skip names starting with
//! `.`; never read `tmp/`, only clean files there that have not been touched
//! for 36 hours.

use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

use super::{Maildir, MaildirKey, Sub, dirs, io_error, name};
use crate::stamp::FileStamp;
use crate::{MessageInfo, StoreError};

/// maildir(5): "When a cleaning program notices a file in tmp that has not
/// been accessed in 36 hours, it deletes the file."
const TMP_MAX_AGE: Duration = Duration::from_hours(36);

/// The number of octets an LF → CRLF encoder sends for `reader`'s bytes:
/// the exact RFC 1939 `LIST` size of a stored message.
///
/// Counts every byte, plus one for each LF not preceded by CR (it becomes
/// CRLF), plus two if the data is non-empty and does not end in LF (the
/// encoder ends the last line with CRLF). An existing CRLF is sent as is, a
/// lone CR as is; empty input is 0 octets. This is the fallback for files
/// whose names carry no `,W=` (qmail, mutt), and it matches the `W=` that
/// [`Maildir::deliver`] writes for the same stored bytes.
///
/// # Errors
///
/// Any error from `reader` other than `Interrupted` (which is retried).
pub fn wire_size_of(mut reader: impl Read) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut counter = WireCounter::default();
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(counter.finish()),
            Ok(n) => counter.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Incremental wire-size count over stored bytes, shared by
/// [`wire_size_of`] and the writer so that `W=` and the fallback can never
/// disagree.
#[derive(Debug, Default)]
pub(super) struct WireCounter {
    octets: u64,
    prev: Option<u8>,
}

impl WireCounter {
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else { return };
        let mut bare_lf = 0u64;
        let mut prev = self.prev;
        for &b in bytes {
            if b == b'\n' && prev != Some(b'\r') {
                bare_lf += 1;
            }
            prev = Some(b);
        }
        self.octets += bytes.len() as u64 + bare_lf;
        self.prev = Some(last);
    }

    /// The count so far, without the final CRLF a non-empty unterminated
    /// last line would get. Never more than [`finish`](Self::finish).
    pub(super) fn partial(&self) -> u64 {
        self.octets
    }

    pub(super) fn finish(&self) -> u64 {
        match self.prev {
            Some(b) if b != b'\n' => self.octets + 2,
            _ => self.octets,
        }
    }
}

/// Lists `new/` and `cur/`, ordered by delivery time then name.
pub(super) fn scan(md: &Maildir) -> Result<Vec<MessageInfo>, StoreError> {
    Ok(scan_listing(md)?.messages)
}

/// A scan of `new/` and `cur/` with what the listing cache needs to know
/// whether it may keep it.
#[derive(Debug)]
pub(super) struct Listing {
    /// The messages, ordered by delivery time then name.
    pub(super) messages: Vec<MessageInfo>,
    /// `[new/, cur/]` as stat'ed before each was read, if a second stat
    /// after both were read found them unchanged; `None` otherwise.
    pub(super) stamps: Option<[FileStamp; 2]>,
    /// `pobox-uidls` as stat'ed before it was read (`None`: no such file).
    pub(super) uidls: Option<FileStamp>,
}

/// The directory entries of `new/` and `cur/` are read with `getdents`
/// into this buffer, so reading a name allocates nothing; 64 KiB holds
/// several hundred entries per system call.
const DIRENT_BUFFER: usize = 64 * 1024;

/// [`scan`], with the directories' stamps.
pub(super) fn scan_listing(md: &Maildir) -> Result<Listing, StoreError> {
    // Read before the directories: an override appended during the scan
    // changes the file's stamp, so a cached listing is not reused.
    let (overrides, uidls) = md.load_uidls()?;
    let mut messages = Vec::new();
    let mut buf = Vec::with_capacity(DIRENT_BUFFER);
    let mut opened = Vec::with_capacity(2);
    for sub in [Sub::New, Sub::Cur] {
        let path = md.dir(sub);
        let read_err = |e: io::Error| io_error(format_args!("reading {}", path.display()), e);
        // A fresh description of the directory the Maildir was opened
        // with (never a link, see dirs.rs), so this scan reads from the
        // start whoever else reads it.
        let dir = dirs::reopen(md.fd(sub)).map_err(read_err)?;
        let before = FileStamp::of(&dir.metadata().map_err(read_err)?);
        read_messages(&dir, &path, sub, &mut buf, &mut messages)?;
        opened.push((dir, path, before));
    }
    // Stat'ed again after both were read: equal stamps mean the listing of
    // each directory is what it held all along (see cache.rs for why that
    // needs old timestamps too).
    let mut unchanged = true;
    for (dir, path, before) in &opened {
        let after = dir
            .metadata()
            .map_err(|e| io_error(format_args!("reading {}", path.display()), e))?;
        unchanged &= FileStamp::of(&after) == *before;
    }
    // Names are unique within a directory, so only a name present in both
    // new/ and cur/ with the same mtime can tie on (time, name); new/ first,
    // as the stable sort of the new/-then-cur/ list did.
    messages.sort_unstable_by(|a, b| {
        let (a_sub, a_name) = a.key.as_maildir();
        let (b_sub, b_name) = b.key.as_maildir();
        a.received
            .cmp(&b.received)
            .then_with(|| a_name.cmp(b_name))
            .then_with(|| (a_sub == Sub::Cur).cmp(&(b_sub == Sub::Cur)))
    });
    overrides.apply(&mut messages);
    Ok(Listing {
        messages,
        stamps: unchanged.then(|| [opened[0].2, opened[1].2]),
        uidls,
    })
}

/// Appends the messages of one directory. Allocates only what a
/// [`MessageInfo`] owns (its name and UIDL): names are read into `buf`,
/// and each file is stat'ed relative to the directory's descriptor.
fn read_messages(
    dir: &File,
    path: &Path,
    sub: Sub,
    buf: &mut Vec<u8>,
    messages: &mut Vec<MessageInfo>,
) -> Result<(), StoreError> {
    let mut entries = RawDir::new(dir, buf.spare_capacity_mut());
    while let Some(entry) = entries.next() {
        let entry =
            entry.map_err(|e| io_error(format_args!("reading {}", path.display()), e.into()))?;
        let name = entry.file_name();
        // Also skips `.` and `..`, which getdents returns.
        if is_hidden(OsStr::from_bytes(name.to_bytes())) {
            continue;
        }
        // Not a regular file for sure: skip without a stat. DT_UNKNOWN
        // (some filesystems) and DT_REG are decided by the stat below.
        if !matches!(entry.file_type(), FileType::RegularFile | FileType::Unknown) {
            continue;
        }
        if let Some(info) = message_info(dir, path, sub, name)? {
            messages.push(info);
        }
    }
    Ok(())
}

/// The snapshot entry for one directory entry, or `None` if it is not a
/// message (directory, symlink, device...) or vanished while we looked.
fn message_info(
    dir: &File,
    path: &Path,
    sub: Sub,
    name: &CStr,
) -> Result<Option<MessageInfo>, StoreError> {
    let file_name = OsStr::from_bytes(name.to_bytes());
    let context = |what: &str| format!("{what} {}", path.join(file_name).display());
    // Not following symlinks: a symlink is not one of our messages and
    // could point anywhere. Relative to the directory's descriptor, so the
    // kernel resolves one name, not the whole path.
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => s,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io_error(context("stat"), e.into())),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Ok(None);
    }
    let size = match name::wire_size_from_name(file_name) {
        Some(w) => w,
        // A foreign file without Dovecot's W=: measure it. Once per scan;
        // cheap next to the RETR that usually follows.
        None => match open_read_at(dir, name).and_then(wire_size_of) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(context("measuring"), e)),
        },
    };
    // The field types differ between targets (i64/u64, u32/u64).
    #[allow(clippy::unnecessary_cast)]
    let (secs, nsec) = (stat.st_mtime as i64, stat.st_mtime_nsec as u32);
    let Some(received) = system_time(secs, nsec) else {
        return Err(io_error(
            context("mtime of"),
            io::Error::new(io::ErrorKind::InvalidData, "timestamp out of range"),
        ));
    };
    Ok(Some(MessageInfo {
        uidl: name::uidl_for(name::base_of(file_name)),
        size,
        received,
        key: super::maildir_key(sub, file_name),
        retrieved: None,
    }))
}

/// A `stat` timestamp as a `SystemTime`, the way `Metadata::modified`
/// converts it (`secs` may be negative; `nsec` always counts forward).
fn system_time(secs: i64, nsec: u32) -> Option<SystemTime> {
    let whole = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    whole?.checked_add(Duration::from_nanos(u64::from(nsec)))
}

/// Opens `name` in `dir` read-only, refusing symlinks (as `open_read` does).
fn open_read_at(dir: &File, name: &CStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// The current name of the message with base name `base` in the
/// directory `dir`, if any.
pub(super) fn find_by_base(dir: BorrowedFd<'_>, base: &OsStr) -> io::Result<Option<OsString>> {
    Ok(dirs::read_names(dir)?
        .into_iter()
        .map(|(name, _)| name)
        .find(|name| !is_hidden(name) && name::base_of(name) == base))
}

/// Removes `tmp/` files untouched for [`TMP_MAX_AGE`]: deliveries that
/// crashed between create and rename. Best effort: errors are logged, never
/// returned, because a messy `tmp/` must not stop a user reading mail.
///
/// "Untouched" is the later of atime and mtime, as Dovecot's
/// `maildir_tmp_cleanup` does: atime alone is unreliable on `noatime`
/// mounts, and a slow delivery keeps bumping mtime.
pub(super) fn reap_tmp(dir: BorrowedFd<'_>, tmp: &Path, now: SystemTime) {
    let entries = match dirs::read_names(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %tmp.display(), error = %e, "cannot read tmp/ for cleanup");
            return;
        }
    };
    for (name, _) in entries {
        if is_hidden(&name) {
            continue;
        }
        // Not following links: a link is not a delivery of ours.
        let Ok(st) = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) else { continue };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            continue;
        }
        // The field types differ between targets (i64/u64, u32/u64).
        #[allow(clippy::unnecessary_cast)]
        let times = [
            system_time(st.st_atime as i64, st.st_atime_nsec as u32),
            system_time(st.st_mtime as i64, st.st_mtime_nsec as u32),
        ];
        let Some(touched) = times.into_iter().flatten().max() else { continue };
        if now
            .duration_since(touched)
            .is_ok_and(|age| age > TMP_MAX_AGE)
        {
            let path = tmp.join(&name);
            match rustix::fs::unlinkat(dir, &name, AtFlags::empty()) {
                Ok(()) => tracing::info!(path = %path.display(), "removed stale tmp file"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove stale tmp file");
                }
            }
        }
    }
}

/// maildir(5): "It is a good idea for readers to skip all filenames in new
/// and cur starting with a dot."
fn is_hidden(name: &OsStr) -> bool {
    name.as_bytes().first() == Some(&b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: a naive whole-buffer LF → CRLF encoder.
    fn crlf_encode(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = None;
        for &b in data {
            if b == b'\n' && prev != Some(b'\r') {
                out.push(b'\r');
            }
            out.push(b);
            prev = Some(b);
        }
        if !data.is_empty() && !data.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn wire_size_matches_reference_encoder() {
        let cases: &[&[u8]] = &[
            b"",
            b"\n",
            b"a",
            b"a\n",
            b"a\r\n",
            b"a\nb\r\nc",
            b"\r",
            b"a\rb\n",
            b"\n\n\n",
            b"Subject: x\n\n.\n..\n",
        ];
        for data in cases {
            assert_eq!(
                wire_size_of(*data).unwrap(),
                crlf_encode(data).len() as u64,
                "{data:?}"
            );
        }
    }

    #[test]
    fn wire_counter_is_chunking_independent() {
        let data = b"a\r\nb\nc\r\rd\n\re";
        let whole = wire_size_of(&data[..]).unwrap();
        for chunk in 1..data.len() {
            let mut c = WireCounter::default();
            for piece in data.chunks(chunk) {
                c.feed(piece);
            }
            assert_eq!(c.finish(), whole, "chunk {chunk}");
        }
    }
}
