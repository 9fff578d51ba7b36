//! OAuth with the identity provider on the network (issue 18 item 4),
//! through the real `pobox serve`: the test runs its own HTTPS identity
//! provider on 127.0.0.1 (tokio + tokio-rustls, a certificate from a CA
//! the test makes with rcgen; pobox trusts it through `ca_file`), which
//! publishes a JWKS that the test rotates, answers RFC 7662 introspection
//! for a table of opaque tokens, checks pobox's HTTP Basic client
//! credentials, counts every request, and can be taken down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use ring::signature::{self, KeyPair as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::util::{BIN, Dir, PW, Pop3, TestCommand};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "pop.example";
/// pobox's client credentials at the introspection endpoint. The secret
/// has characters that HTTP Basic for OAuth form-encodes (RFC 6749 §2.3.1).
const CLIENT_ID: &str = "pobox";
const CLIENT_SECRET: &str = "s3cret pw!";
/// Alice's subject at the provider (`oauth_sub=` in the passwd-file).
const ALICE_SUB: &str = "248289761001";

// ---------------------------------------------------------------------------
// The identity provider
// ---------------------------------------------------------------------------

#[derive(Default)]
struct IdpState {
    /// The JWKS document served at /jwks.
    jwks: Mutex<String>,
    /// Introspection answers by token; unknown tokens are inactive.
    answers: Mutex<HashMap<String, serde_json::Value>>,
    jwks_requests: AtomicUsize,
    introspection_requests: AtomicUsize,
    /// Introspection requests without pobox's exact credentials.
    bad_credentials: AtomicUsize,
    /// While set, introspection answers are held back (at most 10 s).
    stall: std::sync::atomic::AtomicBool,
}

struct Idp {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    state: Arc<IdpState>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The test CA's certificate (PEM), for pobox's `ca_file`.
    ca_file: PathBuf,
}

impl Idp {
    fn start(dir: &Dir) -> Idp {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pobox test IdP CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let ca_file = dir.scratch("idp-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState::default());
        let shared = state.clone();
        let server = runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { break };
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                        return;
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(10), serve_one(&mut tls, &state)).await;
                });
            }
        });
        Idp { runtime, addr, state, server: Some(server), ca_file }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn publish(&self, keys: &[&Key]) {
        let jwks = serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        *self.state.jwks.lock().unwrap() = jwks.to_string();
    }

    fn answer(&self, token: &str, answer: serde_json::Value) {
        self.state.answers.lock().unwrap().insert(token.into(), answer);
    }

    fn jwks_requests(&self) -> usize {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    fn introspection_requests(&self) -> usize {
        self.state.introspection_requests.load(Ordering::SeqCst)
    }

    /// Down: the listener is closed, connections are refused.
    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = self.runtime.block_on(server);
        }
    }
}

