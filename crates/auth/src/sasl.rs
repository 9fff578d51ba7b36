//! SASL framing for POP3 `AUTH` (RFC 5034): base64 and the PLAIN and LOGIN
//! mechanisms.
//!
//! This module only turns client responses into credentials. It keeps no
//! state: the server drives the exchange (sends `+ <challenge>`, reads the
//! line, handles the `*` cancel of RFC 5034 §4) and then calls
//! [`crate::UserDb::verify`] with what it decoded here.
//!
//! * PLAIN (RFC 4616): one response, `authzid NUL authcid NUL passwd`,
//!   decoded by [`decode_plain`].
//! * LOGIN (draft-murchison-sasl-login): the server sends
//!   [`LOGIN_USERNAME_CHALLENGE`], then [`LOGIN_PASSWORD_CHALLENGE`]; each
//!   client response is one base64 line. [`decode_login_username`] checks the
//!   first one; the second is the password as-is.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::secret::Secret;

/// LOGIN mechanism's first challenge: base64 of `Username:`.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";

/// LOGIN mechanism's second challenge: base64 of `Password:`.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Credentials from a SASL PLAIN response.
#[derive(Debug)]
pub struct PlainCredentials {
    /// The authorization identity, when the client sent one. It always equals
    /// [`authcid`](Self::authcid): [`decode_plain`] refuses any other value.
    pub authzid: Option<String>,
    /// The authentication identity, i.e. the user name to verify.
    pub authcid: String,
    /// The password. Not required to be UTF-8 (see [`decode_plain`]).
    pub password: Secret,
}

/// Why a SASL response was refused. Messages never contain the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslError {
    /// The line is not standard base64 with padding.
    #[error("invalid base64 in SASL response")]
    InvalidBase64,
    /// PLAIN response without the two NUL separators.
    #[error("SASL PLAIN response needs authzid NUL authcid NUL password")]
    MissingNul,
    /// PLAIN response with a third NUL: RFC 4616 forbids NUL in the password.
    #[error("NUL in SASL PLAIN password")]
    NulInPassword,
    /// An identity is not UTF-8 (RFC 4616 §2 requires UTF-8).
    #[error("SASL identity is not valid UTF-8")]
    InvalidUtf8,
    /// The user name is empty.
    #[error("empty SASL authentication identity")]
    EmptyAuthcid,
    /// The password is empty (RFC 4616: `passwd = 1*SAFE`).
    #[error("empty SASL password")]
    EmptyPassword,
    /// The client asked to act as another user. Proxy authorization is not
    /// supported, so only an empty authzid or one equal to the authcid is
    /// accepted.
    #[error("SASL authorization identity differs from authentication identity")]
    AuthzidNotSupported,
}

/// Decodes a base64 client response line (without CRLF).
///
/// Standard alphabet, padding required, no whitespace, as RFC 5034 §4 asks.
/// A lone `=` is the empty response (RFC 5034: it distinguishes an empty
/// initial response from an absent one); an empty line also decodes to empty.
///
/// The result may hold a password: move it into a [`Secret`] as soon as
/// possible.
///
/// # Errors
///
/// [`SaslError::InvalidBase64`] for anything else, including non-canonical
/// trailing bits.
pub fn decode_base64(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    if line == b"=" {
        return Ok(Vec::new());
    }
    BASE64.decode(line).map_err(|_| SaslError::InvalidBase64)
}

/// Encodes a server challenge (standard alphabet, with padding).
#[must_use]
pub fn encode_base64(data: &[u8]) -> String {
    BASE64.encode(data)
}

/// Decodes an already base64-decoded SASL PLAIN response (RFC 4616 §2):
/// `[authzid] NUL authcid NUL passwd`.
///
/// Identities must be UTF-8. The password is kept as bytes without a UTF-8
/// check: hashes are computed over bytes, and refusing a legacy Latin-1
/// password would only lock its owner out.
///
/// # Errors
///
/// * [`SaslError::MissingNul`] / [`SaslError::NulInPassword`]: not exactly
///   three fields.
/// * [`SaslError::InvalidUtf8`]: authzid or authcid is not UTF-8.
/// * [`SaslError::EmptyAuthcid`] / [`SaslError::EmptyPassword`].
/// * [`SaslError::AuthzidNotSupported`]: a non-empty authzid different from
///   the authcid.
pub fn decode_plain(response: &[u8]) -> Result<PlainCredentials, SaslError> {
    let mut fields = response.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password)) =
        (fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::MissingNul);
    };
    if password.contains(&0) {
        return Err(SaslError::NulInPassword);
    }
    let authzid = std::str::from_utf8(authzid).map_err(|_| SaslError::InvalidUtf8)?;
    let authcid = std::str::from_utf8(authcid).map_err(|_| SaslError::InvalidUtf8)?;
    if authcid.is_empty() {
        return Err(SaslError::EmptyAuthcid);
    }
    if password.is_empty() {
        return Err(SaslError::EmptyPassword);
    }
    // Exact comparison, like the user lookup itself (user names are
    // case-sensitive in this crate).
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidNotSupported);
    }
    Ok(PlainCredentials {
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        authcid: authcid.to_owned(),
        password: Secret::from(password),
    })
}

