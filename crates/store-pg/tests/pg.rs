//! What only the PostgreSQL store has: leases across nodes (two
//! `PgStore`s on one database are two nodes), fencing, concurrent
//! deliveries from two nodes, constant-memory bodies, database outages
//! and schema migrations. The port's common behaviour is in
//! `behaviour.rs`.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::time::{Duration, SystemTime};

use pobox_identity::Authenticated;
use pobox_store::quota::{Quota, QuotaConfig};
use pobox_store::{Mailstore, MailstoreAdmin, StoreError};
use pobox_store_pg::testkit::{TestPg, require};
use pobox_store_pg::{CHUNK_SIZE, PgConfig, PgStore, migrate, schema, schema_status};

/// Two nodes on one fresh database.
fn two_nodes(pg: &TestPg, lease_secs: u64) -> (PgConfig, PgStore, PgStore) {
    let a = pg.migrated("node-a", lease_secs);
    let b = PgConfig {
        node: "node-b".into(),
        ..a.clone()
    };
    (
        a.clone(),
        PgStore::connect(a).unwrap(),
        PgStore::connect(b).unwrap(),
    )
}

fn deliver(s: &PgStore, user: &str, text: &str) {
    s.deliver(user, &mut text.as_bytes()).unwrap();
}

/// Tries `f` every 100 ms, at most `tries` times; the last result.
fn retry<T>(tries: u32, mut f: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let mut last = f();
    for _ in 1..tries {
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        last = f();
    }
    last
}

#[test]
fn a_maildrop_held_on_one_node_is_in_use_on_the_other() {
    if !require("a_maildrop_held_on_one_node_is_in_use_on_the_other") {
        return;
    }
    let pg = TestPg::shared();
    let (cfg, a, b) = two_nodes(pg, 30);
    deliver(&a, "alice", "one\n");
    deliver(&b, "alice", "two\n");
    let session = a.open(&Authenticated::for_tests("alice")).unwrap();
    assert_eq!(
        session.messages().len(),
        2,
        "each node delivers into the one maildrop"
    );
    assert!(
        matches!(b.open(&Authenticated::for_tests("alice")), Err(StoreError::InUse)),
        "[IN-USE] on the other node"
    );
    assert!(
        matches!(a.open(&Authenticated::for_tests("alice")), Err(StoreError::InUse)),
        "and on the same node"
    );
    assert_eq!(
        pg.psql(&cfg.url, "SELECT node FROM maildrop_lease"),
        "node-a"
    );
    assert!(
        matches!(b.purge("alice", SystemTime::now()), Err(StoreError::InUse)),
        "admin changes wait too"
    );
    assert!(
        b.expire("alice", SystemTime::now(), false)
            .unwrap()
            .skipped_in_use
    );
    drop(session);
    let on_b = b.open(&Authenticated::for_tests("alice")).expect("released when the session ends");
    assert_eq!(on_b.messages().len(), 2);
    assert_eq!(
        pg.psql(&cfg.url, "SELECT node || ' ' || token FROM maildrop_lease"),
        "node-b 2"
    );
}

#[test]
fn an_expired_lease_is_taken_over_and_the_old_holder_cannot_commit() {
    if !require("an_expired_lease_is_taken_over_and_the_old_holder_cannot_commit") {
        return;
    }
    let pg = TestPg::shared();
    let (cfg, a, b) = two_nodes(pg, 1);
    for i in 0..3 {
        deliver(&a, "alice", &format!("m{i}\n"));
    }
    let old = a.open(&Authenticated::for_tests("alice")).unwrap();
    // Node A is cut off from the database: its lease is no longer renewed.
    a.stop_lease_renewal();
    let new = retry(100, || b.open(&Authenticated::for_tests("alice"))).expect("taken over once the lease expired");
    assert_eq!(
        pg.psql(&cfg.url, "SELECT node || ' ' || token FROM maildrop_lease"),
        "node-b 2",
        "a higher token"
    );
    let err = old.commit(&[0, 1, 2], &[0]).unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost), "{err:?}");
    assert!(err.is_temporary());
    assert_eq!(
        a.inspect("alice").unwrap().len(),
        3,
        "the fenced UPDATE removed nothing"
    );
    assert!(
        a.inspect("alice")
            .unwrap()
            .iter()
            .all(|m| m.retrieved.is_none()),
        "nor recorded anything"
    );
    // The old holder's release (on drop) did not free the new holder's lease.
    assert!(matches!(a.open(&Authenticated::for_tests("alice")), Err(StoreError::InUse)));
    let report = new.commit(&[1], &[]).unwrap();
    assert_eq!(report.removed, 1, "the new holder commits");
    assert_eq!(b.inspect("alice").unwrap().len(), 2);
}

