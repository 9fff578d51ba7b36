//! mbox destination: appends in mboxrd format (RFC 4155; every line matching
//! `^>*From ` gains one more `>`, so readers can undo it exactly), under a
//! dot-lock (`FILE.lock`, holding our pid) and an exclusive `flock`.
//!
//! Exactly-once without file names: before appending, the journal records
//! the offset, length and SHA-256 of the bytes about to be written (the
//! `From ` line's date is fixed in that record too, so a retry renders the
//! same bytes). If the process dies after the append but before the
//! journal's "stored" record, the next run finds those exact bytes at that
//! offset and does not append again; if it died half-way through the
//! append, the partial tail is recognised as a prefix of the message and cut
//! off before the full copy is written.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{Delivery, DestError};
use crate::journal::{Journal, PendingAppend};
use crate::spool::Spool;

/// An mbox file.
#[derive(Debug)]
pub struct MboxDest {
    path: PathBuf,
}

impl MboxDest {
    /// Creates the file (mode 0600) if it does not exist, and removes the
    /// temporary lock files killed runs left next to it.
    ///
    /// # Errors
    /// [`DestError::Mbox`].
    pub fn open(path: &Path) -> Result<MboxDest, DestError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| DestError::Mbox { path: path.to_owned(), source })?;
        // Also here, not only under the lock: a run with nothing to append
        // still clears what killed runs left.
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            remove_dead_tmp_locks(dir, &name.to_string_lossy());
        }
        Ok(MboxDest { path: path.to_owned() })
    }

    /// Appends the message, or recognises an earlier append of it.
    ///
    /// # Errors
    /// [`DestError`]; on a write error the file is cut back to where the
    /// append started.
    pub fn deliver(
        &self,
        uidl: Option<&str>,
        spool: &mut Spool,
        journal: &mut Journal,
        now: u64,
    ) -> Result<Delivery, DestError> {
        let err = |source| DestError::Mbox { path: self.path.clone(), source };
        let _dotlock = DotLock::acquire(&self.path).map_err(err)?;
        crate::fault::point("mbox-lock-linked");
        let file = OpenOptions::new().read(true).write(true).open(&self.path).map_err(err)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| err(e.into()))?;
        crate::fault::point("mbox-locked");

        let pending = uidl.and_then(|u| journal.pending(u)).cloned();
        let ts = pending.as_ref().map_or(now, |p| p.ts);
        let mut hasher = HashWriter::default();
        render(&mut spool.reader().map_err(DestError::Spool)?, ts, &mut hasher).map_err(DestError::Spool)?;
        let (len, sha256) = (hasher.len, <[u8; 32]>::from(hasher.sha.finalize()));

        if let Some(p) = pending.filter(|p| p.len == len && p.sha256 == sha256) {
            let flen = file.metadata().map_err(err)?.len();
            if flen >= p.offset + len && hash_range(&file, p.offset, len).map_err(err)? == sha256 {
                return Ok(Delivery::AlreadyPresent);
            }
            if flen > p.offset && flen < p.offset + len {
                let mut check = PrefixCheck::new(&file, p.offset, flen - p.offset).map_err(err)?;
                render(&mut spool.reader().map_err(DestError::Spool)?, ts, &mut check).map_err(DestError::Spool)?;
                if check.matches() {
                    // Our own torn append: remove it before writing again.
                    file.set_len(p.offset).map_err(err)?;
                    file.sync_all().map_err(err)?;
                }
            }
        }

        let offset = file.metadata().map_err(err)?.len();
        if let Some(u) = uidl {
            journal.record_pending(u, &PendingAppend { offset, len, sha256, ts })?;
        }
        let written = (|| {
            let mut f = &file;
            f.seek(SeekFrom::End(0))?;
            let mut w = BufWriter::with_capacity(64 * 1024, f);
            render(&mut spool.reader()?, ts, &mut w)?;
            w.flush()?;
            drop(w);
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = file.set_len(offset);
            let _ = file.sync_all();
            return Err(err(e));
        }
        crate::fault::point("mbox-appended");
        Ok(Delivery::Stored)
    }
}

