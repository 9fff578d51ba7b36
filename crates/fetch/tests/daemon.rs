//! `--daemon` end to end against two `pobox serve` instances: three
//! accounts polled every few seconds, mail delivered while it runs arrives,
//! SIGHUP starts a new account, SIGTERM in the middle of a message loses
//! and duplicates nothing, the systemd notifications arrive on
//! NOTIFY_SOCKET, and `on_new_mail` runs with the counts in its environment.
//!
//! Needs `target/debug/pobox` (`cargo build -p pobox`) or `POBOX_BIN`.
//! Polling below a minute needs the hidden `--min-poll-interval`.

mod common;
mod serve_with_config;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn signal(child: &Child, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_child(child), sig).unwrap();
}

/// Writes an accounts file as a user must: it holds passwords, so 0600
/// (the fetcher refuses one others can read).
fn write_private(path: &std::path::Path, text: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Waits (bounded) until `f` is true.
fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("daemon did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Collects systemd notifications sent to a datagram socket.
struct NotifySocket {
    path: std::path::PathBuf,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Bounded: ends when the test drops the receiver, or after 10 min.
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(600) {
                if let Ok(n) = sock.recv(&mut buf)
                    && tx.send(String::from_utf8_lossy(&buf[..n]).to_string()).is_err()
                {
                    break;
                }
            }
        });
        NotifySocket { path, rx, seen: Vec::new() }
    }

    /// Waits for a datagram containing `line` (as one of its lines).
    fn expect(&mut self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        if self.seen.iter().any(|m| m.lines().any(|l| l == line)) {
            self.seen.retain(|m| !m.lines().any(|l| l == line));
            return;
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(m) if m.lines().any(|l| l == line) => return,
                Ok(m) => self.seen.push(m),
                Err(_) => break,
            }
        }
        panic!("no {line} notification; got {:?}", self.seen);
    }
}

fn pin(srv: &PoboxServe) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(srv.cert()).unwrap();
    pobox_fetch::config::format_fingerprint(&pobox_fetch::tls::fingerprint(&der))
}

fn add_user(srv: &PoboxServe, user: &str, password: &str) {
    let mut add = Command::new(&srv.bin)
        .arg("--data")
        .arg(srv.dir.path().join("data"))
        .args(["user", "add", user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    add.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    assert!(add.wait().unwrap().success());
}

fn deliver_to(srv: &PoboxServe, user: &str, msgs: &[Vec<u8>]) {
    for m in msgs {
        let mut c = Command::new(&srv.bin)
            .arg("--data")
            .arg(srv.dir.path().join("data"))
            .args(["deliver", user])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(m).unwrap();
        assert!(c.wait().unwrap().success());
    }
}

fn account(name: &str, srv: &PoboxServe, user: &str, password: &str, maildir: &Path) -> String {
    format!(
        "[accounts.{name}]\nhost = \"localhost\"\nport = {}\nuser = \"{user}\"\npassword = \"{password}\"\nfingerprint = \"{}\"\nmaildir = \"{}\"\npoll_interval = 2\ntimeout_secs = 20\n",
        srv.pop3s,
        pin(srv),
        maildir.display()
    )
}

fn count(maildir: &Path) -> usize {
    local_messages(maildir).len()
}

/// Sums the `on_new_mail` lines ("ACCOUNT COUNT") per account.
fn hook_counts(log: &Path) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let (a, n) = line.split_once(' ').unwrap();
        *out.entry(a.to_string()).or_default() += n.parse::<u64>().unwrap();
    }
    out
}

