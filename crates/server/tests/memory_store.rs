//! The POP3 server over the storage port with `MemoryStore`: real TCP on
//! loopback, no Maildir. Shows that the server holds no storage or
//! retention rule of its own: `[IN-USE]`, login-time expiry and EXPIRE 0
//! all come from the store it is given.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pobox_identity::Authenticated;
use pobox_auth::UserDb;
use pobox_server::{Config, Protocol, Services};
use pobox_store::retention::{Days, Policy, RetentionConfig};
use pobox_store::{Mailstore, MailstoreAdmin, MemoryStore};

mod support;

/// Serves `store` on 127.0.0.1; returns the address and what keeps the
/// server and its user database alive (dropping it stops the server).
fn serve(store: MemoryStore) -> (String, Served) {
    let dir = tempfile::tempdir().unwrap();
    let users = UserDb::open(dir.path().join("users"));
    users.add("alice", b"pw").unwrap();
    let config = Config { auth_failure_delay: Duration::ZERO, ..Config::default() };
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(store), None));
    let server = support::spawn(svc, &[Protocol::Pop3]);
    (server.addrs[0].clone(), Served { _server: server, _dir: dir })
}

/// The server, then (dropped after it) the directory of its user database.
struct Served {
    _server: support::Running,
    _dir: tempfile::TempDir,
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
    /// A multi-line reply's lines, without the terminating dot.
    fn multi(&mut self, c: &str) -> Vec<String> {
        assert!(self.cmd(c).starts_with("+OK"), "{c}");
        let mut lines = Vec::new();
        for _ in 0..10_000 {
            let l = self.line();
            if l == ".\r\n" {
                return lines;
            }
            lines.push(l);
        }
        panic!("no end of the {c} reply");
    }
    fn login(addr: &str) -> Client {
        let mut c = Client::connect(addr);
        assert!(c.cmd("USER alice").starts_with("+OK"));
        let reply = c.cmd("PASS pw");
        assert!(reply.starts_with("+OK"), "{reply}");
        c
    }
}

fn store_with(policy: Policy) -> MemoryStore {
    MemoryStore::new().with_retention(RetentionConfig { default: policy, users: HashMap::new() })
}

#[test]
fn a_session_lists_retrieves_and_deletes_from_the_memory_store() {
    let store = MemoryStore::new();
    store.deliver("alice", &mut &b"Subject: one\n\nbody\n"[..]).unwrap();
    store.deliver("alice", &mut &b"Subject: two\r\n\r\nx\r\n"[..]).unwrap();
    let uidls: Vec<String> = store.inspect("alice").unwrap().into_iter().map(|m| m.uidl.into_string()).collect();
    let (addr, _served) = serve(store.clone());
    let mut c = Client::login(&addr);
    assert_eq!(c.cmd("STAT"), format!("+OK 2 {}\r\n", 22 + 19));
    assert_eq!(c.multi("UIDL"), [format!("1 {}\r\n", uidls[0]), format!("2 {}\r\n", uidls[1])]);
    assert_eq!(c.multi("RETR 1"), ["Subject: one\r\n", "\r\n", "body\r\n"]);
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    assert!(c.cmd("QUIT").starts_with("+OK"));
    assert_eq!(store.inspect("alice").unwrap().len(), 1);
    assert!(store.inspect("alice").unwrap()[0].retrieved.is_some(), "QUIT recorded the retrieval");
}

#[test]
fn a_held_maildrop_is_in_use() {
    let store = MemoryStore::new();
    let (addr, _served) = serve(store.clone());
    let held = store.open(&Authenticated::for_tests("alice")).unwrap();
    let mut c = Client::connect(&addr);
    c.cmd("USER alice");
    let reply = c.cmd("PASS pw");
    assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
    drop(held);
    Client::login(&addr);
}

#[test]
fn expire_zero_removes_what_was_retrieved_at_quit() {
    let store = store_with(Policy { retrieved: Days::After(0), ..Policy::default() });
    store.deliver("alice", &mut &b"a\n"[..]).unwrap();
    store.deliver("alice", &mut &b"b\n"[..]).unwrap();
    let (addr, _served) = serve(store.clone());
    let mut c = Client::login(&addr);
    assert!(c.multi("CAPA").contains(&"EXPIRE 0\r\n".to_owned()));
    c.multi("RETR 2");
    assert!(c.cmd("QUIT").starts_with("+OK"));
    let left = store.inspect("alice").unwrap();
    assert_eq!(left.len(), 1, "retrieved without DELE, removed all the same");
    assert_eq!(store.head("alice", &left[0], 100).unwrap(), b"a\n");
}

#[test]
fn login_expires_mail_retrieved_too_long_ago() {
    let store = store_with(Policy { retrieved: Days::After(1), ..Policy::default() });
    store.deliver("alice", &mut &b"old\n"[..]).unwrap();
    store.deliver("alice", &mut &b"new\n"[..]).unwrap();
    let mut mb = store.open(&Authenticated::for_tests("alice")).unwrap();
    mb.record_retrievals(&[0], SystemTime::now() - Duration::from_secs(3 * 86_400)).unwrap();
    drop(mb);
    let (addr, _served) = serve(store.clone());
    let mut c = Client::login(&addr);
    assert_eq!(c.cmd("STAT"), "+OK 1 5\r\n", "the old message expired at login");
    assert_eq!(c.multi("RETR 1"), ["new\r\n"]);
}