/// Writes one mboxrd entry: `From ` line, quoted content, final newline
/// and the blank separator line.
fn render(content: &mut dyn Read, ts: u64, out: &mut dyn Write) -> io::Result<()> {
    out.write_all(format!("From MAILER-DAEMON {}\n", asctime(ts)).as_bytes())?;
    let mut r = BufReader::with_capacity(64 * 1024, content);
    let mut line = Vec::new();
    let mut last = b'\n';
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let quoted = line.iter().position(|&b| b != b'>').is_some_and(|p| line[p..].starts_with(b"From "));
        if quoted {
            out.write_all(b">")?;
        }
        out.write_all(&line)?;
        last = *line.last().unwrap_or(&b'\n');
    }
    if last != b'\n' {
        out.write_all(b"\n")?;
    }
    out.write_all(b"\n")
}

/// `Thu Nov 27 05:44:00 2026`, UTC, as the `From ` line wants (asctime:
/// the day padded with a space). The `time` crate does the calendar, as it
/// does for the server's trace headers.
fn asctime(ts: u64) -> String {
    const ASCTIME: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
    );
    i64::try_from(ts)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(ASCTIME)
        .unwrap_or_default()
}

#[derive(Default)]
struct HashWriter {
    sha: Sha256,
    len: u64,
}

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sha.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn hash_range(file: &File, offset: u64, len: u64) -> io::Result<[u8; 32]> {
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    let mut h = HashWriter::default();
    io::copy(&mut f.take(len), &mut h)?;
    Ok(h.sha.finalize().into())
}

/// Compares what is written to it with `len` bytes of a file from `offset`.
struct PrefixCheck<'a> {
    file: BufReader<&'a File>,
    remaining: u64,
    equal: bool,
}

impl<'a> PrefixCheck<'a> {
    fn new(file: &'a File, offset: u64, len: u64) -> io::Result<PrefixCheck<'a>> {
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        Ok(PrefixCheck { file: BufReader::new(file), remaining: len, equal: true })
    }

    fn matches(&self) -> bool {
        self.equal && self.remaining == 0
    }
}

impl Write for PrefixCheck<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        if n > 0 && self.equal {
            let mut theirs = vec![0; n];
            self.file.read_exact(&mut theirs)?;
            self.equal = theirs == buf[..n];
            self.remaining -= n as u64;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `FILE.lock`, holding our pid from the moment it exists; removed on drop.
///
/// It is made the way liblockfile makes it: the pid is written into a
/// unique temporary file first, which is then hard-linked to `FILE.lock`.
/// `link` fails if the lock exists, so it is as exclusive as `O_EXCL`, and a
/// crash at any point leaves either no lock or a lock naming a dead
/// process, never an empty one (an `O_EXCL` create followed by a write left
/// an empty lock when killed in between, and every later run waited for it).
///
/// A lock is stale, and taken over, when its pid is gone, when it is empty
/// or unreadable (another program's crash) and older than
/// [`EMPTY_LOCK_STALE`], or when it is older than [`LOCK_STALE`] whatever it
/// says. Taking over a lock someone still holds is possible in a race
/// between two takers; that is why the `flock` on the mbox itself stays the
/// real guard, and the dot-lock is there for the mail readers that only
/// honour dot-locks. Where the directory is not writable (a system spool we
/// may not create files in) the flock alone protects.
struct DotLock {
    path: Option<PathBuf>,
}

/// An empty or unreadable lock older than this is a crashed writer's: a
/// live one writes its pid within microseconds of creating the file.
const EMPTY_LOCK_STALE: Duration = Duration::from_secs(5);
/// Any lock older than this is stale (mail readers hold theirs for seconds).
const LOCK_STALE: Duration = Duration::from_secs(600);
/// How long to wait for a live holder before giving up (exit 3, retry later).
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Our temporary lock files: `.NAME.lock-pobox.<pid>.<random>`.
const TMP_MARK: &str = ".lock-pobox.";

impl DotLock {
    fn acquire(mbox: &Path) -> io::Result<DotLock> {
        let mut name = mbox.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let dir = mbox.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let file_name = mbox.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}{TMP_MARK}{}.{:08x}", std::process::id(), rand::random::<u32>()));
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
            Ok(mut f) => {
                if let Err(e) = writeln!(f, "{}", std::process::id()) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(DotLock { path: None }),
            Err(e) => return Err(e),
        }
        crate::fault::point("mbox-lock-tmp");
        let result = Self::link_loop(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        if result.is_ok() {
            // Holding the lock, clear what killed runs left of their own
            // attempts (never another program's files, never a live one's).
            remove_dead_tmp_locks(dir, &file_name);
        }
        result
    }

