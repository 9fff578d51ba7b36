//! ACME (RFC 8555) end to end: the real `pobox serve` against a real Pebble
//! (Debian's `pebble`, the ACME test server) started here on loopback.
//!
//! Pebble really validates the challenge: its `httpPort`/`tlsPort` point
//! at pobox's HTTP-01 listener and POP3S port, and `localhost` resolves to
//! loopback through the system resolver (no PEBBLE_VA_ALWAYS_VALID). Each
//! test checks issuance, that the certificate served on POP3S verifies
//! against Pebble's issuing root (fetched from its management endpoint
//! `/roots/0`), a forced renewal (`renew_before_days` beyond Pebble's
//! five-year validity and a 2 s check interval) during which an open
//! POP3S session keeps working while new connections get the new
//! certificate, and a restart that reuses the stored account and
//! certificate instead of asking again.
//!
//! Without `pebble` the tests fail naming the package, unless
//! `POBOX_ALLOW_SKIP=1` (util::cannot_run).

#![allow(unreachable_pub)]

#[path = "integration/util.rs"]
#[allow(dead_code)]
mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use sha2::Digest as _;

/// Longest wait for an issuance or renewal (Pebble answers in well under a
/// second with PEBBLE_VA_NOSLEEP; the margin is for a loaded CI machine).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(90);

fn pebble_installed() -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("pebble").is_file()))
}

/// A free loopback port (bound, then released for the process that needs it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Collects a child's output lines on a thread.
fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let mut t = t.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool, dump: impl Fn() -> String) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}\n{}", dump());
        thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed on drop.
struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Proc { child, out, err }
    }
    fn out(&self) -> String {
        self.out.lock().unwrap().clone()
    }
    fn err(&self) -> String {
        util::strip_ansi(&self.err.lock().unwrap())
    }
    fn dump(&self) -> String {
        format!("--- stdout ---\n{}--- stderr ---\n{}", self.out(), self.err())
    }
    /// SIGTERM, then wait (bounded), then SIGKILL.
    fn stop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let start = Instant::now();
            while self.child.try_wait().unwrap().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Pebble {
    proc: Proc,
    directory: String,
    /// The CA that signed Pebble's own HTTPS certificate (pobox's `ca_file`).
    https_ca: PathBuf,
    /// Pebble's issuing root, from `/roots/0`.
    root: CertificateDer<'static>,
}