#[test]
fn a_long_session_keeps_its_lease_through_renewals() {
    if !require("a_long_session_keeps_its_lease_through_renewals") {
        return;
    }
    let pg = TestPg::shared();
    // A 3 s lease renewed every second; a renewal would have to be two
    // seconds late for the other node to get in.
    let (_, a, b) = two_nodes(pg, 3);
    deliver(&a, "alice", "a\n");
    let session = a.open(&Authenticated::for_tests("alice")).unwrap();
    // Over twice the lease time: without renewals it would have expired.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_secs(1));
        assert!(matches!(b.open(&Authenticated::for_tests("alice")), Err(StoreError::InUse)));
    }
    assert_eq!(session.commit(&[0], &[]).unwrap().removed, 1);
}

#[test]
fn a_renewal_racing_a_release_never_locks_the_maildrop_again() {
    if !require("a_renewal_racing_a_release_never_locks_the_maildrop_again") {
        return;
    }
    let pg = TestPg::shared();
    // A 1 s lease: the renewer runs every third of a second, each time
    // listing the leases held and then renewing them. Sessions that open
    // and commit back to back are released between those two steps again
    // and again; a renewal must not bring a released lease back, or the
    // next open would be refused for a whole lease time.
    let (_, a, _b) = two_nodes(pg, 1);
    deliver(&a, "alice", "a\n");
    let started = std::time::Instant::now();
    let mut sessions = 0;
    while sessions < 5_000 && started.elapsed() < Duration::from_secs(3) {
        let session = a
            .open(&Authenticated::for_tests("alice"))
            .unwrap_or_else(|e| panic!("session {sessions} after a clean release was refused: {e}"));
        session.commit(&[], &[]).unwrap();
        sessions += 1;
    }
}

#[test]
fn two_nodes_delivering_at_once_store_every_message_exactly_once() {
    if !require("two_nodes_delivering_at_once_store_every_message_exactly_once") {
        return;
    }
    let pg = TestPg::shared();
    let (_, a, b) = two_nodes(pg, 30);
    std::thread::scope(|s| {
        for (n, store) in [&a, &b, &a, &b].into_iter().enumerate() {
            s.spawn(move || {
                for i in 0..15 {
                    deliver(
                        store,
                        "alice",
                        &format!("Subject: {n}-{i}\n\nbody {n} {i}\n"),
                    );
                }
            });
        }
    });
    let listed = a.inspect("alice").unwrap();
    assert_eq!(listed.len(), 60);
    let uidls: HashSet<_> = listed.iter().map(|m| m.uidl.clone()).collect();
    assert_eq!(uidls.len(), 60, "UIDLs unique");
    let mb = b.open(&Authenticated::for_tests("alice")).unwrap();
    let mut bodies = HashSet::new();
    for i in 0..mb.messages().len() {
        let mut text = String::new();
        mb.open_message(i)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert!(bodies.insert(text), "no message twice");
    }
    let want: HashSet<String> = (0..4)
        .flat_map(|n| (0..15).map(move |i| format!("Subject: {n}-{i}\n\nbody {n} {i}\n")))
        .collect();
    assert_eq!(bodies, want, "every message once");
}

