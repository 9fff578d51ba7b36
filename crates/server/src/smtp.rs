//! Receive-only SMTP (RFC 5321): mail from the Internet for local users.
//!
//! Parsing is smtp-proto's and the command loop is the one LMTP runs too
//! (`mta_loop.rs`); this file is SMTP's [`Dialect`] (commands and replies,
//! STARTTLS), the relay policy and the delivery step.
//!
//! # Policy
//! - **Never a relay.** A recipient is accepted only when its domain is one
//!   of `domains` (zero-config, `domains = []`: any domain, the local part
//!   is the user) *and* the local part names an existing user (`user+tag`
//!   → `user`). A foreign domain gets `550 5.7.1 relaying denied`; local
//!   parts with `%`, `!` or `@` (the old source-routing hacks) likewise; an
//!   unknown user `550 5.1.1`. There is no AUTH (this is not a submission
//!   server): `AUTH` is answered `502 5.5.1` and changes nothing.
//! - **STARTTLS** (RFC 3207) with the POP3 certificates. Whatever the client
//!   pipelined after `STARTTLS` arrived in cleartext and is discarded; the
//!   session starts over (EHLO again).
//! - **Limits**: `smtp_max_recipients` (`452 4.5.3`), message size (SIZE at
//!   MAIL, and while reading DATA: the rest is read and discarded, nothing
//!   is stored, `552 5.3.4`), command line length (smtp-proto's 4 KiB,
//!   `500 5.5.2`, the rest of the line is skipped), per-IP connections
//!   (`smtp_max_connections_per_ip`, counted apart from POP3's), one
//!   idle timeout `smtp_timeout` (default 5 minutes, RFC 5321 §4.5.3.2's
//!   server timeout) applied to every read, command or DATA block, and an
//!   overall `data_timeout` for a whole DATA (default 10 minutes: the
//!   per-read timeout alone let a one-byte trickle hold a session forever).
//! - **Hard error limit** (`smtp_hard_error_limit`, default 20, Postfix's
//!   `smtpd_hard_error_limit`): every `5xx` reply to a command counts,
//!   unknown recipients included (else RCPT enumerates users at thousands
//!   of names per connection); a delivery resets the count. At the limit:
//!   `421 4.7.0 too many errors` and close.
//! - **DATA**: only `<CRLF>.<CRLF>` ends it (`pobox_proto::data`); a
//!   message holding a bare CR or LF is refused after its end with
//!   `550 5.6.0` (see `intake.rs`). Past 128 KiB it is spooled to an
//!   unnamed file (`spool.rs`); global budgets bound DATA memory
//!   (`data_memory_max`) and DATA bytes in flight (`data_in_flight_max`,
//!   `452 4.3.1` beyond). Every copy is streamed from memory or the spool.
//! - **BDAT** (CHUNKING, RFC 3030): chunks of counted octets go to the
//!   same receiver and spool as DATA, as they are (no dot-stuffing, no end
//!   marker); size limit, budgets, `data_timeout` (for all chunks) and the
//!   final reply after `LAST` are DATA's. A refused `BDAT` (no MAIL, no
//!   recipient, no room) still has its octets read and dropped, so the
//!   stream stays in step; a chunk past the size limit is answered `552`
//!   at its end. A bare CR or LF in BDAT data is refused like DATA's
//!   (`550 5.6.0` after `LAST`): BDAT has no end marker to smuggle past,
//!   but the other reason holds: readers that split lines differently
//!   would see different header sections (see `intake.rs`).
//! - **Durability**: the final `250` after DATA is written only once every
//!   accepted recipient's copy is durable (the store fsyncs). If any copy
//!   fails temporarily (disk, quota in its default temporary mode, I/O),
//!   the whole message gets `451`/`452`, and the sender retries: a copy
//!   already stored for another recipient of the same message is then
//!   stored twice (duplicate rather than loss). The store has no quota
//!   query, so over-quota is found at delivery, not at RCPT.
//! - **Sieve reject** (RFC 5429 §2.1): with SMTP one reply covers every
//!   recipient and we have no outbound relay for a DSN. If every recipient
//!   rejects, the reply is `550 5.7.1 <reason>` (the sender's MTA bounces);
//!   if only some do, the others are delivered, the reply is `250`, and the
//!   reject is logged.
//! - **Trace headers**: `Return-Path`, `Received` (EHLO name, peer IP, our
//!   host name, ESMTP/ESMTPS/ESMTPSA never, `for <rcpt>`, date) and, when
//!   checks are on, `Authentication-Results` (RFC 8601) with SPF, DKIM and
//!   DMARC from the `mail-auth` crate. Incoming `Authentication-Results`
//!   fields that claim our host name are removed first (RFC 8601 §5).
//! - **A missing final dot** (disconnect or timeout during DATA): nothing is
//!   delivered; the spool file, unnamed, goes with the connection.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, MX, MessageAuthenticator, Parameters, RecordSet, ResolverCache,
    Txt,
};
use smtp_proto::Request;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::Services;
use crate::intake::{BdatStart, Copy, Recipient, Transaction, sanitize};
use crate::mta_loop::{Dialect, Exit, Next};
use crate::spool::Refusal;
use crate::config::{DnsResolver, MailAuthConfig};
use crate::conn::Stream;
use crate::delivery::{Outcome, Rcpt};
use crate::shutdown::Shutdown;
use crate::throttle::PerIpConnections;
use pobox_store::StoreError;

