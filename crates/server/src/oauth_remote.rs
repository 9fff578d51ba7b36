//! OAuth bearer tokens with the identity provider on the network: the JWKS
//! fetched from an HTTPS URL (cached, refreshed, rotated), and RFC 7662
//! introspection for opaque tokens. The token checks themselves (signature,
//! claims, which user a token names) stay in `pobox_auth::oauth`; this
//! module only brings keys and introspection answers to it.
//!
//! # Routing
//!
//! A token shaped like a JWT (three base64url parts, a JSON header with
//! `alg`) is checked against the JWKS when one is configured (file or
//! URL); any other token, and every token when only introspection is
//! configured, is introspected. A JWT refused by the JWKS is not retried by
//! introspection: one path per token, so a refusal has one reason.
//!
//! # The JWKS URL
//!
//! - Fetched at startup (in the background: an unreachable provider does not
//!   stop the server), then again when `Cache-Control: max-age` says (bounded
//!   to 5 min..24 h) or else every `jwks_refresh_secs`. A failed refresh
//!   keeps the last good key set and is retried after a minute.
//! - A token whose `kid` is not in the set makes a fetch at once (the
//!   provider rotated), at most once per [`KID_MISS_INTERVAL`], so a flood of
//!   made-up `kid`s cannot make pobox hammer the provider.
//! - With no key set at all (never fetched), a login tries a fetch, at most
//!   once per [`NO_KEYS_RETRY`], and otherwise gets a temporary error
//!   (`-ERR [SYS/TEMP]`), never an authentication failure.
//! - The last good JWKS is written to the data dir (`oauth-jwks.json`,
//!   with the URL it came from), so a restart while the provider is down
//!   still has keys.
//!
//! # Trust
//!
//! HTTPS only (plain `http://` only to a loopback address), the server
//! certificate verified against Mozilla's roots, or only against `ca_file`
//! when one is configured; answers are bounded ([`MAX_RESPONSE`]) and every
//! request times out ([`HTTP_TIMEOUT`]). Calls are blocking and run on the
//! blocking pool: a slow provider delays only the logins that need it.
//! Tokens and the client secret are never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use pobox_auth::oauth::{
    JwkSet, KeySource, OAuthConfig, OAuthError, OAuthValidator, looks_like_jwt,
};
use pobox_auth::{Authenticated, Secret, UserDb};
use sha2::Digest as _;
use tracing::{info, warn};

/// Largest JWKS or introspection answer read.
pub const MAX_RESPONSE: u64 = 1024 * 1024;
/// Each request to the provider, connect to last byte.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds for the refresh interval (configured or from `max-age`).
pub const REFRESH_MIN: Duration = Duration::from_secs(300);
/// See [`REFRESH_MIN`].
pub const REFRESH_MAX: Duration = Duration::from_secs(24 * 3600);
/// `jwks_refresh_secs` when not configured.
pub const REFRESH_DEFAULT: Duration = Duration::from_secs(3600);
/// At most one fetch per this interval for unknown `kid`s.
pub const KID_MISS_INTERVAL: Duration = Duration::from_secs(30);
/// Without any key set, at most one fetch attempt per this interval.
pub const NO_KEYS_RETRY: Duration = Duration::from_secs(5);
/// After a failed scheduled refresh, the next try.
const FAILED_REFRESH_RETRY: Duration = Duration::from_secs(60);
/// Longest time an introspection answer is reused.
pub const INTROSPECTION_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most cached introspection answers (then the expired ones go, or all).
const INTROSPECTION_CACHE_MAX: usize = 10_000;
/// The JWKS saved in the data dir.
pub const JWKS_CACHE_FILE: &str = "oauth-jwks.json";

/// The networked parts of `[oauth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// The provider's JWKS URL (instead of `jwks_file`).
    pub jwks_url: Option<String>,
    /// PEM CA certificates that alone are trusted for the provider's
    /// endpoints; `None`: Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    /// Refresh interval when the JWKS answer has no `max-age`.
    pub jwks_refresh: Duration,
    /// Where the last good JWKS is kept across restarts; `None`: nowhere.
    pub jwks_cache_file: Option<PathBuf>,
    /// RFC 7662 introspection of opaque tokens.
    pub introspection: Option<IntrospectionConfig>,
}

