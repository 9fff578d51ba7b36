//! The health endpoint sees the database: `GET /health` answers 200 while
//! PostgreSQL answers, `503 store unavailable` once it is stopped (so a
//! balancer takes every node out), and 200 again after it starts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::Cluster;
use crate::util::{self, Dir, eventually};

/// `GET /health` on `port`: status code and body, or `None` when nothing
/// answers.
fn health(port: u16) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(util::IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
    Some((status, body))
}

#[test]
fn health_answers_503_store_unavailable_while_the_database_is_down() {
    if !pobox_store_pg::testkit::require("health_sees_the_database") {
        return;
    }
    // Its own cluster: this test stops it.
    let pg = pobox_store_pg::testkit::TestPg::new();
    let cluster = Cluster::migrated(&pg, &["alice"]);
    let dir = Dir::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = cluster
        .builder(&dir, "a")
        .config("health", &format!("{{ listen = \"127.0.0.1:{port}\" }}"))
        .start();
    let answer = |want: u16, body: &str| {
        // Bounded: the check is cached for a second and times out in two.
        eventually(Duration::from_secs(20), || health(port) == Some((want, body.to_string())))
    };
    assert!(answer(200, "ok"), "{:?}\n{}", health(port), server.dump());
    pg.stop();
    assert!(answer(503, "store unavailable"), "database stopped: {:?}\n{}", health(port), server.dump());
    assert!(server.stderr_eventually_contains("health: the store is unavailable"), "{}", server.dump());
    pg.start();
    assert!(answer(200, "ok"), "database started again: {:?}\n{}", health(port), server.dump());
    assert!(server.stderr_eventually_contains("health: the store answers again"), "{}", server.dump());
    // And a session works again through the same node.
    let mut c = server.pop3();
    assert!(c.cmd("USER alice").starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {}", util::PW)).starts_with("+OK"), "{}", server.dump());
}
