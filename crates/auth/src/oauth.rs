//! OAuth 2.0 bearer tokens for SASL OAUTHBEARER (RFC 7628) and XOAUTH2
//! (Google's and Microsoft's pre-standard mechanism), validated locally as
//! JWTs (RFC 7519) against a JWKS file (RFC 7517).
//!
//! Signatures are checked with `ring` (the provider rustls already uses):
//! RS256 (RSASSA-PKCS1-v1_5 with SHA-256, RFC 7518 §3.3) and ES256 (ECDSA
//! P-256 with SHA-256, RFC 7518 §3.4). `alg: none`, HMAC algorithms and
//! anything else are refused, so a token cannot pick a weaker check than the
//! key was published for (the classic JWT "alg confusion" bugs).
//!
//! Claims checked (RFC 7519 §4.1): `iss` equals the configured issuer,
//! `aud` (string or array) contains the configured audience, `exp` is
//! required and in the future, `nbf` (if present) is in the past, each with
//! a small leeway for clock skew. The user is the configured claim (default
//! `email`, else `preferred_username`/`sub` as configured); it must equal the
//! name the client asked for (OAUTHBEARER `a=`, XOAUTH2 `user=`) when one was
//! given, and exist in the passwd-file.
//!
//! The JWKS file is re-read when its mtime or size changes, so key rotation
//! needs no restart. No network access: fetching the JWKS from the issuer
//! is left to a cron job or a systemd timer writing the file.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::signature;

use crate::secret::Secret;
use crate::{Authenticated, UserDb};

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// The JWKS file (`{"keys": [...]}`).
    pub jwks_file: PathBuf,
    /// Required `iss`.
    pub issuer: String,
    /// Required member of `aud`.
    pub audience: String,
    /// The claim that names the mail user (`email`, `preferred_username`,
    /// `sub`...). Its value must be a user in the passwd-file.
    pub username_claim: String,
    /// Tolerated clock skew for `exp`/`nbf`.
    pub leeway: Duration,
}

/// Why a token was refused. The text is for logs and never contains the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// Not three base64url parts, or not JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is not RS256 or ES256.
    #[error("unsupported token algorithm {0:?}")]
    Algorithm(String),
    /// No key in the JWKS matches the token's `kid`/algorithm.
    #[error("no matching key in the JWKS")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad token signature")]
    Signature,
    /// `exp` is missing or in the past, or `nbf` in the future.
    #[error("token expired or not yet valid")]
    Expired,
    /// `iss` is not the configured issuer.
    #[error("wrong token issuer")]
    Issuer,
    /// `aud` does not contain the configured audience.
    #[error("wrong token audience")]
    Audience,
    /// The user claim is missing, differs from the requested user, or names
    /// no user in the passwd-file.
    #[error("token does not name this user")]
    User,
    /// The JWKS file cannot be read or parsed (server's fault).
    #[error("JWKS {path}: {reason}")]
    Jwks {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The passwd-file cannot be read.
    #[error("{0}")]
    Temporary(String),
}

impl OAuthError {
    /// True for server-side problems (answer `[SYS/TEMP]`, not `[AUTH]`).
    #[must_use]
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Jwks { .. } | Self::Temporary(_))
    }
}

/// One public key from the JWKS.
enum Jwk {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed SEC1 point `04 || x || y`.
    P256(Vec<u8>),
}

#[derive(Default)]
struct KeySet {
    /// (kid, key); kid may be empty.
    keys: Vec<(String, Jwk)>,
}

/// Validates bearer tokens. Cheap to share (`Arc`), blocking (reads the
/// JWKS file when it changed).
pub struct OAuthValidator {
    config: OAuthConfig,
    cache: Mutex<Option<(JwksStamp, Arc<KeySet>)>>,
}

/// The JWKS file's modification time and length, to notice a change.
type JwksStamp = (SystemTime, u64);

impl fmt::Debug for OAuthValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthValidator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OAuthValidator {
    /// A validator for `config`. The JWKS is loaded on first use; call
    /// [`check_jwks`](Self::check_jwks) at startup to fail early.
    #[must_use]
    pub fn new(config: OAuthConfig) -> Self {
        Self {
            config,
            cache: Mutex::new(None),
        }
    }

    /// Loads the JWKS now and returns how many usable keys it has.
    ///
    /// # Errors
    /// [`OAuthError::Jwks`] when unreadable, not JSON, or without usable keys.
    pub fn check_jwks(&self) -> Result<usize, OAuthError> {
        Ok(self.keys()?.keys.len())
    }

