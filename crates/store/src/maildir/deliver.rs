//! THE writer: the only code in pobox that creates message files
//! (architecture rule 6). [`Maildir::deliver`], [`Maildir::deliver_named`]
//! and the importer (`import.rs`) all end up in [`write_message`].
//!
//! The sequence is maildir(5) "HOW A MESSAGE IS DELIVERED", with the
//! directory fsync Dovecot adds (`maildir_transaction_fsync_dirs`):
//!
//! 1. create `tmp/<unique>` with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600;
//! 2. stream the message in, normalising CRLF to LF and counting sizes;
//! 3. `fsync` the file, close it;
//! 4. move it to `new/<base>,S=<stored>,W=<wire>` without ever replacing an
//!    existing file (`renameat2(RENAME_NOREPLACE)`, or maildir(5)'s own
//!    `link` + `unlink` where the filesystem lacks it);
//! 5. `fsync` `new/`. Only now is the message delivered (`rust-deps.md` §7
//!    trap 11: not after the rename).
//!
//! A guard unlinks the `tmp/` file on every early return, so a failure
//! never leaves a partial message behind.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::scan::WireCounter;
use super::{Maildir, NamedDelivery, Sub, io_error, name};
use crate::{Delivered, StoreError};

/// Read size: large enough for few syscalls, small enough that memory use
/// per delivery is trivially bounded whatever the message size.
const CHUNK: usize = 64 * 1024;

/// How many fresh names to try if `tmp/<unique>` already exists. maildir(5)
/// says to retry; with our counter and random part a clash means something
/// else is wrong, so give up quickly.
const TMP_ATTEMPTS: usize = 3;

/// Writes one message into `md`: under a generated base name if `named` is
/// `None`, else under that (already validated) base name unless a message
/// with it exists.
///
/// # Errors
///
/// See [`Maildir::deliver`]. With a generated name, a clash in `new/` is
/// reported as [`StoreError::Io`]; with `named`, as
/// [`NamedDelivery::AlreadyPresent`].
/// With `sync_dir` false the final fsync of `new/` is left to the caller
/// ([`Maildir::sync_new`]), so a batch of deliveries shares one directory
/// fsync; each file is still fsynced before its name appears.
///
/// With `index`, a named delivery consults that set of known base names
/// instead of reading `new/` and `cur/` (twice) for every message, and adds
/// the base after storing; the no-replace rename still guards the race.
pub(super) fn write_message(
    md: &Maildir,
    named: Option<&str>,
    msg: &mut dyn Read,
    max: Option<u64>,
    sync_dir: bool,
    index: Option<&mut super::BaseIndex>,
    received: Option<SystemTime>,
) -> Result<NamedDelivery, StoreError> {
    if let Some(base) = named {
        let known = match index.as_deref() {
            Some(ix) => ix.contains(base),
            None => true, // unknown: look
        };
        if known && let Some(existing) = find_base(md, base)? {
            return Ok(NamedDelivery::AlreadyPresent(existing));
        }
    }

    let (unique, mut file, guard) = create_tmp(md)?;
    let sizes =
        copy_normalised(msg, &mut file, max).map_err(|e| e.into_store_error(guard.path()))?;
    // An imported message keeps the time it was received: its mtime is
    // what retention and the listing order go by. Set before the fsync so
    // the name never appears with the wrong time.
    if let Some(at) = received {
        set_times(&file, at)
            .map_err(|e| io_error(format_args!("setting the time of {}", guard.path().display()), e))?;
    }
    // NFS-write (maildir(5)): the data must be on disk before the name is.
    // After a successful fsync, close(2) has nothing left to report on
    // Linux; dropping the File closes it.
    file.sync_all()
        .map_err(|e| io_error(format_args!("fsync {}", guard.path().display()), e))?;
    drop(file);

    let base = named.unwrap_or(&unique);
    let dst_name = name::with_sizes(base, sizes.stored, sizes.wire);
    let dst = md.dir(Sub::New).join(&dst_name);
    // Look again: narrows the window in which a concurrent writer (or a
    // session that moved the first copy to cur/) makes us store a duplicate.
    if let Some(base) = named
        && index.is_none()
        && let Some(existing) = find_base(md, base)?
    {
        return Ok(NamedDelivery::AlreadyPresent(existing));
    }
    match move_noreplace(md.fd(Sub::Tmp), guard.name(), md.fd(Sub::New), OsStr::new(&dst_name)) {
        Ok(()) => guard.disarm(),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && named.is_some() => {
            return Ok(NamedDelivery::AlreadyPresent(dst));
        }
        Err(e) => {
            return Err(io_error(
                format_args!("moving {} to {}", guard.path().display(), dst.display()),
                e,
            ));
        }
    }
    if sync_dir {
        md.sync(Sub::New)?;
    }
    if let (Some(ix), Some(base)) = (index, named) {
        ix.insert(base);
    }

    tracing::debug!(path = %dst.display(), size = sizes.wire, "message delivered");
    Ok(NamedDelivery::Stored(Delivered {
        uidl: name::uidl_for(OsStr::new(base)),
        size: sizes.wire,
        location: dst.display().to_string(),
    }))
}

