//! What LMTP and SMTP intake share: the message body (DATA's dot receiver
//! or BDAT's counted chunks, then one spool, size limit and deadline), the
//! recipient mapping and quota check at RCPT (also the Postfix policy
//! service's), the copy handed to delivery, and the sanitising of peer
//! text. One copy, so a fix to either reaches both.
//!
//! # BDAT
//! Chunk octets are the message as they are (RFC 3030): no dot-stuffing,
//! no end marker, so nothing in the content can end a message early. The
//! bare CR/LF rule below applies to them as to DATA: SMTP refuses such a
//! message after `LAST` (the reader-split reason holds, the smuggling one
//! does not arise), LMTP keeps it.
//!
//! # Bare CR and bare LF in DATA
//! Only `<CRLF>.<CRLF>` ends a message (`pobox_proto::data`), so no bare CR
//! or LF can move a message boundary on either listener, whatever happens
//! to the message afterwards. What a message that *contains* one deserves
//! differs by peer:
//! - **SMTP refuses it** after its end, `550 5.6.0`, and the session goes
//!   on. RFC 5321 §2.3.8 forbids clients to send either except as CRLF; the
//!   MTAs that send to port 25 (Postfix, Exim, Exchange, Gmail) do not, so
//!   what does is a broken script or someone probing for smuggling. Keeping
//!   such mail would hand on bytes that readers split differently: a bare
//!   CR is a line end to some mail clients and not to the SPF/DKIM/DMARC
//!   parser or Sieve, so a header could be hidden from the checks that
//!   produced `Authentication-Results`. Postfix offers the same refusal
//!   (`smtpd_forbid_bare_newline = yes`, `521 5.5.2`, which also
//!   disconnects); sendmail 8.18 refuses by default. A refusal is a bounce
//!   the sender sees, never a silent loss.
//! - **LMTP keeps it as content.** The peer is the local MTA, which has
//!   already accepted the message: a `5xx` here bounces mail the MTA took
//!   responsibility for, and the MTA is where Internet-facing policy
//!   belongs. Postfix sends clean lines anyway: its LMTP client writes every
//!   queue-file line with CRLF and its cleanup turns a bare CR into a space
//!   (seen in `tests/postfix_data.rs`), but other MTAs, scripts and
//!   fetchers speaking LMTP may pass either on. Stored, a bare LF is a line
//!   end (the Maildir keeps LF endings) and a bare CR stays a byte, as
//!   before.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pobox_proto::data::DataReceiver;

use crate::delivery::Source;
use crate::spool::{Budget, Charge, Message, Refusal, Sink};

/// What Sieve sees of a copy when the memory budget has no room for its
/// usual [`crate::delivery::SIEVE_HEAD_MAX`]: enough for the header
/// section of nearly every message.
const SMALL_HEAD: usize = 64 * 1024;

/// Keeps peer-supplied text from breaking a header or reply line.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(256).collect()
}

/// Who an LMTP recipient (or a Postfix policy request's `recipient=`,
/// which names the mail Postfix will hand to LMTP) is: one mapping, so
/// the policy service and LMTP can never disagree about a user.
/// An accepted recipient of the transaction: the address as given and the
/// local user it maps to (LMTP and SMTP alike).
pub(crate) struct Recipient {
    pub(crate) address: String,
    pub(crate) user: String,
}

/// The mail transaction LMTP and SMTP keep alike (RFC 5321 §3.3): the
/// sender, the accepted recipients, the message being received, and the
/// octets of a refused `BDAT` chunk still to drop.
#[derive(Default)]
pub(crate) struct Transaction {
    pub(crate) from: Option<String>,
    pub(crate) recipients: Vec<Recipient>,
    pub(crate) data: Option<Body>,
    /// Octets of a refused `BDAT` chunk still to read and drop: the peer
    /// sends them whatever the reply (RFC 3030 §2), and they are not
    /// commands.
    pub(crate) skip: u64,
}