/// RFC 7662 introspection endpoint and pobox's client credentials there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrospectionConfig {
    /// The endpoint URL.
    pub url: String,
    /// pobox's `client_id` at the provider.
    pub client_id: String,
    /// File holding the client secret (read at each use, so it can be
    /// rotated without a restart; a trailing newline is ignored).
    pub secret_file: PathBuf,
}

/// An endpoint URL pobox may call: `https://host...`, or `http://` to a
/// loopback host (a provider on the same machine, and tests).
///
/// # Errors
/// A sentence saying what is wrong.
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    if let Some(rest) = url.strip_prefix("https://") {
        if host_of(rest).is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        return Ok(());
    }
    if let Some(rest) = url.strip_prefix("http://") {
        if is_loopback_host(host_of(rest)) {
            return Ok(());
        }
        return Err(format!(
            "{url:?}: the identity provider must be reached over https:// (http:// only to 127.0.0.1, [::1] or localhost)"
        ));
    }
    Err(format!("{url:?} is not an https:// URL"))
}

/// The host of `host[:port]/path...` (brackets of an IPv6 literal removed).
fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_loopback_url(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(_, rest)| is_loopback_host(host_of(rest)))
}

/// `scheme://host[:port]` of a URL, for messages (never path or query).
fn endpoint_name(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    format!(
        "{scheme}://{}",
        rest.split(['/', '?', '#']).next().unwrap_or("")
    )
}

/// `max-age` from a `Cache-Control` value, within the refresh bounds.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|d| {
        let (name, value) = d.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        let secs: u64 = value.trim().trim_matches('"').parse().ok()?;
        Some(Duration::from_secs(secs).clamp(REFRESH_MIN, REFRESH_MAX))
    })
}

/// An HTTP agent for `url`: TLS verified (only `ca_file`'s roots when
/// given), no proxy for loopback, bounded time, no redirects (an
/// endpoint is configured as what it is).
fn agent(url: &str, ca_file: Option<&Path>) -> Result<ureq::Agent, String> {
    let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(format!(
                "ca_file {}: no PEM certificate in it",
                path.display()
            ));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::from(certs));
    }
    let loopback = is_loopback_url(url);
    Ok(ureq::Agent::config_builder()
        .tls_config(tls.build())
        .timeout_global(Some(HTTP_TIMEOUT))
        .http_status_as_error(false)
        .https_only(!loopback)
        .max_redirects(0)
        .proxy(if loopback {
            None
        } else {
            ureq::Proxy::try_from_env()
        })
        .user_agent(concat!("pobox/", env!("CARGO_PKG_VERSION")))
        .build()
        .into())
}

fn http_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(_) => format!("no answer within {} s", HTTP_TIMEOUT.as_secs()),
        other => other.to_string(),
    }
}

/// The JWKS from a URL: the current set, and when and why to fetch again.
pub struct RemoteJwks {
    url: String,
    ca_file: Option<PathBuf>,
    refresh: Duration,
    cache_file: Option<PathBuf>,
    agent: Result<ureq::Agent, String>,
    state: Mutex<JwksState>,
    /// Held while fetching: one request at a time. Logins with a key set
    /// never take it.
    fetching: Mutex<()>,
}

