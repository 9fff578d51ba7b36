//! Where a message received by SMTP or LMTP waits between its first DATA
//! byte and the last delivery: in memory while small, in an unnamed spool
//! file past [`MEMORY_THRESHOLD`], and always within two global budgets.
//!
//! # Why a spool file, and why there
//! Holding each message in memory let five connections push the server
//! from 63 to 363 MB (issue 17, finding 4). Past the threshold a message
//! goes to a file in `DATA/spool` (mode 0700, the service user's alone),
//! opened with `O_TMPFILE` where the kernel has it (`tempfile_in`): the file
//! has no name, so it disappears with its descriptor on every path
//! (delivered, refused, disconnect, crash) and nothing can open it by
//! name. Not the recipient's `tmp/`: a message may go to several users
//! and folders (one spool copy serves them all), the recipient is not
//! final until Sieve ran, and a user-owned Maildir must not receive data
//! the server has not decided to deliver. Leftovers (only possible where
//! the file system lacks `O_TMPFILE` and the process died between create
//! and unlink) are removed at startup by [`Budget::prepare`].
//!
//! # Budgets
//! - **Memory** (`data_memory_max`): the bytes of all small messages held
//!   in memory, plus messages loaded whole for the DKIM check. When it is
//!   used up a message spills to its spool file early: memory stays
//!   bounded and nobody is refused for it.
//! - **In flight** (`data_in_flight_max`): every DATA byte held (memory or
//!   spool) by transactions not yet answered. Past it the transaction keeps
//!   reading to the end of DATA (the only place a reply fits), stores
//!   nothing more and is answered `452 4.3.1`; a new `DATA` is answered
//!   `452 4.3.1` at once. This bounds the spool's disk use.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{info, warn};

/// Messages up to this size (after dot removal) stay in memory: most mail
/// is smaller, and small deliveries then cost no file at all.
pub(crate) const MEMORY_THRESHOLD: usize = 128 * 1024;

/// The global budgets and the spool directory (shared by all sessions).
#[derive(Debug)]
pub(crate) struct Budget {
    memory: AtomicU64,
    memory_max: u64,
    in_flight: AtomicU64,
    in_flight_max: u64,
    /// `None`: the system's temporary directory (library use, tests).
    dir: Option<PathBuf>,
}

impl Budget {
    pub(crate) fn new(memory_max: u64, in_flight_max: u64, dir: Option<PathBuf>) -> Budget {
        Budget { memory: AtomicU64::new(0), memory_max, in_flight: AtomicU64::new(0), in_flight_max, dir }
    }

    /// Creates the spool directory (0700) and removes leftover files.
    ///
    /// # Errors
    /// If the directory cannot be created or is not a plain directory.
    pub(crate) fn prepare(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let Some(dir) = &self.dir else { return Ok(()) };
        match std::fs::symlink_metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a directory"));
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir_all(dir)?,
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut removed = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            info!(dir = %dir.display(), removed, "removed leftover DATA spool files");
        }
        Ok(())
    }

    /// Whether the in-flight budget is used up (a new DATA is refused).
    pub(crate) fn in_flight_full(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) >= self.in_flight_max
    }

    fn take(counter: &AtomicU64, max: u64, n: u64) -> bool {
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| cur.checked_add(n).filter(|&t| t <= max)).is_ok()
    }

    /// A new unnamed spool file (0600).
    fn spool_file(&self) -> io::Result<File> {
        match &self.dir {
            Some(dir) => tempfile::tempfile_in(dir),
            None => tempfile::tempfile(),
        }
    }
}

/// Bytes a transaction holds against the budgets; given back on drop.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    memory: u64,
    in_flight: u64,
}

impl Charge {
    pub(crate) fn new(budget: &Arc<Budget>) -> Charge {
        Charge { budget: budget.clone(), memory: 0, in_flight: 0 }
    }

    /// `n` bytes of memory for a passing need (Sieve's view of a copy),
    /// or `None` when the budget has no room.
    pub(crate) fn memory_for(budget: &Arc<Budget>, n: u64) -> Option<Charge> {
        let mut c = Charge::new(budget);
        c.memory(n).then_some(c)
    }

    fn memory(&mut self, n: u64) -> bool {
        let ok = Budget::take(&self.budget.memory, self.budget.memory_max, n);
        if ok {
            self.memory += n;
        }
        ok
    }

    fn release_memory(&mut self) {
        self.budget.memory.fetch_sub(self.memory, Ordering::AcqRel);
        self.memory = 0;
    }

    fn in_flight(&mut self, n: u64) -> bool {
        let ok = Budget::take(&self.budget.in_flight, self.budget.in_flight_max, n);
        if ok {
            self.in_flight += n;
        }
        ok
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release_memory();
        self.budget.in_flight.fetch_sub(self.in_flight, Ordering::AcqRel);
    }
}

