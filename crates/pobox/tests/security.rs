//! Security end to end, through the real `pobox serve`:
//! - `wiring`: the failure delay, penalties, credential-cache order and the
//!   fail2ban line (SECURITY.md "Password guessing");
//! - `oauth`: the OAuth refusal matrix and JWKS reload;
//! - `oauth_remote`: the JWKS URL (rotation, kid-miss rate limit, provider
//!   down) and RFC 7662 introspection against the test's HTTPS provider;
//! - here: the privilege drop.
//!
//! Privilege drop: `pobox serve` started as root with
//! `user = "nobody"` must serve with every thread running as nobody, with
//! `no_new_privs` set, and must refuse a data dir that nobody does not own
//! or that is world-writable. Needs root: without it the tests fail
//! (`POBOX_ALLOW_SKIP=1` turns that into an explicit skip).

#![allow(unreachable_pub)]

#[path = "integration/util.rs"]
#[allow(dead_code)]
mod util;

#[path = "security/oauth.rs"]
mod oauth;
#[path = "security/oauth_remote.rs"]
mod oauth_remote;
#[path = "security/wiring.rs"]
mod wiring;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn setup(mode: u32, owner: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("users"), "alice:{PLAIN}pw\n").unwrap();
    std::fs::set_permissions(data.join("users"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(data.join("users"), Some(owner), Some(owner)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(&data, Some(owner), Some(owner)).unwrap();
    // tempdir() is 0700 root: let nobody traverse it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::write(dir.path().join("pobox.toml"), "user = \"nobody\"\nhostname = \"localhost\"\n").unwrap();
    dir
}

fn serve(dir: &tempfile::TempDir) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pobox"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(dir.path().join("pobox.toml"))
        .args(["serve", "--pop3", "127.0.0.1:0", "--pop3s", "none", "--lmtp", "none", "--smtp", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn status_field(path: &str, key: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().find_map(|l| l.strip_prefix(key)).unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn serve_runs_as_the_unprivileged_user_with_no_new_privs() {
    if !is_root() {
        return util::cannot_run("serve_runs_as_the_unprivileged_user_with_no_new_privs", "root (setuid to nobody)");
    }
    let dir = setup(0o750, NOBODY);
    let mut child = serve(&dir);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(a) = line.trim().strip_prefix("POP3 (STLS)") {
            addr = Some(a.trim().to_string());
        }
        if line.contains("running as") {
            assert!(line.contains("nobody (uid 65534)"), "{line}");
            break;
        }
        line.clear();
    }
    let addr = addr.expect("POP3 address printed");
    // It serves: log in (the passwd-file is readable by nobody only).
    let s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    w.write_all(b"USER alice\r\nPASS pw\r\n").unwrap();
    l.clear();
    r.read_line(&mut l).unwrap();
    l.clear();
    r.read_line(&mut l).unwrap();
    assert!(l.starts_with("+OK logged in"), "{l}");

    // Every thread (tokio workers and blocking pool included) runs as
    // nobody, real/effective/saved/fs ids alike, with no_new_privs.
    let pid = child.id();
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = format!("{}/status", task.unwrap().path().display());
        assert_eq!(status_field(&status, "Uid:"), "65534 65534 65534 65534", "{status}");
        assert_eq!(status_field(&status, "Gid:"), "65534 65534 65534 65534", "{status}");
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
        assert_eq!(status_field(&status, "Groups:"), "65534", "{status}");
        threads += 1;
    }
    assert!(threads > 1, "the runtime's threads were checked too");
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::TERM).unwrap();
    child.wait().unwrap();
}

fn refused(dir: &tempfile::TempDir) -> String {
    let mut child = serve(dir);
    let status = child.wait().unwrap();
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn serve_refuses_a_data_dir_it_cannot_trust() {
    if !is_root() {
        return util::cannot_run("serve_refuses_a_data_dir_it_cannot_trust", "root (chown to nobody)");
    }
    let err = refused(&setup(0o750, 0));
    assert!(err.contains("is owned by uid 0, but pobox runs as nobody"), "{err}");
    assert!(err.contains("chown -R nobody:"), "{err}");
    let err = refused(&setup(0o777, NOBODY));
    assert!(err.contains("world-writable") && err.contains("chmod o-w"), "{err}");
}
