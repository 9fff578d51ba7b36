//! Session tests: a tiny in-memory driver runs the state machine exactly as
//! the async driver does, so whole dialogues (RFC 1939 §10 and the edge
//! cases of the RFC checklist) can be replayed at every chunk size.

use super::*;
use crate::dot::WireEncoder;
use crate::line::{LineSplitter, Split};

struct Harness {
    session: ServerSession,
    splitter: LineSplitter,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    messages: Vec<Vec<u8>>,
    in_use: bool,
    closed: bool,
    updates: Vec<Vec<usize>>,
    tls_started: usize,
    login_delay: Option<u32>,
    user_expire: Expire,
    /// Fake driver-run mechanism: what it has seen so far.
    sasl_seen: Vec<(Vec<u8>, bool)>,
}

fn config() -> SessionConfig {
    SessionConfig {
        greeting: "POP3 server ready".into(),
        secure: false,
        stls_available: true,
        plaintext_auth_allowed: true,
        apop_timestamp: Some("<1896.697170952@dbc.mtview.ca.us>".into()),
        expire: Expire::Never,
        expire_per_user: false,
        login_delay: (0, false),
        implementation: Some("pobox".into()),
    }
}

impl Harness {
    fn new(config: SessionConfig, messages: &[&[u8]]) -> Harness {
        let mut h = Harness {
            session: ServerSession::new(config),
            splitter: LineSplitter::new(crate::MAX_COMMAND_LINE),
            inbuf: Vec::new(),
            out: Vec::new(),
            messages: messages.iter().map(|m| m.to_vec()).collect(),
            in_use: false,
            closed: false,
            updates: Vec::new(),
            tls_started: 0,
            login_delay: None,
            user_expire: Expire::Never,
            sasl_seen: Vec::new(),
        };
        h.drain();
        h
    }

    /// Feeds `input` in chunks of `chunk` bytes and returns all output.
    fn feed(&mut self, input: &[u8], chunk: usize) -> String {
        for piece in input.chunks(chunk) {
            self.inbuf.extend_from_slice(piece);
            self.process();
        }
        String::from_utf8(std::mem::take(&mut self.out)).unwrap()
    }

