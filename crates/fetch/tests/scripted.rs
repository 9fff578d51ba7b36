//! `pobox fetch` against a small POP3 server written in this test: the
//! server behaviours Dovecot and `pobox serve` never show (no PIPELINING,
//! no UIDL, no CAPA, OAuth exchanges, a LIST that lies, a connection that
//! drops mid-RETR, a greeting from something that is not POP3), and the
//! group-commit invariant checked at the moment each DELE arrives.
//!
//! Loopback only; every run is bounded by `Setup::run` (120 s) and the
//! mock's own read timeouts.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;

/// How the mock behaves. Defaults: a modern server (CAPA, UIDL, TOP,
/// PIPELINING, USER).
#[derive(Clone)]
struct Script {
    greeting: String,
    capa: bool,
    pipelining: bool,
    uidl: bool,
    sasl: Vec<&'static str>,
    /// Expected decoded SASL initial response, per mechanism.
    oauth_token: String,
    /// Added to the size LIST reports for message 2.
    list_lie: i64,
    /// Close the connection after sending this many octets of the body of
    /// this message (1-based), on the first connection only.
    drop_in_retr: Option<(usize, usize)>,
    /// Close without replying to QUIT (no UPDATE), first connection only.
    drop_at_quit: bool,
    /// Where the fetcher keeps its journal and Maildir: checked at each DELE.
    check_dele: Option<(PathBuf, PathBuf)>,
    /// This message (1-based) is announced by LIST with `.1` octets and
    /// RETR sends `.2` octets of body (`None`: never ends), every session.
    lie: Option<(usize, u64, Option<u64>)>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "+OK mock POP3 ready".into(),
            capa: true,
            pipelining: true,
            uidl: true,
            sasl: vec![],
            oauth_token: "tok-123".into(),
            list_lie: 0,
            drop_in_retr: None,
            drop_at_quit: false,
            check_dele: None,
            lie: None,
        }
    }
}

#[derive(Default)]
struct Shared {
    /// The maildrop (LF line endings), `None` once deleted.
    msgs: Vec<Option<Vec<u8>>>,
    /// Commands received, per connection (AUTH data lines included).
    log: Vec<Vec<String>>,
    /// Broken rules: pipelining without PIPELINING, DELE before journal.
    violations: Vec<String>,
}

struct Mock {
    port: u16,
    shared: Arc<Mutex<Shared>>,
}

impl Mock {
    fn start(script: Script, msgs: &[Vec<u8>]) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Shared { msgs: msgs.iter().cloned().map(Some).collect(), ..Default::default() }));
        let sh = shared.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { return };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                sh.lock().unwrap().log.push(Vec::new());
                serve(conn, &script, &sh, n == 0);
            }
        });
        Mock { port, shared }
    }

    fn log(&self, conn: usize) -> Vec<String> {
        self.shared.lock().unwrap().log.get(conn).cloned().unwrap_or_default()
    }

    fn count(&self, conn: usize, prefix: &str) -> usize {
        self.log(conn).iter().filter(|c| c.starts_with(prefix)).count()
    }

    fn left(&self) -> usize {
        self.shared.lock().unwrap().msgs.iter().flatten().count()
    }

    fn violations(&self) -> Vec<String> {
        self.shared.lock().unwrap().violations.clone()
    }
}

fn uidl_of(i: usize) -> String {
    format!("mock-{i:04}")
}