/// What SMTP sessions share (held by [`Services`]).
pub(crate) struct Shared {
    /// Open SMTP connections per client IP (apart from POP3's table, so
    /// POP3 clients do not use up SMTP slots and the other way round).
    pub(crate) per_ip: Arc<PerIpConnections>,
    /// Built on first use, inside the runtime.
    checker: OnceLock<Option<Checker>>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared { per_ip: Arc::default(), checker: OnceLock::new() }
    }
}

struct Session {
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    txn: Transaction,
    peer: SocketAddr,
    /// `5xx` replies to commands since the last delivery.
    errors: u32,
}

/// How much of the header section is searched for forged
/// `Authentication-Results` fields (a header section is rarely over a few
/// KiB; fields past this are not removed).
const HEADER_SCAN_MAX: usize = 256 * 1024;

/// Serves one SMTP connection to the end: the loop shared with LMTP
/// (`mta_loop.rs`) with SMTP's [`Dialect`], run again on the TLS stream
/// after STARTTLS.
pub(crate) async fn serve(tcp: TcpStream, peer: SocketAddr, svc: Arc<Services>, mut shutdown: Shutdown) {
    // Replies are written whole; don't let Nagle hold the last one back.
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    let timeout = svc.config.smtp_timeout;
    let mut first = format!("220 {} ESMTP pobox ready\r\n", svc.config.hostname).into_bytes();
    let mut session = Session {
        helo: None,
        esmtp: false,
        tls: false,
        txn: Transaction::default(),
        peer,
        errors: 0,
    };
    loop {
        let greeting = std::mem::take(&mut first);
        let discarded = match crate::mta_loop::run(&mut stream, &mut session, &svc, &mut shutdown, greeting).await {
            Exit::Closed => return,
            Exit::StartTls { discarded } => discarded,
        };
        // RFC 3207 §4.2 / CVE-2011-0411: what was pipelined after STARTTLS
        // came in cleartext; the loop dropped it.
        if discarded > 0 {
            info!(peer = %session.peer, bytes = discarded, "discarded plaintext sent after STARTTLS");
        }
        let Stream::Plain(tcp) = stream else { return };
        let Some(tls) = svc.tls.as_ref() else { return };
        match tokio::time::timeout(timeout, tls.accept(tcp)).await {
            Ok(Ok(s)) => {
                crate::metrics::starttls(crate::Protocol::Smtp);
                stream = Stream::Tls(Box::new(s));
            }
            Ok(Err(e)) => {
                debug!(peer = %session.peer, error = %e, "STARTTLS handshake failed");
                return;
            }
            Err(_) => return,
        }
        // RFC 3207 §4.2: forget everything, EHLO again.
        session.helo = None;
        session.esmtp = false;
        session.reset();
        session.tls = true;
    }
}

fn is_bare_postmaster(line: &[u8]) -> bool {
    let line = line.trim_ascii_end();
    line.len() == b"RCPT TO:<postmaster>".len() && line.eq_ignore_ascii_case(b"RCPT TO:<postmaster>")
}

impl Dialect for Session {
    /// Longest command line, CRLF included. RFC 5321 §4.5.3.1.4 says 512,
    /// and extensions add to it; smtp-proto buffers up to 4096, and so do
    /// we.
    const MAX_COMMAND_LINE: usize = 4096;
    const INCOMPLETE_COMMAND: &'static str = "500 5.5.2 syntax error\r\n";