/// Checks the LOGIN mechanism's first response (already base64-decoded) and
/// returns it as the user name. The second response is the password, used
/// as-is (move it into a [`Secret`]).
///
/// # Errors
///
/// [`SaslError::EmptyAuthcid`] when empty; [`SaslError::InvalidUtf8`] when not
/// UTF-8 or when it contains a NUL byte (no user name does, and a NUL would
/// suggest a client sending PLAIN framing).
pub fn decode_login_username(response: &[u8]) -> Result<String, SaslError> {
    if response.is_empty() {
        return Err(SaslError::EmptyAuthcid);
    }
    let name = std::str::from_utf8(response).map_err(|_| SaslError::InvalidUtf8)?;
    if name.contains('\0') {
        return Err(SaslError::InvalidUtf8);
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_challenges_decode_to_their_prompts() {
        assert_eq!(
            decode_base64(LOGIN_USERNAME_CHALLENGE.as_bytes()).unwrap(),
            b"Username:"
        );
        assert_eq!(
            decode_base64(LOGIN_PASSWORD_CHALLENGE.as_bytes()).unwrap(),
            b"Password:"
        );
        assert_eq!(encode_base64(b"Username:"), LOGIN_USERNAME_CHALLENGE);
    }

    #[test]
    fn base64_edge_cases() {
        assert_eq!(decode_base64(b"=").unwrap(), b"");
        assert_eq!(decode_base64(b"").unwrap(), b"");
        // RFC 4616 §4 example: "\0tim\0tanstaaftanstaaf".
        assert_eq!(
            decode_base64(b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm").unwrap(),
            b"\0tim\0tanstaaftanstaaf"
        );
        for bad in [
            &b"AHRpbQ"[..],  // padding missing
            b"AHRpbQ==\r\n", // line ending left on
            b"AHRp bQ==",    // whitespace
            b"AHRpbQ=",      // wrong padding
            b"AHRpbR==",     // non-zero trailing bits
            b"AHRpbQ-_",     // URL-safe alphabet
            b"==",
            b"*", // cancel is the server's business, not base64
        ] {
            assert_eq!(decode_base64(bad), Err(SaslError::InvalidBase64), "{bad:?}");
        }
        assert_eq!(encode_base64(b""), "");
        assert_eq!(encode_base64(b"\xff\x00"), "/wA=");
    }

    #[test]
    fn plain_without_authzid() {
        let creds = decode_plain(b"\0tim\0tanstaaftanstaaf").unwrap();
        assert_eq!(creds.authzid, None);
        assert_eq!(creds.authcid, "tim");
        assert_eq!(creds.password.as_bytes(), b"tanstaaftanstaaf");
    }

    #[test]
    fn plain_with_matching_authzid() {
        let creds = decode_plain(b"tim\0tim\0pw").unwrap();
        assert_eq!(creds.authzid.as_deref(), Some("tim"));
        assert_eq!(creds.authcid, "tim");
    }

    #[test]
    fn plain_authzid_mismatch_is_refused() {
        // RFC 4616 §4 example of a proxy login: Ursel acting as Kurt.
        assert_eq!(
            decode_plain(b"Kurt\0Ursel\0kurt\xc3\xa4").unwrap_err(),
            SaslError::AuthzidNotSupported
        );
        // Case differs: still a different identity.
        assert_eq!(
            decode_plain(b"Tim\0tim\0pw").unwrap_err(),
            SaslError::AuthzidNotSupported
        );
    }

    #[test]
    fn plain_framing_errors() {
        assert_eq!(decode_plain(b"").unwrap_err(), SaslError::MissingNul);
        assert_eq!(decode_plain(b"timpw").unwrap_err(), SaslError::MissingNul);
        assert_eq!(decode_plain(b"tim\0pw").unwrap_err(), SaslError::MissingNul);
        assert_eq!(
            decode_plain(b"\0tim\0p\0w").unwrap_err(),
            SaslError::NulInPassword
        );
        assert_eq!(
            decode_plain(b"\0\0pw").unwrap_err(),
            SaslError::EmptyAuthcid
        );
        assert_eq!(
            decode_plain(b"\0tim\0").unwrap_err(),
            SaslError::EmptyPassword
        );
        assert_eq!(
            decode_plain(b"\0ti\xffm\0pw").unwrap_err(),
            SaslError::InvalidUtf8
        );
        assert_eq!(
            decode_plain(b"\xc3\0tim\0pw").unwrap_err(),
            SaslError::InvalidUtf8
        );
    }

    #[test]
    fn plain_password_may_be_any_bytes_and_utf8_names_work() {
        let creds = decode_plain(b"\0j\xc3\xbcrgen\0\xe4\xf6\xfc").unwrap();
        assert_eq!(creds.authcid, "jürgen");
        assert_eq!(creds.password.as_bytes(), b"\xe4\xf6\xfc");
    }

    #[test]
    fn errors_and_debug_do_not_leak_the_password() {
        let creds = decode_plain(b"\0tim\0tanstaaf").unwrap();
        assert!(!format!("{creds:?}").contains("tanstaaf"));
        let err = decode_plain(b"Kurt\0Ursel\0tanstaaf").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("tanstaaf"));
    }

    #[test]
    fn login_username() {
        assert_eq!(decode_login_username(b"tim").unwrap(), "tim");
        assert_eq!(decode_login_username(b""), Err(SaslError::EmptyAuthcid));
        assert_eq!(
            decode_login_username(b"t\xffim"),
            Err(SaslError::InvalidUtf8)
        );
        assert_eq!(decode_login_username(b"t\0im"), Err(SaslError::InvalidUtf8));
    }
}
