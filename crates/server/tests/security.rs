//! Security behaviour of the real server over real sockets: SCRAM with TLS
//! channel binding, OAuth bearer tokens against a local JWKS, user
//! enumeration, STARTTLS command injection, certificate reload under a live
//! session, per-IP connection limits and the credential cache.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use pobox_auth::UserDb;
use pobox_auth::oauth::OAuthConfig;
use pobox_auth::scram::ScramClient;
use pobox_server::tls::CertPair;
use pobox_server::{Config, Protocol, Services, Tls};
use pobox_store::{MailLocation, Mailstore, MaildirStore};
use ring::signature::{self, KeyPair as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

mod support;

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "pop.example";

struct Server {
    /// Before the directory: stopped before it is removed.
    _server: support::Running,
    pop3: String,
    pop3s: String,
    svc: Arc<Services>,
    dir: tempfile::TempDir,
}

fn write_cert(dir: &Path, name: &str) -> CertPair {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pair = CertPair { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    std::fs::write(&pair.cert, c.cert.pem()).unwrap();
    std::fs::write(&pair.key, c.signing_key.serialize_pem()).unwrap();
    pair
}

/// alice/pw with argon2 + SCRAM (via `add`), a message for alice.
fn start(config: Config) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let users = UserDb::open(dir.path().join("users"));
    users.add("alice", b"pw").unwrap();
    let location = MailLocation::new(format!("{}/mail/{{user}}", dir.path().display())).unwrap();
    let store = MaildirStore::new(location);
    store.deliver("alice", &mut &b"Subject: one\n\nbody\n"[..]).unwrap();
    let pair = write_cert(dir.path(), "server");
    let tls = Tls::load(vec![pair]).unwrap();
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(store), Some(tls)));
    let server = support::spawn(svc.clone(), &[Protocol::Pop3, Protocol::Pop3s]);
    let (pop3, pop3s) = (server.addrs[0].clone(), server.addrs[1].clone());
    Server { _server: server, pop3, pop3s, svc, dir }
}

fn fast() -> Config {
    Config { auth_failure_delay: Duration::ZERO, ..Config::default() }
}

/// A line-oriented client over any stream.
struct Client<S: Read + Write> {
    s: BufReader<S>,
}

impl<S: Read + Write> Client<S> {
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.s.read_line(&mut l).unwrap();
        l
    }
    fn cmd(&mut self, c: &str) -> String {
        self.s.get_mut().write_all(format!("{c}\r\n").as_bytes()).unwrap();
        self.s.get_mut().flush().unwrap();
        self.line()
    }
    fn multi(&mut self, c: &str) -> Vec<String> {
        let first = self.cmd(c);
        assert!(first.starts_with("+OK"), "{c}: {first}");
        let mut out = Vec::new();
        loop {
            let l = self.line();
            if l == ".\r\n" {
                return out;
            }
            out.push(l.trim_end().to_string());
        }
    }
}

fn plain(addr: &str) -> Client<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client { s: BufReader::new(s) };
    assert!(c.line().starts_with("+OK"));
    c
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn client_config(trust: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trust).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

fn tls_over(tcp: TcpStream, cfg: Arc<rustls::ClientConfig>) -> TlsStream {
    let conn = rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

fn pop3s(server: &Server, trust: &Path, alpn: &[&[u8]]) -> Client<TlsStream> {
    let tcp = TcpStream::connect(&server.pop3s).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client { s: BufReader::new(tls_over(tcp, client_config(trust, alpn))) };
    assert!(c.line().starts_with("+OK"));
    c
}

fn exporter(c: &Client<TlsStream>) -> Vec<u8> {
    c.s.get_ref().conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None).unwrap().to_vec()
}

/// Runs SCRAM over `c`; returns the final reply line.
fn scram<S: Read + Write>(c: &mut Client<S>, mech: &str, user: &str, pw: &[u8], cb: Option<(&str, &[u8])>) -> String {
    let client = ScramClient::new(user, "fyko+d2lbbFgONRv9qkxdawL", cb);
    let reply = c.cmd(&format!("AUTH {mech} {}", B64.encode(client.client_first())));
    let Some(challenge) = reply.strip_prefix("+ ") else { return reply };
    let server_first = String::from_utf8(B64.decode(challenge.trim_end()).unwrap()).unwrap();
    let (fin, expected) = client.client_final(pw, &server_first).unwrap();
    let reply = c.cmd(&B64.encode(fin));
    let Some(challenge) = reply.strip_prefix("+ ") else { return reply };
    // RFC 5034 §4: the server-final message arrives as a challenge; check
    // the server's signature (mutual authentication), then answer empty.
    assert_eq!(String::from_utf8(B64.decode(challenge.trim_end()).unwrap()).unwrap(), expected);
    c.cmd("")
}

