//! The spool: where a message being downloaded waits until its terminator
//! has arrived, so no destination ever sees a partial message.
//!
//! Small messages stay in memory; past [`MEMORY_LIMIT`] the spool moves to an
//! unnamed temporary file in the state directory (not `/tmp`, which is often
//! RAM-backed), so memory stays bounded however large the message is. The
//! spool also computes the SHA-256 of the content as it arrives, used to name
//! messages from servers without UIDL.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// Messages up to this size never touch the disk before delivery.
pub const MEMORY_LIMIT: usize = 1 << 20;

/// One message's worth of spooled bytes.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    mem: Vec<u8>,
    file: Option<File>,
    len: u64,
    hasher: Sha256,
}

impl Spool {
    /// An empty spool that overflows into `dir`.
    pub fn new(dir: PathBuf) -> Spool {
        Spool { dir, mem: Vec::new(), file: None, len: 0, hasher: Sha256::new() }
    }

    /// Appends message bytes.
    ///
    /// # Errors
    /// I/O errors of the overflow file.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.hasher.update(data);
        self.len += data.len() as u64;
        if self.file.is_none() && self.mem.len() + data.len() > MEMORY_LIMIT {
            let mut f = tempfile::tempfile_in(&self.dir)?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => f.write_all(data),
            None => {
                self.mem.extend_from_slice(data);
                Ok(())
            }
        }
    }

    /// Octets spooled.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was spooled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// SHA-256 of everything written so far.
    pub fn digest(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// The content as a file (moved out of memory first if it is small),
    /// positioned at its start: a file descriptor a child process can read
    /// to the end even if this process dies meanwhile.
    ///
    /// # Errors
    /// I/O errors creating or seeking the file.
    pub fn as_file(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            let mut f = tempfile::tempfile_in(&self.dir)?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("just made");
        f.seek(SeekFrom::Start(0))?;
        Ok(f)
    }

    /// A reader over the content from its start. May be called repeatedly.
    ///
    /// # Errors
    /// I/O errors seeking the overflow file.
    pub fn reader(&mut self) -> io::Result<Box<dyn Read + Send + '_>> {
        match &mut self.file {
            Some(f) => {
                f.seek(SeekFrom::Start(0))?;
                Ok(Box::new(&*f))
            }
            None => Ok(Box::new(Cursor::new(&self.mem[..]))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflows_to_disk_and_reads_back_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path().to_owned());
        let chunk: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        for _ in 0..5 {
            s.write(&chunk).unwrap();
        }
        assert!(s.file.is_some(), "1.5 MB must not stay in memory");
        assert!(s.mem.capacity() < MEMORY_LIMIT);
        for _ in 0..2 {
            let mut back = Vec::new();
            s.reader().unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back.len(), 1_500_000);
            assert_eq!(&back[300_000..600_000], &chunk[..]);
        }
        let want: [u8; 32] = Sha256::digest(chunk.repeat(5)).into();
        assert_eq!(s.digest(), want);
    }
}
