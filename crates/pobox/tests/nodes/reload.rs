//! SIGHUP on a PostgreSQL node: new quota and retention policies reach the
//! store (`Mailstore::set_policies`); a changed `[store]` is named as
//! needing a restart and the node keeps its database.

use std::time::Duration;

use crate::util::{Dir, eventually};
use crate::{Cluster, lmtp_deliver, message, shared_pg};

#[test]
fn sighup_applies_a_new_quota_to_the_postgres_store_and_names_a_store_change_as_needing_a_restart() {
    let Some(pg) = shared_pg("sighup_on_a_postgres_node") else { return };
    let cluster = Cluster::migrated(pg, &["alice"]);
    let dir = Dir::new();
    let server = cluster.builder(&dir, "a").listeners_in_config().start();
    assert!(lmtp_deliver(server.lmtp, "alice", &message("q1")).acknowledged());

    let config = dir.scratch("pobox.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let with_quota = format!("{original}quota = {{ messages = 2 }}\n").replace("node = \"a\"", "node = \"a2\"");
    std::fs::write(&config, with_quota).unwrap();
    rustix::process::kill_process(server.pid(), rustix::process::Signal::HUP).expect("kill -HUP");
    assert!(
        eventually(Duration::from_secs(10), || server.stderr().contains("configuration reloaded")),
        "{}",
        server.dump()
    );
    assert!(server.stderr().contains("[store] (backend and connection)"), "{}", server.dump());

    assert!(lmtp_deliver(server.lmtp, "alice", &message("q2")).acknowledged());
    let third = lmtp_deliver(server.lmtp, "alice", &message("q3"));
    assert!(matches!(&third, crate::Outcome::Reply(r) if r.starts_with("452")), "over the new quota: {third:?}");
}