#[test]
fn scram_plus_with_tls_exporter_over_a_real_tls_session() {
    let server = start(fast());
    let trust = server.dir.path().join("server.crt");
    let mut c = pop3s(&server, &trust, &[]);
    let caps = c.multi("CAPA");
    assert!(caps.iter().any(|l| l == "SASL PLAIN LOGIN SCRAM-SHA-256-PLUS SCRAM-SHA-256"), "{caps:?}");
    let cb = exporter(&c);
    let reply = scram(&mut c, "SCRAM-SHA-256-PLUS", "alice", b"pw", Some(("tls-exporter", &cb)));
    assert!(reply.starts_with("+OK logged in, maildrop has 1 messages"), "{reply}");
    assert!(c.cmd("STAT").starts_with("+OK 1 "));
    assert!(c.cmd("QUIT").starts_with("+OK"));

    // tls-server-end-point works too.
    let mut c = pop3s(&server, &trust, &[]);
    let leaf = CertificateDer::pem_file_iter(&trust).unwrap().next().unwrap().unwrap();
    let hash = <sha2::Sha256 as sha2::Digest>::digest(leaf.as_ref()).to_vec();
    let reply = scram(&mut c, "SCRAM-SHA-256-PLUS", "alice", b"pw", Some(("tls-server-end-point", &hash)));
    assert!(reply.starts_with("+OK logged in"), "{reply}");
}

#[test]
fn scram_plus_rejects_binding_data_of_another_tls_session() {
    let server = start(fast());
    let trust = server.dir.path().join("server.crt");
    // A MITM relays SCRAM between the victim's TLS session and its own:
    // the binding data the client computes is that of the other session.
    let victim = pop3s(&server, &trust, &[]);
    let other = exporter(&victim);
    let mut c = pop3s(&server, &trust, &[]);
    let reply = scram(&mut c, "SCRAM-SHA-256-PLUS", "alice", b"pw", Some(("tls-exporter", &other)));
    assert_eq!(reply, "-ERR [AUTH] authentication failed\r\n");
    // Plain SCRAM with the right password still works, and a wrong one fails.
    let mut c = pop3s(&server, &trust, &[]);
    assert!(scram(&mut c, "SCRAM-SHA-256", "alice", b"pw", None).starts_with("+OK"));
    let mut c = pop3s(&server, &trust, &[]);
    assert_eq!(scram(&mut c, "SCRAM-SHA-256", "alice", b"nope", None), "-ERR [AUTH] authentication failed\r\n");
}

#[test]
fn scram_on_cleartext_loopback_never_offers_plus() {
    let server = start(fast());
    let mut c = plain(&server.pop3);
    let caps = c.multi("CAPA");
    assert!(caps.iter().any(|l| l == "SASL PLAIN LOGIN SCRAM-SHA-256"), "{caps:?}");
    assert!(c.cmd("AUTH SCRAM-SHA-256-PLUS =").starts_with("-ERR unsupported"));
    assert!(scram(&mut c, "SCRAM-SHA-256", "alice", b"pw", None).starts_with("+OK logged in"));
}

// --- OAuth ----------------------------------------------------------------

struct Keys {
    es: signature::EcdsaKeyPair,
    rsa: signature::RsaKeyPair,
}

fn keys_and_jwks(dir: &Path) -> (Keys, PathBuf) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let es = signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = es.public_key().as_ref();
    let rsa_der = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rs256-test-key.pk8")).unwrap();
    let rsa = signature::RsaKeyPair::from_pkcs8(&rsa_der).unwrap();
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public());
    let jwks = serde_json::json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "ec1", "use": "sig",
         "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65])},
        {"kty": "RSA", "kid": "rsa1", "n": B64URL.encode(&public.n), "e": B64URL.encode(&public.e)},
    ]});
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    (Keys { es, rsa }, path)
}

fn jwt(keys: &Keys, alg: &str, claims: serde_json::Value) -> String {
    let kid = if alg == "ES256" { "ec1" } else { "rsa1" };
    let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid});
    let signed = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    let rng = ring::rand::SystemRandom::new();
    let sig = if alg == "ES256" {
        keys.es.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec()
    } else {
        let mut sig = vec![0; keys.rsa.public().modulus_len()];
        keys.rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut sig).unwrap();
        sig
    };
    format!("{signed}.{}", B64URL.encode(sig))
}

fn claims(user: &str, aud: &str, exp_from_now: i64) -> serde_json::Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    serde_json::json!({"iss": ISSUER, "aud": [aud, "other"], "exp": now + exp_from_now, "iat": now, "email": user, "email_verified": true})
}

