//! SASLprep (RFC 4013) for passwords.
//!
//! Every password path prepares the password the same way, so a non-ASCII
//! password works whichever client and mechanism sends it:
//!
//! * `pobox user add/passwd` ([`crate::UserDb::add`],
//!   [`crate::UserDb::set_password`]) hash the prepared form (Argon2id and
//!   the SCRAM secret alike, RFC 5802 §2.2: SaltedPassword is computed from
//!   `Normalize(password)`), and refuse a password SASLprep rejects (RFC 4013
//!   §2.3 prohibited characters, §2.4 bidi rules, unassigned code points);
//! * USER/PASS, PLAIN and LOGIN end in [`crate::UserDb::verify`], which checks
//!   [`candidates`] in order: the prepared form first, then the raw bytes
//!   when they differ, so hashes made before this (or imported from Dovecot,
//!   which does not normalise) keep working;
//! * SCRAM clients normalise themselves; the server only holds the secret
//!   made from the prepared form ([`crate::scram::ScramClient`] prepares too);
//! * APOP compares the digest against the prepared and the raw cleartext.
//!
//! Printable ASCII is left unchanged by SASLprep, so ASCII passwords and
//! their hashes are unaffected. The prohibited-character, bidi and unassigned
//! tables are Unicode 3.2's (RFC 3454), via the `stringprep` crate; so a
//! password with characters assigned later (most emoji) is refused by
//! `user add`, and at login can only match a hash of its raw bytes.
//!
//! No error here names the offending character: it is part of a password.

use std::borrow::Cow;

/// The SASLprep form of `password`, or `None` when it is not UTF-8 or
/// SASLprep rejects it. The error is deliberately opaque (see module docs).
#[must_use]
pub fn prepare(password: &[u8]) -> Option<Cow<'_, [u8]>> {
    let text = std::str::from_utf8(password).ok()?;
    match stringprep::saslprep(text).ok()? {
        Cow::Borrowed(s) => Some(Cow::Borrowed(s.as_bytes())),
        Cow::Owned(s) => Some(Cow::Owned(s.into_bytes())),
    }
}

/// The byte strings a login with `password` is checked against, in order:
/// the SASLprep form, then the raw bytes if they differ (legacy hashes made
/// from un-normalised passwords). A password SASLprep rejects (or that is not
/// UTF-8) is checked only as raw bytes: no hash `pobox` makes can match it,
/// so it fails like any wrong password unless an older hash was made from
/// exactly those bytes.
#[must_use]
pub fn candidates(password: &[u8]) -> Vec<Cow<'_, [u8]>> {
    match prepare(password) {
        Some(prepared) if *prepared != *password => vec![prepared, Cow::Borrowed(password)],
        Some(prepared) => vec![prepared],
        None => vec![Cow::Borrowed(password)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep(s: &str) -> Option<String> {
        prepare(s.as_bytes()).map(|b| String::from_utf8(b.into_owned()).unwrap())
    }

    /// RFC 4013 §3, every example of the table.
    #[test]
    fn rfc4013_section3_examples() {
        // 1: SOFT HYPHEN mapped to nothing
        assert_eq!(prep("I\u{00AD}X").as_deref(), Some("IX"));
        // 2: no transformation
        assert_eq!(prep("user").as_deref(), Some("user"));
        // 3: case preserved, will not match #2
        assert_eq!(prep("USER").as_deref(), Some("USER"));
        // 4: output is NFKC, input in ISO 8859-1
        assert_eq!(prep("\u{00AA}").as_deref(), Some("a"));
        // 5: output is NFKC, will match #1
        assert_eq!(prep("\u{2168}").as_deref(), Some("IX"));
        // 6: error - prohibited character
        assert_eq!(prep("\u{0007}"), None);
        // 7: error - bidirectional check
        assert_eq!(prep("\u{0627}\u{0031}"), None);
    }

    #[test]
    fn non_ascii_spaces_map_to_space_and_nfkc_applies() {
        assert_eq!(prep("\u{FF30}ässwörd\u{00A0}1").as_deref(), Some("Pässwörd 1"));
        // Decomposed input composes (NFKC): a + COMBINING DIAERESIS = ä.
        assert_eq!(prep("Pa\u{0308}sswörd 1").as_deref(), Some("Pässwörd 1"));
    }

    #[test]
    fn candidates_prepared_first_then_raw() {
        assert_eq!(candidates(b"correct horse"), vec![Cow::Borrowed(&b"correct horse"[..])]);
        let raw = "\u{FF30}w\u{00A0}1".as_bytes();
        let c = candidates(raw);
        assert_eq!(c.len(), 2);
        assert_eq!(&*c[0], b"Pw 1");
        assert_eq!(&*c[1], raw);
        // Rejected or not UTF-8: only the raw bytes (legacy hashes).
        assert_eq!(candidates(b"a\x07b"), vec![Cow::Borrowed(&b"a\x07b"[..])]);
        assert_eq!(candidates(b"caf\xe9"), vec![Cow::Borrowed(&b"caf\xe9"[..])]);
    }
}