/// Sets a file's access and modification times to `at`.
fn set_times(file: &File, at: SystemTime) -> io::Result<()> {
    let since = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "time before 1970"))?;
    let spec = rustix::fs::Timespec {
        tv_sec: i64::try_from(since.as_secs()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "time out of range"))?,
        tv_nsec: since.subsec_nanos().into(),
    };
    rustix::fs::futimens(file, &rustix::fs::Timestamps { last_access: spec, last_modification: spec })?;
    Ok(())
}

fn find_base(md: &Maildir, base: &str) -> Result<Option<PathBuf>, StoreError> {
    md.find_base(OsStr::new(base)).map_err(|e| {
        io_error(
            format_args!("looking for {base} in {}", md.path().display()),
            e,
        )
    })
}

/// Creates `tmp/<unique>` exclusively; returns the base, the file and its
/// cleanup guard.
fn create_tmp(md: &Maildir) -> Result<(String, File, TmpGuard<'_>), StoreError> {
    let mut attempt = 1;
    loop {
        let unique = name::unique_base();
        let path = md.dir(Sub::Tmp).join(&unique);
        // O_EXCL: never reuse or truncate a file someone else is writing.
        // O_NOFOLLOW: never write through a planted symlink. Relative to
        // tmp/'s handle: never into a directory tmp/ was replaced by. 0600:
        // mail is private to the mail user.
        match rustix::fs::openat(
            md.fd(Sub::Tmp),
            unique.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => {
                let guard = TmpGuard::new(md.fd(Sub::Tmp), OsString::from(&unique), path);
                return Ok((unique, File::from(fd), guard));
            }
            Err(Errno::EXIST) if attempt < TMP_ATTEMPTS => attempt += 1,
            Err(e) => {
                return Err(io_error(
                    format_args!("creating {}", path.display()),
                    e.into(),
                ));
            }
        }
    }
}

/// Sizes of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sizes {
    /// Octets in the file (`S=`).
    stored: u64,
    /// Octets POP3 sends (`W=`): every bare LF as CRLF, final CRLF included.
    wire: u64,
}

/// Why [`copy_normalised`] stopped.
#[derive(Debug)]
enum CopyError {
    Read(io::Error),
    Write(io::Error),
    TooLarge(u64),
}

impl CopyError {
    fn into_store_error(self, tmp: &Path) -> StoreError {
        match self {
            CopyError::Read(e) => io_error("reading the message", e),
            CopyError::Write(e) => io_error(format_args!("writing {}", tmp.display()), e),
            CopyError::TooLarge(limit) => StoreError::TooLarge { limit },
        }
    }
}

