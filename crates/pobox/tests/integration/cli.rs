//! The command line: `pobox deliver`, `pobox user`, `pobox serve` start-up
//! errors and signals.

use std::net::TcpListener;
use std::time::Duration;

use crate::util::*;

#[test]
fn deliver_exits_0_and_the_message_is_in_new_then_67_for_an_unknown_user() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let message = b"Subject: piped\n\nfrom an MTA\n";
    let out = dir.pobox().args(["deliver", "alice"]).stdin(message).assert_exit(0);
    let new = dir.files("alice", "new");
    assert_eq!(new.len(), 1, "{}", out.dump());
    assert_eq!(std::fs::read(dir.maildir("alice", "new").join(&new[0])).unwrap(), message);
    assert!(dir.files("alice", "tmp").is_empty());

    // `user+tag` is the user.
    dir.pobox().args(["deliver", "alice+tag"]).stdin(message).assert_exit(0);
    assert_eq!(dir.files("alice", "new").len(), 2);

    // EX_NOUSER, and nothing created for the unknown user.
    let out = dir.pobox().args(["deliver", "nobody"]).stdin(message).assert_exit(67);
    assert!(out.stderr().contains("nobody"), "{}", out.dump());
    assert!(!dir.data().join("mail/nobody").exists());

    // The delivered message is there for POP3.
    let srv = dir.server().start();
    let mut c = srv.login("alice", PW);
    assert_eq!(c.stat().0, 2);
    assert_eq!(unstuff(&c.cmd_multi("RETR 1")), crlf(message));
    c.quit();
}

#[test]
fn deliver_over_max_message_size_exits_69_and_stores_nothing() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let config = dir.scratch("small.toml");
    std::fs::write(&config, "max_message_size = 100\n").unwrap();
    let out = dir
        .pobox()
        .arg("--config")
        .arg(&config)
        .args(["deliver", "alice"])
        .stdin(vec![b'x'; 1000])
        .assert_exit(69);
    assert!(out.stderr().contains("100"), "{}", out.dump());
    assert!(dir.files("alice", "new").is_empty() && dir.files("alice", "tmp").is_empty());
}

#[test]
fn user_add_list_passwd_del_manage_the_passwd_file() {
    let dir = Dir::new();
    dir.pobox().args(["user", "add", "alice", "--password-stdin"]).stdin("first pw\n").assert_exit(0);
    let users = std::fs::read_to_string(dir.users_file()).unwrap();
    assert!(users.starts_with("alice:{ARGON2ID}$argon2id$"), "new passwords are ARGON2ID: {users}");
    assert!(!users.contains("first pw"));

    let out = dir.pobox().args(["user", "add", "alice", "--password-stdin"]).stdin("x\n").output();
    assert!(!out.status.success() && out.stderr().contains("already exists"), "{}", out.dump());
    let out = dir.pobox().args(["user", "add", "bob", "--password-stdin"]).stdin("\n").output();
    assert!(!out.status.success() && out.stderr().contains("empty password"), "{}", out.dump());

    dir.pobox().args(["user", "add", "bob", "--password-stdin"]).stdin("bob pw\n").assert_exit(0);
    let out = dir.pobox().args(["user", "list"]).assert_exit(0);
    assert_eq!(out.stdout(), "alice\tARGON2ID\nbob\tARGON2ID\n");

    let before = std::fs::read_to_string(dir.users_file()).unwrap();
    dir.pobox().args(["user", "passwd", "alice", "--password-stdin"]).stdin("second pw\n").assert_exit(0);
    let after = std::fs::read_to_string(dir.users_file()).unwrap();
    assert_ne!(before.lines().next(), after.lines().next(), "alice's hash changed");
    assert_eq!(before.lines().nth(1), after.lines().nth(1), "bob's line untouched");

    let out = dir.pobox().args(["user", "passwd", "nobody", "--password-stdin"]).stdin("x\n").output();
    assert!(!out.status.success() && out.stderr().contains("no such user"), "{}", out.dump());

    dir.pobox().args(["user", "del", "bob"]).assert_exit(0);
    let out = dir.pobox().args(["user", "list"]).assert_exit(0);
    assert_eq!(out.stdout(), "alice\tARGON2ID\n");
}

/// ARGON2ID end to end, and the passwd-file reloaded on change: no restart
/// for `user passwd`, `user add` or `user del`.
#[test]
fn running_server_sees_password_changes_and_new_users_without_restart() {
    let dir = Dir::new();
    dir.pobox().args(["user", "add", "alice", "--password-stdin"]).stdin("old pw\n").assert_exit(0);
    let srv = dir.server().start();
    srv.login("alice", "old pw").quit();

    dir.pobox().args(["user", "passwd", "alice", "--password-stdin"]).stdin("new pw\n").assert_exit(0);
    let mut c = srv.pop3();
    assert!(c.cmd("USER alice").starts_with("+OK"));
    let r = c.cmd("PASS old pw");
    assert!(r.starts_with("-ERR [AUTH]"), "old password still works: {r}");
    c.login("alice", "new pw");
    c.quit();

    dir.pobox().args(["user", "add", "carol", "--password-stdin"]).stdin("carol pw\n").assert_exit(0);
    srv.login("carol", "carol pw").quit();
    dir.pobox().args(["user", "del", "carol"]).assert_exit(0);
    let mut c = srv.pop3();
    assert!(c.cmd("USER carol").starts_with("+OK"));
    let r = c.cmd("PASS carol pw");
    assert!(r.starts_with("-ERR [AUTH]"), "deleted user still logs in: {r}");
}

