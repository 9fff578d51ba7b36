//! UIDL overrides: a message keeping the UIDL another server gave it.
//!
//! Normally a message's UIDL is its Maildir base name (see `name.rs`).
//! Mail moved in from Dovecot or another POP3 server must keep the UIDL
//! clients already know, or every leave-on-server client downloads the
//! whole mailbox again. `pobox-uidls` in the Maildir root maps base names
//! to such UIDLs, one line each:
//!
//! ```text
//! <uidl> <base>\n
//! ```
//!
//! The UIDL comes first because it never contains a space (RFC 1939 §7:
//! 0x21..=0x7E); the base is the rest of the line (it may, in foreign
//! Maildirs; it never contains a newline, which is refused). A later line
//! for the same base wins. Lines are appended under the maildrop lock with
//! `O_APPEND` and fsynced (the root too when the file is created) before
//! the writer returns; a line without its newline (a crash mid-append) is
//! ignored, and the next append starts on a fresh line. Lines naming a
//! base no longer present are ignored: the file is keyed by base name,
//! which survives `new/` → `cur/`, flag changes, and the trip to the
//! restore area and back, so a restored message keeps its UIDL.
//!
//! Readers (the scan, the listing cache) take no lock: they read whole
//! lines only. The listing cache also keys on this file's stamp, so a new
//! override is seen by the next session.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::stamp::FileStamp;
use super::{Maildir, MaildirKey, io_error, name};
use crate::{MessageInfo, StoreError, Uidl, is_valid_uidl};

/// The file's name in the Maildir root.
pub(crate) const UIDLS_NAME: &str = "pobox-uidls";

/// The overrides read from `pobox-uidls`: base name → UIDL.
#[derive(Debug, Default, Clone)]
pub(crate) struct UidlMap {
    by_base: HashMap<OsString, Uidl>,
}

impl UidlMap {
    /// The override for `base`, if any.
    pub(crate) fn get(&self, base: &OsStr) -> Option<&Uidl> {
        self.by_base.get(base)
    }

    /// Records a line just written.
    pub(crate) fn insert(&mut self, base: OsString, uidl: Uidl) {
        self.by_base.insert(base, uidl);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_base.is_empty()
    }

    /// Parses the file's text; malformed lines are skipped (and counted).
    fn parse(text: &[u8]) -> (UidlMap, usize) {
        let mut map = UidlMap::default();
        let mut bad = 0;
        // Only complete lines: the last one may be a torn append.
        let complete = match text.iter().rposition(|&b| b == b'\n') {
            Some(end) => &text[..end],
            None => &[][..],
        };
        if complete.is_empty() {
            return (map, 0);
        }
        for line in complete.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let Some(space) = line.iter().position(|&b| b == b' ') else {
                bad += 1;
                continue;
            };
            let (uidl, base) = (&line[..space], &line[space + 1..]);
            if !is_valid_uidl(uidl) || !is_valid_override_base(base) {
                bad += 1;
                continue;
            }
            // is_valid_uidl accepts ASCII only.
            let uidl = Uidl(String::from_utf8_lossy(uidl).into_owned());
            map.by_base.insert(OsString::from_vec(base.to_vec()), uidl);
        }
        (map, bad)
    }

    /// Replaces the UIDLs of `messages` that have an override, keeping
    /// UIDLs unique: an override wins over a base-derived UIDL equal to it
    /// (that message gets the hashed form of its base), and of two bases
    /// given the same UIDL (only a hand edit can do that) the first in
    /// listing order keeps it.
    pub(crate) fn apply(&self, messages: &mut [MessageInfo]) {
        if self.is_empty() {
            return;
        }
        let mut taken: HashSet<Uidl> = HashSet::new();
        let mut overridden = vec![false; messages.len()];
        for (i, m) in messages.iter_mut().enumerate() {
            let (_, file) = m.key.as_maildir();
            if let Some(uidl) = self.get(name::base_of(file))
                && taken.insert(uidl.clone())
            {
                m.uidl = uidl.clone();
                overridden[i] = true;
            }
        }
        for (i, m) in messages.iter_mut().enumerate() {
            if !overridden[i] && taken.contains(&m.uidl) {
                let (_, file) = m.key.as_maildir();
                m.uidl = name::hashed_uidl(name::base_of(file));
            }
        }
    }
}

/// True for a base name an override line can hold: non-empty, no newline,
/// no `/` or NUL (it is a file name), not a dot-file (never listed).
pub(crate) fn is_valid_override_base(base: &[u8]) -> bool {
    !base.is_empty() && base[0] != b'.' && !base.iter().any(|&b| matches!(b, b'\n' | b'/' | 0))
}

