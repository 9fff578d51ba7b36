//! OAuth 2.0 built in: `pobox fetch login ACCOUNT` obtains a refresh token,
//! and every fetch turns it into a fresh access token for XOAUTH2 or
//! OAUTHBEARER.
//!
//! Flows: the device authorization grant (RFC 8628: the user types a short
//! code on any device; works on a headless server) and the authorization
//! code grant with PKCE (RFC 7636) and a loopback redirect (RFC 8252 §7.3:
//! `http://127.0.0.1:PORT/`, an ephemeral port, for providers whose device
//! flow does not grant mail scopes, such as Google).
//!
//! Storage: one JSON file per account, `<state_dir>/oauth/<account>.json`,
//! mode 0600 in a 0700 directory, replaced atomically (temp file, fsync,
//! rename, directory fsync). It holds the refresh token and the cached
//! access token with its expiry, plus the token endpoint and client id it
//! belongs to, so a changed configuration asks for a new login instead of
//! sending a refresh token to the wrong place. No system keyring: a daemon
//! started by systemd or cron usually has no unlocked keyring session, and
//! the file is what mpop/oama users keep in `pass` anyway.
//!
//! Refresh happens when the cached access token has less than
//! [`REFRESH_MARGIN`] left, under an exclusive `flock` on a sibling lock
//! file: providers that rotate refresh tokens (Microsoft) invalidate the old
//! one, so two processes refreshing at once could otherwise lose the newer.
//!
//! Endpoints must be `https://`; plain `http://` is accepted only for
//! loopback hosts (tests, local identity providers), where nothing crosses
//! a network.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::auth::Secret;

/// An access token with less than this left is refreshed before use, so it
/// cannot expire between the refresh and the end of a long download's
/// login (servers check it only at AUTH, but clocks drift).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Every HTTP exchange with the provider is bounded by this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest token-endpoint answer read (they are a few KiB).
const MAX_RESPONSE: u64 = 256 * 1024;

/// How long `login` waits for the user (device code or browser redirect)
/// when the provider does not say.
const LOGIN_WAIT: Duration = Duration::from_secs(15 * 60);

/// Which identity provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Outlook.com and Exchange Online (Microsoft identity platform v2).
    Microsoft,
    /// Gmail and Google Workspace.
    Google,
    /// Any other: endpoints given in the configuration.
    Custom,
}

/// How `pobox fetch login` obtains the first tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flow {
    /// RFC 8628 device authorization grant: a URL and a code to type.
    Device,
    /// Authorization code + PKCE with a loopback redirect (RFC 8252).
    Browser,
}

/// `[accounts.NAME.oauth]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOAuth {
    provider: Provider,
    client_id: String,
    client_secret: Option<String>,
    /// Microsoft only: `common` (default), `consumers`, `organizations` or
    /// a tenant id/domain.
    tenant: Option<String>,
    flow: Option<Flow>,
    scope: Option<String>,
    token_url: Option<String>,
    device_url: Option<String>,
    auth_url: Option<String>,
}

/// Validated OAuth settings of one account.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthSettings {
    /// The provider preset used.
    pub provider: Provider,
    /// The OAuth client (app registration) id.
    pub client_id: String,
    /// Sent when set (Google's "desktop app" clients have one; it is not
    /// secret in an installed app, RFC 8252 §8.5, but is still not logged).
    client_secret: Option<String>,
    /// The flow `login` uses.
    pub flow: Flow,
    /// Space-separated scopes requested.
    pub scope: String,
    /// Token endpoint.
    pub token_url: String,
    /// Device authorization endpoint, for [`Flow::Device`].
    pub device_url: Option<String>,
    /// Authorization endpoint, for [`Flow::Browser`].
    pub auth_url: Option<String>,
    /// Extra authorization-request parameters (Google needs
    /// `access_type=offline` to hand out a refresh token at all).
    pub extra_auth_params: Vec<(String, String)>,
    /// Where the tokens live (set from the state dir by the config loader).
    pub token_file: PathBuf,
}

