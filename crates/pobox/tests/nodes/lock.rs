//! The RFC 1939 maildrop lock across nodes: `[IN-USE]` at once, a dead
//! node's lease expiring, and the fencing token refusing a stale UPDATE.

use std::time::Duration;

use rustix::process::Signal;

use crate::util::{Dir, PW};
use crate::{Cluster, LEASE_SECS, contents, id_of, lmtp_deliver, login_when_free, message, shared_pg, signal};

/// Generous bound on "within the lease" for a loaded 2-core machine: the
/// loop ends as soon as the lease is free.
const LEASE_WAIT: Duration = Duration::from_secs(LEASE_SECS * 20);

#[test]
fn a_session_on_one_node_makes_the_other_answer_in_use_and_a_killed_node_frees_it_within_the_lease() {
    let Some(pg) = shared_pg("in_use_across_nodes") else { return };
    let cluster = Cluster::migrated(pg, &["alice"]);
    let (dir_a, dir_b) = (Dir::new(), Dir::new());
    let mut a = cluster.node(&dir_a, "a");
    let b = cluster.node(&dir_b, "b");
    for id in ["u1", "u2"] {
        let r = lmtp_deliver(a.lmtp, "alice", &message(id));
        assert!(r.acknowledged(), "{r:?}\n{}", a.dump());
    }

    let mut held = a.login("alice", PW);
    assert_eq!(held.stat().0, 2);
    let mut other = b.pop3();
    assert!(other.cmd("USER alice").starts_with("+OK"));
    let r = other.cmd(&format!("PASS {PW}"));
    assert!(r.starts_with("-ERR [IN-USE]"), "node b: {r}\n{}", b.dump());
    // And on the same node too.
    let mut same = a.pop3();
    assert!(same.cmd("USER alice").starts_with("+OK"));
    assert!(same.cmd(&format!("PASS {PW}")).starts_with("-ERR [IN-USE]"));

    // The holder dies without a word: its lease runs out, node b serves.
    signal(&a, Signal::KILL);
    a.wait(Duration::from_secs(10));
    drop(held);
    let mut c = login_when_free(&b, "alice", LEASE_WAIT);
    let ids: Vec<String> = c.contents().iter().map(|(_, body)| id_of(body)).collect();
    assert_eq!(ids, ["u1", "u2"]);
    c.quit();
}

#[test]
fn a_session_whose_lease_was_taken_over_cannot_commit_its_deletes() {
    let Some(pg) = shared_pg("fencing") else { return };
    let cluster = Cluster::migrated(pg, &["alice"]);
    let (dir_a, dir_b) = (Dir::new(), Dir::new());
    let a = cluster.node(&dir_a, "a");
    let b = cluster.node(&dir_b, "b");
    for id in ["f1", "f2", "f3"] {
        assert!(lmtp_deliver(b.lmtp, "alice", &message(id)).acknowledged());
    }
    let before = contents(&b, "alice");

    // Node a's session marks two messages deleted, then node a freezes
    // (SIGSTOP: no lease renewal) past its lease.
    let mut stale = a.login("alice", PW);
    assert!(stale.cmd("DELE 1").starts_with("+OK"));
    assert!(stale.cmd("DELE 2").starts_with("+OK"));
    signal(&a, Signal::STOP);
    // Node b takes the maildrop over once the lease expired, and commits
    // an UPDATE of its own (it deletes message 3).
    let mut taker = login_when_free(&b, "alice", LEASE_WAIT);
    assert_eq!(taker.stat().0, 3);
    assert!(taker.cmd("DELE 3").starts_with("+OK"));
    taker.quit();
    signal(&a, Signal::CONT);

    // The stale session's QUIT must not delete anything.
    let r = stale.cmd("QUIT");
    assert!(r.starts_with("-ERR"), "QUIT after losing the lease: {r}\n{}", a.dump());
    let after = contents(&b, "alice");
    assert_eq!(after, before[..2].to_vec(), "f1 and f2 must survive the stale UPDATE; f3 was deleted by node b");
}