#[test]
fn three_accounts_two_servers_reload_and_notify() {
    let started = Instant::now();
    let (Some(a), Some(b)) = (PoboxServe::start(), PoboxServe::start()) else { return };
    add_user(&a, "bob", "bob pass");
    let dir = tempfile::tempdir().unwrap();
    let md = |n: &str| dir.path().join(format!("Mail-{n}"));
    let (a1, b1, bob1) = (messages(5, "a1"), messages(4, "b1"), messages(3, "bob1"));
    deliver_to(&a, USER, &a1);
    deliver_to(&b, USER, &b1);
    deliver_to(&a, "bob", &bob1);
    let hook_log = dir.path().join("hook.log");
    let head = format!(
        "state_dir = \"{}\"\non_new_mail = [\"/bin/sh\", \"-c\", \"echo \\\"$POBOX_ACCOUNT $POBOX_NEW\\\" >> {}\"]\n",
        dir.path().join("state").display(),
        hook_log.display()
    );
    let config = dir.path().join("fetch.toml");
    let two = format!("{head}{}{}", account("a", &a, USER, PASSWORD, &md("a")), account("b", &b, USER, PASSWORD, &md("b")));
    write_private(&config, &two).unwrap();

    let mut notify = NotifySocket::bind(dir.path());
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_pobox-fetch-dev"))
        .arg("--config")
        .arg(&config)
        .args(["--daemon", "--min-poll-interval", "1"])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("daemon.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("daemon.err")).unwrap())
        .spawn()
        .unwrap();
    let log = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(dir.path().join("daemon.out")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("daemon.err")).unwrap_or_default()
        )
    };
    notify.expect("READY=1");
    wait_until("the first polls", Duration::from_secs(15), || count(&md("a")) == 5 && count(&md("b")) == 4);
    // Watchdog pings at half of WATCHDOG_USEC.
    notify.expect("WATCHDOG=1");

    // Mail delivered while it runs arrives on the next poll.
    let (a2, b2) = (messages(3, "a2"), messages(2, "b2"));
    deliver_to(&a, USER, &a2);
    deliver_to(&b, USER, &b2);
    wait_until("mail delivered while running", Duration::from_secs(15), || count(&md("a")) == 8 && count(&md("b")) == 6);

    // SIGHUP with a third account (a second user on server a).
    write_private(&config, format!("{two}{}", account("c", &a, "bob", "bob pass", &md("c")))).unwrap();
    signal(&daemon, rustix::process::Signal::HUP);
    notify.expect("RELOADING=1");
    notify.expect("READY=1");
    wait_until("the new account's mail", Duration::from_secs(15), || count(&md("c")) == 3);

    // SIGHUP without account b: it stops; a and c go on.
    write_private(
        &config,
        format!("{head}{}{}", account("a", &a, USER, PASSWORD, &md("a")), account("c", &a, "bob", "bob pass", &md("c"))),
    )
    .unwrap();
    signal(&daemon, rustix::process::Signal::HUP);
    notify.expect("RELOADING=1");
    notify.expect("READY=1");
    wait_until("b to be stopped", Duration::from_secs(10), || log().contains("stopped [b]"));
    let (b3, c3) = (messages(1, "b3"), messages(1, "c3"));
    deliver_to(&b, USER, &b3);
    deliver_to(&a, "bob", &c3);
    wait_until("c's mail after the second reload", Duration::from_secs(15), || count(&md("c")) == 4);

    signal(&daemon, rustix::process::Signal::TERM);
    notify.expect("STOPPING=1");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0, "{}", log());

    assert_exactly_once_clean(&md("a"), &[a1, a2].concat());
    assert_exactly_once_clean(&md("b"), &[b1, b2].concat());
    assert_exactly_once_clean(&md("c"), &[bob1, c3].concat());
    // b stopped at the second reload: its new message stayed on the server
    // (c's arrival above came after at least one of b's old intervals).
    assert_eq!(count(&md("b")), 6, "a removed account is no longer polled");
    let hooks = hook_counts(&hook_log);
    assert_eq!((hooks.get("a"), hooks.get("b"), hooks.get("c")), (Some(&8), Some(&6), Some(&4)), "{hooks:?}\n{}", log());
    assert!(log().contains("started [c]"), "{}", log());
    assert!(started.elapsed() < Duration::from_secs(60), "the test must stay under a minute");
}

/// A loopback proxy that relays server→client at `rate` octets/s and
/// records each client command line with the time it passed.
struct SlowProxy {
    port: u16,
    relayed: Arc<AtomicU64>,
    commands: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl SlowProxy {
    fn start(upstream: u16, rate: u64) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let relayed = Arc::new(AtomicU64::new(0));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let (r, c) = (relayed.clone(), commands.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().take(100) {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let (mut s_r, mut c_w) = (server.try_clone().unwrap(), client.try_clone().unwrap());
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    let start = Instant::now();
                    let mut sent = 0u64;
                    while let Ok(n) = s_r.read(&mut buf) {
                        if n == 0 || c_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        r.fetch_add(n as u64, Ordering::SeqCst);
                        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let _ = c_w.shutdown(std::net::Shutdown::Both);
                });
                let (mut c_r, mut s_w, c) = (client, server, c.clone());
                std::thread::spawn(move || {
                    let mut line = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c_r.read(&mut buf) {
                        if n == 0 || s_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        for &b in &buf[..n] {
                            line.push(b);
                            if b == b'\n' {
                                c.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&line).trim_end().to_string()));
                                line.clear();
                            }
                        }
                    }
                    let _ = s_w.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        SlowProxy { port, relayed, commands }
    }
}

/// Large messages (about `kib` KiB each) so a transfer takes seconds
/// through the slow proxy.
fn big_messages(n: usize, kib: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut m = format!("From: big@example.org\nSubject: big {tag} {i}\n\n").into_bytes();
            for l in 0..kib * 16 {
                m.extend_from_slice(format!("{tag} {i} line {l:06} {}\n", "x".repeat(40)).as_bytes());
            }
            m
        })
        .collect()
}

