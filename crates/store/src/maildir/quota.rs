//! Maildir++ quota bookkeeping: the `maildirsize` file.
//!
//! Format (the Maildir++ convention Courier and Dovecot use): a first line
//! with the quota definition (`<bytes>S,<count>C`), then one line per change,
//! `<bytes> <count>` (negative for removals). Usage is the sum. Appends are
//! small `O_APPEND` writes, atomic between concurrent deliveries. The file is
//! recalculated from a scan when it is missing, when its definition line
//! does not match the configured quota, or when it grows past 5120 bytes.
//! It is bookkeeping, not data: a lost or wrong file costs one rescan.

use std::fs::File;
use std::io::{self, Read, Write};

use rustix::fs::{AtFlags, OFlags};
use rustix::io::Errno;

use super::{Maildir, io_error};
use crate::StoreError;
use crate::quota::{Quota, Usage};

const FILE: &str = "maildirsize";
/// Maildir++: recalculate once the file is larger than this.
const MAX_FILE: usize = 5120;

fn definition(q: &Quota) -> String {
    let mut parts = Vec::new();
    if let Some(b) = q.bytes {
        parts.push(format!("{b}S"));
    }
    if let Some(c) = q.messages {
        parts.push(format!("{c}C"));
    }
    parts.join(",")
}

impl Maildir {
    /// Current usage, from `maildirsize` or, when that cannot be trusted, a
    /// scan (which then rewrites the file).
    pub(crate) fn usage(&self, quota: &Quota) -> Result<Usage, StoreError> {
        let path = self.path().join(FILE);
        let read = |mut f: File| -> io::Result<String> {
            // One byte more than trusted, to see a file that is too big
            // without reading all of it.
            let mut text = String::new();
            (&mut f).take(MAX_FILE as u64 + 1).read_to_string(&mut text)?;
            Ok(text)
        };
        match self.open_in_root(FILE, OFlags::RDONLY).map_err(io::Error::from).and_then(read) {
            Ok(text) if text.len() <= MAX_FILE => {
                let mut lines = text.lines();
                if lines.next() == Some(definition(quota).as_str())
                    && let Some(usage) = sum(lines)
                {
                    return Ok(usage);
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // A link (ELOOP) or garbage: not to be trusted; the rescan
            // replaces the name with a real file.
            Err(e) if e.kind() == io::ErrorKind::InvalidData || e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {}
            Err(e) => return Err(io_error(format_args!("reading {}", path.display()), e)),
        }
        self.recalculate(quota)
    }

    fn recalculate(&self, quota: &Quota) -> Result<Usage, StoreError> {
        let messages = self.scan()?;
        let usage = Usage { bytes: messages.iter().map(|m| m.size).sum(), messages: messages.len() as u64 };
        let tmp = format!("{FILE}.{}.tmp", std::process::id());
        let text = format!("{}\n{} {}\n", definition(quota), usage.bytes, usage.messages);
        // O_EXCL|O_NOFOLLOW: never write through whatever holds that
        // (predictable) name; a leftover (a crash, a planted link) is
        // removed first: unlinkat removes the name, not what it points to.
        let create = || self.open_in_root(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL);
        let write = || -> io::Result<()> {
            let mut f = match create() {
                Err(Errno::EXIST) => {
                    rustix::fs::unlinkat(self.root_fd(), tmp.as_str(), AtFlags::empty())?;
                    create()?
                }
                other => other?,
            };
            f.write_all(text.as_bytes())?;
            Ok(())
        };
        // Best effort: a failure only means the next delivery rescans.
        // The rename replaces the name `maildirsize` (a link there
        // included), never the file a link points to.
        // Not a message: Maildir++'s own write-then-rename of `maildirsize`.
        #[allow(clippy::disallowed_methods, reason = "replaces maildirsize, not a message")]
        let renamed = || rustix::fs::renameat(self.root_fd(), tmp.as_str(), self.root_fd(), FILE);
        if write().is_ok() && renamed().is_err() {
            let _ = rustix::fs::unlinkat(self.root_fd(), tmp.as_str(), AtFlags::empty());
        }
        Ok(usage)
    }

    /// Drops `maildirsize`, so the next check rescans (after changes that
    /// are not simple deliveries or removals).
    pub(crate) fn forget_usage(&self) {
        let _ = rustix::fs::unlinkat(self.root_fd(), FILE, AtFlags::empty());
    }

    /// Records a change in usage (a delivery: `+size +1`; a removal:
    /// `-size -1`). Best effort, see the module docs. A missing file stays
    /// missing (the next usage() call rescans and writes it); a link is
    /// not written through.
    pub(crate) fn record_usage(&self, bytes: i64, messages: i64) {
        match self.open_in_root(FILE, OFlags::WRONLY | OFlags::APPEND) {
            Ok(mut f) => {
                let _ = f.write_all(format!("{bytes} {messages}\n").as_bytes());
            }
            Err(Errno::NOENT) => {}
            Err(e) => {
                tracing::warn!(path = %self.path().join(FILE).display(), error = %e, "cannot update maildirsize; it will be rescanned");
                self.forget_usage();
            }
        }
    }
}

fn sum<'a>(lines: impl Iterator<Item = &'a str>) -> Option<Usage> {
    let (mut bytes, mut count) = (0i64, 0i64);
    for line in lines {
        let mut it = line.split_whitespace();
        bytes = bytes.checked_add(it.next()?.parse().ok()?)?;
        count = count.checked_add(it.next()?.parse().ok()?)?;
    }
    Some(Usage { bytes: u64::try_from(bytes).ok()?, messages: u64::try_from(count).ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_and_sum() {
        assert_eq!(definition(&Quota { bytes: Some(1000), messages: Some(5) }), "1000S,5C");
        assert_eq!(definition(&Quota { bytes: None, messages: Some(5) }), "5C");
        assert_eq!(sum(["10 1", "-4 -1", "7 1"].into_iter()), Some(Usage { bytes: 13, messages: 1 }));
        assert_eq!(sum(["10 x"].into_iter()), None);
        assert_eq!(sum(["-5 -1"].into_iter()), None, "negative totals mean a bad file");
    }
}
