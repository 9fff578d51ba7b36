//! LMTP intake (RFC 2033): how Postfix, Exim and OpenSMTPD hand mail to a
//! mailbox server. Parsing is smtp-proto's (sans-IO, fuzzed upstream) and the
//! command loop is shared with SMTP (`mta_loop.rs`); this file is LMTP's
//! [`Dialect`]: its commands, replies and per-recipient delivery.
//!
//! The promise: a recipient's `250` is written only after the message is
//! durable in that recipient's Maildir (file fsynced, renamed into `new/`,
//! `new/` fsynced). Anything that fails before that is a `4xx` and leaves no
//! file in `new/`.
//!
//! DATA is received by `pobox_proto::data` (only `<CRLF>.<CRLF>` ends it),
//! held in memory or a spool file (`spool.rs`) and streamed to each copy;
//! a whole DATA may take at most `data_timeout`. `BDAT` chunks (CHUNKING,
//! RFC 3030; Dovecot's LMTP proxy sends them, Postfix's LMTP client sends
//! DATA even when CHUNKING is offered) go to the same receiver
//! (`intake::Body`) octet for octet, with the same size limit, budgets,
//! deadline (for all chunks together) and replies: one per recipient after
//! `BDAT ... LAST`, once the copies are durable. A refused `BDAT` still has
//! its octets read and dropped. A bare CR or LF in the message is kept
//! (see `intake.rs` for why LMTP and SMTP differ).
//!
//! After [`MAX_BAD_COMMANDS`] protocol errors (`50x` replies: unknown,
//! malformed or out-of-order commands) the connection is closed with
//! `421 4.7.0`. Unknown recipients do not count: the peer is the local MTA
//! handing over its recipient lists, and closing on them would only make it
//! retry the same list forever.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smtp_proto::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use crate::Services;
use crate::intake::{BdatStart, Copy, Recipient, Transaction, sanitize};
use crate::mta_loop::{Dialect, Next};
use crate::spool::Refusal;
use crate::delivery::{Outcome, Rcpt};
use crate::shutdown::Shutdown;
use pobox_store::StoreError;

/// RFC 5321 §4.5.3.2: the server waits at least 5 minutes for a command,
/// and 3 minutes for each block of DATA. We use 5 minutes for both.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// RFC 5321 §4.5.3.1.4 allows 512 octets per command line; extensions make
/// lines longer, so accept what smtp-proto accepts.
const MAX_COMMAND_LINE: usize = smtp_proto::request::receiver::MAX_LINE_LENGTH;

/// Protocol errors (`50x` replies) before the connection is closed.
const MAX_BAD_COMMANDS: u32 = 20;

struct Session {
    lhlo: Option<String>,
    txn: Transaction,
    peer: String,
    bad_commands: u32,
}

/// Serves one LMTP connection (TCP or unix socket) to the end: the loop
/// shared with SMTP (`mta_loop.rs`) with LMTP's [`Dialect`].
pub(crate) async fn serve<S>(mut stream: S, peer: String, svc: Arc<Services>, mut shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting = format!("220 {} LMTP pobox ready\r\n", svc.config.hostname).into_bytes();
    let mut session = Session {
        lhlo: None,
        txn: Transaction::default(),
        peer,
        bad_commands: 0,
    };
    // LMTP offers no STARTTLS, so the loop returns only at the end.
    let _ = crate::mta_loop::run(&mut stream, &mut session, &svc, &mut shutdown, greeting).await;
}

impl Dialect for Session {
    const MAX_COMMAND_LINE: usize = MAX_COMMAND_LINE;
    const INCOMPLETE_COMMAND: &'static str = "501 5.5.4 incomplete command\r\n";

    fn peer(&self) -> &dyn std::fmt::Display {
        &self.peer
    }
    fn txn(&mut self) -> &mut Transaction {
        &mut self.txn
    }
    fn errors(&mut self) -> &mut u32 {
        &mut self.bad_commands
    }
    fn read_timeout(&self, _svc: &Services) -> Duration {
        COMMAND_TIMEOUT
    }
    fn error_limit(&self, _svc: &Services) -> u32 {
        MAX_BAD_COMMANDS
    }
    /// `50x` only: unknown recipients (`550`) do not count (see the module
    /// documentation).
    fn counts_as_error(reply: &[u8]) -> bool {
        reply.starts_with(b"50")
    }

