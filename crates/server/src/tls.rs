//! TLS for POP3S (port 995) and STLS: a rustls server configuration with
//! TLS 1.2 and 1.3 only (RFC 8996), built from the configured certificate
//! or from a self-signed one that the first start generates.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("cannot load certificate {path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("cannot load private key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
    /// Writing the generated certificate failed.
    #[error("cannot write generated certificate into {path}: {source}")]
    Write {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// rcgen failed to generate a key or certificate.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// A loaded certificate, ready to accept connections.
#[derive(Clone)]
pub struct Tls {
    /// The acceptor shared by all listeners.
    pub acceptor: TlsAcceptor,
    /// SHA-256 fingerprint of the leaf certificate, `AA:BB:...`.
    pub fingerprint: String,
    /// The certificate file in use.
    pub cert_path: PathBuf,
    /// True if this start generated the certificate.
    pub generated: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("fingerprint", &self.fingerprint)
            .field("cert_path", &self.cert_path)
            .finish()
    }
}

/// Loads `cert`/`key` if given; otherwise uses `<tls_dir>/cert.pem` and
/// `<tls_dir>/key.pem`, generating a self-signed pair for `hostname` there
/// on first use.
///
/// # Errors
/// A [`TlsError`] naming the file that could not be used.
pub fn load_or_generate(
    tls_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    hostname: &str,
) -> Result<Tls, TlsError> {
    let (cert_path, key_path, generated) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), false),
        _ => {
            let c = tls_dir.join("cert.pem");
            let k = tls_dir.join("key.pem");
            let generated = if c.exists() && k.exists() {
                false
            } else {
                generate(tls_dir, &c, &k, hostname)?;
                true
            };
            (c, k, generated)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate { path: cert_path.clone(), reason: e.to_string() })?;
    let Some(leaf) = certs.first() else {
        return Err(TlsError::Certificate {
            path: cert_path,
            reason: "no PEM certificate in the file".into(),
        });
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| TlsError::Key { path: key_path.clone(), reason: e.to_string() })?;
    let config = server_config(certs, key)?;
    Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), fingerprint, cert_path, generated })
}

/// A rustls server config with the ring provider and TLS 1.2 + 1.3 only.
///
/// # Errors
/// If rustls rejects the certificate/key pair.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(config)
}

/// The SHA-256 fingerprint of a certificate as colon-separated upper hex,
/// the form `openssl x509 -fingerprint -sha256` prints.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path, hostname: &str) -> Result<(), TlsError> {
    let mut names = vec![hostname.to_string()];
    if hostname != "localhost" {
        names.push("localhost".into());
    }
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let write_err = |source| TlsError::Write { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(write_err)?;
    write_private(key_path, certified.signing_key.serialize_pem().as_bytes()).map_err(write_err)?;
    write_private(cert_path, certified.cert.pem().as_bytes()).map_err(write_err)?;
    Ok(())
}

/// Writes a file readable by its owner only (0600): the key must never be
/// world-readable, even for an instant.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_generates_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate(dir.path(), None, None, "mail.example.org").unwrap();
        assert!(a.generated);
        let b = load_or_generate(dir.path(), None, None, "mail.example.org").unwrap();
        assert!(!b.generated);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key must not be group/world readable");
    }

    #[test]
    fn garbage_certificate_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c.pem");
        let k = dir.path().join("k.pem");
        std::fs::write(&c, "not a cert").unwrap();
        std::fs::write(&k, "not a key").unwrap();
        let err = load_or_generate(dir.path(), Some(&c), Some(&k), "x").unwrap_err();
        assert!(err.to_string().contains("c.pem"), "{err}");
    }
}
