//! Retention through the real binary: EXPIRE as advertised and as enforced,
//! LOGIN-DELAY, the restore window, and a leave-on-server client (mpop)
//! that must not download restored mail twice.
//!
//! Time is controlled without touching the clock: `pobox mailbox expire
//! --at +Nd` judges the maildrop as it will be N days from now (the pure
//! policy function is tested with arbitrary clocks in pobox-store).

use crate::util::*;

const ALICE_MSG: &[u8] = b"From: bob@example.org\nSubject: one\n\nfirst\n";
const ALICE_MSG2: &[u8] = b"From: bob@example.org\nSubject: two\n\nsecond\n";

fn retention(value: &str) -> (&'static str, String) {
    ("retention", value.to_string())
}

#[test]
fn expire_zero_removes_retrieved_mail_at_quit_even_without_dele() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", ALICE_MSG);
    dir.deliver("alice", ALICE_MSG2);
    let (k, v) = retention("{ retrieved_days = 0 }");
    let server = dir.server().config(k, &v).start();
    let mut c = server.login("alice", PW);
    assert!(c.cmd_lines("CAPA").contains(&"EXPIRE 0".to_string()));
    let first = c.uidl()[0].1.clone();
    c.cmd_multi("RETR 1");
    c.quit();
    let mut c = server.login("alice", PW);
    let left = c.uidl();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0].1, first, "the retrieved message is gone, the other stays");
    c.quit();
}

/// Issue 17, finding 3: this test used to assert the opposite (that the
/// retrieval was recorded at the lost connection and the message expired at
/// the next login). RFC 1939 §6 removes nothing without UPDATE, and EXPIRE 0
/// removes at UPDATE too, so a session without QUIT changes nothing.
#[test]
fn expire_zero_changes_nothing_when_the_session_ends_without_quit() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", ALICE_MSG);
    dir.deliver("alice", ALICE_MSG2);
    let (k, v) = retention("{ retrieved_days = 0 }");
    let server = dir.server().config(k, &v).start();
    let mut c = server.login("alice", PW);
    c.cmd_multi("RETR 2");
    drop(c); // connection lost: no UPDATE, so nothing is recorded or removed
    let mut c = server.login_after_close("alice", PW);
    assert_eq!(c.stat().0, 2, "the message retrieved by the lost session is still there");
    c.quit();
}

#[test]
fn expire_three_days_keeps_mail_on_day_two_and_removes_it_after_day_three() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", ALICE_MSG);
    let (k, v) = retention("{ retrieved_days = 3 }");
    let server = dir.server().config(k, &v).start();
    let mut c = server.login("alice", PW);
    assert!(c.cmd_lines("CAPA").contains(&"EXPIRE 3".to_string()));
    let uid = c.uidl()[0].1.clone();
    c.cmd_multi("RETR 1");
    c.quit();

    let config = dir.scratch("pobox.toml");
    let day2 = dir.pobox().arg("--config").arg(&config).args(["mailbox", "expire", "--at", "+2d"]).assert_exit(0);
    assert!(day2.stdout().contains("alice: expired 0"), "{}", day2.dump());
    let mut c = server.login("alice", PW);
    assert_eq!(c.uidl(), vec![(1, uid.clone())], "still there on day 2");
    c.quit();

    let day3 = dir
        .pobox()
        .arg("--config")
        .arg(&config)
        .args(["mailbox", "expire", "--at", "+73h"])
        .assert_exit(0);
    assert!(day3.stdout().contains(&uid), "{}", day3.dump());
    let mut c = server.login("alice", PW);
    assert_eq!(c.stat().0, 0, "gone after day 3");
    c.quit();
}

#[test]
fn capa_expire_and_login_delay_follow_per_user_policies() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.add_user("bob", PW);
    let (k, v) = retention("{ retrieved_days = 5, users = { bob = { retrieved_days = 0, login_delay_secs = 3600 } } }");
    let server = dir.server().config(k, &v).start();
    let mut c = server.pop3();
    let capa = c.cmd_lines("CAPA");
    assert!(capa.contains(&"EXPIRE 0 USER".to_string()), "{capa:?}");
    assert!(capa.contains(&"LOGIN-DELAY 0 USER".to_string()), "{capa:?}");
    c.login("alice", PW);
    let capa = c.cmd_lines("CAPA");
    assert!(capa.contains(&"EXPIRE 5".to_string()), "{capa:?}");
    c.quit();

    let mut c = server.login("bob", PW);
    let capa = c.cmd_lines("CAPA");
    assert!(capa.contains(&"EXPIRE 0".to_string()) && capa.contains(&"LOGIN-DELAY 3600".to_string()), "{capa:?}");
    c.quit();
    let mut c = server.pop3();
    assert!(c.cmd("USER bob").starts_with("+OK"));
    let r = c.cmd(&format!("PASS {PW}"));
    assert!(r.starts_with("-ERR [LOGIN-DELAY]"), "{r}");
}

#[test]
fn restored_mail_keeps_its_uidl_and_mpop_in_keep_mode_does_not_fetch_it_again() {
    require_tool("mpop");
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", ALICE_MSG);
    dir.deliver("alice", ALICE_MSG2);
    let (k, v) = retention("{ restore_days = 7 }");
    let server = dir.server().config(k, &v).start();
    let local = dir.scratch("local");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(local.join(sub)).unwrap();
    }
    let uidls_file = dir.scratch("mpop-uidls");
    let mpop = || {
        let mut cmd = TestCommand::tool("mpop");
        cmd.args(["--host=127.0.0.1", "--tls=off", "--auth=user", "--user=alice", "--keep=on", "--quiet"])
            .arg(format!("--port={}", server.pop3))
            .arg(format!("--passwordeval=echo '{PW}'"))
            .arg(format!("--uidls-file={}", uidls_file.display()))
            .arg(format!("--delivery=maildir,{}", local.display()));
        cmd
    };
    let count = |d: &std::path::Path| std::fs::read_dir(d.join("new")).unwrap().count();
    mpop().assert_exit(0);
    assert_eq!(count(&local), 2, "mpop fetched both messages");

    // Another device deletes message 1; it goes to the restore area.
    let mut c = server.login("alice", PW);
    let before = c.uidl();
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    c.quit();
    let restored = dir.pobox().arg("--config").arg(dir.scratch("pobox.toml")).args(["mailbox", "restore", "alice"]).assert_exit(0);
    assert!(restored.stdout().contains("restored 1"), "{}", restored.dump());
    let mut c = server.login("alice", PW);
    let mut after: Vec<String> = c.uidl().into_iter().map(|(_, u)| u).collect();
    c.quit();
    let mut expected: Vec<String> = before.into_iter().map(|(_, u)| u).collect();
    after.sort();
    expected.sort();
    assert_eq!(after, expected, "the restored message has its old UIDL");

    mpop().assert_exit(0);
    assert_eq!(count(&local), 2, "mpop did not download the restored message again");
}