/// What [`Transaction::bdat`] decided.
pub(crate) enum BdatStart {
    /// Refused: send this reply; the chunk's octets will be dropped.
    Refused(&'static str),
    /// The chunk's octets go to the body; no reply until its end.
    Reading,
    /// `BDAT 0 LAST`: nothing to read, the message ends now.
    EndsNow,
}

impl Transaction {
    /// Forgets the transaction (RSET, a new greeting, STARTTLS).
    pub(crate) fn reset(&mut self) {
        self.from = None;
        self.recipients.clear();
        self.data = None;
    }

    /// `DATA`: the reply, and the body started when it is `354`. The
    /// protocols differ only in the reply without recipients and the `354`
    /// text, given by the caller with the size limit.
    pub(crate) fn data(
        &mut self,
        svc: &crate::Services,
        max_size: u64,
        no_recipients: &'static str,
        go_ahead: &'static str,
    ) -> &'static str {
        if self.from.is_none() {
            "503 5.5.1 MAIL first\r\n"
        } else if self.data.is_some() {
            // RFC 3030 §2: no DATA in a BDAT transaction.
            "503 5.5.1 DATA after BDAT; send BDAT or RSET\r\n"
        } else if self.recipients.is_empty() {
            no_recipients
        } else if svc.intake.in_flight_full() {
            "452 4.3.1 insufficient system storage, try again later\r\n"
        } else {
            self.data = Some(Body::new(&svc.intake, max_size, svc.config.data_timeout));
            go_ahead
        }
    }

    /// `BDAT size [LAST]` (RFC 3030): the first chunk starts the body, each
    /// chunk counts toward the size limit and the deadline. A refused chunk
    /// still has its octets read and dropped, so the stream stays in step.
    pub(crate) fn bdat(
        &mut self,
        svc: &crate::Services,
        protocol: crate::Protocol,
        max_size: u64,
        no_recipients: &'static str,
        chunk_size: u64,
        is_last: bool,
    ) -> BdatStart {
        let refusal = if self.from.is_none() {
            Some("503 5.5.1 MAIL first\r\n")
        } else if self.recipients.is_empty() {
            Some(no_recipients)
        } else if self.data.is_none() && svc.intake.in_flight_full() {
            Some("452 4.3.1 insufficient system storage, try again later\r\n")
        } else {
            None
        };
        if let Some(text) = refusal {
            self.skip = chunk_size;
            return BdatStart::Refused(text);
        }
        crate::metrics::bdat_chunk(protocol);
        let body = self.data.get_or_insert_with(|| Body::chunked(&svc.intake, max_size, svc.config.data_timeout));
        body.start_chunk(chunk_size, is_last);
        if chunk_size == 0 { BdatStart::EndsNow } else { BdatStart::Reading }
    }
}

pub(crate) enum LocalRecipient {
    /// A local user (`user`, `user+tag`, `user@domain`, `user+tag@domain`).
    User(String),
    /// The domain is not one of `domains` (only when `domains` is set).
    OtherDomain(String),
    /// No such user.
    Unknown,
    /// The user database could not be read.
    Unavailable,
}

/// Maps `address` to a local user the way LMTP's `RCPT` does.
pub(crate) async fn local_recipient(svc: &Arc<crate::Services>, address: &str) -> LocalRecipient {
    let (local, domain) = match address.rsplit_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (address, None),
    };
    if let Some(domain) = domain
        && !svc.config.domains.is_empty()
        && !svc.config.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    {
        return LocalRecipient::OtherDomain(domain.to_string());
    }
    let user = local.split_once('+').map_or(local, |(u, _)| u).to_string();
    if !pobox_auth::userdb::valid_username(&user) {
        return LocalRecipient::Unknown;
    }
    let users = svc.users.clone();
    let lookup = user.clone();
    match tokio::task::spawn_blocking(move || users.exists(&lookup)).await {
        Ok(Ok(true)) => LocalRecipient::User(user),
        Ok(Ok(false)) => LocalRecipient::Unknown,
        _ => LocalRecipient::Unavailable,
    }
}

