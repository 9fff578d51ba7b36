//! POP3 driver tests: whole sessions through the real driver
//! (`pobox_server::testkit::pop3_session`, the code a TCP connection runs
//! from the greeting to UPDATE) over an in-memory pipe, with a
//! `MemoryStore`, under tokio's paused clock.
//!
//! Paused time makes the timers testable without waiting: when every task
//! is waiting, tokio jumps to the next timer, so an idle client sees the
//! server's timeout at once, and `tokio::time::advance` moves the clock by
//! an exact amount. The virtual time that passed is what the tests assert
//! (that a delay was applied, when a timer fired); nothing depends on how
//! fast the machine is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pobox_auth::UserDb;
use pobox_server::shutdown::{Phase, Trigger};
use pobox_server::{Config, Services};
use pobox_store::retention::{Days, Policy, RetentionConfig};
use pobox_store::{Mailstore, MailstoreAdmin, MemoryStore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
const LOGIN_DEADLINE: Duration = Duration::from_secs(180);
const SESSION_TIMEOUT: Duration = Duration::from_secs(600);
const FAILURE_DELAY: Duration = Duration::from_secs(3);
const DAY: Duration = Duration::from_secs(86_400);

/// The services and a user database (in a temporary directory: the one
/// file these tests need).
struct Setup {
    svc: Arc<Services>,
    store: MemoryStore,
    trigger: Trigger,
    shutdown: pobox_server::shutdown::Shutdown,
    _dir: tempfile::TempDir,
}

fn config() -> Config {
    Config {
        login_timeout: LOGIN_TIMEOUT,
        login_deadline: LOGIN_DEADLINE,
        session_timeout: SESSION_TIMEOUT,
        auth_failure_delay: FAILURE_DELAY,
        // No growing penalties: each test's timings are the configured ones.
        auth_penalty_max: Duration::ZERO,
        expire_interval: Duration::ZERO,
        ..Config::default()
    }
}

/// A store whose clock is tokio's (paused) clock, so that advancing time
/// ages the mail too.
fn store_with(policy: Policy) -> MemoryStore {
    let (base, start) = (SystemTime::now(), Instant::now());
    MemoryStore::new()
        .with_retention(RetentionConfig { default: policy, users: HashMap::new() })
        .with_clock(move || base + start.elapsed())
}

fn setup(store: MemoryStore) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let users = UserDb::open(dir.path().join("users"));
    users.add("alice", b"pw").unwrap();
    let svc = Arc::new(Services::new(config(), Arc::new(users), Arc::new(store.clone()), None));
    let (trigger, shutdown) = pobox_server::shutdown::channel();
    Setup { svc, store, trigger, shutdown, _dir: dir }
}

fn peer() -> SocketAddr {
    "127.0.0.1:40110".parse().unwrap()
}

/// The client end of one session.
struct Client {
    io: BufReader<DuplexStream>,
    session: JoinHandle<()>,
}

impl Setup {
    /// Opens a session and reads the greeting.
    async fn connect(&self) -> Client {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = tokio::spawn(pobox_server::testkit::pop3_session(
            self.svc.clone(),
            server,
            peer(),
            self.shutdown.clone(),
        ));
        let mut c = Client { io: BufReader::new(client), session };
        let greeting = c.line().await;
        assert!(greeting.starts_with("+OK pobox POP3 server ready"), "{greeting:?}");
        c
    }

    /// A session logged in as alice.
    async fn login(&self) -> Client {
        let mut c = self.connect().await;
        assert!(c.cmd("USER alice").await.starts_with("+OK"));
        let reply = c.cmd("PASS pw").await;
        assert!(reply.starts_with("+OK"), "{reply:?}");
        c
    }

    fn deliver(&self, body: &str) {
        self.store.deliver("alice", &mut body.as_bytes()).unwrap();
    }

    fn stored(&self) -> usize {
        self.store.inspect("alice").unwrap().len()
    }
}

impl Client {
    /// One line; empty at end of stream.
    async fn line(&mut self) -> String {
        let mut l = String::new();
        self.io.read_line(&mut l).await.unwrap();
        l
    }

    async fn send(&mut self, bytes: &str) {
        self.io.get_mut().write_all(bytes.as_bytes()).await.unwrap();
    }

    async fn cmd(&mut self, c: &str) -> String {
        self.send(&format!("{c}\r\n")).await;
        self.line().await
    }

    /// A multi-line reply's lines after the status, without the dot.
    async fn multi(&mut self, c: &str) -> Vec<String> {
        let status = self.cmd(c).await;
        assert!(status.starts_with("+OK"), "{c}: {status:?}");
        let mut lines = Vec::new();
        for _ in 0..1000 {
            let l = self.line().await;
            assert!(!l.is_empty(), "end of stream inside the {c} reply");
            if l == ".\r\n" {
                return lines;
            }
            lines.push(l);
        }
        panic!("no end of the {c} reply");
    }

