//! TLS for POP3S (port 995) and STLS: rustls with TLS 1.2 and 1.3 only
//! (RFC 8996), several certificates chosen by SNI (RFC 6066 §3; RFC 7817
//! asks mail servers to present the name the client configured), hot reload
//! without dropping sessions, and ALPN `pop3` when the client asks for it.
//!
//! # Reload
//!
//! Handshakes ask [`CertStore`] (a `ResolvesServerCert`) for a certificate;
//! it reads an `ArcSwap` of the loaded set, so replacing the set affects new
//! handshakes only and never touches running sessions (they keep their
//! already negotiated keys). [`Tls::reload`] re-reads every configured pair
//! and swaps only if *all* load and each key matches its certificate; on any
//! error the old set stays and the error is logged. [`reload_task`] calls it
//! when a file's mtime/size/inode changes (polled: certbot's renewals
//! replace symlinks, which inotify handles badly); on SIGHUP `pobox serve`
//! reloads its whole configuration, certificates included.
//!
//! # ALPN
//!
//! The ClientHello is read first ([`tokio_rustls::LazyConfigAcceptor`]). A
//! client that offers `pop3` gets it selected; a client that offers no ALPN,
//! or only other protocols, is served without ALPN, because rustls would
//! otherwise abort with `no_application_protocol` and POP3 clients that
//! send e.g. `http/1.1` by library default would be refused.
//!
//! # ACME
//!
//! [`CertStore`] also holds the certificate obtained by [`crate::acme`] in
//! its own `ArcSwap` slot, swapped the same way. It is served when the
//! client sends no SNI, names one of its domains, or names something no
//! configured certificate covers; a name only a configured certificate
//! covers still gets that one. A ClientHello offering ALPN `acme-tls/1`
//! (RFC 8737) gets the pending challenge certificate for its SNI name and
//! nothing else; that connection ends after the handshake.
//!
//! # Channel binding
//!
//! [`channel_bindings`] gives SCRAM-SHA-256-PLUS the RFC 9266
//! `tls-exporter` value (TLS 1.3 only) and the RFC 5929 `tls-server-end-point`
//! hash of the certificate the connection's SNI selects.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use pobox_auth::scram::ChannelBindings;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

/// The ALPN protocol id for POP3 (IANA "TLS ALPN Protocol IDs" registry).
pub const ALPN_POP3: &[u8] = b"pop3";

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
    /// The key in `key` is not the key of the certificate in `cert`.
    #[error("private key {key} does not belong to certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
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
    /// No certificate configured.
    #[error("no certificate configured")]
    Empty,
}

/// A certificate/key file pair from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// One loaded certificate.
#[derive(Debug)]
pub struct LoadedCert {
    /// Where it came from.
    pub pair: CertPair,
    /// DNS names (SAN, else subject CN), lower case; may start with `*.`.
    pub names: Vec<String>,
    /// SHA-256 fingerprint, `AA:BB:...`.
    pub fingerprint: String,
    /// End of validity.
    pub not_after: SystemTime,
    /// RFC 5929 `tls-server-end-point` value for this certificate.
    pub end_point: Option<Vec<u8>>,
    key: Arc<CertifiedKey>,
}

/// The set of certificates in use; the first one is the default (no SNI or
/// no name matched).
#[derive(Debug, Default)]
pub struct CertSet {
    /// In configuration order.
    pub certs: Vec<LoadedCert>,
    /// File stamps at load time, to notice changes.
    stamps: Vec<FileStamp>,
}

impl CertSet {
    /// The certificate for `sni` (exact name, then wildcard one label deep),
    /// else the first.
    pub fn select(&self, sni: Option<&str>) -> Option<&LoadedCert> {
        self.find(sni).or_else(|| self.certs.first())
    }

    /// The certificate whose names cover `sni` (exact, then wildcard), if any.
    fn find(&self, sni: Option<&str>) -> Option<&LoadedCert> {
        let name = sni?.to_ascii_lowercase();
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        for wanted in std::iter::once(Some(name)).chain(std::iter::once(wildcard)).flatten() {
            if let Some(c) = self.certs.iter().find(|c| c.names.contains(&wanted)) {
                return Some(c);
            }
        }
        None
    }
}

/// The rustls certificate resolver over a swappable [`CertSet`].
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwap<CertSet>,
    /// The ACME certificate, once one is obtained (see the module docs).
    acme: ArcSwapOption<LoadedCert>,
    /// Pending ACME challenges (TLS-ALPN-01 certificates, HTTP-01 tokens).
    challenges: Arc<crate::acme::Challenges>,
}

