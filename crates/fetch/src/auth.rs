//! Authentication: where the secret comes from, which mechanism to use, and
//! the client side of the SASL mechanisms (RFC 5034 framing).
//!
//! Mechanisms: USER/PASS (RFC 1939), PLAIN (RFC 4616), LOGIN, SCRAM-SHA-256
//! (RFC 5802/7677, without channel binding), XOAUTH2 and OAUTHBEARER
//! (RFC 7628). Not done: APOP and CRAM-MD5 (MD5 of a shared secret; nothing
//! a TLS-only fetcher needs), GSSAPI, SASLprep of SCRAM passwords (the
//! password is used as UTF-8 bytes, which is what SASLprep yields for ASCII).

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pobox_proto::pop3::client::Capabilities;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::{Account, AuthMethod, PasswordSource};
use crate::error::FetchError;

/// A password or token: the workspace's one credential type (wiped on
/// drop, never printed), shared with the server through `pobox-proto`.
pub use pobox_proto::Secret;

/// The secret as text. Every secret this crate obtains is built from a
/// `String` (config, command output, prompt, OAuth token), so this is the
/// text it was made from; [`login`](crate::session) refuses a non-UTF-8
/// secret handed in from outside with a clear error before any exchange.
pub(crate) fn expose(secret: &Secret) -> &str {
    secret.as_str().unwrap_or_default()
}

/// Obtains the account's secret: inline, from `password_command` (first line
/// of its output; it must exit 0), or from a prompt on the terminal.
///
/// # Errors
/// [`FetchError::Password`] when the command fails or no terminal is there.
pub fn obtain_secret(account: &Account) -> Result<Secret, FetchError> {
    match &account.password {
        PasswordSource::Inline(p) => Ok(Secret::from(p.clone())),
        PasswordSource::Command(cmd) => run_password_command(cmd),
        PasswordSource::Prompt => prompt(&format!("Password for {}: ", account.identity())),
        PasswordSource::OAuth2 => match &account.oauth {
            Some(o) => Ok(crate::oauth::access_token(&account.name, o, false)?),
            None => Err(FetchError::Password("auth = \"oauth2\" without OAuth settings".into())),
        },
    }
}

fn run_password_command(cmd: &str) -> Result<Secret, FetchError> {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::inherit())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| FetchError::Password(format!("cannot run password_command: {e}")))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(FetchError::Password(format!("password_command failed ({})", out.status)));
    }
    let text = std::str::from_utf8(&stdout)
        .map_err(|_| FetchError::Password("password_command printed non-UTF-8".into()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(FetchError::Password("password_command printed nothing".into()));
    }
    Ok(Secret::from(line.to_string()))
}

fn prompt(text: &str) -> Result<Secret, FetchError> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| FetchError::Password("no password configured and no terminal to ask on".into()))?;
    let old = tcgetattr(&tty).map_err(|e| FetchError::Password(format!("terminal: {e}")))?;
    let mut quiet = old.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    let mut w = &tty;
    let _ = w.write_all(text.as_bytes());
    tcsetattr(&tty, OptionalActions::Flush, &quiet).map_err(|e| FetchError::Password(format!("terminal: {e}")))?;
    let mut line = Zeroizing::new(String::new());
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, OptionalActions::Flush, &old);
    let _ = w.write_all(b"\n");
    read.map_err(|e| FetchError::Password(format!("terminal: {e}")))?;
    Ok(Secret::from(line.trim_end_matches(['\r', '\n']).to_string()))
}

/// SASL mechanisms this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The LOGIN draft: two base64 prompts.
    Login,
    /// RFC 7677.
    ScramSha256,
    /// Google/Microsoft XOAUTH2.
    Xoauth2,
    /// RFC 7628.
    Oauthbearer,
}

impl Mechanism {
    /// The IANA name sent in `AUTH`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::Xoauth2 => "XOAUTH2",
            Mechanism::Oauthbearer => "OAUTHBEARER",
        }
    }
}

/// How to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// USER then PASS.
    UserPass,
    /// AUTH with this mechanism.
    Sasl(Mechanism),
}