/// One HTTP/1.1 request per connection (`Connection: close`).
async fn serve_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, state: &IdpState) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length.min(64 * 1024) {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let (status, extra, text) = if request_line.starts_with("GET /jwks ") {
        state.jwks_requests.fetch_add(1, Ordering::SeqCst);
        ("200 OK", "Cache-Control: public, max-age=3600\r\n", state.jwks.lock().unwrap().clone())
    } else if request_line.starts_with("POST /introspect ") {
        state.introspection_requests.fetch_add(1, Ordering::SeqCst);
        for _ in 0..200 {
            if !state.stall.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // RFC 6749 §2.3.1: id and secret form-encoded, then Basic.
        let expected = format!("Basic {}", B64.encode(format!("{CLIENT_ID}:s3cret+pw%21")));
        if headers.get("authorization") != Some(&expected) {
            state.bad_credentials.fetch_add(1, Ordering::SeqCst);
            ("401 Unauthorized", "WWW-Authenticate: Basic\r\n", r#"{"error":"invalid_client"}"#.to_owned())
        } else {
            let form: HashMap<String, String> = String::from_utf8_lossy(&body)
                .split('&')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(form.get("token_type_hint").map(String::as_str), Some("access_token"));
            let token = form.get("token").cloned().unwrap_or_default();
            let answer = state.answers.lock().unwrap().get(&token).cloned();
            ("200 OK", "", answer.unwrap_or(serde_json::json!({"active": false})).to_string())
        }
    } else {
        ("404 Not Found", "", String::new())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = s.write_all(response.as_bytes()).await;
    let _ = s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Tokens and logins
// ---------------------------------------------------------------------------

/// An ES256 signing key and its JWK.
struct Key {
    pair: signature::EcdsaKeyPair,
    jwk: serde_json::Value,
}

impl Key {
    fn new(kid: &str) -> Key {
        let rng = ring::rand::SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                                     "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65])});
        Key { pair, jwk }
    }

    /// A token for alice (verified email), header `kid` as given.
    fn token(&self, kid: &str) -> String {
        let t = now();
        let claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "exp": t + 300, "iat": t,
                                        "email": "alice", "email_verified": true});
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let sig = self.pair.sign(&ring::rand::SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", B64URL.encode(sig.as_ref()))
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[derive(Debug, PartialEq)]
enum Outcome {
    LoggedIn,
    /// The RFC 7628 refusal: `invalid_token` challenge, then `-ERR [AUTH]`.
    Refused,
    /// `-ERR [SYS/TEMP]`: the server's or provider's problem.
    Temporary,
}

#[derive(Debug, Clone, Copy)]
enum Mech {
    OAuthBearer,
    XOAuth2,
}

fn login(port: u16, mech: Mech, token: &str) -> Outcome {
    let mut c = Pop3::connect(port);
    let (name, initial, ack) = match mech {
        Mech::OAuthBearer => (
            "OAUTHBEARER",
            B64.encode(format!("n,a=alice,\x01host=localhost\x01port=110\x01auth=Bearer {token}\x01\x01")),
            "AQ==",
        ),
        Mech::XOAuth2 => ("XOAUTH2", B64.encode(format!("user=alice\x01auth=Bearer {token}\x01\x01")), ""),
    };
    let reply = c.cmd(&format!("AUTH {name} {initial}"));
    if reply.starts_with("+OK") {
        let stat = c.cmd("STAT");
        assert!(stat.starts_with("+OK"), "{stat}");
        c.quit();
        return Outcome::LoggedIn;
    }
    if reply.starts_with("-ERR [SYS/TEMP]") {
        return Outcome::Temporary;
    }
    let challenge = reply.strip_prefix("+ ").unwrap_or_else(|| panic!("{mech:?}: {reply}"));
    let json: serde_json::Value = serde_json::from_slice(&B64.decode(challenge.trim_end()).unwrap()).unwrap();
    assert_eq!(json["status"], "invalid_token", "{mech:?}: {json}");
    let end = c.cmd(ack);
    assert!(end.starts_with("-ERR [AUTH] authentication failed"), "{mech:?}: {end}");
    Outcome::Refused
}

fn jwks_url_config(idp: &Idp) -> String {
    format!(
        "{{ jwks_url = \"{}\", ca_file = \"{}\", issuer = \"{ISSUER}\", audience = \"{AUDIENCE}\", \
         username_claim = \"email\", leeway_secs = 5 }}",
        idp.url("/jwks"),
        idp.ca_file.display()
    )
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn jwks_url_rotation_kid_miss_rate_limit_and_provider_down_through_pobox_serve() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let mut idp = Idp::start(&dir);
    let (a, b) = (Key::new("a"), Key::new("b"));
    idp.publish(&[&a]);
    let oauth = jwks_url_config(&idp);
    // No penalties: this test provokes refusals on purpose.
    let srv = dir.server().config("oauth", &oauth).config("auth_penalty_max_ms", "0").start();
    let port = srv.pop3;

    for mech in [Mech::OAuthBearer, Mech::XOAuth2] {
        assert_eq!(login(port, mech, &a.token("a")), Outcome::LoggedIn, "{mech:?}: key A\n{}", srv.dump());
    }
    let fetched = idp.jwks_requests();
    assert!(fetched >= 1);

    // The provider rotates: B replaces A. Token A still verifies until
    // pobox looks again (max-age is an hour, A's kid is known).
    idp.publish(&[&b]);
    assert_eq!(login(port, Mech::OAuthBearer, &a.token("a")), Outcome::LoggedIn);
    assert_eq!(idp.jwks_requests(), fetched, "a known kid makes no request");
    // B's kid is unknown: one fetch at once, and B logs in.
    assert_eq!(login(port, Mech::XOAuth2, &b.token("b")), Outcome::LoggedIn, "rotated key B\n{}", srv.dump());
    assert_eq!(idp.jwks_requests(), fetched + 1, "the kid miss fetched once");
    let kid_fetch = Instant::now();
    // The refreshed set no longer has A: A's tokens fail now.
    assert_eq!(login(port, Mech::OAuthBearer, &a.token("a")), Outcome::Refused, "A was removed at the provider");
    assert_eq!(login(port, Mech::OAuthBearer, &b.token("b")), Outcome::LoggedIn);

    // A flood of made-up kids: at most one fetch per 30 s window.
    for i in 0..40 {
        assert_eq!(login(port, Mech::OAuthBearer, &a.token(&format!("bogus-{i}"))), Outcome::Refused);
    }
    let windows = kid_fetch.elapsed().as_secs() / 30;
    let extra = idp.jwks_requests() - (fetched + 1);
    assert!(extra as u64 <= windows, "{extra} JWKS fetches for 40 unknown kids within {windows} full rate-limit window(s)");

    // The last good key set is saved in the data dir.
    let saved = std::fs::read_to_string(dir.data().join("oauth-jwks.json")).unwrap();
    assert!(saved.contains("\"kid\":\"b\"") && !saved.contains("\"kid\":\"a\""), "{saved}");

    // The provider goes down: the fetched key still works.
    idp.stop();
    assert_eq!(login(port, Mech::OAuthBearer, &b.token("b")), Outcome::LoggedIn, "cached key B, provider down");
    // And after a restart while it is down, from the saved JWKS.
    drop(srv);
    let srv = dir.server().config("oauth", &oauth).config("auth_penalty_max_ms", "0").start();
    assert_eq!(login(srv.pop3, Mech::OAuthBearer, &b.token("b")), Outcome::LoggedIn, "saved JWKS\n{}", srv.dump());
    assert_eq!(login(srv.pop3, Mech::OAuthBearer, &a.token("a")), Outcome::Refused);
    assert!(
        crate::util::eventually(Duration::from_secs(15), || srv.stderr().contains("OAuth JWKS fetch failed")),
        "the failed refresh is logged\n{}",
        srv.dump()
    );
}

#[test]
fn no_key_set_at_all_is_a_temporary_error_not_an_authentication_failure() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let mut idp = Idp::start(&dir);
    let a = Key::new("a");
    idp.publish(&[&a]);
    let oauth = jwks_url_config(&idp);
    idp.stop();
    let srv = dir.server().config("oauth", &oauth).start();
    assert_eq!(login(srv.pop3, Mech::OAuthBearer, &a.token("a")), Outcome::Temporary, "{}", srv.dump());
    assert_eq!(login(srv.pop3, Mech::XOAuth2, &a.token("a")), Outcome::Temporary);
    // Password logins are unaffected.
    srv.login("alice", PW).quit();
}

#[test]
fn introspection_of_opaque_tokens_through_pobox_serve() {
    let dir = Dir::new();
    dir.add_user("bob", PW);
    dir.append(&dir.users_file(), format!("alice:{{PLAIN}}unused::::::oauth_sub={ALICE_SUB}\n").as_bytes());
    let mut idp = Idp::start(&dir);
    let secret = dir.scratch("introspection-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    let t = now();
    let good = serde_json::json!({"active": true, "sub": ALICE_SUB, "aud": [AUDIENCE], "iss": ISSUER,
                                  "exp": t + 300, "scope": "openid pop3", "token_type": "Bearer"});
    let with = |k: &str, v: serde_json::Value| {
        let mut a = good.clone();
        a[k] = v;
        a
    };
    idp.answer("opaque-alice", good.clone());
    idp.answer("opaque-alice-2", good.clone());
    idp.answer("opaque-alice-3", good.clone());
    idp.answer("opaque-inactive", with("active", false.into()));
    idp.answer("opaque-other-audience", with("aud", "imap.example".into()));
    idp.answer("opaque-no-scope", with("scope", "openid".into()));
    idp.answer("opaque-unmapped", with("sub", "alice".into()));
    let oauth = format!(
        "{{ introspection_url = \"{}\", introspection_client_id = \"{CLIENT_ID}\", \
         introspection_secret_file = \"{}\", ca_file = \"{}\", issuer = \"{ISSUER}\", audience = \"{AUDIENCE}\", \
         scope = \"pop3\" }}",
        idp.url("/introspect"),
        secret.display(),
        idp.ca_file.display()
    );
    let srv = dir.server().config("oauth", &oauth).config("auth_penalty_max_ms", "0").start();
    let port = srv.pop3;

    for mech in [Mech::OAuthBearer, Mech::XOAuth2] {
        assert_eq!(login(port, mech, "opaque-alice"), Outcome::LoggedIn, "{mech:?}\n{}", srv.dump());
    }
    assert_eq!(idp.introspection_requests(), 1, "the second login used the cached answer");
    for token in ["opaque-inactive", "opaque-other-audience", "opaque-no-scope", "opaque-unmapped", "never-issued"] {
        assert_eq!(login(port, Mech::OAuthBearer, token), Outcome::Refused, "{token}");
    }
    assert_eq!(idp.state.bad_credentials.load(Ordering::SeqCst), 0, "pobox sent its Basic credentials");
    // A JWT-shaped token is introspected too when no JWKS is configured.
    let jwt = Key::new("k").token("k");
    idp.answer(&jwt, good.clone());
    assert_eq!(login(port, Mech::OAuthBearer, &jwt), Outcome::LoggedIn);

    // Wrong client secret: the endpoint refuses pobox (401), which is not
    // the user's failure.
    std::fs::write(&secret, "wrong\n").unwrap();
    assert_eq!(login(port, Mech::OAuthBearer, "opaque-alice-2"), Outcome::Temporary);
    assert_eq!(idp.state.bad_credentials.load(Ordering::SeqCst), 1);
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    assert_eq!(login(port, Mech::OAuthBearer, "opaque-alice-2"), Outcome::LoggedIn);

    // The endpoint down: a temporary error.
    idp.stop();
    assert_eq!(login(port, Mech::OAuthBearer, "opaque-alice-3"), Outcome::Temporary, "{}", srv.dump());
    assert_eq!(login(port, Mech::XOAuth2, "never-issued"), Outcome::Temporary);
    // Tokens never reach the log.
    let logs = srv.dump();
    assert!(!logs.contains("opaque-alice") && !logs.contains(CLIENT_SECRET), "{logs}");
}

/// A provider that does not answer holds up only the logins that ask it:
/// password logins and JWTs with cached keys go on meanwhile.
#[test]
fn a_slow_provider_delays_only_the_logins_that_need_it() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let idp = Idp::start(&dir);
    let a = Key::new("a");
    idp.publish(&[&a]);
    let secret = dir.scratch("introspection-secret");
    std::fs::write(&secret, CLIENT_SECRET).unwrap();
    idp.answer(
        "opaque-slow",
        serde_json::json!({"active": true, "aud": AUDIENCE, "email": "alice", "email_verified": true}),
    );
    let oauth = format!(
        "{{ jwks_url = \"{}\", introspection_url = \"{}\", introspection_client_id = \"{CLIENT_ID}\", \
         introspection_secret_file = \"{}\", ca_file = \"{}\", issuer = \"{ISSUER}\", audience = \"{AUDIENCE}\", \
         username_claim = \"email\" }}",
        idp.url("/jwks"),
        idp.url("/introspect"),
        secret.display(),
        idp.ca_file.display()
    );
    let srv = dir.server().config("oauth", &oauth).start();
    let port = srv.pop3;
    assert_eq!(login(port, Mech::OAuthBearer, &a.token("a")), Outcome::LoggedIn, "{}", srv.dump());

    idp.state.stall.store(true, Ordering::SeqCst);
    let slow = std::thread::spawn(move || login(port, Mech::OAuthBearer, "opaque-slow"));
    assert!(
        crate::util::eventually(Duration::from_secs(10), || idp.introspection_requests() == 1),
        "the opaque token was not introspected\n{}",
        srv.dump()
    );
    srv.login("alice", PW).quit();
    assert_eq!(login(port, Mech::XOAuth2, &a.token("a")), Outcome::LoggedIn);
    assert!(!slow.is_finished(), "the introspection is still held back by the provider");
    idp.state.stall.store(false, Ordering::SeqCst);
    assert_eq!(slow.join().unwrap(), Outcome::LoggedIn, "{}", srv.dump());
}

#[test]
fn pobox_check_reports_the_jwks_url_and_bad_oauth_settings() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let mut idp = Idp::start(&dir);
    let a = Key::new("a");
    idp.publish(&[&a]);
    let check = |oauth: &str| {
        let path = dir.scratch("check.toml");
        std::fs::write(&path, format!("[oauth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n{oauth}")).unwrap();
        let mut c = TestCommand::new(BIN);
        c.arg("--data").arg(dir.data()).arg("--config").arg(&path).arg("check");
        c.output()
    };
    let ca = format!("ca_file = \"{}\"\n", idp.ca_file.display());
    let out = check(&format!("jwks_url = \"{}\"\n{ca}", idp.url("/jwks")));
    assert!(out.stdout().contains(&format!("oauth JWKS {} has 1 usable key(s)", idp.url("/jwks"))), "{}", out.dump());

    // Without ca_file the test CA is not trusted (Mozilla's roots only).
    let out = check(&format!("jwks_url = \"{}\"\n", idp.url("/jwks")));
    assert!(!out.status.success(), "{}", out.dump());
    assert!(out.stdout().contains("oauth: JWKS") && out.stdout().to_lowercase().contains("certificate"), "{}", out.dump());

    let out = check("jwks_url = \"http://idp.example/jwks\"\n");
    assert!(!out.status.success());
    assert!(out.dump().contains("https://"), "{}", out.dump());

    let out = check(&format!(
        "introspection_url = \"{}\"\nintrospection_client_id = \"pobox\"\nintrospection_secret_file = \"/nonexistent/secret\"\n{ca}",
        idp.url("/introspect")
    ));
    assert!(!out.status.success());
    assert!(out.stdout().contains("/nonexistent/secret"), "{}", out.dump());

    idp.stop();
    let out = check(&format!("jwks_url = \"{}\"\n{ca}", idp.url("/jwks")));
    assert!(!out.status.success());
    assert!(out.stdout().contains("oauth: JWKS"), "{}", out.dump());
}