fn oauth_server() -> (Server, Keys, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let (keys, jwks) = keys_and_jwks(tmp.path());
    let config = Config {
        oauth: Some(OAuthConfig {
            jwks_file: Some(jwks),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            username_claim: "email".into(),
            leeway: Duration::from_secs(0),
            required_scope: None,
        }),
        ..fast()
    };
    (start(config), keys, tmp)
}

fn oauthbearer(user: &str, token: &str) -> String {
    B64.encode(format!("n,a={user},\x01host=localhost\x01port=110\x01auth=Bearer {token}\x01\x01"))
}

fn xoauth2(user: &str, token: &str) -> String {
    B64.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

#[test]
fn oauthbearer_and_xoauth2_against_a_local_jwks() {
    let (server, keys, _jwks_dir) = oauth_server();
    let mut c = plain(&server.pop3);
    let caps = c.multi("CAPA");
    assert!(caps.iter().any(|l| l.contains("OAUTHBEARER XOAUTH2")), "{caps:?}");

    // Valid ES256 token.
    let good = jwt(&keys, "ES256", claims("alice", AUDIENCE, 300));
    let reply = c.cmd(&format!("AUTH OAUTHBEARER {}", oauthbearer("alice", &good)));
    assert!(reply.starts_with("+OK logged in"), "{reply}");
    assert!(c.cmd("QUIT").starts_with("+OK"));

    // Valid RS256 token with XOAUTH2.
    let mut c = plain(&server.pop3);
    let good = jwt(&keys, "RS256", claims("alice", AUDIENCE, 300));
    let reply = c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2("alice", &good)));
    assert!(reply.starts_with("+OK logged in"), "{reply}");
    assert!(c.cmd("QUIT").starts_with("+OK"));

    // Refusals: RFC 7628 §3.2.2 error challenge, client answers AQ==, -ERR.
    let bad_tokens = [
        ("expired", jwt(&keys, "ES256", claims("alice", AUDIENCE, -30))),
        ("wrong audience", jwt(&keys, "ES256", claims("alice", "imap.example", 300))),
        ("other user", jwt(&keys, "ES256", claims("bob", AUDIENCE, 300))),
        ("tampered", {
            let t = jwt(&keys, "RS256", claims("alice", AUDIENCE, 300));
            let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
            parts[1] = B64URL.encode(claims("alice", AUDIENCE, 99_999).to_string());
            parts.join(".")
        }),
        ("alg none", format!("{}.{}.", B64URL.encode(r#"{"alg":"none"}"#), B64URL.encode(claims("alice", AUDIENCE, 300).to_string()))),
    ];
    for (what, token) in bad_tokens {
        let mut c = plain(&server.pop3);
        let reply = c.cmd(&format!("AUTH OAUTHBEARER {}", oauthbearer("alice", &token)));
        let challenge = reply.strip_prefix("+ ").unwrap_or_else(|| panic!("{what}: {reply}"));
        let json: serde_json::Value = serde_json::from_slice(&B64.decode(challenge.trim_end()).unwrap()).unwrap();
        assert_eq!(json["status"], "invalid_token", "{what}");
        assert_eq!(c.cmd("AQ=="), "-ERR [AUTH] authentication failed\r\n", "{what}");
        // XOAUTH2: same dance, the client answers with an empty line.
        let mut c = plain(&server.pop3);
        assert!(c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2("alice", &token))).starts_with("+ "), "{what}");
        assert_eq!(c.cmd(""), "-ERR [AUTH] authentication failed\r\n", "{what}");
    }
}

// --- enumeration, injection, limits, cache ----------------------------------

#[test]
fn unknown_user_and_wrong_password_get_the_same_answer() {
    let server = start(fast());
    let mut c = plain(&server.pop3);
    let mut replies = Vec::new();
    for (user, pass) in [("alice", "wrong"), ("nosuchuser", "wrong")] {
        assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
        replies.push(c.cmd(&format!("PASS {pass}")));
    }
    assert_eq!(replies[0], "-ERR [AUTH] authentication failed\r\n");
    assert_eq!(replies[0], replies[1]);
    // SASL PLAIN and SCRAM too.
    let mut c = plain(&server.pop3);
    let a = c.cmd(&format!("AUTH PLAIN {}", B64.encode("\0alice\0wrong")));
    let b = c.cmd(&format!("AUTH PLAIN {}", B64.encode("\0ghost\0wrong")));
    assert_eq!(a, b);
    let mut c = plain(&server.pop3);
    assert_eq!(scram(&mut c, "SCRAM-SHA-256", "alice", b"x", None), scram(&mut c, "SCRAM-SHA-256", "ghost", b"x", None));
}