    fn peer(&self) -> &dyn std::fmt::Display {
        &self.peer
    }
    fn txn(&mut self) -> &mut Transaction {
        &mut self.txn
    }
    fn errors(&mut self) -> &mut u32 {
        &mut self.errors
    }
    fn read_timeout(&self, svc: &Services) -> Duration {
        svc.config.smtp_timeout
    }
    fn error_limit(&self, svc: &Services) -> u32 {
        svc.config.smtp_hard_error_limit
    }
    /// Every `5xx` reply to a command counts, unknown recipients included
    /// (see the module documentation).
    fn counts_as_error(reply: &[u8]) -> bool {
        reply.starts_with(b"5")
    }
    /// RFC 5321 §4.5.1: `RCPT TO:<Postmaster>` (no domain) must be
    /// accepted; smtp-proto refuses it.
    fn special_command(line: &[u8]) -> Option<Request<String>> {
        is_bare_postmaster(line).then(|| Request::Rcpt {
            to: smtp_proto::RcptTo { address: "postmaster".to_string(), orcpt: None, rrvs: 0, flags: 0 },
        })
    }

    async fn handle(&mut self, request: Request<String>, svc: &Arc<Services>, out: &mut Vec<u8>) -> Next {
        let reply = |out: &mut Vec<u8>, s: &str| out.extend_from_slice(s.as_bytes());
        match request {
            Request::Ehlo { host } => {
                self.reset();
                self.helo = Some(host.clone());
                self.esmtp = true;
                let starttls = if svc.tls.is_some() && !self.tls { "250-STARTTLS\r\n" } else { "" };
                out.extend_from_slice(
                    format!(
                        "250-{} greets {}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
                         250-SIZE {}\r\n250-CHUNKING\r\n{starttls}250 ENHANCEDSTATUSCODES\r\n",
                        svc.config.hostname,
                        sanitize(&host),
                        svc.config.smtp_max_message_size
                    )
                    .as_bytes(),
                );
            }
            Request::Helo { host } => {
                self.reset();
                self.helo = Some(host);
                self.esmtp = false;
                reply(out, &format!("250 {}\r\n", svc.config.hostname));
            }
            Request::Lhlo { .. } => {
                reply(out, "500 5.5.1 this is SMTP: use EHLO\r\n");
                return Next::Continue;
            }
            Request::Mail { from } => {
                if self.helo.is_none() {
                    reply(out, "503 5.5.1 EHLO first\r\n");
                } else if self.txn.from.is_some() {
                    reply(out, "503 5.5.1 nested MAIL command\r\n");
                } else if from.size as u64 > svc.config.smtp_max_message_size {
                    reply(out, "552 5.3.4 message size exceeds fixed maximum message size\r\n");
                } else if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
                    reply(out, "555 5.5.4 BODY=BINARYMIME not supported\r\n");
                } else if from.address.len() > 256 {
                    reply(out, "501 5.1.7 sender address too long\r\n");
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
                } else if self.txn.recipients.len() >= svc.config.smtp_max_recipients {
                    reply(out, "452 4.5.3 too many recipients\r\n");
                } else {
                    match check_recipient(&to.address, svc).await {
                        Ok(user) => {
                            if !self.txn.recipients.iter().any(|r| r.address.eq_ignore_ascii_case(&to.address)) {
                                self.txn.recipients.push(Recipient { address: to.address, user });
                            }
                            reply(out, "250 2.1.5 recipient ok\r\n");
                        }
                        Err(text) => {
                            info!(peer = %self.peer, rcpt = %sanitize(&to.address), reply = %text.trim_end(), "recipient refused");
                            reply(out, &text);
                        }
                    }
                }
            }
            Request::Data => {
                reply(out, self.txn.data(svc, svc.config.smtp_max_message_size, "554 5.5.1 no valid recipients\r\n", "354 start mail input; end with <CRLF>.<CRLF>\r\n"));
            }
            Request::Bdat { chunk_size, is_last } => {
                let size = chunk_size as u64;
                debug!(peer = %self.peer, size, last = is_last, "BDAT chunk");
                match self.txn.bdat(svc, crate::Protocol::Smtp, svc.config.smtp_max_message_size, "554 5.5.1 no valid recipients\r\n", size, is_last) {
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
            Request::Vrfy { .. } => reply(out, "252 2.5.0 cannot verify, but will try\r\n"),
            Request::Expn { .. } => reply(out, "502 5.5.1 EXPN not available\r\n"),
            Request::Help { .. } => reply(out, "214 2.0.0 see RFC 5321\r\n"),
            Request::Quit => {
                reply(out, "221 2.0.0 bye\r\n");
                return Next::Close;
            }
            Request::StartTls => {
                if self.tls {
                    reply(out, "503 5.5.1 TLS already active\r\n");
                } else if svc.tls.is_none() {
                    reply(out, "454 4.7.0 TLS not available\r\n");
                } else if self.txn.data.is_some() || self.txn.from.is_some() {
                    reply(out, "503 5.5.1 STARTTLS not allowed inside a transaction\r\n");
                } else {
                    reply(out, "220 2.0.0 ready to start TLS\r\n");
                    return Next::StartTls;
                }
            }
            Request::Auth { .. } => {
                // Not a submission server: no AUTH, and nothing AUTH-like
                // ever widens what RCPT accepts.
                reply(out, "502 5.5.1 AUTH not available: this server only accepts mail for its own users\r\n");
                return Next::Continue;
            }
            _ => {
                reply(out, "502 5.5.1 command not implemented\r\n");
                return Next::Continue;
            }
        }
        Next::Continue
    }

    /// The end of DATA or of a BDAT chunk (see `lmtp.rs`, which does the
    /// same): before `LAST` one reply for the chunk.
    async fn chunk_done(&mut self, svc: &Arc<Services>, out: &mut Vec<u8>) {
        let Some(body) = self.txn.data.as_ref() else { return };
        if body.is_last() {
            return self.finish_data(svc, out).await;
        }
        out.extend_from_slice(body.chunk_reply("message size exceeds fixed maximum message size").as_bytes());
    }
}

impl Session {

