//! A Postfix policy service (Postfix's SMTPD policy delegation protocol,
//! `check_policy_service inet:127.0.0.1:10031`): Postfix's smtpd asks it
//! about each recipient while the sender's client is still at `RCPT TO`,
//! so mail to a full mailbox is refused in the SMTP dialogue, never
//! accepted and bounced later (backscatter). The counterpart of Dovecot's
//! `quota-status` service; off by default (`[policy] listen`).
//!
//! # Protocol
//! A request is `name=value` lines, each ending in LF, closed by an empty
//! line; the answer is `action=...` and an empty line. Postfix keeps the
//! connection and sends the next request on it.
//!
//! # Decisions (only at `protocol_state=RCPT`; every other state `DUNNO`)
//! - The recipient maps to a local user exactly as LMTP's `RCPT` does
//!   (`intake::local_recipient`): Postfix will hand the message to LMTP.
//! - **Over quota**: the user is already full, or the announced `size=`
//!   (the client's `MAIL FROM ... SIZE=`; 0 when it gave none) would put
//!   them over, as Dovecot's quota-status checks: the same refusal as
//!   LMTP/SMTP `RCPT` (`452 4.2.2`, or `552 5.2.2` when `over_quota` is
//!   permanent). Nothing is reserved: two messages announced at once may
//!   both pass, and delivery's own check then decides.
//! - **Unknown user**: `550 5.1.1` only with `reject_unknown = true`,
//!   else `DUNNO` (Postfix's own recipient maps usually decide that).
//! - **User database unreadable**: `DEFER_IF_PERMIT` (LMTP would answer
//!   `451` too).
//! - Everything else, including users under quota and recipients in a
//!   domain not in `domains`: `DUNNO`. Never `OK`: an `OK` would skip the
//!   restrictions after this one (`reject_unauth_destination` among them).
//!
//! # Bad input
//! A line over [`MAX_LINE`] octets, more than [`MAX_ATTRIBUTES`]
//! attributes, more than [`MAX_REQUEST`] octets or a line without `=` get
//! `action=DEFER_IF_PERMIT ...` and the connection is closed (the stream
//! cannot be trusted to be in step any more). A request that is not
//! `request=smtpd_access_policy` gets `DEFER_IF_PERMIT` and the connection
//! goes on. Idle connections close after [`IDLE_TIMEOUT`]; at most
//! `[policy] max_connections` are served at once, more are closed at once.

use std::sync::Arc;
use std::time::Duration;

use pobox_proto::line::{LineSplitter, Split};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use crate::Services;
use crate::intake::{LocalRecipient, sanitize};
use crate::shutdown::Shutdown;

/// Longest attribute line, LF included. Postfix's longest values are
/// client certificate subjects and SASL names, well under this.
pub(crate) const MAX_LINE: usize = 4096;

/// Most attributes in one request (Postfix 3.7 sends about 40).
pub(crate) const MAX_ATTRIBUTES: usize = 100;

/// Most octets in one request.
pub(crate) const MAX_REQUEST: usize = 32 * 1024;

/// An idle connection is closed after this. Longer than Postfix's own
/// `smtpd_policy_service_max_idle` (300 s), so Postfix closes first and
/// never finds its connection gone under a request.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(330);

/// One policy request: its attributes in the order sent.
#[derive(Debug, Default)]
pub(crate) struct Request {
    attributes: Vec<(String, String)>,
    octets: usize,
}