#[test]
fn starttls_injection_against_the_real_server() {
    let server = start(fast());
    let trust = server.dir.path().join("server.crt");
    let tcp = TcpStream::connect(&server.pop3).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client { s: BufReader::new(tcp) };
    assert!(c.line().starts_with("+OK"));
    // STLS and an injected command in one segment, as a MITM would add it.
    c.s.get_mut().write_all(b"STLS\r\nUSER alice\r\nPASS pw\r\n").unwrap();
    assert_eq!(c.line(), "+OK begin TLS negotiation\r\n");
    let tcp = c.s.into_inner();
    let mut t = Client { s: BufReader::new(tls_over(tcp, client_config(&trust, &[]))) };
    // Had the injected USER/PASS run, STAT would work; it must not.
    assert_eq!(t.cmd("STAT"), "-ERR not valid before login\r\n");
    assert_eq!(t.cmd("PASS pw"), "-ERR USER first\r\n");
}

#[test]
fn alpn_pop3_is_selected_only_when_offered() {
    let server = start(fast());
    let trust = server.dir.path().join("server.crt");
    let c = pop3s(&server, &trust, &[b"pop3"]);
    assert_eq!(c.s.get_ref().conn.alpn_protocol(), Some(&b"pop3"[..]));
    let c = pop3s(&server, &trust, &[]);
    assert_eq!(c.s.get_ref().conn.alpn_protocol(), None);
    // A client offering only something else is served, without ALPN.
    let c = pop3s(&server, &trust, &[b"http/1.1"]);
    assert_eq!(c.s.get_ref().conn.alpn_protocol(), None);
}

#[test]
fn certificate_reload_keeps_the_running_session() {
    let server = start(Config { tls_reload_interval: Duration::from_millis(200), ..fast() });
    let dir = server.dir.path();
    let old_trust = dir.join("old.crt");
    std::fs::copy(dir.join("server.crt"), &old_trust).unwrap();
    let mut live = pop3s(&server, &old_trust, &[]);
    assert!(live.cmd("USER alice").starts_with("+OK"));
    assert!(live.cmd("PASS pw").starts_with("+OK logged in"));

    // Renew: write a new pair over the configured files (as certbot's
    // deploy hook would copy them) and let the poller notice.
    let fresh = write_cert(dir, "fresh");
    std::fs::copy(&fresh.key, dir.join("server.key")).unwrap();
    std::fs::copy(&fresh.cert, dir.join("server.crt")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let current = server.svc.tls.as_ref().unwrap().store.current().certs[0].fingerprint.clone();
        let new_fp = pobox_server::tls::fingerprint(&CertificateDer::pem_file_iter(&fresh.cert).unwrap().next().unwrap().unwrap());
        if current == new_fp {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "certificate was not reloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    // New handshakes get the new certificate (trusting only it works)...
    let mut c = pop3s(&server, &fresh.cert, &[]);
    assert!(c.cmd("NOOP").starts_with("-ERR"));
    // ...and the session opened before the reload is still alive.
    assert!(live.cmd("STAT").starts_with("+OK 1 "));
    let body = live.multi("RETR 1");
    assert!(body.contains(&"body".to_string()), "{body:?}");
    assert!(live.cmd("QUIT").starts_with("+OK"));
}

#[test]
fn per_ip_connection_limit() {
    let server = start(Config { max_connections_per_ip: 2, ..fast() });
    let _a = plain(&server.pop3);
    let _b = plain(&server.pop3);
    let mut s = TcpStream::connect(&server.pop3).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert_eq!(reply, "-ERR [SYS/TEMP] too many connections, try again later\r\n");
    // Another source address (all of 127/8 is loopback) is not affected.
    let other = std::net::SocketAddr::from(([127, 0, 0, 3], 0));
    let sock = socket_from(other, &server.pop3);
    let mut c = Client { s: BufReader::new(sock) };
    assert!(c.line().starts_with("+OK"));
}

fn socket_from(local: std::net::SocketAddr, remote: &str) -> TcpStream {
    // std cannot bind a client socket; tokio's TcpSocket can.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(local).unwrap();
        sock.connect(remote.parse().unwrap()).await.unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn successful_logins_are_cached_until_the_line_changes() {
    let server = start(fast());
    let login = |pw: &str| {
        let mut c = plain(&server.pop3);
        c.cmd("USER alice");
        let r = c.cmd(&format!("PASS {pw}"));
        c.cmd("QUIT");
        r
    };
    assert!(login("pw").starts_with("+OK"));
    assert_eq!(server.svc.credcache.len(), 1, "the success is cached");
    assert!(login("pw").starts_with("+OK"));
    assert_eq!(server.svc.credcache.len(), 1, "the second login is a hit, not a new entry");
    // The admin resets the password: the cached entry no longer counts.
    server.svc.users.set_password("alice", b"new").unwrap();
    assert!(login("pw").starts_with("-ERR [AUTH]"));
    assert!(login("new").starts_with("+OK"));
}