impl Maildir {
    /// Reads `pobox-uidls`, with its stamp (taken before reading, so a
    /// later append makes the stamp differ from the file's). A missing
    /// file is an empty map and no stamp.
    pub(super) fn load_uidls(&self) -> Result<(UidlMap, Option<FileStamp>), StoreError> {
        let path = self.path().join(UIDLS_NAME);
        let mut file = match self.open_in_root(UIDLS_NAME, OFlags::RDONLY) {
            Ok(f) => f,
            Err(Errno::NOENT) => return Ok((UidlMap::default(), None)),
            Err(Errno::LOOP) => {
                return Err(StoreError::Unsafe {
                    path,
                    reason: "it is a symbolic link".into(),
                });
            }
            Err(e) => {
                return Err(io_error(
                    format_args!("reading {}", path.display()),
                    e.into(),
                ));
            }
        };
        let err = |e: io::Error| io_error(format_args!("reading {}", path.display()), e);
        let stamp = FileStamp::of(&file.metadata().map_err(err)?);
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(err)?;
        let (map, bad) = UidlMap::parse(&text);
        if bad > 0 {
            tracing::warn!(path = %path.display(), lines = bad, "malformed UIDL override lines skipped");
        }
        Ok((map, Some(stamp)))
    }

    /// The stamp of `pobox-uidls` now: `Ok(None)` if there is none.
    pub(super) fn uidls_stamp(&self) -> io::Result<Option<FileStamp>> {
        match rustix::fs::statat(
            self.root_fd(),
            UIDLS_NAME,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(FileStamp::of_stat(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends `(uidl, base)` lines and makes them durable. Call with the
    /// maildrop lock held (the only writers are the importer's, which hold
    /// it), after checking that the UIDLs stay unique.
    pub(super) fn append_uidls(&self, entries: &[(&Uidl, &OsStr)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let path = self.path().join(UIDLS_NAME);
        let err = |e: io::Error| io_error(format_args!("appending to {}", path.display()), e);
        let mut text = Vec::new();
        for (uidl, base) in entries {
            if !is_valid_override_base(base.as_bytes()) {
                return Err(StoreError::InvalidName(base.to_string_lossy().into_owned()));
            }
            text.extend_from_slice(uidl.as_str().as_bytes());
            text.push(b' ');
            text.extend_from_slice(base.as_bytes());
            text.push(b'\n');
        }
        let link = |e: Errno| match e {
            Errno::LOOP => StoreError::Unsafe {
                path: path.clone(),
                reason: "it is a symbolic link".into(),
            },
            e => err(e.into()),
        };
        let (mut file, created) = match self.open_in_root(UIDLS_NAME, OFlags::RDWR | OFlags::APPEND)
        {
            Ok(f) => (f, false),
            Err(Errno::NOENT) => {
                match self.open_in_root(
                    UIDLS_NAME,
                    OFlags::RDWR | OFlags::APPEND | OFlags::CREATE | OFlags::EXCL,
                ) {
                    Ok(f) => (f, true),
                    Err(Errno::EXIST) => (
                        self.open_in_root(UIDLS_NAME, OFlags::RDWR | OFlags::APPEND)
                            .map_err(link)?,
                        false,
                    ),
                    Err(e) => return Err(link(e)),
                }
            }
            Err(e) => return Err(link(e)),
        };
        // A torn last line (a crash mid-append) must not swallow ours.
        let len = file.metadata().map_err(err)?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            rustix::io::pread(&file, &mut last, len - 1).map_err(|e| err(e.into()))?;
            if last[0] != b'\n' {
                text.insert(0, b'\n');
            }
        }
        file.write_all(&text).map_err(err)?;
        file.sync_all().map_err(err)?;
        if created {
            self.sync_root()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_skips_torn_and_malformed_lines() {
        let (map, bad) = UidlMap::parse(
            b"0000000155aa0000 1.M1.host\nbad-line\n \x01x 2.host\nu2 with space\nlast 3.h",
        );
        assert_eq!(
            map.get(OsStr::new("1.M1.host")).unwrap().as_str(),
            "0000000155aa0000"
        );
        assert_eq!(map.get(OsStr::new("with space")).unwrap().as_str(), "u2");
        assert!(
            map.get(OsStr::new("3.h")).is_none(),
            "torn last line ignored"
        );
        assert_eq!(bad, 2);
        let (later, _) = UidlMap::parse(b"a b\nc b\n");
        assert_eq!(
            later.get(OsStr::new("b")).unwrap().as_str(),
            "c",
            "a later line wins"
        );
        assert!(UidlMap::parse(b"no newline at all").0.is_empty());
    }

    #[test]
    fn override_bases() {
        assert!(is_valid_override_base(b"1700000000.M1P2.host"));
        assert!(!is_valid_override_base(b""));
        assert!(!is_valid_override_base(b".hidden"));
        assert!(!is_valid_override_base(b"a/b"));
        assert!(!is_valid_override_base(b"a\nb"));
    }
}