#[derive(Default)]
struct JwksState {
    current: Option<Arc<JwkSet>>,
    /// When the scheduled refresh is due (`None`: now).
    next_refresh: Option<Instant>,
    /// The last fetch, successful or not, and the last for a `kid` miss.
    last_attempt: Option<Instant>,
    last_kid_miss: Option<Instant>,
    last_error: Option<String>,
    /// SHA-256 of the last JWKS document fetched.
    body_digest: Option<[u8; 32]>,
    /// Requests made (for `pobox check`, logs and tests).
    fetches: u64,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    fn new(url: &str, remote: &RemoteConfig) -> RemoteJwks {
        let jwks = RemoteJwks {
            url: url.to_owned(),
            ca_file: remote.ca_file.clone(),
            refresh: remote.jwks_refresh,
            cache_file: remote.jwks_cache_file.clone(),
            agent: agent(url, remote.ca_file.as_deref()),
            state: Mutex::default(),
            fetching: Mutex::new(()),
        };
        if let Some(set) = jwks.load_saved() {
            info!(url = %endpoint_name(url), keys = set.len(), "OAuth JWKS loaded from the data dir until the provider answers");
            jwks.state().current = Some(Arc::new(set));
        }
        jwks
    }

    fn same_source(&self, url: &str, remote: &RemoteConfig) -> bool {
        self.url == url
            && self.ca_file == remote.ca_file
            && self.refresh == remote.jwks_refresh
            && self.cache_file == remote.jwks_cache_file
    }

    fn state(&self) -> std::sync::MutexGuard<'_, JwksState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many requests have been made to the JWKS URL.
    #[must_use]
    pub fn fetches(&self) -> u64 {
        self.state().fetches
    }

    /// Time until the scheduled refresh.
    #[must_use]
    pub fn until_next_refresh(&self) -> Duration {
        self.state().next_refresh.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }

    /// The scheduled refresh, if due (blocking).
    pub fn refresh_if_due(&self) {
        let _one = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        if self.until_next_refresh().is_zero() {
            let _ = self.fetch();
        }
    }

    /// Fetches now (for `pobox check`), whatever the schedule.
    ///
    /// # Errors
    /// Why no key set could be had.
    pub fn fetch_now(&self) -> Result<Arc<JwkSet>, String> {
        let _one = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        self.fetch()
    }

    /// One request; the caller holds `fetching`. Success replaces the
    /// key set; failure keeps the last good one.
    fn fetch(&self) -> Result<Arc<JwkSet>, String> {
        {
            let mut st = self.state();
            st.last_attempt = Some(Instant::now());
            st.fetches += 1;
        }
        match self.get() {
            Ok((set, body, max_age)) => {
                let set = Arc::new(set);
                let interval = max_age.unwrap_or(self.refresh);
                let mut st = self.state();
                // Logged and saved when the document changed (a rotation,
                // or the first fetch), not at every scheduled refresh.
                let digest: [u8; 32] = sha2::Sha256::digest(&body).into();
                let changed = st.body_digest != Some(digest);
                st.body_digest = Some(digest);
                st.current = Some(set.clone());
                st.next_refresh = Some(Instant::now() + interval);
                st.last_error = None;
                drop(st);
                if changed {
                    info!(url = %endpoint_name(&self.url), keys = ?set, "OAuth JWKS fetched");
                    self.save(&body);
                }
                Ok(set)
            }
            Err(reason) => {
                let mut st = self.state();
                st.next_refresh = Some(Instant::now() + FAILED_REFRESH_RETRY);
                st.last_error = Some(reason.clone());
                let have = st.current.is_some();
                drop(st);
                warn!(url = %endpoint_name(&self.url), error = %reason, keeping_last_good = have, "OAuth JWKS fetch failed");
                Err(reason)
            }
        }
    }