/// Starts Pebble with its HTTP-01 validation aimed at `http_port` and its
/// TLS-ALPN-01 validation at `tls_port`.
fn start_pebble(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
    // Pebble's HTTPS certificate, from a CA of our own: pobox must verify
    // the ACME server, never skip verification.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pobox test CA for Pebble");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let https_ca = dir.join("pebble-https-ca.pem");
    std::fs::write(&https_ca, ca_cert.pem()).unwrap();
    std::fs::write(dir.join("pebble.crt"), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join("pebble.key"), leaf_key.serialize_pem()).unwrap();

    let (acme_port, mgmt_port) = (free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
        "certificate": dir.join("pebble.crt"),
        "privateKey": dir.join("pebble.key"),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    let config_path = dir.join("pebble.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let proc = Proc::spawn(
        Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            // No random 0-15 s sleeps before validating; no deliberately
            // rejected nonces (retries are instant-acme's, not under test).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order is validated anew, renewals included (Pebble
            // reuses half of the valid authorizations by default).
            .env("PEBBLE_AUTHZREUSE", "0"),
    );
    wait_for(
        "Pebble to listen",
        Duration::from_secs(30),
        || proc.out().contains("ACME directory available") || proc.err().contains("ACME directory available"),
        || proc.dump(),
    );
    // Pebble announces the ACME directory before its management listener
    // is necessarily up (each runs on its own goroutine): wait for that too.
    wait_for(
        "Pebble's management listener",
        Duration::from_secs(30),
        || TcpStream::connect(("127.0.0.1", mgmt_port)).is_ok(),
        || proc.dump(),
    );
    let roots = https_get(mgmt_port, "/roots/0", &https_ca);
    let root = CertificateDer::from_pem_slice(roots.as_bytes()).unwrap_or_else(|e| panic!("/roots/0: {e}\n{roots}"));
    Pebble { proc, directory: format!("https://127.0.0.1:{acme_port}/dir"), https_ca, root }
}

fn client_config(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A verified TLS connection to 127.0.0.1:`port` for the name `localhost`;
/// panics if the certificate does not chain to `roots`.
fn tls_connect(port: u16, roots: &[CertificateDer<'static>]) -> (TlsStream, String) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(util::IO_TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client_config(roots), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap_or_else(|e| panic!("TLS handshake with port {port}: {e}"));
    }
    let leaf = &tls.conn.peer_certificates().unwrap()[0];
    let fp = sha2::Sha256::digest(leaf.as_ref()).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    (tls, fp)
}

fn https_get(port: u16, path: &str, ca: &Path) -> String {
    let ca = CertificateDer::from_pem_file(ca).unwrap();
    let (mut tls, _) = tls_connect(port, &[ca]);
    write!(tls, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    // Go closes after an HTTP/1.0 answer; an EOF without close_notify is
    // still the end of the body.
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "GET {path}: {text}");
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// One POP3 line from a TLS stream.
fn line(tls: &mut TlsStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        tls.read_exact(&mut byte).expect("POP3 reply");
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out).trim_end().to_string()
}

fn cmd(tls: &mut TlsStream, c: &str) -> String {
    write!(tls, "{c}\r\n").unwrap();
    tls.flush().unwrap();
    line(tls)
}

/// The fingerprints of every "ACME certificate installed" log line so far.
fn installed(server: &Proc) -> Vec<String> {
    server
        .err()
        .lines()
        .filter(|l| l.contains("ACME certificate installed"))
        .filter_map(|l| l.split("fingerprint=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").trim_matches('"').to_string())
        .collect()
}

fn start_pobox(dir: &util::Dir, pop3s: u16, acme_table: &str) -> Proc {
    let config = dir.scratch("pobox.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"localhost\"\nauth_failure_delay_ms = 0\nshutdown_grace_secs = 1\n\
             retention = {{ expire_interval_secs = 0 }}\n[acme]\n{acme_table}"
        ),
    )
    .unwrap();
    let server = Proc::spawn(
        Command::new(util::BIN)
            .env_remove("POBOX_DATA")
            .env("POBOX_LOG", "info")
            .arg("--data")
            .arg(dir.data())
            .arg("--config")
            .arg(&config)
            .args(["serve", "--pop3", "127.0.0.1:0", "--pop3s", &format!("127.0.0.1:{pop3s}")])
            .args(["--lmtp", "none", "--smtp", "none"]),
    );
    wait_for("the banner", Duration::from_secs(30), || server.out().contains("  ACME "), || server.dump());
    server
}

fn acme_end_to_end(test: &str, challenge: &str) {
    if !pebble_installed() {
        return util::cannot_run(test, "pebble (Debian `pebble`: apt-get install -y pebble)");
    }
    let dir = util::Dir::new();
    dir.add_user("alice", util::PW);
    dir.deliver("alice", b"Subject: hello\n\nbody\n");
    let (http_port, pop3s) = (free_port(), free_port());
    let pebble = start_pebble(&dir.scratch(""), http_port, pop3s);
    let table = |renew_days: u32| {
        format!(
            "directory = \"{}\"\ncontact = \"postmaster@localhost.example\"\ndomains = [\"localhost\"]\n\
             challenge = \"{challenge}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\nca_file = \"{}\"\n\
             renew_before_days = {renew_days}\ncheck_interval_secs = 2\n",
            pebble.directory,
            pebble.https_ca.display()
        )
    };
    let roots = [pebble.root.clone()];
    let dump = |s: &Proc| format!("{}\n--- pebble ---\n{}", s.dump(), pebble.proc.dump());

    // 1. Issuance at start. Renewal is forced: a certificate counts as due
    // when it expires within 100,000 days, i.e. always.
    let mut server = start_pobox(&dir, pop3s, &table(100_000));
    wait_for("the first certificate", ISSUE_TIMEOUT, || !installed(&server).is_empty(), || dump(&server));
    assert!(server.err().contains("ACME account registered"), "{}", dump(&server));

    // 2. It is served on POP3S and verifies against Pebble's root.
    let (mut old, old_fp) = tls_connect(pop3s, &roots);
    assert!(installed(&server).contains(&old_fp), "served {old_fp}, installed {:?}", installed(&server));
    assert!(line(&mut old).starts_with("+OK"));
    assert!(cmd(&mut old, "USER alice").starts_with("+OK"));
    assert!(cmd(&mut old, &format!("PASS {}", util::PW)).starts_with("+OK"), "{}", dump(&server));

    // 3. Renewal while that session is open: a new certificate is swapped in.
    wait_for(
        "a renewal",
        ISSUE_TIMEOUT,
        || installed(&server).iter().any(|fp| *fp != old_fp),
        || dump(&server),
    );
    // The open session keeps working on its old keys.
    assert!(cmd(&mut old, "STAT").starts_with("+OK 1 "), "{}", dump(&server));
    assert!(cmd(&mut old, "NOOP").starts_with("+OK"));
    // A new connection gets a renewed certificate, still verified.
    let (mut new, new_fp) = tls_connect(pop3s, &roots);
    assert_ne!(new_fp, old_fp, "a new connection after the renewal got the old certificate");
    assert!(installed(&server).contains(&new_fp));
    assert!(line(&mut new).starts_with("+OK"));
    assert!(cmd(&mut new, "QUIT").starts_with("+OK"));
    assert!(cmd(&mut old, "QUIT").starts_with("+OK"));

    // Nothing secret in the log.
    let log = server.err();
    assert!(!log.contains("PRIVATE KEY") && !log.contains("key_pkcs8"), "key material logged\n{log}");
    server.stop();

    // 4. Files: DATA/acme 0700, key and account 0600.
    let acme = dir.data().join("acme");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&acme), 0o700);
    assert_eq!(mode(&acme.join("key.pem")), 0o600);
    let accounts: Vec<PathBuf> = std::fs::read_dir(&acme)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("account-"))
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(mode(&accounts[0]), 0o600);
    let account_before = std::fs::read(&accounts[0]).unwrap();
    let last_fp = installed(&server).last().unwrap().clone();

    // 5. Restart with the default renewal window: the stored certificate is
    // served from the first handshake, nothing is requested or registered.
    let server = start_pobox(&dir, pop3s, &table(30));
    assert!(server.out().contains(&format!("certificate {last_fp}")), "{}", dump(&server));
    let (mut again, fp) = tls_connect(pop3s, &roots);
    assert_eq!(fp, last_fp);
    assert!(line(&mut again).starts_with("+OK"));
    thread::sleep(Duration::from_secs(3)); // past one check interval
    assert!(installed(&server).is_empty(), "renewed although not due\n{}", dump(&server));
    assert!(!server.err().contains("ACME account registered"), "{}", dump(&server));
    assert_eq!(std::fs::read(&accounts[0]).unwrap(), account_before, "the account was not reused");
    // Pebble validated a challenge for the issuance and again for the
    // renewal (authorization reuse is off).
    let validations = pebble.proc.out().matches("set VALID by completed challenge").count();
    assert!(validations >= 2, "Pebble validated {validations} challenge(s)\n{}", pebble.proc.dump());
}