impl std::fmt::Debug for OAuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthSettings")
            .field("provider", &self.provider)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "[redacted]"))
            .field("flow", &self.flow)
            .field("scope", &self.scope)
            .field("token_url", &self.token_url)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

const MICROSOFT_SCOPE: &str = "https://outlook.office.com/POP.AccessAsUser.All offline_access";
const GOOGLE_SCOPE: &str = "https://mail.google.com/";

impl RawOAuth {
    /// Applies the provider preset and checks the result. `token_file` is
    /// filled in by the caller, who knows the state dir.
    pub(crate) fn validate(self) -> Result<OAuthSettings, String> {
        if self.client_id.trim().is_empty() {
            return Err("oauth.client_id is empty: register an app with the provider and put its id here".into());
        }
        let (token_url, device_url, auth_url, scope, flow, extra) = match self.provider {
            Provider::Microsoft => {
                let tenant = self.tenant.unwrap_or_else(|| "common".into());
                if tenant.is_empty() || !tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
                    return Err(format!("oauth.tenant {tenant:?} is not a tenant name or id"));
                }
                let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
                (
                    self.token_url.unwrap_or_else(|| format!("{base}/token")),
                    Some(self.device_url.unwrap_or_else(|| format!("{base}/devicecode"))),
                    Some(self.auth_url.unwrap_or_else(|| format!("{base}/authorize"))),
                    self.scope.unwrap_or_else(|| MICROSOFT_SCOPE.into()),
                    self.flow.unwrap_or(Flow::Device),
                    Vec::new(),
                )
            }
            Provider::Google => {
                if self.tenant.is_some() {
                    return Err("oauth.tenant is for provider = \"microsoft\" only".into());
                }
                (
                    self.token_url.unwrap_or_else(|| "https://oauth2.googleapis.com/token".into()),
                    Some(self.device_url.unwrap_or_else(|| "https://oauth2.googleapis.com/device/code".into())),
                    Some(self.auth_url.unwrap_or_else(|| "https://accounts.google.com/o/oauth2/v2/auth".into())),
                    self.scope.unwrap_or_else(|| GOOGLE_SCOPE.into()),
                    // Google's device flow refuses the full mail scope.
                    self.flow.unwrap_or(Flow::Browser),
                    // Without these Google returns no refresh token on a
                    // second consent (getmail6 #145).
                    vec![("access_type".into(), "offline".into()), ("prompt".into(), "consent".into())],
                )
            }
            Provider::Custom => {
                if self.tenant.is_some() {
                    return Err("oauth.tenant is for provider = \"microsoft\" only".into());
                }
                let token_url = self.token_url.ok_or("provider = \"custom\" needs oauth.token_url")?;
                let flow = match (self.flow, &self.device_url, &self.auth_url) {
                    (Some(f), _, _) => f,
                    (None, Some(_), _) => Flow::Device,
                    (None, None, Some(_)) => Flow::Browser,
                    (None, None, None) => {
                        return Err("provider = \"custom\" needs oauth.device_url or oauth.auth_url".into());
                    }
                };
                (token_url, self.device_url, self.auth_url, self.scope.unwrap_or_default(), flow, Vec::new())
            }
        };
        for url in [Some(&token_url), device_url.as_ref(), auth_url.as_ref()].into_iter().flatten() {
            check_url(url)?;
        }
        match flow {
            Flow::Device if device_url.is_none() => return Err("oauth.flow = \"device\" needs oauth.device_url".into()),
            Flow::Browser if auth_url.is_none() => return Err("oauth.flow = \"browser\" needs oauth.auth_url".into()),
            _ => {}
        }
        Ok(OAuthSettings {
            provider: self.provider,
            client_id: self.client_id,
            client_secret: self.client_secret,
            flow,
            scope,
            token_url,
            device_url,
            auth_url,
            extra_auth_params: extra,
            token_file: PathBuf::new(),
        })
    }
}

/// `https://` anywhere; `http://` only to a loopback host.
fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") && url.len() > 8 {
        return Ok(());
    }
    if let Some(rest) = url.strip_prefix("http://") {
        if is_loopback_authority(rest) {
            return Ok(());
        }
        return Err(format!("{url}: OAuth endpoints must use https:// (http:// only for 127.0.0.1, [::1] or localhost)"));
    }
    Err(format!("{url} is not an https:// URL"))
}