#[test]
fn concurrent_deliveries_from_two_nodes_never_exceed_the_quota() {
    if !require("concurrent_deliveries_from_two_nodes_never_exceed_the_quota") {
        return;
    }
    let pg = TestPg::shared();
    let (_, a, b) = two_nodes(pg, 30);
    let q = || QuotaConfig {
        default: Quota {
            bytes: None,
            messages: Some(10),
        },
        users: HashMap::new(),
    };
    let (a, b) = (a.with_quota(q()), b.with_quota(q()));
    let accepted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = [&a, &b, &a, &b]
            .into_iter()
            .map(|store| {
                s.spawn(move || {
                    (0..8)
                        .filter(|i| {
                            match store.deliver("alice", &mut format!("m{i}\n").as_bytes()) {
                                Ok(_) => true,
                                Err(StoreError::OverQuota(_)) => false,
                                Err(e) => panic!("{e}"),
                            }
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(accepted, 10, "exactly the quota, not more");
    assert_eq!(a.inspect("alice").unwrap().len(), 10);
}

/// A message of `len` bytes generated on the fly (never held in memory):
/// 77-character lines of a pattern.
struct Generated {
    len: u64,
    pos: u64,
}

fn generated_byte(pos: u64) -> u8 {
    if pos % 78 == 77 {
        b'\n'
    } else {
        b'a' + (pos % 26) as u8
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = generated_byte(self.pos + i as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[test]
fn a_20_mb_message_is_stored_and_read_in_chunks() {
    if !require("a_20_mb_message_is_stored_and_read_in_chunks") {
        return;
    }
    let pg = TestPg::shared();
    let cfg = pg.migrated("big", 30);
    let store = PgStore::connect(cfg.clone()).unwrap();
    let len: u64 = 20 * 1024 * 1024 / 78 * 78; // whole lines: stored as given
    let lines = len / 78;
    let d = store
        .deliver("alice", &mut Generated { len, pos: 0 })
        .unwrap();
    assert_eq!(d.size, len + lines, "every LF counts as CRLF");
    let chunks: u64 = pg
        .psql(&cfg.url, "SELECT count(*) FROM message_chunks")
        .parse()
        .unwrap();
    let biggest: usize = pg
        .psql(
            &cfg.url,
            "SELECT max(octet_length(data)) FROM message_chunks",
        )
        .parse()
        .unwrap();
    assert_eq!(
        chunks,
        len.div_ceil(CHUNK_SIZE as u64),
        "stored in {CHUNK_SIZE}-byte chunks"
    );
    assert_eq!(biggest, CHUNK_SIZE);
    let mb = store.open(&Authenticated::for_tests("alice")).unwrap();
    assert_eq!(mb.messages()[0].size, d.size);
    let mut reader = mb.open_message(0).unwrap();
    let mut buf = vec![0u8; 4 * CHUNK_SIZE];
    let mut pos = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(
            n <= CHUNK_SIZE,
            "the reader holds one chunk at a time, not the message"
        );
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, generated_byte(pos + i as u64), "byte {}", pos + i as u64);
        }
        pos += n as u64;
    }
    assert_eq!(pos, len, "every byte back");
}

#[test]
fn a_database_restart_gives_temporary_errors_then_service_resumes() {
    if !require("a_database_restart_gives_temporary_errors_then_service_resumes") {
        return;
    }
    let pg = TestPg::new();
    let cfg = pg.migrated("restart", 30);
    let store = PgStore::connect(cfg).unwrap();
    deliver(&store, "alice", "before\n");
    let session = store.open(&Authenticated::for_tests("alice")).unwrap();
    store.check().expect("the health check passes while the database runs");
    pg.stop();
    let err = store.check().expect_err("the health check sees the database down");
    assert!(err.is_temporary(), "{err}");
    let err = store.deliver("alice", &mut &b"during\n"[..]).unwrap_err();
    assert!(err.is_temporary(), "LMTP 4xx: {err}");
    let err = store
        .open(&Authenticated::for_tests("bob"))
        .err()
        .expect("no maildrop while the database is down");
    assert!(err.is_temporary(), "[SYS/TEMP]: {err}");
    assert!(
        session.open_message(0).is_err(),
        "a read fails, nothing panics"
    );
    pg.start();
    store.check().expect("the health check passes again after the restart");
    deliver(&store, "alice", "after\n");
    // The session's lease survived the restart: its UPDATE goes through.
    assert_eq!(session.commit(&[0], &[]).unwrap().removed, 1);
    let mb = store.open(&Authenticated::for_tests("alice")).unwrap();
    let mut text = String::new();
    mb.open_message(0)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(
        (mb.messages().len(), text.as_str()),
        (1, "after\n"),
        "nothing lost, nothing twice"
    );
}

#[test]
fn connect_refuses_an_unmigrated_database_and_migrate_is_idempotent() {
    if !require("connect_refuses_an_unmigrated_database_and_migrate_is_idempotent") {
        return;
    }
    let pg = TestPg::shared();
    let cfg = PgConfig {
        url: pg.create_database(),
        pool_size: 2,
        ..PgConfig::default()
    };
    let err = PgStore::connect(cfg.clone()).unwrap_err().to_string();
    assert!(err.contains("pobox db migrate"), "{err}");
    let status = schema_status(&cfg).unwrap();
    assert_eq!(
        (status.current, status.latest),
        (0, schema::latest_version())
    );
    assert_eq!(status.pending.len(), schema::latest_version() as usize);
    // Two nodes migrating at once: each version applied exactly once.
    let reports: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| migrate(&cfg).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let applied: usize = reports.iter().map(|r| r.applied.len()).sum();
    assert_eq!(applied, schema::latest_version() as usize, "{reports:?}");
    assert!(reports.iter().all(|r| r.to == schema::latest_version()));
    assert!(migrate(&cfg).unwrap().applied.is_empty(), "idempotent");
    assert!(schema_status(&cfg).unwrap().is_current());
    PgStore::connect(cfg).expect("a migrated database is accepted");
}

#[test]
fn the_password_never_shows_in_errors_or_debug_output() {
    let cfg = PgConfig {
        url: "postgres://pobox:s3cret@127.0.0.1:1/x".into(),
        ..PgConfig::default()
    };
    assert!(!format!("{cfg:?}").contains("s3cret"));
    let err = PgStore::connect(cfg).unwrap_err().to_string();
    assert!(!err.contains("s3cret"), "{err}");
    assert!(StoreError::LeaseLost.is_temporary());
}

#[test]
fn tls_to_the_database_verifies_its_certificate() {
    if !require("tls_to_the_database_verifies_its_certificate") {
        return;
    }
    let pg = TestPg::new_tls();
    let url = pg
        .create_database()
        .replace("sslmode=disable", "sslmode=require");
    let cfg = PgConfig {
        url,
        ca_file: Some(pg.ca_file()),
        pool_size: 2,
        node: "tls".into(),
        ..PgConfig::default()
    };
    migrate(&cfg).unwrap();
    let store = PgStore::connect(cfg.clone()).unwrap();
    deliver(&store, "alice", "over TLS\n");
    let encrypted = pg.psql(
        &cfg.url.replace("sslmode=require", "sslmode=disable"),
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
          WHERE s.ssl AND a.application_name = 'pobox tls'",
    );
    assert_ne!(encrypted, "0", "the store's connections use TLS");
    // Without the cluster's certificate among the roots: refused.
    let untrusted = PgConfig {
        ca_file: None,
        ..cfg
    };
    let err = PgStore::connect(untrusted).unwrap_err();
    assert!(err.is_temporary(), "{err}");
}

#[test]
fn callable_from_blocking_threads_and_even_from_inside_another_runtime() {
    if !require("callable_from_blocking_threads_and_even_from_inside_another_runtime") {
        return;
    }
    let pg = TestPg::shared();
    let store = std::sync::Arc::new(PgStore::connect(pg.migrated("rt", 30)).unwrap());
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    server.block_on(async {
        // The server's way: a blocking-pool thread of its own runtime.
        let s = std::sync::Arc::clone(&store);
        tokio::task::spawn_blocking(move || {
            s.deliver("alice", &mut &b"from spawn_blocking\n"[..])
                .unwrap();
            let mb = s.open(&Authenticated::for_tests("alice")).unwrap();
            let mut text = String::new();
            mb.open_message(0)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, "from spawn_blocking\n");
            mb.commit(&[], &[0]).unwrap();
        })
        .await
        .unwrap();
        // Straight from a task (a caller's mistake): slow for that
        // runtime, but no panic.
        store.deliver("alice", &mut &b"from a task\n"[..]).unwrap();
    });
    assert_eq!(store.inspect("alice").unwrap().len(), 2);
}