    fn link_loop(tmp: &Path, path: &Path) -> io::Result<DotLock> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match std::fs::hard_link(tmp, path) {
                Ok(()) => return Ok(DotLock { path: Some(path.to_owned()) }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if let Some(stale) = stale_lock(path) {
                        // Remove only the very file judged stale, not a new
                        // lock someone made meanwhile.
                        if std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == stale) {
                            let _ = std::fs::remove_file(path);
                        }
                        continue;
                    }
                    if Instant::now() > deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!("{} is held by a running program", path.display()),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                // NFS: the link may have worked though its reply was lost
                // (liblockfile checks the link count the same way).
                Err(e) => {
                    if std::fs::metadata(tmp).is_ok_and(|m| m.nlink() == 2) {
                        return Ok(DotLock { path: Some(path.to_owned()) });
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// `Some((dev, inode))` of the lock if it is stale.
fn stale_lock(lock: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::symlink_metadata(lock).ok()?;
    let age = age_of(&meta);
    let id = (meta.dev(), meta.ino());
    if age > LOCK_STALE {
        return Some(id);
    }
    let pid = std::fs::read_to_string(lock).ok().and_then(|s| s.trim().parse::<i32>().ok());
    match pid.and_then(rustix::process::Pid::from_raw) {
        Some(pid) => process_is_gone(pid).then_some(id),
        // Empty, unreadable or not a pid: a program that crashed before
        // writing it, or one that never does; go by age.
        None => (age > EMPTY_LOCK_STALE).then_some(id),
    }
}

fn process_is_gone(pid: rustix::process::Pid) -> bool {
    matches!(rustix::process::test_kill_process(pid), Err(rustix::io::Errno::SRCH))
}

fn age_of(meta: &std::fs::Metadata) -> Duration {
    meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default()
}

/// Removes `.NAME.lock-pobox.<pid>.<random>` files of dead processes that
/// have not been touched for [`EMPTY_LOCK_STALE`]: the temporary lock file
/// of a fetch killed before it could link or remove it.
fn remove_dead_tmp_locks(dir: &Path, file_name: &str) {
    let prefix = format!(".{file_name}{TMP_MARK}");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let Some(raw) = rest.split('.').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        let Some(pid) = rustix::process::Pid::from_raw(raw) else { continue };
        if i64::from(raw) == i64::from(std::process::id()) || !process_is_gone(pid) {
            continue;
        }
        if e.metadata().is_ok_and(|m| m.is_file() && age_of(&m) > EMPTY_LOCK_STALE) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool_of(data: &[u8]) -> Spool {
        let mut s = Spool::new(std::env::temp_dir());
        s.write(data).unwrap();
        s
    }

    #[test]
    fn renders_mboxrd_quoting_and_separator() {
        let mut out = Vec::new();
        render(&mut &b"Subject: x\n\nFrom here\n>From there\n>>From  x\nFromage\nno newline"[..], 0, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From MAILER-DAEMON Thu Jan  1 00:00:00 1970\nSubject: x\n\n>From here\n>>From there\n>>>From  x\nFromage\nno newline\n\n"
        );
        assert_eq!(asctime(1_795_000_000), "Wed Nov 18 11:06:40 2026");
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
    }

    #[test]
    fn appends_once_even_when_the_journal_record_was_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("mbox");
        let dest = MboxDest::open(&mbox).unwrap();
        let mut j = Journal::open(dir.path(), "a@b:1").unwrap();
        let msg = b"Subject: one\n\nbody\n";
        assert_eq!(dest.deliver(Some("u1"), &mut spool_of(msg), &mut j, 1000).unwrap(), Delivery::Stored);
        let first = std::fs::read(&mbox).unwrap();
        // Crash before "S": the pending record is all the journal has.
        // A later attempt (different clock) must recognise the append.
        assert_eq!(dest.deliver(Some("u1"), &mut spool_of(msg), &mut j, 5000).unwrap(), Delivery::AlreadyPresent);
        assert_eq!(std::fs::read(&mbox).unwrap(), first);
        assert!(!dir.path().join("mbox.lock").exists(), "dot-lock must be removed");
    }

    #[test]
    fn a_torn_append_is_cut_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("mbox");
        std::fs::write(&mbox, b"From x Thu Jan  1 00:00:00 1970\nold\n\n").unwrap();
        let dest = MboxDest::open(&mbox).unwrap();
        let mut j = Journal::open(dir.path(), "a@b:1").unwrap();
        let msg = b"Subject: two\n\nline 1\nline 2\n";
        dest.deliver(Some("u2"), &mut spool_of(msg), &mut j, 7).unwrap();
        let full = std::fs::read(&mbox).unwrap();
        // Simulate a crash half-way through that append.
        let f = OpenOptions::new().write(true).open(&mbox).unwrap();
        f.set_len(full.len() as u64 - 9).unwrap();
        assert_eq!(dest.deliver(Some("u2"), &mut spool_of(msg), &mut j, 99).unwrap(), Delivery::Stored);
        assert_eq!(std::fs::read(&mbox).unwrap(), full, "exactly one complete copy");
    }

    #[test]
    fn stale_dotlock_of_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("mbox");
        // pid 2^22+1 is above Linux's pid_max default: never alive.
        std::fs::write(dir.path().join("mbox.lock"), "4194305\n").unwrap();
        let dest = MboxDest::open(&mbox).unwrap();
        let mut j = Journal::open(dir.path(), "a@b:1").unwrap();
        let t = Instant::now();
        dest.deliver(None, &mut spool_of(b"x\n"), &mut j, 0).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    fn age(path: &Path, secs: u64) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(secs)).unwrap();
    }