/// The reply for a recipient refused for quota (CRLF included):
/// temporary unless `over_quota` is permanent.
pub(crate) fn quota_reply(svc: &crate::Services) -> &'static str {
    if svc.config.quota_permanent {
        "552 5.2.2 mailbox full\r\n"
    } else {
        "452 4.2.2 mailbox full, try again later\r\n"
    }
}

/// The `RCPT` reply for a recipient whose mailbox is already full (at or
/// over a quota limit), or `None` to accept them: refusing here, before
/// DATA, spares the MTA a bounce after it has taken the message.
pub(crate) async fn quota_refusal(svc: &Arc<crate::Services>, user: &str) -> Option<&'static str> {
    over_quota(svc, user, 1).await.then(|| quota_reply(svc))
}

/// Whether one more message of `size` octets would put `user` over quota
/// (a size of 1: already full). Users without a quota cost nothing (no
/// disk access); otherwise the store's usage (`maildirsize`) is read on
/// the blocking pool. An error reading it answers `false` (accept): the
/// quota check at delivery remains the guard.
pub(crate) async fn over_quota(svc: &Arc<crate::Services>, user: &str, size: u64) -> bool {
    if svc.store.quota(user).is_unlimited() {
        return false;
    }
    let store = svc.store.clone();
    let lookup = user.to_owned();
    match tokio::task::spawn_blocking(move || store.quota_exceeded_by(&lookup, size)).await {
        Ok(Ok(Some(usage))) => {
            tracing::info!(%user, messages = usage.messages, octets = usage.bytes, size, "recipient refused: over quota");
            true
        }
        Ok(Ok(None)) => false,
        Ok(Err(e)) => {
            tracing::debug!(%user, error = %e, "quota usage unreadable before DATA; accepting");
            false
        }
        Err(e) => {
            tracing::debug!(%user, error = %e, "quota check task failed before DATA; accepting");
            false
        }
    }
}

/// A message being received, after `DATA` or over `BDAT` chunks.
pub(crate) struct Body {
    framing: Framing,
    sink: Sink,
    /// The overall deadline (`data_timeout`), for DATA and for all chunks
    /// of a BDAT transaction together: a peer trickling one byte per read
    /// timeout must not hold a connection and its spool file forever.
    pub(crate) deadline: Instant,
}

/// How the message's end is found.
enum Framing {
    /// `DATA`: dot-stuffed lines ending at `<CRLF>.<CRLF>`.
    Dots {
        receiver: DataReceiver,
        /// The receiver's output for one read, before it goes to the sink.
        scratch: Vec<u8>,
    },
    /// `BDAT` (RFC 3030): counted chunks whose octets are the message as
    /// they are: no dots, no end marker, nothing to smuggle past.
    Chunks {
        /// Octets of the current chunk not read yet.
        remaining: u64,
        /// The current chunk is the `LAST` one.
        last: bool,
        /// Octets of the current chunk, for its reply.
        chunk: u64,
        line_ends: LineEnds,
    },
}

/// Finds bare CR and bare LF in chunk data, across chunk boundaries (DATA
/// has `DataReceiver` for it).
#[derive(Default)]
struct LineEnds {
    after_cr: bool,
    bare: bool,
}

impl LineEnds {
    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if (b == b'\n') != self.after_cr {
                // LF without CR before it, or CR without LF after it.
                self.bare = true;
            }
            self.after_cr = b == b'\r';
        }
    }
}

impl Body {
    /// A receiver for a new `DATA` message of at most `max` bytes.
    pub(crate) fn new(budget: &Arc<Budget>, max: u64, timeout: Duration) -> Body {
        Body {
            framing: Framing::Dots { receiver: DataReceiver::new(), scratch: Vec::new() },
            sink: Sink::new(budget, max),
            deadline: Instant::now() + timeout,
        }
    }

