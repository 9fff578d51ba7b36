//! Built-in OAuth2 end to end: a small authorization server written here
//! (plain HTTP/1.1 on 127.0.0.1) issues ES256 JWTs, and `pobox serve`,
//! configured with that key's JWKS, checks them on OAUTHBEARER/XOAUTH2.
//! Covered: device flow, code flow with PKCE (the test plays the browser),
//! refresh with rotation, the cache, an expired and a revoked refresh token
//! (exit 4, one line), and a token the POP3 server refuses (refresh once,
//! retry).
//!
//! Needs `target/debug/pobox` (`cargo build -p pobox`) or `POBOX_BIN`.

mod common;
mod serve_with_config;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::*;
use serve_with_config::Serve;
use ring::signature::{self, KeyPair as _};
use sha2::{Digest, Sha256};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "pop.test";
const CLIENT_ID: &str = "pobox-test-client";

// --- the authorization server ------------------------------------------------

#[derive(Default)]
struct IdpState {
    /// Lifetime of issued access tokens (`expires_in`).
    access_lifetime: u64,
    /// Mint access tokens for another audience (the POP3 server refuses them).
    wrong_audience: bool,
    /// refresh token -> "ok" | "expired" | "revoked"
    refresh: HashMap<String, &'static str>,
    /// device_code -> (user_code, approved)
    devices: HashMap<String, (String, bool)>,
    /// code -> (code_challenge, redirect_uri)
    codes: HashMap<String, (String, String)>,
    /// Token requests by grant_type.
    grants: HashMap<String, u32>,
    /// Every authorization request's query, for the test to inspect.
    pkce_verified: u32,
    seq: u64,
}

struct Idp {
    port: u16,
    state: Arc<Mutex<IdpState>>,
    key: Arc<signature::EcdsaKeyPair>,
    jwks: PathBuf,
    _dir: tempfile::TempDir,
}

