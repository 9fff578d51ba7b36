//! OAuth bearer logins (OAUTHBEARER and XOAUTH2) through the real
//! `pobox serve` with an `[oauth]` table in its config file: SECURITY.md's
//! refusal list, one token per line, each next to a valid token that
//! differs only in what is being refused, so a refusal for another reason
//! cannot pass the test.
//!
//! Tokens are signed with the `openssl` command (Debian `openssl`): RS256
//! and ES256 keys generated per test run, published in a JWKS file.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use sha2::Digest as _;

use crate::util::{self, Dir, PW, Pop3, TestCommand};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "pop.example";

/// A signing key made with openssl, and its JWK.
struct Key {
    pem: PathBuf,
    kid: String,
    alg: &'static str,
    jwk: serde_json::Value,
    /// The public key as PEM text: what an alg-confusion attacker uses as
    /// the HMAC secret.
    public_pem: Vec<u8>,
}

fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let out = TestCommand::tool("openssl").args(args).stdin(stdin).output();
    assert!(out.status.success(), "openssl {args:?}\n{}", out.dump());
    out.stdout
}

impl Key {
    fn generate(dir: &Path, kid: &str, alg: &'static str) -> Key {
        let pem = dir.join(format!("{kid}.pem"));
        let p = pem.to_str().unwrap();
        let jwk = if alg == "RS256" {
            openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p], b"");
            let modulus = String::from_utf8(openssl(&["rsa", "-in", p, "-noout", "-modulus"], b"")).unwrap();
            let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
            let n: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            serde_json::json!({"kty": "RSA", "kid": kid, "use": "sig", "n": B64URL.encode(n), "e": "AQAB"})
        } else {
            openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p], b"");
            // SubjectPublicKeyInfo DER ends with the uncompressed point
            // 04 || x || y.
            let der = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"], b"");
            let point = &der[der.len() - 65..];
            assert_eq!(point[0], 4);
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                               "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..])})
        };
        let public_pem = openssl(&["pkey", "-in", p, "-pubout"], b"");
        Key { pem, kid: kid.into(), alg, jwk, public_pem }
    }

    /// A JWT with these claims, signed by this key (header `kid` as given).
    fn sign(&self, kid: &str, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": self.alg, "typ": "JWT", "kid": kid});
        let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let sig = openssl(&["dgst", "-sha256", "-sign", self.pem.to_str().unwrap()], input.as_bytes());
        // RS256 is PKCS#1 v1.5 as openssl writes it; ES256 wants r || s
        // (32 bytes each), openssl writes DER.
        let sig = if self.alg == "ES256" { ecdsa_der_to_raw(&sig) } else { sig };
        format!("{input}.{}", B64URL.encode(sig))
    }
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` → the fixed-size JWS form.
fn ecdsa_der_to_raw(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "DER sequence");
    let mut pos = if der[1] & 0x80 != 0 { 2 + usize::from(der[1] & 0x7f) } else { 2 };
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[pos], 0x02, "DER integer");
        let len = usize::from(der[pos + 1]);
        let int = &der[pos + 2..pos + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        pos += 2 + len;
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = sha2::Sha256::digest([pad(0x36), msg.to_vec()].concat());
    sha2::Sha256::digest([pad(0x5c), inner.to_vec()].concat()).to_vec()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims naming alice by `sub` and by a verified `email` (whichever the
/// configured identity claim is), valid for 5 minutes.
fn claims() -> serde_json::Value {
    let t = now();
    serde_json::json!({"iss": ISSUER, "aud": [AUDIENCE, "other"], "exp": t + 300, "iat": t,
                       "sub": "alice", "email": "alice", "email_verified": true})
}

fn with(mut c: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    c[key] = value;
    c
}

fn write_jwks(path: &Path, keys: &[&Key]) {
    let jwks = serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    // Rename into place, as the timer job that refreshes it should.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, jwks.to_string()).unwrap();
    #[allow(clippy::disallowed_methods)] // a config file, not a Maildir
    std::fs::rename(&tmp, path).unwrap();
}

#[derive(Debug, Clone, Copy)]
enum Mech {
    OAuthBearer,
    XOAuth2,
}

/// One login with `token`; true for `+OK`, false for the RFC 7628 refusal
/// (an `invalid_token` error challenge, then `-ERR [AUTH]`). Anything else
/// fails the test.
fn login(port: u16, mech: Mech, token: &str) -> bool {
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
        c.quit();
        return true;
    }
    let challenge = reply.strip_prefix("+ ").unwrap_or_else(|| panic!("{mech:?}: {reply}"));
    let json: serde_json::Value = serde_json::from_slice(&B64.decode(challenge.trim_end()).unwrap()).unwrap();
    assert_eq!(json["status"], "invalid_token", "{mech:?}: {json}");
    let end = c.cmd(ack);
    assert!(end.starts_with("-ERR [AUTH] authentication failed"), "{mech:?}: {end}");
    false
}

#[test]
fn oauth_refusal_matrix_through_pobox_serve() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let keys_dir = dir.scratch("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    let rsa = Key::generate(&keys_dir, "rsa1", "RS256");
    let ec = Key::generate(&keys_dir, "ec1", "ES256");
    let outsider = Key::generate(&keys_dir, "outsider", "ES256");
    let jwks = dir.scratch("jwks.json");
    write_jwks(&jwks, &[&rsa, &ec]);
    let oauth = format!(
        // Identity from the verified email (the tokens carry
        // `email_verified: true`); the default `sub` mapping has its own
        // tests (crates/server/tests/oauth_identity.rs).
        "{{ jwks_file = \"{}\", issuer = \"{ISSUER}\", audience = \"{AUDIENCE}\", leeway_secs = 5, username_claim = \"email\" }}",
        jwks.display()
    );
    // No penalties: this test provokes many refusals on purpose, and the
    // throttle has its own test (wiring.rs).
    let srv = dir.server().config("oauth", &oauth).config("auth_penalty_max_ms", "0").start();
    let port = srv.pop3;

    let header_payload = |alg: &str, kid: &str, c: &serde_json::Value| {
        let h = serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid});
        format!("{}.{}", B64URL.encode(h.to_string()), B64URL.encode(c.to_string()))
    };
    let hs256 = {
        // Alg confusion: HMAC-SHA256 keyed with the RSA *public* key, as a
        // verifier that trusts the header's alg would check it.
        let input = header_payload("HS256", &rsa.kid, &claims());
        format!("{input}.{}", B64URL.encode(hmac_sha256(&rsa.public_pem, input.as_bytes())))
    };
    let alg_none = format!("{}.", header_payload("none", &rsa.kid, &claims()));
    let t = now();
    let matrix: Vec<(&str, String)> = vec![
        ("HS256 signed with the RSA public key (alg confusion)", hs256),
        ("alg none", alg_none),
        ("wrong iss", ec.sign("ec1", &with(claims(), "iss", "https://evil.example".into()))),
        ("nbf in the future", ec.sign("ec1", &with(claims(), "nbf", (t + 600).into()))),
        ("expired", rsa.sign("rsa1", &with(claims(), "exp", (t - 600).into()))),
        ("wrong audience", rsa.sign("rsa1", &with(claims(), "aud", "imap.example".into()))),
        ("unknown kid", outsider.sign("outsider", &claims())),
        ("a published kid, signed by another key", outsider.sign("ec1", &claims())),
        ("another user's token", ec.sign("ec1", &with(with(claims(), "sub", "bob".into()), "email", "bob".into()))),
    ];
    for mech in [Mech::OAuthBearer, Mech::XOAuth2] {
        // The controls: the same claims, correctly signed, log in.
        assert!(login(port, mech, &ec.sign("ec1", &claims())), "{mech:?}: valid ES256 token refused\n{}", srv.dump());
        assert!(login(port, mech, &rsa.sign("rsa1", &claims())), "{mech:?}: valid RS256 token refused\n{}", srv.dump());
        for (what, token) in &matrix {
            assert!(!login(port, mech, token), "{mech:?}: {what}: accepted");
        }
    }

    // JWKS reload without a restart: a new key is honoured once published,
    // and a key removed from the file stops working.
    let rotated = Key::generate(&keys_dir, "ec2", "ES256");
    let new_token = rotated.sign("ec2", &claims());
    assert!(!login(port, Mech::OAuthBearer, &new_token), "token of a not-yet-published key accepted");
    write_jwks(&jwks, &[&rotated]);
    assert!(
        util::eventually(std::time::Duration::from_secs(10), || login(port, Mech::OAuthBearer, &new_token)),
        "the rotated key was not picked up from the JWKS file\n{}",
        srv.dump()
    );
    assert!(!login(port, Mech::OAuthBearer, &ec.sign("ec1", &claims())), "a key removed from the JWKS still works");
}
