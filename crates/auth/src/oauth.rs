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
//! a small leeway for clock skew.
//!
//! # Which user a token names
//!
//! Only a claim the identity provider guarantees may pick the mail user, or
//! anyone who can set their own profile fields at the provider logs in as
//! someone else (the "nOAuth" class of account takeovers). So:
//!
//! - `username_claim = "sub"` (the default): the subject, which the provider
//!   assigns and never reassigns (OpenID Connect Core §2), is looked up in
//!   the passwd-file: the user whose line carries `oauth_sub=<sub>` in its
//!   extra field ([`UserDb::user_for_oauth_subject`]). A `sub` that merely
//!   equals a user name maps to no one.
//! - `username_claim = "email"`: the address is the user name only if the
//!   token also says `"email_verified": true` (the JSON boolean).
//! - any other claim (`preferred_username`, `upn`...): its value is the user
//!   name, as configured; only for a provider where users cannot change it.
//!
//! The user must exist in the passwd-file and equal the name the client
//! asked for (OAUTHBEARER `a=`, XOAUTH2 `user=`) when one was given.
//!
//! # Where the keys come from
//!
//! A validator takes its keys from a [`KeySource`]: the built-in one reads
//! a JWKS file, re-read when its mtime or size changes, so key rotation
//! needs no restart. This crate does no networking: the server crate
//! implements a source that fetches the JWKS from the identity provider's
//! URL, and RFC 7662 introspection, and hands the introspection answer to
//! [`OAuthValidator::authenticate_introspected`], which applies the same
//! claim and user-mapping rules as for a JWT.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::signature;

