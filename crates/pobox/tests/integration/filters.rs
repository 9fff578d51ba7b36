//! Sieve filtering and quotas on the real delivery paths (LMTP and
//! `pobox deliver`), seen by a POP3 client.

use crate::util::*;

const SCRIPT: &str = r#"require ["fileinto", "reject", "variables"];
if header :contains "subject" "[SPAM]" { fileinto "Junk"; stop; }
if address :is "from" "blocked@bad.example" { reject "not from you"; }
"#;

fn install_script(dir: &Dir, user: &str, script: &str) {
    let sieve = dir.data().join("sieve");
    std::fs::create_dir_all(&sieve).unwrap();
    std::fs::write(sieve.join(format!("{user}.sieve")), script).unwrap();
}

/// LMTP transaction for several recipients; returns the per-recipient replies.
fn lmtp_send(server: &Server<'_>, from: &str, rcpts: &[&str], body: &str) -> Vec<String> {
    let mut c = server.lmtp();
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    for r in rcpts {
        let reply = c.cmd(&format!("RCPT TO:<{r}>"));
        assert!(reply.starts_with("250"), "{r}: {reply}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("{body}\r\n.\r\n"));
    rcpts.iter().map(|_| c.reply()).collect()
}

#[test]
fn sieve_fileinto_quarantines_and_release_brings_it_back_with_its_uidl() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    install_script(&dir, "alice", SCRIPT);
    let server = dir.server().start();
    let replies = lmtp_send(&server, "x@example.org", &["alice@example.org"], "Subject: [SPAM] win\r\n\r\nbody");
    assert!(replies[0].starts_with("250 2.0.0"), "{replies:?}");
    let id = replies[0].rsplit(' ').next().unwrap().to_string();
    let mut c = server.login("alice", PW);
    assert_eq!(c.stat().0, 0, "POP3 does not see the quarantine");
    c.quit();
    assert_eq!(dir.files("alice", ".Junk/new").len(), 1);

    dir.pobox().args(["mailbox", "release", "alice", "Junk", &id]).assert_exit(0);
    let mut c = server.login("alice", PW);
    assert_eq!(c.uidl(), vec![(1, id)], "released intact under its UIDL");
    let body = String::from_utf8(c.cmd_multi("RETR 1")).unwrap();
    assert!(body.contains("Subject: [SPAM] win\r\n"), "{body}");
    c.quit();
}

#[test]
fn sieve_reject_refuses_only_that_recipient() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.add_user("bob", PW);
    install_script(&dir, "alice", SCRIPT);
    let server = dir.server().start();
    let replies = lmtp_send(
        &server,
        "blocked@bad.example",
        &["alice@example.org", "bob@example.org"],
        "From: blocked@bad.example\r\nSubject: hi\r\n\r\nbody",
    );
    assert!(replies[0].starts_with("550 5.7.1") && replies[0].contains("not from you"), "{replies:?}");
    assert!(replies[1].starts_with("250 2.0.0"), "{replies:?}");
    assert_eq!(dir.message_files("alice").len(), 0);
    assert_eq!(dir.message_files("bob").len(), 1);
}

#[test]
fn broken_or_runaway_scripts_never_lose_mail() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.add_user("bob", PW);
    // Does not compile (redirect needs an outbound relay): ignored, keep.
    install_script(&dir, "alice", "redirect \"elsewhere@example.org\";\n");
    // Compiles, but blows the step limit at run time: keep.
    let mut runaway = String::from("require \"variables\";\n");
    for i in 0..20_000 {
        runaway.push_str(&format!("set \"v{}\" \"x\";\n", i % 50));
    }
    install_script(&dir, "bob", &runaway);
    let server = dir.server().start();
    let replies = lmtp_send(&server, "x@example.org", &["alice@example.org", "bob@example.org"], "Subject: hi\r\n\r\nbody");
    assert!(replies.iter().all(|r| r.starts_with("250 2.0.0")), "{replies:?}");
    assert_eq!(dir.message_files("alice").len(), 1);
    assert_eq!(dir.message_files("bob").len(), 1);
    assert!(server.stderr_eventually_contains("sieve"), "the problems are logged: {}", server.stderr());
}

#[test]
fn sieve_check_reports_line_and_column() {
    let dir = Dir::new();
    let bad = dir.scratch("bad.sieve");
    std::fs::write(&bad, "require \"fileinto\";\nif true {\n  fileinto \"x\"\n}\n").unwrap();
    let out = dir.pobox().arg("sieve").arg("check").arg(&bad).assert_exit(1);
    assert!(out.stdout().contains(":4:1:"), "{}", out.dump());
    let good = dir.scratch("good.sieve");
    std::fs::write(&good, SCRIPT).unwrap();
    dir.pobox().arg("sieve").arg("check").arg(&good).assert_exit(0);
}

#[test]
fn sieve_test_shows_the_actions_without_storing() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    install_script(&dir, "alice", SCRIPT);
    let out = dir
        .pobox()
        .args(["sieve", "test", "alice"])
        .stdin("Subject: [SPAM] x\r\n\r\nbody\r\n")
        .assert_exit(0);
    assert_eq!(out.stdout().trim(), "fileinto \"Junk\"");
    assert!(dir.message_files("alice").is_empty());
}

#[test]
fn over_quota_is_temporary_by_default_and_permanent_when_configured() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", b"Subject: 1\n\nx\n");
    // alice is full: refused at RCPT, before DATA.
    let rcpt = |server: &Server<'_>| {
        let mut c = server.lmtp();
        assert!(c.cmd("MAIL FROM:<x@example.org>").starts_with("250"));
        c.cmd("RCPT TO:<alice@example.org>")
    };
    let server = dir.server().config("quota", "{ messages = 1 }").start();
    let reply = rcpt(&server);
    assert!(reply.starts_with("452 4.2.2"), "{reply}");
    drop(server);
    let server = dir.server().config("quota", "{ messages = 1, over_quota = \"permanent\" }").start();
    let reply = rcpt(&server);
    assert!(reply.starts_with("552 5.2.2"), "{reply}");
    // Under quota at RCPT, over it with this message: refused after DATA.
    drop(server);
    let server = dir.server().config("quota", "{ bytes = 1000 }").start();
    let replies = lmtp_send(&server, "x@example.org", &["alice@example.org"], &format!("Subject: 2\r\n\r\n{}", "x".repeat(2000)));
    assert!(replies[0].starts_with("452 4.2.2"), "{replies:?}");
    drop(server);
    // Writes pobox.toml with the quota `pobox user quota` reads below.
    let _server = dir.server().config("quota", "{ messages = 1, over_quota = \"permanent\" }").start();
    assert_eq!(dir.message_files("alice").len(), 1, "nothing stored over quota");
    let q = dir.pobox().arg("--config").arg(dir.scratch("pobox.toml")).args(["user", "quota", "alice"]).assert_exit(0);
    assert!(q.stdout().contains("1 of 1"), "{}", q.dump());
    // `pobox deliver` says the same with sysexits: 77 when permanent.
    let d = dir.pobox().arg("--config").arg(dir.scratch("pobox.toml")).args(["deliver", "alice"]).stdin("x\n").output();
    assert_eq!(d.status.code(), Some(77), "{}", d.dump());
}
