//! Automatic certificates with ACME (RFC 8555), through `instant-acme`.
//!
//! # Flow
//!
//! `pobox serve` calls [`Acme::prepare`] in its privileged prelude (the
//! HTTP-01 listener may need port 80, and `DATA/acme` must exist before the
//! privilege drop so it can be handed to the service user), installs a
//! certificate left by an earlier run with [`Acme::load_existing`], and then
//! spawns [`Acme::run`]. That task checks at start and every
//! `check_interval` (a day): when there is no ACME certificate, when it does
//! not name every configured domain, or when it expires within
//! `renew_before`, it orders a new one. Until the first one arrives the
//! server keeps serving what it had (the generated self-signed certificate);
//! a failed attempt is logged and retried with exponential backoff, and the
//! old certificate stays in use.
//!
//! # Hot swap
//!
//! An issued certificate goes into [`CertStore`]'s ACME slot, an `ArcSwap`
//! like the file-reload set: new handshakes get it at once, running sessions
//! keep the keys they negotiated and are never touched.
//!
//! # Challenges
//!
//! - HTTP-01 (RFC 8555 §8.3): a tiny HTTP/1.x responder on `http_listen`
//!   that answers `GET /.well-known/acme-challenge/TOKEN` for pending tokens
//!   and 404 to everything else.
//! - TLS-ALPN-01 (RFC 8737): answered by the TLS listeners themselves. A
//!   ClientHello offering ALPN `acme-tls/1` gets the self-signed challenge
//!   certificate for its SNI name (with the critical `acmeIdentifier`
//!   extension holding SHA-256 of the key authorization) and the connection
//!   ends after the handshake; see [`crate::tls`].
//!
//! # Files (`DATA/acme`, 0700)
//!
//! `account-<hash of the directory URL>.json` (the account key, 0600; one
//! per directory, so switching from staging to production makes a new
//! account), `cert.pem` (the chain) and `key.pem` (0600). Written to a
//! temporary name and renamed, key first: a crash leaves either the old
//! pair or a pair whose key does not match, which is then simply re-issued.
//! Neither key is ever logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::tls::{CertPair, CertStore, LoadedCert, load_one};

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory: for trying a setup without hitting
/// the production rate limits (its certificates are not trusted).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// The ALPN protocol id of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// How long one order may wait for validation or issuance before the
/// attempt counts as failed (and is retried with backoff).
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// First retry delay after a failure; doubles up to `check_interval`.
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// An HTTP-01 request must arrive within 10 s and 8 KiB, and has no body.
const HTTP_LIMITS: crate::http::Limits =
    crate::http::Limits { max_head: 8 * 1024, max_body: 0, timeout: Duration::from_secs(10), max_connections: 64 };

/// Which challenge proves control of the domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// HTTP-01 on `http_listen` (the CA connects to port 80).
    Http01,
    /// TLS-ALPN-01 on the TLS listeners (the CA connects to port 443).
    TlsAlpn01,
}

impl std::fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

/// The validated `[acme]` settings.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME directory URL (https).
    pub directory: String,
    /// Contact URLs (`mailto:...`) for the account; may be empty.
    pub contact: Vec<String>,
    /// DNS names the certificate must cover; the first is its subject.
    pub domains: Vec<String>,
    /// The challenge type.
    pub challenge: ChallengeKind,
    /// Where the HTTP-01 responder listens.
    pub http_listen: SocketAddr,
    /// A PEM CA certificate to verify the ACME server with instead of the
    /// system's roots (a private CA, or a test server such as Pebble).
    pub ca_file: Option<PathBuf>,
    /// Renew when the certificate expires within this time.
    pub renew_before: Duration,
    /// How often the certificate's expiry is checked.
    pub check_interval: Duration,
    /// `DATA/acme`.
    pub dir: PathBuf,
}

/// Why ACME could not be set up or a certificate obtained.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AcmeError(String);

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        // The causes matter most here ("client error (Connect)" alone does
        // not say that the certificate was refused or the port was closed).
        let mut text = format!("ACME server: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        AcmeError(text)
    }
}

impl From<rcgen::Error> for AcmeError {
    fn from(e: rcgen::Error) -> Self {
        AcmeError(format!("cannot generate a key or request: {e}"))
    }
}

/// Pending challenge answers, shared by the order task, the HTTP-01
/// responder and the TLS certificate resolver.
#[derive(Default)]
pub struct Challenges {
    /// HTTP-01: token → key authorization.
    http: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: lower-case domain → challenge certificate.
    tls: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges").finish_non_exhaustive()
    }
}