    fn reset(&mut self) {
        self.txn.reset();
    }


    async fn finish_data(&mut self, svc: &Arc<Services>, out: &mut Vec<u8>) {
        let Some(body) = self.txn.data.take() else { return };
        let recipients = std::mem::take(&mut self.txn.recipients);
        let from = self.txn.from.take().unwrap_or_default();
        let bare = body.saw_bare_line_end();
        let message = match body.finish() {
            Err(Refusal::TooBig) => {
                info!(peer = %self.peer, "message too big; discarded");
                count_refused(recipients.len(), crate::metrics::DeliveryResult::TooLarge);
                out.extend_from_slice(b"552 5.3.4 message size exceeds fixed maximum message size\r\n");
                return;
            }
            Err(Refusal::NoRoom) => {
                count_refused(recipients.len(), crate::metrics::DeliveryResult::NoRoom);
                out.extend_from_slice(b"452 4.3.1 insufficient system storage, try again later\r\n");
                return;
            }
            Ok(_) if bare => {
                info!(peer = %self.peer, "message with a bare CR or LF refused");
                out.extend_from_slice(
                    b"550 5.6.0 bare CR or LF in message data; lines must end with CRLF (RFC 5321 2.3.8)\r\n",
                );
                return;
            }
            Ok(m) => m,
        };
        let helo = self.helo.clone().unwrap_or_default();
        let hostname = &svc.config.hostname;
        let auth_results = if svc.config.mail_auth.enabled {
            // DKIM hashes the whole body: a spooled message is loaded for
            // the checks only within the DATA memory budget; without room
            // only SPF is checked.
            let loaded = if message.in_memory().is_none() { message.load(&svc.intake) } else { None };
            let bytes = message.in_memory().or(loaded.as_ref().map(|(m, _)| &m[..]));
            let header = authentication_results(svc, self.peer.ip(), &helo, &from, bytes).await;
            drop(loaded);
            Some(header)
        } else {
            None
        };
        let skip = match message.head(HEADER_SCAN_MAX) {
            Ok(head) => our_auth_results(&head, hostname),
            Err(e) => {
                warn!(error = %e, "cannot read the DATA spool file");
                out.extend_from_slice(b"451 4.3.0 temporary local problem\r\n");
                return;
            }
        };
        let message = Arc::new(message);
        let skip = Arc::new(skip);
        let protocol = match (self.esmtp, self.tls) {
            (false, _) => "SMTP",
            (true, false) => "ESMTP",
            (true, true) => "ESMTPS",
        };
        let mut delivered = 0usize;
        let mut rejected: Vec<String> = Vec::new();
        let mut temporary: Option<&'static str> = None;
        let mut permanent = 0usize;
        let total = recipients.len();
        for rcpt in recipients {
            let mut header = format!(
                "Return-Path: <{}>\r\nReceived: from {} ({})\r\n\tby {} (pobox) with {protocol}\r\n\tfor <{}>; {}\r\n",
                sanitize(&from),
                sanitize(if helo.is_empty() { "unknown" } else { &helo }),
                ip_literal(self.peer.ip()),
                hostname,
                sanitize(&rcpt.address),
                crate::date::rfc5322(SystemTime::now()),
            );
            if let Some(ar) = &auth_results {
                header.push_str(ar);
            }
            let svc2 = svc.clone();
            let (body, skip) = (message.clone(), skip.clone());
            let (user, address, sender) = (rcpt.user.clone(), rcpt.address.clone(), from.clone());
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || {
                // Trace fields, then the message minus forged fields,
                // streamed from memory or the spool: never copied whole.
                let copy = Copy::new(header.as_bytes(), &body, &skip, &svc2.intake);
                let env = Rcpt { from: &sender, to: &address, user: &user };
                svc2.pipeline.deliver_from(&env, &copy)
            })
            .await;
            let counted = crate::metrics::DeliveryResult::of(result.as_ref().ok());
            crate::metrics::delivery(crate::Protocol::Smtp, counted, Some(started.elapsed()));
            match result {
                Ok(Outcome::Stored(copies)) => {
                    for (folder, d) in &copies {
                        info!(peer = %self.peer, user = %rcpt.user, uidl = %d.uidl.as_str(), size = d.size,
                              folder = %folder.as_deref().unwrap_or("INBOX"), "delivered (smtp)");
                    }
                    delivered += 1;
                }
                Ok(Outcome::Discarded) => delivered += 1,
                Ok(Outcome::Rejected(reason)) => {
                    info!(peer = %self.peer, user = %rcpt.user, "sieve rejected the message for this recipient");
                    rejected.push(reason);
                }
                Ok(Outcome::Failed(StoreError::OverQuota(detail))) => {
                    info!(user = %rcpt.user, %detail, "delivery refused: over quota");
                    if svc.config.quota_permanent {
                        permanent += 1;
                    } else {
                        temporary.get_or_insert("452 4.2.2 mailbox full, try again later\r\n");
                    }
                }
                Ok(Outcome::Failed(StoreError::DiskFull(reason))) => {
                    warn!(user = %rcpt.user, %reason, "delivery failed: disk full");
                    temporary = Some("452 4.3.1 insufficient system storage\r\n");
                }
                Ok(Outcome::Failed(StoreError::TooLarge { .. })) => permanent += 1,
                Ok(Outcome::Failed(e)) => {
                    warn!(user = %rcpt.user, error = %e, "delivery failed");
                    temporary = Some("451 4.3.0 temporary delivery failure\r\n");
                }
                Err(e) => {
                    warn!(error = %e, "delivery task failed");
                    temporary = Some("451 4.3.0 temporary delivery failure\r\n");
                }
            }
        }
        let line = if let Some(t) = temporary {
            if delivered > 0 {
                warn!(peer = %self.peer, delivered, "temporary failure for some recipients; the sender will retry all, \
                       so the others may receive the message twice");
            }
            t.to_string()
        } else if permanent > 0 && delivered == 0 && rejected.len() + permanent == total {
            if svc.config.quota_permanent {
                "552 5.2.2 mailbox full\r\n".into()
            } else {
                "552 5.3.4 message too big\r\n".into()
            }
        } else if permanent > 0 {
            // Some copies stored, others permanently refused: a retry would
            // duplicate, a 5xx would lose the stored ones. Ask for a retry
            // anyway: the refused copies must not vanish silently.
            warn!(peer = %self.peer, delivered, permanent, "permanent failure for some recipients; asking for a retry");
            "451 4.3.0 temporary delivery failure for some recipients\r\n".into()
        } else if delivered == 0 && !rejected.is_empty() {
            format!("550 5.7.1 {}\r\n", sanitize(&rejected[0]))
        } else {
            if !rejected.is_empty() {
                info!(peer = %self.peer, delivered, rejected = rejected.len(),
                      "sieve rejected the message for some recipients; delivered to the others");
            }
            // A delivery resets the hard error count (as Postfix does).
            self.errors = 0;
            "250 2.0.0 message accepted for delivery\r\n".into()
        };
        out.extend_from_slice(line.as_bytes());
        debug!(peer = %self.peer, "transaction done");
    }
}