fn is_loopback_authority(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_loopback_url(url: &str) -> bool {
    url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).is_some_and(is_loopback_authority)
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// `pobox fetch login` was never run for this account.
    #[error("OAuth: not logged in yet: run `pobox fetch login {account}`")]
    NotLoggedIn {
        /// The account's name.
        account: String,
    },
    /// The refresh token is expired, revoked, or belongs to other settings.
    #[error("OAuth: {reason}: run `pobox fetch login {account}` again")]
    LoginAgain {
        /// The account's name.
        account: String,
        /// What the provider (or the token file) said.
        reason: String,
    },
    /// The provider refused the request for a reason that will not go away
    /// by itself (bad client id, consent missing, user denied access).
    #[error("OAuth: {0}")]
    Refused(String),
    /// The provider could not be reached or failed; retrying later may work.
    #[error("OAuth: {0}")]
    Unavailable(String),
    /// The token file could not be read or written.
    #[error("OAuth token file {path}: {reason}")]
    Local {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl OAuthError {
    /// True unless retrying later may help.
    pub fn needs_attention(&self) -> bool {
        !matches!(self, OAuthError::Unavailable(_) | OAuthError::Local { .. })
    }
}

/// What the token file holds. Tokens are wiped from memory on drop.
#[derive(Serialize, Deserialize, Default)]
struct TokenFile {
    token_url: String,
    client_id: String,
    refresh_token: String,
    #[serde(default)]
    access_token: String,
    /// Unix seconds.
    #[serde(default)]
    expires_at: u64,
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        self.refresh_token.zeroize();
        self.access_token.zeroize();
    }
}

/// A successful token-endpoint answer (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

impl Drop for TokenResponse {
    fn drop(&mut self) {
        self.access_token.zeroize();
        if let Some(r) = &mut self.refresh_token {
            r.zeroize();
        }
    }
}

/// An access token for `name`'s account, from the cache when it has more
/// than [`REFRESH_MARGIN`] left, else refreshed (and the cache updated).
/// `force` refreshes even a cached token that looks valid (the server
/// refused it: revoked early, or a changed scope).
///
/// Blocking (HTTP, file lock): call it outside the async runtime or on the
/// blocking pool.
///
/// # Errors
/// [`OAuthError::LoginAgain`] for `invalid_grant`, [`OAuthError::NotLoggedIn`]
/// when there is no token file, others as described there.
pub fn access_token(name: &str, s: &OAuthSettings, force: bool) -> Result<Secret, OAuthError> {
    let local = |reason: String| OAuthError::Local { path: s.token_file.clone(), reason };
    let _lock = lock(&s.token_file).map_err(|e| local(e.to_string()))?;
    let mut tokens = match read_tokens(&s.token_file) {
        Ok(Some(t)) => t,
        Ok(None) => return Err(OAuthError::NotLoggedIn { account: name.into() }),
        Err(TokenFileError::Io(e)) => return Err(local(e)),
        // Waiting will not repair it; a new login rewrites it.
        Err(TokenFileError::Garbled) => {
            return Err(OAuthError::LoginAgain {
                account: name.into(),
                reason: format!("{} is not a pobox token file", s.token_file.display()),
            });
        }
    };
    if tokens.token_url != s.token_url || tokens.client_id != s.client_id {
        return Err(OAuthError::LoginAgain {
            account: name.into(),
            reason: "the account's OAuth provider or client changed since the last login".into(),
        });
    }
    let now = unix_now();
    if !force && !tokens.access_token.is_empty() && tokens.expires_at > now + REFRESH_MARGIN.as_secs() {
        return Ok(Secret::from(tokens.access_token.clone()));
    }
    let refresh = Zeroizing::new(tokens.refresh_token.clone());
    let mut form: Vec<(&str, &str)> =
        vec![("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", &s.client_id)];
    if let Some(cs) = &s.client_secret {
        form.push(("client_secret", cs));
    }
    if !s.scope.is_empty() {
        form.push(("scope", &s.scope));
    }
    let answer = match post_form(&s.token_url, &form)? {
        Answer::Ok(v) => v,
        Answer::Error { error, description } if error == "invalid_grant" => {
            return Err(OAuthError::LoginAgain {
                account: name.into(),
                reason: format!("the provider refused the refresh token ({})", describe(&error, description.as_deref())),
            });
        }
        Answer::Error { error, description } => return Err(endpoint_error(&error, description.as_deref())),
    };
    let response: TokenResponse = parse_token_response(answer)?;
    tokens.access_token = response.access_token.clone();
    tokens.expires_at = now + response.expires_in.unwrap_or(3600);
    // Rotation (RFC 6749 §6): a new refresh token replaces the old one,
    // which the provider may already have invalidated.
    if let Some(r) = &response.refresh_token
        && !r.is_empty()
    {
        tokens.refresh_token = r.clone();
    }
    write_tokens(&s.token_file, &tokens).map_err(local)?;
    Ok(Secret::from(tokens.access_token.clone()))
}

/// Runs the configured login flow for `name`, talking to the user through
/// `out` (the terminal's stderr), and stores the tokens.
///
/// # Errors
/// [`OAuthError`]; nothing is stored unless a refresh token was obtained.
pub fn login(name: &str, s: &OAuthSettings, out: &mut dyn Write) -> Result<PathBuf, OAuthError> {
    let response = match s.flow {
        Flow::Device => device_flow(name, s, out)?,
        Flow::Browser => browser_flow(name, s, out)?,
    };
    let Some(refresh) = response.refresh_token.clone().filter(|r| !r.is_empty()) else {
        return Err(OAuthError::Refused(
            "the provider returned no refresh token (the scope needs offline_access for Microsoft; Google needs access_type=offline)"
                .into(),
        ));
    };
    let tokens = TokenFile {
        token_url: s.token_url.clone(),
        client_id: s.client_id.clone(),
        refresh_token: refresh,
        access_token: response.access_token.clone(),
        expires_at: unix_now() + response.expires_in.unwrap_or(3600),
    };
    let local = |reason: String| OAuthError::Local { path: s.token_file.clone(), reason };
    let _lock = lock(&s.token_file).map_err(|e| local(e.to_string()))?;
    write_tokens(&s.token_file, &tokens).map_err(local)?;
    Ok(s.token_file.clone())
}

/// RFC 8628: ask for a device code, show it, poll the token endpoint.
fn device_flow(name: &str, s: &OAuthSettings, out: &mut dyn Write) -> Result<TokenResponse, OAuthError> {
    let url = s.device_url.as_deref().ok_or_else(|| OAuthError::Refused("no device_url configured".into()))?;
    let mut form = vec![("client_id", s.client_id.as_str())];
    if !s.scope.is_empty() {
        form.push(("scope", &s.scope));
    }
    let v = match post_form(url, &form)? {
        Answer::Ok(v) => v,
        Answer::Error { error, description } => return Err(endpoint_error(&error, description.as_deref())),
    };
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let device_code = Zeroizing::new(
        text("device_code").ok_or_else(|| OAuthError::Unavailable("device authorization answer has no device_code".into()))?,
    );
    let user_code =
        text("user_code").ok_or_else(|| OAuthError::Unavailable("device authorization answer has no user_code".into()))?;
    // Google says verification_url, the RFC verification_uri.
    let verify = text("verification_uri")
        .or_else(|| text("verification_url"))
        .ok_or_else(|| OAuthError::Unavailable("device authorization answer has no verification_uri".into()))?;
    let expires_in = v.get("expires_in").and_then(serde_json::Value::as_u64).unwrap_or(LOGIN_WAIT.as_secs());
    // RFC 8628 §3.2: 5 s when absent. At least 1 s whatever it says, so a
    // broken provider cannot make us spin.
    let mut interval = v.get("interval").and_then(serde_json::Value::as_u64).unwrap_or(5).max(1);
    let _ = writeln!(
        out,
        "To authorize pobox to read {name}'s mail, open {}\nand enter the code {} (valid for {} minutes). Waiting…",
        printable(&verify),
        printable(&user_code),
        expires_in.div_ceil(60)
    );
    let deadline = Instant::now() + Duration::from_secs(expires_in.min(LOGIN_WAIT.as_secs()));
    let mut form = vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", device_code.as_str()),
        ("client_id", s.client_id.as_str()),
    ];
    if let Some(cs) = &s.client_secret {
        form.push(("client_secret", cs));
    }
    // Bounded by the deadline and by a count (each poll sleeps >= 1 s).
    for _ in 0..=LOGIN_WAIT.as_secs() {
        std::thread::sleep(Duration::from_secs(interval));
        if Instant::now() > deadline {
            break;
        }
        match post_form(&s.token_url, &form)? {
            Answer::Ok(v) => return parse_token_response(v),
            Answer::Error { error, .. } if error == "authorization_pending" => {}
            // §3.5: back off by 5 s for this and every later request.
            Answer::Error { error, .. } if error == "slow_down" => interval += 5,
            Answer::Error { error, .. } if error == "expired_token" => break,
            Answer::Error { error, description } => return Err(endpoint_error(&error, description.as_deref())),
        }
    }
    Err(OAuthError::Refused("the device code expired before the sign-in was completed; run the login again".into()))
}