    fn process(&mut self) {
        while !self.closed && self.session.wants_input() {
            match self.splitter.split(&self.inbuf) {
                Split::NeedMoreData { consumed } => {
                    self.inbuf.drain(..consumed);
                    if consumed == 0 || self.inbuf.is_empty() {
                        return;
                    }
                }
                Split::Line { line, consumed } => {
                    let line = line.to_vec();
                    self.inbuf.drain(..consumed);
                    self.session.handle_line(&line);
                    self.drain();
                }
                Split::TooLong { consumed, continued } => {
                    self.inbuf.drain(..consumed);
                    if continued {
                        self.session.handle_garbage();
                    } else {
                        self.session.handle_line_too_long();
                    }
                    self.drain();
                }
            }
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(bytes) => self.out.extend_from_slice(&bytes),
                Action::Authenticate(Credentials::SaslStep { response, first, .. }) => {
                    // A fake three-round mechanism shaped like SCRAM:
                    // "hello" → challenge, "proof" → final challenge, "" → ok.
                    if first {
                        self.sasl_seen.clear();
                    }
                    self.sasl_seen.push((response.as_bytes().to_vec(), first));
                    let msgs: Vec<&[u8]> = self.sasl_seen.iter().map(|(m, _)| &m[..]).collect();
                    match msgs.as_slice() {
                        [b"hello"] => self.session.handle_sasl_challenge(b"server-first"),
                        [b"hello", b"proof"] => self.session.handle_sasl_challenge(b"v=final"),
                        [b"hello", b"proof", b""] => self.session.handle_login(Ok(LoginGrant {
                            user: "mrose".into(),
                            messages: Vec::new(),
                            expire: Expire::Never,
                            login_delay: 0,
                        })),
                        _ => self.session.handle_login(Err(LoginFailure::BadCredentials)),
                    }
                }
                Action::Authenticate(creds) => {
                    let ok = match &creds {
                        Credentials::Password { user, password, .. } => {
                            user == "mrose" && password.as_bytes() == b"secret"
                        }
                        Credentials::Apop { user, digest, timestamp } => {
                            user == "mrose"
                                && digest == "c4c9334bac560ecc979e58001b3e22fb"
                                && timestamp == "<1896.697170952@dbc.mtview.ca.us>"
                        }
                        Credentials::SaslStep { .. } => unreachable!("handled above"),
                    };
                    let result = if !ok {
                        Err(LoginFailure::BadCredentials)
                    } else if self.in_use {
                        Err(LoginFailure::InUse)
                    } else if let Some(secs) = self.login_delay {
                        Err(LoginFailure::LoginDelay(secs))
                    } else {
                        let metas = self
                            .messages
                            .iter()
                            .enumerate()
                            .map(|(i, m)| MessageMeta {
                                size: crate::dot::wire_size(m),
                                uidl: format!("uid{}", i + 1),
                            })
                            .collect();
                        Ok(LoginGrant {
                            user: creds.user().to_string(),
                            messages: metas,
                            expire: self.user_expire,
                            login_delay: 0,
                        })
                    };
                    self.session.handle_login(result);
                }
                Action::SendMessage { index, size, top_lines } => {
                    self.out.extend_from_slice(retr_status_line(size, top_lines).as_bytes());
                    let mut enc = match top_lines {
                        Some(n) => WireEncoder::top(n),
                        None => WireEncoder::new(),
                    };
                    enc.encode(&self.messages[index], &mut self.out);
                    enc.finish(&mut self.out);
                }
                Action::StartTls => {
                    // Rule 8: the driver discards whatever was pipelined.
                    self.inbuf.clear();
                    self.tls_started += 1;
                    self.session.handle_tls_established();
                }
                Action::Update(deleted) => {
                    let n = deleted.len();
                    self.updates.push(deleted);
                    self.session.handle_update_result(UpdateResult::Removed(n));
                }
                Action::Close => self.closed = true,
            }
        }
    }
}

const MSG1: &[u8] = b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.dot line\r\n";
const MSG2: &[u8] = b"From: b@example.org\nSubject: two\n\nbare LF body\nline 2\n";

/// RFC 1939 §10, the example session, with pobox's reply texts.
const RFC1939_CLIENT: &[u8] = b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\nSTAT\r\nLIST\r\n\
RETR 1\r\nDELE 1\r\nRETR 2\r\nDELE 2\r\nQUIT\r\n";

fn rfc1939_expected() -> String {
    let s1 = crate::dot::wire_size(MSG1);
    let s2 = crate::dot::wire_size(MSG2);
    let total = s1 + s2;
    format!(
        "+OK logged in, maildrop has 2 messages ({total} octets)\r\n\
         +OK 2 {total}\r\n\
         +OK 2 messages ({total} octets)\r\n1 {s1}\r\n2 {s2}\r\n.\r\n\
         +OK {s1} octets\r\nFrom: a@example.org\r\nSubject: one\r\n\r\nHello\r\n..dot line\r\n.\r\n\
         +OK message 1 deleted\r\n\
         +OK {s2} octets\r\nFrom: b@example.org\r\nSubject: two\r\n\r\nbare LF body\r\nline 2\r\n.\r\n\
         +OK message 2 deleted\r\n\
         +OK pobox signing off (2 messages deleted)\r\n"
    )
}

#[test]
fn greeting_carries_the_apop_timestamp() {
    let mut h = Harness::new(config(), &[]);
    assert_eq!(
        h.feed(b"", 1),
        "+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n"
    );
}

#[test]
fn rfc1939_example_session_at_every_chunk_size() {
    for chunk in 1..=512 {
        let mut h = Harness::new(config(), &[MSG1, MSG2]);
        h.out.clear();
        assert_eq!(h.feed(RFC1939_CLIENT, chunk), rfc1939_expected(), "chunk size {chunk}");
        assert!(h.closed);
        assert_eq!(h.updates, vec![vec![0, 1]]);
    }
}