/// Maps an RCPT address to a local user, or the reply refusing it.
async fn check_recipient(address: &str, svc: &Arc<Services>) -> Result<String, String> {
    const RELAY: &str = "550 5.7.1 relaying denied\r\n";
    let (local, domain) = match address.rsplit_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (address, None),
    };
    // RFC 5321 §4.5.1: "postmaster" without a domain must be accepted.
    let local = match domain {
        None if local.eq_ignore_ascii_case("postmaster") => "postmaster",
        None => return Err("501 5.1.3 recipient address needs a domain\r\n".into()),
        Some(domain) => {
            if domain.is_empty() || domain.starts_with('[') {
                return Err(RELAY.into());
            }
            if !svc.config.domains.is_empty() && !svc.config.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
                return Err(RELAY.into());
            }
            local
        }
    };
    // user%host@us and host!user@us: source routing of old; never.
    if local.contains(['%', '!', '@', '"']) {
        return Err(RELAY.into());
    }
    let user = local.split_once('+').map_or(local, |(u, _)| u).to_string();
    if !pobox_auth::userdb::valid_username(&user) {
        return Err("550 5.1.1 no such user here\r\n".into());
    }
    let users = svc.users.clone();
    let lookup = user.clone();
    match tokio::task::spawn_blocking(move || users.exists(&lookup)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Err("550 5.1.1 no such user here\r\n".into()),
        _ => return Err("451 4.3.0 user database unavailable\r\n".into()),
    }
    // Already full: refused now, not after DATA (a 452 does not count
    // toward the hard error limit, a 552 does, like any 5xx).
    match crate::intake::quota_refusal(svc, &user).await {
        Some(refusal) => Err(refusal.into()),
        None => Ok(user),
    }
}

