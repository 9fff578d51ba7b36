//! The outbound relay: an SMTP submission client (lettre over tokio and
//! rustls/ring) that hands Sieve vacation replies to the site's mail
//! server. pobox never sends mail to the Internet itself.
//!
//! TLS is verified: against the webpki roots, or only the `ca_file`
//! certificates when one is configured. Cleartext (`tls = "none"`) is
//! refused by the config loader unless the relay is on loopback. The
//! password is read from its file at each connection (so a rotated secret
//! needs no restart) and never logged: [`RelayConfig`] holds only the
//! file's path.

use std::path::PathBuf;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    /// Plain SMTP, then `STARTTLS`, required (the submission port, 587).
    StartTls,
    /// TLS from the first byte (implicit TLS, port 465, RFC 8314).
    Tls,
    /// No TLS at all: only to a relay on loopback.
    None,
}

/// `[relay]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Host name or IP address of the relay (also the name its
    /// certificate must carry).
    pub host: String,
    /// Port (587 by default).
    pub port: u16,
    /// TLS mode.
    pub tls: RelayTls,
    /// SMTP AUTH user, with `password_file`.
    pub username: Option<String>,
    /// A file whose first line is the SMTP AUTH password.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates to verify the relay with instead of the webpki
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// The name pobox gives in EHLO (default: `hostname`).
    pub helo: String,
    /// Longest wait for any one step of a submission.
    pub timeout: Duration,
}

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The relay refused for good (5xx): retrying will not help.
    #[error("the relay refused the message: {0}")]
    Permanent(String),
    /// The relay is unreachable, answered 4xx, TLS failed or timed out:
    /// worth retrying later.
    #[error("{0}")]
    Transient(String),
}

/// Submits one message: `from` is the envelope sender (`None`: `<>`).
///
/// # Errors
/// [`SendError::Permanent`] when the relay answered 5xx, else
/// [`SendError::Transient`] (including a bad `ca_file` or password file,
/// which the admin can fix while the message waits).
pub async fn send(
    config: &RelayConfig,
    from: Option<&str>,
    to: &[String],
    message: &[u8],
) -> Result<(), SendError> {
    let transient =
        |what: &str, e: &dyn std::fmt::Display| SendError::Transient(format!("{what}: {e}"));
    let from = match from {
        Some(f) => Some(
            f.parse::<Address>()
                .map_err(|e| SendError::Permanent(format!("envelope sender {f:?}: {e}")))?,
        ),
        None => None,
    };
    let to = to
        .iter()
        .map(|t| {
            t.parse::<Address>()
                .map_err(|e| SendError::Permanent(format!("recipient {t:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let envelope =
        Envelope::new(from, to).map_err(|e| SendError::Permanent(format!("envelope: {e}")))?;
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.clone())
        .port(config.port)
        .hello_name(ClientId::Domain(config.helo.clone()))
        .timeout(Some(config.timeout));
    builder = match config.tls {
        RelayTls::None => builder.tls(Tls::None),
        RelayTls::StartTls => builder.tls(Tls::Required(
            tls_parameters(config).map_err(|e| transient("TLS setup", &e))?,
        )),
        RelayTls::Tls => builder.tls(Tls::Wrapper(
            tls_parameters(config).map_err(|e| transient("TLS setup", &e))?,
        )),
    };
    if let (Some(user), Some(file)) = (&config.username, &config.password_file) {
        let password = read_password(file)
            .map_err(|e| transient(&format!("relay password file {}", file.display()), &e))?;
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    let transport = builder.build();
    // lettre ends DATA with "\r\n.\r\n" itself: the message's own final
    // line end would otherwise become an extra empty line.
    let message = message.strip_suffix(b"\r\n").unwrap_or(message);
    match transport.send_raw(&envelope, message).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
        Err(e) => Err(SendError::Transient(e.to_string())),
    }
}

fn tls_parameters(config: &RelayConfig) -> Result<TlsParameters, String> {
    let mut params = TlsParameters::builder(config.host.clone());
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let cert =
            Certificate::from_pem(&pem).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        params = params
            .certificate_store(CertificateStore::None)
            .add_root_certificate(cert);
    } else {
        params = params.certificate_store(CertificateStore::WebpkiRoots);
    }
    params.build_rustls().map_err(|e| e.to_string())
}

/// The first line of the password file, without its line end.
///
/// # Errors
/// If the file cannot be read or its first line is empty.
pub fn read_password(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the first line is empty",
        ));
    }
    Ok(line.to_owned())
}

/// Checks what can be checked without connecting: the CA file parses and
/// the password file is readable (for `pobox check` and startup).
///
/// # Errors
/// A message naming the key and the problem.
pub fn preflight(config: &RelayConfig) -> Result<(), String> {
    if config.tls != RelayTls::None {
        tls_parameters(config).map_err(|e| format!("relay: {e}"))?;
    }
    if let Some(file) = &config.password_file {
        read_password(file).map_err(|e| format!("relay.password_file {}: {e}", file.display()))?;
    }
    Ok(())
}