impl Request {
    /// The value of attribute `name` (the first, if repeated).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What one line did to the request being read.
#[derive(Debug)]
pub(crate) enum Step {
    /// An attribute was added; more follow.
    More,
    /// The empty line: the request is complete.
    Done(Request),
    /// The input is not a policy request; answer and close.
    Malformed(&'static str),
}

/// Collects the lines of one request.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    request: Request,
}

impl Reader {
    /// Feeds one line (without its LF; a CR before it already removed).
    pub(crate) fn line(&mut self, line: &[u8]) -> Step {
        if line.is_empty() {
            if self.request.attributes.is_empty() {
                // An empty line between requests: nothing asked yet.
                return Step::More;
            }
            return Step::Done(std::mem::take(&mut self.request));
        }
        self.request.octets += line.len() + 1;
        if self.request.octets > MAX_REQUEST {
            return Step::Malformed("request too large");
        }
        if self.request.attributes.len() >= MAX_ATTRIBUTES {
            return Step::Malformed("too many attributes");
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            return Step::Malformed("line without name=value");
        };
        let (name, value) = (&line[..eq], &line[eq + 1..]);
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            return Step::Malformed("bad attribute name");
        }
        // Names are ASCII (checked); values are whatever the SMTP client
        // sent (SMTPUTF8 addresses), kept lossily.
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        self.request.attributes.push((name, value));
        Step::More
    }
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No opinion: Postfix goes on with its next restriction.
    Dunno,
    /// The recipient's mailbox is full or the message would not fit.
    OverQuota { recipient: String },
    /// No such user (`reject_unknown = true` only).
    UnknownUser { recipient: String },
    /// Cannot decide now (user database unreadable, unsupported request).
    Defer(&'static str),
}

impl Decision {
    /// The `action=` value, without `action=` and the line ends.
    pub(crate) fn action(&self, quota_permanent: bool) -> String {
        match self {
            Decision::Dunno => "DUNNO".into(),
            Decision::OverQuota { recipient } => {
                let r = sanitize(recipient);
                if quota_permanent {
                    format!("552 5.2.2 <{r}>: mailbox full")
                } else {
                    format!("452 4.2.2 <{r}>: mailbox full, try again later")
                }
            }
            Decision::UnknownUser { recipient } => {
                format!("550 5.1.1 <{}>: no such user", sanitize(recipient))
            }
            Decision::Defer(why) => format!("DEFER_IF_PERMIT {why}"),
        }
    }

    fn metric(&self) -> crate::metrics::PolicyResult {
        use crate::metrics::PolicyResult;
        match self {
            Decision::Dunno => PolicyResult::Dunno,
            Decision::OverQuota { .. } => PolicyResult::OverQuota,
            Decision::UnknownUser { .. } => PolicyResult::UnknownUser,
            Decision::Defer(_) => PolicyResult::Defer,
        }
    }
}

/// Decides one request (see the module comment).
pub(crate) async fn decide(svc: &Arc<Services>, request: &Request) -> Decision {
    if request.get("request") != Some("smtpd_access_policy") {
        return Decision::Defer("unsupported policy request");
    }
    if !request.get("protocol_state").is_some_and(|s| s.eq_ignore_ascii_case("RCPT")) {
        return Decision::Dunno;
    }
    let recipient = request.get("recipient").unwrap_or_default();
    if recipient.is_empty() {
        return Decision::Dunno;
    }
    let user = match crate::intake::local_recipient(svc, recipient).await {
        LocalRecipient::User(user) => user,
        LocalRecipient::OtherDomain(_) => return Decision::Dunno,
        LocalRecipient::Unknown if svc.config.policy_reject_unknown => {
            return Decision::UnknownUser { recipient: recipient.to_string() };
        }
        LocalRecipient::Unknown => return Decision::Dunno,
        LocalRecipient::Unavailable => return Decision::Defer("user database unavailable"),
    };
    // `size=0` (no SIZE= from the client) is the "already full" check.
    let size = request.get("size").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0).max(1);
    if crate::intake::over_quota(svc, &user, size).await {
        return Decision::OverQuota { recipient: recipient.to_string() };
    }
    Decision::Dunno
}