/// Streams `input` to `out`, normalising line endings, and returns the
/// stored and wire sizes.
///
/// CRLF becomes LF (classic Maildir is LF-only, maildir(5) and mbox
/// practice); a CR not followed by LF is kept; a final LF is added to a
/// non-empty message that lacks one. An empty message stays empty (wire
/// size 0). `max` bounds the wire size, checked per chunk, so an oversized
/// message stops early.
fn copy_normalised(
    input: &mut dyn Read,
    out: &mut dyn Write,
    max: Option<u64>,
) -> Result<Sizes, CopyError> {
    let mut inbuf = vec![0u8; CHUNK];
    // +1: a CR held back from the previous chunk.
    let mut outbuf = Vec::with_capacity(CHUNK + 1);
    let mut norm = Normaliser::default();
    let mut wire = WireCounter::default();
    let mut stored = 0u64;
    let mut emit = |bytes: &[u8], wire: &mut WireCounter| -> Result<(), CopyError> {
        wire.feed(bytes);
        if let Some(limit) = max
            && wire.partial() > limit
        {
            return Err(CopyError::TooLarge(limit));
        }
        out.write_all(bytes).map_err(CopyError::Write)?;
        stored += bytes.len() as u64;
        Ok(())
    };
    loop {
        let n = match input.read(&mut inbuf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        outbuf.clear();
        norm.feed(&inbuf[..n], &mut outbuf);
        emit(&outbuf, &mut wire)?;
    }
    outbuf.clear();
    norm.finish(&mut outbuf);
    emit(&outbuf, &mut wire)?;
    let wire = wire.finish();
    debug_assert!(max.is_none_or(|m| wire <= m));
    Ok(Sizes { stored, wire })
}

/// Incremental CRLF → LF conversion that is correct at any chunk boundary.
#[derive(Debug, Default)]
struct Normaliser {
    /// The previous chunk ended in CR: we do not yet know whether it is half
    /// of a CRLF (dropped) or a lone CR (kept).
    pending_cr: bool,
    /// The last byte emitted, to decide whether a final LF is needed.
    last: Option<u8>,
}

impl Normaliser {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        let start = out.len();
        if self.pending_cr {
            self.pending_cr = false;
            if input[0] == b'\n' {
                out.push(b'\n');
                input = &input[1..];
            } else {
                out.push(b'\r');
            }
        }
        while let Some(i) = input.iter().position(|&b| b == b'\r') {
            out.extend_from_slice(&input[..i]);
            match input.get(i + 1) {
                Some(b'\n') => {
                    out.push(b'\n');
                    input = &input[i + 2..];
                }
                Some(_) => {
                    out.push(b'\r');
                    input = &input[i + 1..];
                }
                None => {
                    self.pending_cr = true;
                    input = &[];
                }
            }
        }
        out.extend_from_slice(input);
        if out.len() > start {
            self.last = out.last().copied();
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            out.push(b'\r');
            self.last = Some(b'\r');
        }
        if self.last.is_some_and(|b| b != b'\n') {
            out.push(b'\n');
            self.last = Some(b'\n');
        }
    }
}

/// Moves `from` to `to`, failing with `AlreadyExists` rather than replacing
/// an existing `to`.
///
/// `renameat2(RENAME_NOREPLACE)` does it in one step. Filesystems that do
/// not support the flag (some NFS and FUSE) answer `EINVAL`; there we fall
/// back to maildir(5)'s original `link()` + `unlink()`, which has the same
/// never-replace property. (Dovecot uses plain `rename()` because its
/// names are unique; ours are too, but named deliveries deliberately reuse
/// a base, and racing fetchers must not overwrite each other.)
///
/// Both names are single components relative to directory handles.
#[allow(
    clippy::disallowed_methods,
    reason = "the single writer: a delivery's tmp/ -> new/ step"
)]
fn move_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    match rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE) {
        Ok(()) => return Ok(()),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {}
        Err(e) => return Err(e.into()),
    }
    // linkat without AT_SYMLINK_FOLLOW links the name itself, never what
    // a link points to.
    rustix::fs::linkat(from_dir, from, to_dir, to, AtFlags::empty())?;
    if let Err(e) = rustix::fs::unlinkat(from_dir, from, AtFlags::empty()) {
        // Delivered all the same; a stale tmp/ file is reaped after 36 h.
        tracing::warn!(file = %from.to_string_lossy(), error = %e, "could not unlink tmp file after link");
    }
    Ok(())
}

/// What [`place`] does when the destination name exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Existing {
    /// Replace it (`renameat`): the name is this message's own, as in
    /// `new/X` -> `cur/X:2,` or a move into the restore area.
    Replace,
    /// Fail with `AlreadyExists` and move nothing, as
    /// [`move_noreplace`] does: a message coming back into the maildrop
    /// (release, restore) must never overwrite one that is there.
    Refuse,
}

/// Moves a message that is already stored from one directory to another:
/// `new/` -> `cur/` at UPDATE, into and out of the restore area, out of a
/// folder into the inbox. With [`deliver`] the only functions that put a
/// message file under a name in a Maildir (architecture rule 6; the clippy
/// fence in `clippy.toml` bans every rename API elsewhere). The caller
/// fsyncs the directories, batching them over many moves.
///
/// Both names are single components relative to directory handles.
///
/// # Errors
///
/// The rename's error; `NotFound` if `from` is gone.
#[allow(
    clippy::disallowed_methods,
    reason = "the single writer's move primitive for files already delivered"
)]
pub(super) fn place(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
    existing: Existing,
) -> io::Result<()> {
    match existing {
        Existing::Replace => rustix::fs::renameat(from_dir, from, to_dir, to).map_err(Into::into),
        Existing::Refuse => move_noreplace(from_dir, from, to_dir, to),
    }
}

