//! Running pobox as a service: one server per data dir, the LMTP unix
//! socket's permissions (what Postfix needs to connect).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn a_second_serve_on_the_same_data_dir_refuses_and_names_the_running_pid() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let first = dir.server().start();
    let pid = first.pid().as_raw_nonzero().get();
    let out = dir
        .pobox()
        .args(["serve", "--pop3", "127.0.0.1:0", "--pop3s", "none", "--lmtp", "none", "--smtp", "none"])
        .timeout(Duration::from_secs(20))
        .output();
    assert!(!out.status.success(), "the second server must not start\n{}", out.dump());
    let stderr = out.stderr();
    assert!(stderr.contains(&format!("PID {pid}")), "names the running one: {stderr}");
    assert!(stderr.contains(&dir.data().display().to_string()), "names the data dir: {stderr}");
    assert!(!out.stdout().contains("POP3"), "nothing announced as listening: {}", out.stdout());
    // The first one is untouched.
    first.login("alice", PW).quit();
    // Once it stops, the data dir is free again.
    first.stop();
    let again = dir.server().start();
    again.login("alice", PW).quit();
}

#[test]
fn lmtp_unix_socket_gets_its_directory_mode_and_group() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    // A parent that does not exist yet, as /run/pobox after a reboot.
    let sock = dir.scratch("run/pobox/lmtp");
    let config = dir.scratch("sock.toml");
    let root = rustix::process::geteuid().is_root();
    // As root, hand the socket to a group that exists on every Debian
    // system; otherwise only the mode can be set.
    let group = if root { "group = \"nogroup\"\n" } else { "" };
    std::fs::write(&config, format!("[lmtp_socket]\nmode = \"0666\"\n{group}")).unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("--data")
        .arg(dir.data())
        .arg("--config")
        .arg(&config)
        .args(["serve", "--pop3", "none", "--pop3s", "none", "--smtp", "none", "--lmtp"])
        .arg(format!("unix:{}", sock.display()))
        .env("POBOX_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let meta = std::fs::symlink_metadata(&sock);
    let reply = std::os::unix::net::UnixStream::connect(&sock).map(|mut s| {
        use std::io::Read;
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap(),
        rustix::process::Signal::KILL,
    );
    let _ = child.wait();
    let meta = meta.expect("the socket and its parent directory were created");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    if root {
        let nogroup = std::fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("nogroup:").and_then(|r| r.split(':').nth(1)).map(|g| g.parse::<u32>().unwrap()))
            .expect("nogroup in /etc/group");
        assert_eq!(meta.gid(), nogroup);
    }
    assert!(reply.expect("connectable").starts_with("220 "), "LMTP greets on the socket");
}

#[test]
fn lmtp_socket_with_an_unknown_group_is_a_start_error_naming_it() {
    let dir = Dir::new();
    let config = dir.scratch("sock.toml");
    std::fs::write(&config, "[lmtp_socket]\ngroup = \"no-such-group-x\"\n").unwrap();
    let sock = dir.scratch("lmtp.sock");
    let out = dir
        .pobox()
        .arg("--config")
        .arg(&config)
        .args(["serve", "--pop3", "none", "--pop3s", "none", "--smtp", "none", "--lmtp"])
        .arg(format!("unix:{}", sock.display()))
        .timeout(Duration::from_secs(20))
        .output();
    assert!(!out.status.success(), "{}", out.dump());
    assert!(out.stderr().contains("no-such-group-x"), "{}", out.dump());
}