/// RFC 7636 + RFC 8252: PKCE (S256), a random `state`, a one-shot loopback
/// HTTP listener for the redirect.
fn browser_flow(name: &str, s: &OAuthSettings, out: &mut dyn Write) -> Result<TokenResponse, OAuthError> {
    let auth_url = s.auth_url.as_deref().ok_or_else(|| OAuthError::Refused("no auth_url configured".into()))?;
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| OAuthError::Unavailable(format!("cannot listen on 127.0.0.1 for the redirect: {e}")))?;
    let port = listener.local_addr().map_err(|e| OAuthError::Unavailable(e.to_string()))?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/");
    let verifier = Zeroizing::new(B64URL.encode(rand::random::<[u8; 32]>()));
    let challenge = B64URL.encode(Sha256::digest(verifier.as_bytes()));
    let state = B64URL.encode(rand::random::<[u8; 16]>());
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("response_type", "code")
        .append_pair("client_id", &s.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &state);
    if !s.scope.is_empty() {
        query.append_pair("scope", &s.scope);
    }
    for (k, v) in &s.extra_auth_params {
        query.append_pair(k, v);
    }
    let sep = if auth_url.contains('?') { '&' } else { '?' };
    let url = format!("{auth_url}{sep}{}", query.finish());
    let _ = writeln!(
        out,
        "To authorize pobox to read {name}'s mail, open this URL in a browser on this machine:\n\n  {url}\n\nWaiting for the browser to return to {redirect_uri} …"
    );
    let code = wait_for_redirect(&listener, &state)?;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", s.client_id.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    if let Some(cs) = &s.client_secret {
        form.push(("client_secret", cs));
    }
    match post_form(&s.token_url, &form)? {
        Answer::Ok(v) => parse_token_response(v),
        Answer::Error { error, description } => Err(endpoint_error(&error, description.as_deref())),
    }
}