/// Why a message is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over the size limit (`552 5.3.4`).
    TooBig,
    /// A budget is used up or the spool failed (`452 4.3.1`).
    NoRoom,
}

/// Where the bytes of a message being received go.
#[derive(Debug)]
pub(crate) struct Sink {
    to: To,
    len: u64,
    max: u64,
    charge: Charge,
}

#[derive(Debug)]
enum To {
    Memory(Vec<u8>),
    File(File),
    Discard(Refusal),
}

impl Sink {
    /// An empty sink for a message of at most `max` bytes.
    pub(crate) fn new(budget: &Arc<Budget>, max: u64) -> Sink {
        Sink { to: To::Memory(Vec::new()), len: 0, max, charge: Charge::new(budget) }
    }

    /// Appends message bytes. Past a limit the sink only counts.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len() as u64;
        self.len += n;
        if matches!(self.to, To::Discard(_)) || n == 0 {
            return;
        }
        if self.len > self.max {
            return self.discard(Refusal::TooBig);
        }
        if !self.charge.in_flight(n) {
            info!(limit = self.charge.budget.in_flight_max, "DATA in flight over the global limit; this message will be refused");
            return self.discard(Refusal::NoRoom);
        }
        match &mut self.to {
            To::Memory(buf) => {
                if buf.len() + bytes.len() <= MEMORY_THRESHOLD && self.charge.memory(n) {
                    buf.extend_from_slice(bytes);
                } else {
                    self.spill(bytes);
                }
            }
            To::File(file) => {
                if let Err(e) = std::io::Write::write_all(file, bytes) {
                    warn!(error = %e, "cannot write the DATA spool file; the message will be refused");
                    self.discard(Refusal::NoRoom);
                }
            }
            To::Discard(_) => {}
        }
    }

    /// Moves what is in memory to a spool file, then `bytes`.
    fn spill(&mut self, bytes: &[u8]) {
        let To::Memory(buf) = &self.to else { return };
        let result = self.charge.budget.spool_file().and_then(|mut f| {
            std::io::Write::write_all(&mut f, buf)?;
            std::io::Write::write_all(&mut f, bytes)?;
            Ok(f)
        });
        match result {
            Ok(f) => {
                self.to = To::File(f);
                self.charge.release_memory();
            }
            Err(e) => {
                warn!(error = %e, "cannot create the DATA spool file; the message will be refused");
                self.discard(Refusal::NoRoom);
            }
        }
    }

    /// Why the message will not be kept, once that is known (it is then
    /// only counted): a BDAT chunk is refused at its end, not the LAST.
    pub(crate) fn refused(&self) -> Option<Refusal> {
        match self.to {
            To::Discard(why) => Some(why),
            _ => None,
        }
    }

    fn discard(&mut self, why: Refusal) {
        self.to = To::Discard(why);
        self.charge.release_memory();
    }

    /// The message, or why it is not kept.
    pub(crate) fn finish(self) -> Result<Message, Refusal> {
        let data = match self.to {
            To::Memory(buf) => Data::Memory(buf),
            To::File(f) => Data::File(f),
            To::Discard(why) => return Err(why),
        };
        Ok(Message { data, len: self.len, _charge: self.charge })
    }
}

/// A received message, in memory or in its spool file; read as many times
/// as there are copies to store, never copied whole.
#[derive(Debug)]
pub(crate) struct Message {
    data: Data,
    len: u64,
    /// Holds the message's bytes against the budgets until it is dropped
    /// (never read: its `Drop` is the point).
    _charge: Charge,
}

#[derive(Debug)]
enum Data {
    Memory(Vec<u8>),
    File(File),
}

impl Message {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The message itself when it is in memory.
    pub(crate) fn in_memory(&self) -> Option<&[u8]> {
        match &self.data {
            Data::Memory(b) => Some(b),
            Data::File(_) => None,
        }
    }

    /// The first `max` bytes (or all, if shorter).
    ///
    /// # Errors
    /// Reading the spool file failed.
    pub(crate) fn head(&self, max: usize) -> io::Result<Cow<'_, [u8]>> {
        match &self.data {
            Data::Memory(b) => Ok(Cow::Borrowed(&b[..b.len().min(max)])),
            Data::File(_) => {
                let mut out = Vec::new();
                self.reader(&[]).take(max as u64).read_to_end(&mut out)?;
                Ok(Cow::Owned(out))
            }
        }
    }

    /// The whole message loaded from its spool file, charged to the memory
    /// budget; `None` when the budget has no room (or reading failed).
    pub(crate) fn load(&self, budget: &Arc<Budget>) -> Option<(Vec<u8>, Charge)> {
        let charge = Charge::memory_for(budget, self.len)?;
        let mut out = Vec::with_capacity(usize::try_from(self.len).ok()?);
        self.reader(&[]).read_to_end(&mut out).ok()?;
        Some((out, charge))
    }

    /// Reads the message from the start, leaving out the `skip` ranges
    /// (sorted, not overlapping).
    pub(crate) fn reader<'a>(&'a self, skip: &'a [Range<u64>]) -> MessageReader<'a> {
        MessageReader { msg: self, pos: 0, skip }
    }
}