/// Serves one policy connection (TCP or unix socket) until Postfix closes
/// it, it idles out, sends garbage or the server shuts down.
pub(crate) async fn serve<S>(mut stream: S, peer: String, svc: Arc<Services>, mut shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 8 * 1024];
    let mut inbuf: Vec<u8> = Vec::new();
    let mut lines = LineSplitter::new(MAX_LINE);
    let mut reader = Reader::default();
    loop {
        let n = tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(n)) => n,
            },
            // Requests are answered at once; a draining server just
            // closes, and Postfix reconnects to the next instance.
            () = shutdown.draining() => return,
        };
        inbuf.extend_from_slice(&buf[..n]);
        let mut pos = 0;
        let mut out = Vec::new();
        let mut close = false;
        while pos < inbuf.len() && !close {
            let step = match lines.split(&inbuf[pos..]) {
                Split::Line { line, consumed } => {
                    pos += consumed;
                    reader.line(line)
                }
                Split::TooLong { .. } => Step::Malformed("line too long"),
                Split::NeedMoreData { consumed } => {
                    pos += consumed;
                    if consumed == 0 {
                        break;
                    }
                    continue;
                }
            };
            match step {
                Step::More => {}
                Step::Done(request) => {
                    let decision = decide(&svc, &request).await;
                    crate::metrics::policy(decision.metric());
                    let action = decision.action(svc.config.quota_permanent);
                    if decision == Decision::Dunno {
                        debug!(%peer, state = ?request.get("protocol_state"), "policy: DUNNO");
                    } else {
                        info!(%peer, recipient = %sanitize(request.get("recipient").unwrap_or_default()),
                              %action, "policy decision");
                    }
                    out.extend_from_slice(format!("action={action}\n\n").as_bytes());
                }
                Step::Malformed(why) => {
                    crate::metrics::policy(crate::metrics::PolicyResult::Malformed);
                    info!(%peer, reason = why, "malformed policy request; closing");
                    out.extend_from_slice(
                        format!("action=DEFER_IF_PERMIT malformed policy request: {why}\n\n").as_bytes(),
                    );
                    close = true;
                }
            }
        }
        inbuf.drain(..pos);
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> Vec<Result<Request, &'static str>> {
        let mut out = Vec::new();
        let mut r = Reader::default();
        for line in input.split(|&b| b == b'\n') {
            match r.line(line) {
                Step::More => {}
                Step::Done(req) => out.push(Ok(req)),
                Step::Malformed(why) => {
                    out.push(Err(why));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn reads_requests_in_sequence_with_empty_and_repeated_values() {
        let got = read(
            b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\nrecipient=a@b=c\n\n\
                         request=smtpd_access_policy\nprotocol_state=DATA\nsize=12\nsize=13\n\n",
        );
        assert_eq!(got.len(), 2);
        let first = got[0].as_ref().unwrap();
        assert_eq!(first.get("sender"), Some(""));
        assert_eq!(first.get("recipient"), Some("a@b=c"), "only the first = splits");
        assert_eq!(first.get("client_address"), None);
        let second = got[1].as_ref().unwrap();
        assert_eq!(second.get("protocol_state"), Some("DATA"));
        assert_eq!(second.get("size"), Some("12"), "the first of a repeated attribute");
    }

    #[test]
    fn refuses_garbage_and_oversized_requests() {
        assert_eq!(read(b"GET / HTTP/1.0\n\n")[0].as_ref().err(), Some(&"line without name=value"));
        assert_eq!(read(b"=x\n\n")[0].as_ref().err(), Some(&"bad attribute name"));
        assert_eq!(read(b"na me=x\n\n")[0].as_ref().err(), Some(&"bad attribute name"));
        let many: Vec<u8> = (0..=MAX_ATTRIBUTES).flat_map(|i| format!("a{i}=x\n").into_bytes()).collect();
        assert_eq!(read(&many)[0].as_ref().err(), Some(&"too many attributes"));
        let big: Vec<u8> = (0..20).flat_map(|i| format!("a{i}={}\n", "v".repeat(2000)).into_bytes()).collect();
        assert_eq!(read(&big)[0].as_ref().err(), Some(&"request too large"));
        // Leading empty lines are not an (empty) request.
        let got = read(b"\n\nrequest=smtpd_access_policy\n\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].is_ok());
    }

    #[test]
    fn actions_are_single_lines_in_postfix_form() {
        let over = Decision::OverQuota { recipient: "bob@example.org\r\naction=OK".into() };
        assert_eq!(over.action(false), "452 4.2.2 <bob@example.orgaction=OK>: mailbox full, try again later");
        assert_eq!(over.action(true), "552 5.2.2 <bob@example.orgaction=OK>: mailbox full");
        assert_eq!(Decision::UnknownUser { recipient: "x@y".into() }.action(false), "550 5.1.1 <x@y>: no such user");
        assert_eq!(Decision::Dunno.action(true), "DUNNO");
        assert_eq!(Decision::Defer("why").action(true), "DEFER_IF_PERMIT why");
    }
}