use crate::secret::Secret;
use crate::{Authenticated, Credential, UserDb};

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// The JWKS file (`{"keys": [...]}`); `None` when the keys come from
    /// another [`KeySource`] (or only introspection is used).
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`.
    pub issuer: String,
    /// Required member of `aud`.
    pub audience: String,
    /// The claim that identifies the mail user: `sub` (mapped through the
    /// passwd-file's `oauth_sub=`), `email` (only with `email_verified`
    /// true), or another claim whose value is the user name. See the
    /// module docs.
    pub username_claim: String,
    /// Tolerated clock skew for `exp`/`nbf`.
    pub leeway: Duration,
    /// A scope the token must carry (`scope`, space-separated, or `scp`,
    /// a string or an array); `None`: no scope check.
    pub required_scope: Option<String>,
}

impl OAuthConfig {
    /// The default [`username_claim`](Self::username_claim): the subject,
    /// which the provider guarantees (see the module docs).
    pub const DEFAULT_USERNAME_CLAIM: &'static str = "sub";
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
    /// The token's `sub` (here, from a validly signed token) is mapped to
    /// no user: no `oauth_sub=` for it in the passwd-file.
    #[error("token subject {0:?} is mapped to no user (add oauth_sub=<subject> to the user's passwd-file line)")]
    UnmappedSubject(String),
    /// The identity claim is `email` but the token does not say
    /// `"email_verified": true`.
    #[error("token email address is not verified by the identity provider")]
    EmailNotVerified,
    /// The JWKS file cannot be read or parsed (server's fault).
    #[error("JWKS {path}: {reason}")]
    Jwks {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Introspection says the token is not `active` (RFC 7662 §2.2).
    #[error("token is not active")]
    Inactive,
    /// The token does not carry the configured scope.
    #[error("token lacks the required scope")]
    Scope,
    /// The passwd-file cannot be read, or the keys or the introspection
    /// endpoint are unavailable (the server's problem, not the user's).
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

/// The usable signature keys of a JWKS (RFC 7517): RSA and P-256 keys
/// not restricted to encryption; others are skipped.
#[derive(Default)]
pub struct JwkSet {
    /// (kid, key); kid may be empty.
    keys: Vec<(String, Jwk)>,
}

impl fmt::Debug for JwkSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(kid, _)| kid))
            .finish()
    }
}

impl JwkSet {
    /// Parses a JWKS document (`{"keys": [...]}`).
    ///
    /// # Errors
    /// A static reason when it is not JSON or has no usable key.
    pub fn parse(text: &[u8]) -> Result<JwkSet, &'static str> {
        parse_jwks(text)
    }

    /// How many usable keys it has.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true for a parsed set (parsing refuses a set without keys).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this `kid` is in the set.
    #[must_use]
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|(k, _)| k == kid)
    }
}

/// Where a validator gets its keys. Implementations are called from
/// blocking code (the server's blocking pool) and may block.
pub trait KeySource: Send + Sync {
    /// The current key set.
    ///
    /// # Errors
    /// A temporary error ([`OAuthError::is_temporary`]) when there is no
    /// key set at all.
    fn keys(&self) -> Result<Arc<JwkSet>, OAuthError>;

    /// The token names a `kid` that the current set lacks: a source that
    /// can look for newer keys (the provider rotated) does so here, rate
    /// limited, and returns the newer set. The default: nothing newer.
    fn refresh_for_unknown_kid(&self, _kid: &str) -> Option<Arc<JwkSet>> {
        None
    }
}

/// The JWKS file source: re-read when its mtime or size changes.
struct JwksFile {
    path: PathBuf,
    cache: Mutex<Option<(JwksStamp, Arc<JwkSet>)>>,
}

/// The JWKS file's modification time and length, to notice a change.
type JwksStamp = (SystemTime, u64);

impl KeySource for JwksFile {
    fn keys(&self) -> Result<Arc<JwkSet>, OAuthError> {
        let path = &self.path;
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

/// Validates bearer tokens. Cheap to share (`Arc`), blocking (reads the
/// JWKS file when it changed, or asks its [`KeySource`]).
pub struct OAuthValidator {
    config: OAuthConfig,
    keys: Option<Arc<dyn KeySource>>,
}

impl fmt::Debug for OAuthValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthValidator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OAuthValidator {
    /// A validator for `config`, with the keys from its `jwks_file` (none
    /// without one). The JWKS is loaded on first use; call
    /// [`check_jwks`](Self::check_jwks) at startup to fail early.
    #[must_use]
    pub fn new(config: OAuthConfig) -> Self {
        let keys = config.jwks_file.clone().map(|path| {
            Arc::new(JwksFile {
                path,
                cache: Mutex::new(None),
            }) as Arc<dyn KeySource>
        });
        Self { config, keys }
    }

    /// A validator for `config` taking its keys from `keys` (the
    /// configured `jwks_file` is not used).
    #[must_use]
    pub fn with_key_source(config: OAuthConfig, keys: Arc<dyn KeySource>) -> Self {
        Self {
            config,
            keys: Some(keys),
        }
    }

    /// Whether JWTs can be checked here (a key source is set).
    #[must_use]
    pub fn has_keys(&self) -> bool {
        self.keys.is_some()
    }

    /// Loads the JWKS now and returns how many usable keys it has.
    ///
    /// # Errors
    /// [`OAuthError::Jwks`] when unreadable, not JSON, or without usable
    /// keys; [`OAuthError::Temporary`] without a key source.
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
        self.user_of(users, requested_user, &claims)
    }

    /// Checks an RFC 7662 introspection answer for an opaque token (the
    /// caller asked the configured endpoint over verified TLS) and, when
    /// it is valid for `requested_user` (or whoever it names, if `None`),
    /// returns the proof of login.
    ///
    /// Rules: `active` must be the boolean `true`; `exp`, when present,
    /// in the future; `aud` must contain the configured audience (a token
    /// issued for another service is not for us); `iss`, when present,
    /// must equal the configured issuer (RFC 7662 makes it optional, and
    /// the answer comes from the configured endpoint); the configured
    /// scope; then the same user mapping as for a JWT
    /// ([`username_claim`](OAuthConfig::username_claim)).
    ///
    /// # Errors
    /// An [`OAuthError`] saying which check failed.
    pub fn authenticate_introspected(
        &self,
        users: &UserDb,
        requested_user: Option<&str>,
        answer: &serde_json::Map<String, serde_json::Value>,
        now: SystemTime,
    ) -> Result<Authenticated, OAuthError> {
        if answer.get("active") != Some(&serde_json::Value::Bool(true)) {
            return Err(OAuthError::Inactive);
        }
        let now = unix_secs(now);
        let leeway = self.config.leeway.as_secs();
        if let Some(exp) = answer.get("exp") {
            let exp = exp.as_u64().ok_or(OAuthError::Expired)?;
            if exp.saturating_add(leeway) <= now {
                return Err(OAuthError::Expired);
            }
        }
        if let Some(nbf) = answer.get("nbf").and_then(serde_json::Value::as_u64)
            && nbf > now.saturating_add(leeway)
        {
            return Err(OAuthError::Expired);
        }
        if let Some(iss) = answer.get("iss")
            && iss.as_str() != Some(self.config.issuer.as_str())
        {
            return Err(OAuthError::Issuer);
        }
        self.check_audience_and_scope(answer)?;
        self.user_of(users, requested_user, answer)
    }

    /// `aud` contains the configured audience, and the scope is there
    /// when one is required.
    fn check_audience_and_scope(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), OAuthError> {
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
        if let Some(wanted) = &self.config.required_scope {
            // RFC 7662 §2.2 and RFC 9068 §2.2.3: `scope` is a
            // space-separated string; Microsoft and Okta use `scp`, a
            // string or an array.
            let has = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.split(' ').any(|x| x == wanted),
                serde_json::Value::Array(list) => {
                    list.iter().any(|x| x.as_str() == Some(wanted.as_str()))
                }
                _ => false,
            };
            if !claims.get("scope").is_some_and(has) && !claims.get("scp").is_some_and(has) {
                return Err(OAuthError::Scope);
            }
        }
        Ok(())
    }

    /// The mail user that validated `claims` name, if it exists and is
    /// the one the client asked for.
    fn user_of(
        &self,
        users: &UserDb,
        requested_user: Option<&str>,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Authenticated, OAuthError> {
        let user = self.identity(users, claims)?;
        if requested_user.is_some_and(|r| r != user) {
            return Err(OAuthError::User);
        }
        match users.exists(&user) {
            Ok(true) => {
                // Minting site: a validated token (JWT or introspection
                // answer) names this existing user.
                #[allow(clippy::disallowed_methods)]
                let proof = Authenticated::vouched_by_auth(&user, Credential::BearerToken);
                Ok(proof)
            }
            Ok(false) => Err(OAuthError::User),
            Err(e) => Err(OAuthError::Temporary(e.to_string())),
        }
    }

    /// The user name the validated `claims` identify (see the module docs).
    fn identity(
        &self,
        users: &UserDb,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, OAuthError> {
        let claim = self.config.username_claim.as_str();
        let value = claims
            .get(claim)
            .and_then(|v| v.as_str())
            .ok_or(OAuthError::User)?;
        match claim {
            "sub" => users
                .user_for_oauth_subject(value)
                .map_err(|e| OAuthError::Temporary(e.to_string()))?
                .ok_or_else(|| OAuthError::UnmappedSubject(value.chars().take(256).collect())),
            "email" => match claims.get("email_verified") {
                // Only the boolean: a string "true" is not what OpenID
                // Connect Core §5.1 defines, and guessing is not safe here.
                Some(serde_json::Value::Bool(true)) => Ok(value.to_owned()),
                _ => Err(OAuthError::EmailNotVerified),
            },
            _ => Ok(value.to_owned()),
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
        if !matches!(alg, "RS256" | "ES256") {
            return Err(OAuthError::Algorithm(alg.to_owned()));
        }
        let mut keys = self.keys()?;
        if !kid.is_empty()
            && !keys.contains_kid(kid)
            && let Some(source) = &self.keys
            && let Some(newer) = source.refresh_for_unknown_kid(kid)
        {
            keys = newer;
        }
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
        let now = unix_secs(now);
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
        self.check_audience_and_scope(&claims)?;
        Ok(claims)
    }

    fn keys(&self) -> Result<Arc<JwkSet>, OAuthError> {
        match &self.keys {
            Some(source) => source.keys(),
            None => Err(OAuthError::Temporary(
                "no JWKS configured for JWT bearer tokens".into(),
            )),
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Whether `token` has the shape of a JWT (RFC 7519 §7.2): three
/// base64url parts whose first decodes to a JSON object with an `alg`.
/// Used to route a bearer token: a JWT is checked against the JWKS, any
/// other (opaque) token goes to introspection.
#[must_use]
pub fn looks_like_jwt(token: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(token) else {
        return false;
    };
    let mut parts = text.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    decode_json::<serde_json::Value>(h)
        .is_ok_and(|v| v.get("alg").is_some_and(serde_json::Value::is_string))
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, OAuthError> {
    let bytes = B64URL
        .decode(part)
        .map_err(|_| OAuthError::Malformed("part is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| OAuthError::Malformed("part is not JSON"))
}

fn parse_jwks(text: &[u8]) -> Result<JwkSet, &'static str> {
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|_| "not JSON")?;
    let list = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array")?;
    let field = |k: &serde_json::Value, name: &str| -> Option<Vec<u8>> {
        B64URL.decode(k.get(name)?.as_str()?).ok()
    };
    let mut set = JwkSet::default();
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

    /// An ES256 key, its JWKS file and a passwd-file, for end-to-end
    /// token checks.
    struct Idp {
        key: signature::EcdsaKeyPair,
        dir: tempfile::TempDir,
    }

    const ISS: &str = "https://idp.example";
    const AUD: &str = "pop.example";

    impl Idp {
        fn new(passwd: &str) -> Idp {
            let rng = ring::rand::SystemRandom::new();
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            let key = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
            let point = signature::KeyPair::public_key(&key).as_ref().to_vec();
            let dir = tempfile::tempdir().unwrap();
            let jwks = serde_json::json!({"keys": [{
                "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
                "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65]),
            }]});
            std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
            std::fs::write(dir.path().join("passwd"), passwd).unwrap();
            Idp { key, dir }
        }

        fn validator(&self, username_claim: &str) -> OAuthValidator {
            OAuthValidator::new(OAuthConfig {
                jwks_file: Some(self.dir.path().join("jwks.json")),
                issuer: ISS.into(),
                audience: AUD.into(),
                username_claim: username_claim.into(),
                leeway: Duration::from_secs(60),
                required_scope: None,
            })
        }

        fn users(&self) -> UserDb {
            UserDb::open(self.dir.path().join("passwd"))
        }

        /// A signed token with the registered claims plus `extra`.
        fn token(&self, extra: serde_json::Value) -> Secret {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let mut claims = serde_json::json!({"iss": ISS, "aud": AUD, "exp": now + 300});
            for (k, v) in extra.as_object().unwrap() {
                claims[k] = v.clone();
            }
            let header = serde_json::json!({"alg": "ES256", "kid": "k1"});
            let signed = format!(
                "{}.{}",
                B64URL.encode(header.to_string()),
                B64URL.encode(claims.to_string())
            );
            let rng = ring::rand::SystemRandom::new();
            let sig = self.key.sign(&rng, signed.as_bytes()).unwrap();
            Secret::from(format!("{signed}.{}", B64URL.encode(sig.as_ref())).as_str())
        }

        fn login(&self, claim: &str, requested: Option<&str>, extra: serde_json::Value) -> Result<String, String> {
            self.validator(claim)
                .authenticate(&self.users(), requested, &self.token(extra), SystemTime::now())
                .map(|a| a.user().to_owned())
                .map_err(|e| e.to_string())
        }
    }

    /// Issue 17, finding 7 ("nOAuth"): with an identity provider where users
    /// set their own address, an `email` claim proves nothing unless the
    /// provider says it verified it.
    #[test]
    fn the_email_claim_counts_only_when_the_provider_verified_it() {
        let idp = Idp::new("alice:{PLAIN}x\n");
        let refused = [
            serde_json::json!({"email": "alice"}),
            serde_json::json!({"email": "alice", "email_verified": false}),
            serde_json::json!({"email": "alice", "email_verified": "false"}),
            serde_json::json!({"email": "alice", "email_verified": null}),
        ];
        for claims in refused {
            assert!(idp.login("email", Some("alice"), claims.clone()).is_err(), "{claims}");
            assert!(idp.login("email", None, claims.clone()).is_err(), "{claims}");
        }
        let verified = serde_json::json!({"email": "alice", "email_verified": true});
        assert_eq!(idp.login("email", Some("alice"), verified.clone()), Ok("alice".into()));
        assert_eq!(idp.login("email", None, verified), Ok("alice".into()));
    }

    /// The default identity is `sub`, which the provider assigns and never
    /// reassigns (OIDC Core §2), mapped to a mail user by an `oauth_sub=`
    /// token in the passwd-file line's extra field. Mail-looking claims the
    /// user can edit do not matter, and a `sub` that happens to equal a user
    /// name logs in as no one.
    #[test]
    fn the_default_identity_is_sub_mapped_through_the_passwd_file() {
        let idp = Idp::new(
            "alice:{PLAIN}x::::::oauth_sub=248289761001\n\
             bob:{PLAIN}y::::::scram=ignored oauth_sub=auth0|5f1c\n\
             carol:{PLAIN}z\n",
        );
        let claim = OAuthConfig::DEFAULT_USERNAME_CLAIM;
        assert_eq!(claim, "sub");
        let alice = serde_json::json!({"sub": "248289761001", "email": "bob", "email_verified": true});
        assert_eq!(idp.login(claim, None, alice.clone()), Ok("alice".into()));
        assert_eq!(idp.login(claim, Some("alice"), alice.clone()), Ok("alice".into()));
        assert!(idp.login(claim, Some("bob"), alice).is_err(), "the client may not pick another user");
        assert_eq!(idp.login(claim, Some("bob"), serde_json::json!({"sub": "auth0|5f1c"})), Ok("bob".into()));
        for sub in ["carol", "alice", "unknown", "24828976100", ""] {
            assert!(idp.login(claim, None, serde_json::json!({"sub": sub})).is_err(), "sub {sub:?} maps to no one");
        }
        assert!(idp.login(claim, None, serde_json::json!({"sub": 248289761001u64})).is_err(), "sub is a string");
        assert!(idp.login(claim, None, serde_json::json!({"email": "alice", "email_verified": true})).is_err());
    }

    /// A token's proof says it was a bearer token, not the password: the
    /// login history labels it `oauth`, and `require_app_passwords` (which
    /// refuses `Credential::Password`) lets it through.
    #[test]
    fn a_bearer_token_proof_names_its_credential() {
        let idp = Idp::new("alice:{PLAIN}x::::::oauth_sub=s-1\n");
        let jwt = idp.validator("sub").authenticate(
            &idp.users(),
            Some("alice"),
            &idp.token(serde_json::json!({"sub": "s-1"})),
            SystemTime::now(),
        );
        let proof = jwt.unwrap();
        assert_eq!(proof.user(), "alice");
        assert_eq!(proof.credential(), &Credential::BearerToken);
        assert_eq!(proof.credential().label(), "oauth");
        let exp = unix_secs(SystemTime::now()) + 300;
        let answer = serde_json::json!({"active": true, "sub": "s-1", "aud": AUD, "exp": exp});
        let introspected = idp.validator("sub").authenticate_introspected(
            &idp.users(),
            None,
            answer.as_object().unwrap(),
            SystemTime::now(),
        );
        assert_eq!(introspected.unwrap().credential(), &Credential::BearerToken);
    }

    /// RFC 7662 answers go through the same checks and user mapping as a
    /// JWT's claims.
    #[test]
    fn introspection_answers_are_checked_like_claims() {
        let idp = Idp::new("alice:{PLAIN}x::::::oauth_sub=s-1\n");
        let mut config = idp.validator("sub").config;
        config.required_scope = Some("pop3".into());
        let v = OAuthValidator::new(config);
        let now = SystemTime::now();
        let exp = unix_secs(now) + 300;
        let ok = serde_json::json!({"active": true, "sub": "s-1", "aud": ["x", AUD], "iss": ISS,
                                     "exp": exp, "scope": "openid pop3"});
        let check = |answer: serde_json::Value, user: Option<&str>| {
            v.authenticate_introspected(&idp.users(), user, answer.as_object().unwrap(), now)
                .map(|a| a.user().to_owned())
        };
        assert_eq!(check(ok.clone(), Some("alice")).unwrap(), "alice");
        assert_eq!(check(ok.clone(), None).unwrap(), "alice");
        let with = |k: &str, val: serde_json::Value| {
            let mut a = ok.clone();
            a[k] = val;
            a
        };
        let without = |k: &str| {
            let mut a = ok.clone();
            a.as_object_mut().unwrap().remove(k);
            a
        };
        assert!(matches!(
            check(with("active", false.into()), None),
            Err(OAuthError::Inactive)
        ));
        assert!(matches!(
            check(with("active", "true".into()), None),
            Err(OAuthError::Inactive)
        ));
        assert!(matches!(
            check(without("active"), None),
            Err(OAuthError::Inactive)
        ));
        assert!(matches!(
            check(with("exp", (exp - 600).into()), None),
            Err(OAuthError::Expired)
        ));
        assert!(matches!(
            check(with("aud", "imap.example".into()), None),
            Err(OAuthError::Audience)
        ));
        assert!(matches!(
            check(without("aud"), None),
            Err(OAuthError::Audience)
        ));
        assert!(matches!(
            check(with("iss", "https://evil".into()), None),
            Err(OAuthError::Issuer)
        ));
        assert!(
            check(without("iss"), None).is_ok(),
            "iss is optional in RFC 7662 answers"
        );
        assert!(
            check(without("exp"), None).is_ok(),
            "exp is optional in RFC 7662 answers"
        );
        assert!(matches!(
            check(with("scope", "openid pop3x".into()), None),
            Err(OAuthError::Scope)
        ));
        let mut scp = without("scope");
        scp["scp"] = serde_json::json!(["openid", "pop3"]);
        assert!(check(scp, None).is_ok(), "Microsoft/Okta `scp` array");
        assert!(matches!(
            check(with("sub", "alice".into()), None),
            Err(OAuthError::UnmappedSubject(_))
        ));
        assert!(matches!(check(ok, Some("bob")), Err(OAuthError::User)));
    }

    /// The scope requirement applies to JWTs too.
    #[test]
    fn required_scope_applies_to_jwts() {
        let idp = Idp::new("alice:{PLAIN}x\n");
        let mut config = idp.validator("email").config;
        config.required_scope = Some("pop3".into());
        let v = OAuthValidator::new(config);
        let claims = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"email": "alice", "email_verified": true});
            for (k, x) in extra.as_object().unwrap() {
                c[k] = x.clone();
            }
            idp.token(c)
        };
        let login = |t: &Secret| v.authenticate(&idp.users(), None, t, SystemTime::now());
        assert!(login(&claims(serde_json::json!({"scope": "pop3 openid"}))).is_ok());
        assert!(login(&claims(serde_json::json!({"scp": "pop3"}))).is_ok());
        assert!(matches!(
            login(&claims(serde_json::json!({}))),
            Err(OAuthError::Scope)
        ));
        assert!(matches!(
            login(&claims(serde_json::json!({"scope": "imap"}))),
            Err(OAuthError::Scope)
        ));
    }

    #[test]
    fn jwt_shape_decides_the_route() {
        let idp = Idp::new("");
        assert!(looks_like_jwt(idp.token(serde_json::json!({})).as_bytes()));
        assert!(!looks_like_jwt(b"ya29.a0AfH6SMB"));
        assert!(!looks_like_jwt(b"2YotnFZFEjr1zCsicMWpAA"));
        assert!(
            !looks_like_jwt(b"a.b.c"),
            "parts that are not a JSON header"
        );
        assert!(!looks_like_jwt(b"e30.e30.x"), "a header without alg");
    }

    /// A key source that can find newer keys is asked on a `kid` miss,
    /// and only then.
    #[test]
    fn unknown_kid_asks_the_source_for_newer_keys() {
        struct Rotating {
            old: Arc<JwkSet>,
            new: Arc<JwkSet>,
            asked: Mutex<Vec<String>>,
        }
        impl KeySource for Rotating {
            fn keys(&self) -> Result<Arc<JwkSet>, OAuthError> {
                Ok(self.old.clone())
            }
            fn refresh_for_unknown_kid(&self, kid: &str) -> Option<Arc<JwkSet>> {
                self.asked.lock().unwrap().push(kid.to_owned());
                Some(self.new.clone())
            }
        }
        let idp = Idp::new("alice:{PLAIN}x\n");
        let published = std::fs::read(idp.dir.path().join("jwks.json")).unwrap();
        let other = br#"{"keys":[{"kty":"RSA","kid":"old","n":"AQAB","e":"AQAB"}]}"#;
        let source = Arc::new(Rotating {
            old: Arc::new(JwkSet::parse(other).unwrap()),
            new: Arc::new(JwkSet::parse(&published).unwrap()),
            asked: Mutex::default(),
        });
        let v = OAuthValidator::with_key_source(idp.validator("email").config, source.clone());
        let token = idp.token(serde_json::json!({"email": "alice", "email_verified": true}));
        assert_eq!(
            v.authenticate(&idp.users(), None, &token, SystemTime::now())
                .unwrap()
                .user(),
            "alice"
        );
        assert_eq!(*source.asked.lock().unwrap(), ["k1"]);
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys() {
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#).is_err());
        let set = parse_jwks(br#"{"keys":[{"kty":"oct","k":"AAAA"},{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}"#).unwrap();
        assert_eq!(set.keys.len(), 1);
    }
}
