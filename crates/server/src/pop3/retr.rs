//! The RETR/TOP paths of the POP3 driver: a message listed at up to
//! [`WHOLE_MESSAGE_MAX`] octets is read and dot-stuffed in one call on the
//! blocking pool; larger ones stream through a bounded channel in constant
//! memory. Replies (status line, `-ERR [SYS/TEMP]`) come from
//! `pobox_proto::pop3::server`.

use std::sync::Mutex;

use pobox_proto::dot::WireEncoder;
use pobox_proto::pop3::server::{DriverReply, retr_status_line};
use pobox_store::Mailbox;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::warn;


use super::{ConnError, Driver, LOG_TARGET, OUT_HIGH_WATER};

/// Read size for message files.
const FILE_CHUNK: usize = 64 * 1024;

impl Driver<'_> {
    pub(super) async fn send_message(
        &mut self,
        index: usize,
        size: u64,
        top_lines: Option<u64>,
    ) -> Result<(), ConnError> {
        let mailbox = self.mailbox.clone().expect("TRANSACTION has a mailbox");
        if size <= WHOLE_MESSAGE_MAX {
            // A hot message (name and data in the kernel's caches) is read
            // right here, without a thread hand-off; anything that could
            // wait for a disk goes to the blocking pool.
            let cached = mailbox.lock().unwrap_or_else(|p| p.into_inner()).read_if_cached(index, size);
            let whole = match cached {
                Some(stored) => encode_whole(&stored, size, top_lines),
                None => {
                    let mb = mailbox.clone();
                    tokio::task::spawn_blocking(move || read_whole(&mb, index, size, top_lines))
                        .await
                        .unwrap_or_else(|e| Whole::Failed(format!("reader task: {e}")))
                }
            };
            match whole {
                Whole::Encoded { reply, unstuffed } => {
                    self.stats.bytes += reply.len() as u64;
                    if self.outbuf.is_empty() {
                        self.outbuf = reply;
                    } else {
                        self.outbuf.extend_from_slice(&reply);
                    }
                    if self.outbuf.len() >= OUT_HIGH_WATER {
                        self.flush().await?;
                    }
                    self.message_sent(index, size, top_lines, unstuffed);
                    return Ok(());
                }
                Whole::Failed(reason) => {
                    warn!(target: LOG_TARGET, peer = %self.peer, index, %reason, "cannot read message");
                    DriverReply::MessageUnreadable.encode(&mut self.outbuf);
                    return Ok(());
                }
                // The file is larger than its listed size: stream it.
                Whole::Larger => {}
            }
        }
        let (tx, mut rx) = mpsc::channel::<Chunk>(4);
        // The file is read on the blocking pool and encoded there; the async
        // side only writes. A bounded channel keeps memory constant for any
        // message size.
        let reader = tokio::task::spawn_blocking(move || read_and_encode(&mailbox, index, top_lines, &tx));
        let result = self.stream_message(&mut rx, index, size, top_lines).await;
        // The reader holds a handle on the maildrop until it returns; wait
        // for it, so that a QUIT right behind this RETR finds the maildrop
        // free for UPDATE. Dropping the receiver first unblocks a reader
        // that is waiting on a full channel after a write error.
        drop(rx);
        let _ = reader.await;
        result
    }

    async fn stream_message(
        &mut self,
        rx: &mut mpsc::Receiver<Chunk>,
        index: usize,
        size: u64,
        top_lines: Option<u64>,
    ) -> Result<(), ConnError> {
        match rx.recv().await {
            Some(Chunk::Opened) => {
                self.outbuf.extend_from_slice(retr_status_line(size, top_lines).as_bytes());
            }
            Some(Chunk::Failed(reason)) | Some(Chunk::Broken(reason)) => {
                warn!(target: LOG_TARGET, peer = %self.peer, index, %reason, "cannot open message");
                DriverReply::MessageUnreadable.encode(&mut self.outbuf);
                return Ok(());
            }
            _ => return Err(ConnError::MessageBroken(index, "reader vanished".into())),
        }
        loop {
            match rx.recv().await {
                Some(Chunk::Data(bytes)) => {
                    self.stats.bytes += bytes.len() as u64;
                    if self.outbuf.is_empty() && bytes.len() >= OUT_HIGH_WATER {
                        self.stream_mut().write_all(&bytes).await?;
                    } else {
                        self.outbuf.extend_from_slice(&bytes);
                        if self.outbuf.len() >= OUT_HIGH_WATER {
                            self.flush().await?;
                        }
                    }
                }
                Some(Chunk::End { unstuffed }) => {
                    self.message_sent(index, size, top_lines, unstuffed);
                    return Ok(());
                }
                // After +OK there is no way to signal an error in-band: the
                // only honest thing is to drop the connection (no UPDATE).
                Some(Chunk::Broken(reason)) => return Err(ConnError::MessageBroken(index, reason)),
                Some(Chunk::Opened) | Some(Chunk::Failed(_)) | None => {
                    return Err(ConnError::MessageBroken(index, "reader vanished".into()));
                }
            }
        }
    }

    /// Bookkeeping once a RETR/TOP reply is complete in the output.
    fn message_sent(&mut self, index: usize, size: u64, top_lines: Option<u64>, unstuffed: u64) {
        if top_lines.is_none() || self.svc.config.top_counts_as_retrieval {
            self.retrieved.insert(index);
        }
        if top_lines.is_none() {
            self.stats.retrieved += 1;
            self.stats.retr_octets = unstuffed;
            if unstuffed != size {
                // LIST promised `size`; the file changed under us or
                // the size in its name is wrong. Say so loudly.
                warn!(target: LOG_TARGET, peer = %self.peer, index, announced = size, sent = unstuffed,
                      "message size differs from the size listed");
            }
        }
    }
}

