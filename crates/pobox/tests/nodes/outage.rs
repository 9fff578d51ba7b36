//! Failures under load: a node SIGKILLed while it delivers and serves, and
//! the database stopped and restarted. The model is what each client was
//! told: an acknowledged delivery (250) must be stored exactly once unless
//! a session deleted it and got `+OK` to its QUIT; such a message must be
//! gone for good; a delivery whose answer never came may be stored or
//! not, but at most once; nothing that was not sent appears.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use rustix::process::Signal;

use crate::util::{Dir, PW};
use crate::{Cluster, Outcome, contents, id_of, lmtp_deliver, login_when_free, message, shared_pg, signal};

/// What the clients were told, per user.
#[derive(Default)]
struct Model {
    /// Ids acknowledged with 250.
    acked: BTreeMap<&'static str, BTreeSet<String>>,
    /// Ids whose delivery ended without an answer.
    unknown: BTreeMap<&'static str, BTreeSet<String>>,
    /// Ids deleted by a session that got +OK to QUIT.
    deleted: BTreeMap<&'static str, BTreeSet<String>>,
    /// Ids DELEd by a session whose QUIT got -ERR: an UPDATE that failed
    /// removes nothing, but a reply lost after the database committed
    /// cannot be told apart, so they may be gone or not.
    maybe_deleted: BTreeMap<&'static str, BTreeSet<String>>,
    /// Every final reply that was neither 250 nor 4xx.
    refused: Vec<String>,
}

impl Model {
    fn record(&mut self, user: &'static str, id: String, outcome: &Outcome) {
        match outcome {
            o if o.acknowledged() => {
                self.acked.entry(user).or_default().insert(id);
            }
            Outcome::Reply(r) if r.starts_with('4') => {
                // A temporary refusal: the sender keeps the message; the
                // store may not have it.
                self.unknown.entry(user).or_default().insert(id);
            }
            Outcome::Reply(r) => self.refused.push(format!("{id}: {r}")),
            Outcome::Unknown(_) => {
                self.unknown.entry(user).or_default().insert(id);
            }
        }
    }

    /// Checks `user`'s stored messages (read over POP3) against the model.
    fn check(&self, user: &'static str, stored: &[(String, Vec<u8>)]) {
        let none = BTreeSet::new();
        let acked = self.acked.get(user).unwrap_or(&none);
        let unknown = self.unknown.get(user).unwrap_or(&none);
        let deleted = self.deleted.get(user).unwrap_or(&none);
        let maybe_deleted = self.maybe_deleted.get(user).unwrap_or(&none);
        let mut seen = BTreeSet::new();
        for (uidl, body) in stored {
            let id = id_of(body);
            assert!(seen.insert(id.clone()), "{user}: {id} stored twice");
            assert!(acked.contains(&id) || unknown.contains(&id), "{user}: {id} was never sent");
            assert!(!deleted.contains(&id), "{user}: {id} was deleted (QUIT +OK) and came back as {uidl}");
            crate::assert_intact(user, &id, body);
        }
        for id in acked {
            assert!(
                deleted.contains(id) || maybe_deleted.contains(id) || seen.contains(id),
                "{user}: acknowledged {id} lost"
            );
        }
    }
}

const USERS: [&str; 2] = ["n0", "n1"];

/// Delivers `count` messages as sender `name`, alternating between the
/// ports in `ports` (read at each message: a restarted node has a new one).
fn send(name: &str, count: usize, ports: &[&AtomicU16], model: &Mutex<Model>, acks: &AtomicUsize) {
    for i in 0..count {
        let user = USERS[i % USERS.len()];
        let id = format!("{name}-{i}");
        let port = ports[i % ports.len()].load(Ordering::SeqCst);
        let outcome = lmtp_deliver(port, user, &message(&id));
        if outcome.acknowledged() {
            acks.fetch_add(1, Ordering::SeqCst);
        }
        model.lock().unwrap().record(user, id, &outcome);
    }
}

