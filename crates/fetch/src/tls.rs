//! TLS for the fetcher: rustls with the ring provider, verifying the server
//! against Mozilla's roots (webpki-roots) plus an account's `ca_file`, or
//! against a SHA-256 pin of its certificate.
//!
//! A certificate in `ca_file` is also accepted as exactly itself: a
//! self-signed server certificate made by `openssl req -x509` carries
//! `basicConstraints CA:TRUE`, which WebPKI refuses as a server's own
//! certificate (`CaUsedAsEndEntity`), though the user gave us that very
//! certificate to trust (mpop and fetchmail accept it). The host name and
//! validity dates are still checked.
//!
//! Verification happens inside the handshake, so a refused server never sees
//! a single POP3 command, let alone a credential. When it refuses, the
//! verifier has already seen the certificate, so the error can show its
//! fingerprint and the exact `fingerprint = "…"` line that would pin it (the
//! user should check that value out of band before pasting it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::config::{format_fingerprint, Account, Security};

/// Why TLS could not be set up or the server was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The `ca_file` could not be read or holds no certificate.
    #[error("cannot load CA certificates from {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The host (or `tls_server_name`) is not a valid DNS name or IP address.
    #[error("{0:?} is not a valid TLS server name")]
    BadServerName(String),
    /// rustls refused the configuration (should not happen with ring).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The server's certificate was refused. No credential was sent.
    #[error("{}", refusal_text(.server, .reason, .fingerprint.as_ref(), .account))]
    Untrusted {
        /// `host:port`.
        server: String,
        /// Why, in plain words (unknown issuer, name mismatch, expired…).
        reason: String,
        /// SHA-256 of the certificate the server presented, if it presented one.
        fingerprint: Option<[u8; 32]>,
        /// The account, for the pinning hint.
        account: String,
    },
    /// The account pins a certificate and the server presented another.
    /// No credential was sent.
    #[error("{}", pin_changed_text(.server, .pinned, .presented.as_ref(), .account))]
    PinChanged {
        /// `host:port`.
        server: String,
        /// The account's `fingerprint`.
        pinned: [u8; 32],
        /// What the server presented.
        presented: Option<[u8; 32]>,
        /// The account's name.
        account: String,
    },
    /// `security = "tls"` but the server answered the handshake with
    /// something that is not TLS: a plain POP3 port.
    #[error(
        "{server} did not answer in TLS (it sent plain text, as a plain POP3 port such as 110 does); \
         nothing was sent. For STARTTLS on this port set security = \"starttls\"; for TLS from the \
         first byte use the server's TLS port (usually 995)"
    )]
    NotTls {
        /// `host:port`.
        server: String,
    },
    /// The handshake failed for another reason (protocol, I/O).
    #[error("TLS handshake with {server} failed: {reason}")]
    Handshake {
        /// `host:port`.
        server: String,
        /// Why, in plain words.
        reason: String,
    },
}

impl TlsError {
    /// True when retrying cannot help: the certificate, the pin or the
    /// security mode must be changed by a human.
    pub fn needs_attention(&self) -> bool {
        !matches!(self, TlsError::Handshake { .. })
    }
}

fn refusal_text(server: &str, reason: &str, fp: Option<&[u8; 32]>, account: &str) -> String {
    match fp {
        Some(fp) => format!(
            "refusing {server}: its TLS certificate is not trusted: {reason}; nothing was sent.\n  \
             certificate SHA-256 fingerprint: {fp}\n  \
             if you have checked that this is your server's certificate (for example with the \
             fingerprint `pobox serve` printed), pin it in [accounts.{account}]:\n    \
             fingerprint = \"{fp}\"",
            fp = format_fingerprint(fp)
        ),
        None => format!("refusing {server}: its TLS certificate is not trusted: {reason}; nothing was sent"),
    }
}

fn pin_changed_text(server: &str, pinned: &[u8; 32], presented: Option<&[u8; 32]>, account: &str) -> String {
    let presented = presented.map_or_else(|| "(none)".to_string(), format_fingerprint);
    format!(
        "refusing {server}: the certificate changed since you pinned it; nothing was sent.\n  \
         pinned in [accounts.{account}]: {pinned}\n  \
         the server presented now:  {presented}\n  \
         This is expected after the server's certificate was renewed, and it is also what an \
         attacker in the middle looks like. Before you replace the fingerprint, get the new one \
         from the server itself over a channel you trust (on the server: `openssl x509 -noout \
         -fingerprint -sha256 -in CERT.pem`, or `pobox serve`'s startup line; or from your \
         provider), and compare it with the value above. Only if they match, put it in \
         [accounts.{account}] as the new fingerprint.",
        pinned = format_fingerprint(pinned),
    )
}