/// Picks the login method from the configuration and the server's CAPA.
/// `caps` is `None` when the server did not answer CAPA (an RFC 1939-only
/// server), in which case only USER/PASS can be assumed.
///
/// # Errors
/// [`FetchError::NoAuthMethod`] when the configured method is not offered.
pub fn choose(method: AuthMethod, caps: Option<&Capabilities>) -> Result<Login, FetchError> {
    let offered = |m: Mechanism| caps.is_some_and(|c| c.has_sasl(m.name()));
    let need = |m: Mechanism| {
        // An explicit choice is tried even if CAPA does not list it: some
        // servers (Gmail's XOAUTH2) accept mechanisms they do not advertise.
        Ok(Login::Sasl(m))
    };
    match method {
        AuthMethod::User => Ok(Login::UserPass),
        AuthMethod::Plain => need(Mechanism::Plain),
        AuthMethod::Login => need(Mechanism::Login),
        AuthMethod::ScramSha256 => need(Mechanism::ScramSha256),
        AuthMethod::Xoauth2 => need(Mechanism::Xoauth2),
        AuthMethod::Oauthbearer => need(Mechanism::Oauthbearer),
        // The standard mechanism when offered; else XOAUTH2, which Gmail
        // and Outlook accept (Outlook's CAPA does not always list it).
        AuthMethod::Oauth2 if offered(Mechanism::Oauthbearer) => Ok(Login::Sasl(Mechanism::Oauthbearer)),
        AuthMethod::Oauth2 => Ok(Login::Sasl(Mechanism::Xoauth2)),
        AuthMethod::Auto => {
            // Strongest first: SCRAM never sends the password, PLAIN and
            // USER send it once inside TLS, LOGIN likewise in two pieces.
            for m in [Mechanism::ScramSha256, Mechanism::Plain] {
                if offered(m) {
                    return Ok(Login::Sasl(m));
                }
            }
            match caps {
                None => Ok(Login::UserPass),
                Some(c) if c.user => Ok(Login::UserPass),
                Some(_) if offered(Mechanism::Login) => Ok(Login::Sasl(Mechanism::Login)),
                Some(c) => Err(FetchError::NoAuthMethod(format!(
                    "server offers SASL {:?} and no USER",
                    c.sasl
                ))),
            }
        }
    }
}

/// The client side of one SASL exchange. Feed it each decoded `+ `
/// challenge; it returns the (un-encoded) response.
pub struct SaslClient {
    mech: Mechanism,
    user: String,
    secret: Secret,
    host: String,
    port: u16,
    step: u8,
    scram: Option<Scram>,
    /// Set once the server proved it knows the password (SCRAM `v=`).
    pub server_verified: bool,
}

impl std::fmt::Debug for SaslClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslClient").field("mech", &self.mech).field("step", &self.step).finish()
    }
}

struct Scram {
    client_first_bare: String,
    nonce: String,
    server_signature: Option<[u8; 32]>,
}

impl SaslClient {
    /// Starts an exchange.
    pub fn new(mech: Mechanism, user: &str, secret: Secret, host: &str, port: u16) -> SaslClient {
        SaslClient {
            mech,
            user: user.to_string(),
            secret,
            host: host.to_string(),
            port,
            step: 0,
            scram: None,
            server_verified: false,
        }
    }

    /// The initial response (raw bytes, to be base64-encoded), if the
    /// mechanism has one. LOGIN has none.
    pub fn initial(&mut self) -> Option<Zeroizing<Vec<u8>>> {
        self.initial_with_nonce(None)
    }

    fn initial_with_nonce(&mut self, nonce: Option<&str>) -> Option<Zeroizing<Vec<u8>>> {
        let s = expose(&self.secret);
        let v = match self.mech {
            Mechanism::Plain => format!("\0{}\0{}", self.user, s),
            Mechanism::Login => return None,
            Mechanism::Xoauth2 => format!("user={}\x01auth=Bearer {}\x01\x01", self.user, s),
            Mechanism::Oauthbearer => format!(
                "n,a={},\x01host={}\x01port={}\x01auth=Bearer {}\x01\x01",
                saslname(&self.user),
                self.host,
                self.port,
                s
            ),
            Mechanism::ScramSha256 => {
                let nonce = match nonce {
                    Some(n) => n.to_string(),
                    None => {
                        let bytes: [u8; 18] = rand::random();
                        B64.encode(bytes)
                    }
                };
                let bare = format!("n={},r={}", saslname(&self.user), nonce);
                let first = format!("n,,{bare}");
                self.scram = Some(Scram { client_first_bare: bare, nonce, server_signature: None });
                first
            }
        };
        self.step = 1;
        Some(Zeroizing::new(v.into_bytes()))
    }

    /// Answers a server challenge (already base64-decoded).
    ///
    /// # Errors
    /// [`FetchError::Auth`] when the challenge is malformed or (SCRAM) the
    /// server's proof is wrong: the server does not know the password, so it
    /// is not the server we meant to talk to.
    pub fn respond(&mut self, challenge: &[u8]) -> Result<Zeroizing<Vec<u8>>, FetchError> {
        let step = self.step;
        self.step += 1;
        match self.mech {
            Mechanism::Login => {
                // The prompts are "Username:" and "Password:", but servers
                // vary the text; the order is what counts.
                let v = if step == 0 { self.user.clone() } else { expose(&self.secret).to_string() };
                Ok(Zeroizing::new(v.into_bytes()))
            }
            // A challenge here carries an error report (JSON); the client
            // must answer so the server can send its -ERR (RFC 7628 §3.2.3).
            Mechanism::Xoauth2 => Ok(Zeroizing::new(Vec::new())),
            Mechanism::Oauthbearer => Ok(Zeroizing::new(b"\x01".to_vec())),
            // PLAIN after an empty challenge: the server did not take the
            // initial response (or we did not send it).
            Mechanism::Plain => Ok(Zeroizing::new(format!("\0{}\0{}", self.user, expose(&self.secret)).into_bytes())),
            Mechanism::ScramSha256 => self.scram_step(challenge),
        }
    }