#[test]
fn a_node_killed_during_deliveries_and_sessions_loses_nothing_acknowledged() {
    let Some(pg) = shared_pg("node_killed_under_load") else { return };
    let cluster = Cluster::migrated(pg, &USERS);
    let (dir_a, dir_b) = (Dir::new(), Dir::new());
    let mut a = cluster.node(&dir_a, "a");
    let b = cluster.node(&dir_b, "b");
    let port_a = AtomicU16::new(a.lmtp);
    let port_b = AtomicU16::new(b.lmtp);
    let model = Mutex::new(Model::default());
    let acks = AtomicUsize::new(0);
    let senders_done = AtomicBool::new(false);

    // Seed both users: n0 for the sessions that delete, n1 for the one
    // that dies.
    for (user, i) in [("n0", 0), ("n0", 1), ("n0", 2), ("n1", 3)] {
        let id = format!("seed-{i}");
        let o = lmtp_deliver(b.lmtp, user, &message(&id));
        assert!(o.acknowledged(), "{o:?}");
        model.lock().unwrap().record(user, id, &o);
    }
    // A session on node a that DELEs and never gets to QUIT: node a dies
    // under it. Its deletion must not happen.
    let mut doomed = a.login("n1", PW);
    assert!(doomed.cmd("DELE 1").starts_with("+OK"));

    std::thread::scope(|s| {
        let senders: Vec<_> = ["s0", "s1"]
            .into_iter()
            .map(|name| {
                let (model, acks, ports) = (&model, &acks, [&port_a, &port_b]);
                s.spawn(move || send(name, 24, &ports, model, acks))
            })
            .collect();
        // Sessions on node b: read everything of n0, delete it, QUIT.
        let popper = s.spawn(|| {
            let mut rounds = 0;
            while !senders_done.load(Ordering::SeqCst) && rounds < 50 {
                rounds += 1;
                let mut c = login_when_free(&b, "n0", Duration::from_secs(60));
                let listing = c.uidl();
                let mut ids = Vec::new();
                for (n, _) in &listing {
                    let body = crate::util::unstuff(&c.cmd_multi(&format!("RETR {n}")));
                    assert!(c.cmd(&format!("DELE {n}")).starts_with("+OK"));
                    ids.push(id_of(&body));
                }
                let r = c.cmd("QUIT");
                assert!(r.starts_with("+OK"), "QUIT on node b: {r}");
                model.lock().unwrap().deleted.entry("n0").or_default().extend(ids);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // Kill node a once some mail went through it, then start it again.
        let limit = std::time::Instant::now() + Duration::from_secs(120);
        while acks.load(Ordering::SeqCst) < 8 && std::time::Instant::now() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(&a, Signal::KILL);
        a.wait(Duration::from_secs(10));
        // Dead port: senders get connection errors (outcome unknown).
        port_a.store(1, Ordering::SeqCst);
        a = cluster.node(&dir_a, "a");
        port_a.store(a.lmtp, Ordering::SeqCst);
        // Let the senders finish (they are bounded), then the popper.
        for sender in senders {
            sender.join().unwrap();
        }
        senders_done.store(true, Ordering::SeqCst);
        popper.join().unwrap();
    });
    drop(doomed);

    let model = model.into_inner().unwrap();
    assert!(model.refused.is_empty(), "permanent refusals: {:?}", model.refused);
    for user in USERS {
        model.check(user, &contents(&b, user));
    }
    // The restarted node serves the same.
    model.check("n1", &contents(&a, "n1"));
}

#[test]
fn the_database_restarted_under_load_gives_temporary_errors_and_loses_nothing() {
    if !pobox_store_pg::testkit::require("database_restarted_under_load") {
        return;
    }
    // Its own cluster: this test stops it.
    let pg = pobox_store_pg::testkit::TestPg::new();
    let cluster = Cluster::migrated(&pg, &USERS);
    let dir = Dir::new();
    let server = cluster.node(&dir, "a");
    let model = Mutex::new(Model::default());
    let acks = AtomicUsize::new(0);

    // While the database is down: temporary errors, never a permanent one.
    pg.stop();
    let o = lmtp_deliver(server.lmtp, "n0", &message("down-0"));
    assert!(matches!(&o, Outcome::Reply(r) if r.starts_with("4")), "LMTP with the database down: {o:?}");
    model.lock().unwrap().record("n0", "down-0".into(), &o);
    let mut c = server.pop3();
    assert!(c.cmd("USER n0").starts_with("+OK"));
    let r = c.cmd(&format!("PASS {PW}"));
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "login with the database down: {r}");
    pg.start();

    // Under load: the database restarts while a sender delivers and POP3
    // sessions take and delete mail.
    let port = AtomicU16::new(server.lmtp);
    let done = AtomicBool::new(false);
    let restarted = AtomicBool::new(false);
    let acks_at_restart = AtomicUsize::new(0);
    std::thread::scope(|s| {
        // Delivers until ten more were acknowledged after the restart
        // (bounded: 400 attempts), pausing after each temporary failure.
        let sender = s.spawn(|| {
            for i in 0..400 {
                let user = USERS[i % USERS.len()];
                let id = format!("load-{i}");
                let outcome = lmtp_deliver(port.load(Ordering::SeqCst), user, &message(&id));
                if outcome.acknowledged() {
                    let total = acks.fetch_add(1, Ordering::SeqCst) + 1;
                    if restarted.load(Ordering::SeqCst) && total >= acks_at_restart.load(Ordering::SeqCst) + 10 {
                        model.lock().unwrap().record(user, id, &outcome);
                        break;
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                }
                model.lock().unwrap().record(user, id, &outcome);
            }
            done.store(true, Ordering::SeqCst);
        });
        let popper = s.spawn(|| pop_one_at_a_time(&server, "n1", &done, &model));
        let limit = std::time::Instant::now() + Duration::from_secs(120);
        while acks.load(Ordering::SeqCst) < 10 && std::time::Instant::now() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        pg.restart();
        acks_at_restart.store(acks.load(Ordering::SeqCst), Ordering::SeqCst);
        restarted.store(true, Ordering::SeqCst);
        sender.join().unwrap();
        popper.join().unwrap();
    });
    let model = model.into_inner().unwrap();
    let count = |m: &BTreeMap<&str, BTreeSet<String>>| m.values().map(BTreeSet::len).sum::<usize>();
    eprintln!(
        "database restart: {} acknowledged, {} unknown or 4xx, {} deleted (QUIT +OK), {} QUIT -ERR",
        count(&model.acked),
        count(&model.unknown),
        count(&model.deleted),
        count(&model.maybe_deleted)
    );
    assert!(model.refused.is_empty(), "permanent refusals: {:?}", model.refused);
    // The node recovers by itself: deliveries and logins work again.
    let mut recovered = false;
    for _ in 0..300 {
        if lmtp_deliver(server.lmtp, "n1", &message("after")).acknowledged() {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(recovered, "no delivery accepted after the database came back\n{}", server.dump());
    let mut model = model;
    model.acked.entry("n1").or_default().insert("after".into());
    for user in USERS {
        model.check(user, &contents(&server, user));
    }
}

/// POP3 sessions for `user` until `done`: log in, RETR and DELE message 1,
/// QUIT; each reply must be a success or a temporary error (`[SYS/TEMP]`,
/// `[IN-USE]` while a lease of a failed session runs out), never a
/// permanent one. Records what each QUIT's answer says was deleted.
fn pop_one_at_a_time(server: &crate::util::Server<'_>, user: &'static str, done: &AtomicBool, model: &Mutex<Model>) {
    let temporary = |r: &str| r.starts_with("-ERR [SYS/TEMP]") || r.starts_with("-ERR [IN-USE]");
    for _ in 0..400 {
        if done.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut c = server.pop3();
        assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
        let r = c.cmd(&format!("PASS {PW}"));
        if temporary(&r) {
            continue;
        }
        assert!(r.starts_with("+OK"), "PASS: {r}");
        let r = c.cmd("RETR 1");
        if !r.starts_with("+OK") {
            // Empty maildrop (-ERR no such message) or the database gone.
            let _ = c.cmd("QUIT");
            continue;
        }
        let id = id_of(&c.multi_body());
        let r = c.cmd("DELE 1");
        assert!(r.starts_with("+OK"), "DELE: {r}");
        let r = c.cmd("QUIT");
        let mut m = model.lock().unwrap();
        if r.starts_with("+OK") {
            m.deleted.entry(user).or_default().insert(id);
        } else {
            assert!(temporary(&r) || r.starts_with("-ERR"), "QUIT: {r}");
            m.maybe_deleted.entry(user).or_default().insert(id);
        }
    }
}