impl CertStore {
    /// The set in use now.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }

    /// The ACME certificate in use, if any.
    pub fn acme(&self) -> Option<Arc<LoadedCert>> {
        self.acme.load_full()
    }

    /// Swaps in a new ACME certificate for new handshakes; running sessions
    /// keep theirs.
    pub fn set_acme(&self, cert: LoadedCert) {
        self.acme.store(Some(Arc::new(cert)));
    }

    /// The pending ACME challenges.
    pub fn challenges(&self) -> Arc<crate::acme::Challenges> {
        Arc::clone(&self.challenges)
    }

    /// Applies `f` to the certificate a handshake with `sni` gets.
    fn with_selected<R>(&self, sni: Option<&str>, f: impl FnOnce(&LoadedCert) -> R) -> Option<R> {
        let set = self.current.load();
        if let Some(acme) = self.acme.load().as_deref() {
            let covers = |name: &str| {
                let name = name.to_ascii_lowercase();
                let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
                acme.names.contains(&name) || wildcard.is_some_and(|w| acme.names.contains(&w))
            };
            if sni.is_none_or(|n| covers(n) || set.find(Some(n)).is_none()) {
                return Some(f(acme));
            }
        }
        set.select(sni).map(f)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme_validation = hello.alpn().is_some_and(|mut p| p.any(|p| p == crate::acme::ALPN_ACME_TLS));
        if acme_validation {
            // RFC 8737 §3: only the challenge certificate, never a real one.
            return hello.server_name().and_then(|name| self.challenges.tls_certificate(name));
        }
        self.with_selected(hello.server_name(), |c| Arc::clone(&c.key))
    }
}

/// TLS, ready to accept connections. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    /// The resolver all handshakes use.
    pub store: Arc<CertStore>,
    /// Config used when the client offers ALPN `pop3`.
    with_alpn: Arc<ServerConfig>,
    /// Config used otherwise.
    without_alpn: Arc<ServerConfig>,
    /// Config for ACME TLS-ALPN-01 validation handshakes.
    acme_validation: Arc<ServerConfig>,
    /// SHA-256 fingerprint of the default certificate at startup.
    pub fingerprint: String,
    /// The default certificate file.
    pub cert_path: PathBuf,
    /// True if this start generated the certificate.
    pub generated: bool,
    pairs: Vec<CertPair>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("fingerprint", &self.fingerprint)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads every pair (the first is the default certificate).
    ///
    /// # Errors
    /// A [`TlsError`] naming the file that could not be used.
    pub fn load(pairs: Vec<CertPair>) -> Result<Tls, TlsError> {
        let set = load_set(&pairs)?;
        let fingerprint = set.certs[0].fingerprint.clone();
        let cert_path = pairs[0].cert.clone();
        let store = Arc::new(CertStore { current: ArcSwap::from_pointee(set), ..CertStore::default() });
        let without = server_config_with(store.clone())?;
        let mut with = without.clone();
        with.alpn_protocols = vec![ALPN_POP3.to_vec()];
        let mut acme_validation = without.clone();
        acme_validation.alpn_protocols = vec![crate::acme::ALPN_ACME_TLS.to_vec()];
        Ok(Tls {
            store,
            with_alpn: Arc::new(with),
            without_alpn: Arc::new(without),
            acme_validation: Arc::new(acme_validation),
            fingerprint,
            cert_path,
            generated: false,
            pairs,
        })
    }

    /// The configured pairs.
    pub fn pairs(&self) -> &[CertPair] {
        &self.pairs
    }

    /// Runs the TLS handshake on `tcp`, selecting ALPN `pop3` only when the
    /// client offers it (see the module docs).
    ///
    /// # Errors
    /// The handshake's I/O or TLS error.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let offers = |wanted: &[u8]| start.client_hello().alpn().is_some_and(|mut protocols| protocols.any(|p| p == wanted));
        if offers(crate::acme::ALPN_ACME_TLS) {
            // An ACME server validating TLS-ALPN-01: the handshake is the
            // whole answer (RFC 8737 §3); no POP3 follows.
            use tokio::io::AsyncWriteExt as _;
            let mut stream = start.into_stream(Arc::clone(&self.acme_validation)).await?;
            let _ = stream.shutdown().await;
            return Err(io::Error::other("ACME tls-alpn-01 validation handshake answered"));
        }
        let config = if offers(ALPN_POP3) { &self.with_alpn } else { &self.without_alpn };
        start.into_stream(Arc::clone(config)).await
    }

    /// True when a certificate or key file changed since the set in use
    /// was loaded.
    pub fn files_changed(&self) -> bool {
        let set = self.store.current();
        stamps(&self.pairs) != set.stamps
    }

    /// Re-reads every pair and swaps the set in if all of them load. Running
    /// sessions are not affected. Returns the new default fingerprint.
    ///
    /// # Errors
    /// The first failure; the old set stays in use.
    pub fn reload(&self) -> Result<String, TlsError> {
        let set = load_set(&self.pairs)?;
        let fingerprint = set.certs[0].fingerprint.clone();
        self.store.current.store(Arc::new(set));
        Ok(fingerprint)
    }
}