/// Accepts connections on the loopback listener until one carries our
/// `state` with a `code` (or an `error`). Bounded in time ([`LOGIN_WAIT`])
/// and in connections (a browser also asks for /favicon.ico).
fn wait_for_redirect(listener: &TcpListener, state: &str) -> Result<Zeroizing<String>, OAuthError> {
    let unavailable = |e: std::io::Error| OAuthError::Unavailable(format!("redirect listener: {e}"));
    listener.set_nonblocking(true).map_err(unavailable)?;
    let deadline = Instant::now() + LOGIN_WAIT;
    let mut connections = 0;
    while Instant::now() < deadline && connections < 100 {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(unavailable(e)),
        };
        connections += 1;
        let Some(target) = read_request_target(&mut stream) else { continue };
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let mut code = None;
        let (mut got_state, mut error, mut error_description) = (None, None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "code" => code = Some(Zeroizing::new(v.into_owned())),
                "state" => got_state = Some(v.into_owned()),
                "error" => error = Some(v.into_owned()),
                "error_description" => error_description = Some(v.into_owned()),
                _ => {}
            }
        }
        if got_state.as_deref() != Some(state) {
            // Not our redirect (favicon, a stale tab, or a forged request):
            // ignore it and keep waiting.
            respond(&mut stream, "404 Not Found", "pobox: this is not the page you are looking for.");
            continue;
        }
        if let Some(error) = error {
            respond(&mut stream, "200 OK", "pobox: the authorization was refused. You can close this window.");
            return Err(endpoint_error(&error, error_description.as_deref()));
        }
        if let Some(code) = code {
            respond(&mut stream, "200 OK", "pobox: authorization received. You can close this window.");
            return Ok(code);
        }
        respond(&mut stream, "400 Bad Request", "pobox: the redirect carried no code.");
    }
    Err(OAuthError::Refused("no browser redirect arrived in time; run the login again".into()))
}