/// Pebble's validation cannot reach pobox (its HTTP-01 port points at a
/// closed port): the failure is logged, retried with backoff, and the
/// generated certificate stays in service.
#[test]
fn acme_failure_is_logged_and_retried_while_the_self_signed_certificate_is_served() {
    let test = "acme_failure_is_logged_and_retried_while_the_self_signed_certificate_is_served";
    if !pebble_installed() {
        return util::cannot_run(test, "pebble (Debian `pebble`: apt-get install -y pebble)");
    }
    let dir = util::Dir::new();
    let (closed, http_port, pop3s) = (free_port(), free_port(), free_port());
    let pebble = start_pebble(&dir.scratch(""), closed, pop3s);
    let table = format!(
        "directory = \"{}\"\ndomains = [\"localhost\"]\nhttp_listen = \"127.0.0.1:{http_port}\"\n\
         ca_file = \"{}\"\ncheck_interval_secs = 2\n",
        pebble.directory,
        pebble.https_ca.display()
    );
    let server = start_pobox(&dir, pop3s, &table);
    assert!(server.out().contains("requesting a certificate"), "{}", server.dump());
    wait_for(
        "a second failed attempt",
        ISSUE_TIMEOUT,
        || server.err().contains("attempt=2"),
        || format!("{}\n--- pebble ---\n{}", server.dump(), pebble.proc.dump()),
    );
    let log = server.err();
    let failure = log.lines().find(|l| l.contains("ACME: no certificate obtained")).unwrap();
    assert!(failure.contains("WARN") && failure.contains("retry_in_secs=2"), "{failure}");
    assert!(installed(&server).is_empty());
    // Still serving the generated certificate, which verifies as itself.
    let generated = CertificateDer::from_pem_file(dir.cert()).unwrap();
    let (mut tls, fp) = tls_connect(pop3s, &[generated]);
    assert!(server.out().contains(&fp), "not the generated certificate\n{}", server.dump());
    assert!(line(&mut tls).starts_with("+OK"));
}

