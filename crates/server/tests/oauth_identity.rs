//! Which user an OAuth bearer token logs in as, through the real POP3
//! listener (issue 17, finding 7, "nOAuth"): under the default identity
//! claim a token's `sub` is mapped to a user by `oauth_sub=` in the
//! passwd-file; an `email` claim the user could have set at the provider
//! means nothing, and with `username_claim = "email"` it counts only when
//! the provider says it verified it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use pobox_auth::UserDb;
use pobox_auth::oauth::OAuthConfig;
use pobox_server::{Config, Protocol, Services};
use pobox_store::{MailLocation, MaildirStore};
use ring::signature::{self, KeyPair as _};

mod support;

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "pop.example";
/// alice's subject at the provider; bob's account there has the email
/// address "alice" (users choose their own address at this provider).
const ALICE_SUB: &str = "248289761001";
const BOB_SUB: &str = "9f3c1e7a-bob";

struct Idp {
    key: signature::EcdsaKeyPair,
}

impl Idp {
    fn new(dir: &Path) -> Idp {
        let rng = ring::rand::SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = key.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
            "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65])}]});
        std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
        Idp { key }
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let mut all = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300});
        for (k, v) in claims.as_object().unwrap() {
            all[k] = v.clone();
        }
        let header = serde_json::json!({"alg": "ES256", "kid": "k"});
        let signed = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(all.to_string()));
        let sig = self.key.sign(&ring::rand::SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", B64URL.encode(sig.as_ref()))
    }
}

/// A server with alice (sub mapped) and bob (sub mapped), OAuth configured
/// with `username_claim` (`None`: the default). Returns the POP3 address
/// and the server (stopped when dropped).
fn start(dir: &Path, username_claim: Option<&str>) -> (String, support::Running) {
    start_with(dir, username_claim, |_| {})
}

/// [`start`], with `adjust` applied to the server's configuration.
fn start_with(
    dir: &Path,
    username_claim: Option<&str>,
    adjust: impl FnOnce(&mut Config),
) -> (String, support::Running) {
    let passwd = dir.join("users");
    std::fs::write(
        &passwd,
        format!(
            "alice:{{PLAIN}}alice-pw::::::oauth_sub={ALICE_SUB}\n\
             bob:{{PLAIN}}bob-pw::::::oauth_sub={BOB_SUB}\n"
        ),
    )
    .unwrap();
    let users = UserDb::open(passwd);
    let location = MailLocation::new(format!("{}/mail/{{user}}", dir.display())).unwrap();
    let mut config = Config {
        auth_failure_delay: Duration::ZERO,
        oauth: Some(OAuthConfig {
            jwks_file: Some(dir.join("jwks.json")),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            username_claim: username_claim.unwrap_or(OAuthConfig::DEFAULT_USERNAME_CLAIM).into(),
            leeway: Duration::ZERO,
            required_scope: None,
        }),
        ..Config::default()
    };
    adjust(&mut config);
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(MaildirStore::new(location)), None));
    let server = support::spawn(svc, &[Protocol::Pop3]);
    (server.addrs[0].clone(), server)
}

/// Runs one XOAUTH2 or OAUTHBEARER exchange on a fresh loopback connection
/// and returns the final reply line (after answering an error challenge).
fn login(addr: &str, mechanism: &str, requested: &str, token: &str) -> String {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut s = BufReader::new(tcp);
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    assert!(line.starts_with("+OK"), "{line}");
    let response = match mechanism {
        "XOAUTH2" => format!("user={requested}\x01auth=Bearer {token}\x01\x01"),
        _ => format!("n,a={requested},\x01auth=Bearer {token}\x01\x01"),
    };
    let send = |s: &mut BufReader<TcpStream>, text: &str| -> String {
        s.get_mut().write_all(format!("{text}\r\n").as_bytes()).unwrap();
        let mut reply = String::new();
        s.read_line(&mut reply).unwrap();
        reply.trim_end().to_string()
    };
    let reply = send(&mut s, &format!("AUTH {mechanism} {}", B64.encode(response)));
    if reply.starts_with("+ ") {
        // RFC 7628 §3.2.2: the error challenge; answering it ends in -ERR.
        return send(&mut s, if mechanism == "XOAUTH2" { "" } else { "AQ==" });
    }
    if reply.starts_with("+OK") {
        assert!(send(&mut s, "QUIT").starts_with("+OK"));
    }
    reply
}

