//! Sieve vacation (RFC 5230, RFC 3834) beyond what the pure Sieve crate
//! decides: the `:days` response tracking, which needs durable state, and
//! the reply message itself.
//!
//! Tracking: one file per user, `<data>/vacation/<user>.db`, lines
//! `<expires, seconds since the epoch> <key>` where the key is the first
//! 16 bytes of SHA-256(lowercased sender, NUL, handle) in hex: no
//! addresses on disk in the clear, and the same (sender, handle) pair
//! finds its line after a restart. Each check takes an exclusive `flock`
//! on `<user>.lock` (LMTP sessions and `pobox deliver` processes may
//! deliver to one user at once), drops expired lines, and when it decides
//! to answer rewrites the file through a temporary file, fsync and rename,
//! so a crash leaves the old file or the new one. At most
//! [`MAX_ENTRIES`] lines are kept (the soonest to expire go first); lines
//! that do not parse are dropped and logged, so a damaged file costs at
//! worst one extra reply per sender.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use tracing::warn;

/// Lines a user's tracking file keeps at most.
pub const MAX_ENTRIES: usize = 10_000;

/// The tracking file of `user`.
pub fn state_file(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.db"))
}

/// Whether `sender` should be answered now for `handle`, recording the
/// answer (durably) if so: true at most once per `days` per (sender,
/// handle).
///
/// # Errors
/// When the state cannot be read or written; the caller then does not
/// answer (a missed auto-reply is better than a flood of them).
pub fn should_reply(
    dir: &Path,
    user: &str,
    sender: &str,
    handle: &str,
    days: u64,
    now: SystemTime,
) -> io::Result<bool> {
    if user.is_empty() || user.starts_with('.') || user.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid user name",
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(format!("{user}.lock")))?;
    let _lock = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
    let path = state_file(dir, user);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        // Not UTF-8: damaged; start over rather than never answer again.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            warn!(user, file = %path.display(), "vacation state file is damaged; starting it afresh");
            String::new()
        }
        Err(e) => return Err(e),
    };
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut entries: Vec<(u64, String)> = Vec::new();
    let mut damaged = 0usize;
    for line in text.lines() {
        let parsed = line.split_once(' ').and_then(|(e, k)| {
            let valid_key = k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit());
            e.parse::<u64>()
                .ok()
                .filter(|_| valid_key)
                .map(|e| (e, k.to_owned()))
        });
        match parsed {
            Some((expires, key)) if expires > now_secs => entries.push((expires, key)),
            Some(_) => {}
            None => damaged += 1,
        }
    }
    if damaged > 0 {
        warn!(user, file = %path.display(), lines = damaged, "vacation state file had damaged lines; dropped");
    }
    let key = key(sender, handle);
    if entries.iter().any(|(_, k)| *k == key) {
        return Ok(false);
    }
    if entries.len() >= MAX_ENTRIES {
        // Make room: the lines soonest to expire go, never the new one.
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        entries.truncate(MAX_ENTRIES - 1);
    }
    entries.push((now_secs.saturating_add(self::days(days).as_secs()), key));
    let mut out = String::with_capacity(entries.len() * 44);
    for (expires, key) in &entries {
        out.push_str(&format!("{expires} {key}\n"));
    }
    let tmp = dir.join(format!(".{user}.db.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(out.as_bytes())?;
    file.sync_all()?;
    crate::outbox::rename_state_file(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

fn key(sender: &str, handle: &str) -> String {
    let mut h = Sha256::new();
    h.update(sender.to_ascii_lowercase().as_bytes());
    h.update([0]);
    h.update(handle.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The recipient without its `+detail`: the user's own address, the
/// default `From` of the reply (RFC 5230 §4.4).
pub fn base_address(recipient: &str) -> String {
    let r = recipient
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    match r.rsplit_once('@') {
        Some((local, domain)) => format!(
            "{}@{domain}",
            local.split_once('+').map_or(local, |(u, _)| u)
        ),
        None => r.to_owned(),
    }
}

/// The reply to send (RFC 5230 §5, RFC 3834 §3), CRLF line ends.
pub fn compose(
    v: &pobox_sieve::Vacation,
    recipient: &str,
    hostname: &str,
    now: SystemTime,
) -> Vec<u8> {
    let mut m = String::new();
    let from = match v.from.as_deref() {
        Some(f) if valid_from(f) => f.trim().to_owned(),
        Some(_) => {
            warn!(
                recipient,
                "vacation :from is not an address; the recipient's address is used"
            );
            base_address(recipient)
        }
        None => base_address(recipient),
    };
    let subject = match &v.subject {
        Some(s) => one_line(s),
        None => format!(
            "Auto: {}",
            one_line(v.original_subject.as_deref().unwrap_or("")).trim()
        )
        .trim_end()
        .to_owned(),
    };
    header(&mut m, "From", &encode_header(&from, true));
    header(&mut m, "To", &format!("<{}>", one_line(&v.to)));
    header(&mut m, "Subject", &encode_header(&subject, false));
    header(&mut m, "Date", &crate::date::rfc5322(now));
    header(
        &mut m,
        "Message-ID",
        &format!("<{:016x}.vacation@{hostname}>", rand::random::<u64>()),
    );
    if let Some(id) = v
        .message_id
        .as_deref()
        .map(one_line)
        .filter(|id| id.starts_with('<') && id.ends_with('>'))
    {
        header(&mut m, "In-Reply-To", &id);
        // RFC 5322 §3.6.4: the parent's References (or nothing), then its
        // Message-ID; only the last few ids, so a long thread cannot grow
        // the reply without bound.
        let refs = v.references.as_deref().map(one_line).unwrap_or_default();
        let mut ids: Vec<&str> = refs.split_whitespace().collect();
        ids.push(&id);
        let start = ids.len().saturating_sub(10);
        header(&mut m, "References", &ids[start..].join("\r\n "));
    }
    header(&mut m, "Auto-Submitted", "auto-replied (vacation)");
    header(&mut m, "MIME-Version", "1.0");
    let mut bytes = m.into_bytes();
    if v.mime {
        // `:mime`: the reason is a MIME entity, its own headers first.
        bytes.extend_from_slice(&crlf(v.reason.trim_start_matches(['\r', '\n'])));
    } else if v.reason.is_ascii() && v.reason.lines().all(|l| l.len() <= 998) {
        bytes.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n");
        bytes.extend_from_slice(&crlf(&v.reason));
    } else {
        bytes.extend_from_slice(
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(crlf(&v.reason));
        for chunk in encoded.as_bytes().chunks(76) {
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
    }
    bytes
}

fn header(m: &mut String, name: &str, value: &str) {
    m.push_str(name);
    m.push_str(": ");
    m.push_str(value);
    m.push_str("\r\n");
}

/// `:from` must be `local@domain` or `Name <local@domain>` on one line
/// (RFC 5230 §4.4); anything else is ignored.
fn valid_from(from: &str) -> bool {
    let addr_spec = |a: &str| {
        a.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
            && !a
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "<>(),;\"".contains(c))
    };
    let from = from.trim();
    if from.chars().any(char::is_control) {
        return false;
    }
    match from.rsplit_once('<') {
        Some((name, rest)) => {
            rest.strip_suffix('>').is_some_and(addr_spec) && !name.contains(['<', '>'])
        }
        None => addr_spec(from),
    }
}

/// Script text in a header: line breaks (header injection) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Printable ASCII as is; anything else as RFC 2047 encoded words of at
/// most 39 octets each (whole characters, so a line stays under 78), one per folded line. For an
/// address header only the display name may be encoded, so a `From`
/// with non-ASCII outside a display name is left as it is.
fn encode_header(value: &str, address: bool) -> String {
    if value.is_ascii() {
        return value.to_owned();
    }
    if address {
        // `Name <addr>`: encode the name, keep the address.
        if let Some((name, addr)) = value.rsplit_once('<')
            && addr.ends_with('>')
            && addr.is_ascii()
        {
            let name = name.trim().trim_matches('"');
            return format!("{} <{addr}", encoded_words(name));
        }
        return value.to_owned();
    }
    encoded_words(value)
}

fn encoded_words(text: &str) -> String {
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > 39 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// Bare LF or CR to CRLF; ends with a line end.
fn crlf(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        out.extend_from_slice(body.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// How long `days` is, for log lines.
pub fn days(days: u64) -> Duration {
    Duration::from_secs(days.max(1) * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vacation() -> pobox_sieve::Vacation {
        pobox_sieve::Vacation {
            to: "bob@example.org".into(),
            from: None,
            subject: None,
            reason: "Away until Monday.\nBack soon.".into(),
            mime: false,
            days: 7,
            handle: "h".into(),
            addresses: Vec::new(),
            original_subject: Some("Lunch?".into()),
            message_id: Some("<m1@example.org>".into()),
            references: Some("<m0@example.org>".into()),
        }
    }

    fn text(v: &pobox_sieve::Vacation) -> String {
        String::from_utf8(compose(
            v,
            "alice+work@example.com",
            "mail.example.com",
            UNIX_EPOCH,
        ))
        .unwrap()
    }

    #[test]
    fn reply_headers_follow_rfc5230_and_rfc3834() {
        let t = text(&vacation());
        assert!(t.contains("\r\nTo: <bob@example.org>\r\n"), "{t}");
        assert!(
            t.starts_with("From: alice@example.com\r\n"),
            "the user's address without +detail: {t}"
        );
        assert!(t.contains("\r\nSubject: Auto: Lunch?\r\n"), "{t}");
        assert!(t.contains("\r\nIn-Reply-To: <m1@example.org>\r\n"), "{t}");
        assert!(
            t.contains("\r\nReferences: <m0@example.org>\r\n <m1@example.org>\r\n"),
            "{t}"
        );
        assert!(
            t.contains("\r\nAuto-Submitted: auto-replied (vacation)\r\n"),
            "{t}"
        );
        assert!(t.contains("@mail.example.com>\r\n"), "Message-ID: {t}");
        assert!(
            t.ends_with("\r\n\r\nAway until Monday.\r\nBack soon.\r\n"),
            "{t}"
        );
        assert!(!t.replace("\r\n", "").contains('\n'), "only CRLF line ends");
    }

    #[test]
    fn non_ascii_subject_and_body_are_encoded_and_injection_is_defused() {
        let mut v = vacation();
        v.original_subject =
            Some("Grüße aus Köln, ein ziemlich langer Betreff mit Umlauten äöü".into());
        v.reason = "Ich bin im Urlaub – zurück am Montag.".into();
        v.from = Some("\"Ålice\" <alice@example.com>\r\nBcc: victim@example.net".into());
        let t = text(&v);
        let subject = t.lines().find(|l| l.starts_with("Subject:")).unwrap();
        assert!(subject.starts_with("Subject: =?UTF-8?B?"), "{t}");
        assert!(
            t.lines()
                .all(|l| l.len() <= 78 || l.starts_with("Date") || l.is_empty()),
            "folded: {t}"
        );
        assert!(!t.contains("Bcc:"), "no injected header: {t}");
        assert!(
            t.starts_with("From: alice@example.com\r\n"),
            "an invalid :from is ignored: {t}"
        );
        v.from = Some("Ålice Müller <alice@example.com>".into());
        let t = text(&v);
        assert!(t.starts_with("From: =?UTF-8?B?"), "{t}");
        assert!(t.contains("?= <alice@example.com>\r\n"), "{t}");
        assert!(t.contains("Content-Transfer-Encoding: base64"), "{t}");
        assert!(t.is_ascii());
    }

    #[test]
    fn mime_reason_is_the_entity() {
        let mut v = vacation();
        v.mime = true;
        v.reason = "Content-Type: text/html; charset=us-ascii\n\n<p>Away</p>\n".into();
        let t = text(&v);
        assert!(t.contains("MIME-Version: 1.0\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n<p>Away</p>\r\n"), "{t}");
    }

    #[test]
    fn tracking_answers_once_per_sender_and_handle_per_days() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert!(should_reply(d, "alice", "Bob@example.org", "h", 1, t0).unwrap());
        assert!(
            !should_reply(
                d,
                "alice",
                "bob@example.org",
                "h",
                1,
                t0 + Duration::from_secs(3600)
            )
            .unwrap(),
            "case-insensitive sender"
        );
        assert!(
            should_reply(d, "alice", "carol@example.org", "h", 1, t0).unwrap(),
            "another sender"
        );
        assert!(
            should_reply(d, "alice", "bob@example.org", "other", 1, t0).unwrap(),
            "another handle"
        );
        assert!(
            should_reply(d, "carol", "bob@example.org", "h", 1, t0).unwrap(),
            "another user"
        );
        assert!(
            should_reply(d, "alice", "bob@example.org", "h", 1, t0 + days(1)).unwrap(),
            "a day later"
        );
        assert!(should_reply(d, "x/../y", "b@c", "h", 1, t0).is_err());
        // Expired lines are pruned (the other two expired that second); no
        // address in the clear.
        let text = std::fs::read_to_string(state_file(d, "alice")).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains("example"), "{text}");
    }

    #[test]
    fn a_damaged_state_file_is_survived() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert!(should_reply(d, "alice", "bob@example.org", "h", 7, t0).unwrap());
        let mut text = std::fs::read(state_file(d, "alice")).unwrap();
        text.extend_from_slice(b"garbage line\n12 zz\n");
        std::fs::write(state_file(d, "alice"), &text).unwrap();
        assert!(
            !should_reply(d, "alice", "bob@example.org", "h", 7, t0).unwrap(),
            "the good line still counts"
        );
        std::fs::write(state_file(d, "alice"), b"\xff\xfe not utf-8").unwrap();
        assert!(
            should_reply(d, "alice", "bob@example.org", "h", 7, t0).unwrap(),
            "unreadable: started afresh"
        );
    }

    #[test]
    fn the_state_file_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let lines: String = (0..MAX_ENTRIES as u64)
            .map(|i| format!("{} {:032x}\n", 1_100_000_000 + i, i))
            .collect();
        std::fs::write(state_file(d, "alice"), lines).unwrap();
        assert!(should_reply(d, "alice", "new@example.org", "h", 7, t0).unwrap());
        let text = std::fs::read_to_string(state_file(d, "alice")).unwrap();
        assert_eq!(text.lines().count(), MAX_ENTRIES);
        assert!(
            !text.contains(&format!("1100000000 {:032x}", 0)),
            "the soonest to expire went first"
        );
    }
}
