//! TLS for the fetcher: rustls with the ring provider, verifying the server
//! against Mozilla's roots (webpki-roots) plus an account's `ca_file`, or
//! against a SHA-256 pin of its certificate.
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
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::config::{format_fingerprint, Account};

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
        /// rustls' reason (unknown issuer, name mismatch, pin mismatch…).
        reason: String,
        /// SHA-256 of the certificate the server presented, if it presented one.
        fingerprint: Option<[u8; 32]>,
        /// The account, for the pinning hint.
        account: String,
    },
    /// The handshake failed for another reason (protocol, I/O).
    #[error("TLS handshake with {server} failed: {source}")]
    Handshake {
        /// `host:port`.
        server: String,
        /// The error.
        source: std::io::Error,
    },
}

fn refusal_text(server: &str, reason: &str, fp: Option<&[u8; 32]>, account: &str) -> String {
    match fp {
        Some(fp) => format!(
            "refusing {server}: its TLS certificate is not trusted ({reason}); nothing was sent.\n  \
             certificate SHA-256 fingerprint: {fp}\n  \
             if you have checked that this is your server's certificate (for example with the \
             fingerprint `pobox serve` printed), pin it in [accounts.{account}]:\n    \
             fingerprint = \"{fp}\"",
            fp = format_fingerprint(fp)
        ),
        None => format!("refusing {server}: TLS certificate not trusted ({reason}); nothing was sent"),
    }
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
        if let Some(path) = &account.ca_file {
            for cert in load_pem_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::CaFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::CaFile { path: PathBuf::new(), reason: e.to_string() })?;
        let seen = Arc::new(Mutex::new(None));
        let verifier = Arc::new(Verifier {
            webpki,
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

    /// Turns a failed handshake into a [`TlsError`], with the certificate's
    /// fingerprint when the failure was a certificate refusal.
    pub fn handshake_error(&self, account: &Account, err: std::io::Error) -> TlsError {
        let server = format!("{}:{}", account.host, account.port);
        let rustls_err = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
        match rustls_err {
            Some(rustls::Error::InvalidCertificate(reason)) => TlsError::Untrusted {
                server,
                reason: format!("{reason:?}"),
                fingerprint: *self.seen.lock().unwrap_or_else(|p| p.into_inner()),
                account: account.name.clone(),
            },
            _ => TlsError::Handshake { server, source: err },
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
    pin: Option<[u8; 32]>,
    seen: Arc<Mutex<Option<[u8; 32]>>>,
    provider: Arc<CryptoProvider>,
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
            None => self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
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
        assert!(s.contains(&format!("fingerprint = \"{}\"", format_fingerprint(&fp))), "{s}");
        assert!(s.contains("nothing was sent"));
    }
}