fn logged_in(messages: &[&[u8]]) -> Harness {
    let mut h = Harness::new(config(), messages);
    h.out.clear();
    let out = h.feed(b"USER mrose\r\nPASS secret\r\n", 512);
    assert!(out.ends_with("octets)\r\n"), "{out}");
    h
}

#[test]
fn deleted_messages_vanish_and_numbers_are_not_reused() {
    let mut h = logged_in(&[MSG1, MSG2]);
    let s2 = crate::dot::wire_size(MSG2);
    let out = h.feed(b"DELE 1\r\nSTAT\r\nLIST\r\nUIDL\r\nLIST 1\r\nRETR 1\r\nDELE 1\r\nUIDL 1\r\nTOP 1 0\r\nLIST 2\r\n", 512);
    assert_eq!(
        out,
        format!(
            "+OK message 1 deleted\r\n+OK 1 {s2}\r\n+OK 1 messages ({s2} octets)\r\n2 {s2}\r\n.\r\n\
             +OK\r\n2 uid2\r\n.\r\n-ERR no such message\r\n-ERR no such message\r\n\
             -ERR no such message\r\n-ERR no such message\r\n-ERR no such message\r\n+OK 2 {s2}\r\n"
        )
    );
}

#[test]
fn rset_unmarks_and_quit_commits_only_marked() {
    let mut h = logged_in(&[MSG1, MSG2]);
    h.feed(b"DELE 1\r\nRSET\r\nDELE 2\r\nQUIT\r\n", 3);
    assert_eq!(h.updates, vec![vec![1]]);
}

#[test]
fn no_update_without_quit() {
    let mut h = logged_in(&[MSG1]);
    h.feed(b"DELE 1\r\n", 512);
    // The connection drops here: the driver drops the session.
    assert!(h.updates.is_empty());
    assert!(!h.closed);
}

#[test]
fn top_zero_is_headers_only_and_stuffed() {
    let mut h = logged_in(&[b".From: x\r\n\r\nbody\r\n"]);
    let out = h.feed(b"TOP 1 0\r\nTOP 1 5\r\n", 512);
    assert_eq!(
        out,
        "+OK top of message follows\r\n..From: x\r\n\r\n.\r\n\
         +OK top of message follows\r\n..From: x\r\n\r\nbody\r\n.\r\n"
    );
}

#[test]
fn in_use_is_reported_with_its_code() {
    let mut h = Harness::new(config(), &[MSG1]);
    h.in_use = true;
    h.out.clear();
    let out = h.feed(b"USER mrose\r\nPASS secret\r\nSTAT\r\n", 512);
    assert_eq!(
        out,
        "+OK\r\n-ERR [IN-USE] maildrop is locked by another session\r\n-ERR not valid before login\r\n"
    );
}

#[test]
fn wrong_password_gets_auth_code_and_three_failures_close() {
    let mut h = Harness::new(config(), &[]);
    h.out.clear();
    let out = h.feed(b"USER mrose\r\nPASS nope\r\nUSER mrose\r\nPASS nope\r\nUSER x\r\nPASS y\r\nNOOP\r\n", 512);
    assert_eq!(
        out,
        "+OK\r\n-ERR [AUTH] authentication failed\r\n+OK\r\n-ERR [AUTH] authentication failed\r\n\
         +OK\r\n-ERR [AUTH] authentication failed\r\n-ERR too many authentication failures\r\n"
    );
    assert!(h.closed);
}

#[test]
fn pass_without_user_and_state_errors() {
    let mut h = Harness::new(config(), &[]);
    h.out.clear();
    let out = h.feed(b"PASS secret\r\nSTAT\r\nRETR 1\r\n", 512);
    assert_eq!(out, "-ERR USER first\r\n-ERR not valid before login\r\n-ERR not valid before login\r\n");
}