/// The wire form of a multi-line body: CRLF, dot-stuffed, terminated.
fn wire(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn wire_size(m: &[u8]) -> usize {
    m.len() + m.iter().filter(|&&b| b == b'\n').count()
}

fn serve(conn: TcpStream, s: &Script, sh: &Mutex<Shared>, first: bool) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let say = |w: &mut TcpStream, text: &str| w.write_all(format!("{text}\r\n").as_bytes()).is_ok();
    if !say(&mut w, &s.greeting) || !s.greeting.starts_with("+OK") {
        // Not a POP3 server: wait for the client to give up.
        let mut sink = String::new();
        let _ = r.read_line(&mut sink);
        return;
    }
    // Messages deleted in this session; applied at QUIT.
    let mut deleted = std::collections::HashSet::new();
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = line.trim_end().to_string();
        if !s.pipelining && !r.buffer().is_empty() {
            sh.lock().unwrap().violations.push(format!("pipelined after {cmd:?} without PIPELINING"));
        }
        sh.lock().unwrap().log.last_mut().unwrap().push(cmd.clone());
        let mut words = cmd.split(' ');
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let arg = |words: &mut std::str::Split<'_, char>| words.next().and_then(|a| a.parse::<usize>().ok());
        let msgs: Vec<Option<Vec<u8>>> = sh.lock().unwrap().msgs.clone();
        let get = |n: Option<usize>| {
            n.filter(|n| *n >= 1 && !deleted.contains(n)).and_then(|n| msgs.get(n - 1).cloned().flatten())
        };
        let ok = match verb.as_str() {
            "CAPA" if s.capa => {
                let mut c = String::from("+OK\r\nUSER\r\nTOP\r\n");
                if s.uidl {
                    c.push_str("UIDL\r\n");
                }
                if s.pipelining {
                    c.push_str("PIPELINING\r\n");
                }
                if !s.sasl.is_empty() {
                    c.push_str(&format!("SASL {}\r\n", s.sasl.join(" ")));
                }
                c.push_str(".\r\n");
                w.write_all(c.as_bytes()).is_ok()
            }
            "USER" => say(&mut w, "+OK"),
            "PASS" if cmd[5..] == *PASSWORD => say(&mut w, "+OK logged in"),
            "PASS" => say(&mut w, "-ERR [AUTH] wrong"),
            "AUTH" => {
                let mech = words.next().unwrap_or("").to_ascii_uppercase();
                let ir = match words.next() {
                    Some(ir) => ir.to_string(),
                    None => {
                        // RFC 5034: no initial response; ask for it.
                        say(&mut w, "+ ");
                        let mut l = String::new();
                        let _ = r.read_line(&mut l);
                        sh.lock().unwrap().log.last_mut().unwrap().push(format!("(sasl) {}", l.trim_end()));
                        l.trim_end().to_string()
                    }
                };
                let got = B64.decode(&ir).unwrap_or_default();
                let want = match mech.as_str() {
                    "XOAUTH2" => format!("user={USER}\x01auth=Bearer {}\x01\x01", s.oauth_token),
                    "OAUTHBEARER" => {
                        format!("n,a={USER},\x01host=127.0.0.1\x01port={}\x01auth=Bearer {}\x01\x01", r.get_ref().local_addr().unwrap().port(), s.oauth_token)
                    }
                    _ => String::new(),
                };
                if !want.is_empty() && got == want.as_bytes() {
                    say(&mut w, "+OK welcome")
                } else {
                    // The error dance: a challenge carrying JSON, the
                    // client's dummy response, then -ERR.
                    let json = r#"{"status":"invalid_token","scope":"mail","schemes":"bearer"}"#;
                    say(&mut w, &format!("+ {}", B64.encode(json)));
                    let mut l = String::new();
                    let _ = r.read_line(&mut l);
                    sh.lock().unwrap().log.last_mut().unwrap().push(format!("(sasl) {}", l.trim_end()));
                    say(&mut w, "-ERR [AUTH] invalid token")
                }
            }
            "STAT" => {
                let live: Vec<_> = msgs.iter().flatten().collect();
                say(&mut w, &format!("+OK {} {}", live.len(), live.iter().map(|m| wire_size(m)).sum::<usize>()))
            }
            "LIST" => {
                let mut c = String::from("+OK\r\n");
                for (i, m) in msgs.iter().enumerate() {
                    if let Some(m) = m {
                        let lie = if i == 1 { s.list_lie } else { 0 };
                        let size = match s.lie {
                            Some((k, announced, _)) if k == i + 1 => announced as i64,
                            _ => wire_size(m) as i64 + lie,
                        };
                        c.push_str(&format!("{} {size}\r\n", i + 1));
                    }
                }
                c.push_str(".\r\n");
                w.write_all(c.as_bytes()).is_ok()
            }
            "UIDL" if s.uidl => {
                let mut c = String::from("+OK\r\n");
                for (i, m) in msgs.iter().enumerate() {
                    if m.is_some() {
                        c.push_str(&format!("{} {}\r\n", i + 1, uidl_of(i + 1)));
                    }
                }
                c.push_str(".\r\n");
                w.write_all(c.as_bytes()).is_ok()
            }
            "RETR" => {
                let n = arg(&mut words);
                match get(n) {
                    Some(_) if s.lie.is_some_and(|(k, _, _)| Some(k) == n) => {
                        let (_, _, sends) = s.lie.unwrap();
                        send_lie(&mut w, sends)
                    }
                    Some(m) => {
                        let body = wire(&m);
                        if let Some((k, cut)) = s.drop_in_retr.filter(|(k, _)| first && Some(*k) == n) {
                            let _ = k;
                            let _ = w.write_all(b"+OK\r\n");
                            let _ = w.write_all(&body[..cut.min(body.len() - 3)]);
                            return;
                        }
                        w.write_all(b"+OK\r\n").is_ok() && w.write_all(&body).is_ok()
                    }
                    None => say(&mut w, "-ERR no such message"),
                }
            }
            "TOP" => {
                let n = arg(&mut words);
                match get(n) {
                    Some(m) => {
                        let end = m.windows(2).position(|p| p == b"\n\n").map_or(m.len(), |p| p + 2);
                        w.write_all(b"+OK\r\n").is_ok() && w.write_all(&wire(&m[..end])).is_ok()
                    }
                    None => say(&mut w, "-ERR no such message"),
                }
            }
            "DELE" => {
                let n = arg(&mut words);
                if let (Some(n), Some((state, maildir))) = (n, &s.check_dele) {
                    check_durable_before_dele(sh, state, maildir, n);
                }
                match get(n) {
                    Some(_) => {
                        deleted.insert(n.unwrap());
                        say(&mut w, "+OK deleted")
                    }
                    None => say(&mut w, "-ERR no such message"),
                }
            }
            "NOOP" | "RSET" => say(&mut w, "+OK"),
            "QUIT" => {
                if s.drop_at_quit && first {
                    return;
                }
                let mut g = sh.lock().unwrap();
                for n in &deleted {
                    g.msgs[n - 1] = None;
                }
                drop(g);
                let _ = say(&mut w, "+OK bye");
                return;
            }
            _ => say(&mut w, "-ERR unknown command"),
        };
        if !ok {
            return;
        }
    }
}