    /// Checks `token` and, when it is valid for `requested_user` (or for
    /// whoever it names, if `None`), returns the proof of login.
    ///
    /// # Errors
    /// An [`OAuthError`] saying which check failed.
    pub fn authenticate(
        &self,
        users: &UserDb,
        requested_user: Option<&str>,
        token: &Secret,
        now: SystemTime,
    ) -> Result<Authenticated, OAuthError> {
        let claims = self.validate(token, now)?;
        let user = claims
            .get(&self.config.username_claim)
            .and_then(|v| v.as_str())
            .ok_or(OAuthError::User)?;
        if requested_user.is_some_and(|r| r != user) {
            return Err(OAuthError::User);
        }
        match users.exists(user) {
            Ok(true) => Ok(Authenticated::new(user)),
            Ok(false) => Err(OAuthError::User),
            Err(e) => Err(OAuthError::Temporary(e.to_string())),
        }
    }

    /// Signature and registered-claims validation; returns the claims.
    fn validate(
        &self,
        token: &Secret,
        now: SystemTime,
    ) -> Result<serde_json::Map<String, serde_json::Value>, OAuthError> {
        let token =
            std::str::from_utf8(token.as_bytes()).map_err(|_| OAuthError::Malformed("not ASCII"))?;
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OAuthError::Malformed("not a compact JWS"));
        };
        let header: serde_json::Value = decode_json(h)?;
        let alg = header
            .get("alg")
            .and_then(|a| a.as_str())
            .ok_or(OAuthError::Malformed("no alg"))?;
        let kid = header.get("kid").and_then(|k| k.as_str()).unwrap_or("");
        let sig = B64URL
            .decode(s)
            .map_err(|_| OAuthError::Malformed("signature is not base64url"))?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        let keys = self.keys()?;
        let candidates = keys
            .keys
            .iter()
            .filter(|(k, _)| kid.is_empty() || k == kid);
        let mut found = false;
        let mut verified = false;
        for (_, key) in candidates {
            let result = match (alg, key) {
                ("RS256", Jwk::Rsa { n, e }) => signature::RsaPublicKeyComponents { n, e }
                    .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &sig),
                ("ES256", Jwk::P256(point)) => {
                    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(signed, &sig)
                }
                ("RS256" | "ES256", _) => continue,
                (other, _) => return Err(OAuthError::Algorithm(other.to_owned())),
            };
            found = true;
            if result.is_ok() {
                verified = true;
                break;
            }
        }
        if !matches!(alg, "RS256" | "ES256") {
            return Err(OAuthError::Algorithm(alg.to_owned()));
        }
        if !found {
            return Err(OAuthError::UnknownKey);
        }
        if !verified {
            return Err(OAuthError::Signature);
        }
        let claims: serde_json::Value = decode_json(p)?;
        let serde_json::Value::Object(claims) = claims else {
            return Err(OAuthError::Malformed("claims are not an object"));
        };
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let leeway = self.config.leeway.as_secs();
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or(OAuthError::Expired)?;
        if exp.saturating_add(leeway) <= now {
            return Err(OAuthError::Expired);
        }
        if let Some(nbf) = claims.get("nbf").and_then(serde_json::Value::as_u64)
            && nbf > now.saturating_add(leeway)
        {
            return Err(OAuthError::Expired);
        }
        if claims.get("iss").and_then(|v| v.as_str()) != Some(self.config.issuer.as_str()) {
            return Err(OAuthError::Issuer);
        }
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => *a == self.config.audience,
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .any(|a| a.as_str() == Some(self.config.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(OAuthError::Audience);
        }
        Ok(claims)
    }

    fn keys(&self) -> Result<Arc<KeySet>, OAuthError> {
        let path = &self.config.jwks_file;
        let err = |reason: String| OAuthError::Jwks {
            path: path.clone(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        let stamp = (meta.modified().unwrap_or(UNIX_EPOCH), meta.len());
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((s, keys)) = &*cache
            && *s == stamp
        {
            return Ok(Arc::clone(keys));
        }
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let keys = Arc::new(parse_jwks(&text).map_err(|r| err(r.to_owned()))?);
        *cache = Some((stamp, Arc::clone(&keys)));
        Ok(keys)
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, OAuthError> {
    let bytes = B64URL
        .decode(part)
        .map_err(|_| OAuthError::Malformed("part is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| OAuthError::Malformed("part is not JSON"))
}

fn parse_jwks(text: &[u8]) -> Result<KeySet, &'static str> {
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|_| "not JSON")?;
    let list = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array")?;
    let field = |k: &serde_json::Value, name: &str| -> Option<Vec<u8>> {
        B64URL.decode(k.get(name)?.as_str()?).ok()
    };
    let mut set = KeySet::default();
    for k in list {
        // Keys published for encryption only are not signature keys.
        if k.get("use").and_then(|u| u.as_str()).is_some_and(|u| u != "sig") {
            continue;
        }
        let kid = k
            .get("kid")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned();
        let jwk = match k.get("kty").and_then(|v| v.as_str()) {
            Some("RSA") => match (field(k, "n"), field(k, "e")) {
                (Some(n), Some(e)) => Jwk::Rsa { n, e },
                _ => continue,
            },
            Some("EC") if k.get("crv").and_then(|v| v.as_str()) == Some("P-256") => {
                match (field(k, "x"), field(k, "y")) {
                    (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                        let mut point = vec![4u8];
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        Jwk::P256(point)
                    }
                    _ => continue,
                }
            }
            _ => continue,
        };
        set.keys.push((kid, jwk));
    }
    if set.keys.is_empty() {
        return Err("no usable RSA or P-256 signature key");
    }
    Ok(set)
}

/// A parsed OAUTHBEARER or XOAUTH2 client response.
#[derive(Debug)]
pub struct BearerResponse {
    /// The user the client asks to be (`a=` / `user=`), if given.
    pub user: Option<String>,
    /// The bearer token.
    pub token: Secret,
}

/// RFC 7628 §3.1: `gs2-header kvsep *(kvpair kvsep) kvsep`, with
/// `kvsep = %x01` and the token in `auth=Bearer <token>`.
///
/// # Errors
/// A static reason (never quoting the token).
pub fn parse_oauthbearer(msg: &[u8]) -> Result<BearerResponse, &'static str> {
    let text = std::str::from_utf8(msg).map_err(|_| "not UTF-8")?;
    // gs2-header: channel binding is not defined for OAUTHBEARER ("n" or "y").
    let (flag, rest) = text.split_once(',').ok_or("no gs2 header")?;
    if !matches!(flag, "n" | "y") {
        return Err("channel binding is not supported with OAUTHBEARER");
    }
    let (authzid, rest) = rest.split_once(',').ok_or("no gs2 header")?;
    let user = match authzid {
        "" => None,
        a => Some(
            a.strip_prefix("a=")
                .ok_or("bad authzid")?
                .replace("=2C", ",")
                .replace("=3D", "="),
        ),
    };
    let rest = rest.strip_prefix('\x01').ok_or("missing separator")?;
    let token = bearer_from_pairs(rest)?;
    Ok(BearerResponse { user, token })
}

/// XOAUTH2: `user=<name>\x01auth=Bearer <token>\x01\x01`.
///
/// # Errors
/// A static reason.
pub fn parse_xoauth2(msg: &[u8]) -> Result<BearerResponse, &'static str> {
    let text = std::str::from_utf8(msg).map_err(|_| "not UTF-8")?;
    let (first, rest) = text.split_once('\x01').ok_or("missing separator")?;
    let user = first.strip_prefix("user=").ok_or("no user=")?;
    if user.is_empty() {
        return Err("empty user");
    }
    let token = bearer_from_pairs(rest)?;
    Ok(BearerResponse {
        user: Some(user.to_owned()),
        token,
    })
}

fn bearer_from_pairs(pairs: &str) -> Result<Secret, &'static str> {
    let body = pairs.strip_suffix("\x01\x01").ok_or("missing final separators")?;
    for pair in body.split('\x01') {
        if let Some(value) = pair.strip_prefix("auth=") {
            // RFC 6750 §2.1: "Bearer" is case-insensitive, one space.
            let (scheme, token) = value.split_once(' ').ok_or("no bearer token")?;
            if !scheme.eq_ignore_ascii_case("Bearer") || token.is_empty() {
                return Err("no bearer token");
            }
            return Ok(Secret::from(token));
        }
    }
    Err("no auth= pair")
}