    /// GET the JWKS: status 200, at most [`MAX_RESPONSE`], usable keys.
    fn get(&self) -> Result<(JwkSet, Vec<u8>, Option<Duration>), String> {
        let agent = self.agent.as_ref().map_err(Clone::clone)?;
        let mut response = agent
            .get(&self.url)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| http_error(&e))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!("HTTP status {status}"));
        }
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| http_error(&e))?;
        let set = JwkSet::parse(&body).map_err(|r| format!("not a usable JWKS: {r}"))?;
        Ok((set, body, max_age))
    }

    /// The saved JWKS, if it came from this URL.
    fn load_saved(&self) -> Option<JwkSet> {
        let text = std::fs::read(self.cache_file.as_ref()?).ok()?;
        let saved: serde_json::Value = serde_json::from_slice(&text).ok()?;
        if saved.get("url")?.as_str()? != self.url {
            return None;
        }
        JwkSet::parse(saved.get("jwks")?.to_string().as_bytes()).ok()
    }

    /// Keeps the JWKS for a restart while the provider is down. Failing to
    /// is logged, not fatal: the keys in memory work.
    fn save(&self, body: &[u8]) {
        let Some(path) = &self.cache_file else { return };
        let Ok(jwks) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let doc = serde_json::json!({"url": self.url, "jwks": jwks});
        let tmp = path.with_extension("json.new");
        let result = std::fs::write(&tmp, doc.to_string()).and_then(|()| {
            // Public keys in the data dir, not a Maildir: a plain
            // rename-into-place, so a reader sees the old or the new file.
            #[allow(clippy::disallowed_methods)]
            std::fs::rename(&tmp, path)
        });
        if let Err(e) = result {
            warn!(path = %path.display(), error = %e, "cannot save the OAuth JWKS for restarts");
        }
    }
}

impl KeySource for RemoteJwks {
    fn keys(&self) -> Result<Arc<JwkSet>, OAuthError> {
        if let Some(set) = &self.state().current {
            return Ok(set.clone());
        }
        let _one = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        let st = self.state();
        if let Some(set) = &st.current {
            // Fetched while this login waited for the lock.
            return Ok(set.clone());
        }
        let unavailable = |reason: &str| {
            OAuthError::Temporary(format!(
                "no OAuth JWKS yet from {}: {reason}",
                endpoint_name(&self.url)
            ))
        };
        if st.last_attempt.is_some_and(|t| t.elapsed() < NO_KEYS_RETRY) {
            return Err(unavailable(
                st.last_error.as_deref().unwrap_or("fetch in progress"),
            ));
        }
        drop(st);
        self.fetch().map_err(|r| unavailable(&r))
    }

    fn refresh_for_unknown_kid(&self, kid: &str) -> Option<Arc<JwkSet>> {
        let _one = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        let mut st = self.state();
        if let Some(set) = &st.current
            && set.contains_kid(kid)
        {
            return Some(set.clone());
        }
        if st
            .last_kid_miss
            .is_some_and(|t| t.elapsed() < KID_MISS_INTERVAL)
        {
            return None;
        }
        st.last_kid_miss = Some(Instant::now());
        drop(st);
        self.fetch().ok()
    }
}

/// An introspection answer (a JSON object).
type Answer = serde_json::Map<String, serde_json::Value>;

/// An RFC 7662 client with a short cache of positive answers.
struct Introspector {
    config: IntrospectionConfig,
    agent: Result<ureq::Agent, String>,
    /// SHA-256 of the token → (valid until, the answer).
    cache: Mutex<HashMap<[u8; 32], (Instant, Answer)>>,
}

impl Introspector {
    fn new(config: IntrospectionConfig, ca_file: Option<&Path>) -> Introspector {
        Introspector {
            agent: agent(&config.url, ca_file),
            config,
            cache: Mutex::default(),
        }
    }

    fn unavailable(&self, reason: &str) -> OAuthError {
        OAuthError::Temporary(format!(
            "token introspection at {}: {reason}",
            endpoint_name(&self.config.url)
        ))
    }

    fn secret(&self) -> Result<String, OAuthError> {
        let path = &self.config.secret_file;
        let text = std::fs::read_to_string(path).map_err(|e| {
            self.unavailable(&format!(
                "introspection_secret_file {}: {e}",
                path.display()
            ))
        })?;
        let secret = text.trim_end_matches(['\r', '\n']).to_owned();
        if secret.is_empty() {
            return Err(self.unavailable(&format!(
                "introspection_secret_file {} is empty",
                path.display()
            )));
        }
        Ok(secret)
    }