/// Unlinks the `tmp/` file when dropped, unless disarmed after the move
/// (the `UnlinkOnError` idiom from `staktrace/maildir`).
#[derive(Debug)]
struct TmpGuard<'a> {
    /// tmp/'s handle and the file's name in it.
    dir: BorrowedFd<'a>,
    name: OsString,
    /// For messages.
    path: PathBuf,
    armed: bool,
}

impl<'a> TmpGuard<'a> {
    fn new(dir: BorrowedFd<'a>, name: OsString, path: PathBuf) -> Self {
        TmpGuard { dir, name, path, armed: true }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn name(&self) -> &OsStr {
        &self.name
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match rustix::fs::unlinkat(self.dir, &self.name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove tmp file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the normaliser over `input` split into `chunk`-byte pieces.
    fn normalise(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut n = Normaliser::default();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            n.feed(piece, &mut out);
        }
        n.finish(&mut out);
        out
    }

    #[test]
    fn normaliser_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a\r\nb\r\n", b"a\nb\n"),
            (b"a\nb\n", b"a\nb\n"),
            (b"a\r\nb", b"a\nb\n"),
            (b"a\rb\r\n", b"a\rb\n"),
            (b"\r", b"\r\n"),
            (b"a\r", b"a\r\n"),
            (b"\r\r\n", b"\r\n"),
            (b"\n", b"\n"),
            (b"\r\n\r\n.\r\n", b"\n\n.\n"),
        ];
        for (input, want) in cases {
            for chunk in 1..=input.len().max(1) {
                assert_eq!(
                    normalise(input, chunk),
                    *want,
                    "input {input:?} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn sizes_and_limit() {
        let mut out = Vec::new();
        let sizes = copy_normalised(&mut &b"ab\r\ncd"[..], &mut out, None).unwrap();
        assert_eq!(out, b"ab\ncd\n");
        assert_eq!(sizes, Sizes { stored: 6, wire: 8 });

        // Exactly at the limit is fine; one over is not.
        let mut out = Vec::new();
        assert!(copy_normalised(&mut &b"ab\r\ncd"[..], &mut out, Some(8)).is_ok());
        let mut out = Vec::new();
        let err = copy_normalised(&mut &b"ab\r\ncd"[..], &mut out, Some(7)).unwrap_err();
        assert!(matches!(err, CopyError::TooLarge(7)));
    }

    /// A reader that returns the data in pseudo-random chunk sizes.
    struct Choppy<'a> {
        data: &'a [u8],
        rng: u64,
    }

    impl Read for Choppy<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.rng = lcg(self.rng);
            let want = 1 + (self.rng >> 33) as usize % 7;
            let n = want.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn lcg(x: u64) -> u64 {
        x.wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407)
    }

    /// Reference normalisation over the whole input at once.
    fn reference(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            if input[i] == b'\r' && input.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            out.push(input[i]);
            i += 1;
        }
        if !out.is_empty() && out.last() != Some(&b'\n') {
            out.push(b'\n');
        }
        out
    }

    /// Over many random inputs from a CR/LF-heavy alphabet, read in random
    /// chunk sizes: the output matches the whole-buffer reference, S is the
    /// output length and W is what the scan fallback computes for it.
    #[test]
    fn random_inputs_match_reference_and_wire_size() {
        let alphabet = b"\r\n.a";
        let mut rng = 42u64;
        for _ in 0..2000 {
            rng = lcg(rng);
            let len = (rng >> 40) as usize % 40;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    rng = lcg(rng);
                    alphabet[(rng >> 35) as usize % alphabet.len()]
                })
                .collect();
            let mut out = Vec::new();
            let sizes = copy_normalised(&mut Choppy { data: &input, rng }, &mut out, None).unwrap();
            assert_eq!(out, reference(&input), "input {input:?}");
            assert_eq!(sizes.stored, out.len() as u64);
            assert_eq!(sizes.wire, super::super::wire_size_of(&out[..]).unwrap());
        }
    }
}
