//! Maildir file names: generating unique ones, taking foreign ones apart,
//! and deriving the UIDL.
//!
//! A name is `<base>[,<field>=<value>...][:2,<flags>]`. The *base* is the
//! unique part chosen by the writer; the `,S=`/`,W=` fields are Dovecot's
//! size hints; `:2,<flags>` is the maildir(5) info added in `cur/`. Only
//! the base identifies a message: it never changes once written.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::{Uidl, is_valid_uidl};

/// Longest escaped host part, as Dovecot's `maildir_filename_generate`
/// keeps it: long host names would push the base past the 70 characters a
/// UIDL may have.
const MAX_HOST_LEN: usize = 32;

/// Longest base name accepted by [`Maildir::deliver_named`](super::Maildir::deliver_named).
pub(crate) const MAX_NAMED_BASE_LEN: usize = 100;

/// Per-process delivery counter: with the pid it makes names unique within
/// one microsecond on one host (maildir(5) and Postfix `maildir.c` explain
/// why pid + time alone stopped being enough on fast machines).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh unique base name:
/// `<secs>.M<usec>P<pid>Q<counter>R<8 hex random>.<host>`.
///
/// The random part guards against a pid reused within the same microsecond
/// after a restart, or two containers with the same hostname and pid
/// namespace writing into one shared Maildir.
pub(crate) fn unique_base() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.M{}P{}Q{}R{:08x}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        counter,
        rand::random::<u32>(),
        host(),
    )
}

/// The escaped host name, computed once.
fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let uname = rustix::system::uname();
        let raw = uname.nodename().to_bytes();
        if raw.is_empty() {
            "localhost".to_owned()
        } else {
            escape_host(raw)
        }
    })
}