#[test]
fn bind_failure_is_one_line_naming_the_address_and_exits_quickly() {
    let dir = Dir::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = dir
        .pobox()
        .args(["serve", "--pop3", &addr, "--pop3s", "127.0.0.1:0", "--lmtp", "127.0.0.1:0", "--smtp", "none"])
        .timeout(Duration::from_secs(20))
        .output();
    assert!(!out.status.success(), "{}", out.dump());
    assert!(out.elapsed < Duration::from_secs(10), "took {:?}", out.elapsed);
    let stderr = out.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(lines[0].contains(&addr), "names the address: {stderr}");
    assert!(lines[0].contains("--pop3"), "names the fix: {stderr}");
    assert!(!out.stdout().contains("POP3"), "nothing announced as listening: {}", out.stdout());
}

#[test]
fn bind_failure_message_states_the_os_error_once() {
    let dir = Dir::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = dir
        .pobox()
        .args(["serve", "--pop3", &addr, "--pop3s", "none", "--lmtp", "none", "--smtp", "none"])
        .timeout(Duration::from_secs(20))
        .output();
    assert!(!out.status.success());
    let stderr = out.stderr();
    assert_eq!(stderr.matches("Address already in use").count(), 1, "{stderr}");
}

#[test]
fn config_errors_name_the_key_and_stop_the_start() {
    let dir = Dir::new();
    for (text, needle) in [
        ("pop3_listen = []\n", "pop3_listen"),
        ("session_timeout_secs = 60\n", "session_timeout_secs"),
        ("mail_location = \"/srv/mail\"\n", "{user}"),
    ] {
        let config = dir.scratch("bad.toml");
        std::fs::write(&config, text).unwrap();
        let out = dir
            .pobox()
            .arg("--config")
            .arg(&config)
            .args(["serve", "--pop3", "127.0.0.1:0", "--pop3s", "127.0.0.1:0", "--lmtp", "127.0.0.1:0", "--smtp", "none"])
            .timeout(Duration::from_secs(20))
            .output();
        assert!(!out.status.success(), "{text}: {}", out.dump());
        assert!(out.stderr().contains(needle), "{text}: {}", out.dump());
    }
}

/// SIGTERM: stop accepting, let open sessions finish within the grace
/// period, then close the rest with `-ERR [SYS/TEMP]` and without UPDATE.
#[test]
fn sigterm_lets_sessions_finish_then_closes_them_with_sys_temp_and_no_update() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.add_user("bob", PW);
    dir.deliver("alice", b"Subject: a\n\nbody\n");
    dir.deliver("bob", b"Subject: b\n\nbody\n");
    let mut srv = dir.server().config("shutdown_grace_secs", "3").start();

    let mut lingering = srv.login("alice", PW);
    assert!(lingering.cmd("DELE 1").starts_with("+OK"));
    let mut finishing = srv.login("bob", PW);
    assert!(finishing.cmd("DELE 1").starts_with("+OK"));

    let terminated = std::time::Instant::now();
    srv.sigterm();
    // Within the grace period the session still works, and a QUIT still
    // gets its UPDATE.
    assert!(lingering.cmd("NOOP").starts_with("+OK"));
    finishing.quit();
    assert!(dir.message_files("bob").is_empty(), "bob's QUIT during the grace period deleted");
    assert!(
        eventually(Duration::from_secs(2), || std::net::TcpStream::connect(("127.0.0.1", srv.pop3)).is_err()),
        "still accepting connections after SIGTERM"
    );

    let r = lingering.line();
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    // A lower bound only (robust on a slow machine): not before the grace.
    assert!(terminated.elapsed() >= Duration::from_millis(2500), "closed after {:?}", terminated.elapsed());
    let rest = lingering.read_until_closed();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    let status = srv.wait(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", srv.dump());
    assert_eq!(dir.message_files("alice").len(), 1, "DELE without UPDATE deleted nothing");
    assert!(
        eventually(Duration::from_secs(5), || srv.stdout().contains("pobox stopped")),
        "{}",
        srv.dump()
    );
}

/// Once `pobox serve` has printed where it listens it is ready, and a
/// SIGTERM from then on is a graceful shutdown (exit 0, "pobox stopped"),
/// as a supervisor stopping a just-started service expects.
#[test]
fn sigterm_right_after_the_banner_shuts_down_gracefully() {
    let dir = Dir::new();
    let mut killed = Vec::new();
    for round in 0..10 {
        let mut srv = dir.server().start();
        srv.sigterm_now();
        let status = srv.wait(Duration::from_secs(15));
        let stopped = eventually(Duration::from_secs(5), || srv.stdout().contains("pobox stopped"));
        if !status.success() || !stopped {
            killed.push(format!("round {round}: {status:?}"));
        }
    }
    assert!(killed.is_empty(), "{killed:#?}");
}