/// A certificate refusal in plain words, never a library's Debug text.
fn cert_reason(e: &CertificateError) -> String {
    use CertificateError as E;
    match e {
        E::BadEncoding => "the server sent a malformed certificate".into(),
        E::Expired => "it has expired".into(),
        E::ExpiredContext { not_after, .. } => format!("it expired on {}", date(not_after.as_secs())),
        E::NotValidYet => "it is not valid yet (is this computer's clock right?)".into(),
        E::NotValidYetContext { not_before, .. } => {
            format!("it is valid only from {} (is this computer's clock right?)", date(not_before.as_secs()))
        }
        E::Revoked => "it has been revoked".into(),
        E::UnknownIssuer => "it is not signed by a certificate authority this computer trusts \
             (a self-signed or private-CA certificate; see ca_file and fingerprint)"
            .into(),
        E::BadSignature => "its signature does not verify".into(),
        E::NotValidForName => "it is not issued for the name connected to".into(),
        E::NotValidForNameContext { expected, presented } => {
            let names: Vec<String> = presented.iter().filter_map(|n| plain_name(n)).collect();
            let names = if names.is_empty() { "no host name at all".to_string() } else { names.join(", ") };
            format!(
                "it is issued for {names}, not for {} (connect by one of its names, or set tls_server_name)",
                expected.to_str()
            )
        }
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => "it is not meant for a TLS server".into(),
        E::ApplicationVerificationFailure => "it does not match the pinned fingerprint".into(),
        _ => "it failed verification".into(),
    }
}

/// `localhost` from webpki's `DnsName("localhost")`, `127.0.0.1` from
/// `IpAddress(127.0.0.1)`; other kinds of names are not host names.
fn plain_name(presented: &str) -> Option<String> {
    if let Some(dns) = presented.strip_prefix("DnsName(\"").and_then(|r| r.strip_suffix("\")")) {
        return Some(dns.to_string());
    }
    presented.strip_prefix("IpAddress(").and_then(|r| r.strip_suffix(')')).map(str::to_string)
}

/// A TLS failure other than the certificate, in plain words.
fn handshake_reason(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::AlertReceived(A::ProtocolVersion) => {
            "the server supports no TLS version we accept (TLS 1.2 and 1.3)".into()
        }
        rustls::Error::AlertReceived(A::HandshakeFailure | A::InsufficientSecurity) => {
            "the server and this fetcher have no TLS settings in common (versions, ciphers)".into()
        }
        rustls::Error::AlertReceived(A::UnrecognisedName) => {
            "the server does not know the host name we asked for (check host or tls_server_name)".into()
        }
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            "the server requires a client certificate, which pobox fetch does not support".into()
        }
        rustls::Error::AlertReceived(_) => "the server aborted the TLS handshake".into(),
        rustls::Error::PeerIncompatible(_) => "the server's TLS is incompatible with this fetcher".into(),
        rustls::Error::PeerMisbehaved(_) => "the server broke the TLS protocol".into(),
        _ => "the TLS handshake failed".into(),
    }
}

/// `2026-11-27` for a Unix time (UTC).
fn date(secs: u64) -> String {
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{}-{m:02}-{d:02}", yoe + era * 400 + i64::from(m <= 2))
}

/// The crypto provider: the workspace uses ring, and only ring, so build
/// every config with it explicitly instead of relying on a process default.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config for one account plus the verifier's record of what it
/// saw, for error messages.
#[derive(Debug, Clone)]
pub struct AccountTls {
    /// The rustls config to connect with.
    pub config: Arc<rustls::ClientConfig>,
    /// The name checked in the certificate.
    pub server_name: ServerName<'static>,
    seen: Arc<Mutex<Option<[u8; 32]>>>,
}

impl AccountTls {
    /// Builds the TLS setup for `account`.
    ///
    /// # Errors
    /// [`TlsError::CaFile`], [`TlsError::BadServerName`], [`TlsError::Config`].
    pub fn new(account: &Account) -> Result<AccountTls, TlsError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut exact = Vec::new();
        if let Some(path) = &account.ca_file {
            for cert in load_pem_certs(path)? {
                roots.add(cert.clone()).map_err(|e| TlsError::CaFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                exact.push(cert);
            }
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::CaFile { path: PathBuf::new(), reason: e.to_string() })?;
        let seen = Arc::new(Mutex::new(None));
        let verifier = Arc::new(Verifier {
            webpki,
            exact,
            pin: account.fingerprint,
            seen: seen.clone(),
            provider: provider.clone(),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let name = account.tls_server_name.as_deref().unwrap_or(&account.host);
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| TlsError::BadServerName(name.to_string()))?;
        Ok(AccountTls { config: Arc::new(config), server_name, seen })
    }

    /// Turns a failed handshake into a [`TlsError`] in plain words, with
    /// the certificate's fingerprint when the failure was a certificate
    /// refusal.
    pub fn handshake_error(&self, account: &Account, err: std::io::Error) -> TlsError {
        let server = format!("{}:{}", account.host, account.port);
        let seen = *self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let rustls_err = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
        match (rustls_err, account.fingerprint) {
            (Some(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)), Some(pinned)) => {
                TlsError::PinChanged { server, pinned, presented: seen, account: account.name.clone() }
            }
            (Some(rustls::Error::InvalidCertificate(reason)), _) => TlsError::Untrusted {
                server,
                reason: cert_reason(reason),
                fingerprint: seen,
                account: account.name.clone(),
            },
            // The first bytes were not a TLS record: "+OK …" from a
            // plain POP3 port (implicit TLS only, a STARTTLS upgrade was
            // agreed to by the server itself).
            (Some(rustls::Error::InvalidMessage(_)), _) if account.security == Security::Tls => {
                TlsError::NotTls { server }
            }
            (Some(e), _) => TlsError::Handshake { server, reason: handshake_reason(e) },
            (None, _) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                TlsError::Handshake { server, reason: "the server closed the connection during the handshake".into() }
            }
            (None, _) => TlsError::Handshake { server, reason: err.to_string() },
        }
    }
}

fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::CaFile { path: path.to_owned(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// SHA-256 over the DER certificate, the value `openssl x509 -fingerprint
/// -sha256` and mpop's `tls_fingerprint` use.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// WebPKI verification, or a pin that replaces it.
///
/// With a pin, only the exact certificate is accepted, whatever its issuer
/// or names (as mpop's `tls_fingerprint`): the user has said which key this
/// server has. Handshake signatures are still verified, so the server must
/// hold the certificate's private key.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The `ca_file` certificates, each also trusted as exactly itself.
    exact: Vec<CertificateDer<'static>>,
    pin: Option<[u8; 32]>,
    seen: Arc<Mutex<Option<[u8; 32]>>>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    /// The server presented a certificate the user put in `ca_file`
    /// itself: it is its own trust anchor, so no chain is built; what is
    /// left to check is the name and the validity dates. `Err(None)` when
    /// it cannot be parsed (the WebPKI error then explains).
    fn verify_exact(
        &self,
        cert: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, Option<rustls::Error>> {
        let parsed = rustls::server::ParsedCertificate::try_from(cert).map_err(|_| None)?;
        rustls::client::verify_server_name(&parsed, server_name).map_err(Some)?;
        let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| None)?;
        let validity = x509.validity();
        let (from, until) = (validity.not_before.timestamp(), validity.not_after.timestamp());
        let now_secs = now.as_secs() as i64;
        if now_secs < from {
            return Err(Some(rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
                time: now,
                not_before: UnixTime::since_unix_epoch(std::time::Duration::from_secs(from.max(0) as u64)),
            })));
        }
        if now_secs > until {
            return Err(Some(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                time: now,
                not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(until.max(0) as u64)),
            })));
        }
        Ok(ServerCertVerified::assertion())
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp);
        match self.pin {
            Some(pin) if pin == fp => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            None => match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                Ok(v) => Ok(v),
                Err(e) if self.exact.iter().any(|c| c.as_ref() == end_entity.as_ref()) => {
                    self.verify_exact(end_entity, server_name, now).map_err(|exact_err| match exact_err {
                        // Name and dates were fine: WebPKI's reason stands.
                        None => e,
                        Some(why) => why,
                    })
                }
                Err(e) => Err(e),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_message_shows_fingerprint_and_pin_line() {
        let fp = [0xABu8; 32];
        let e = TlsError::Untrusted {
            server: "h:995".into(),
            reason: "UnknownIssuer".into(),
            fingerprint: Some(fp),
            account: "work".into(),
        };
        let s = e.to_string();
        assert!(s.contains("UnknownIssuer") && s.contains("[accounts.work]"), "{s}");
        let changed = TlsError::PinChanged {
            server: "h:995".into(),
            pinned: [1; 32],
            presented: Some(fp),
            account: "work".into(),
        }
        .to_string();
        assert!(changed.starts_with("refusing h:995: the certificate changed since you pinned it"), "{changed}");
        assert!(changed.contains(&format_fingerprint(&[1; 32])) && changed.contains(&format_fingerprint(&fp)));
        assert!(!changed.contains("fingerprint = \""), "no ready-to-paste pin for a changed certificate");
        assert!(s.contains(&format!("fingerprint = \"{}\"", format_fingerprint(&fp))), "{s}");
        assert!(s.contains("nothing was sent"));
    }
}

#[cfg(test)]
mod words {
    use super::*;

    #[test]
    fn reasons_are_words_not_debug_text() {
        let e = CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("127.0.0.1").unwrap(),
            presented: vec!["DnsName(\"localhost\")".into(), "IpAddress(10.0.0.1)".into(), "DirectoryName".into()],
        };
        let s = cert_reason(&e);
        assert_eq!(
            s,
            "it is issued for localhost, 10.0.0.1, not for 127.0.0.1 (connect by one of its names, or set tls_server_name)"
        );
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_795_000_000), "2026-11-18");
    }
}