/// A RETR reply of `sends` octets of body (then the terminator), or one
/// that never ends. Bounded anyway: it stops when the client goes away, or
/// after 1 GiB.
fn send_lie(w: &mut TcpStream, sends: Option<u64>) -> bool {
    let line = [b"x".repeat(998).as_slice(), b"\r\n"].concat();
    let mut chunk = b"+OK\r\nSubject: big\r\n\r\n".to_vec();
    let mut sent = 0u64;
    let cap = sends.unwrap_or(1 << 30);
    while sent < cap {
        while chunk.len() < 64 * 1024 && sent + (chunk.len() as u64) < cap {
            chunk.extend_from_slice(&line);
        }
        if w.write_all(&chunk).is_err() {
            return false;
        }
        sent += chunk.len() as u64;
        chunk.clear();
    }
    sends.is_some() && w.write_all(b".\r\n").is_ok()
}

/// The group-commit invariant, checked from the server's side: when DELE
/// n arrives, message n must already be in the local Maildir and its UIDL
/// in the journal file on disk.
fn check_durable_before_dele(sh: &Mutex<Shared>, state: &std::path::Path, maildir: &std::path::Path, n: usize) {
    let journal: String = std::fs::read_dir(state)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "journal"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let want = sh.lock().unwrap().msgs[n - 1].clone();
    let stored = want.is_some_and(|m| local_messages(maildir).contains(&m));
    let journalled = journal.lines().any(|l| l.starts_with("S ") && l.ends_with(&format!(" {}", uidl_of(n))));
    if !stored || !journalled {
        sh.lock().unwrap().violations.push(format!("DELE {n} before durable: stored={stored} journalled={journalled}"));
    }
}

