//! Message bodies in chunks: the storage form (Maildir's: CRLF → LF, a
//! final LF added), the POP3 size counted on the way in, and a reader that
//! fetches one chunk at a time on the way out.

use std::io;
use std::sync::Arc;

use crate::PgError;
use crate::connect::Db;

/// The size of a stored body chunk: delivery holds at most about twice
/// this in memory, a reader once.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Turns raw message bytes into stored bytes, piece by piece, and counts
/// the POP3 size (the same count as `pobox_store::wire_size_of` over the
/// stored bytes).
#[derive(Debug, Default)]
pub(crate) struct Normaliser {
    /// A CR at the end of the previous piece, not yet known to be CRLF.
    pending_cr: bool,
    /// The last stored byte, for the size count and the final LF.
    last: Option<u8>,
    pub(crate) stored: u64,
    pub(crate) wire: u64,
}

impl Normaliser {
    /// Appends the stored form of `raw` to `out`.
    pub(crate) fn feed(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        for &b in raw {
            if self.pending_cr {
                self.pending_cr = false;
                if b != b'\n' {
                    self.push(b'\r', out);
                }
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                self.push(b, out);
            }
        }
    }

    /// Ends the message: a held CR, and a final LF if it lacks one.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            self.push(b'\r', out);
        }
        if self.last.is_some_and(|b| b != b'\n') {
            self.push(b'\n', out);
        }
    }

    fn push(&mut self, b: u8, out: &mut Vec<u8>) {
        // A bare LF goes on the wire as CRLF.
        self.wire += if b == b'\n' && self.last != Some(b'\r') {
            2
        } else {
            1
        };
        self.stored += 1;
        self.last = Some(b);
        out.push(b);
    }
}

/// Reads a stored message chunk by chunk ([`Mailbox::open_message`]).
///
/// [`Mailbox::open_message`]: pobox_store::Mailbox::open_message
pub(crate) struct ChunkReader {
    pub(crate) db: Arc<Db>,
    pub(crate) message: i64,
    pub(crate) chunks: i32,
    pub(crate) next: i32,
    pub(crate) buf: Vec<u8>,
    pub(crate) pos: usize,
}

impl io::Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.next >= self.chunks {
                return Ok(0);
            }
            let (db, message, seq) = (&self.db, self.message, self.next);
            let row = db
                .run(async {
                    let client = db.pool.get().await?;
                    Ok::<_, PgError>(
                        client
                            .query_opt("SELECT data FROM message_chunks WHERE message_id = $1 AND seq = $2", &[&message, &seq])
                            .await?,
                    )
                })
                .map_err(|e| io::Error::other(e.to_string()))?;
            let Some(row) = row else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("message {message} vanished while read"),
                ));
            };
            self.buf = row.get(0);
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::Normaliser;

    fn store(pieces: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut n = Normaliser::default();
        let mut out = Vec::new();
        for p in pieces {
            n.feed(p, &mut out);
        }
        n.finish(&mut out);
        assert_eq!(n.stored, out.len() as u64);
        (out, n.wire)
    }

    #[test]
    fn stores_what_maildir_stores_and_counts_wire_octets() {
        for (pieces, want) in [
            (&[&b"a\r\nb\r\n"[..]][..], &b"a\nb\n"[..]),
            (&[b"a\r", b"\nb"], b"a\nb\n"),
            (&[b"a\rb\n"], b"a\rb\n"),
            (&[b"no newline"], b"no newline\n"),
            (&[b"ends in cr\r"], b"ends in cr\r\n"),
            (&[b""], b""),
            (&[b"a\r\r\n"], b"a\r\n"),
        ] {
            let (stored, wire) = store(pieces);
            assert_eq!(stored, want, "{pieces:?}");
            assert_eq!(
                wire,
                pobox_store::wire_size_of(&stored[..]).unwrap(),
                "{pieces:?}"
            );
        }
    }
}