/// Reloads `tls` every `poll` when a file changed (zero: never; a SIGHUP
/// configuration reload in `pobox serve` re-reads the files). Runs until
/// the task is dropped.
pub async fn reload_task(tls: Tls, poll: Duration) {
    if poll.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if !tls.files_changed() {
            continue;
        }
        let why = "file change";
        let t = tls.clone();
        match tokio::task::spawn_blocking(move || t.reload()).await {
            Ok(Ok(fp)) => info!(reason = %why, fingerprint = %fp, "TLS certificates reloaded"),
            Ok(Err(e)) => warn!(reason = %why, error = %e, "TLS reload failed; keeping the certificates in use"),
            Err(e) => warn!(error = %e, "TLS reload task failed"),
        }
    }
}

/// Channel-binding data of an established TLS connection.
pub fn channel_bindings(conn: &ServerConnection, store: &CertStore) -> ChannelBindings {
    // RFC 9266 §2: 32 bytes, label "EXPORTER-Channel-Binding", no context.
    // Only for TLS 1.3 (RFC 9266 §3: TLS 1.2 needs extended master secret).
    let tls_exporter = (conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3))
        .then(|| conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None).ok())
        .flatten()
        .map(|k| k.to_vec());
    let tls_server_end_point = store.with_selected(conn.server_name(), |c| c.end_point.clone()).flatten();
    ChannelBindings { tls_exporter, tls_server_end_point }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp(Option<(u64, u64, SystemTime)>);

fn stamps(pairs: &[CertPair]) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    pairs
        .iter()
        .flat_map(|p| [&p.cert, &p.key])
        .map(|path| FileStamp(std::fs::metadata(path).ok().map(|m| (m.ino(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))))
        .collect()
}

fn load_set(pairs: &[CertPair]) -> Result<CertSet, TlsError> {
    if pairs.is_empty() {
        return Err(TlsError::Empty);
    }
    // Stamp before reading: a change during the read is seen next poll.
    let stamps = stamps(pairs);
    let certs = pairs.iter().map(load_one).collect::<Result<Vec<_>, _>>()?;
    Ok(CertSet { certs, stamps })
}

/// Loads and checks one pair: PEM parse, key matches certificate, names.
///
/// # Errors
/// A [`TlsError`] naming the file.
pub fn load_one(pair: &CertPair) -> Result<LoadedCert, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate { path: pair.cert.clone(), reason: e.to_string() })?;
    let Some(leaf) = certs.first().cloned() else {
        return Err(TlsError::Certificate {
            path: pair.cert.clone(),
            reason: "no PEM certificate in the file".into(),
        });
    };
    let key = PrivateKeyDer::from_pem_file(&pair.key)
        .map_err(|e| TlsError::Key { path: pair.key.clone(), reason: e.to_string() })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key { path: pair.key.clone(), reason: e.to_string() })?;
    let certified = CertifiedKey::new(certs, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(TlsError::KeyMismatch { cert: pair.cert.clone(), key: pair.key.clone() }),
    }
    let info = inspect(&leaf).map_err(|reason| TlsError::Certificate { path: pair.cert.clone(), reason })?;
    Ok(LoadedCert {
        pair: pair.clone(),
        names: info.names,
        fingerprint: fingerprint(&leaf),
        not_after: info.not_after,
        end_point: info.end_point,
        key: Arc::new(certified),
    })
}

struct CertInfo {
    names: Vec<String>,
    not_after: SystemTime,
    end_point: Option<Vec<u8>>,
}

fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let secs = cert.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    // RFC 5929 §4.1: hash with the certificate's signature hash, SHA-256
    // when that is MD5 or SHA-1; undefined for other algorithms (Ed25519).
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let end_point = match oid.as_str() {
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Some(Sha384::digest(der.as_ref()).to_vec()),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Some(Sha512::digest(der.as_ref()).to_vec()),
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.4" | "1.2.840.10045.4.1" => Some(Sha256::digest(der.as_ref()).to_vec()),
        _ => None,
    };
    Ok(CertInfo { names, not_after, end_point })
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
    let extra = match (cert, key) {
        (Some(c), Some(k)) => vec![CertPair { cert: c.to_path_buf(), key: k.to_path_buf() }],
        _ => Vec::new(),
    };
    load_or_generate_many(tls_dir, extra, hostname, &[])
}

/// Like [`load_or_generate`] with a list of pairs: an empty list means the
/// generated self-signed certificate, which names `hostname`, `localhost`,
/// the loopback addresses and `listen_ips` (see [`generated_names`]).
///
/// # Errors
/// A [`TlsError`] naming the file that could not be used.
pub fn load_or_generate_many(
    tls_dir: &Path,
    pairs: Vec<CertPair>,
    hostname: &str,
    listen_ips: &[IpAddr],
) -> Result<Tls, TlsError> {
    if !pairs.is_empty() {
        return Tls::load(pairs);
    }
    let c = tls_dir.join("cert.pem");
    let k = tls_dir.join("key.pem");
    let generated = if c.exists() && k.exists() {
        false
    } else {
        generate(tls_dir, &c, &k, hostname, listen_ips)?;
        true
    };
    let mut tls = Tls::load(vec![CertPair { cert: c, key: k }])?;
    tls.generated = generated;
    Ok(tls)
}

/// A rustls server config with the ring provider, TLS 1.2 + 1.3 only, and
/// the given certificate resolver.
///
/// # Errors
/// If rustls rejects the protocol versions (it does not for ring).
pub fn server_config_with(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    Ok(config)
}

/// A rustls server config with the ring provider and TLS 1.2 + 1.3 only,
/// for a single certificate.
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

/// The addresses the generated certificate should name for `listeners`:
/// each specified one, and for a wildcard (0.0.0.0 or ::) the addresses of
/// the machine's interfaces, since clients reach a wildcard listener by any
/// of them.
#[must_use]
pub fn certificate_ips(listeners: &[std::net::SocketAddr]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = listeners.iter().map(std::net::SocketAddr::ip).filter(|ip| !ip.is_unspecified()).collect();
    if listeners.iter().any(|a| a.ip().is_unspecified())
        && let Ok(addrs) = nix::ifaddrs::getifaddrs()
    {
        for ifa in addrs {
            let Some(sa) = ifa.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                // Link-local addresses need a scope id no certificate can name.
                let ip = v6.ip();
                if ip.segments()[0] & 0xffc0 == 0xfe80 {
                    continue;
                }
                IpAddr::V6(ip)
            } else {
                continue;
            };
            ips.push(ip);
        }
    }
    ips.sort();
    ips.dedup();
    ips
}

/// What the generated certificate is valid for: `hostname` (also its
/// subject CN, which is what Thunderbird and Outlook show the user),
/// `localhost`, 127.0.0.1, ::1, and every address a listener is bound to
/// (an unspecified listener address stands for the machine's own
/// addresses, which the caller expands). Clients that connect by IP then
/// see a name match instead of a second warning.
#[must_use]
pub fn generated_names(hostname: &str, listen_ips: &[IpAddr]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec![hostname.to_ascii_lowercase()];
    if !dns.iter().any(|n| n == "localhost") {
        dns.push("localhost".into());
    }
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)];
    for ip in listen_ips {
        if !ip.is_unspecified() && !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    (dns, ips)
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path, hostname: &str, listen_ips: &[IpAddr]) -> Result<(), TlsError> {
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let (dns, ips) = generated_names(hostname, listen_ips);
    let mut params = rcgen::CertificateParams::new(dns).map_err(gen_err)?;
    params.subject_alt_names.extend(ips.into_iter().map(rcgen::SanType::IpAddress));
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, hostname);
    subject.push(rcgen::DnType::OrganizationName, "pobox (self-signed)");
    params.distinguished_name = subject;
    let signing_key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let cert = params.self_signed(&signing_key).map_err(gen_err)?;
    let write_err = |source| TlsError::Write { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(write_err)?;
    write_mode(key_path, signing_key.serialize_pem().as_bytes(), 0o600).map_err(write_err)?;
    // The certificate is public: anyone may pass it to `curl --cacert` or
    // import it into a client.
    write_mode(cert_path, cert.pem().as_bytes(), 0o644).map_err(write_err)?;
    Ok(())
}