fn setup(mock: &Mock, extra: &str) -> Setup {
    Setup::new(mock.port, "127.0.0.1", &format!("security = \"none\"\nallow_insecure = true\n{extra}"))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn group_commit_never_deletes_before_the_journal_and_batches_deles() {
    let msgs = messages(150, "batch");
    let dir = tempfile::tempdir().unwrap();
    // The Setup's paths are only known after it exists, so point the mock
    // at a state dir and Maildir of our choosing via the config.
    let state = dir.path().join("state");
    let maildir = dir.path().join("Mail");
    let mock = Mock::start(Script { check_dele: Some((state.clone(), maildir.clone())), ..Script::default() }, &msgs);
    let s = setup(&mock, "");
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(&s.maildir.display().to_string(), &maildir.display().to_string())
        .replace(&s.dir.path().join("state").display().to_string(), &state.display().to_string());
    std::fs::write(&s.config, cfg).unwrap();
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(mock.violations(), Vec::<String>::new());
    assert_exactly_once_clean(&maildir, &msgs);
    assert_eq!(mock.left(), 0);
    assert_eq!(mock.count(0, "RETR"), 150);
    assert_eq!(mock.count(0, "DELE"), 150);
    // One journal record per message, and far fewer journal writes than
    // messages is what group commit is for; the file itself shows the
    // records, which is what matters for correctness.
    let journal = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "journal"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap();
    assert_eq!(journal.lines().filter(|l| l.starts_with("S ")).count(), 150, "{journal}");
}

#[test]
fn without_pipelining_commands_go_one_at_a_time() {
    let msgs = messages(12, "lockstep");
    let mock = Mock::start(Script { pipelining: false, ..Script::default() }, &msgs);
    let s = setup(&mock, "");
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(mock.violations(), Vec::<String>::new(), "the client pipelined without PIPELINING");
    assert_exactly_once_clean(&s.maildir, &msgs);
    assert_eq!(mock.left(), 0);
    // And without CAPA at all (an RFC 1939-only server).
    let more = messages(3, "nocapa");
    let mock = Mock::start(Script { capa: false, pipelining: false, ..Script::default() }, &more);
    let s = setup(&mock, "");
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(mock.violations(), Vec::<String>::new());
    assert_exactly_once_clean(&s.maildir, &more);
}

#[test]
fn without_uidl_digest_names_make_a_rerun_idempotent() {
    let msgs = messages(10, "nouidl");
    // First run: everything stored, but the connection drops at QUIT, so
    // the server keeps every message (no UPDATE state).
    let mock = Mock::start(Script { uidl: false, drop_at_quit: true, ..Script::default() }, &msgs);
    let s = setup(&mock, "");
    let o = s.run(&[]);
    assert_eq!(code(&o), 3, "a lost QUIT reply is a failure: {}", show(&o));
    assert_eq!(mock.left(), 10);
    assert_exactly_once_clean(&s.maildir, &msgs);
    // Second run: no UIDL, no journal record to go by; the content digest
    // names the copies already stored.
    let o = s.run(&[]);
    assert_eq!(code(&o), 1, "nothing new: {}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("10 already stored"), "{}", show(&o));
    assert_exactly_once_clean(&s.maildir, &msgs);
    assert_eq!(mock.left(), 0);
    assert_eq!(mock.count(1, "UIDL"), 0, "CAPA did not offer it");
    // Keep mode cannot work without UIDL: refused before anything is fetched.
    let mock = Mock::start(Script { uidl: false, ..Script::default() }, &msgs);
    let k = setup(&mock, "keep = true\n");
    let o = k.run(&[]);
    assert_eq!(code(&o), 3, "{}", show(&o));
    assert!(stderr(&o).contains("UIDL"), "{}", show(&o));
    assert_eq!(mock.count(0, "RETR"), 0);
}

#[test]
fn oversize_headers_uses_top_and_keeps_the_message() {
    let mut msgs = messages(3, "oversize");
    msgs[1].extend_from_slice(&b"x".repeat(25_000));
    msgs[1].push(b'\n');
    let mock = Mock::start(Script::default(), &msgs);
    let s = setup(&mock, "max_size = 20000\noversize = \"headers\"\n");
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 headers only"), "{}", show(&o));
    assert_eq!(mock.log(0).iter().filter(|c| *c == "TOP 2 0").count(), 1, "{:?}", mock.log(0));
    assert_eq!(mock.count(0, "RETR 2"), 0);
    assert_eq!(mock.count(0, "DELE 2"), 0, "a header-only copy never deletes the message");
    let header_end = msgs[1].windows(2).position(|p| p == b"\n\n").unwrap() + 2;
    let local = local_messages(&s.maildir);
    assert_eq!(local.len(), 3);
    assert!(local.contains(&msgs[1][..header_end].to_vec()), "the header, with its blank line");
    assert_eq!(mock.left(), 1);
    let names: Vec<String> = std::fs::read_dir(s.maildir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.iter().filter(|n| n.contains("-headers,")).count(), 1, "{names:?}");
    // Next run: nothing new, no second TOP.
    let o = s.run(&[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert_eq!(mock.count(1, "TOP"), 0);
}

#[test]
fn xoauth2_and_oauthbearer_with_token_from_command() {
    for mech in ["xoauth2", "oauthbearer"] {
        let msgs = messages(2, mech);
        let mock = Mock::start(Script { sasl: vec!["XOAUTH2", "OAUTHBEARER"], ..Script::default() }, &msgs);
        let s = setup(&mock, &format!("auth = \"{mech}\"\n"));
        let cfg = std::fs::read_to_string(&s.config)
            .unwrap()
            .replace(&format!("password = \"{PASSWORD}\""), "password_command = \"echo tok-123\"");
        std::fs::write(&s.config, cfg).unwrap();
        let o = s.run(&[]);
        assert_eq!(code(&o), 0, "{mech}: {}", show(&o));
        assert_exactly_once_clean(&s.maildir, &msgs);
        let auth = mock.log(0).into_iter().find(|c| c.starts_with("AUTH")).unwrap();
        assert!(auth.starts_with(&format!("AUTH {} ", mech.to_uppercase())), "initial response sent inline: {auth}");

        // A rejected token: the server's JSON challenge gets the dummy
        // response (empty for XOAUTH2, %x01 = "AQ==" for OAUTHBEARER, RFC
        // 7628 §3.2.3), then -ERR, which needs a human: exit 4.
        let mock = Mock::start(Script { sasl: vec!["XOAUTH2", "OAUTHBEARER"], oauth_token: "other".into(), ..Script::default() }, &msgs);
        let bad = setup(&mock, &format!("auth = \"{mech}\"\npassword_command = \"echo expired-token\"\n"));
        let cfg = std::fs::read_to_string(&bad.config).unwrap().replace(&format!("password = \"{PASSWORD}\"\n"), "");
        std::fs::write(&bad.config, cfg).unwrap();
        let o = bad.run(&[]);
        assert_eq!(code(&o), 4, "{mech}: {}", show(&o));
        assert!(stderr(&o).contains("authentication failed") && stderr(&o).contains("invalid token"), "{}", show(&o));
        let dummy = if mech == "xoauth2" { "(sasl) " } else { "(sasl) AQ==" };
        assert!(mock.log(0).iter().any(|c| c == dummy), "{mech}: {:?}", mock.log(0));
        assert_eq!(mock.count(0, "QUIT"), 0, "no QUIT after a failed login is fine; no RETR either");
        assert_eq!(mock.count(0, "RETR"), 0);
    }
    // A token too long for an initial response (RFC 5034 §4: 255 octets)
    // goes after an empty challenge.
    let long = "t".repeat(400);
    let msgs = messages(1, "longtoken");
    let mock = Mock::start(Script { sasl: vec!["XOAUTH2"], oauth_token: long.clone(), ..Script::default() }, &msgs);
    let s = setup(&mock, &format!("auth = \"xoauth2\"\npassword_command = \"echo {long}\"\n"));
    let cfg = std::fs::read_to_string(&s.config).unwrap().replace(&format!("password = \"{PASSWORD}\"\n"), "");
    std::fs::write(&s.config, cfg).unwrap();
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(mock.log(0).iter().any(|c| c == "AUTH XOAUTH2"), "{:?}", mock.log(0));
    assert_exactly_once_clean(&s.maildir, &msgs);
}

#[test]
fn a_list_size_that_lies_is_stored_with_a_warning() {
    for lie in [100, -100] {
        let msgs = messages(3, "liar");
        let mock = Mock::start(Script { list_lie: lie, ..Script::default() }, &msgs);
        let s = setup(&mock, "");
        let o = s.run(&[]);
        assert_eq!(code(&o), 0, "{}", show(&o));
        assert_exactly_once_clean(&s.maildir, &msgs);
        assert_eq!(mock.left(), 0);
        let err = stderr(&o);
        assert!(err.contains("LIST size was wrong for 1 message") && err.contains("message 2"), "{err}");
    }
}

#[test]
fn a_drop_mid_retr_stores_nothing_partial_and_keeps_what_was_stored() {
    let msgs = messages(20, "midretr");
    let mock = Mock::start(Script { drop_in_retr: Some((8, 200)), ..Script::default() }, &msgs);
    let s = setup(&mock, "");
    let o = s.run(&[]);
    assert_eq!(code(&o), 3, "{}", show(&o));
    assert!(stderr(&o).contains("closed"), "{}", show(&o));
    // Messages 1-7 are stored (and were committed on the way out); the
    // partial 8th is nowhere.
    assert_exactly_once_clean(&s.maildir, &msgs[..7]);
    assert_eq!(mock.left(), 20, "nothing deleted: the session never reached QUIT");
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_exactly_once_clean(&s.maildir, &msgs);
    assert_eq!(mock.left(), 0);
    // The 7 journalled before the drop are not downloaded again.
    assert_eq!(mock.count(1, "RETR"), 13, "{:?}", mock.log(1));
}

#[test]
fn a_server_that_is_not_pop3_is_a_clear_error() {
    for greeting in ["SSH-2.0-OpenSSH_9.2p1 Debian-2", "HTTP/1.1 400 Bad Request", "220 mail.example.org ESMTP"] {
        let mock = Mock::start(Script { greeting: greeting.into(), ..Script::default() }, &[]);
        let s = setup(&mock, "");
        let o = s.run(&[]);
        assert_eq!(code(&o), 4, "{}", show(&o));
        let err = stderr(&o);
        assert!(err.contains("is not a POP3 server") && err.contains(&greeting[..8]), "{err}");
        assert!(mock.log(0).is_empty(), "nothing may be sent: {:?}", mock.log(0));
    }
    // A refusing POP3 server is a POP3 server: a temporary failure.
    let mock = Mock::start(Script { greeting: "-ERR too busy".into(), ..Script::default() }, &[]);
    let o = setup(&mock, "").run(&[]);
    assert_eq!(code(&o), 3, "{}", show(&o));
    assert!(stderr(&o).contains("too busy"), "{}", show(&o));
    // Silence (a TLS port spoken to in plaintext): a timeout that says so.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let s = Setup::new(port, "127.0.0.1", "security = \"none\"\nallow_insecure = true\n");
    let cfg = std::fs::read_to_string(&s.config).unwrap().replace("timeout_secs = 20", "timeout_secs = 1");
    std::fs::write(&s.config, cfg).unwrap();
    let o = s.run(&[]);
    assert_eq!(code(&o), 3, "{}", show(&o));
    assert!(stderr(&o).contains("no greeting within 1 seconds"), "{}", show(&o));
    drop(silent);
}

/// Runs a fetch while measuring, every few milliseconds, the octets it
/// has on disk: files under the test's directory (state and Maildir) and
/// the regular files the process holds open (the spool is an unnamed file,
/// invisible in any directory). Returns the output and the largest total.
fn run_measuring_disk(s: &Setup) -> (std::process::Output, u64) {
    fn tree_size(p: &std::path::Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else { return 0 };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => tree_size(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    let child = s.command(&[]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done2, dir) = (done.clone(), s.dir.path().to_owned());
    let meter = std::thread::spawn(move || {
        let mut most = 0u64;
        let start = std::time::Instant::now();
        while !done2.load(std::sync::atomic::Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
            let open: u64 = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum();
            most = most.max(tree_size(&dir) + open);
            std::thread::sleep(Duration::from_millis(5));
        }
        most
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    (out, meter.join().unwrap())
}

#[test]
fn a_server_sending_more_than_it_announced_cannot_fill_the_disk() {
    // (announced, sent, max_size): 10 octets announced and 50 MB sent; a
    // message that never ends; one announced at 2 MB (past the in-memory
    // spool) that never ends either.
    for (announced, sends, max_size) in [(10, Some(50u64 << 20), "max_size = 30000\n"), (10, None, ""), (2 << 20, None, "")] {
        let msgs = messages(5, "liar");
        let mock = Mock::start(Script { lie: Some((3, announced, sends)), ..Script::default() }, &msgs);
        let s = setup(&mock, max_size);
        let (o, most) = run_measuring_disk(&s);
        let what = format!("announced {announced}, sends {sends:?}");
        assert_eq!(code(&o), 0, "{what}: the run goes on: {}", show(&o));
        let good: Vec<Vec<u8>> = msgs.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, m)| m.clone()).collect();
        assert_exactly_once_clean(&s.maildir, &good);
        assert_eq!(mock.left(), 1, "{what}: the others are deleted, the liar stays on the server");
        assert!(mock.shared.lock().unwrap().msgs[2].is_some());
        let err = stderr(&o);
        assert!(
            err.contains("message 3 (uidl mock-0003): the server sent more than")
                && err.contains(&format!("though LIST announced {announced}; skipped (nothing of it stored), left on the server")),
            "{what}: {err}"
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("1 skipped (server sent more than it announced)"), "{}", show(&o));
        // Bounded: the announced size plus a quarter and 64 KiB, plus the
        // four real messages and the journal; never the 50 MB or more.
        let bound = announced.max(30_000) * 5 / 4 + (64 << 10) + (512 << 10);
        assert!(most < bound, "{what}: {most} octets on disk at the peak (bound {bound})");
    }
}