    #[test]
    fn empty_dotlock_left_by_a_crash_is_taken_over_after_seconds() {
        // What an O_EXCL-then-write lock left when killed in between; it
        // used to block every run for ten minutes.
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("mbox");
        let lock = dir.path().join("mbox.lock");
        std::fs::write(&lock, "").unwrap();
        assert_eq!(stale_lock(&lock), None, "a fresh empty lock may be a live writer's");
        age(&lock, 10);
        assert!(stale_lock(&lock).is_some());
        let dest = MboxDest::open(&mbox).unwrap();
        let mut j = Journal::open(dir.path(), "a@b:1").unwrap();
        let t = Instant::now();
        dest.deliver(None, &mut spool_of(b"x\n"), &mut j, 0).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "waited {:?}", t.elapsed());
        assert!(!lock.exists());
        // A live process's lock is never stale, however fresh.
        std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(stale_lock(&lock), None);
    }

    #[test]
    fn the_lock_holds_our_pid_and_killed_runs_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("mbox");
        let dead = dir.path().join(".mbox.lock-pobox.4194305.0000abcd");
        let dead_young = dir.path().join(".mbox.lock-pobox.4194305.0000abce");
        let live = dir.path().join(format!(".mbox.lock-pobox.{}.0000abcf", std::process::id()));
        let foreign = dir.path().join(".mbox.lock-other.4194305");
        for f in [&dead, &dead_young, &live, &foreign] {
            std::fs::write(f, "1\n").unwrap();
        }
        for f in [&dead, &live, &foreign] {
            age(f, 60);
        }
        let held = DotLock::acquire(&mbox).unwrap();
        let lock = dir.path().join("mbox.lock");
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), format!("{}\n", std::process::id()));
        assert!(!dead.exists(), "a dead run's temp lock file must go");
        assert!(dead_young.exists() && live.exists() && foreign.exists(), "only old files of dead pobox runs go");
        let ours: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(&format!("pobox.{}.", std::process::id())))
            .map(|e| e.file_name())
            .collect();
        assert_eq!(ours.len(), 1, "our own temp file is gone once linked: {ours:?}");
        drop(held);
        assert!(!lock.exists());
    }
}