/// Escapes a host name for use in a Maildir name.
///
/// maildir(5) requires `/` → `\057` and `:` → `\072` (a `/` would be a path
/// separator, a `:` would start the info part). We also escape `,` (it
/// starts Dovecot's `,S=` fields), `\` (the escape character itself) and
/// anything outside 0x21..=0x7E, so that a generated base is always a valid
/// UIDL. The result is cut to [`MAX_HOST_LEN`] bytes without splitting an
/// escape.
pub(crate) fn escape_host(raw: &[u8]) -> String {
    let mut out = String::new();
    for &b in raw {
        let piece = match b {
            b'/' | b':' | b',' | b'\\' => format!("\\{b:03o}"),
            0x21..=0x7e => char::from(b).to_string(),
            _ => format!("\\{b:03o}"),
        };
        if out.len() + piece.len() > MAX_HOST_LEN {
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// The file name for a delivered message: `<base>,S=<stored>,W=<wire>`.
pub(crate) fn with_sizes(base: &str, stored: u64, wire: u64) -> String {
    format!("{base},S={stored},W={wire}")
}

/// The base of a file name: everything before the first `,` or `:`.
pub(crate) fn base_of(name: &OsStr) -> &OsStr {
    let b = name.as_bytes();
    let end = b
        .iter()
        .position(|&c| c == b',' || c == b':')
        .unwrap_or(b.len());
    OsStr::from_bytes(&b[..end])
}

/// The POP3 size from a `,W=<n>` field, if the name has one.
///
/// Fields sit between the base and the `:` that starts the maildir(5) info
/// (`base,S=10,W=12:2,S`). The flags after `:2,` are never read as fields.
pub(crate) fn wire_size_from_name(name: &OsStr) -> Option<u64> {
    let b = name.as_bytes();
    let before_info = b.split(|&c| c == b':').next().unwrap_or(b);
    before_info
        .split(|&c| c == b',')
        .skip(1)
        .find_map(|field| field.strip_prefix(b"W="))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
}

/// The UIDL for a base name.
///
/// The base itself when it is a valid UIDL (RFC 1939 §7: 1..=70 characters
/// in 0x21..=0x7E), which is what qmail-pop3d and Dovecot show, so users
/// migrating do not download everything again. Otherwise the lowercase hex
/// of the first 16 bytes of SHA-256(base): 32 characters, stable across
/// restarts, and as unique as the names are.
pub(crate) fn uidl_for(base: &OsStr) -> Uidl {
    let b = base.as_bytes();
    if is_valid_uidl(b) {
        // is_valid_uidl accepts ASCII only, so this is valid UTF-8.
        Uidl(String::from_utf8_lossy(b).into_owned())
    } else {
        hashed_uidl(base)
    }
}

/// The hashed UIDL of a base name: the lowercase hex of the first 16 bytes
/// of SHA-256(base). Also what a message gets when its base name is a UIDL
/// another message was given by an override (`uidls.rs`).
pub(crate) fn hashed_uidl(base: &OsStr) -> Uidl {
    Uidl(hex::encode(&Sha256::digest(base.as_bytes())[..16]))
}

/// True for a base name [`Maildir::deliver_named`](super::Maildir::deliver_named)
/// accepts: 1..=100 bytes of `[A-Za-z0-9._-]`, not starting with `.`
/// (maildir(5) readers skip dot-files, so the message would be invisible).
pub(crate) fn is_valid_base(base: &str) -> bool {
    (1..=MAX_NAMED_BASE_LEN).contains(&base.len())
        && !base.starts_with('.')
        && base
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn host_escaping_follows_maildir5() {
        assert_eq!(escape_host(b"mx.example.org"), "mx.example.org");
        assert_eq!(escape_host(b"a/b:c"), "a\\057b\\072c");
        assert_eq!(escape_host(b"a,b\\c"), "a\\054b\\134c");
        assert_eq!(escape_host(b"a b\xc3"), "a\\040b\\303");
    }

    #[test]
    fn host_is_truncated_without_splitting_an_escape() {
        let long = escape_host(&[b'h'; 100]);
        assert_eq!(long.len(), MAX_HOST_LEN);
        // 30 letters then an escape that would end at byte 34: dropped whole.
        let mut raw = vec![b'x'; 30];
        raw.push(b'/');
        let cut = escape_host(&raw);
        assert_eq!(cut, "x".repeat(30));
    }

    #[test]
    fn unique_bases_are_unique_and_valid() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let b = unique_base();
            assert!(!b.contains([',', ':', '/']), "{b}");
            assert!(seen.insert(b));
        }
    }

    #[test]
    fn base_stops_at_comma_or_colon() {
        assert_eq!(
            base_of(OsStr::new("1700000000.M1P2.host,S=10,W=12:2,S")),
            "1700000000.M1P2.host"
        );
        assert_eq!(
            base_of(OsStr::new("1700000000.123.host:2,RS")),
            "1700000000.123.host"
        );
        assert_eq!(base_of(OsStr::new("plain")), "plain");
    }

    #[test]
    fn wire_size_read_only_from_fields() {
        let w = |s: &str| wire_size_from_name(OsStr::new(s));
        assert_eq!(w("1700000000.M1P2.host,S=10,W=12:2,S"), Some(12));
        assert_eq!(w("b,W=7"), Some(7));
        assert_eq!(w("b,S=10"), None);
        assert_eq!(w("b:2,W=5"), None, "flags are not fields");
        assert_eq!(w("b,W=x"), None);
        assert_eq!(w("1700000000.123.host"), None);
    }

    #[test]
    fn uidl_is_base_when_valid_else_stable_hash() {
        assert_eq!(
            uidl_for(OsStr::new("1700000000.M1P2.host")).as_str(),
            "1700000000.M1P2.host"
        );
        let long = "x".repeat(71);
        let u = uidl_for(OsStr::new(&long));
        assert_eq!(u.as_str().len(), 32);
        assert!(
            u.as_str()
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(u, uidl_for(OsStr::new(&long)), "stable");
        assert_ne!(u, uidl_for(OsStr::new(&"x".repeat(72))));
        // Bytes outside 0x21..=0x7E (and non-UTF-8) are hashed too.
        assert_eq!(uidl_for(OsStr::from_bytes(b"caf\xe9")).as_str().len(), 32);
    }

    #[test]
    fn named_base_validation() {
        assert!(is_valid_base("pop.example.org-abc_123"));
        assert!(is_valid_base(&"a".repeat(100)));
        assert!(!is_valid_base(&"a".repeat(101)));
        assert!(!is_valid_base(""));
        assert!(!is_valid_base(".hidden"));
        assert!(!is_valid_base("a/b"));
        assert!(!is_valid_base("a,S=1"));
        assert!(!is_valid_base("a:2,"));
    }
}