    async fn handle(&mut self, request: Request<String>, svc: &Arc<Services>, out: &mut Vec<u8>) -> Next {
        let reply = |out: &mut Vec<u8>, s: &str| out.extend_from_slice(s.as_bytes());
        match request {
            Request::Lhlo { host } => {
                self.reset();
                self.lhlo = Some(host);
                out.extend_from_slice(
                    format!(
                        "250-{}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n\
                         250-SMTPUTF8\r\n250-CHUNKING\r\n250 SIZE {}\r\n",
                        svc.config.hostname, svc.config.lmtp_max_message_size
                    )
                    .as_bytes(),
                );
            }
            Request::Ehlo { .. } | Request::Helo { .. } => {
                reply(out, "500 5.5.1 this is LMTP: use LHLO\r\n")
            }
            Request::Mail { from } => {
                if self.lhlo.is_none() {
                    reply(out, "503 5.5.1 LHLO first\r\n");
                } else if self.txn.from.is_some() {
                    reply(out, "503 5.5.1 nested MAIL command\r\n");
                } else if from.size as u64 > svc.config.lmtp_max_message_size {
                    reply(out, "552 5.3.4 message size exceeds fixed maximum message size\r\n");
                } else {
                    self.txn.from = Some(from.address);
                    reply(out, "250 2.1.0 sender ok\r\n");
                }
            }
            Request::Rcpt { to } => {
                if self.txn.from.is_none() {
                    reply(out, "503 5.5.1 MAIL first\r\n");
                } else if self.txn.data.is_some() {
                    reply(out, "503 5.5.1 RCPT after BDAT\r\n");
                } else if self.txn.recipients.len() >= svc.config.lmtp_max_recipients {
                    reply(out, "452 4.5.3 too many recipients\r\n");
                } else {
                    match self.check_recipient(&to.address, svc).await {
                        Ok(user) => {
                            self.txn.recipients.push(Recipient { address: to.address, user });
                            reply(out, "250 2.1.5 recipient ok\r\n");
                        }
                        Err(text) => reply(out, &text),
                    }
                }
            }
            Request::Data => {
                reply(out, self.txn.data(svc, svc.config.lmtp_max_message_size, "503 5.5.1 no valid recipients\r\n", "354 2.0.0 start mail input; end with <CRLF>.<CRLF>\r\n"));
            }
            Request::Bdat { chunk_size, is_last } => {
                let size = chunk_size as u64;
                debug!(peer = %self.peer, size, last = is_last, "BDAT chunk");
                match self.txn.bdat(svc, crate::Protocol::Lmtp, svc.config.lmtp_max_message_size, "503 5.5.1 no valid recipients\r\n", size, is_last) {
                    // Its octets follow anyway; they are not commands.
                    BdatStart::Refused(text) => reply(out, text),
                    BdatStart::Reading => {}
                    // Nothing to read: `BDAT 0 LAST` ends the message now.
                    BdatStart::EndsNow => self.chunk_done(svc, out).await,
                }
            }
            Request::Rset => {
                self.reset();
                reply(out, "250 2.0.0 ok\r\n");
            }
            Request::Noop { .. } => reply(out, "250 2.0.0 ok\r\n"),
            Request::Vrfy { .. } => reply(out, "252 2.5.0 cannot verify, but will accept\r\n"),
            Request::Quit => {
                reply(out, "221 2.0.0 bye\r\n");
                return Next::Close;
            }
            Request::StartTls => reply(out, "502 5.5.1 STARTTLS not offered on LMTP\r\n"),
            Request::Auth { .. } => reply(out, "502 5.5.1 AUTH not offered on LMTP\r\n"),
            _ => reply(out, "502 5.5.1 command not implemented\r\n"),
        }
        Next::Continue
    }

    /// The end of DATA or of a BDAT chunk. Before `LAST` a chunk gets one
    /// reply: `250`, or the refusal once the message is known to be too
    /// big or to have no room (the transaction stays, its further chunks
    /// are read and refused the same way, until `LAST` or `RSET`).
    async fn chunk_done(&mut self, svc: &Arc<Services>, out: &mut Vec<u8>) {
        let Some(body) = self.txn.data.as_ref() else { return };
        if body.is_last() {
            return self.finish_data(svc, out).await;
        }
        out.extend_from_slice(body.chunk_reply("message too big").as_bytes());
    }
}

impl Session {

    fn reset(&mut self) {
        self.txn.reset();
    }

    /// `user`, `user+tag`, `user@domain` or `user+tag@domain` → local user
    /// (the mapping is `intake::local_recipient`, shared with the policy
    /// service).
    async fn check_recipient(&self, address: &str, svc: &Arc<Services>) -> Result<String, String> {
        use crate::intake::LocalRecipient;
        let user = match crate::intake::local_recipient(svc, address).await {
            LocalRecipient::User(user) => user,
            LocalRecipient::OtherDomain(domain) => {
                return Err(format!("550 5.1.2 domain {} is not served here\r\n", sanitize(&domain)));
            }
            LocalRecipient::Unknown => return Err("550 5.1.1 no such user\r\n".into()),
            LocalRecipient::Unavailable => return Err("451 4.3.0 user database unavailable\r\n".into()),
        };
        // Already full: refused now, not after DATA (the DATA-time check
        // stays, for the message that pushes a user over).
        match crate::intake::quota_refusal(svc, &user).await {
            Some(refusal) => Err(refusal.into()),
            None => Ok(user),
        }
    }