impl Challenges {
    /// The key authorization for an HTTP-01 token, if one is pending.
    pub fn http_response(&self, token: &str) -> Option<String> {
        self.http.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, if a challenge is pending.
    pub fn tls_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&name.to_ascii_lowercase()).cloned()
    }

    fn clear(&self) {
        self.http.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        self.tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }
}

/// Removes the answers of an order however it ends (success, error,
/// cancellation), so a stale token is never served.
struct ClearOnDrop(Arc<Challenges>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// ACME, prepared in the privileged prelude; [`Acme::run`] does the rest.
pub struct Acme {
    config: AcmeConfig,
    http: Option<std::net::TcpListener>,
    account: Option<Account>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Acme {
    /// Creates `DATA/acme` (0700) and binds the HTTP-01 listener when that
    /// challenge is configured. Call before dropping privileges.
    ///
    /// # Errors
    /// The directory cannot be created, or the address cannot be bound.
    pub fn prepare(config: AcmeConfig) -> Result<Acme, AcmeError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|e| AcmeError(format!("cannot create {}: {e}", config.dir.display())))?;
        // An existing directory keeps its mode with create(); the account key
        // lives here, so tighten it.
        std::fs::set_permissions(&config.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AcmeError(format!("cannot chmod {}: {e}", config.dir.display())))?;
        let http = match config.challenge {
            ChallengeKind::Http01 => Some(std::net::TcpListener::bind(config.http_listen).map_err(|e| {
                AcmeError(format!(
                    "acme.http_listen {}: cannot listen: {e} (ports below 1024 need root or \
                     CAP_NET_BIND_SERVICE; the CA connects to port 80)",
                    config.http_listen
                ))
            })?),
            ChallengeKind::TlsAlpn01 => None,
        };
        Ok(Acme { config, http, account: None })
    }

    /// The settings.
    pub fn config(&self) -> &AcmeConfig {
        &self.config
    }

    /// The address the HTTP-01 responder is bound to.
    pub fn http_local_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Hands the bound HTTP-01 listener to another HTTP server on the same
    /// address (the autoconfig listener on port 80), which then answers
    /// challenges with [`http_challenge_response`]; [`Acme::run`] serves no
    /// listener of its own after this.
    pub fn take_http_listener(&mut self) -> Option<std::net::TcpListener> {
        self.http.take()
    }

    /// `DATA/acme` and the files in it, for handing to the service user.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.config.dir.clone(), self.cert_pair().cert, self.cert_pair().key, self.account_path()];
        files.dedup();
        files
    }

    fn cert_pair(&self) -> CertPair {
        CertPair { cert: self.config.dir.join("cert.pem"), key: self.config.dir.join("key.pem") }
    }

    fn account_path(&self) -> PathBuf {
        let hash = Sha256::digest(self.config.directory.as_bytes());
        self.config.dir.join(format!("account-{}.json", hex::encode(&hash[..8])))
    }

    /// The certificate an earlier run obtained, if its files load and match.
    pub fn load_existing(&self) -> Option<LoadedCert> {
        let pair = self.cert_pair();
        if !pair.cert.exists() || !pair.key.exists() {
            return None;
        }
        match load_one(&pair) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "ACME: the stored certificate is unusable; a new one will be requested");
                None
            }
        }
    }

    /// Serves HTTP-01 (when configured) and keeps the certificate in
    /// `store` current: at start, then every `check_interval`; failures are
    /// retried with backoff while the current certificate stays in use.
    /// Runs until the task is dropped.
    pub async fn run(mut self, store: Arc<CertStore>) {
        if let Some(l) = self.http.take() {
            let challenges = store.challenges();
            let handler: crate::http::Handler =
                Arc::new(move |r: &crate::http::Request| http_challenge_response(r, &challenges));
            tokio::spawn(crate::http::serve(l, None, HTTP_LIMITS, "acme-http-01", handler));
        }
        let mut failures: u32 = 0;
        loop {
            let wait = match self.ensure(&store).await {
                Ok(next) => {
                    failures = 0;
                    next
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures, self.config.check_interval);
                    warn!(
                        error = %e,
                        attempt = failures,
                        retry_in_secs = delay.as_secs(),
                        "ACME: no certificate obtained; still serving the current one"
                    );
                    delay
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Orders a certificate if none covers the domains or renewal is due;
    /// returns when to check next.
    async fn ensure(&mut self, store: &CertStore) -> Result<Duration, AcmeError> {
        let now = SystemTime::now();
        if let Some(current) = store.acme() {
            let covers = self.config.domains.iter().all(|d| current.names.contains(&d.to_ascii_lowercase()));
            let due = current.not_after.checked_sub(self.config.renew_before).unwrap_or(SystemTime::UNIX_EPOCH);
            if covers && due > now {
                let until_due = due.duration_since(now).unwrap_or_default();
                debug!(fingerprint = %current.fingerprint, renew_in_secs = until_due.as_secs(), "ACME certificate current");
                return Ok(until_due.min(self.config.check_interval));
            }
            let why = if covers { "renewal due" } else { "the configured domains changed" };
            info!(reason = why, fingerprint = %current.fingerprint, "ACME: requesting a new certificate");
        } else {
            info!(domains = %self.config.domains.join(","), challenge = %self.config.challenge, "ACME: requesting a certificate");
        }
        let cert = self.issue(store).await?;
        let expires = cert.not_after.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        info!(
            fingerprint = %cert.fingerprint,
            domains = %cert.names.join(","),
            not_after_unix = expires,
            "ACME certificate installed"
        );
        store.set_acme(cert);
        Ok(self.config.check_interval)
    }

    async fn account(&mut self) -> Result<Account, AcmeError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let builder = || match &self.config.ca_file {
            Some(ca) => Account::builder_with_root(ca)
                .map_err(|e| AcmeError(format!("acme.ca_file {}: {e}", ca.display()))),
            None => Account::builder().map_err(AcmeError::from),
        };
        let path = self.account_path();
        let account = match std::fs::read(&path) {
            Ok(json) => {
                let credentials: AccountCredentials = serde_json::from_slice(&json)
                    .map_err(|e| AcmeError(format!("{}: not an account file ({e}); move it away to register anew", path.display())))?;
                builder()?.from_credentials(credentials).await?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
                let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) = builder()?.create(&new, self.config.directory.clone(), None).await?;
                let json = serde_json::to_vec(&credentials).map_err(|e| AcmeError(format!("cannot encode the account: {e}")))?;
                write_private(&path, &json)?;
                info!(directory = %self.config.directory, account = %account.id(), "ACME account registered");
                account
            }
            Err(e) => return Err(AcmeError(format!("cannot read {}: {e}", path.display()))),
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    async fn issue(&mut self, store: &CertStore) -> Result<LoadedCert, AcmeError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self.config.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let challenges = store.challenges();
        let _clear = ClearOnDrop(challenges.clone());
        let wanted = match self.config.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            let name = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                // Validated recently (CAs reuse authorizations).
                AuthorizationStatus::Valid => continue,
                other => return Err(AcmeError(format!("the authorization for {name} is {other:?}"))),
            }
            let mut challenge = authz.challenge(wanted.clone()).ok_or_else(|| {
                AcmeError(format!("the ACME server offers no {} challenge for {name}", self.config.challenge))
            })?;
            let key_authorization = challenge.key_authorization();
            match self.config.challenge {
                ChallengeKind::Http01 => {
                    challenges
                        .http
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(challenge.token.clone(), key_authorization.as_str().to_owned());
                }
                ChallengeKind::TlsAlpn01 => {
                    let cert = alpn_certificate(&name, key_authorization.digest().as_ref())?;
                    challenges
                        .tls
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(name.to_ascii_lowercase(), cert);
                }
            }
            challenge.set_ready().await?;
            debug!(domain = %name, challenge = %self.config.challenge, "ACME challenge ready");
        }
        let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            let detail = order.state().error.as_ref().map(ToString::to_string).unwrap_or_default();
            return Err(AcmeError(format!("the order is {status:?}, not ready: {detail}")));
        }
        // Our own key and CSR (not `Order::finalize`): ECDSA P-256, which
        // every client handles and rustls serves with ring.
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(self.config.domains.clone())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, self.config.domains[0].clone());
        let csr = params.serialize_request(&key)?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&retries).await?;
        self.install_files(&chain, &key.serialize_pem())
    }

    /// Writes the pair (key first, each via rename) and loads it back, which
    /// also checks that the key belongs to the certificate.
    fn install_files(&self, chain: &str, key_pem: &str) -> Result<LoadedCert, AcmeError> {
        let pair = self.cert_pair();
        write_private(&pair.key, key_pem.as_bytes())?;
        write_private(&pair.cert, chain.as_bytes())?;
        load_one(&pair).map_err(|e| AcmeError(format!("the issued certificate cannot be used: {e}")))
    }
}