/// `[192.0.2.1]` / `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3).
fn ip_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
    }
}


/// The byte ranges of every `Authentication-Results` field of the header
/// section whose authserv-id is `hostname` (RFC 8601 §5: a forged claim in
/// our name), to leave out when the message is stored. `head` is the start
/// of the message; other fields, the body and line endings are kept byte
/// for byte.
pub(crate) fn our_auth_results(head: &[u8], hostname: &str) -> Vec<Range<u64>> {
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut pos = 0;
    let mut dropping = false;
    while pos < head.len() {
        let Some(end) = head[pos..].iter().position(|&b| b == b'\n').map(|i| pos + i + 1) else {
            // A line cut by the head's end: not judged.
            break;
        };
        let line = &head[pos..end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            break; // end of the header section
        }
        let continuation = matches!(line[0], b' ' | b'\t');
        if !continuation {
            dropping = is_our_auth_results(content, hostname);
        }
        if dropping {
            match ranges.last_mut() {
                Some(r) if r.end == pos as u64 => r.end = end as u64,
                _ => ranges.push(pos as u64..end as u64),
            }
        }
        pos = end;
    }
    ranges
}

fn is_our_auth_results(field: &[u8], hostname: &str) -> bool {
    const NAME: &[u8] = b"authentication-results";
    let Some(colon) = field.iter().position(|&b| b == b':') else { return false };
    let name = field[..colon].trim_ascii_end();
    if !name.eq_ignore_ascii_case(NAME) {
        return false;
    }
    let value = &field[colon + 1..];
    let id_end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    // authserv-id, possibly followed by a version; comments are not
    // expected here, and an unfolded id is what we compare.
    let id = value[..id_end].trim_ascii();
    let id = id.split(|b| b.is_ascii_whitespace()).next().unwrap_or_default();
    id.eq_ignore_ascii_case(hostname.as_bytes())
}

// ---------------------------------------------------------------------------
// SPF, DKIM, DMARC
// ---------------------------------------------------------------------------

struct Checker {
    auth: MessageAuthenticator,
    caches: Caches,
}

/// One DNS cache per record type: bounded, expiring; entries configured in
/// `mail_auth.static_txt` never expire.
struct Cache<K, V> {
    map: Mutex<HashMap<K, (V, Option<Instant>)>>,
}

