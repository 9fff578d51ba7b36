//! `pobox import maildir` (Maildir → PostgreSQL) and `pobox export
//! maildir` (PostgreSQL → Maildir): UIDLs, bytes and order kept, a killed
//! run resumed by running it again.

use std::os::unix::process::ExitStatusExt as _;

use crate::util::{Dir, PW};
use crate::{Cluster, contents, location, shared_pg};

/// A single-node Maildir server on `dir` with the cluster's users.
fn maildir_server<'d>(cluster: &Cluster, dir: &'d Dir) -> crate::util::ServerBuilder<'d> {
    dir.server().config("passwd_file", &format!("{:?}", cluster.users.users_file()))
}

#[test]
fn maildir_to_postgres_killed_and_rerun_then_back_to_maildir_keeps_uidls_and_bytes() {
    let Some(pg) = shared_pg("maildir_to_postgres_and_back") else { return };
    let cluster = Cluster::migrated(pg, &["alice", "bob"]);
    // The old single-node server: Maildir in its data dir, same users.
    let old = Dir::new();
    let cfg = old.scratch("old.toml");
    std::fs::write(&cfg, format!("passwd_file = {:?}\n", cluster.users.users_file())).unwrap();
    let deliver = |user: &str, body: String| {
        old.pobox().arg("--config").arg(&cfg).args(["deliver", user]).stdin(body).assert_exit(0);
    };
    for i in 0..6 {
        deliver("alice", format!("Subject: a{i}\n\nline\n.dot\n{}\n", "y".repeat(i * 700)));
    }
    deliver("bob", "Subject: b\r\n\r\nno final newline".into());
    let before = {
        let server = maildir_server(&cluster, &old).start();
        let all = [contents(&server, "alice"), contents(&server, "bob")];
        server.stop();
        all
    };
    assert_eq!((before[0].len(), before[1].len()), (6, 1));
    let old_mail = format!("{}/mail/{{user}}", old.data().display());

    // Into PostgreSQL, killed (SIGKILL) after the third message.
    let node = Dir::new();
    let killed =
        cluster.cli(&node, "a").args(["import", "maildir", &old_mail]).env("POBOX_FAULT", "copy-message:3").output();
    assert_eq!(killed.status.signal(), Some(9), "{}", killed.dump());
    let dry = cluster.cli(&node, "a").args(["import", "maildir", "--dry-run", &old_mail]).assert_exit(0);
    assert!(dry.stdout().contains("7 messages: 4 to copy, 3 already there"), "{}", dry.dump());
    let rerun = cluster.cli(&node, "a").args(["import", "maildir", &old_mail]).assert_exit(0);
    assert!(rerun.stdout().contains("2 users, 7 messages: 4 copied, 3 already there"), "{}", rerun.dump());
    let again = cluster.cli(&node, "a").args(["import", "maildir", &old_mail]).assert_exit(0);
    assert!(again.stdout().contains("0 copied, 7 already there"), "{}", again.dump());

    // A node on PostgreSQL serves exactly what the Maildir server did.
    let server = cluster.node(&node, "a");
    assert_eq!([contents(&server, "alice"), contents(&server, "bob")], before, "after Maildir → PostgreSQL");
    // A client deletes one message on PostgreSQL: the export must not bring it back.
    let mut c = server.login("alice", PW);
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    c.quit();
    server.stop();

    // And back out into a new Maildir tree, served by a Maildir server.
    let (_, new_mail) = location(&node, "exported");
    let out = cluster.cli(&node, "a").args(["export", "maildir", &new_mail]).assert_exit(0);
    assert!(out.stdout().contains("2 users, 6 messages: 6 copied, 0 already there"), "{}", out.dump());
    let back = Dir::new();
    let server = maildir_server(&cluster, &back).config("mail_location", &format!("{new_mail:?}")).start();
    assert_eq!(contents(&server, "alice"), before[0][1..].to_vec(), "after PostgreSQL → Maildir");
    assert_eq!(contents(&server, "bob"), before[1], "after PostgreSQL → Maildir");
}

#[test]
fn import_pop3_into_postgres_keeps_uidls_and_a_rerun_imports_nothing() {
    let Some(pg) = shared_pg("import_pop3_into_postgres") else { return };
    let cluster = Cluster::migrated(pg, &["alice"]);
    // The old server: a Maildir pobox with alice's mail.
    let old = Dir::new();
    let cfg = old.scratch("old.toml");
    std::fs::write(&cfg, format!("passwd_file = {:?}\n", cluster.users.users_file())).unwrap();
    for i in 0..3 {
        old.pobox()
            .arg("--config")
            .arg(&cfg)
            .args(["deliver", "alice"])
            .stdin(format!("Subject: p{i}\n\nbody {i}\n"))
            .assert_exit(0);
    }
    let source = maildir_server(&cluster, &old).start();
    let before = contents(&source, "alice");
    let password = old.scratch("pw");
    std::fs::write(&password, format!("{PW}\n")).unwrap();
    std::fs::set_permissions(&password, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let node = Dir::new();
    let import = |node: &Dir| {
        let mut c = cluster.cli(node, "a");
        c.args(["import", "pop3", "--insecure-plaintext", "--quiet", "--remote-user", "alice", "--to", "alice"])
            .arg("--server")
            .arg(format!("127.0.0.1:{}", source.pop3))
            .arg("--password-file")
            .arg(&password);
        c.assert_exit(0)
    };
    import(&node);
    import(&node);
    let server = cluster.node(&node, "a");
    assert_eq!(contents(&server, "alice"), before, "UIDLs and bytes after pobox import pop3 into PostgreSQL");
}
