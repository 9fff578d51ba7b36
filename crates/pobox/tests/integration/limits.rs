//! Connection limits that fit real networks (issue 12, item 9): before
//! login a per-IP cap on connections that have not authenticated
//! (`max_connections_per_ip`, 100), after it a per-(user, IP) cap like
//! Dovecot's `mail_max_userip_connections` (`max_connections_per_user_ip`,
//! 10). Every client here comes from 127.0.0.1, as an office behind one NAT
//! address would.

use std::time::Duration;

use crate::util::*;

/// Thirty-odd people behind one address whose clients poll at the same
/// moment: with the default config all 40 are connected and logged in at
/// once (with the old cap of 20 connections per IP the 21st was refused).
#[test]
fn forty_users_behind_one_address_are_all_logged_in_at_once_with_the_defaults() {
    let dir = Dir::new();
    let users: Vec<String> = (0..40).map(|i| format!("user{i:02}")).collect();
    for u in &users {
        dir.add_user(u, PW);
    }
    let server = dir.server().start();
    // All connected (greeted) before any logs in: 40 unauthenticated
    // connections from one address at the same time.
    let mut clients: Vec<Pop3> = users.iter().map(|_| server.pop3()).collect();
    for (c, u) in clients.iter_mut().zip(&users) {
        c.login(u, PW);
    }
    for c in &mut clients {
        assert_eq!(c.stat(), (0, 0));
    }
    for c in clients {
        c.quit();
    }
    assert!(!server.stderr().contains("connection refused"), "{}", server.dump());
}

/// One user from one address: the 11th connection that proves the password
/// is refused with a reply naming the limit, while the first holds the
/// maildrop and nine more wait after `[IN-USE]`. Other users from the same
/// address are not affected, and a slot comes back when a connection ends.
#[test]
fn the_eleventh_authenticated_connection_of_one_user_from_one_address_is_refused() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.add_user("bob", PW);
    let server = dir.server().start();
    let first = server.login("alice", PW);
    let mut waiting = Vec::new();
    for _ in 0..9 {
        let mut c = server.pop3();
        assert!(c.cmd("USER alice").starts_with("+OK"));
        let r = c.cmd(&format!("PASS {PW}"));
        assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
        waiting.push(c);
    }
    let mut eleventh = server.pop3();
    assert!(eleventh.cmd("USER alice").starts_with("+OK"));
    let r = eleventh.cmd(&format!("PASS {PW}"));
    assert!(r.starts_with("-ERR [SYS/TEMP] too many connections of this user from your address"), "{r}");
    assert!(r.contains("limit 10"), "{r}");
    assert!(server.stderr_eventually_contains("login refused: max_connections_per_user_ip"), "{}", server.dump());

    // Another user from the same address logs in as usual.
    server.login("bob", PW).quit();

    // A refused connection is still in AUTHORIZATION; once one of the ten
    // ends, its slot is free and the eleventh gets the ordinary [IN-USE].
    waiting.pop().unwrap().quit();
    let r = login_until(&mut eleventh, "-ERR [IN-USE]");
    assert!(r.starts_with("-ERR [IN-USE]"), "the slot of the closed connection never came back: {r}\n{}", server.dump());

    // And when the holder quits, the maildrop is free for the others.
    first.quit();
    let r = login_until(&mut waiting[0], "+OK");
    assert!(r.starts_with("+OK"), "{r}\n{}", server.dump());
}

/// USER/PASS as alice until the reply starts with `want`, at most 15 times
/// (each refusal is an error reply, and the session closes after 20): the
/// server frees a slot or a lock a moment after the client saw the other
/// connection close. Returns the last reply.
fn login_until(c: &mut Pop3, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..15 {
        assert!(c.cmd("USER alice").starts_with("+OK"));
        last = c.cmd(&format!("PASS {PW}"));
        if last.starts_with(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    last
}

/// The pre-login cap still stops a flood: 100 connections from one address
/// that do not log in fill it (the default), the 101st is refused at once
/// with `[SYS/TEMP]`, and a connection that logs in frees its place.
#[test]
fn a_flood_of_unauthenticated_connections_from_one_address_is_refused_past_the_cap() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let server = dir.server().start();
    let mut flood: Vec<Pop3> = (0..100).map(|_| server.pop3()).collect();
    let mut refused = tcp(server.pop3);
    let reply = String::from_utf8_lossy(&read_until_closed(&mut refused)).into_owned();
    assert_eq!(reply, "-ERR [SYS/TEMP] too many connections, try again later\r\n");
    assert!(
        server.stderr_eventually_contains("connection refused: max_connections_per_ip (connections not logged in yet)"),
        "{}",
        server.dump()
    );

    // Logging in leaves the pre-login count: a new connection is greeted.
    flood[0].login("alice", PW);
    let mut greeted = false;
    for _ in 0..100 {
        let mut s = tcp(server.pop3);
        let reply = read_line(&mut s);
        if reply.starts_with("+OK") {
            greeted = true;
            break;
        }
        assert!(reply.starts_with("-ERR [SYS/TEMP] too many connections"), "{reply}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(greeted, "the logged-in connection still counts against the cap\n{}", server.dump());
    flood.remove(0).quit();
}

/// One line from a raw socket (up to and including LF), or what came
/// before the server closed it.
fn read_line(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\n") {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => out.push(byte[0]),
            Err(e) => panic!("reading a greeting: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
