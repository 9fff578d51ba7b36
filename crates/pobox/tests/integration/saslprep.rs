//! SASLprep (RFC 4013) on every password path (issue 18 item 4): a non-ASCII
//! password set with `pobox user add` logs in through USER/PASS, AUTH PLAIN
//! and AUTH SCRAM-SHA-256 alike, typed as entered or in its SASLprep form.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use pobox_auth::scram::ScramClient;

use crate::util::{Dir, Pop3};

/// FULLWIDTH LATIN CAPITAL LETTER P and NO-BREAK SPACE: SASLprep maps them
/// to "P" and " " (RFC 4013 §2.1 and NFKC).
const TYPED: &str = "\u{FF30}ässwörd\u{00A0}1";
const PREPARED: &str = "Pässwörd 1";

fn scram_login(c: &mut Pop3, user: &str, password: &str) -> String {
    let client = ScramClient::new(user, "fyko+d2lbbFgONRv9qkxdawL", None);
    let r = c.cmd("AUTH SCRAM-SHA-256");
    assert!(r.starts_with('+'), "AUTH: {r}");
    let r = c.cmd(&B64.encode(client.client_first()));
    let server_first = String::from_utf8(B64.decode(r.strip_prefix("+ ").expect("challenge")).unwrap()).unwrap();
    let (fin, expected) = client.client_final(password.as_bytes(), &server_first).unwrap();
    let r = c.cmd(&B64.encode(fin));
    let Some(v) = r.strip_prefix("+ ") else { return r };
    assert_eq!(B64.decode(v).unwrap(), expected.as_bytes(), "server signature");
    c.cmd("")
}

#[test]
fn non_ascii_password_logs_in_through_pass_plain_and_scram_in_either_form() {
    let dir = Dir::new();
    let stdin = format!("{TYPED}\n");
    dir.pobox().args(["user", "add", "alice", "--password-stdin"]).stdin(stdin).assert_exit(0);
    let users = std::fs::read_to_string(dir.users_file()).unwrap();
    assert!(users.contains("scram={SCRAM-SHA-256}"), "{users}");
    let srv = dir.server().start();

    for pw in [TYPED, PREPARED] {
        srv.login("alice", pw).quit();

        let mut c = srv.pop3();
        let r = c.cmd(&format!("AUTH PLAIN {}", B64.encode(format!("\0alice\0{pw}"))));
        assert!(r.starts_with("+OK"), "PLAIN {pw:?}: {r}");
        c.quit();

        let mut c = srv.pop3();
        let r = scram_login(&mut c, "alice", pw);
        assert!(r.starts_with("+OK"), "SCRAM {pw:?}: {r}");
        c.quit();
    }

    // Wrong passwords and passwords SASLprep rejects fail alike.
    for pw in ["Pässwörd 2", "Pässwörd 1\u{0007}"] {
        let mut c = srv.pop3();
        assert!(c.cmd("USER alice").starts_with("+OK"));
        let r = c.cmd(&format!("PASS {pw}"));
        assert!(r.starts_with("-ERR [AUTH]"), "PASS {pw:?}: {r}");
    }
    let mut c = srv.pop3();
    let r = scram_login(&mut c, "alice", "Pässwörd 2");
    assert!(r.starts_with("-ERR [AUTH]"), "SCRAM wrong password: {r}");
}

#[test]
fn user_add_refuses_a_password_saslprep_prohibits() {
    let dir = Dir::new();
    let out = dir.pobox().args(["user", "add", "bob", "--password-stdin"]).stdin("bad\u{0007}pw\n").output();
    assert!(!out.status.success() && out.stderr().contains("SASLprep"), "{}", out.dump());
    assert!(!out.stderr().contains("bad\u{0007}pw"), "the password is not echoed");
}