#[test]
fn sigterm_mid_message_loses_and_duplicates_nothing() {
    let Some(srv) = PoboxServe::start() else { return };
    let msgs = big_messages(6, 256, "term");
    srv.deliver(&msgs);
    let proxy = SlowProxy::start(srv.pop3, 256 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("Mail");
    let config = dir.path().join("fetch.toml");
    let body = |port: u16| {
        format!(
            "state_dir = \"{}\"\n[accounts.slow]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\nallow_insecure = true\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\nmaildir = \"{}\"\npoll_interval = 1\ntimeout_secs = 20\n",
            dir.path().join("state").display(),
            maildir.display()
        )
    };
    write_private(&config, body(proxy.port)).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_pobox-fetch-dev"))
        .arg("--config")
        .arg(&config)
        .args(["--daemon", "--min-poll-interval", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.err")).unwrap())
        .spawn()
        .unwrap();
    // Inside the second message (each is ~256 KiB on the wire).
    wait_until("the download to be under way", Duration::from_secs(20), || proxy.relayed.load(Ordering::SeqCst) > 400 * 1024);
    let signalled = Instant::now();
    signal(&daemon, rustix::process::Signal::TERM);
    let err = || std::fs::read_to_string(dir.path().join("daemon.err")).unwrap_or_default();
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(30)), 0, "{}", err());
    // No RETR or DELE went out after the signal (allowing the moment it
    // takes the signal to reach the task).
    let late: Vec<String> = proxy
        .commands
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, l)| *t > signalled + Duration::from_millis(200) && (l.starts_with("RETR") || l.starts_with("DELE")))
        .map(|(_, l)| l.clone())
        .collect();
    assert!(late.is_empty(), "commands after SIGTERM: {late:?}");
    // It stopped early, and what it stored is whole and stored once.
    let stored = local_messages(&maildir);
    eprintln!("SIGTERM after {} octets: {} of {} messages stored, exit after {:?}", proxy.relayed.load(Ordering::SeqCst), stored.len(), msgs.len(), signalled.elapsed());
    assert!(!stored.is_empty() && stored.len() < msgs.len(), "stored {} of {}: {}", stored.len(), msgs.len(), err());
    for m in &stored {
        assert_eq!(msgs.iter().filter(|x| *x == m).count(), 1, "a stored message is not one of the originals (truncated?)");
    }
    assert!(err().contains("stopping"), "{}", err());
    // The next run (one-shot, direct) completes the job: each exactly once.
    write_private(&config, body(srv.pop3)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pobox-fetch-dev")).arg("--config").arg(&config).arg("--quiet").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_exactly_once(&maildir, &msgs);
    let o = Command::new(env!("CARGO_BIN_EXE_pobox-fetch-dev")).arg("--config").arg(&config).arg("--dry-run").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("would fetch 0"), "server empty: {}", show(&o));
}

#[test]
fn login_delay_is_honoured_and_failures_back_off() {
    // The server refuses a second login within 3 s (RFC 2449 LOGIN-DELAY,
    // announced in CAPA); the account asks to be polled every second.
    let srv = serve_with_config::Serve::start("[retention]\nlogin_delay_secs = 3\n", &[(USER, PASSWORD)]);
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("Mail");
    let dead_port = free_port();
    let config = dir.path().join("fetch.toml");
    write_private(
        &config,
        format!(
            "state_dir = \"{}\"\npoll_interval = 1\n[accounts.delayed]\nhost = \"localhost\"\nport = {}\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\nfingerprint = \"{}\"\nmaildir = \"{}\"\n[accounts.down]\nhost = \"127.0.0.1\"\nport = {dead_port}\nuser = \"x\"\npassword = \"y\"\nmaildir = \"{}\"\n",
            dir.path().join("state").display(),
            srv.pop3s,
            srv.pin(),
            maildir.display(),
            dir.path().join("Mail-down").display(),
        ),
    )
    .unwrap();
    let err_file = dir.path().join("daemon.err");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_pobox-fetch-dev"))
        .arg("--config")
        .arg(&config)
        .args(["--daemon", "--min-poll-interval", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let err = || std::fs::read_to_string(&err_file).unwrap_or_default();
    // Mail delivered one message at a time arrives, poll after poll, and
    // no poll runs into the server's LOGIN-DELAY.
    let mut expected = Vec::new();
    for round in 0..3 {
        let m = messages(1, &format!("delay-{round}"));
        srv.deliver(USER, &m);
        expected.extend(m);
        wait_until(&format!("the next poll; daemon said:\n{}", err()), Duration::from_secs(20), || count(&maildir) == expected.len());
    }
    // Meanwhile the unreachable account backed off: 2 s, 4 s, 8 s.
    wait_until("three failures of the unreachable account", Duration::from_secs(20), || {
        err().lines().filter(|l| l.starts_with("pobox fetch: down: ")).count() >= 3
    });
    signal(&daemon, rustix::process::Signal::TERM);
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)), 0, "{}", err());
    let text = err();
    let waits: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pobox fetch: down: "))
        .filter_map(|l| l.rsplit_once("(next try in ").map(|(_, w)| w.trim_end_matches(')')))
        .collect();
    assert_eq!(&waits[..3], ["2 s", "4 s", "8 s"], "{text}");
    assert!(!text.contains("delayed:"), "the delayed account never failed (no LOGIN-DELAY refusal): {text}");
    assert_exactly_once_clean(&maildir, &expected);
}