    fn scram_step(&mut self, challenge: &[u8]) -> Result<Zeroizing<Vec<u8>>, FetchError> {
        let bad = |what: &str| FetchError::Auth(format!("SCRAM-SHA-256: {what}"));
        let text = std::str::from_utf8(challenge).map_err(|_| bad("non-UTF-8 challenge"))?;
        let scram = self.scram.as_mut().ok_or_else(|| bad("challenge before client-first"))?;
        if let Some(expected) = scram.server_signature {
            // server-final-message: "v=" proof, or "e=" error.
            if let Some(err) = attr(text, 'e') {
                return Err(FetchError::Auth(format!("SCRAM-SHA-256: server says {err}")));
            }
            let v = attr(text, 'v').ok_or_else(|| bad("server-final without v="))?;
            let got = B64.decode(v).map_err(|_| bad("bad base64 in v="))?;
            if got.as_slice() != expected.as_slice() {
                return Err(bad("server signature does not match: the server does not know the password"));
            }
            self.server_verified = true;
            return Ok(Zeroizing::new(Vec::new()));
        }
        let nonce = attr(text, 'r').ok_or_else(|| bad("server-first without r="))?;
        if !nonce.starts_with(&scram.nonce) || nonce.len() == scram.nonce.len() {
            return Err(bad("server nonce does not extend ours"));
        }
        let salt = B64.decode(attr(text, 's').ok_or_else(|| bad("no salt"))?).map_err(|_| bad("bad salt"))?;
        let iters: u32 = attr(text, 'i').and_then(|i| i.parse().ok()).ok_or_else(|| bad("no iteration count"))?;
        // RFC 7677 §4 wants at least 4096; the cap stops a hostile server
        // from making us burn minutes of CPU.
        if !(4096..=10_000_000).contains(&iters) {
            return Err(bad("iteration count out of range"));
        }
        let salted = pbkdf2_sha256(scram_password(expose(&self.secret)).as_bytes(), &salt, iters);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", scram.client_first_bare, text, without_proof);
        let client_sig = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(client_sig).map(|(a, b)| a ^ b).collect();
        let server_key = hmac_sha256(&salted, b"Server Key");
        scram.server_signature = Some(hmac_sha256(&server_key, auth_message.as_bytes()));
        Ok(Zeroizing::new(format!("{without_proof},p={}", B64.encode(proof)).into_bytes()))
    }

    /// Whether a final `+OK` may be trusted: SCRAM must have verified the
    /// server's signature first (mutual authentication).
    pub fn accept_success(&self) -> bool {
        self.mech != Mechanism::ScramSha256 || self.server_verified
    }
}

/// RFC 5802 §5.1: `=` and `,` in user names are escaped.
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

fn attr(text: &str, name: char) -> Option<&str> {
    text.split(',').find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

/// HMAC-SHA-256 (RFC 2104), small enough to write here rather than pull in
/// another crate for it.
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The password as SCRAM hashes it: SASLprep'd (RFC 5802 §2.2), as the
/// server did when it stored the secret, so a password typed with a
/// fullwidth letter or a no-break space works as it does with PLAIN. One
/// SASLprep refuses is used as typed: a server that never normalised may
/// still know it.
fn scram_password(password: &str) -> Zeroizing<String> {
    Zeroizing::new(match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned(),
        Err(_) => password.to_owned(),
    })
}

