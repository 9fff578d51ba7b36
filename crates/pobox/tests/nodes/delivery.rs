//! Deliveries through both nodes' LMTP at once.

use std::collections::BTreeMap;

use crate::util::Dir;
use crate::{Cluster, contents, id_of, lmtp_deliver, message, shared_pg};

const SENDERS_PER_NODE: usize = 2;
const PER_SENDER: usize = 12;

#[test]
fn concurrent_deliveries_through_two_nodes_land_exactly_once() {
    let Some(pg) = shared_pg("concurrent_deliveries_through_two_nodes") else { return };
    let cluster = Cluster::migrated(pg, &["alice", "bob"]);
    let (dir_a, dir_b) = (Dir::new(), Dir::new());
    let a = cluster.node(&dir_a, "a");
    let b = cluster.node(&dir_b, "b");
    let mut expected: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (node, port) in [("a", a.lmtp), ("b", b.lmtp)] {
            for sender in 0..SENDERS_PER_NODE {
                handles.push(s.spawn(move || {
                    let mut sent = Vec::new();
                    for i in 0..PER_SENDER {
                        let user = if i % 2 == 0 { "alice" } else { "bob" };
                        let id = format!("{node}{sender}-{i}");
                        let body = message(&id);
                        let r = lmtp_deliver(port, user, &body);
                        assert!(r.acknowledged(), "{id} via node {node}: {r:?}");
                        sent.push((user, id, body));
                    }
                    sent
                }));
            }
        }
        for h in handles {
            for (user, id, body) in h.join().unwrap() {
                expected.entry(user).or_default().insert(id, body);
            }
        }
    });
    for user in ["alice", "bob"] {
        // Read through node a for alice and node b for bob.
        let server = if user == "alice" { &a } else { &b };
        let got = contents(server, user);
        let mut uidls: Vec<&String> = got.iter().map(|(u, _)| u).collect();
        uidls.sort();
        uidls.dedup();
        assert_eq!(uidls.len(), got.len(), "{user}: a UIDL listed twice");
        let by_id: BTreeMap<String, &[u8]> = got.iter().map(|(_, body)| (id_of(body), crate::as_sent(body))).collect();
        assert_eq!(by_id.len(), got.len(), "{user}: a message stored twice");
        let ids: Vec<&String> = by_id.keys().collect();
        assert_eq!(ids, expected[user].keys().collect::<Vec<_>>(), "{user}: stored ≠ acknowledged");
        for (id, body) in &by_id {
            assert!(*body == expected[user][id].as_slice(), "{user}: {id} damaged:\n{}", String::from_utf8_lossy(body));
        }
    }
}
