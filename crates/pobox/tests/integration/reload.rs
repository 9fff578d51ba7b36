//! SIGHUP reloads the configuration (issue 12, item 4): new sessions get
//! the new users, retention (CAPA EXPIRE) and listeners; open sessions keep
//! theirs; an invalid file changes nothing and the log says why.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

fn sighup(pid: rustix::process::Pid) {
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("kill -HUP");
}

/// A port nobody listens on right now, for a listener the config adds.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn capa(c: &mut Pop3) -> Vec<String> {
    c.cmd_lines("CAPA")
}

/// The log holds `needle` `count` times or more within 10 s (each reload
/// logs its outcome once).
fn logged(server: &Server<'_>, needle: &str, count: usize) -> bool {
    eventually(Duration::from_secs(10), || server.stderr().matches(needle).count() >= count)
}

#[test]
fn sighup_applies_users_retention_and_listeners_to_new_sessions_and_keeps_the_old_on_error() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", b"Subject: one\n\nbody\n");
    let users = dir.users_file();
    let server = dir
        .server()
        .listeners_in_config()
        .config("passwd_file", &format!("{:?}", users.display().to_string()))
        .config("retention", "{ retrieved_days = 3, expire_interval_secs = 0 }")
        .start();
    let config_path = dir.scratch("pobox.toml");
    let mut before = server.login("alice", PW);
    assert!(capa(&mut before).contains(&"EXPIRE 3".to_string()), "{:?}", capa(&mut before));

    // bob (and carol) in a new passwd-file, EXPIRE 0, and a second POP3
    // address.
    let bobs = dir.data().join("users-bob");
    std::fs::write(&bobs, format!("bob:{{PLAIN}}{PW}\ncarol:{{PLAIN}}{PW}\n")).unwrap();
    let extra = free_port();
    let original = std::fs::read_to_string(&config_path).unwrap();
    let reloaded = original
        .replace(&format!("{:?}", users.display().to_string()), &format!("{:?}", bobs.display().to_string()))
        .replace("retrieved_days = 3", "retrieved_days = 0")
        .replace("pop3 = [\"127.0.0.1:0\"]", &format!("pop3 = [\"127.0.0.1:0\", \"127.0.0.1:{extra}\"]"));
    assert_ne!(reloaded, original);
    std::fs::write(&config_path, &reloaded).unwrap();
    sighup(server.pid());
    assert!(logged(&server, "configuration reloaded", 1), "{}", server.dump());

    let mut fresh = server.pop3();
    assert!(capa(&mut fresh).contains(&"EXPIRE 0".to_string()), "{:?}", capa(&mut fresh));
    fresh.login("bob", PW);
    assert!(capa(&mut fresh).contains(&"EXPIRE 0".to_string()));
    fresh.quit();
    let mut gone = server.pop3();
    assert!(gone.cmd("USER alice").starts_with("+OK"));
    assert!(gone.cmd(&format!("PASS {PW}")).starts_with("-ERR"), "alice is no longer in the passwd-file");
    // The session from before the reload goes on with what it started with.
    assert_eq!(before.stat().0, 1);
    assert!(capa(&mut before).contains(&"EXPIRE 3".to_string()));
    before.quit();
    // The added listener accepts.
    let mut added = Pop3::connect(extra);
    added.login("bob", PW);
    assert!(capa(&mut added).contains(&"EXPIRE 0".to_string()));

    // An unknown key: nothing changes, and the log names the key.
    std::fs::write(&config_path, format!("{reloaded}bogus_key = 1\n")).unwrap();
    sighup(server.pid());
    assert!(logged(&server, "configuration reload failed", 1), "{}", server.dump());
    let log = server.stderr();
    let line = log.lines().find(|l| l.contains("configuration reload failed")).unwrap();
    assert!(line.contains("bogus_key") && line.contains("still running on the previous configuration"), "{line}");
    let mut still = server.pop3();
    assert!(capa(&mut still).contains(&"EXPIRE 0".to_string()));
    still.login("carol", PW);
    still.quit();
    assert!(server.stderr().matches("configuration reloaded").count() == 1, "{}", server.dump());

    // The extra address removed again: it stops accepting, while the
    // session it accepted goes on.
    let without_extra = original
        .replace(&format!("{:?}", users.display().to_string()), &format!("{:?}", bobs.display().to_string()));
    std::fs::write(&config_path, without_extra).unwrap();
    sighup(server.pid());
    assert!(logged(&server, "configuration reloaded", 2), "{}", server.dump());
    assert!(logged(&server, "listener removed", 1), "{}", server.dump());
    assert!(std::net::TcpStream::connect(("127.0.0.1", extra)).is_err(), "the removed listener still accepts");
    assert_eq!(added.stat().0, 0);
    added.quit();
    let mut fresh = server.pop3();
    assert!(capa(&mut fresh).contains(&"EXPIRE 3".to_string()));
    fresh.login("carol", PW);
    fresh.quit();
}