impl Idp {
    fn start() -> Idp {
        let dir = tempfile::tempdir().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = key.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
            "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65])}]});
        let jwks_path = dir.path().join("jwks.json");
        std::fs::write(&jwks_path, jwks.to_string()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(IdpState { access_lifetime: 3600, ..IdpState::default() }));
        let key = Arc::new(key);
        let (st, k) = (state.clone(), key.clone());
        std::thread::spawn(move || {
            // Bounded: at most 500 requests, each on its own short thread.
            for stream in listener.incoming().take(500) {
                let Ok(stream) = stream else { continue };
                let (st, k) = (st.clone(), k.clone());
                std::thread::spawn(move || serve_http(stream, &st, &k, port));
            }
        });
        Idp { port, state, key, jwks: jwks_path, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn grants(&self, grant: &str) -> u32 {
        self.state.lock().unwrap().grants.get(grant).copied().unwrap_or(0)
    }

    fn set_all_refresh(&self, status: &'static str) {
        for v in self.state.lock().unwrap().refresh.values_mut() {
            *v = status;
        }
    }

    fn jwt(&self, exp_in: u64, audience: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let claims = serde_json::json!({"iss": ISSUER, "aud": audience, "exp": now + exp_in, "iat": now, "sub": "idp-subject-1", "email": USER, "email_verified": true});
        let signed = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let sig = self.key.sign(&ring::rand::SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", B64URL.encode(sig.as_ref()))
    }
}

/// A JWT signed with `key` for `email = tester`.
fn jwt_with(key: &signature::EcdsaKeyPair, exp_in: u64, audience: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
    let claims = serde_json::json!({"iss": ISSUER, "aud": audience, "exp": now + exp_in, "iat": now, "sub": "idp-subject-1", "email": USER, "email_verified": true});
    let signed = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    let sig = key.sign(&ring::rand::SystemRandom::new(), signed.as_bytes()).unwrap();
    format!("{signed}.{}", B64URL.encode(sig.as_ref()))
}

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    form: HashMap<String, String>,
}

fn parse_pairs(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len.min(1 << 20) {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Some(Request { method, path: path.to_string(), query: parse_pairs(query), form: parse_pairs(&body) })
}

fn reply(stream: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

fn oauth_error(stream: &mut TcpStream, error: &str, description: &str) {
    reply(stream, "400 Bad Request", "", &serde_json::json!({"error": error, "error_description": description}).to_string());
}

fn serve_http(mut stream: TcpStream, st: &Mutex<IdpState>, key: &signature::EcdsaKeyPair, port: u16) {
    let Some(req) = read_request(&mut stream) else { return };
    let mut s = st.lock().unwrap();
    s.seq += 1;
    let seq = s.seq;
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/device") => {
            assert_eq!(req.form.get("client_id").map(String::as_str), Some(CLIENT_ID));
            let (dc, uc) = (format!("dev-{seq}"), format!("WDJB-{seq:04}"));
            s.devices.insert(dc.clone(), (uc.clone(), false));
            let body = serde_json::json!({"device_code": dc, "user_code": uc,
                "verification_uri": format!("http://127.0.0.1:{port}/verify"), "expires_in": 60, "interval": 1});
            reply(&mut stream, "200 OK", "", &body.to_string());
        }
        // The user typing the code on the verification page.
        ("GET", "/approve") => {
            let code = req.query.get("user_code").cloned().unwrap_or_default();
            let mut found = false;
            for (uc, approved) in s.devices.values_mut() {
                if *uc == code {
                    *approved = true;
                    found = true;
                }
            }
            reply(&mut stream, if found { "200 OK" } else { "404 Not Found" }, "", "{}");
        }
        // The browser at the authorization endpoint: the user consents,
        // the server redirects back with a code.
        ("GET", "/authorize") => {
            let q = &req.query;
            let ok = q.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && q.get("response_type").map(String::as_str) == Some("code")
                && q.get("code_challenge_method").map(String::as_str) == Some("S256");
            if !ok {
                reply(&mut stream, "400 Bad Request", "", "{}");
                return;
            }
            let code = format!("code-{seq}");
            let redirect = q["redirect_uri"].clone();
            s.codes.insert(code.clone(), (q["code_challenge"].clone(), redirect.clone()));
            let location = format!("{redirect}?code={code}&state={}", q["state"]);
            reply(&mut stream, "302 Found", &format!("Location: {location}\r\n"), "");
        }
        ("POST", "/token") => {
            let f = &req.form;
            let grant = f.get("grant_type").cloned().unwrap_or_default();
            *s.grants.entry(grant.clone()).or_default() += 1;
            if f.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
                return oauth_error(&mut stream, "invalid_client", "unknown client");
            }
            match grant.as_str() {
                "urn:ietf:params:oauth:grant-type:device_code" => {
                    match s.devices.get(f.get("device_code").map_or("", String::as_str)) {
                        Some((_, true)) => {}
                        Some((_, false)) => return oauth_error(&mut stream, "authorization_pending", "waiting"),
                        None => return oauth_error(&mut stream, "invalid_grant", "unknown device code"),
                    }
                }
                "authorization_code" => {
                    let Some((challenge, redirect)) = s.codes.remove(f.get("code").map_or("", String::as_str)) else {
                        return oauth_error(&mut stream, "invalid_grant", "unknown code");
                    };
                    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                    // RFC 7636 §4.6: BASE64URL(SHA256(verifier)) == challenge.
                    if B64URL.encode(Sha256::digest(verifier.as_bytes())) != challenge || verifier.len() < 43 {
                        return oauth_error(&mut stream, "invalid_grant", "PKCE verification failed");
                    }
                    if f.get("redirect_uri") != Some(&redirect) {
                        return oauth_error(&mut stream, "invalid_grant", "redirect_uri mismatch");
                    }
                    s.pkce_verified += 1;
                }
                "refresh_token" => {
                    let rt = f.get("refresh_token").cloned().unwrap_or_default();
                    match s.refresh.get(&rt).copied() {
                        Some("ok") => {}
                        Some("expired") => {
                            return oauth_error(&mut stream, "invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: 1");
                        }
                        Some(_) => return oauth_error(&mut stream, "invalid_grant", "Token has been expired or revoked."),
                        None => return oauth_error(&mut stream, "invalid_grant", "unknown refresh token"),
                    }
                    // Rotation: the old refresh token dies.
                    s.refresh.insert(rt, "rotated");
                }
                _ => return oauth_error(&mut stream, "unsupported_grant_type", &grant),
            }
            let rt = format!("rt-{seq}-{}", B64URL.encode(rand_bytes()));
            s.refresh.insert(rt.clone(), "ok");
            let aud = if s.wrong_audience { "someone.else" } else { AUDIENCE };
            let body = serde_json::json!({"access_token": jwt_with(key, s.access_lifetime.max(30), aud),
                "token_type": "Bearer", "expires_in": s.access_lifetime, "refresh_token": rt});
            reply(&mut stream, "200 OK", "", &body.to_string());
        }
        _ => reply(&mut stream, "404 Not Found", "", "{}"),
    }
}

fn rand_bytes() -> [u8; 12] {
    let mut b = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    b
}

// --- pobox serve with OAuth ----------------------------------------------------

fn serve(idp: &Idp) -> Serve {
    // The user comes from the verified email here; pobox serve's default
    // (`sub` mapped through the passwd-file) has its own tests.
    let config = format!(
        "[oauth]\njwks_file = \"{}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nusername_claim = \"email\"\n",
        idp.jwks.display()
    );
    Serve::start(&config, &[(USER, "unused password")])
}

// --- the fetcher side ----------------------------------------------------------

/// A config with one OAuth account `acct` against `srv`, `oauth` being the
/// body of its `[accounts.acct.oauth]` table.
fn setup(srv: &Serve, idp: &Idp, oauth: &str, auth: &str) -> Setup {
    let s = Setup::new(srv.pop3s, "localhost", "");
    let text = format!(
        "state_dir = \"{}\"\n[accounts.acct]\nhost = \"localhost\"\nport = {}\nuser = \"{USER}\"\nauth = \"{auth}\"\nfingerprint = \"{}\"\nmaildir = \"{}\"\ntimeout_secs = 20\n[accounts.acct.oauth]\nprovider = \"custom\"\nclient_id = \"{CLIENT_ID}\"\ntoken_url = \"{}\"\nscope = \"pop offline_access\"\n{oauth}\n",
        s.dir.path().join("state").display(),
        srv.pop3s,
        srv.pin(),
        s.maildir.display(),
        idp.url("/token"),
    );
    std::fs::write(&s.config, text).unwrap();
    s
}

fn token_file(s: &Setup) -> PathBuf {
    s.dir.path().join("state/oauth/acct.json")
}

/// `login acct` running, its stderr lines arriving on a channel.
struct Login {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Login {
    fn start(s: &Setup) -> Login {
        let mut child = s.command(&["login", "acct"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok).take(1000) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Login { child, lines, seen: Vec::new() }
    }

    /// The first line for which `f` returns Some, within 30 s.
    fn expect<T>(&mut self, f: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if let Some(t) = f(&l) {
                        return t;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("expected line not printed; got {:?}", self.seen);
    }

    fn wait(mut self) -> (i32, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return (st.code().unwrap_or(-1), self.seen);
            }
            assert!(Instant::now() < deadline, "login did not finish: {:?}", self.seen);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A plain HTTP GET (the test playing the browser); returns status line and
/// the Location header, if any.
fn http_get(url: &str) -> (String, Option<String>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(authority).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n", if path.is_empty() { "/" } else { path }).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.lines().next().unwrap_or("").to_string();
    let location = text.lines().find_map(|l| l.strip_prefix("Location: ")).map(str::to_owned);
    (status, location)
}

fn device_login(s: &Setup, idp: &Idp) {
    let mut login = Login::start(s);
    let code = login.expect(|l| l.split("enter the code ").nth(1).map(|r| r.split(' ').next().unwrap().to_string()));
    assert!(login.seen.iter().any(|l| l.contains(&idp.url("/verify"))), "verification URI shown: {:?}", login.seen);
    // Let it poll while the "user" is still typing: authorization_pending.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _) = http_get(&idp.url(&format!("/approve?user_code={code}")));
    assert!(status.contains("200"), "{status}");
    let (status, lines) = login.wait();
    assert_eq!(status, 0, "{lines:?}");
}

fn assert_private(s: &Setup) {
    let file = token_file(s);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "token file mode");
    let dir_mode = std::fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "token dir mode");
}

#[test]
fn device_flow_login_then_fetch_with_cached_token() {
    let idp = Idp::start();
    let srv = serve(&idp);
    let msgs = messages(5, "oauth-device");
    srv.deliver(USER, &msgs);
    let s = setup(&srv, &idp, &format!("device_url = \"{}\"\n", idp.url("/device")), "oauth2");
    device_login(&s, &idp);
    assert!(idp.grants("urn:ietf:params:oauth:grant-type:device_code") >= 2, "polled while pending, then got the token");
    assert_private(&s);
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_exactly_once_clean(&s.maildir, &msgs);
    assert_eq!(idp.grants("refresh_token"), 0, "a fresh access token is used from the cache");
    // Nothing secret on the terminal.
    assert!(!String::from_utf8_lossy(&o.stderr).contains("rt-"), "{}", show(&o));
}

#[test]
fn code_flow_with_pkce_and_loopback_redirect() {
    let idp = Idp::start();
    let srv = serve(&idp);
    let msgs = messages(3, "oauth-pkce");
    srv.deliver(USER, &msgs);
    let s = setup(&srv, &idp, &format!("auth_url = \"{}\"\n", idp.url("/authorize")), "xoauth2");
    let mut login = Login::start(&s);
    let prefix = idp.url("/authorize?");
    let url = login.expect(|l| l.trim().starts_with(&prefix).then(|| l.trim().to_string()));
    let q = parse_pairs(url.split_once('?').unwrap().1);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43, "BASE64URL(SHA-256) without padding");
    assert_eq!(q["scope"], "pop offline_access");
    assert!(q["state"].len() >= 16);
    let redirect = q["redirect_uri"].clone();
    assert!(redirect.starts_with("http://127.0.0.1:") && redirect.ends_with('/'), "{redirect}");
    // A stray request (wrong state, as a forged or stale one) is ignored.
    let (status, _) = http_get(&format!("{redirect}?code=forged&state=wrong"));
    assert!(status.contains("404"), "{status}");
    let (status, _) = http_get(&format!("{redirect}favicon.ico"));
    assert!(status.contains("404"), "{status}");
    // The browser: the authorization server redirects back with a code.
    let (status, location) = http_get(&url);
    assert!(status.contains("302"), "{status}");
    let location = location.unwrap();
    assert!(location.starts_with(&redirect), "{location}");
    let (status, _) = http_get(&location);
    assert!(status.contains("200"), "{status}");
    let (status, lines) = login.wait();
    assert_eq!(status, 0, "{lines:?}");
    assert_eq!(idp.state.lock().unwrap().pkce_verified, 1, "the token endpoint checked the verifier");
    assert_private(&s);
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_exactly_once_clean(&s.maildir, &msgs);
}

#[test]
fn refresh_before_expiry_with_rotation_and_cache() {
    let idp = Idp::start();
    let srv = serve(&idp);
    let s = setup(&srv, &idp, &format!("device_url = \"{}\"\n", idp.url("/device")), "oauth2");
    // Tokens that live 60 s are inside the refresh margin: every run refreshes.
    idp.state.lock().unwrap().access_lifetime = 60;
    device_login(&s, &idp);
    let mut seen_refresh = HashSet::new();
    for round in 1..=2u32 {
        let msgs = messages(2, &format!("refresh-{round}"));
        srv.deliver(USER, &msgs);
        let o = s.run(&[]);
        assert_eq!(code(&o), 0, "round {round}: {}", show(&o));
        assert_eq!(idp.grants("refresh_token"), round, "round {round} refreshed");
        let stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(token_file(&s)).unwrap()).unwrap();
        // The rotated refresh token replaced the old one (the old one is dead
        // at the server: round 2 proves the new one was kept).
        assert!(seen_refresh.insert(stored["refresh_token"].as_str().unwrap().to_string()));
    }
    // Now long-lived tokens: one more refresh, then the cache serves.
    idp.state.lock().unwrap().access_lifetime = 3600;
    assert_eq!(code(&s.run(&[])), 1);
    assert_eq!(idp.grants("refresh_token"), 3);
    assert_eq!(code(&s.run(&[])), 1);
    assert_eq!(idp.grants("refresh_token"), 3, "cached access token reused");
    assert_private(&s);
}

/// The one line and exit 4 a dead refresh token gives.
fn assert_login_again(o: &std::process::Output, what: &str) {
    assert_eq!(code(o), 4, "{}", show(o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", show(o));
    assert!(lines[0].starts_with("pobox fetch: acct: OAuth: the provider refused the refresh token (invalid_grant: "), "{}", lines[0]);
    assert!(lines[0].ends_with("run `pobox fetch login acct` again"), "{}", lines[0]);
    assert!(lines[0].contains(what), "{}", lines[0]);
    assert!(!lines[0].contains("Trace ID"), "only the first line of the provider's text");
}

#[test]
fn expired_and_revoked_refresh_tokens_ask_for_a_new_login() {
    let idp = Idp::start();
    let srv = serve(&idp);
    srv.deliver(USER, &messages(1, "expired"));
    let s = setup(&srv, &idp, &format!("device_url = \"{}\"\n", idp.url("/device")), "oauth2");
    idp.state.lock().unwrap().access_lifetime = 60;
    device_login(&s, &idp);
    idp.set_all_refresh("expired");
    assert_login_again(&s.run(&[]), "expired due to inactivity");
    assert_eq!(local_messages(&s.maildir).len(), 0, "no login without a token");
    // After a new login it works again; then the provider revokes it.
    device_login(&s, &idp);
    idp.set_all_refresh("revoked");
    assert_login_again(&s.run(&[]), "revoked");
    device_login(&s, &idp);
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    // And never logged in at all:
    std::fs::remove_file(token_file(&s)).unwrap();
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not logged in yet: run `pobox fetch login acct`"), "{}", show(&o));
}

#[test]
fn a_token_the_pop3_server_refuses_is_refreshed_once() {
    let idp = Idp::start();
    let srv = serve(&idp);
    let msgs = messages(2, "refused");
    srv.deliver(USER, &msgs);
    let s = setup(&srv, &idp, &format!("device_url = \"{}\"\n", idp.url("/device")), "oauth2");
    // The login hands out a long-lived token the server will not take
    // (as after an early revocation).
    idp.state.lock().unwrap().wrong_audience = true;
    device_login(&s, &idp);
    idp.state.lock().unwrap().wrong_audience = false;
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(idp.grants("refresh_token"), 1, "refreshed once after the refusal");
    assert_exactly_once_clean(&s.maildir, &msgs);
    // A token no refresh can fix: the server keeps refusing → exit 4 after
    // exactly one forced refresh, no loop.
    idp.state.lock().unwrap().wrong_audience = true;
    let mut stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(token_file(&s)).unwrap()).unwrap();
    stored["access_token"] = idp.jwt(3600, "someone.else").into();
    std::fs::write(token_file(&s), stored.to_string()).unwrap();
    srv.deliver(USER, &messages(1, "refused-2"));
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert_eq!(idp.grants("refresh_token"), 2, "one forced refresh per run");
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("pobox fetch: acct: authentication failed: "), "{}", show(&o));
}

#[test]
fn daemon_waits_for_the_login_then_refreshes_on_its_own() {
    let idp = Idp::start();
    let srv = serve(&idp);
    let s = setup(&srv, &idp, &format!("device_url = \"{}\"\n", idp.url("/device")), "oauth2");
    // poll_interval belongs in the account table, before [accounts.acct.oauth].
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("timeout_secs = 20\n", "timeout_secs = 20\npoll_interval = 1\n")).unwrap();
    // Short-lived tokens: every poll has to refresh.
    idp.state.lock().unwrap().access_lifetime = 60;
    let err_file = s.dir.path().join("daemon.err");
    let mut daemon = s
        .command(&["--daemon", "--min-poll-interval", "1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let err = || std::fs::read_to_string(&err_file).unwrap_or_default();
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}: {}", err());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("the not-logged-in error", &|| err().contains("not logged in yet: run `pobox fetch login acct`"));
    let first = messages(2, "daemon-oauth-1");
    srv.deliver(USER, &first);
    device_login(&s, &idp);
    wait("mail after the login", &|| local_messages(&s.maildir).len() == 2);
    let second = messages(2, "daemon-oauth-2");
    srv.deliver(USER, &second);
    wait("mail on a later poll", &|| local_messages(&s.maildir).len() == 4);
    assert!(idp.grants("refresh_token") >= 2, "each poll refreshed the short-lived token");
    rustix::process::kill_process(rustix::process::Pid::from_child(&daemon), rustix::process::Signal::TERM).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = daemon.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "daemon did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", err());
    assert_exactly_once_clean(&s.maildir, &[first, second].concat());
    assert!(!err().contains("rt-"), "no token in the log: {}", err());
}