#[test]
fn plaintext_refused_without_tls_but_capa_tells_the_truth() {
    let mut cfg = config();
    cfg.plaintext_auth_allowed = false;
    let mut h = Harness::new(cfg, &[]);
    h.out.clear();
    let out = h.feed(b"CAPA\r\nUSER mrose\r\nPASS secret\r\nAUTH PLAIN AG1yb3NlAHNlY3JldA==\r\n", 512);
    assert!(out.contains("STLS\r\n"));
    assert!(!out.contains("USER\r\n") && !out.contains("SASL"), "{out}");
    assert_eq!(
        out.matches("-ERR [AUTH] plaintext authentication disallowed").count(),
        3,
        "{out}"
    );
}

#[test]
fn stls_resets_the_session_and_drops_pipelined_input() {
    let mut cfg = config();
    cfg.plaintext_auth_allowed = false;
    let mut h = Harness::new(cfg, &[MSG1]);
    h.out.clear();
    // The injected USER/PASS after STLS arrive in the same packet as STLS:
    // the CVE-2011-0411 class. They must never be executed.
    let out = h.feed(b"USER mrose\r\nSTLS\r\nUSER mrose\r\nPASS secret\r\n", 512);
    assert!(out.ends_with("+OK begin TLS negotiation\r\n"), "{out}");
    assert_eq!(h.tls_started, 1);
    // Now on "TLS": a PASS without USER proves the earlier USER was forgotten.
    let out = h.feed(b"PASS secret\r\nCAPA\r\nSTLS\r\n", 512);
    assert!(out.starts_with("-ERR USER first\r\n"), "{out}");
    assert!(!out.contains("STLS\r\n") && out.contains("USER\r\n"), "{out}");
    assert!(out.ends_with("-ERR already using TLS\r\n"), "{out}");
}

#[test]
fn capa_before_and_after_login() {
    let mut h = Harness::new(config(), &[]);
    h.out.clear();
    let before = h.feed(b"CAPA\r\n", 512);
    assert_eq!(
        before,
        "+OK capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n\
         EXPIRE NEVER\r\nUTF8\r\nSTLS\r\nUSER\r\nSASL PLAIN LOGIN\r\nIMPLEMENTATION pobox\r\n.\r\n"
    );
    // RFC 2449 §5: the AUTHORIZATION capabilities are announced after login
    // too (this test used to assert that STLS, USER and SASL vanished).
    let after = h.feed(b"USER mrose\r\nPASS secret\r\nCAPA\r\n", 512);
    assert!(after.ends_with(&before), "{after}");
}

#[test]
fn auth_plain_with_initial_response_continuation_and_cancel() {
    // "\0mrose\0secret"
    let mut h = Harness::new(config(), &[]);
    h.out.clear();
    let out = h.feed(b"AUTH PLAIN AG1yb3NlAHNlY3JldA==\r\n", 512);
    assert!(out.starts_with("+OK logged in"), "{out}");

    let mut h = Harness::new(config(), &[]);
    h.out.clear();
    let out = h.feed(b"AUTH PLAIN\r\nAG1yb3NlAHNlY3JldA==\r\n", 1);
    assert!(out.starts_with("+ \r\n+OK logged in"), "{out}");

    let mut h = Harness::new(config(), &[]);
    h.out.clear();
    let out = h.feed(b"AUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n!!!\r\nAUTH PLAIN =\r\n", 512);
    assert_eq!(
        out,
        "+ \r\n-ERR authentication cancelled\r\n+ \r\n-ERR invalid base64 in SASL response\r\n\
         -ERR malformed PLAIN response\r\n"
    );
}

