//! `pobox export maildir` / `pobox import maildir` on the Maildir backend
//! (the PostgreSQL directions are in `tests/nodes`): a copy keeps every
//! UIDL and byte, a run killed part-way and run again copies each message
//! exactly once, and a copy onto the store itself is refused.

use std::os::unix::process::ExitStatusExt as _;

use crate::util::{Dir, PW};

/// Five messages for alice, two for bob, delivered by `pobox deliver`.
fn populated() -> Dir {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.add_user("bob", PW);
    for i in 0..5 {
        dir.deliver("alice", format!("Subject: a{i}\n\nline one\n.dot line\nend {i}\n").as_bytes());
    }
    for i in 0..2 {
        dir.deliver("bob", format!("Subject: b{i}\r\n\r\nbody {i}\r\n").as_bytes());
    }
    dir
}

#[test]
fn export_killed_midway_then_rerun_copies_each_message_once_with_its_uidl() {
    let dir = populated();
    let before: Vec<_> = {
        let server = dir.server().start();
        let all = ["alice", "bob"].map(|u| {
            let mut c = server.login(u, PW);
            let got = c.contents();
            c.quit();
            got
        });
        server.stop();
        all.to_vec()
    };
    assert_eq!((before[0].len(), before[1].len()), (5, 2));
    let location = format!("{}/{{user}}", dir.scratch("exported").display());

    // Killed (SIGKILL, as by kill -9) right after the second message.
    let killed = dir.pobox().args(["export", "maildir", &location]).env("POBOX_FAULT", "copy-message:2").output();
    assert_eq!(killed.status.signal(), Some(9), "{}", killed.dump());

    let rerun = dir.pobox().args(["export", "maildir", &location]).assert_exit(0);
    assert!(rerun.stdout().contains("2 users, 7 messages: 5 copied, 2 already there"), "{}", rerun.dump());
    let again = dir.pobox().args(["export", "maildir", &location]).assert_exit(0);
    assert!(again.stdout().contains("7 messages: 0 copied, 7 already there"), "{}", again.dump());

    // A server on the exported tree serves the same UIDLs and bytes.
    let server = dir.server().config("mail_location", &format!("{location:?}")).start();
    for (i, u) in ["alice", "bob"].iter().enumerate() {
        let mut c = server.login(u, PW);
        assert_eq!(c.contents(), before[i], "{u}'s maildrop after the export");
        c.quit();
    }
}

#[test]
fn import_dry_run_changes_nothing_and_a_copy_onto_itself_is_refused() {
    let dir = populated();
    let own = format!("{}/mail/{{user}}", dir.data().display());
    let out = dir.pobox().args(["import", "maildir", &own]).assert_exit(1);
    assert!(out.stderr().contains("nothing to copy"), "{}", out.dump());

    let other = dir.scratch("other");
    let location = format!("{}/{{user}}", other.display());
    let out = dir.pobox().args(["export", "maildir", "--dry-run", "--user", "bob", &location]).assert_exit(0);
    assert!(out.stdout().contains("1 users, 2 messages: 2 to copy, 0 already there"), "{}", out.dump());
    assert!(!other.join("bob").exists(), "a dry run created {}", other.display());

    let out = dir.pobox().args(["export", "maildir", "--user", "carol", &location]).assert_exit(1);
    assert!(out.stderr().contains("no such user"), "{}", out.dump());
}