    /// A receiver for a new `BDAT` message of at most `max` bytes; each
    /// chunk is announced with [`Body::start_chunk`].
    pub(crate) fn chunked(budget: &Arc<Budget>, max: u64, timeout: Duration) -> Body {
        Body {
            framing: Framing::Chunks { remaining: 0, last: false, chunk: 0, line_ends: LineEnds::default() },
            sink: Sink::new(budget, max),
            deadline: Instant::now() + timeout,
        }
    }

    /// The next `size` octets on the connection are a chunk (the `LAST`
    /// one if `last`).
    pub(crate) fn start_chunk(&mut self, size: u64, is_last: bool) {
        if let Framing::Chunks { remaining, last, chunk, .. } = &mut self.framing {
            *remaining = size;
            *chunk = size;
            *last = is_last;
        }
    }

    /// Whether the bytes on the connection belong to the message now: for
    /// DATA until its end, for BDAT until the current chunk is complete
    /// (between chunks the peer sends commands).
    pub(crate) fn reading(&self) -> bool {
        match &self.framing {
            Framing::Dots { .. } => true,
            Framing::Chunks { remaining, .. } => *remaining > 0,
        }
    }

    /// The current chunk is the `LAST` one (DATA: always).
    pub(crate) fn is_last(&self) -> bool {
        match &self.framing {
            Framing::Dots { .. } => true,
            Framing::Chunks { last, .. } => *last,
        }
    }

    /// The size of the current chunk.
    pub(crate) fn chunk_size(&self) -> u64 {
        match &self.framing {
            Framing::Dots { .. } => 0,
            Framing::Chunks { chunk, .. } => *chunk,
        }
    }

    /// The reply to a chunk before `LAST` (RFC 3030): `250` with its size,
    /// or the refusal once the message is known to be too big (`too_big`,
    /// the dialect's own text) or to have no room. The transaction stays;
    /// its further chunks are read and answered the same way.
    pub(crate) fn chunk_reply(&self, too_big: &str) -> String {
        match self.refused() {
            Some(Refusal::TooBig) => format!("552 5.3.4 {too_big}\r\n"),
            Some(Refusal::NoRoom) => "452 4.3.1 insufficient system storage, try again later\r\n".to_string(),
            None => format!("250 2.0.0 {} octets received\r\n", self.chunk_size()),
        }
    }

    /// Why the message will not be kept, once known before its end.
    pub(crate) fn refused(&self) -> Option<Refusal> {
        self.sink.refused()
    }

    /// Feeds bytes from the connection; returns how many belong to the
    /// message (the rest follows its end or the chunk's) and whether the
    /// end (DATA) or the end of the chunk (BDAT) was reached.
    pub(crate) fn ingest(&mut self, bytes: &[u8]) -> (usize, bool) {
        match &mut self.framing {
            Framing::Dots { receiver, scratch } => {
                scratch.clear();
                let (consumed, done) = receiver.ingest(bytes, scratch);
                self.sink.write(scratch);
                (consumed, done)
            }
            Framing::Chunks { remaining, line_ends, .. } => {
                let n = usize::try_from(*remaining).unwrap_or(usize::MAX).min(bytes.len());
                line_ends.scan(&bytes[..n]);
                self.sink.write(&bytes[..n]);
                *remaining -= n as u64;
                (n, *remaining == 0)
            }
        }
    }

    /// The message held a CR not followed by LF or an LF not preceded by CR.
    pub(crate) fn saw_bare_line_end(&self) -> bool {
        match &self.framing {
            Framing::Dots { receiver, .. } => receiver.saw_bare_cr() || receiver.saw_bare_lf(),
            // A CR as the very last octet has no LF after it.
            Framing::Chunks { line_ends, .. } => line_ends.bare || line_ends.after_cr,
        }
    }

