//! Several `pobox serve` nodes on one PostgreSQL database (issue 15): real
//! processes on 127.0.0.1 ephemeral ports, one passwd-file, a throwaway
//! PostgreSQL 15 cluster from Debian's `postgresql-15`
//! (`pobox_store_pg::testkit`, run as an unprivileged user).
//!
//! - `schema`: `pobox db migrate` / `db status`, `pobox serve` refusing an
//!   unmigrated database, `pobox check` on the backend.
//! - `lock`: `[IN-USE]` across nodes; a SIGKILLed node's maildrop served by
//!   the other within the lease; the fencing case (a SIGSTOPped session
//!   whose lease was taken over cannot commit its DELEs).
//! - `delivery`: LMTP through both nodes at once lands exactly once.
//! - `copy`: Maildir → PostgreSQL (killed part-way, rerun) → Maildir, with
//!   the same UIDLs and bytes over POP3.
//! - `health`: `/health` answers 503 `store unavailable` while the
//!   database is stopped, 200 again after it starts.
//! - `reload`: SIGHUP brings new policies to the PostgreSQL store.
//! - `outage`: a node SIGKILLed during deliveries and sessions and started
//!   again; the database stopped and restarted under load.
//!
//! Every wait is a bounded loop; nothing asserts on elapsed time.
//! PostgreSQL missing fails the tests unless `POBOX_ALLOW_SKIP=1`.

#![allow(unreachable_pub)]

#[path = "../integration/util.rs"]
#[allow(dead_code)]
mod util;

mod copy;
mod delivery;
mod health;
mod lock;
mod outage;
mod reload;
mod schema;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use util::{Dir, PW, Server};

/// Lease time of the test nodes: the shortest the config accepts, so a
/// dead node's maildrops come free quickly.
pub const LEASE_SECS: u64 = 3;

/// One database and the passwd-file every node shares.
pub struct Cluster {
    pub url: String,
    /// Holds the shared passwd-file (`users.users_file()`).
    pub users: Dir,
}

impl Cluster {
    /// A fresh database (not migrated) on `pg`, and users `names`.
    pub fn new(pg: &pobox_store_pg::testkit::TestPg, names: &[&str]) -> Cluster {
        let users = Dir::new();
        for n in names {
            users.add_user(n, PW);
        }
        Cluster { url: pg.create_database(), users }
    }

    /// As [`Cluster::new`], migrated with `pobox db migrate`.
    pub fn migrated(pg: &pobox_store_pg::testkit::TestPg, names: &[&str]) -> Cluster {
        let c = Cluster::new(pg, names);
        let dir = Dir::new();
        let out = c.cli(&dir, "cli").args(["db", "migrate"]).assert_exit(0);
        assert!(out.stdout().contains("applied migration 1"), "{}", out.dump());
        c
    }

    /// The `[store]` table as an inline TOML value.
    pub fn store_toml(&self, node: &str) -> String {
        format!(
            "{{ backend = \"postgres\", postgres = {{ url = {:?}, node = {node:?}, lease_secs = {LEASE_SECS}, pool_size = 4 }} }}",
            self.url
        )
    }

    /// Writes a config file for admin commands in `dir` and returns
    /// `pobox --data DIR --config FILE` ready for arguments.
    pub fn cli(&self, dir: &Dir, node: &str) -> util::TestCommand {
        let file = dir.scratch(&format!("{node}.toml"));
        std::fs::write(
            &file,
            format!("passwd_file = {:?}\nstore = {}\n", self.users.users_file(), self.store_toml(node)),
        )
        .unwrap();
        let mut c = dir.pobox();
        c.arg("--config").arg(&file);
        c
    }

    /// A node: `pobox serve` on `dir` (its own data dir) with this
    /// database and passwd-file.
    pub fn node<'d>(&self, dir: &'d Dir, name: &str) -> Server<'d> {
        self.builder(dir, name).start()
    }

    pub fn builder<'d>(&self, dir: &'d Dir, name: &str) -> util::ServerBuilder<'d> {
        dir.server()
            .config("passwd_file", &format!("{:?}", self.users.users_file()))
            .config("store", &self.store_toml(name))
    }
}

/// The PostgreSQL cluster the tests share, or `None` when PostgreSQL is
/// missing and skipping is allowed.
pub fn shared_pg(test: &str) -> Option<&'static pobox_store_pg::testkit::TestPg> {
    pobox_store_pg::testkit::require(test).then(pobox_store_pg::testkit::TestPg::shared)
}

