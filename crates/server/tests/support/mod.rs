//! What the server tests share. [`spawn`]: a server on its own runtime
//! thread with listeners on loopback, stopped when the handle is dropped
//! (every test binary that runs listeners uses it). And for the raw-socket
//! intake tests (`data_end.rs`, `bdat.rs`): a server with SMTP and LMTP
//! listeners over a Maildir in a temporary directory, and a raw client
//! that sends bytes and reads replies. Each test binary uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pobox_auth::UserDb;
use pobox_server::config::MailAuthConfig;
use pobox_server::{Config, ListenAddr, Protocol, Services};
use pobox_store::{MailLocation, MaildirStore};
use tokio::sync::oneshot;

/// A server started by [`spawn`]. Dropping it stops the server and waits
/// (up to 15 s) for it to finish, so a test's temporary directory outlives
/// the sessions using it: declare it before the directory in a struct.
pub(crate) struct Running {
    /// The bound addresses, in the order of the protocols given to [`spawn`].
    pub(crate) addrs: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

/// Serves `svc` on a new thread with its own tokio runtime, one listener
/// on 127.0.0.1 (any free port) per entry of `protocols`; returns once
/// they are bound.
pub(crate) fn spawn(svc: Arc<Services>, protocols: &[Protocol]) -> Running {
    let protocols = protocols.to_vec();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let any = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
            let mut listeners = Vec::new();
            for protocol in protocols {
                listeners.push(pobox_server::bind(protocol, &any).await.unwrap());
            }
            addr_tx.send(listeners.iter().map(|l| l.local.clone()).collect::<Vec<_>>()).unwrap();
            pobox_server::run(svc, listeners, async {
                let _ = stop_rx.await;
            })
            .await;
        });
        let _ = done_tx.send(());
    });
    let addrs = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    Running { addrs, stop: Some(stop_tx), done: Some(done_rx) }
}

impl Running {
    /// Starts the shutdown (listeners close, sessions get
    /// `shutdown_grace`); panics if the server had already stopped.
    pub(crate) fn stop(&mut self) {
        self.stop.take().expect("stopped once").send(()).expect("the server was still running");
    }

    /// Waits (at most `limit`) until the server has finished; panics if it
    /// has not.
    pub(crate) fn wait_stopped(&mut self, limit: Duration) {
        self.done.take().expect("waited once").recv_timeout(limit).unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            if let Some(done) = self.done.take() {
                let _ = done.recv_timeout(Duration::from_secs(15));
            }
        }
    }
}

pub(crate) struct TestServer {
    /// Before `dir`: stopped before the directory is removed.
    _server: Running,
    pub(crate) smtp: String,
    pub(crate) lmtp: String,
    pub(crate) dir: tempfile::TempDir,
}

pub(crate) fn config() -> Config {
    Config {
        hostname: "mx.example.org".into(),
        domains: vec!["example.org".into()],
        auth_failure_delay: Duration::ZERO,
        shutdown_grace: Duration::from_millis(200),
        expire_interval: Duration::ZERO,
        // No DNS in tests; the checks have their own tests in smtp.rs.
        mail_auth: MailAuthConfig { enabled: false, ..MailAuthConfig::default() },
        ..Config::default()
    }
}

pub(crate) fn start(config: Config) -> TestServer {
    start_with(config, |_| {})
}

/// `setup` runs in the data dir before the server starts; Sieve scripts
/// are in `<dir>/sieve`, the spool is `<dir>/spool`.
pub(crate) fn start_with(mut config: Config, setup: impl FnOnce(&std::path::Path)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let users = UserDb::open(dir.path().join("users"));
    for u in ["alice", "bob"] {
        users.add(u, b"pw").unwrap();
    }
    setup(dir.path());
    config.sieve.user_dir = Some(dir.path().join("sieve"));
    if config.spool_dir.is_none() {
        config.spool_dir = Some(dir.path().join("spool"));
    }
    let location = MailLocation::new(format!("{}/mail/{{user}}", dir.path().display())).unwrap();
    let store = MaildirStore::new(location);
    let svc = Arc::new(Services::new(config, Arc::new(users), Arc::new(store), None));
    let server = spawn(svc, &[Protocol::Smtp, Protocol::Lmtp]);
    let (smtp, lmtp) = (server.addrs[0].clone(), server.addrs[1].clone());
    TestServer { _server: server, smtp, lmtp, dir }
}

impl TestServer {
    pub(crate) fn new_dir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user).join("new")
    }
    /// Every message file in `user`'s `new/`, read back.
    pub(crate) fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        let Ok(dir) = std::fs::read_dir(self.new_dir(user)) else { return Vec::new() };
        dir.map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect()
    }
    /// Removes every delivered file (between cases of a matrix).
    pub(crate) fn clear(&self) {
        for user in ["alice", "bob"] {
            if let Ok(dir) = std::fs::read_dir(self.new_dir(user)) {
                for e in dir {
                    std::fs::remove_file(e.unwrap().path()).unwrap();
                }
            }
        }
    }
}

/// A raw client: bytes out, reply lines in.
pub(crate) struct Client {
    pub(crate) reader: BufReader<TcpStream>,
    pub(crate) writer: TcpStream,
}

impl Client {
    pub(crate) fn connect(addr: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // Each write is its own segment, so split points reach the server.
        s.set_nodelay(true).unwrap();
        Client { reader: BufReader::new(s.try_clone().unwrap()), writer: s }
    }
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }
    pub(crate) fn line(&mut self) -> String {
        let mut l = Vec::new();
        let _ = self.reader.read_until(b'\n', &mut l);
        String::from_utf8_lossy(&l).into_owned()
    }
    /// One (possibly multi-line) reply.
    pub(crate) fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "connection closed; got so far: {all:?}");
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    pub(crate) fn cmd(&mut self, c: &str) -> String {
        self.send(format!("{c}\r\n").as_bytes());
        self.reply()
    }
    pub(crate) fn smtp(addr: &str) -> Client {
        let mut c = Client::connect(addr);
        assert!(c.reply().starts_with("220"));
        assert!(c.cmd("EHLO client.sender.test").starts_with("250"));
        c
    }
    pub(crate) fn lmtp(addr: &str) -> Client {
        let mut c = Client::connect(addr);
        assert!(c.reply().starts_with("220"));
        assert!(c.cmd("LHLO relay.example.net").starts_with("250"));
        c
    }
}