#[test]
fn sighup_without_tls_reloads_instead_of_killing_the_server() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let config = dir.scratch("lmtp-only.toml");
    let text = "pop3 = []\npop3s = []\nsmtp = []\nlmtp = [\"127.0.0.1:0\"]\n";
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(BIN)
        .env_remove("POBOX_DATA")
        .env("POBOX_LOG", "info")
        .arg("--data")
        .arg(dir.data())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pobox serve");
    let pid = rustix::process::Pid::from_child(&child);
    // The guard kills the server whatever the test does.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let mut child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (etx, erx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let port: u16 = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("LMTP address printed");
        if let Some(addr) = line.trim().strip_prefix("LMTP") {
            break addr.trim().rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Wait for the banner's end, so the SIGHUP handler is installed.
    while !rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("banner").contains("open files") {}
    std::fs::write(&config, format!("{text}lmtp_max_recipients = 1\n")).unwrap();
    sighup(pid);
    let mut seen = Vec::new();
    loop {
        let line = erx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let line = line.unwrap_or_else(|_| panic!("no reload logged: {seen:?}"));
        if line.contains("configuration reloaded") {
            break;
        }
        seen.push(line);
    }
    assert!(child.0.try_wait().unwrap().is_none(), "SIGHUP ended the server");
    // And the new limit is in force for a new LMTP session.
    let mut lmtp = Lmtp::connect(port);
    assert!(lmtp.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(lmtp.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    let second = lmtp.cmd("RCPT TO:<alice@example.org>");
    assert!(second.starts_with("452"), "lmtp_max_recipients = 1 applies: {second}");
}

/// After the switch to an unprivileged user a port below 1024 cannot be
/// bound: the reload still applies, and the listener is named as needing a
/// restart.
#[test]
fn a_port_below_1024_added_after_the_privilege_drop_is_named_as_needing_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let test = "a_port_below_1024_added_after_the_privilege_drop_is_named_as_needing_a_restart";
    if !rustix::process::geteuid().is_root() {
        cannot_run(test, "root (it switches to the `nobody` user)");
        return;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let Some(nobody) = passwd.lines().find_map(|l| l.strip_prefix("nobody:")) else {
        cannot_run(test, "a `nobody` user");
        return;
    };
    let ids: Vec<u32> = nobody.split(':').skip(1).take(2).map(|n| n.parse().unwrap()).collect();
    let dir = Dir::new();
    // The service user must get through the temp dir and own the data dir.
    let top = dir.data().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir.data(), Some(ids[0]), Some(ids[1])).unwrap();
    dir.add_user("alice", PW);
    let low = (900..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let server = dir.server().listeners_in_config().config("user", "\"nobody\"").start();
    assert!(eventually(Duration::from_secs(10), || server.stdout().contains("running as   nobody")), "{}", server.dump());
    let config_path = dir.scratch("pobox.toml");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("pop3 = [\"127.0.0.1:0\"]", &format!("pop3 = [\"127.0.0.1:0\", \"127.0.0.1:{low}\"]"));
    std::fs::write(&config_path, text).unwrap();
    sighup(server.pid());
    assert!(logged(&server, "configuration reloaded", 1), "{}", server.dump());
    assert!(logged(&server, "only after a restart", 1), "{}", server.dump());
    let log = server.stderr();
    let line = log.lines().find(|l| l.contains("only after a restart")).unwrap();
    assert!(line.contains(&format!("pop3 listener 127.0.0.1:{low}")), "{line}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", low)).is_err());
    // The rest of the reload applies; the server serves on.
    server.login("alice", PW).quit();
}

/// Under systemd: RELOADING=1 with MONOTONIC_USEC, then READY=1 again; the
/// sockets systemd passed stay (the config's addresses of those protocols
/// are ignored, as at startup).
#[test]
fn sighup_under_socket_activation_notifies_reloading_then_ready_and_keeps_the_passed_sockets() {
    require_tool("systemd-socket-activate");
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let notify_path = dir.scratch("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (pop3, ignored) = (free_port(), free_port());
    let config = dir.scratch("activated.toml");
    let text = format!("pop3 = [\"127.0.0.1:{ignored}\"]\npop3s = []\nsmtp = []\nlmtp = []\nauth_failure_delay_ms = 0\n");
    std::fs::write(&config, &text).unwrap();
    let child = Command::new("systemd-socket-activate")
        .arg(format!("--listen=127.0.0.1:{pop3}"))
        .arg("--fdname=pop3")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg("--")
        .arg(BIN)
        .arg("--data")
        .arg(dir.data())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(child);
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.0.id()).unwrap()).unwrap();
    // systemd-socket-activate starts pobox on the first connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        match std::net::TcpStream::connect(("127.0.0.1", pop3)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("activated socket: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let recv = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(recv().contains("READY=1"));
    drop(first);
    std::fs::write(&config, text.replace("auth_failure_delay_ms = 0", "auth_failure_delay_ms = 1")).unwrap();
    sighup(pid);
    let reloading = recv();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    let usec = reloading.lines().find_map(|l| l.strip_prefix("MONOTONIC_USEC=")).expect("MONOTONIC_USEC");
    assert!(usec.parse::<u64>().unwrap() > 0, "{reloading}");
    assert!(recv().contains("READY=1"), "READY after the reload");
    // The passed socket still serves; the configured address was not bound.
    let mut s = Pop3::connect(pop3);
    s.login("alice", PW);
    s.quit();
    assert!(std::net::TcpStream::connect(("127.0.0.1", ignored)).is_err());
}