/// RFC 7628 §3.2.2 error challenge: `{"status":"invalid_token"}` (the
/// client then answers `%x01`, and the server fails the exchange).
#[must_use]
pub fn error_challenge() -> Vec<u8> {
    br#"{"status":"invalid_token","schemes":"bearer"}"#.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauthbearer_and_xoauth2_framing() {
        let r = parse_oauthbearer(b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01").unwrap();
        assert_eq!(r.user.as_deref(), Some("user@example.com"));
        assert_eq!(r.token.as_bytes(), b"vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==");
        let r = parse_oauthbearer(b"n,,\x01auth=bearer tok\x01\x01").unwrap();
        assert_eq!(r.user, None);
        assert!(parse_oauthbearer(b"p=tls-exporter,,\x01auth=Bearer t\x01\x01").is_err());
        assert!(parse_oauthbearer(b"n,,\x01auth=Bearer t\x01").is_err());
        assert!(parse_oauthbearer(b"n,,\x01host=x\x01\x01").is_err());
        assert!(parse_oauthbearer(b"\x01").is_err(), "the AQ== answer is not a response");

        let r = parse_xoauth2(b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4\x01\x01").unwrap();
        assert_eq!(r.user.as_deref(), Some("someuser@example.com"));
        assert_eq!(r.token.as_bytes(), b"ya29.vF9dft4");
        assert!(parse_xoauth2(b"auth=Bearer x\x01\x01").is_err());
        assert!(!format!("{r:?}").contains("ya29"));
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys() {
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#).is_err());
        let set = parse_jwks(br#"{"keys":[{"kty":"oct","k":"AAAA"},{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}"#).unwrap();
        assert_eq!(set.keys.len(), 1);
    }
}