#[test]
fn the_default_identity_is_the_mapped_subject_not_a_self_chosen_email() {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let (addr, _stop) = start(dir.path(), None);
    let bob_posing = idp.token(serde_json::json!({"sub": BOB_SUB, "email": "alice", "email_verified": true}));
    let alice = idp.token(serde_json::json!({"sub": ALICE_SUB, "email": "someone-else"}));
    for mechanism in ["XOAUTH2", "OAUTHBEARER"] {
        let r = login(&addr, mechanism, "alice", &bob_posing);
        assert_eq!(r, "-ERR [AUTH] authentication failed", "{mechanism}: bob's token is not alice's");
        let r = login(&addr, mechanism, "bob", &bob_posing);
        assert!(r.starts_with("+OK logged in"), "{mechanism}: {r}");
        let r = login(&addr, mechanism, "alice", &alice);
        assert!(r.starts_with("+OK logged in"), "{mechanism}: {r}");
    }
    // A subject equal to a user name is not a mapping.
    let named = idp.token(serde_json::json!({"sub": "alice"}));
    assert_eq!(login(&addr, "XOAUTH2", "alice", &named), "-ERR [AUTH] authentication failed");
}

#[test]
fn an_email_identity_needs_email_verified() {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let (addr, _stop) = start(dir.path(), Some("email"));
    let unverified = idp.token(serde_json::json!({"sub": BOB_SUB, "email": "alice"}));
    let denied = idp.token(serde_json::json!({"sub": BOB_SUB, "email": "alice", "email_verified": false}));
    let verified = idp.token(serde_json::json!({"sub": ALICE_SUB, "email": "alice", "email_verified": true}));
    assert_eq!(login(&addr, "XOAUTH2", "alice", &unverified), "-ERR [AUTH] authentication failed");
    assert_eq!(login(&addr, "OAUTHBEARER", "alice", &denied), "-ERR [AUTH] authentication failed");
    let r = login(&addr, "OAUTHBEARER", "alice", &verified);
    assert!(r.starts_with("+OK logged in"), "{r}");
}

/// The proof a token mints says "bearer token": the login history records
/// `oauth` for it, and `require_app_passwords` (which refuses the main
/// password) lets it in, while alice's password stays refused.
#[test]
fn a_bearer_token_login_is_recorded_as_oauth_and_is_not_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let history = dir.path().join("logins");
    let (addr, _stop) = start_with(dir.path(), None, |config| {
        config.require_app_passwords = true;
        config.login_history_dir = Some(history.clone());
    });
    let alice = idp.token(serde_json::json!({"sub": ALICE_SUB}));
    for mechanism in ["XOAUTH2", "OAUTHBEARER"] {
        let r = login(&addr, mechanism, "alice", &alice);
        assert!(r.starts_with("+OK logged in"), "{mechanism}: {r}");
    }
    let tcp = TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut s = BufReader::new(tcp);
    let mut send = |text: &str| -> String {
        if !text.is_empty() {
            s.get_mut().write_all(format!("{text}\r\n").as_bytes()).unwrap();
        }
        let mut reply = String::new();
        s.read_line(&mut reply).unwrap();
        reply.trim_end().to_string()
    };
    assert!(send("").starts_with("+OK"));
    assert!(send("USER alice").starts_with("+OK"));
    assert_eq!(send("PASS alice-pw"), "-ERR [AUTH] authentication failed", "the main password is refused");
    let logins = pobox_store::history::LoginHistory::new(&history).sessions("alice").unwrap();
    let recorded: Vec<(&str, &str)> =
        logins.iter().map(|l| (l.login.credential.as_str(), l.login.mechanism.as_str())).collect();
    assert_eq!(recorded, [("oauth", "XOAUTH2"), ("oauth", "OAUTHBEARER")]);
}