    /// The provider's answer for `token` (cached or asked now). An
    /// inactive token is an answer, not an error; the caller checks it.
    fn introspect(
        &self,
        token: &Secret,
        now: SystemTime,
    ) -> Result<serde_json::Map<String, serde_json::Value>, OAuthError> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((until, answer)) = cache.get(&key)
                && Instant::now() < *until
            {
                return Ok(answer.clone());
            }
        }
        let token_text = std::str::from_utf8(token.as_bytes())
            .map_err(|_| OAuthError::Malformed("not ASCII"))?;
        let agent = self.agent.as_ref().map_err(|e| self.unavailable(e))?;
        // RFC 7662 §2.1 with RFC 6749 §2.3.1: HTTP Basic with the
        // form-encoded client id and secret.
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(&self.config.client_id),
            form_encode(&self.secret()?)
        ));
        let mut response = agent
            .post(&self.config.url)
            .header("Authorization", format!("Basic {basic}"))
            .header("Accept", "application/json")
            .send_form([("token", token_text), ("token_type_hint", "access_token")])
            .map_err(|e| self.unavailable(&http_error(&e)))?;
        let status = response.status().as_u16();
        if status != 200 {
            // 401: pobox's client credentials are wrong. Not the user's
            // fault either way.
            return Err(self.unavailable(&format!("HTTP status {status}")));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| self.unavailable(&http_error(&e)))?;
        let Ok(serde_json::Value::Object(answer)) = serde_json::from_slice(&body) else {
            return Err(self.unavailable("the answer is not a JSON object"));
        };
        if answer.get("active") == Some(&serde_json::Value::Bool(true)) {
            let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            let left = answer
                .get("exp")
                .and_then(serde_json::Value::as_u64)
                .map_or(INTROSPECTION_CACHE_TTL, |exp| {
                    Duration::from_secs(exp.saturating_sub(now_secs))
                });
            let ttl = left.min(INTROSPECTION_CACHE_TTL);
            if !ttl.is_zero() {
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if cache.len() >= INTROSPECTION_CACHE_MAX {
                    let t = Instant::now();
                    cache.retain(|_, (until, _)| *until > t);
                    if cache.len() >= INTROSPECTION_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(key, (Instant::now() + ttl, answer.clone()));
            }
        }
        Ok(answer)
    }
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Bearer-token login for POP3: the JWT validator (keys from a file or the
/// URL) and introspection, routed as the module docs say.
pub struct BearerAuth {
    validator: OAuthValidator,
    jwks: Option<Arc<RemoteJwks>>,
    introspection: Option<Introspector>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth")
            .field("validator", &self.validator)
            .field("jwks", &self.jwks)
            .finish_non_exhaustive()
    }
}

impl BearerAuth {
    /// Builds the token checks for `oauth` and `remote`, for one look
    /// (`pobox check`, startup checks): no background refresh.
    #[must_use]
    pub fn new(oauth: &OAuthConfig, remote: Option<&RemoteConfig>) -> BearerAuth {
        Self::build(oauth, remote, None).0
    }

    /// Builds the token checks a server generation uses. A `previous`
    /// generation's fetched JWKS is kept when the URL settings are the
    /// same (a reload does not refetch); a new JWKS URL gets a background
    /// refresher when called inside a tokio runtime (without one, keys are
    /// fetched on first use).
    #[must_use]
    pub fn for_service(
        oauth: &OAuthConfig,
        remote: Option<&RemoteConfig>,
        previous: Option<&BearerAuth>,
    ) -> BearerAuth {
        let (bearer, new_source) = Self::build(oauth, remote, previous);
        if new_source && let Some(j) = &bearer.jwks {
            spawn_refresher(j);
        }
        bearer
    }

    /// The checks, and whether the JWKS URL source is a new one.
    fn build(
        oauth: &OAuthConfig,
        remote: Option<&RemoteConfig>,
        previous: Option<&BearerAuth>,
    ) -> (BearerAuth, bool) {
        let mut jwks = None;
        let mut new_source = false;
        if let Some(remote) = remote
            && let Some(url) = &remote.jwks_url
        {
            let kept = previous
                .and_then(|p| p.jwks.as_ref())
                .filter(|j| j.same_source(url, remote));
            new_source = kept.is_none();
            jwks = Some(match kept {
                Some(j) => j.clone(),
                None => Arc::new(RemoteJwks::new(url, remote)),
            });
        }
        let validator = match &jwks {
            Some(j) => OAuthValidator::with_key_source(oauth.clone(), j.clone()),
            None => OAuthValidator::new(oauth.clone()),
        };
        let introspection = remote.and_then(|r| {
            r.introspection
                .clone()
                .map(|i| Introspector::new(i, r.ca_file.as_deref()))
        });
        (
            BearerAuth {
                validator,
                jwks,
                introspection,
            },
            new_source,
        )
    }

