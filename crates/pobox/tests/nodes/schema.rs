//! The schema commands and what `pobox serve` and `pobox check` do with an
//! unmigrated database.

use crate::util::Dir;
use crate::{Cluster, shared_pg};

#[test]
fn db_status_migrate_and_serve_refusing_an_unmigrated_schema() {
    let Some(pg) = shared_pg("db_status_migrate_and_serve_refusing_an_unmigrated_schema") else { return };
    let cluster = Cluster::new(pg, &["alice"]);
    let dir = Dir::new();

    let out = cluster.cli(&dir, "a").args(["db", "status"]).assert_exit(1);
    assert!(out.stdout().contains("schema version 0"), "{}", out.dump());
    assert!(out.stdout().contains("pending: 1 (initial)"), "{}", out.dump());

    // pobox check finds it; pobox serve refuses it, naming the fix.
    let out = cluster.cli(&dir, "a").arg("check").output();
    assert!(!out.status.success(), "{}", out.dump());
    assert!(out.stdout().contains("run pobox db migrate"), "{}", out.dump());
    let out = cluster
        .cli(&dir, "a")
        .args(["serve", "--pop3", "127.0.0.1:0", "--pop3s", "none", "--lmtp", "none", "--smtp", "none"])
        .assert_exit(1);
    assert!(out.stderr().contains("pobox db migrate"), "{}", out.dump());
    assert!(out.stderr().contains("migrate_on_start"), "{}", out.dump());

    let out = cluster.cli(&dir, "a").args(["db", "migrate"]).assert_exit(0);
    assert!(out.stdout().contains("applied migration 1 (initial)"), "{}", out.dump());
    assert!(out.stdout().contains("schema now at version 1 (was 0)"), "{}", out.dump());
    let out = cluster.cli(&dir, "a").args(["db", "migrate"]).assert_exit(0);
    assert!(out.stdout().contains("nothing to do"), "{}", out.dump());
    let out = cluster.cli(&dir, "a").args(["db", "status"]).assert_exit(0);
    assert!(out.stdout().contains("up to date"), "{}", out.dump());
    let out = cluster.cli(&dir, "a").arg("check").output();
    assert!(out.stdout().contains("schema version 1 (current); node a, lease 3 s"), "{}", out.dump());
}

#[test]
fn migrate_on_start_migrates_and_admin_commands_work_on_postgres() {
    let Some(pg) = shared_pg("migrate_on_start_migrates_and_admin_commands_work_on_postgres") else { return };
    let cluster = Cluster::new(pg, &["alice"]);
    let dir = Dir::new();
    let store = cluster.store_toml("a").replace("pool_size = 4", "pool_size = 4, migrate_on_start = true");
    let server = cluster.builder(&dir, "a").config("store", &store).start();
    assert!(server.stdout().contains("maildrops    PostgreSQL postgres://pobox@127.0.0.1"), "{}", server.dump());
    let reply = crate::lmtp_deliver(server.lmtp, "alice", &crate::message("m1"));
    assert!(reply.acknowledged(), "{reply:?}\n{}", server.dump());

    // The admin commands go through the same store.
    let out = cluster.cli(&dir, "a").args(["mailbox", "show", "alice"]).assert_exit(0);
    assert!(out.stdout().contains("m1"), "{}", out.dump());
    let out = cluster.cli(&dir, "a").args(["user", "quota", "alice"]).assert_exit(0);
    assert!(!out.stdout().is_empty(), "{}", out.dump());
    cluster.cli(&dir, "a").args(["deliver", "alice"]).stdin(crate::message("m2")).assert_exit(0);
    let got = crate::contents(&server, "alice");
    let ids: Vec<String> = got.iter().map(|(_, b)| crate::id_of(b)).collect();
    assert_eq!(ids, ["m1", "m2"]);
}