/// Writes a file created with `mode` from the start: the key must never be
/// group- or world-readable, even for an instant.
fn write_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    // The umask may have narrowed a public file's mode; set it exactly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, names: &[&str]) -> CertPair {
        let certified = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let pair = CertPair { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
        std::fs::write(&pair.cert, certified.cert.pem()).unwrap();
        std::fs::write(&pair.key, certified.signing_key.serialize_pem()).unwrap();
        pair
    }

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
        let mode = std::fs::metadata(dir.path().join("cert.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "the certificate is public");
    }

    #[test]
    fn generated_certificate_names_host_loopback_and_listeners() {
        use x509_parser::extensions::GeneralName;
        let dir = tempfile::tempdir().unwrap();
        let listen: [IpAddr; 3] = ["0.0.0.0".parse().unwrap(), "192.0.2.10".parse().unwrap(), "2001:db8::5".parse().unwrap()];
        let tls = load_or_generate_many(dir.path(), Vec::new(), "Mail.Example.org", &listen).unwrap();
        assert!(tls.generated);
        let pem = std::fs::read(dir.path().join("cert.pem")).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let cn: Vec<_> = cert.subject().iter_common_name().map(|a| a.as_str().unwrap().to_owned()).collect();
        assert_eq!(cn, ["Mail.Example.org"]);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                GeneralName::IPAddress(b) => ips.push(match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
                }),
                _ => {}
            }
        }
        assert_eq!(dns, ["mail.example.org", "localhost"]);
        let want: Vec<IpAddr> = ["127.0.0.1", "::1", "192.0.2.10", "2001:db8::5"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(ips, want, "loopback and every specified listener address, never 0.0.0.0");
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

    #[test]
    fn sni_selects_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a", &["mail.a.example"]);
        let b = write_pair(dir.path(), "b", &["*.b.example", "b.example"]);
        let tls = Tls::load(vec![a, b]).unwrap();
        let set = tls.store.current();
        let pick = |sni: Option<&str>| set.select(sni).unwrap().pair.cert.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(pick(Some("MAIL.A.EXAMPLE")), "a.crt");
        assert_eq!(pick(Some("pop.b.example")), "b.crt");
        assert_eq!(pick(Some("b.example")), "b.crt");
        assert_eq!(pick(Some("x.y.b.example")), "a.crt", "wildcards cover one label");
        assert_eq!(pick(None), "a.crt");
        assert!(set.certs[0].end_point.as_ref().is_some_and(|h| h.len() == 32));
    }

    #[test]
    fn acme_certificate_is_the_default_but_never_shadows_a_configured_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a", &["mail.a.example"]);
        let acme = write_pair(dir.path(), "acme", &["mail.b.example"]);
        let tls = Tls::load(vec![a]).unwrap();
        let pick = |sni: Option<&str>| {
            tls.store.with_selected(sni, |c| c.pair.cert.file_name().unwrap().to_str().unwrap().to_owned()).unwrap()
        };
        assert_eq!(pick(None), "a.crt");
        tls.store.set_acme(load_one(&acme).unwrap());
        assert_eq!(pick(None), "acme.crt", "no SNI: the ACME certificate");
        assert_eq!(pick(Some("MAIL.B.example")), "acme.crt");
        assert_eq!(pick(Some("other.example")), "acme.crt", "a name nobody covers");
        assert_eq!(pick(Some("mail.a.example")), "a.crt", "a configured certificate keeps its names");
    }

    #[test]
    fn key_mismatch_is_detected_and_reload_keeps_the_old_set() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a", &["a.example"]);
        let b = write_pair(dir.path(), "b", &["b.example"]);
        let mixed = CertPair { cert: a.cert.clone(), key: b.key.clone() };
        assert!(matches!(load_one(&mixed), Err(TlsError::KeyMismatch { .. })));

        let tls = Tls::load(vec![a.clone()]).unwrap();
        let before = tls.store.current().certs[0].fingerprint.clone();
        assert!(!tls.files_changed());
        // A half-written renewal: new key, old certificate.
        std::fs::copy(&b.key, &a.key).unwrap();
        assert!(tls.files_changed());
        assert!(tls.reload().is_err());
        assert_eq!(tls.store.current().certs[0].fingerprint, before);
        // The certificate arrives too: reload succeeds.
        std::fs::copy(&b.cert, &a.cert).unwrap();
        let after = tls.reload().unwrap();
        assert_ne!(after, before);
        assert!(!tls.files_changed());
    }
}
