//! Logs an admin can read and a log shipper can parse (issue 12, item 7):
//! one summary line per POP3 session with plain `key=value` values (JSON
//! members with `log_format = "json"`), and no Rust `Debug` forms anywhere.

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::Digest as _;

use crate::util::*;

const MSG1: &[u8] = b"From: a@example.org\nSubject: one\n\nfirst\n";
const MSG2: &[u8] = b"From: b@example.org\nSubject: two\n\nsecond\n";

/// The documented UIDL-set hash: SHA-256 over each UIDL followed by a line
/// feed, first 8 hex digits (what `sha256sum` of the UIDL column gives).
fn expected_uidl_hash(uidls: &[(u32, String)]) -> String {
    let mut h = sha2::Sha256::new();
    for (_, u) in uidls {
        h.update(u.as_bytes());
        h.update(b"\n");
    }
    h.finalize()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// One summary line's fields, as strings (JSON numbers as their digits).
type Fields = BTreeMap<String, String>;

/// The `key=value` fields of a text log line (values never contain spaces
/// in the summary line).
fn text_fields(line: &str) -> Fields {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every member of a JSON log line; strings unquoted.
fn json_fields(line: &str) -> Fields {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
        .collect()
}

/// The summary lines of `user`'s sessions logged so far, oldest first.
fn summaries(server: &Server<'_>, format: &str, user: &str) -> Vec<Fields> {
    server
        .stderr()
        .lines()
        .filter(|l| l.contains("pop3 session ended"))
        .map(|l| if format == "json" { json_fields(l) } else { text_fields(l) })
        .filter(|f| f.get("user").map(String::as_str) == Some(user))
        .collect()
}

fn wait_for_summaries(server: &Server<'_>, format: &str, user: &str, n: usize) -> Vec<Fields> {
    assert!(
        eventually(Duration::from_secs(10), || summaries(server, format, user).len() >= n),
        "{format}: {n} summary line(s) for {user} expected\n{}",
        server.dump()
    );
    summaries(server, format, user)
}

fn field<'f>(f: &'f Fields, key: &str) -> &'f str {
    f.get(key).unwrap_or_else(|| panic!("no {key} in the summary line: {f:?}"))
}

#[test]
fn session_summary_line_after_quit_and_after_a_reset_in_text_and_json() {
    for format in ["text", "json"] {
        let dir = Dir::new();
        dir.add_user("alice", PW);
        dir.deliver("alice", MSG1);
        dir.deliver("alice", MSG2);
        let server = dir.server().config("log_format", &format!("{format:?}")).start();

        // QUIT: one RETR, one DELE, UPDATE removes it.
        let mut c = server.login("alice", PW);
        let uidls = c.uidl();
        assert_eq!(uidls.len(), 2);
        let body = c.cmd_multi("RETR 1");
        assert!(c.cmd("DELE 1").starts_with("+OK"));
        c.quit();
        let f = wait_for_summaries(&server, format, "alice", 1).remove(0);
        assert_eq!(field(&f, "end"), "quit", "{f:?}");
        assert_eq!(field(&f, "tls"), "false");
        assert_eq!(field(&f, "mechanism"), "USER");
        assert_eq!(field(&f, "messages"), "2");
        assert_eq!(field(&f, "retrieved"), "1");
        assert_eq!(field(&f, "deleted"), "1");
        // The +OK line, the stuffed body and the terminator.
        let bytes: u64 = field(&f, "bytes").parse().unwrap();
        assert!(bytes >= body.len() as u64 + 3, "bytes={bytes} for a {}-octet body", body.len());
        field(&f, "duration_ms").parse::<u64>().expect("duration_ms is a number");
        assert_eq!(field(&f, "uidl_hash"), expected_uidl_hash(&uidls));
        assert!(field(&f, "peer").starts_with("127.0.0.1:"), "{f:?}");

        // Reset after RETR: nothing deleted, and the hash follows the
        // listing (one message fewer now).
        let mut c = server.login_after_close("alice", PW);
        let uidls = c.uidl();
        assert_eq!(uidls.len(), 1);
        socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO)).unwrap();
        c.cmd_multi("RETR 1");
        drop(c);
        let f = wait_for_summaries(&server, format, "alice", 2).remove(1);
        // A reset reads as an error (ECONNRESET); a client that closed
        // normally would be `eof`. Either way no UPDATE.
        assert!(["error", "eof"].contains(&field(&f, "end")), "{f:?}");
        assert_eq!(field(&f, "retrieved"), "1");
        assert_eq!(field(&f, "deleted"), "0");
        assert_eq!(field(&f, "uidl_hash"), expected_uidl_hash(&uidls));
        assert_ne!(field(&f, "uidl_hash"), expected_uidl_hash(&[]), "not the hash of an empty listing");

        // A clean close without QUIT.
        let c = server.login_after_close("alice", PW);
        c.drop_connection();
        let f = wait_for_summaries(&server, format, "alice", 3).remove(2);
        assert_eq!(field(&f, "end"), "eof", "{f:?}");
        assert_eq!(field(&f, "retrieved"), "0");

        // A connection that only failed to log in gets the shorter line.
        let mut c = server.pop3();
        c.cmd("USER alice");
        assert!(c.cmd("PASS wrong").starts_with("-ERR"));
        assert!(c.cmd("QUIT").starts_with("+OK"));
        assert!(
            eventually(Duration::from_secs(10), || server.stderr().contains("pop3 connection ended without login")),
            "{}",
            server.dump()
        );
        let log = server.stderr();
        let line = log.lines().find(|l| l.contains("pop3 connection ended without login")).unwrap();
        let f = if format == "json" { json_fields(line) } else { text_fields(line) };
        assert_eq!(field(&f, "auth_failures"), "1", "{line}");
        assert_eq!(field(&f, "end"), "quit", "{line}");
        assert_eq!(field(&f, "tls"), "false", "{line}");
        assert!(!f.contains_key("user"), "no user: nobody logged in: {line}");
    }
}