/// Sends `signal` to a node's process.
pub fn signal(server: &Server<'_>, signal: rustix::process::Signal) {
    rustix::process::kill_process(server.pid(), signal).expect("kill");
}

/// A test message, CRLF line ends, identified by `id` in its Message-ID.
pub fn message(id: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{id}@nodes.test>\r\nSubject: {id}\r\n\r\nbody of {id}\r\n.leading dot\r\n{}\r\n",
        "x".repeat(id.len() * 37 % 500)
    )
    .into_bytes()
}

/// The message as the sender wrote it: a stored copy starts with the
/// trace headers LMTP adds (Return-Path, Received), then the sent bytes.
pub fn as_sent(stored: &[u8]) -> &[u8] {
    let at = stored.windows(13).position(|w| w == b"Message-ID: <").expect("Message-ID");
    &stored[at..]
}

/// Asserts that `stored` is `id`'s message with trace headers before it.
pub fn assert_intact(what: &str, id: &str, stored: &[u8]) {
    assert!(as_sent(stored) == message(id).as_slice(), "{what}: {id} damaged:\n{}", String::from_utf8_lossy(stored));
}

/// The id in a message's Message-ID header.
pub fn id_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let start = text.find("Message-ID: <").expect("Message-ID") + "Message-ID: <".len();
    text[start..].split('@').next().unwrap().to_string()
}

/// What one LMTP delivery attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The final reply line.
    Reply(String),
    /// The connection failed or closed before a final reply: the client
    /// cannot know whether the message was stored.
    Unknown(String),
}

impl Outcome {
    pub fn acknowledged(&self) -> bool {
        matches!(self, Outcome::Reply(r) if r.starts_with("250"))
    }
}

/// Delivers one message to `user` over LMTP without panicking on a dead
/// server (the outage tests kill it on purpose).
pub fn lmtp_deliver(port: u16, user: &str, body: &[u8]) -> Outcome {
    fn step(r: &mut BufReader<TcpStream>) -> Result<String, String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) => return Err(format!("closed after {all:?}")),
                Ok(_) => {}
                Err(e) => return Err(format!("{e} after {all:?}")),
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(all.trim_end().to_string());
            }
        }
    }
    let run = || -> Result<String, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(util::IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(util::IO_TIMEOUT)).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut send = |text: &[u8]| w.write_all(text).map_err(|e| e.to_string());
        step(&mut r)?;
        for cmd in [
            "LHLO nodes.test".to_string(),
            "MAIL FROM:<s@nodes.test>".into(),
            format!("RCPT TO:<{user}@example.org>"),
            "DATA".into(),
        ] {
            send(format!("{cmd}\r\n").as_bytes())?;
            let reply = step(&mut r)?;
            if !(reply.starts_with('2') || reply.starts_with("354")) {
                return Ok(reply);
            }
        }
        let mut data = util::stuff(body);
        data.extend_from_slice(b".\r\n");
        send(&data)?;
        let reply = step(&mut r)?;
        let _ = send(b"QUIT\r\n");
        Ok(reply)
    };
    match run() {
        Ok(r) => Outcome::Reply(r),
        Err(e) => Outcome::Unknown(e),
    }
}

/// Logs in, retrying while the answer is `-ERR [IN-USE]` (a lease held by
/// a dead or stopped node), for at most `limit`; panics otherwise.
pub fn login_when_free(server: &Server<'_>, user: &str, limit: Duration) -> util::Pop3 {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        let mut c = server.pop3();
        assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
        last = c.cmd(&format!("PASS {PW}"));
        if last.starts_with("+OK") {
            return c;
        }
        assert!(last.starts_with("-ERR [IN-USE]"), "login: {last}\n{}", server.dump());
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{user} still locked after {limit:?}: {last}\n{}", server.dump());
}

/// Every message of `user` as (UIDL, bytes), read over POP3 and QUIT
/// without deleting anything.
pub fn contents(server: &Server<'_>, user: &str) -> Vec<(String, Vec<u8>)> {
    let mut c = login_when_free(server, user, Duration::from_secs(60));
    let all = c.contents();
    c.quit();
    all
}

/// A location template under `dir`'s scratch space.
pub fn location(dir: &Dir, name: &str) -> (PathBuf, String) {
    let root = dir.scratch(name);
    let template = format!("{}/{{user}}", root.display());
    (root, template)
}

/// Whether `path` exists (for assertions with a message).
pub fn exists(path: &Path) -> bool {
    path.exists()
}