/// 1, 2, 4 … minutes, never more than `cap` (nor less than a second).
fn retry_delay(failures: u32, cap: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(factor).min(cap).max(Duration::from_secs(1))
}

/// The RFC 8737 §3 challenge certificate: self-signed, naming only
/// `domain`, with the critical acmeIdentifier extension.
fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| AcmeError(format!("challenge key: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Writes `data` to `path` with mode 0600 from the start, through a
/// temporary file and a rename, so a reader never sees half a key.
// Not a Maildir: the rename is what makes the replacement atomic.
#[allow(clippy::disallowed_methods)]
fn write_private(path: &Path, data: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| AcmeError(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(fail)?;
    f.write_all(data).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The answer to an HTTP-01 request: the key authorization for a pending
/// token, 404 for anything else. No other paths exist. Public so that the
/// autoconfig listener can answer challenges when it shares port 80.
#[must_use]
pub fn http_challenge_response(request: &crate::http::Request, challenges: &Challenges) -> crate::http::Response {
    use crate::http::Response;
    if request.method != "GET" && request.method != "HEAD" {
        return Response::text(405, "Method Not Allowed");
    }
    let answer = request
        .path
        .strip_prefix(HTTP_CHALLENGE_PREFIX)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .and_then(|token| challenges.http_response(token));
    match answer {
        Some(key_authorization) => Response::ok("text/plain", key_authorization),
        None => Response::text(404, "not found"),
    }
}

/// Where HTTP-01 requests arrive (RFC 8555 §8.3).
pub const HTTP_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_01_answers_pending_tokens_only() {
        let c = Challenges::default();
        c.http.lock().unwrap().insert("tok_1-x".into(), "tok_1-x.thumb".into());
        let answer = |head: &[u8]| {
            let request = crate::http::Request::parse_head(head).unwrap();
            String::from_utf8(http_challenge_response(&request, &c).to_bytes(false)).unwrap()
        };
        let get = |t: &str| answer(format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let ok = get("/.well-known/acme-challenge/tok_1-x");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\ntok_1-x.thumb"), "{ok}");
        assert!(get("/.well-known/acme-challenge/other").starts_with("HTTP/1.1 404"));
        assert!(get("/.well-known/acme-challenge/../../etc/passwd").starts_with("HTTP/1.1 404"));
        assert!(get("/").starts_with("HTTP/1.1 404"));
        let post = answer(b"POST /.well-known/acme-challenge/tok_1-x HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405"));
        c.clear();
        assert!(get("/.well-known/acme-challenge/tok_1-x").starts_with("HTTP/1.1 404"), "cleared after the order");
    }

    #[test]
    fn the_autoconfig_listener_on_port_80_answers_challenges_too() {
        use crate::autoconfig::{LeaveOnServer, LoginForm, Offer};
        let c = Arc::new(Challenges::default());
        c.http.lock().unwrap().insert("tok".into(), "tok.thumb".into());
        let offer = Offer {
            host: "mail.example.org".into(),
            pop3s_port: Some(995),
            pop3_port: None,
            domains: Vec::new(),
            provider: "x".into(),
            submission: None,
            leave_on_server: LeaveOnServer::No,
            login: LoginForm::LocalPart,
        };
        let handler = crate::autoconfig::handler(offer, Some(c));
        let get = |path: &str| handler(&crate::http::Request { method: "GET".into(), path: path.into(), ..Default::default() });
        let answer = get("/.well-known/acme-challenge/tok");
        assert_eq!((answer.status, answer.body.as_slice()), (200, b"tok.thumb".as_slice()));
        assert_eq!(get("/.well-known/acme-challenge/other").status, 404);
        assert_eq!(get("/mail/config-v1.1.xml").status, 200);
    }

    #[test]
    fn retry_delay_doubles_up_to_the_check_interval() {
        let day = Duration::from_secs(86_400);
        assert_eq!(retry_delay(1, day), Duration::from_secs(60));
        assert_eq!(retry_delay(2, day), Duration::from_secs(120));
        assert_eq!(retry_delay(5, day), Duration::from_secs(960));
        assert_eq!(retry_delay(40, day), day);
        assert_eq!(retry_delay(3, Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn alpn_certificate_carries_the_critical_acme_identifier() {
        let digest = [7u8; 32];
        let key = alpn_certificate("mail.example.org", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // DER OCTET STRING of the 32-byte digest.
        assert_eq!(ext.value, [&[0x04, 0x20][..], &digest[..]].concat());
    }

    #[test]
    fn keys_are_written_0600_in_a_0700_directory() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("acme");
        let acme = Acme::prepare(AcmeConfig {
            directory: "https://acme.invalid/dir".into(),
            contact: Vec::new(),
            domains: vec!["mail.example.org".into()],
            challenge: ChallengeKind::TlsAlpn01,
            http_listen: "127.0.0.1:0".parse().unwrap(),
            ca_file: None,
            renew_before: Duration::from_secs(30 * 86_400),
            check_interval: Duration::from_secs(86_400),
            dir: dir.clone(),
        })
        .unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(acme.load_existing().is_none());
        write_private(&dir.join("key.pem"), b"secret").unwrap();
        assert_eq!(std::fs::metadata(dir.join("key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(acme.files().contains(&dir.join("key.pem")));
    }
}