/// A scripted run through every kind of event an admin sees: a failed
/// login, LMTP delivery, RETR, DELE and QUIT, a kick. No line may carry a
/// Rust `Debug` form (`Some("alice")`, `Removed(0)`, a quoted plain string).
#[test]
fn no_debug_forms_in_the_log_of_a_scripted_run() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.add_user("bob", PW);
    let server = dir.server().log("info,pobox=debug,pobox_server=debug").start();

    let mut c = server.pop3();
    c.cmd("USER alice");
    assert!(c.cmd("PASS wrong").starts_with("-ERR"));
    drop(c);

    let mut l = server.lmtp();
    assert!(l.cmd("MAIL FROM:<x@example.org>").starts_with("250"));
    assert!(l.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(l.cmd("DATA").starts_with("354"));
    let r = l.cmd("Subject: hi\r\n\r\nbody\r\n.");
    assert!(r.starts_with("250"), "{r}");
    l.cmd("QUIT");

    let mut c = server.login("alice", PW);
    c.cmd_multi("RETR 1");
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    c.quit();

    let mut b = server.login("bob", PW);
    dir.pobox().args(["kick", "bob"]).assert_exit(0);
    let r = b.line();
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");

    for needle in ["authentication failed", "delivered", "end=quit", "end=kicked", "session kicked by admin"] {
        assert!(server.stderr_eventually_contains(needle), "{needle:?} logged\n{}", server.dump());
    }
    let log = server.stderr();
    for line in log.lines() {
        for debug_form in ["Some(", "None", "Ok(", "Err(", "Removed(", "RemovedRestorable", "Partial {", "=\"", "\\\""] {
            assert!(!line.contains(debug_form), "Debug form {debug_form:?} in a log line:\n{line}\n\nwhole log:\n{log}");
        }
    }
}

/// `tls` in the summary line is the connection's state at its end: true on
/// 995 and after STLS, with the SASL mechanism the client used.
#[test]
fn summary_line_says_tls_for_pop3s_and_stls_sessions() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", MSG1);
    let server = dir.server().config("log_format", "\"json\"").start();
    server.python_ok(
        r#"
import base64
p = pop3s()
p._shortcmd("AUTH PLAIN " + base64.b64encode(("\0alice\0" + PW).encode()).decode())
p.quit()
p = pop3()
p.stls(tls_context())
p.user("alice"); p.pass_(PW)
p.retr(1)
p.quit()
"#,
    );
    let all = wait_for_summaries(&server, "json", "alice", 2);
    let (a, b) = (&all[0], &all[1]);
    assert_eq!((field(a, "tls"), field(a, "mechanism"), field(a, "end")), ("true", "PLAIN", "quit"), "{a:?}");
    assert_eq!((field(b, "tls"), field(b, "mechanism"), field(b, "retrieved")), ("true", "USER", "1"), "{b:?}");
}