    /// The complete message, or why it is not kept.
    pub(crate) fn finish(self) -> Result<Message, Refusal> {
        self.sink.finish()
    }
}

/// One recipient's copy: our trace header fields, then the message with
/// some byte ranges left out (forged `Authentication-Results`), read from
/// memory or the spool as the store writes it: never assembled in memory.
pub(crate) struct Copy<'a> {
    trace: &'a [u8],
    message: &'a Message,
    skip: &'a [Range<u64>],
    budget: &'a Arc<Budget>,
    /// The memory charge for the head Sieve reads, held until the copy is
    /// stored (the head lives as long as the delivery).
    head_charge: Mutex<Option<Charge>>,
}

impl<'a> Copy<'a> {
    pub(crate) fn new(trace: &'a [u8], message: &'a Message, skip: &'a [Range<u64>], budget: &'a Arc<Budget>) -> Self {
        Copy { trace, message, skip, budget, head_charge: Mutex::new(None) }
    }
}

impl Source for Copy<'_> {
    fn size(&self) -> u64 {
        let skipped: u64 = self.skip.iter().map(|r| r.end.min(self.message.len()).saturating_sub(r.start)).sum();
        self.trace.len() as u64 + self.message.len() - skipped
    }

    fn head(&self, max: usize) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        use std::io::Read;
        // Charged to the DATA memory budget, so many big deliveries with
        // Sieve at once cannot add up past it; without room, a small head.
        let want = (max as u64).min(self.size());
        let limit = match Charge::memory_for(self.budget, want) {
            Some(charge) => {
                *self.head_charge.lock().unwrap_or_else(|p| p.into_inner()) = Some(charge);
                want
            }
            None => want.min(SMALL_HEAD as u64),
        };
        let mut out = Vec::new();
        self.reader().take(limit).read_to_end(&mut out)?;
        Ok(out.into())
    }

    fn reader(&self) -> Box<dyn std::io::Read + '_> {
        use std::io::Read;
        Box::new(self.trace.chain(self.message.reader(self.skip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split of `m` into two chunks finds the same answer as one chunk.
    fn bare(m: &[u8]) -> bool {
        let whole = {
            let mut l = LineEnds::default();
            l.scan(m);
            l.bare || l.after_cr
        };
        for k in 0..=m.len() {
            let mut l = LineEnds::default();
            l.scan(&m[..k]);
            l.scan(&m[k..]);
            assert_eq!(l.bare || l.after_cr, whole, "{m:?} split at {k}");
        }
        whole
    }

    #[test]
    fn bare_line_ends_in_chunks_are_found_across_chunk_boundaries() {
        assert!(!bare(b""));
        assert!(!bare(b"a\r\nb\r\n"));
        assert!(!bare(b"no line end at all"));
        assert!(bare(b"a\nb\r\n"));
        assert!(bare(b"a\rb\r\n"));
        assert!(bare(b"a\r\n\r"));
        assert!(bare(b"\n"));
        assert!(bare(b"a\r\r\n"));
    }

    #[test]
    fn chunks_take_exactly_their_octets() {
        let budget = Arc::new(Budget::new(1 << 20, 1 << 20, None));
        let mut body = Body::chunked(&budget, 1000, Duration::from_secs(60));
        assert!(!body.reading(), "nothing announced yet");
        body.start_chunk(5, false);
        assert_eq!(body.ingest(b"ab"), (2, false));
        assert_eq!(body.ingest(b"c\r\n.\r\nQUIT\r\n"), (3, true));
        assert!(!body.reading() && !body.is_last());
        body.start_chunk(3, true);
        assert_eq!(body.ingest(b".\r\nX"), (3, true));
        assert!(body.is_last());
        let m = body.finish().unwrap();
        assert_eq!(m.in_memory().unwrap(), b"abc\r\n.\r\n");
    }
}