const CACHE_MAX: usize = 10_000;

impl<K: Hash + Eq, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Cache { map: Mutex::new(HashMap::new()) }
    }
    fn pin(&self, key: K, value: V) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (value, None));
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for Cache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(name) {
            Some((v, None)) => Some(v.clone()),
            Some((v, Some(until))) if *until > Instant::now() => Some(v.clone()),
            _ => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_MAX {
            let now = Instant::now();
            map.retain(|_, (_, until)| until.is_none_or(|u| u > now));
            if map.len() >= CACHE_MAX {
                map.retain(|_, (_, until)| until.is_none());
            }
        }
        // Cap positive TTLs at an hour; a resolver error is not cached long.
        let valid_until = valid_until.min(Instant::now() + Duration::from_secs(3600));
        map.insert(key, (value, Some(valid_until)));
    }
}

/// Verifier parameters with our caches.
type CachedParams<'x, P> = Parameters<
    'x,
    P,
    Cache<Box<str>, Txt>,
    Cache<Box<str>, RecordSet<MX>>,
    Cache<Box<str>, RecordSet<Ipv4Addr>>,
    Cache<Box<str>, RecordSet<Ipv6Addr>>,
    Cache<IpAddr, RecordSet<Box<str>>>,
>;

struct Caches {
    txt: Cache<Box<str>, Txt>,
    mx: Cache<Box<str>, RecordSet<MX>>,
    ipv4: Cache<Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: Cache<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: Cache<IpAddr, RecordSet<Box<str>>>,
}

impl Checker {
    fn build(config: &MailAuthConfig) -> Option<Checker> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        let auth = match &config.resolver {
            DnsResolver::System => match MessageAuthenticator::new_system_conf() {
                Ok(a) => Ok(a),
                Err(_) => {
                    warn!("cannot read /etc/resolv.conf; SPF/DKIM/DMARC results will be temperror");
                    MessageAuthenticator::new(ResolverConfig::from_name_servers(Vec::new()), opts.clone())
                }
            },
            DnsResolver::Servers(servers) => {
                let list = servers
                    .iter()
                    .map(|s| {
                        let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                        for c in &mut ns.connections {
                            c.port = s.port();
                        }
                        ns
                    })
                    .collect();
                MessageAuthenticator::new(ResolverConfig::from_name_servers(list), opts)
            }
        };
        let auth = match auth {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "DNS resolver unavailable; Authentication-Results will say none");
                return None;
            }
        };
        let caches = Caches {
            txt: Cache::new(),
            mx: Cache::new(),
            ipv4: Cache::new(),
            ipv6: Cache::new(),
            ptr: Cache::new(),
        };
        for (name, value) in &config.static_txt {
            let mut key = name.to_ascii_lowercase();
            if !key.ends_with('.') {
                key.push('.');
            }
            let parsed: Option<Txt> = if key.contains("._domainkey.") {
                mail_auth::common::verify::DomainKey::parse(value.as_bytes()).ok().map(Into::into)
            } else if key.starts_with("_dmarc.") {
                mail_auth::dmarc::Dmarc::parse(value.as_bytes()).ok().map(Into::into)
            } else {
                mail_auth::spf::Spf::parse(value.as_bytes()).ok().map(Into::into)
            };
            match parsed {
                Some(txt) => caches.txt.pin(key.into_boxed_str(), txt),
                None => warn!(name = %name, "static DNS TXT record does not parse; ignored"),
            }
        }
        Some(Checker { auth, caches })
    }

    fn params<P>(&self, p: P) -> CachedParams<'_, P> {
        Parameters::new(p)
            .with_txt_cache(&self.caches.txt)
            .with_mx_cache(&self.caches.mx)
            .with_ipv4_cache(&self.caches.ipv4)
            .with_ipv6_cache(&self.caches.ipv6)
            .with_ptr_cache(&self.caches.ptr)
    }

    async fn check(&self, hostname: &str, ip: IpAddr, helo: &str, from: &str, message: Option<&[u8]>) -> String {
        let helo_domain = if helo.is_empty() { "unknown" } else { helo };
        let spf = if from.is_empty() {
            self.auth.verify_spf(self.params(SpfParameters::verify_ehlo(ip, helo_domain, hostname))).await
        } else {
            self.auth
                .verify_spf(self.params(SpfParameters::verify_mail_from(ip, helo_domain, hostname, from)))
                .await
        };
        let mut results = AuthenticationResults::new(hostname);
        let Some(parsed) = message.and_then(AuthenticatedMessage::parse) else {
            results = if from.is_empty() {
                results.with_spf_ehlo_result(&spf, ip, helo_domain)
            } else {
                results.with_spf_mailfrom_result(&spf, ip, from, helo_domain)
            };
            return format!("Authentication-Results: {results}\r\n");
        };
        let dkim = self.auth.verify_dkim(self.params(&parsed)).await;
        let mail_from_domain = from.rsplit_once('@').map_or(helo_domain, |(_, d)| d);
        let dmarc = self
            .auth
            .verify_dmarc(self.params(DmarcParameters::new(&parsed, &dkim, mail_from_domain, &spf)))
            .await;
        let header_from = parsed.from.first().map(String::as_str).unwrap_or_default();
        results = results.with_dkim_results(&dkim, header_from);
        results = if from.is_empty() {
            results.with_spf_ehlo_result(&spf, ip, helo_domain)
        } else {
            results.with_spf_mailfrom_result(&spf, ip, from, helo_domain)
        };
        results = results.with_dmarc_result(&dmarc);
        format!("Authentication-Results: {results}\r\n")
    }
}