#[test]
fn auth_login_two_step() {
    let mut h = Harness::new(config(), &[]);
    h.out.clear();
    // "mrose", "secret"
    let out = h.feed(b"AUTH LOGIN\r\nbXJvc2U=\r\nc2VjcmV0\r\n", 512);
    assert!(out.starts_with("+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n+OK logged in"), "{out}");
    let mut h = Harness::new(config(), &[]);
    h.out.clear();
    let out = h.feed(b"AUTH LOGIN bXJvc2U=\r\nc2VjcmV0\r\n", 512);
    assert!(out.starts_with("+ UGFzc3dvcmQ6\r\n+OK logged in"), "{out}");
}

#[test]
fn plain_with_foreign_authzid_is_refused() {
    let mut h = Harness::new(config(), &[]);
    h.out.clear();
    // "admin\0mrose\0secret"
    let out = h.feed(b"AUTH PLAIN YWRtaW4AbXJvc2UAc2VjcmV0\r\nAUTH XOAUTH9\r\nAUTH\r\n", 512);
    assert_eq!(
        out,
        "-ERR malformed PLAIN response\r\n-ERR unsupported authentication mechanism\r\n\
         +OK supported mechanisms\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    );
}

#[test]
fn fifty_pipelined_commands_are_answered_in_order() {
    let mut h = logged_in(&[MSG1, MSG2]);
    let mut input = Vec::new();
    for i in 0..50 {
        input.extend_from_slice(if i % 2 == 0 { b"STAT\r\n" } else { b"NOOP\r\n" });
    }
    let out = h.feed(&input, 512);
    let lines: Vec<&str> = out.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 50);
    for (i, l) in lines.iter().enumerate() {
        if i % 2 == 0 {
            assert!(l.starts_with("+OK 2 "), "{i}: {l}");
        } else {
            assert_eq!(*l, "+OK", "{i}");
        }
    }
}

#[test]
fn garbage_gets_errors_then_disconnect() {
    let mut h = Harness::new(config(), &[]);
    h.out.clear();
    let mut input = Vec::new();
    for _ in 0..30 {
        input.extend_from_slice(b"\x16\x03\x01\x02\x00GET / HTTP/1.1\r\n");
    }
    let out = h.feed(&input, 512);
    assert_eq!(out.matches("-ERR").count(), MAX_BAD_COMMANDS as usize + 1);
    assert!(out.ends_with("-ERR too many invalid commands, closing connection\r\n"));
    assert!(h.closed);
}

#[test]
fn overlong_line_gets_an_error_and_the_session_continues() {
    let mut h = logged_in(&[MSG1]);
    let mut input = vec![b'X'; crate::MAX_COMMAND_LINE * 3];
    input.extend_from_slice(b"\r\nSTAT\r\n");
    for chunk in [1, 100, 4096, 100_000] {
        let mut h2 = logged_in(&[MSG1]);
        let out = h2.feed(&input, chunk);
        assert_eq!(out, format!("-ERR line too long\r\n+OK 1 {}\r\n", crate::dot::wire_size(MSG1)));
    }
    let _ = h.feed(b"", 1);
}

