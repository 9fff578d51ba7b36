//! Reading a Maildir: the session snapshot, POP3 sizes, and `tmp/` cleanup.
//!
//! Rules from maildir(5): list `new/` and `cur/`; skip names starting with
//! `.`; never read `tmp/`, only clean files there that have not been touched
//! for 36 hours.

use std::cmp::Ordering;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{Maildir, Sub, io_error, name, open_read};
use crate::{MessageInfo, MessageKey, StoreError};

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
    let mut messages = Vec::new();
    for sub in [Sub::New, Sub::Cur] {
        let dir = md.dir(sub);
        let entries = fs::read_dir(&dir)
            .map_err(|e| io_error(format_args!("reading {}", dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| io_error(format_args!("reading {}", dir.display()), e))?;
            if let Some(info) = message_info(&dir, sub, &entry)? {
                messages.push(info);
            }
        }
    }
    messages.sort_by(|a, b| match a.received.cmp(&b.received) {
        Ordering::Equal => a.key.as_maildir().1.cmp(b.key.as_maildir().1),
        other => other,
    });
    Ok(messages)
}

/// The snapshot entry for one directory entry, or `None` if it is not a
/// message (dot-file, directory, symlink) or vanished while we looked.
fn message_info(
    dir: &Path,
    sub: Sub,
    entry: &fs::DirEntry,
) -> Result<Option<MessageInfo>, StoreError> {
    let name = entry.file_name();
    if is_hidden(&name) {
        return Ok(None);
    }
    let path = dir.join(&name);
    // DirEntry::metadata does not follow symlinks: a symlink is not one of
    // our messages and could point anywhere.
    let meta = match entry.metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format_args!("stat {}", path.display()), e)),
    };
    if !meta.file_type().is_file() {
        return Ok(None);
    }
    let size = match name::wire_size_from_name(&name) {
        Some(w) => w,
        // A foreign file without Dovecot's W=: measure it. One read per
        // session; cheap next to the RETR that usually follows.
        None => match open_read(&path).and_then(wire_size_of) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(format_args!("measuring {}", path.display()), e)),
        },
    };
    let received = meta
        .modified()
        .map_err(|e| io_error(format_args!("mtime of {}", path.display()), e))?;
    Ok(Some(MessageInfo {
        uidl: name::uidl_for(name::base_of(&name)),
        size,
        received,
        key: MessageKey::maildir(sub, name),
        retrieved: None,
    }))
}

/// The current name of the message with base name `base` in `dir`, if any.
pub(super) fn find_by_base(dir: &Path, base: &OsStr) -> io::Result<Option<OsString>> {
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if !is_hidden(&name) && name::base_of(&name) == base {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Removes `tmp/` files untouched for [`TMP_MAX_AGE`]: deliveries that
/// crashed between create and rename. Best effort: errors are logged, never
/// returned, because a messy `tmp/` must not stop a user reading mail.
///
/// "Untouched" is the later of atime and mtime, as Dovecot's
/// `maildir_tmp_cleanup` does: atime alone is unreliable on `noatime`
/// mounts, and a slow delivery keeps bumping mtime.
pub(super) fn reap_tmp(tmp: &Path, now: SystemTime) {
    let entries = match fs::read_dir(tmp) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %tmp.display(), error = %e, "cannot read tmp/ for cleanup");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if is_hidden(&name) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.file_type().is_file() {
            continue;
        }
        let touched = match (meta.accessed(), meta.modified()) {
            (Ok(a), Ok(m)) => a.max(m),
            (Ok(t), Err(_)) | (Err(_), Ok(t)) => t,
            (Err(_), Err(_)) => continue,
        };
        if now
            .duration_since(touched)
            .is_ok_and(|age| age > TMP_MAX_AGE)
        {
            let path = tmp.join(&name);
            match rustix::fs::unlink(&path) {
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