/// The `Authentication-Results:` field (with CRLF) for this message. DNS
/// trouble shows as `temperror` results; a check that takes too long as
/// `none`: never a reason not to deliver.
async fn authentication_results(
    svc: &Arc<Services>,
    ip: IpAddr,
    helo: &str,
    from: &str,
    message: Option<&[u8]>,
) -> String {
    let hostname = &svc.config.hostname;
    let checker = svc.smtp.checker.get_or_init(|| Checker::build(&svc.config.mail_auth));
    let Some(checker) = checker else {
        return format!("Authentication-Results: {hostname}; none (no DNS resolver)\r\n");
    };
    match tokio::time::timeout(svc.config.mail_auth.timeout, checker.check(hostname, ip, helo, from, message)).await {
        Ok(header) => header,
        Err(_) => {
            info!(%ip, "SPF/DKIM/DMARC checks timed out");
            format!("Authentication-Results: {hostname}; none (checks timed out)\r\n")
        }
    }
}

/// A DATA refused as a whole counts once per recipient, as LMTP's does.
fn count_refused(recipients: usize, result: crate::metrics::DeliveryResult) {
    for _ in 0..recipients {
        crate::metrics::delivery(crate::Protocol::Smtp, result, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message as stored: `m` without the ranges.
    fn strip_our_auth_results(m: &[u8], hostname: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0;
        for r in our_auth_results(m, hostname) {
            out.extend_from_slice(&m[pos..r.start as usize]);
            pos = r.end as usize;
        }
        out.extend_from_slice(&m[pos..]);
        out
    }

    #[test]
    fn strips_only_our_auth_results_with_continuations() {
        let m = b"Authentication-Results: mx.example.org; spf=pass\r\n\tsmtp.mailfrom=x\r\n\
                  Authentication-Results: other.example; dkim=pass\r\n\
                  authentication-results :MX.EXAMPLE.ORG 1; none\r\n\
                  Subject: hi\r\n\r\nAuthentication-Results: mx.example.org; body stays\r\n";
        let s = strip_our_auth_results(m, "mx.example.org");
        let s = String::from_utf8(s).unwrap();
        assert_eq!(
            s,
            "Authentication-Results: other.example; dkim=pass\r\nSubject: hi\r\n\r\n\
             Authentication-Results: mx.example.org; body stays\r\n"
        );
    }

    #[test]
    fn strip_keeps_bare_lf_and_8bit() {
        let m = b"Subject: \xff\xfe junk\nAuthentication-Results: h; x\n\nbody\n";
        assert_eq!(strip_our_auth_results(m, "h"), b"Subject: \xff\xfe junk\n\nbody\n");
    }

    #[test]
    fn ip_literals() {
        assert_eq!(ip_literal("192.0.2.1".parse().unwrap()), "[192.0.2.1]");
        assert_eq!(ip_literal("2001:db8::1".parse().unwrap()), "[IPv6:2001:db8::1]");
        assert_eq!(ip_literal("::ffff:192.0.2.1".parse().unwrap()), "[192.0.2.1]");
    }
}