    async fn finish_data(&mut self, svc: &Arc<Services>, out: &mut Vec<u8>) {
        let Some(body) = self.txn.data.take() else { return };
        let recipients = std::mem::take(&mut self.txn.recipients);
        let from = self.txn.from.take().unwrap_or_default();
        let message = match body.finish() {
            Ok(m) => m,
            Err(why) => {
                let line: &[u8] = match why {
                    Refusal::TooBig => b"552 5.3.4 message too big\r\n",
                    Refusal::NoRoom => b"452 4.3.1 insufficient system storage, try again later\r\n",
                };
                for _ in &recipients {
                    let counted = match why {
                        Refusal::TooBig => crate::metrics::DeliveryResult::TooLarge,
                        Refusal::NoRoom => crate::metrics::DeliveryResult::NoRoom,
                    };
                    crate::metrics::delivery(crate::Protocol::Lmtp, counted, None);
                    out.extend_from_slice(line);
                }
                return;
            }
        };
        let message = Arc::new(message);
        for rcpt in recipients {
            let header = trace_headers(&from, &rcpt.address, self.lhlo.as_deref(), &self.peer, &svc.config.hostname);
            let svc2 = svc.clone();
            let body = message.clone();
            let (user, address, sender) = (rcpt.user.clone(), rcpt.address.clone(), from.clone());
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || {
                // Trace fields, then the message streamed from memory or
                // the spool: no per-recipient copy of the message.
                let copy = Copy::new(header.as_bytes(), &body, &[], &svc2.intake);
                let env = Rcpt { from: &sender, to: &address, user: &user };
                svc2.pipeline.deliver_from(&env, &copy)
            })
            .await;
            let counted = crate::metrics::DeliveryResult::of(result.as_ref().ok());
            crate::metrics::delivery(crate::Protocol::Lmtp, counted, Some(started.elapsed()));
            let addr = sanitize(&rcpt.address);
            let line = match result {
                Ok(Outcome::Stored(copies)) => {
                    for (folder, d) in &copies {
                        info!(peer = %self.peer, user = %rcpt.user, uidl = %d.uidl.as_str(), size = d.size,
                              folder = %folder.as_deref().unwrap_or("INBOX"), "delivered");
                    }
                    let id = copies.first().map(|(_, d)| d.uidl.as_str().to_string()).unwrap_or_default();
                    format!("250 2.0.0 <{addr}> delivered as {id}\r\n")
                }
                Ok(Outcome::Discarded) => format!("250 2.0.0 <{addr}> accepted and discarded by filter\r\n"),
                Ok(Outcome::Rejected(reason)) => format!("550 5.7.1 <{addr}> {}\r\n", sanitize(&reason)),
                Ok(Outcome::Failed(StoreError::OverQuota(detail))) => {
                    info!(user = %rcpt.user, %detail, "delivery refused: over quota");
                    if svc.config.quota_permanent {
                        format!("552 5.2.2 <{addr}> mailbox full\r\n")
                    } else {
                        format!("452 4.2.2 <{addr}> mailbox full, try again later\r\n")
                    }
                }
                Ok(Outcome::Failed(StoreError::DiskFull(reason))) => {
                    warn!(user = %rcpt.user, %reason, "delivery failed: disk full");
                    format!("452 4.3.1 <{addr}> insufficient system storage\r\n")
                }
                Ok(Outcome::Failed(StoreError::TooLarge { .. })) => {
                    format!("552 5.3.4 <{addr}> message too big\r\n")
                }
                Ok(Outcome::Failed(e)) => {
                    warn!(user = %rcpt.user, error = %e, "delivery failed");
                    format!("451 4.3.0 <{addr}> temporary delivery failure\r\n")
                }
                Err(e) => {
                    warn!(error = %e, "delivery task failed");
                    format!("451 4.3.0 <{addr}> temporary delivery failure\r\n")
                }
            };
            out.extend_from_slice(line.as_bytes());
        }
        debug!(peer = %self.peer, "transaction done");
    }
}

/// `Return-Path:` (RFC 5321 §4.4, added at final delivery) and `Received:`.
fn trace_headers(from: &str, rcpt: &str, lhlo: Option<&str>, peer: &str, hostname: &str) -> String {
    format!(
        "Return-Path: <{}>\r\nReceived: from {} ({})\r\n\tby {} (pobox) with LMTP\r\n\tfor <{}>; {}\r\n",
        sanitize(from),
        sanitize(lhlo.unwrap_or("unknown")),
        sanitize(peer),
        hostname,
        sanitize(rcpt),
        crate::date::rfc5322(SystemTime::now()),
    )
}