/// `pobox mailbox purge`: looks first with --dry-run, never acts without a
/// confirmation (none is possible without a terminal: --yes), and says
/// whether what it removed can be restored.
#[test]
fn purge_has_a_dry_run_needs_yes_without_a_terminal_and_says_whether_it_is_final() {
    let dir = Dir::new();
    dir.add_user("carol", PW);
    dir.deliver("carol", b"Subject: one\n\nbody\n");
    dir.deliver("carol", b"Subject: two\n\nbody\n");
    let purge = |extra: &[&str]| {
        let mut c = dir.pobox();
        c.args(["mailbox", "purge", "carol"]).args(extra.iter().copied());
        c.output()
    };

    let out = purge(&["--dry-run"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(out.stdout().contains("would remove 2 message(s)"), "{}", out.dump());
    assert!(out.stdout().contains("cannot be undone"), "restore_days is 0 by default: {}", out.dump());
    assert_eq!(dir.message_files("carol").len(), 2, "a dry run changes nothing");

    // stdin is a pipe here, as in a script: no one to ask, so no.
    let out = purge(&[]);
    assert!(!out.status.success(), "{}", out.dump());
    assert!(out.stderr().contains("--yes"), "names the flag: {}", out.dump());
    assert_eq!(dir.message_files("carol").len(), 2, "nothing removed without a confirmation");

    let out = purge(&["--yes"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(out.stdout().contains("removed 2 message(s) of carol, for good"), "{}", out.dump());
    assert!(dir.message_files("carol").is_empty());
}

#[test]
fn purge_with_a_restore_window_from_the_config_says_how_to_restore_and_restore_works() {
    let dir = Dir::new();
    dir.add_user("carol", PW);
    dir.deliver("carol", b"Subject: one\n\nbody\n");
    let config = dir.scratch("retention.toml");
    // The data dir comes from the config's `data_dir` here (no --data), as
    // on an installed system with /etc/pobox/pobox.toml.
    std::fs::write(&config, format!("data_dir = {:?}\n[retention]\nrestore_days = 3\n", dir.data().display().to_string()))
        .unwrap();
    let mut c = TestCommand::new(BIN);
    c.arg("--config").arg(&config).args(["mailbox", "purge", "carol", "--yes"]);
    let out = c.output();
    assert!(out.status.success(), "{}", out.dump());
    assert!(out.stdout().contains("restorable for 3 days"), "{}", out.dump());
    assert!(dir.message_files("carol").is_empty());
    let mut c = TestCommand::new(BIN);
    c.arg("--config").arg(&config).args(["mailbox", "restore", "carol"]);
    let out = c.output();
    assert!(out.stdout().contains("restored 1 message(s)"), "{}", out.dump());
    assert_eq!(dir.message_files("carol").len(), 1);
}

/// Root is needed to switch users; CI runs as root. Elsewhere the test
/// fails unless POBOX_ALLOW_SKIP=1 says skipping is fine.
fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    // The one skip rule (util::cannot_run): fail, unless POBOX_ALLOW_SKIP=1.
    crate::util::cannot_run(test, "root (it switches to the `nobody` user)");
    false
}

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn owner(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().uid()
}

/// The privilege model walked as an admin would: `user add`, `deliver` and
/// `mailbox` run as root next to a server that drops to `nobody`. Nothing
/// the root commands create may be root-owned, so logins and LMTP keep
/// working; an unreadable path makes `serve` and `check` fail naming it.
#[test]
fn root_admin_commands_act_as_the_service_user_and_serve_checks_its_access() {
    if !require_root("root_admin_commands_act_as_the_service_user_and_serve_checks_its_access") {
        return;
    }
    let nobody = nix_uid("nobody");
    let dir = Dir::new();
    // The temp dir is created 0700; the service user must get through it.
    let top = dir.data().parent().unwrap().to_path_buf();
    chmod(&top, 0o755);
    std::fs::remove_dir(dir.data()).unwrap();
    // The config where `nobody` can read it (like /etc/pobox/pobox.toml).
    let etc = tempfile::Builder::new().prefix("pobox-etc-").tempdir().unwrap();
    chmod(etc.path(), 0o755);
    let config = etc.path().join("pobox.toml");
    std::fs::write(&config, "user = \"nobody\"\nauth_failure_delay_ms = 0\n").unwrap();
    let admin = |args: &[&str], stdin: &[u8]| {
        let mut c = TestCommand::new(BIN);
        c.arg("--data").arg(dir.data()).arg("--config").arg(&config).args(args.iter().copied()).stdin(stdin);
        c.output()
    };

    // 1. user add as root: the data dir is created for the service user.
    let out = admin(&["user", "add", "alice", "--password-stdin"], format!("{PW}\n").as_bytes());
    assert!(out.status.success(), "{}", out.dump());
    assert_eq!(owner(dir.data()), nobody, "data dir made for the service user");
    assert_eq!(owner(&dir.users_file()), nobody, "passwd-file not root-owned");

    // 2. deliver and mailbox commands as root, before the server ever ran.
    let out = admin(&["deliver", "alice"], b"Subject: first\n\nfrom root's deliver\n");
    assert!(out.status.success(), "{}", out.dump());
    assert_eq!(owner(&dir.data().join("mail")), nobody, "mail/ is not root-owned");
    assert_eq!(owner(&dir.maildir("alice", "new")), nobody);
    let out = admin(&["mailbox", "show", "alice"], b"");
    assert!(out.stdout().contains("first"), "{}", out.dump());

    // 3. serve drops to nobody; POP3 and LMTP work with what root made.
    let server = dir.server().config("user", "\"nobody\"").start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stdout().contains("running as") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.stdout().contains("running as   nobody"), "{}", server.dump());
    let mut lmtp = server.lmtp();
    assert!(lmtp.cmd("MAIL FROM:<bob@example.org>").starts_with("250"));
    assert!(lmtp.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(lmtp.cmd("DATA").starts_with("354"));
    assert!(lmtp.cmd("Subject: second\r\n\r\nby LMTP\r\n.").starts_with("250"), "LMTP delivery as nobody");
    let out = admin(&["deliver", "alice"], b"Subject: third\n\nroot again, server running\n");
    assert!(out.status.success(), "{}", out.dump());
    let mut pop = server.login("alice", PW);
    assert_eq!(pop.stat().0, 3, "all three messages reachable over POP3");
    pop.quit();
    drop(server);

    // 4. A path the service user cannot read: serve and check name it.
    chmod(&top, 0o700);
    let out = dir
        .pobox()
        .arg("--config")
        .arg(&config)
        .args(["serve", "--pop3", "127.0.0.1:0", "--pop3s", "none", "--lmtp", "none", "--smtp", "none"])
        .timeout(Duration::from_secs(20))
        .output();
    assert!(!out.status.success(), "serve must refuse\n{}", out.dump());
    assert!(out.stderr().contains("nobody cannot read"), "{}", out.dump());
    assert!(out.stderr().contains(&dir.users_file().display().to_string()), "names the path: {}", out.dump());
    assert!(!out.stdout().contains("POP3"), "no banner before the refusal: {}", out.dump());
    let out = admin(&["check"], b"");
    assert!(!out.status.success(), "check must fail\n{}", out.dump());
    assert!(out.stdout().contains(&dir.users_file().display().to_string()), "check names the path: {}", out.dump());
    chmod(&top, 0o755);
}

fn nix_uid(name: &str) -> u32 {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then_some(())?;
            f.nth(1)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("user {name} missing from /etc/passwd"))
}

#[test]
fn check_fails_on_a_missing_passwd_file_or_a_global_sieve_script_that_is_missing_or_broken_and_serve_refuses_the_typo() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    chmod(&dir.users_file(), 0o600);
    let check = |config: &str| {
        let path = dir.scratch("check.toml");
        std::fs::write(&path, config).unwrap();
        let mut c = dir.pobox();
        c.arg("--config").arg(&path).arg("check");
        c.output()
    };
    let out = check("");
    assert!(out.status.success(), "the defaults pass: {}", out.dump());

    let out = check("passwd_file = \"/nonexistent/users\"\n");
    assert!(!out.status.success(), "{}", out.dump());
    assert!(out.stdout().contains("error    passwd-file /nonexistent/users"), "{}", out.dump());

    let out = check("[sieve]\nbefore = [\"missing.sieve\"]\n");
    assert!(!out.status.success(), "{}", out.dump());
    assert!(out.stdout().contains("missing.sieve"), "{}", out.dump());

    std::fs::write(dir.data().join("broken.sieve"), "require \"fileinto\";\nif header :contains \"subject\" { keep; }\n").unwrap();
    let out = check("[sieve]\nafter = [\"broken.sieve\"]\n");
    assert!(!out.status.success(), "{}", out.dump());
    assert!(out.stdout().contains("broken.sieve:2"), "names the line: {}", out.dump());

    std::fs::write(dir.data().join("good.sieve"), "require \"fileinto\";\nif header :contains \"subject\" \"x\" { fileinto \"X\"; }\n").unwrap();
    let out = check("[sieve]\nbefore = [\"good.sieve\"]\n");
    assert!(out.status.success(), "{}", out.dump());
    assert!(out.stdout().contains("good.sieve compiles"), "{}", out.dump());

    let config = dir.scratch("typo.toml");
    std::fs::write(&config, "passwd_file = \"/nonexistent/users\"\n").unwrap();
    let out = dir
        .pobox()
        .arg("--config")
        .arg(&config)
        .args(["serve", "--pop3", "127.0.0.1:0", "--pop3s", "none", "--lmtp", "none", "--smtp", "none"])
        .timeout(Duration::from_secs(20))
        .output();
    assert!(!out.status.success(), "{}", out.dump());
    assert!(out.stderr().contains("/nonexistent/users"), "{}", out.dump());
}

/// The shipped unit files, with ExecStart pointing at the binary under
/// test, pass `systemd-analyze verify` (Debian's `systemd` package).
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    require_tool("systemd-analyze");
    let dir = Dir::new();
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/systemd");
    for unit in ["pobox.service", "pobox.socket"] {
        let text = std::fs::read_to_string(format!("{units}/{unit}")).unwrap().replace("/usr/bin/pobox", BIN);
        std::fs::write(dir.scratch(unit), text).unwrap();
    }
    let mut c = TestCommand::new("systemd-analyze");
    c.args(["verify", "--man=no"]).arg(dir.scratch("pobox.service")).arg(dir.scratch("pobox.socket"));
    let out = c.output();
    assert!(out.status.success(), "{}", out.dump());
    assert!(out.stderr().trim().is_empty(), "no warnings: {}", out.dump());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Socket activation as systemd does it, with `systemd-socket-activate`:
/// the POP3 and LMTP sockets are bound by it and passed by name; pobox
/// serves on them, tells NOTIFY_SOCKET it is ready, and stopping.
#[test]
fn socket_activation_serves_pop3_and_lmtp_and_notifies_readiness() {
    require_tool("systemd-socket-activate");
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", b"Subject: hi\n\nactivated\n");
    let notify_path = dir.scratch("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (pop3, lmtp) = (free_port(), free_port());
    let mut child = std::process::Command::new("systemd-socket-activate")
        .arg(format!("--listen=127.0.0.1:{pop3}"))
        .arg(format!("--listen=127.0.0.1:{lmtp}"))
        .arg("--fdname=pop3:lmtp")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg("--setenv=POBOX_CONFIG=none")
        .arg("--")
        .arg(BIN)
        .arg("--data")
        .arg(dir.data())
        // The activated protocols need no flag; the others are off.
        .args(["serve", "--pop3s", "none", "--smtp", "none"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    // systemd-socket-activate starts pobox on the first connection.
    let mut lmtp_conn = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while lmtp_conn.is_none() && Instant::now() < deadline {
        match std::net::TcpStream::connect(("127.0.0.1", lmtp)) {
            Ok(s) => lmtp_conn = Some(s),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let result = std::panic::catch_unwind(|| {
        let mut ready = [0u8; 256];
        let n = notify.recv(&mut ready).expect("a READY notification");
        assert!(String::from_utf8_lossy(&ready[..n]).contains("READY=1"), "{:?}", String::from_utf8_lossy(&ready[..n]));
        {
            use std::io::{BufRead, BufReader};
            let conn = lmtp_conn.expect("LMTP socket accepts");
            conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            assert!(line.starts_with("220 "), "LMTP greeting on the activated socket: {line:?}");
        }
        // The activated POP3 socket: a real login sees the message.
        let server_pop3 = Pop3::connect(pop3);
        let mut s = server_pop3;
        s.login("alice", PW);
        assert_eq!(s.stat().0, 1);
        s.quit();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let mut stopping = [0u8; 256];
        let n = notify.recv(&mut stopping).expect("a STOPPING notification");
        assert!(String::from_utf8_lossy(&stopping[..n]).contains("STOPPING=1"));
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// No password or SASL payload reaches the log, at the most verbose level,
/// in either format; and `log_format = "json"` writes one JSON object per
/// line.
#[test]
fn no_secret_in_the_logs_at_trace_level_in_text_or_json() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let plain = b64("\0alice\0Pw-Plain-5521");
    let login_pw = b64("Pw-Login-6643");
    let secrets = ["Pw-Right-7781", "Pw-Wrong-3319", "Pw-Plain-5521", plain.as_str(), "Pw-Login-6643", login_pw.as_str()];
    for format in ["text", "json"] {
        let dir = Dir::new();
        dir.add_user("alice", "Pw-Right-7781");
        let mut server = dir.server().config("log_format", &format!("{format:?}")).log("trace").start();
        let mut s = server.pop3();
        s.cmd("USER alice");
        assert!(s.cmd("PASS Pw-Wrong-3319").starts_with("-ERR"));
        let mut s = server.pop3();
        assert!(s.cmd(&format!("AUTH PLAIN {plain}")).starts_with("-ERR"));
        let mut s = server.pop3();
        s.cmd("AUTH LOGIN");
        s.cmd(&b64("alice"));
        assert!(s.cmd(&login_pw).starts_with("-ERR"));
        let mut s = server.pop3();
        s.cmd("USER alice");
        assert!(s.cmd("PASS Pw-Right-7781").starts_with("+OK"));
        s.quit();
        server.sigterm();
        server.wait(Duration::from_secs(20));
        let log = server.stderr();
        assert!(log.contains("DEBUG") && log.contains("PASS"), "{format}: debug logging of commands is on: {log}");
        assert!(log.matches("authentication failed").count() >= 3, "{format}: the failures are logged: {log}");
        // The per-session summary lines are covered too: the failed
        // connections' short ones and the logged-in session's.
        assert!(log.matches("pop3 connection ended without login").count() >= 3, "{format}: {log}");
        assert!(log.contains("pop3 session ended") && log.contains("uidl_hash"), "{format}: {log}");
        for secret in secrets {
            assert!(!log.contains(secret), "{format}: {secret:?} leaked into the log:\n{log}");
        }
        if format == "json" {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v.get("timestamp").is_some() && v.get("level").is_some(), "{line}");
            }
        }
    }
}

/// An MTA piping to `pobox deliver` must never see a plain failure (1,
/// a bounce for most MTAs) for a configuration problem: EX_CONFIG (78),
/// which Postfix and Exim treat as "try again later".
#[test]
fn deliver_with_a_broken_config_exits_ex_config_even_before_it_reads_the_message() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let config = dir.scratch("broken.toml");
    std::fs::write(&config, "no_such_key = 1\n").unwrap();
    let mut c = TestCommand::new(BIN);
    c.arg("--config").arg(&config).args(["deliver", "alice"]).stdin(b"Subject: x\n\nbody\n".as_slice());
    let out = c.output();
    assert_eq!(out.status.code(), Some(78), "{}", out.dump());
    assert!(out.stderr().contains("no_such_key"), "{}", out.dump());
    assert!(dir.message_files("alice").is_empty());
}