    /// Everything until the server closes, then waits for the session to
    /// finish (the maildrop released).
    async fn rest(mut self) -> String {
        let mut all = String::new();
        self.io.read_to_string(&mut all).await.unwrap();
        self.session.await.unwrap();
        all
    }

    /// QUIT, which must be answered +OK and end the session.
    async fn quit(mut self) {
        let reply = self.cmd("QUIT").await;
        assert!(reply.starts_with("+OK"), "{reply:?}");
        assert_eq!(self.rest().await, "");
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_before_login_is_closed_at_the_login_timeout_without_a_reply() {
    let s = setup(MemoryStore::new());
    let c = s.connect().await;
    let start = Instant::now();
    // RFC 1939 §3: the inactivity timer closes without a response.
    assert_eq!(c.rest().await, "");
    assert_eq!(start.elapsed(), LOGIN_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_keeps_talking_without_logging_in_meets_the_login_deadline() {
    let s = setup(MemoryStore::new());
    let mut c = s.connect().await;
    let start = Instant::now();
    // Each command comes before the idle timer would fire; only the
    // deadline for the whole AUTHORIZATION phase can end the session.
    for _ in 0..3 {
        tokio::time::advance(LOGIN_TIMEOUT - Duration::from_secs(1)).await;
        assert!(c.cmd("USER alice").await.starts_with("+OK"));
    }
    assert_eq!(c.rest().await, "-ERR login took too long, closing connection\r\n");
    assert_eq!(start.elapsed(), LOGIN_DEADLINE);
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_is_closed_at_the_session_timeout_without_update() {
    let s = setup(MemoryStore::new());
    s.deliver("Subject: keep\n\nme\n");
    let mut c = s.login().await;
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    let start = Instant::now();
    assert_eq!(c.rest().await, "", "closed without a reply");
    assert_eq!(start.elapsed(), SESSION_TIMEOUT);
    assert_eq!(s.stored(), 1, "no UPDATE: the DELE'd message is still there");
    // And the maildrop is free again.
    s.login().await.quit().await;
}

#[tokio::test(start_paused = true)]
async fn activity_just_under_the_timeouts_keeps_the_session() {
    let s = setup(MemoryStore::new());
    s.deliver("x\n");
    let mut c = s.connect().await;
    tokio::time::advance(LOGIN_TIMEOUT - Duration::from_secs(1)).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert!(c.cmd("PASS pw").await.starts_with("+OK"));
    let start = Instant::now();
    // Twice: each command restarts the timer, so the session outlives one
    // session_timeout in total.
    for _ in 0..2 {
        tokio::time::advance(SESSION_TIMEOUT - Duration::from_secs(1)).await;
        assert_eq!(c.cmd("STAT").await, "+OK 1 3\r\n");
    }
    assert!(start.elapsed() > SESSION_TIMEOUT);
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    c.quit().await;
    assert_eq!(s.stored(), 0, "QUIT after the long pauses still updates");
}

#[tokio::test(start_paused = true)]
async fn a_failed_login_waits_the_failure_delay_and_a_good_one_does_not() {
    let s = setup(MemoryStore::new());
    let mut c = s.connect().await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    let start = Instant::now();
    let reply = c.cmd("PASS wrong").await;
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply:?}");
    assert!(start.elapsed() >= FAILURE_DELAY, "answered after {:?}", start.elapsed());
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    let start = Instant::now();
    assert!(c.cmd("PASS pw").await.starts_with("+OK"));
    assert!(start.elapsed() < FAILURE_DELAY, "a good password is not delayed: {:?}", start.elapsed());
    c.quit().await;
}

#[tokio::test(start_paused = true)]
async fn login_delay_refuses_a_second_login_until_the_delay_has_passed() {
    let delay = 300;
    let s = setup(store_with(Policy { login_delay_secs: delay, ..Policy::default() }));
    let mut c = s.connect().await;
    assert!(c.multi("CAPA").await.contains(&format!("LOGIN-DELAY {delay}\r\n")));
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert!(c.cmd("PASS pw").await.starts_with("+OK"));
    c.quit().await;
    let too_early = [Duration::ZERO, Duration::from_secs(u64::from(delay) - 1)];
    for wait in too_early {
        tokio::time::advance(wait).await;
        let mut c = s.connect().await;
        c.cmd("USER alice").await;
        let reply = c.cmd("PASS pw").await;
        assert!(reply.starts_with("-ERR [LOGIN-DELAY]"), "after {wait:?}: {reply:?}");
        c.quit().await;
    }
    // 1 + 299 seconds have passed since the first login.
    tokio::time::advance(Duration::from_secs(1)).await;
    s.login().await.quit().await;
}

#[tokio::test(start_paused = true)]
async fn retention_expires_mail_at_login_as_time_passes() {
    let s = setup(store_with(Policy { max_age: Days::After(1), ..Policy::default() }));
    s.deliver("old\n");
    tokio::time::advance(DAY - Duration::from_secs(1)).await;
    let mut c = s.login().await;
    assert_eq!(c.cmd("STAT").await, "+OK 1 5\r\n", "one second short of max_age: kept");
    c.quit().await;
    s.deliver("new\n");
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut c = s.login().await;
    assert_eq!(c.cmd("STAT").await, "+OK 1 5\r\n", "the old message expired at login");
    assert_eq!(c.multi("RETR 1").await, ["new\r\n"]);
    c.quit().await;
}

#[tokio::test(start_paused = true)]
async fn expire_zero_removes_at_update_and_only_at_update() {
    let s = setup(store_with(Policy { retrieved: Days::After(0), ..Policy::default() }));
    s.deliver("a\n");
    s.deliver("b\n");
    // Retrieved, then the client goes quiet: no UPDATE, nothing removed.
    let mut c = s.login().await;
    assert!(c.multi("CAPA").await.contains(&"EXPIRE 0\r\n".to_owned()));
    assert_eq!(c.multi("RETR 2").await, ["b\r\n"]);
    assert_eq!(c.rest().await, "");
    assert_eq!(s.stored(), 2, "a session that timed out removes nothing");
    // Retrieved and QUIT: removed without DELE.
    let mut c = s.login().await;
    assert_eq!(c.multi("RETR 2").await, ["b\r\n"]);
    c.quit().await;
    let left = s.store.inspect("alice").unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(s.store.head("alice", &left[0], 10).unwrap(), b"a\n");
}

#[tokio::test(start_paused = true)]
async fn a_second_session_gets_in_use_until_the_first_ends() {
    let s = setup(MemoryStore::new());
    let first = s.login().await;
    let mut second = s.connect().await;
    second.cmd("USER alice").await;
    let reply = second.cmd("PASS pw").await;
    assert!(reply.starts_with("-ERR [IN-USE]"), "{reply:?}");
    first.quit().await;
    // Same connection, another try: the lock is free now.
    assert!(second.cmd("USER alice").await.starts_with("+OK"));
    assert!(second.cmd("PASS pw").await.starts_with("+OK"));
    second.quit().await;
}

#[tokio::test(start_paused = true)]
async fn pipelined_commands_in_one_write_are_answered_in_order() {
    let s = setup(MemoryStore::new());
    s.deliver("one\n");
    s.deliver("two\n");
    let mut c = s.connect().await;
    c.send("USER alice\r\nPASS pw\r\nSTAT\r\nDELE 1\r\nLIST\r\nRETR 2\r\nDELE 1\r\nQUIT\r\n").await;
    let all = c.rest().await;
    let lines: Vec<&str> = all.split_inclusive("\r\n").collect();
    let expected_prefixes = [
        "+OK",      // USER
        "+OK",      // PASS
        "+OK 2 10", // STAT
        "+OK",      // DELE 1
        "+OK",      // LIST
        "2 5\r\n",
        ".\r\n",
        "+OK", // RETR 2
        "two\r\n",
        ".\r\n",
        "-ERR", // DELE 1 again
        "+OK",  // QUIT
    ];
    assert_eq!(lines.len(), expected_prefixes.len(), "{all}");
    for (line, prefix) in lines.iter().zip(expected_prefixes) {
        assert!(line.starts_with(prefix), "expected {prefix:?}, got {line:?} in\n{all}");
    }
    assert_eq!(s.stored(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_kicked_session_is_told_and_nothing_is_deleted() {
    let s = setup(MemoryStore::new());
    s.deliver("x\n");
    let mut c = s.login().await;
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert_eq!(s.svc.sessions.kick("alice"), 1);
    let start = Instant::now();
    assert_eq!(c.rest().await, "-ERR [SYS/TEMP] session closed by the administrator, nothing was deleted\r\n");
    assert!(start.elapsed() < SESSION_TIMEOUT, "ended by the kick, not by the idle timer");
    assert_eq!(s.stored(), 1);
    assert!(!s.svc.sessions.has_user("alice"));
}

#[tokio::test(start_paused = true)]
async fn a_forced_shutdown_is_announced_and_nothing_is_deleted() {
    let s = setup(MemoryStore::new());
    s.deliver("x\n");
    let mut c = s.login().await;
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    // Draining lets open sessions finish; only Forced closes them.
    s.trigger.set(Phase::Draining);
    assert_eq!(c.cmd("NOOP").await, "+OK\r\n");
    s.trigger.set(Phase::Forced);
    let start = Instant::now();
    assert_eq!(c.rest().await, "-ERR [SYS/TEMP] server shutting down, nothing was deleted\r\n");
    assert!(start.elapsed() < SESSION_TIMEOUT);
    assert_eq!(s.stored(), 1);
}