    /// The JWKS URL source, when configured.
    #[must_use]
    pub fn remote_jwks(&self) -> Option<&Arc<RemoteJwks>> {
        self.jwks.as_ref()
    }

    /// Checks `token` (blocking: may fetch keys or ask the introspection
    /// endpoint) and returns the proof of login.
    ///
    /// # Errors
    /// An [`OAuthError`]; [`OAuthError::is_temporary`] ones are the
    /// server's or the provider's problem.
    pub fn authenticate(
        &self,
        users: &UserDb,
        requested_user: Option<&str>,
        token: &Secret,
        now: SystemTime,
    ) -> Result<Authenticated, OAuthError> {
        match &self.introspection {
            Some(i) if !(self.validator.has_keys() && looks_like_jwt(token.as_bytes())) => {
                let answer = i.introspect(token, now)?;
                self.validator
                    .authenticate_introspected(users, requested_user, &answer, now)
            }
            _ => self
                .validator
                .authenticate(users, requested_user, token, now),
        }
    }

    /// Startup checks that need no network: the JWKS file loads, the
    /// `ca_file` and the introspection secret are readable. The JWKS URL
    /// is fetched in the background, so an unreachable provider does not
    /// stop the server.
    ///
    /// # Errors
    /// What is wrong.
    pub fn check_local(&self) -> Result<(), String> {
        if self.jwks.is_none() && self.validator.has_keys() {
            self.validator.check_jwks().map_err(|e| e.to_string())?;
        }
        if let Some(j) = &self.jwks {
            j.agent.as_ref().map_err(Clone::clone)?;
        }
        if let Some(i) = &self.introspection {
            i.agent.as_ref().map_err(Clone::clone)?;
            i.secret().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// What `pobox check` reports: the local checks, then one JWKS fetch.
    ///
    /// # Errors
    /// What is wrong.
    pub fn check_all(&self) -> Result<Vec<String>, String> {
        self.check_local()?;
        let mut lines = Vec::new();
        if let Some(j) = &self.jwks {
            let set = j.fetch_now().map_err(|e| format!("JWKS {}: {e}", j.url))?;
            lines.push(format!("JWKS {} has {} usable key(s)", j.url, set.len()));
        } else if self.validator.has_keys() {
            lines.push(format!(
                "JWKS file has {} usable key(s)",
                self.validator.check_jwks().map_err(|e| e.to_string())?
            ));
        }
        if let Some(i) = &self.introspection {
            lines.push(format!(
                "introspection at {} as client {:?}, secret file readable",
                i.config.url, i.config.client_id
            ));
        }
        Ok(lines)
    }
}

/// The scheduled refresh: a task that lives as long as the JWKS source.
fn spawn_refresher(jwks: &Arc<RemoteJwks>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(jwks);
    runtime.spawn(async move {
        while let Some(wait) = weak.upgrade().map(|j| j.until_next_refresh()) {
            tokio::time::sleep(wait).await;
            let Some(j) = weak.upgrade() else { break };
            if tokio::task::spawn_blocking(move || j.refresh_if_due()).await.is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        assert!(check_endpoint_url("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(check_endpoint_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_endpoint_url("http://[::1]/jwks").is_ok());
        assert!(check_endpoint_url("http://localhost:1/x").is_ok());
        assert!(check_endpoint_url("http://idp.example/jwks").is_err());
        assert!(check_endpoint_url("http://127.0.0.1.evil.example/jwks").is_err());
        assert!(check_endpoint_url("http://localhost@evil.example/").is_err());
        assert!(check_endpoint_url("https://").is_err());
        assert!(check_endpoint_url("ftp://idp.example/").is_err());
        assert!(check_endpoint_url("idp.example").is_err());
        assert_eq!(
            endpoint_name("https://idp.example:8443/a/b?c=d"),
            "https://idp.example:8443"
        );
    }

    #[test]
    fn cache_control_max_age_is_bounded() {
        assert_eq!(
            max_age("public, max-age=7200"),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(max_age("max-age=5"), Some(REFRESH_MIN));
        assert_eq!(max_age("Max-Age=9999999"), Some(REFRESH_MAX));
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn form_encoding_for_basic_credentials() {
        assert_eq!(form_encode("pobox-client_1.x"), "pobox-client_1.x");
        assert_eq!(form_encode("a b:c%d/é"), "a+b%3Ac%25d%2F%C3%A9");
    }

    fn remote(url: &str, cache_file: Option<PathBuf>) -> RemoteConfig {
        RemoteConfig {
            jwks_url: Some(url.into()),
            ca_file: None,
            jwks_refresh: REFRESH_DEFAULT,
            jwks_cache_file: cache_file,
            introspection: None,
        }
    }

    fn oauth() -> OAuthConfig {
        OAuthConfig {
            jwks_file: None,
            issuer: "https://idp".into(),
            audience: "pop".into(),
            username_claim: "sub".into(),
            leeway: Duration::ZERO,
            required_scope: None,
        }
    }

    /// A reload with the same JWKS settings keeps the fetched keys (and
    /// the rate-limit state); changed settings start afresh.
    #[test]
    fn a_reload_keeps_the_jwks_source_when_its_settings_are_the_same() {
        let first = BearerAuth::new(&oauth(), Some(&remote("https://idp.example/jwks", None)));
        let same = BearerAuth::for_service(&oauth(), Some(&remote("https://idp.example/jwks", None)), Some(&first));
        assert!(Arc::ptr_eq(first.remote_jwks().unwrap(), same.remote_jwks().unwrap()));
        let other = BearerAuth::for_service(&oauth(), Some(&remote("https://idp2.example/jwks", None)), Some(&first));
        assert!(!Arc::ptr_eq(first.remote_jwks().unwrap(), other.remote_jwks().unwrap()));
    }

    /// The saved JWKS is used only for the URL it came from.
    #[test]
    fn the_saved_jwks_belongs_to_its_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(JWKS_CACHE_FILE);
        let jwks = r#"{"keys":[{"kty":"RSA","kid":"k1","n":"AQAB","e":"AQAB"}]}"#;
        let url = "https://idp.example/jwks";
        let j = RemoteJwks::new(url, &remote(url, Some(file.clone())));
        j.save(jwks.as_bytes());
        let again = RemoteJwks::new(url, &remote(url, Some(file.clone())));
        assert!(again.keys().unwrap().contains_kid("k1"), "loaded without a fetch");
        assert_eq!(again.fetches(), 0);
        let elsewhere = "http://127.0.0.1:9/jwks";
        let other = RemoteJwks::new(elsewhere, &remote(elsewhere, Some(file)));
        assert!(other.keys().unwrap_err().is_temporary(), "another provider's keys are not used");
    }

    #[test]
    fn no_key_set_is_a_temporary_error_and_retries_are_spaced() {
        // Port 9 on loopback: nothing listens, the connection is refused.
        let remote = RemoteConfig {
            jwks_url: Some("http://127.0.0.1:9/jwks".into()),
            ca_file: None,
            jwks_refresh: REFRESH_DEFAULT,
            jwks_cache_file: None,
            introspection: None,
        };
        let j = RemoteJwks::new("http://127.0.0.1:9/jwks", &remote);
        let e = j.keys().unwrap_err();
        assert!(e.is_temporary(), "{e}");
        assert_eq!(j.fetches(), 1);
        for _ in 0..20 {
            assert!(j.keys().unwrap_err().is_temporary());
        }
        assert_eq!(j.fetches(), 1, "at most one attempt per {NO_KEYS_RETRY:?}");
    }
}