/// What the blocking reader sends to the connection.
enum Chunk {
    Opened,
    Data(Vec<u8>),
    End { unstuffed: u64 },
    /// Could not open: the session continues with `-ERR [SYS/TEMP]`.
    Failed(String),
    /// Failed mid-message: the connection must be dropped.
    Broken(String),
}

/// Messages listed at up to this many octets are read and encoded in one
/// call on the blocking pool and leave in one buffer: one hand-off per RETR
/// instead of a channel round trip per chunk (with one client doing RETR
/// after RETR, those wakeups were a large part of the server's time).
/// Larger ones stream through [`read_and_encode`] in constant memory.
const WHOLE_MESSAGE_MAX: u64 = 256 * 1024;

/// A whole RETR/TOP reply, or why there is none.
enum Whole {
    /// Status line, dot-stuffed body and terminator.
    Encoded { reply: Vec<u8>, unstuffed: u64 },
    /// Could not be opened or read: nothing was sent, the session goes on
    /// with `-ERR [SYS/TEMP]`.
    Failed(String),
    /// The file holds more than its listed size: use the streaming path.
    Larger,
}

fn read_whole(mailbox: &Mutex<Box<dyn Mailbox>>, index: usize, size: u64, top_lines: Option<u64>) -> Whole {
    let reader = mailbox.lock().unwrap_or_else(|p| p.into_inner()).open_message(index);
    let reader = match reader {
        Ok(r) => r,
        Err(e) => return Whole::Failed(e.to_string()),
    };
    // Stored bytes never exceed the wire size (CRLF only adds), so a file
    // longer than `size` has changed: read one byte more to notice.
    let mut stored = Vec::with_capacity(size as usize);
    if let Err(e) = std::io::Read::read_to_end(&mut std::io::Read::take(reader, size + 1), &mut stored) {
        return Whole::Failed(e.to_string());
    }
    encode_whole(&stored, size, top_lines)
}

/// The RETR/TOP reply for a message's stored bytes read whole.
fn encode_whole(stored: &[u8], size: u64, top_lines: Option<u64>) -> Whole {
    if stored.len() as u64 > size {
        return Whole::Larger;
    }
    let mut encoder = match top_lines {
        Some(n) => WireEncoder::top(n),
        None => WireEncoder::new(),
    };
    let status = retr_status_line(size, top_lines);
    let mut reply = Vec::with_capacity(status.len() + stored.len() + stored.len() / 16 + 16);
    reply.extend_from_slice(status.as_bytes());
    encoder.encode(stored, &mut reply);
    encoder.finish(&mut reply);
    Whole::Encoded { reply, unstuffed: encoder.unstuffed_octets() }
}

fn read_and_encode(
    mailbox: &Mutex<Box<dyn Mailbox>>,
    index: usize,
    top_lines: Option<u64>,
    tx: &mpsc::Sender<Chunk>,
) {
    let reader = mailbox.lock().unwrap_or_else(|p| p.into_inner()).open_message(index);
    let mut reader = match reader {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Chunk::Failed(e.to_string()));
            return;
        }
    };
    if tx.blocking_send(Chunk::Opened).is_err() {
        return;
    }
    let mut encoder = match top_lines {
        Some(n) => WireEncoder::top(n),
        None => WireEncoder::new(),
    };
    let mut buf = vec![0u8; FILE_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Chunk::Broken(e.to_string()));
                return;
            }
        };
        let mut out = Vec::with_capacity(n + n / 16 + 8);
        encoder.encode(&buf[..n], &mut out);
        if !out.is_empty() && tx.blocking_send(Chunk::Data(out)).is_err() {
            return;
        }
        if encoder.is_done() {
            break;
        }
    }
    let mut out = Vec::with_capacity(8);
    encoder.finish(&mut out);
    let unstuffed = encoder.unstuffed_octets();
    if tx.blocking_send(Chunk::Data(out)).is_ok() {
        let _ = tx.blocking_send(Chunk::End { unstuffed });
    }
}