#[test]
fn apop_only_when_enabled() {
    let mut cfg = config();
    cfg.apop_timestamp = None;
    let mut h = Harness::new(cfg, &[]);
    assert_eq!(h.out, b"+OK POP3 server ready\r\n");
    h.out.clear();
    let out = h.feed(b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n", 512);
    assert_eq!(out, "-ERR APOP not enabled\r\n");
}

#[test]
fn quit_in_authorization_closes_without_update() {
    let mut h = Harness::new(config(), &[MSG1]);
    h.out.clear();
    assert_eq!(h.feed(b"QUIT\r\nSTAT\r\n", 512), "+OK pobox signing off\r\n");
    assert!(h.closed && h.updates.is_empty());
}

#[test]
fn partial_update_reports_sys_temp() {
    let mut h = logged_in(&[MSG1]);
    h.session.handle_line(b"DELE 1");
    h.session.handle_line(b"QUIT");
    let mut out = Vec::new();
    while let Some(a) = h.session.poll_action() {
        match a {
            Action::Send(b) => out.extend(b),
            Action::Update(_) => h.session.handle_update_result(UpdateResult::Partial { removed: 0, failed: 1 }),
            _ => {}
        }
    }
    let out = String::from_utf8(out).unwrap();
    assert!(out.ends_with("-ERR [SYS/TEMP] some deleted messages not removed (0 removed, 1 failed)\r\n"), "{out}");
}

#[test]
fn capa_expire_is_per_user_before_login_and_exact_after() {
    let mut cfg = config();
    cfg.expire = Expire::Days(0);
    cfg.expire_per_user = true;
    cfg.login_delay = (900, false);
    let mut h = Harness::new(cfg, &[]);
    h.user_expire = Expire::Days(3);
    h.out.clear();
    let before = h.feed(b"CAPA\r\n", 512);
    assert!(before.contains("\r\nEXPIRE 0 USER\r\n"), "{before}");
    assert!(before.contains("\r\nLOGIN-DELAY 900\r\n"), "{before}");
    let after = h.feed(b"USER mrose\r\nPASS secret\r\nCAPA\r\n", 512);
    assert!(after.contains("\r\nEXPIRE 3\r\n"), "{after}");
    assert!(!after.contains("LOGIN-DELAY"), "{after}");
}

#[test]
fn login_delay_is_refused_with_its_code() {
    let mut h = Harness::new(config(), &[MSG1]);
    h.login_delay = Some(900);
    h.out.clear();
    let out = h.feed(b"USER mrose\r\nPASS secret\r\n", 512);
    assert_eq!(out, "+OK\r\n-ERR [LOGIN-DELAY] minimum time between logins is 900 seconds\r\n");
}

fn b64(s: &[u8]) -> String {
    BASE64.encode(s)
}

#[test]
fn driver_mechanisms_are_framed_with_challenges_at_every_chunk_size() {
    let script = format!(
        "CAPA\r\nAUTH scram-sha-256 {}\r\n{}\r\n\r\nSTAT\r\n",
        b64(b"hello"),
        b64(b"proof")
    );
    for chunk in 1..=script.len() {
        let mut h = Harness::new(config(), &[]);
        h.session.set_sasl_mechanisms(&[SCRAM_SHA_256, OAUTHBEARER, "BOGUS"]);
        let out = h.feed(script.as_bytes(), chunk);
        assert!(out.contains("SASL PLAIN LOGIN SCRAM-SHA-256 OAUTHBEARER\r\n"), "{out}");
        let expected_tail = format!(
            "+ {}\r\n+ {}\r\n+OK logged in, maildrop has 0 messages (0 octets)\r\n+OK 0 0\r\n",
            b64(b"server-first"),
            b64(b"v=final")
        );
        assert!(out.ends_with(&expected_tail), "chunk {chunk}: {out}");
        let firsts: Vec<bool> = h.sasl_seen.iter().map(|(_, f)| *f).collect();
        assert_eq!(firsts, [true, false, false]);
    }
}

#[test]
fn driver_mechanism_without_initial_response_cancel_and_failure() {
    let mut h = Harness::new(config(), &[]);
    h.session.set_sasl_mechanisms(&[SCRAM_SHA_256]);
    h.feed(b"", 1); // the greeting
    // No initial response: empty challenge first (RFC 5034 §4).
    let out = h.feed(format!("AUTH SCRAM-SHA-256\r\n{}\r\n*\r\n", b64(b"hello")).as_bytes(), 7);
    assert_eq!(
        out,
        format!("+ \r\n+ {}\r\n-ERR authentication cancelled\r\n", b64(b"server-first"))
    );
    // A cancelled exchange does not leak into the next: `first` again.
    let out = h.feed(format!("AUTH SCRAM-SHA-256 {}\r\n{}\r\n", b64(b"hello"), b64(b"bad")).as_bytes(), 5);
    assert!(out.ends_with("-ERR [AUTH] authentication failed\r\n"), "{out}");
    assert_eq!(h.sasl_seen.iter().map(|(_, f)| *f).collect::<Vec<_>>(), [true, false]);
    // Not offered: refused like any unknown mechanism.
    let out = h.feed(b"AUTH XOAUTH2 =\r\n", 3);
    assert_eq!(out, "-ERR unsupported authentication mechanism\r\n");
}

#[test]
fn scram_works_on_cleartext_but_bearer_tokens_do_not() {
    let mut cfg = config();
    cfg.plaintext_auth_allowed = false;
    let mut h = Harness::new(cfg, &[]);
    h.session.set_sasl_mechanisms(&[SCRAM_SHA_256, OAUTHBEARER, XOAUTH2]);
    h.feed(b"", 1); // the greeting
    let out = h.feed(b"CAPA\r\n", 4);
    // SCRAM never sends the password; OAuth bearer tokens are replayable.
    assert!(out.contains("SASL SCRAM-SHA-256\r\n"), "{out}");
    assert!(!out.contains("USER\r\n") && !out.contains("OAUTHBEARER"), "{out}");
    let out = h.feed(b"AUTH OAUTHBEARER\r\n", 4);
    assert!(out.starts_with("-ERR [AUTH] plaintext authentication disallowed"), "{out}");
    let out = h.feed(format!("AUTH SCRAM-SHA-256 {}\r\n", b64(b"hello")).as_bytes(), 4);
    assert_eq!(out, format!("+ {}\r\n", b64(b"server-first")));
}

#[test]
fn stray_challenge_is_ignored() {
    let mut h = Harness::new(config(), &[]);
    h.feed(b"", 1); // the greeting
    h.session.handle_sasl_challenge(b"nobody asked");
    assert_eq!(h.feed(b"NOOP\r\n", 1), "-ERR not valid before login\r\n");
}

/// Issue 17, finding 5: `AUTH PLAIN =` and `AUTH LOGIN` with bad base64 drew
/// an error each, forever. Every error reply counts, SASL ones included, and
/// a valid command in between (CAPA) does not wipe the slate: an attacker
/// could interleave one otherwise.
#[test]
fn sasl_errors_count_toward_the_bad_command_limit_at_every_chunk_size() {
    let mut script = Vec::new();
    for i in 0..100 {
        script.extend_from_slice(b"AUTH PLAIN =\r\nAUTH LOGIN\r\n!!!\r\n");
        if i % 3 == 0 {
            script.extend_from_slice(b"CAPA\r\n");
        }
    }
    for chunk in (1..=64).chain([512, script.len()]) {
        let mut h = Harness::new(config(), &[]);
        h.out.clear();
        let out = h.feed(&script, chunk);
        assert_eq!(out.matches("-ERR").count(), MAX_BAD_COMMANDS as usize + 1, "chunk {chunk}: {out}");
        assert!(out.ends_with("-ERR too many invalid commands, closing connection\r\n"), "chunk {chunk}: {out}");
        assert!(h.closed, "chunk {chunk}");
    }
}

/// Every other error reply before login counts too: refused plaintext,
/// PASS without USER, unknown mechanisms, STLS where there is none.
#[test]
fn every_error_reply_before_login_counts() {
    let mut cfg = config();
    cfg.plaintext_auth_allowed = false;
    cfg.stls_available = false;
    cfg.apop_timestamp = None;
    let lines: [&[u8]; 5] = [b"USER a\r\n", b"PASS b\r\n", b"AUTH FOO\r\n", b"STLS\r\n", b"APOP a b\r\n"];
    let mut h = Harness::new(cfg, &[]);
    h.out.clear();
    let mut out = String::new();
    for i in 0..100 {
        out.push_str(&h.feed(lines[i % lines.len()], 512));
        if h.closed {
            break;
        }
    }
    assert!(h.closed, "{out}");
    assert_eq!(out.matches("-ERR").count(), MAX_BAD_COMMANDS as usize + 1, "{out}");
}

/// After login too: a peer that only draws errors is cut off, without UPDATE.
#[test]
fn errors_after_login_count_and_closing_never_enters_update() {
    let mut h = logged_in(&[MSG1]);
    let mut input = b"DELE 1\r\n".to_vec();
    for _ in 0..40 {
        input.extend_from_slice(b"RETR 9\r\nUSER x\r\n");
    }
    let out = h.feed(&input, 7);
    assert_eq!(out.matches("-ERR").count(), MAX_BAD_COMMANDS as usize + 1, "{out}");
    assert!(h.closed);
    assert!(h.updates.is_empty(), "no UPDATE without QUIT");
}

/// Issue 17, finding 8 (RFC 2449 §5: "Capabilities available in the
/// AUTHORIZATION state MUST be announced in both states"; the IANA registry
/// lists USER, SASL, STLS and UTF8 as announced in both states with no
/// differences). EXPIRE and LOGIN-DELAY may differ and do not here.
#[test]
fn capa_after_login_announces_every_authorization_capability_at_every_chunk_size() {
    let script = b"CAPA\r\nUSER mrose\r\nPASS secret\r\nCAPA\r\n";
    for chunk in 1..=script.len() {
        let mut h = Harness::new(config(), &[MSG1]);
        h.session.set_sasl_mechanisms(&[SCRAM_SHA_256, OAUTHBEARER]);
        h.out.clear();
        let out = h.feed(script, chunk);
        let lists: Vec<&str> = out.split("+OK capability list follows\r\n").skip(1).collect();
        assert_eq!(lists.len(), 2, "{out}");
        let before = lists[0].split(".\r\n").next().unwrap();
        let after = lists[1].split(".\r\n").next().unwrap();
        assert!(before.contains("STLS\r\nUSER\r\nSASL PLAIN LOGIN SCRAM-SHA-256 OAUTHBEARER\r\n"), "{before}");
        assert_eq!(after, before, "chunk {chunk}");
    }
}

/// The same rule where cleartext passwords are refused: after a SCRAM login
/// on a cleartext link, CAPA still says what the AUTHORIZATION state said
/// (STLS and SCRAM, no USER, no bearer mechanisms).
#[test]
fn capa_after_a_scram_login_on_cleartext_matches_the_capa_before() {
    let mut cfg = config();
    cfg.plaintext_auth_allowed = false;
    let mut h = Harness::new(cfg, &[]);
    h.session.set_sasl_mechanisms(&[SCRAM_SHA_256, XOAUTH2]);
    h.out.clear();
    let before = h.feed(b"CAPA\r\n", 512);
    let login = format!("AUTH SCRAM-SHA-256 {}\r\n{}\r\n\r\n", b64(b"hello"), b64(b"proof"));
    let out = h.feed(login.as_bytes(), 512);
    assert!(out.ends_with("+OK logged in, maildrop has 0 messages (0 octets)\r\n"), "{out}");
    let after = h.feed(b"CAPA\r\n", 512);
    assert_eq!(after, before);
    assert!(after.contains("STLS\r\nSASL SCRAM-SHA-256\r\n") && !after.contains("USER\r\n"), "{after}");
}

/// The replies the driver writes outside a command exchange, byte for
/// byte as clients (and the integration tests) see them, appended after
/// whatever the output buffer already holds.
#[test]
fn driver_replies_are_exact_status_lines() {
    let cases = [
        (DriverReply::LoginTimedOut, "-ERR login took too long, closing connection\r\n"),
        (DriverReply::Kicked, "-ERR [SYS/TEMP] session closed by the administrator, nothing was deleted\r\n"),
        (DriverReply::ShuttingDown, "-ERR [SYS/TEMP] server shutting down, nothing was deleted\r\n"),
        (DriverReply::MessageUnreadable, "-ERR [SYS/TEMP] message cannot be read now\r\n"),
    ];
    for (reply, want) in cases {
        let mut out = b"+OK earlier\r\n".to_vec();
        reply.encode(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), format!("+OK earlier\r\n{want}"), "{reply:?}");
        assert!(!reply.status().is_ok());
    }
}
