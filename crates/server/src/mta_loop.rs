//! The command loop LMTP and SMTP share: read with a timeout, cut whole
//! command lines, parse each with smtp-proto, feed message octets (DATA or
//! BDAT) to the session's `intake::Body`, write the replies, count protocol
//! errors, and close on the error limit, a timeout or shutdown.
//!
//! What differs between the two protocols is the [`Dialect`]: the command
//! handler (LHLO vs EHLO/HELO, STARTTLS, one reply per recipient after the
//! message for LMTP vs one reply for SMTP, SPF/DKIM/DMARC), the timeout,
//! which replies count as errors and how many are allowed, and the SMTP-only
//! bare `RCPT TO:<postmaster>`. The loop itself makes no protocol decision
//! beyond the replies both protocols give the same way (timeouts, line too
//! long, shutdown, too many errors).
//!
//! STARTTLS changes the stream, which this loop does not own: it returns
//! [`Exit::StartTls`] and the SMTP driver runs it again on the TLS stream,
//! with fresh buffers (whatever was pipelined in cleartext is dropped).

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pobox_proto::line::{LineSplitter, Split};
use smtp_proto::{Error as SmtpError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::info;

use crate::Services;
use crate::intake::{Transaction, sanitize};
use crate::shutdown::Shutdown;

/// What a command asks the loop to do next.
pub(crate) enum Next {
    Continue,
    Close,
    StartTls,
}

/// How [`run`] ended.
pub(crate) enum Exit {
    /// The connection is over (closed, timed out, shut down or broken).
    Closed,
    /// The `220` to STARTTLS is written; the caller does the handshake.
    /// Carries how many pipelined cleartext octets were dropped.
    StartTls { discarded: usize },
}

/// One protocol's side of the shared loop.
pub(crate) trait Dialect {
    /// Longest command line, CRLF included.
    const MAX_COMMAND_LINE: usize;
    /// The reply when smtp-proto needs more data on a whole line (the
    /// command's arguments are incomplete, e.g. `MAIL FROM` without
    /// `:<...>`).
    const INCOMPLETE_COMMAND: &'static str;

    /// The peer, for log lines.
    fn peer(&self) -> &dyn Display;
    /// The mail transaction: the message being received (DATA or BDAT),
    /// if any, and the octets of a refused `BDAT` chunk still to drop.
    fn txn(&mut self) -> &mut Transaction;
    /// Protocol errors counted so far (the session may reset it).
    fn errors(&mut self) -> &mut u32;
    /// Read timeout for a command or a block of message octets.
    fn read_timeout(&self, svc: &Services) -> Duration;
    /// Errors allowed before `421 4.7.0 too many errors`.
    fn error_limit(&self, svc: &Services) -> u32;
    /// Whether a reply to a command counts as a protocol error.
    fn counts_as_error(reply: &[u8]) -> bool;
    /// A command line smtp-proto would refuse but this protocol accepts.
    fn special_command(_line: &[u8]) -> Option<Request<String>> {
        None
    }
    /// Handles one parsed command, appending its replies to `out`.
    async fn handle(&mut self, request: Request<String>, svc: &Arc<Services>, out: &mut Vec<u8>) -> Next;
    /// The message (or a BDAT chunk) is fully read: reply, and deliver at
    /// the end of the message.
    async fn chunk_done(&mut self, svc: &Arc<Services>, out: &mut Vec<u8>);
}

/// Writes `bytes` and flushes (a no-op on TCP and unix sockets, needed for
/// TLS); false when the peer is gone.
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> bool {
    stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok()
}

/// Runs `session` over `stream` until the connection ends or STARTTLS.
/// `out` holds what to write first (the greeting, or nothing).
pub(crate) async fn run<D, S>(
    stream: &mut S,
    session: &mut D,
    svc: &Arc<Services>,
    shutdown: &mut Shutdown,
    mut out: Vec<u8>,
) -> Exit
where
    D: Dialect,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = session.read_timeout(svc);
    let mut inbuf: Vec<u8> = Vec::new();
    let mut lines = LineSplitter::new(D::MAX_COMMAND_LINE);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !out.is_empty() {
            if !send(stream, &out).await {
                return Exit::Closed;
            }
            out.clear();
        }
        // A message being received (or a refused chunk being dropped) is
        // let finish within the grace period; between transactions the
        // client is told to retry.
        let in_message = session.txn().data.is_some() || session.txn().skip > 0;
        // In a message the read also stops at the overall deadline.
        let limit = session
            .txn()
            .data
            .as_ref()
            .map_or(timeout, |b| timeout.min(b.deadline.saturating_duration_since(Instant::now())));
        let n = tokio::select! {
            r = tokio::time::timeout(limit, stream.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    if session.txn().data.is_some() {
                        // RFC 5321 §4.1.1.4: no final dot, no message.
                        info!(peer = %session.peer(), "connection lost during DATA; nothing delivered");
                    }
                    return Exit::Closed;
                }
                Ok(Ok(n)) => n,
                Err(_) => {
                    if session.txn().data.is_some() {
                        info!(peer = %session.peer(), "DATA timed out (idle or overall deadline); nothing delivered");
                        send(stream, b"421 4.4.2 DATA took too long, closing\r\n").await;
                    } else {
                        send(stream, b"421 4.4.2 idle timeout, closing\r\n").await;
                    }
                    return Exit::Closed;
                }
            },
            () = async {
                if in_message { std::future::pending::<()>().await } else { shutdown.draining().await }
            } => {
                send(stream, b"421 4.3.2 server shutting down\r\n").await;
                return Exit::Closed;
            }
        };
        inbuf.extend_from_slice(&buf[..n]);
        let mut pos = 0;
        while pos < inbuf.len() {
            if session.txn().skip > 0 {
                let skip = &mut session.txn().skip;
                let n = usize::try_from(*skip).unwrap_or(usize::MAX).min(inbuf.len() - pos);
                pos += n;
                *skip -= n as u64;
                continue;
            }
            if let Some(body) = session.txn().data.as_mut()
                && body.reading()
            {
                let (consumed, done) = body.ingest(&inbuf[pos..]);
                pos += consumed;
                if !done {
                    break;
                }
                // End of the message or of a chunk: its reply (for LMTP
                // one per recipient) goes out before the next command is
                // read.
                session.chunk_done(svc, &mut out).await;
                if !send(stream, &out).await {
                    return Exit::Closed;
                }
                out.clear();
                continue;
            }
            // Commands are cut into whole lines here and each line is
            // parsed on its own, so that a malformed command gets exactly
            // one reply and cannot swallow the next one, however TCP splits
            // the bytes (found by the lmtp_input fuzz target); the splitter
            // bounds the line length.
            let before = out.len();
            let next = match lines.split(&inbuf[pos..]) {
                Split::Line { line, consumed } => {
                    pos += consumed;
                    if let Some(request) = D::special_command(line) {
                        session.handle(request, svc, &mut out).await
                    } else {
                        let mut command = Vec::with_capacity(line.len() + 2);
                        command.extend_from_slice(line);
                        command.extend_from_slice(b"\r\n");
                        match Request::parse(&mut command.iter()) {
                            Ok(request) => session.handle(request.into_owned(), svc, &mut out).await,
                            Err(e) => {
                                out.extend_from_slice(error_reply(&e, D::INCOMPLETE_COMMAND).as_bytes());
                                Next::Continue
                            }
                        }
                    }
                }
                Split::TooLong { consumed, continued } => {
                    pos += consumed;
                    if continued {
                        // Endless input without a line end counts on,
                        // though only its first piece was answered.
                        *session.errors() += 1;
                    } else {
                        out.extend_from_slice(b"500 5.5.2 line too long\r\n");
                    }
                    Next::Continue
                }
                Split::NeedMoreData { consumed } => {
                    pos += consumed;
                    if consumed == 0 {
                        break;
                    }
                    Next::Continue
                }
            };
            if D::counts_as_error(&out[before..]) {
                *session.errors() += 1;
            }
            let errors = *session.errors();
            let next = if !matches!(next, Next::Close) && errors >= session.error_limit(svc) {
                info!(peer = %session.peer(), errors, "too many protocol errors; closing");
                out.extend_from_slice(b"421 4.7.0 too many errors, closing\r\n");
                Next::Close
            } else {
                next
            };
            match next {
                Next::Continue => {}
                Next::Close => {
                    send(stream, &out).await;
                    let _ = stream.shutdown().await;
                    return Exit::Closed;
                }
                Next::StartTls => {
                    if !send(stream, &out).await {
                        return Exit::Closed;
                    }
                    // RFC 3207 §4.2 / CVE-2011-0411: anything pipelined after
                    // STARTTLS came in cleartext; it must not be executed.
                    return Exit::StartTls { discarded: inbuf.len() - pos };
                }
            }
        }
        inbuf.drain(..pos);
    }
}

/// The reply to a line smtp-proto could not parse.
fn error_reply(e: &SmtpError, incomplete: &str) -> String {
    match e {
        SmtpError::UnknownCommand => "500 5.5.2 unknown command\r\n".into(),
        // The parser got a whole line and still wants more.
        SmtpError::NeedsMoreData { .. } => incomplete.into(),
        SmtpError::ResponseTooLong => "500 5.5.2 line too long\r\n".into(),
        SmtpError::InvalidSenderAddress => "501 5.1.7 invalid sender address\r\n".into(),
        SmtpError::InvalidRecipientAddress => "501 5.1.3 invalid recipient address\r\n".into(),
        SmtpError::SyntaxError { syntax } => format!("501 5.5.4 syntax: {syntax}\r\n"),
        SmtpError::InvalidParameter { param } => format!("501 5.5.4 invalid parameter {param}\r\n"),
        SmtpError::UnsupportedParameter { param } => {
            format!("504 5.5.4 unsupported parameter {}\r\n", sanitize(param))
        }
        _ => "500 5.5.2 syntax error\r\n".into(),
    }
}
