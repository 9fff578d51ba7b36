//! [`Secret`]: the one type for passwords, SASL responses and tokens in every
//! pobox crate (the POP3 codec, `pobox-auth`, the fetcher). It is wiped on
//! drop and never printed.
//!
//! Every credential that crosses a crate boundary travels in a `Secret`, so a
//! stray `{:?}` in a log line prints `[redacted]` instead of the password, and
//! the heap copy does not outlive its owner.

use std::fmt;

use subtle::ConstantTimeEq as _;
use zeroize::Zeroize;

/// A password or other credential, zeroed when dropped.
///
/// * `Debug` prints `[redacted]`; there is deliberately no `Display`.
/// * `==` compares in constant time (`subtle`), so comparing secrets does not
///   leak how many leading bytes matched.
/// * `Clone` exists because parsed commands are values (a POP3 command is
///   cloned into the session); every clone is wiped on its own drop.
/// * Zeroing uses the `zeroize` crate, whose volatile writes the optimiser
///   may not elide, and it wipes the whole allocation (capacity, not just
///   length).
///
/// What this cannot do: wipe copies made before the bytes were handed over
/// (the caller's read buffer, a base64 line). Callers should move owned
/// buffers in with [`Secret::new`] rather than copying out of them.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Takes ownership of `bytes` without copying them.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Keep the borrow short and do not copy them into
    /// long-lived buffers.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, or `None` when it is not UTF-8.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the secret is zero bytes long.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Secret {}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl From<&[u8]> for Secret {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)] // only read through Debug
    struct Holder {
        password: Secret,
    }

    #[test]
    fn debug_is_redacted() {
        let secret = Secret::from("hunter2");
        let shown = format!("{secret:?}");
        assert_eq!(shown, "[redacted]");
        assert!(!shown.contains("hunter2"));
        // Also inside a derived Debug of a containing struct.
        let holder = format!("{:?}", Holder { password: secret });
        assert!(!holder.contains("hunter2"), "{holder}");
    }

    #[test]
    fn constructors_keep_bytes() {
        assert_eq!(Secret::new(vec![0, 1, 255]).as_bytes(), &[0, 1, 255]);
        assert_eq!(Secret::from("pw").as_bytes(), b"pw");
        assert_eq!(Secret::from(String::from("pw")).as_bytes(), b"pw");
        assert_eq!(Secret::from(&b"\xffpw"[..]).as_bytes(), b"\xffpw");
        assert_eq!(Secret::from(vec![7u8; 3]).len(), 3);
        assert!(Secret::new(Vec::new()).is_empty());
    }

    #[test]
    fn text_only_when_utf8() {
        assert_eq!(Secret::from("pässword").as_str(), Some("pässword"));
        assert_eq!(Secret::from(&b"\xffpw"[..]).as_str(), None);
    }

    #[test]
    fn equality_compares_every_byte_and_the_length() {
        assert_eq!(Secret::from("pencil"), Secret::from("pencil"));
        assert_ne!(Secret::from("pencil"), Secret::from("pencim"));
        assert_ne!(Secret::from("pencil"), Secret::from("pencil2"));
        assert_ne!(Secret::from(""), Secret::from("x"));
    }
}