#[test]
fn acme_http_01_issue_serve_renew_without_dropping_a_session_and_reuse_after_restart() {
    acme_end_to_end("acme_http_01_issue_serve_renew_without_dropping_a_session_and_reuse_after_restart", "http-01");
}

#[test]
fn acme_tls_alpn_01_issue_serve_renew_without_dropping_a_session_and_reuse_after_restart() {
    acme_end_to_end(
        "acme_tls_alpn_01_issue_serve_renew_without_dropping_a_session_and_reuse_after_restart",
        "tls-alpn-01",
    );
}

/// `[autoconfig]` listening on ACME's `http_listen` (both want port 80):
/// the autoconfig listener takes over the HTTP-01 socket, Pebble's
/// validation through it succeeds, and the same port serves the
/// autoconfig documents.
#[test]
fn acme_http_01_is_answered_by_an_autoconfig_listener_on_the_same_port() {
    let test = "acme_http_01_is_answered_by_an_autoconfig_listener_on_the_same_port";
    if !pebble_installed() {
        return util::cannot_run(test, "pebble (Debian `pebble`: apt-get install -y pebble)");
    }
    let dir = util::Dir::new();
    let (http_port, pop3s) = (free_port(), free_port());
    let pebble = start_pebble(&dir.scratch(""), http_port, pop3s);
    let table = format!(
        "directory = \"{}\"\ndomains = [\"localhost\"]\nhttp_listen = \"127.0.0.1:{http_port}\"\nca_file = \"{}\"\n\
         [autoconfig]\nlisten = [\"127.0.0.1:{http_port}\"]\n",
        pebble.directory,
        pebble.https_ca.display()
    );
    let server = start_pobox(&dir, pop3s, &table);
    let dump = || format!("{}\n--- pebble ---\n{}", server.dump(), pebble.proc.dump());
    assert!(server.out().contains(&format!("autoconfig   http://127.0.0.1:{http_port}/")), "{}", dump());
    wait_for("the certificate", ISSUE_TIMEOUT, || !installed(&server).is_empty(), dump);
    let mut s = TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /mail/config-v1.1.xml HTTP/1.1\r\nHost: autoconfig.localhost\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains(&format!("<port>{pop3s}</port>")), "{reply}");
}
