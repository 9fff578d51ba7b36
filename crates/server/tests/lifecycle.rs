//! Server-level tests for what the binary's integration tests cannot reach
//! quickly: idle timeouts (configured to a second here; the binary refuses
//! less than RFC 1939's 10 minutes) and the two-step shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use pobox_identity::Authenticated;
use pobox_auth::UserDb;
use pobox_server::{Config, Protocol, Services};
use pobox_store::{MailLocation, Mailstore, MaildirStore};

mod support;

struct TestServer {
    /// Before the directory: stopped before it is removed.
    server: support::Running,
    addr: String,
    store: MaildirStore,
    _dir: tempfile::TempDir,
}

fn start(config: Config) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let users = UserDb::open(dir.path().join("users"));
    users.add("alice", b"pw").unwrap();
    let location = MailLocation::new(format!("{}/mail/{{user}}", dir.path().display())).unwrap();
    let store = MaildirStore::new(location);
    store.deliver("alice", &mut &b"Subject: one\n\nbody\n"[..]).unwrap();
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(store.clone()), None));
    let server = support::spawn(svc, &[Protocol::Pop3]);
    let addr = server.addrs[0].clone();
    TestServer { server, addr, store, _dir: dir }
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client { reader: BufReader::new(s.try_clone().unwrap()), writer: s };
        assert!(c.line().starts_with("+OK"));
        c
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader.read_line(&mut l).unwrap();
        l
    }
    fn cmd(&mut self, c: &str) -> String {
        self.writer.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        self.line()
    }
    /// Reads until EOF; returns what came before it.
    fn rest(&mut self) -> String {
        let mut s = String::new();
        let _ = self.reader.read_to_string(&mut s);
        s
    }
}

fn fast_config() -> Config {
    Config { auth_failure_delay: Duration::ZERO, ..Config::default() }
}

fn message_count(store: &MaildirStore) -> usize {
    let mb = store.open(&Authenticated::for_tests("alice")).unwrap();
    mb.messages().len()
}

#[test]
fn idle_timeout_after_login_closes_silently_without_update() {
    let server = start(Config { session_timeout: Duration::from_secs(1), ..fast_config() });
    let mut c = Client::connect(&server.addr);
    assert!(c.cmd("USER alice").starts_with("+OK"));
    assert!(c.cmd("PASS pw").starts_with("+OK"));
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    // RFC 1939 §3: close without a response and without UPDATE.
    assert_eq!(c.rest(), "");
    assert_eq!(message_count(&server.store), 1, "a timeout must not delete");
}

#[test]
fn login_timeout_closes_idle_unauthenticated_connections() {
    let server = start(Config { login_timeout: Duration::from_secs(1), ..fast_config() });
    let mut c = Client::connect(&server.addr);
    assert_eq!(c.rest(), "");
}

#[test]
fn shutdown_lets_sessions_finish_then_closes_them_without_update() {
    let mut server = start(Config { shutdown_grace: Duration::from_secs(1), ..fast_config() });
    let mut c = Client::connect(&server.addr);
    c.cmd("USER alice");
    assert!(c.cmd("PASS pw").starts_with("+OK"));
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    server.server.stop();
    // During the grace period the session still works...
    std::thread::sleep(Duration::from_millis(200));
    assert!(c.cmd("NOOP").starts_with("+OK"));
    // ...and no new connection is accepted.
    let refused = TcpStream::connect(&server.addr)
        .map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 1];
            matches!(s.read(&mut b), Ok(0) | Err(_))
        })
        .unwrap_or(true);
    assert!(refused, "a draining server must not greet new clients");
    // After the grace period: a goodbye, then the connection closes.
    let rest = c.rest();
    assert!(rest.starts_with("-ERR [SYS/TEMP]"), "{rest:?}");
    server.server.wait_stopped(Duration::from_secs(20));
    assert_eq!(message_count(&server.store), 1, "shutdown must not run UPDATE");
}

#[test]
fn shutdown_returns_at_once_when_no_session_is_open() {
    let mut server = start(Config { shutdown_grace: Duration::from_secs(30), ..fast_config() });
    let mut c = Client::connect(&server.addr);
    assert!(c.cmd("QUIT").starts_with("+OK"));
    server.server.stop();
    // Well inside the 30 s grace: nothing to wait for.
    server.server.wait_stopped(Duration::from_secs(10));
}
