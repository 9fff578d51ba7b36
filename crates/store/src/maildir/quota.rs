//! Maildir++ quota bookkeeping: the `maildirsize` file.
//!
//! Format (the Maildir++ convention Courier and Dovecot use): a first line
//! with the quota definition (`<bytes>S,<count>C`), then one line per change,
//! `<bytes> <count>` (negative for removals). Usage is the sum. Appends are
//! small `O_APPEND` writes, atomic between concurrent deliveries. The file is
//! recalculated from a scan when it is missing, when its definition line
//! does not match the configured quota, or when it grows past 5120 bytes.
//! It is bookkeeping, not data: a lost or wrong file costs one rescan.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;

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
        match std::fs::read_to_string(&path) {
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
            Err(e) => return Err(io_error(format_args!("reading {}", path.display()), e)),
        }
        self.recalculate(quota)
    }

    fn recalculate(&self, quota: &Quota) -> Result<Usage, StoreError> {
        let messages = self.scan()?;
        let usage = Usage { bytes: messages.iter().map(|m| m.size).sum(), messages: messages.len() as u64 };
        let path = self.path().join(FILE);
        let tmp = self.path().join(format!("{FILE}.{}.tmp", std::process::id()));
        let text = format!("{}\n{} {}\n", definition(quota), usage.bytes, usage.messages);
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            Ok(())
        };
        // Best effort: a failure only means the next delivery rescans.
        if write().is_ok() && rustix::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(usage)
    }

    /// Drops `maildirsize`, so the next check rescans (after changes that
    /// are not simple deliveries or removals).
    pub(crate) fn forget_usage(&self) {
        let _ = std::fs::remove_file(self.path().join(FILE));
    }

    /// Records a change in usage (a delivery: `+size +1`; a removal:
    /// `-size -1`). Best effort, see the module docs.
    pub(crate) fn record_usage(&self, bytes: i64, messages: i64) {
        let path = self.path().join(FILE);
        if !path.exists() {
            return; // the next usage() call rescans and writes it
        }
        if let Ok(mut f) = OpenOptions::new().append(true).open(&path) {
            let _ = f.write_all(format!("{bytes} {messages}\n").as_bytes());
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