/// The request target of an HTTP/1.x GET, read with a timeout and a size
/// bound (the browser is local, but nothing here trusts it).
fn read_request_target(stream: &mut TcpStream) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    (parts.next()? == "GET").then_some(())?;
    parts.next().map(str::to_owned)
}

fn respond(stream: &mut TcpStream, status: &str, text: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

/// An answer from a token or device endpoint.
enum Answer {
    Ok(serde_json::Value),
    /// RFC 6749 §5.2.
    Error { error: String, description: Option<String> },
}

/// POSTs a form and reads a JSON answer (2xx: success; 4xx with an
/// `error` member: an OAuth error; anything else: unavailable).
fn post_form(url: &str, form: &[(&str, &str)]) -> Result<Answer, OAuthError> {
    let loopback = is_loopback_url(url);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(HTTP_TIMEOUT))
        .http_status_as_error(false)
        .https_only(!loopback)
        .max_redirects(0)
        // A proxy from the environment is honoured, except for loopback
        // endpoints, which a proxy could not reach.
        .proxy(if loopback { None } else { ureq::Proxy::try_from_env() })
        .user_agent(concat!("pobox/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let unavailable = |e: ureq::Error| OAuthError::Unavailable(format!("{}: {}", endpoint_name(url), http_error(&e)));
    let mut response = agent.post(url).header("Accept", "application/json").send_form(form.iter().copied()).map_err(unavailable)?;
    let status = response.status().as_u16();
    let body = Zeroizing::new(
        response.body_mut().with_config().limit(MAX_RESPONSE).read_to_string().map_err(unavailable)?,
    );
    let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();
    match (status, json) {
        (200..=299, Some(v)) => Ok(Answer::Ok(v)),
        (400..=499, Some(v)) if v.get("error").and_then(|e| e.as_str()).is_some() => Ok(Answer::Error {
            error: v["error"].as_str().unwrap_or_default().to_string(),
            description: v.get("error_description").and_then(|d| d.as_str()).map(str::to_owned),
        }),
        (s, _) => Err(OAuthError::Unavailable(format!("{}: HTTP status {s} without an OAuth answer", endpoint_name(url)))),
    }
}

/// The scheme and host of a URL, for messages (never the query).
fn endpoint_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest).to_string()
}

/// ureq's errors without Debug text.
fn http_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(_) => format!("no answer within {} s", HTTP_TIMEOUT.as_secs()),
        other => other.to_string(),
    }
}

fn parse_token_response(v: serde_json::Value) -> Result<TokenResponse, OAuthError> {
    serde_json::from_value::<TokenResponse>(v)
        .ok()
        .filter(|t| !t.access_token.is_empty())
        .ok_or_else(|| OAuthError::Unavailable("the token endpoint's answer has no access_token".into()))
}

/// A provider error that a retry will not fix, except `temporarily_unavailable`.
fn endpoint_error(error: &str, description: Option<&str>) -> OAuthError {
    let text = describe(error, description);
    match error {
        "temporarily_unavailable" | "server_error" => OAuthError::Unavailable(format!("the provider says {text}")),
        _ => OAuthError::Refused(format!("the provider refused: {text}")),
    }
}