/// A positional reader over a [`Message`]: several can read one spool file
/// at once (one per delivery), none moves another's offset.
pub(crate) struct MessageReader<'a> {
    msg: &'a Message,
    pos: u64,
    skip: &'a [Range<u64>],
}

impl Read for MessageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(r) = self.skip.first() {
            if self.pos >= r.end {
                self.skip = &self.skip[1..];
            } else if self.pos >= r.start {
                self.pos = r.end;
            } else {
                break;
            }
        }
        let end = self.skip.first().map_or(self.msg.len, |r| r.start.min(self.msg.len));
        if self.pos >= end || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(end - self.pos).unwrap_or(usize::MAX).min(buf.len());
        let n = match &self.msg.data {
            Data::Memory(b) => {
                let start = usize::try_from(self.pos).unwrap_or(usize::MAX);
                buf[..want].copy_from_slice(&b[start..start + want]);
                want
            }
            Data::File(f) => f.read_at(&mut buf[..want], self.pos)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(memory: u64, in_flight: u64) -> Arc<Budget> {
        Arc::new(Budget::new(memory, in_flight, None))
    }

    fn read_all(m: &Message, skip: &[Range<u64>]) -> Vec<u8> {
        let mut out = Vec::new();
        // Small reads, so range edges fall inside and between them.
        let mut r = m.reader(skip);
        let mut buf = [0u8; 7];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn small_stays_in_memory_big_spills_and_both_read_back_with_skips() {
        let b = budget(1 << 20, 1 << 30);
        let data: Vec<u8> = (0..MEMORY_THRESHOLD * 3).map(|i| (i % 251) as u8).collect();
        for len in [0, 10, MEMORY_THRESHOLD, MEMORY_THRESHOLD + 1, data.len()] {
            let mut sink = Sink::new(&b, u64::MAX);
            for chunk in data[..len].chunks(1000) {
                sink.write(chunk);
            }
            let m = sink.finish().unwrap();
            assert_eq!(m.in_memory().is_some(), len <= MEMORY_THRESHOLD, "{len}");
            assert_eq!(read_all(&m, &[]), &data[..len]);
            let skip = [2..5, 5..9, 20..23];
            let mut expect = data[..len].to_vec();
            for r in skip.iter().rev() {
                let (s, e) = (r.start as usize, (r.end as usize).min(expect.len()));
                if s < e {
                    expect.drain(s..e);
                }
            }
            assert_eq!(read_all(&m, &skip), expect, "{len}");
            assert_eq!(&*m.head(100).unwrap(), &data[..len.min(100)]);
        }
        assert_eq!(b.memory.load(Ordering::Relaxed), 0, "everything given back");
        assert_eq!(b.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn memory_budget_spills_early_and_in_flight_budget_refuses() {
        let b = budget(1000, 5000);
        let mut one = Sink::new(&b, u64::MAX);
        one.write(&[b'a'; 800]);
        let mut two = Sink::new(&b, u64::MAX);
        two.write(&[b'b'; 800]);
        let one = one.finish().unwrap();
        let two = two.finish().unwrap();
        assert!(one.in_memory().is_some());
        assert!(two.in_memory().is_none(), "no memory left: spilled");
        assert_eq!(read_all(&two, &[]), vec![b'b'; 800]);
        let mut three = Sink::new(&b, u64::MAX);
        three.write(&[b'c'; 4000]);
        assert_eq!(three.finish().unwrap_err(), Refusal::NoRoom);
        drop(one);
        drop(two);
        assert!(!b.in_flight_full());
        let mut four = Sink::new(&b, 10);
        four.write(&[b'd'; 11]);
        assert_eq!(four.finish().unwrap_err(), Refusal::TooBig);
        assert_eq!(b.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn prepare_makes_a_private_directory_and_removes_leftovers() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("old"), b"x").unwrap();
        let b = Budget::new(1, 1, Some(dir.clone()));
        b.prepare().unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let not_dir = tmp.path().join("file");
        std::fs::write(&not_dir, b"").unwrap();
        assert!(Budget::new(1, 1, Some(not_dir)).prepare().is_err());
    }
}
