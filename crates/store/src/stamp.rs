//! [`FileStamp`]: has this file or directory changed since it was read?

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What identifies a file or directory and tells whether it changed:
/// device, inode, size, and modification and change times to the
/// nanosecond. Any write to a file, and any create, unlink or rename in a
/// directory, sets both times to the current (coarse) kernel time. One type
/// for every "reload when it changed" check: Maildir's listing cache and
/// `pobox-uidls`, the server's compiled Sieve scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of what `meta` describes.
    #[must_use]
    pub fn of(meta: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// [`of`](FileStamp::of) from an `fstat`, with the same conversions
    /// `Metadata` makes, so both give equal stamps for one directory.
    // The field types differ between targets (i64/u64, u32/u64).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    #[must_use]
    pub fn of_stat(st: &rustix::fs::Stat) -> FileStamp {
        FileStamp {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
        }
    }

    /// True if neither time is later than `at - margin`. False as well
    /// when `at` is before 1970, which no real clock is.
    #[must_use]
    pub fn unchanged_since(&self, at: SystemTime, margin: Duration) -> bool {
        let nanos = |(secs, nsec): (i64, i64)| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        let latest = nanos(self.mtime).max(nanos(self.ctime));
        at.duration_since(UNIX_EPOCH)
            .is_ok_and(|at| latest + margin.as_nanos() as i128 <= at.as_nanos() as i128)
    }
}