/// PBKDF2-HMAC-SHA-256 with one output block (32 octets), as SCRAM's Hi().
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iters: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password, &block);
    let mut out = u;
    for _ in 1..iters {
        u = hmac_sha256(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn scram_normalises_the_password_with_saslprep() {
        assert_eq!(scram_password("pencil").as_str(), "pencil");
        assert_eq!(scram_password("\u{FF30}\u{E4}ssw\u{F6}rd\u{A0}1").as_str(), "P\u{E4}ssw\u{F6}rd 1");
        assert_eq!(scram_password("I\u{AD}X").as_str(), "IX");
        assert_eq!(scram_password("bell\u{7}").as_str(), "bell\u{7}", "refused by SASLprep: used as typed");
    }

    #[test]
    fn scram_sha_256_matches_rfc_7677_example() {
        let mut c = SaslClient::new(Mechanism::ScramSha256, "user", Secret::from("pencil"), "h", 1);
        let first = c.initial_with_nonce(Some("rOprNGfwEbeRWgbNEkqO")).unwrap();
        assert_eq!(first.as_slice(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let fin = c
            .respond(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&fin).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert!(!c.accept_success(), "+OK before v= must not be trusted");
        let empty = c.respond(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        assert!(empty.is_empty());
        assert!(c.accept_success());
    }

    #[test]
    fn scram_refuses_a_server_that_does_not_know_the_password() {
        let mut c = SaslClient::new(Mechanism::ScramSha256, "user", Secret::from("pencil"), "h", 1);
        c.initial_with_nonce(Some("abc"));
        assert!(c.respond(b"r=xyz,s=AAAA,i=4096").is_err(), "nonce must extend ours");
        let mut c = SaslClient::new(Mechanism::ScramSha256, "user", Secret::from("pencil"), "h", 1);
        c.initial_with_nonce(Some("abc"));
        assert!(c.respond(b"r=abcdef,s=AAAA,i=1").is_err(), "too few iterations");
        c.respond(b"r=abcdef,s=AAAA,i=4096").unwrap();
        assert!(c.respond(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_err());
        assert!(!c.accept_success());
    }

    #[test]
    fn plain_login_and_oauth_payloads() {
        let s = || Secret::from("tok");
        let mut p = SaslClient::new(Mechanism::Plain, "me", s(), "h", 995);
        assert_eq!(p.initial().unwrap().as_slice(), b"\0me\0tok");
        let mut l = SaslClient::new(Mechanism::Login, "me", s(), "h", 995);
        assert!(l.initial().is_none());
        assert_eq!(l.respond(b"Username:").unwrap().as_slice(), b"me");
        assert_eq!(l.respond(b"Password:").unwrap().as_slice(), b"tok");
        let mut x = SaslClient::new(Mechanism::Xoauth2, "me@x", s(), "h", 995);
        assert_eq!(x.initial().unwrap().as_slice(), b"user=me@x\x01auth=Bearer tok\x01\x01");
        let mut o = SaslClient::new(Mechanism::Oauthbearer, "a,b", s(), "pop.x", 995);
        assert_eq!(
            o.initial().unwrap().as_slice(),
            b"n,a=a=2Cb,\x01host=pop.x\x01port=995\x01auth=Bearer tok\x01\x01"
        );
        assert_eq!(o.respond(b"{\"status\":\"401\"}").unwrap().as_slice(), b"\x01");
    }

    #[test]
    fn auto_prefers_scram_then_plain_then_user() {
        let caps = |s: &[u8]| Capabilities::parse(pobox_proto::pop3::client::body_lines(s));
        let c = caps(b"USER\r\nSASL PLAIN LOGIN SCRAM-SHA-256\r\n");
        assert_eq!(choose(AuthMethod::Auto, Some(&c)).unwrap(), Login::Sasl(Mechanism::ScramSha256));
        let c = caps(b"USER\r\nSASL PLAIN LOGIN\r\n");
        assert_eq!(choose(AuthMethod::Auto, Some(&c)).unwrap(), Login::Sasl(Mechanism::Plain));
        let c = caps(b"USER\r\n");
        assert_eq!(choose(AuthMethod::Auto, Some(&c)).unwrap(), Login::UserPass);
        let c = caps(b"SASL LOGIN\r\n");
        assert_eq!(choose(AuthMethod::Auto, Some(&c)).unwrap(), Login::Sasl(Mechanism::Login));
        let c = caps(b"SASL GSSAPI\r\n");
        assert!(choose(AuthMethod::Auto, Some(&c)).is_err());
        assert_eq!(choose(AuthMethod::Auto, None).unwrap(), Login::UserPass);
        assert_eq!(choose(AuthMethod::Xoauth2, None).unwrap(), Login::Sasl(Mechanism::Xoauth2));
    }

    #[test]
    fn password_command_takes_first_line_and_checks_status() {
        let mut a = crate::config::Config::parse(
            "state_dir=\"/tmp\"\n[accounts.a]\nhost=\"h\"\nuser=\"u\"\npassword_command=\"printf 's3cret\\\\nignored'\"\nmaildir=\"/tmp/m\"\n",
        )
        .unwrap()
        .accounts
        .remove(0);
        assert_eq!(expose(&obtain_secret(&a).unwrap()), "s3cret");
        a.password = PasswordSource::Command("echo x; exit 3".into());
        assert!(obtain_secret(&a).is_err());
        assert_eq!(format!("{:?}", Secret::from("x")), "[redacted]");
    }
}