/// `error: description`, control characters escaped and length bounded:
/// this is text from the network going to a terminal.
fn describe(error: &str, description: Option<&str>) -> String {
    let mut s = printable(error);
    if let Some(d) = description {
        // Microsoft's descriptions carry trace ids and timestamps on
        // further lines; the first line says what is wrong.
        s.push_str(": ");
        s.push_str(&printable(d.lines().next().unwrap_or("")));
    }
    if s.chars().count() > 300 {
        s = s.chars().take(300).collect::<String>() + "…";
    }
    s
}

fn printable(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

enum TokenFileError {
    Io(String),
    Garbled,
}

fn read_tokens(path: &Path) -> Result<Option<TokenFile>, TokenFileError> {
    let mut text = Zeroizing::new(String::new());
    match File::open(path) {
        Ok(mut f) => f.read_to_string(&mut text).map_err(|e| TokenFileError::Io(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TokenFileError::Io(e.to_string())),
    };
    serde_json::from_str(&text).map(Some).map_err(|_| TokenFileError::Garbled)
}

/// Replaces the token file atomically, 0600, in a 0700 directory.
fn write_tokens(path: &Path, tokens: &TokenFile) -> Result<(), String> {
    let dir = path.parent().ok_or("token file has no directory")?;
    ensure_private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let text = Zeroizing::new(serde_json::to_string_pretty(tokens).map_err(|e| e.to_string())?);
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("token"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        // Not a Maildir: the token file is replaced whole, so a crash
        // leaves the old or the new file, never half of one.
        #[allow(clippy::disallowed_methods)]
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

/// Creates the directory (and missing parents) 0700, and tightens it if it
/// exists with looser permissions: it names accounts and holds tokens.
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// An exclusive `flock` on `<token file>.lock`, held while the guard lives.
fn lock(path: &Path) -> std::io::Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_private_dir(dir)?;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(PathBuf::from(name))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(f)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(provider: Provider) -> RawOAuth {
        RawOAuth {
            provider,
            client_id: "cid".into(),
            client_secret: None,
            tenant: None,
            flow: None,
            scope: None,
            token_url: None,
            device_url: None,
            auth_url: None,
        }
    }

    #[test]
    fn presets() {
        let m = raw(Provider::Microsoft).validate().unwrap();
        assert_eq!(m.token_url, "https://login.microsoftonline.com/common/oauth2/v2.0/token");
        assert_eq!(m.device_url.as_deref(), Some("https://login.microsoftonline.com/common/oauth2/v2.0/devicecode"));
        assert_eq!(m.scope, MICROSOFT_SCOPE);
        assert_eq!(m.flow, Flow::Device);
        let m = RawOAuth { tenant: Some("consumers".into()), ..raw(Provider::Microsoft) }.validate().unwrap();
        assert!(m.token_url.starts_with("https://login.microsoftonline.com/consumers/"));
        assert!(RawOAuth { tenant: Some("a/b".into()), ..raw(Provider::Microsoft) }.validate().is_err());
        let g = raw(Provider::Google).validate().unwrap();
        assert_eq!(g.scope, GOOGLE_SCOPE);
        assert_eq!(g.flow, Flow::Browser);
        assert!(g.extra_auth_params.iter().any(|(k, v)| k == "access_type" && v == "offline"));
        assert!(raw(Provider::Custom).validate().is_err(), "custom needs endpoints");
        assert!(RawOAuth { client_id: " ".into(), ..raw(Provider::Google) }.validate().is_err());
    }

    #[test]
    fn http_only_on_loopback() {
        for ok in ["https://idp.example/token", "http://127.0.0.1:8080/t", "http://[::1]:80/t", "http://localhost/t"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in ["http://idp.example/token", "http://127.0.0.1.evil.example/t", "ftp://x", "https://", "http://10.0.0.1/t"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        let c = RawOAuth { token_url: Some("http://idp.example/t".into()), device_url: Some("https://idp.example/d".into()), ..raw(Provider::Custom) };
        assert!(c.validate().unwrap_err().contains("https://"));
    }

    #[test]
    fn provider_text_is_made_printable_and_short() {
        let d = describe("invalid_grant", Some("AADSTS70000: revoked\r\nTrace ID: 1"));
        assert_eq!(d, "invalid_grant: AADSTS70000: revoked");
        assert_eq!(printable("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert!(describe(&"x".repeat(1000), None).chars().count() <= 301);
    }

    #[test]
    fn account_config_with_oauth() {
        use crate::config::{AuthMethod, Config, PasswordSource};
        let base = "state_dir = \"/st\"\npoll_interval = 120\n[accounts.o]\nhost = \"h\"\nuser = \"u@x\"\nmaildir = \"/m\"\n";
        let table = "[accounts.o.oauth]\nprovider = \"google\"\nclient_id = \"c\"\n";
        let c = Config::parse(&format!("{base}auth = \"oauth2\"\n{table}")).unwrap();
        let a = &c.accounts[0];
        assert_eq!(a.auth, AuthMethod::Oauth2);
        assert_eq!(a.password, PasswordSource::OAuth2);
        assert_eq!(a.oauth.as_ref().unwrap().token_file, PathBuf::from("/st/oauth/o.json"));
        assert_eq!(a.poll_interval, Duration::from_secs(120), "top-level default");
        // auth left at auto becomes oauth2; xoauth2 may be forced.
        assert_eq!(Config::parse(&format!("{base}{table}")).unwrap().accounts[0].auth, AuthMethod::Oauth2);
        assert_eq!(Config::parse(&format!("{base}auth = \"xoauth2\"\n{table}")).unwrap().accounts[0].auth, AuthMethod::Xoauth2);
        for bad in [
            format!("{base}auth = \"oauth2\"\n"),
            format!("{base}auth = \"plain\"\n{table}"),
            format!("{base}password = \"p\"\n{table}"),
            format!("{base}on_new_mail = []\n{table}"),
            format!("{base}poll_interval = 0\n{table}"),
            format!("{base}{table}token_url = \"http://idp.example/t\"\n"),
            format!("{base}{table}colour = \"blue\"\n"),
        ] {
            assert!(Config::parse(&bad).is_err(), "accepted {bad}");
        }
        let c = Config::parse("state_dir = \"/st\"\n[accounts.p]\nhost = \"h\"\nuser = \"u\"\npassword = \"x\"\nmaildir = \"/m\"\n").unwrap();
        assert_eq!(c.accounts[0].poll_interval, Duration::from_secs(crate::config::DEFAULT_POLL_INTERVAL));
    }

    #[test]
    fn oauth2_takes_oauthbearer_when_offered_else_xoauth2() {
        use crate::auth::{choose, Login, Mechanism};
        use crate::config::AuthMethod;
        use pobox_proto::pop3::client::{body_lines, Capabilities};
        let caps = |s: &[u8]| Capabilities::parse(body_lines(s));
        let both = caps(b"USER\r\nSASL PLAIN OAUTHBEARER XOAUTH2\r\n");
        assert_eq!(choose(AuthMethod::Oauth2, Some(&both)).unwrap(), Login::Sasl(Mechanism::Oauthbearer));
        let gmail_like = caps(b"USER\r\nSASL PLAIN XOAUTH2\r\n");
        assert_eq!(choose(AuthMethod::Oauth2, Some(&gmail_like)).unwrap(), Login::Sasl(Mechanism::Xoauth2));
        // Outlook does not always list it; XOAUTH2 is what it takes.
        assert_eq!(choose(AuthMethod::Oauth2, Some(&caps(b"USER\r\n"))).unwrap(), Login::Sasl(Mechanism::Xoauth2));
        assert_eq!(choose(AuthMethod::Oauth2, None).unwrap(), Login::Sasl(Mechanism::Xoauth2));
    }

    #[test]
    fn debug_hides_the_client_secret() {
        let s = RawOAuth { client_secret: Some("hush".into()), ..raw(Provider::Google) }.validate().unwrap();
        assert!(!format!("{s:?}").contains("hush"));
    }
}
