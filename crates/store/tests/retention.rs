//! Retention on a real Maildir, with a controlled clock: every time is an
//! argument, so "day 2" and "day 3" are just numbers.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use pobox_identity::Authenticated;
use pobox_store::MailstoreAdmin as _;
use pobox_store::retention::{Days, ExpiryReason, Policy, RetentionConfig};
use pobox_store::{MailLocation, MaildirStore, Mailstore, StoreError};

const DAY: Duration = Duration::from_secs(86_400);

fn store(dir: &tempfile::TempDir, policy: Policy) -> MaildirStore {
    let location = MailLocation::new(format!("{}/{{user}}", dir.path().display())).unwrap();
    MaildirStore::new(location).with_retention(RetentionConfig {
        default: policy,
        users: HashMap::new(),
    })
}

fn deliver(store: &MaildirStore, n: usize) {
    for i in 0..n {
        store
            .deliver(
                "alice",
                &mut format!("Subject: {i}\n\nbody {i}\n").as_bytes(),
            )
            .unwrap();
    }
}

fn uidls(store: &MaildirStore) -> Vec<String> {
    store
        .inspect("alice")
        .unwrap()
        .into_iter()
        .map(|m| m.uidl.into_string())
        .collect()
}

/// Marks message `index` retrieved at `when`, as a session ending does.
fn retrieve(store: &MaildirStore, index: usize, when: SystemTime) {
    let mut mb = store.open(&Authenticated::for_tests("alice")).unwrap();
    mb.record_retrievals(&[index], when).unwrap();
    // Dropped without QUIT: the record must survive anyway.
}

#[test]
fn retrieval_is_recorded_durably_even_without_quit_and_only_first_counts() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, Policy::default());
    deliver(&s, 2);
    let t0 = SystemTime::now();
    retrieve(&s, 0, t0);
    retrieve(&s, 0, t0 + DAY);
    let mb = s.open(&Authenticated::for_tests("alice")).unwrap();
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        mb.messages()[0].retrieved.map(secs),
        Some(secs(t0)),
        "first retrieval wins"
    );
    assert_eq!(mb.messages()[1].retrieved, None);
}

#[test]
fn expire_three_days_keeps_on_day_two_and_removes_after_day_three() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(
        &dir,
        Policy {
            retrieved: Days::After(3),
            ..Policy::default()
        },
    );
    deliver(&s, 2);
    let t0 = SystemTime::now();
    retrieve(&s, 0, t0);
    let report = s.expire("alice", t0 + 2 * DAY, false).unwrap();
    assert!(report.expired.is_empty());
    assert_eq!(uidls(&s).len(), 2);
    let retrieved_uidl = uidls(&s)[0].clone();
    let report = s
        .expire("alice", t0 + 3 * DAY + Duration::from_secs(1), false)
        .unwrap();
    assert_eq!(
        report.expired,
        vec![(retrieved_uidl.clone(), ExpiryReason::Retrieved)]
    );
    let left = uidls(&s);
    assert_eq!(left.len(), 1, "the unretrieved message stays");
    assert!(!left.contains(&retrieved_uidl));
}

#[test]
fn expire_zero_removes_retrieved_messages_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(
        &dir,
        Policy {
            retrieved: Days::After(0),
            ..Policy::default()
        },
    );
    deliver(&s, 3);
    let now = SystemTime::now();
    retrieve(&s, 1, now);
    let report = s.expire("alice", now, false).unwrap();
    assert_eq!(report.expired.len(), 1);
    assert_eq!(uidls(&s).len(), 2);
}

#[test]
fn max_age_removes_old_unretrieved_mail() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(
        &dir,
        Policy {
            max_age: Days::After(30),
            ..Policy::default()
        },
    );
    deliver(&s, 2);
    let now = SystemTime::now();
    assert!(
        s.expire("alice", now + 29 * DAY, false)
            .unwrap()
            .expired
            .is_empty()
    );
    let report = s.expire("alice", now + 31 * DAY, false).unwrap();
    assert_eq!(report.expired.len(), 2);
    assert!(
        report
            .expired
            .iter()
            .all(|(_, r)| *r == ExpiryReason::MaxAge)
    );
    assert!(uidls(&s).is_empty());
}

#[test]
fn restore_window_moves_aside_and_restore_keeps_uidls() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(
        &dir,
        Policy {
            restore_days: 7,
            ..Policy::default()
        },
    );
    deliver(&s, 3);
    let before = uidls(&s);
    // A POP3 session deletes two messages.
    let mb = s.open(&Authenticated::for_tests("alice")).unwrap();
    let report = mb.commit(&[0, 2], &[]).unwrap();
    assert_eq!(report.removed, 2);
    assert_eq!(uidls(&s), vec![before[1].clone()]);
    let removed = s.removed_messages("alice").unwrap();
    assert_eq!(removed.len(), 2);
    assert!(removed.iter().all(|r| r.removed_at.is_some()));
    assert!(dir.path().join("alice/.pobox-deleted/cur").is_dir());

    let restored = s.restore("alice", None, SystemTime::now()).unwrap();
    assert_eq!(restored.len(), 2);
    let mut after = uidls(&s);
    after.sort();
    let mut expected = before.clone();
    expected.sort();
    assert_eq!(after, expected, "restored messages keep their UIDLs");
    assert!(s.removed_messages("alice").unwrap().is_empty());
}

#[test]
fn restore_since_only_brings_back_later_removals() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(
        &dir,
        Policy {
            restore_days: 7,
            max_age: Days::After(10),
            ..Policy::default()
        },
    );
    deliver(&s, 1);
    let now = SystemTime::now();
    // Expired (max age) on day 11: moved aside with that time.
    s.expire("alice", now + 11 * DAY, false).unwrap();
    assert_eq!(s.removed_messages("alice").unwrap().len(), 1);
    assert!(
        s.restore("alice", Some(now + 12 * DAY), now + 12 * DAY)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.restore("alice", Some(now + 10 * DAY), now + 12 * DAY)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn removed_messages_are_purged_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(
        &dir,
        Policy {
            restore_days: 7,
            ..Policy::default()
        },
    );
    deliver(&s, 2);
    let mb = s.open(&Authenticated::for_tests("alice")).unwrap();
    mb.commit(&[0], &[]).unwrap();
    let now = SystemTime::now();
    assert_eq!(s.expire("alice", now + 6 * DAY, false).unwrap().purged, 0);
    assert_eq!(s.removed_messages("alice").unwrap().len(), 1);
    assert_eq!(
        s.expire("alice", now + 7 * DAY + Duration::from_secs(5), false)
            .unwrap()
            .purged,
        1
    );
    assert!(s.removed_messages("alice").unwrap().is_empty());
    assert_eq!(uidls(&s).len(), 1, "the live message is untouched");
}

#[test]
fn without_a_window_deletion_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, Policy::default());
    deliver(&s, 1);
    s.open(&Authenticated::for_tests("alice")).unwrap().commit(&[0], &[]).unwrap();
    assert!(s.removed_messages("alice").unwrap().is_empty());
    assert!(!dir.path().join("alice/.pobox-deleted").exists());
}

#[test]
fn the_log_is_compacted_once_mostly_stale() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(
        &dir,
        Policy {
            retrieved: Days::After(0),
            ..Policy::default()
        },
    );
    let now = SystemTime::now();
    for _ in 0..100 {
        deliver(&s, 1);
        retrieve(&s, 0, now);
        s.expire("alice", now, false).unwrap();
    }
    let log =
        std::fs::read_to_string(dir.path().join("alice/pobox-retention.log")).unwrap_or_default();
    assert!(
        log.lines().count() <= 70,
        "log not compacted: {} lines",
        log.lines().count()
    );
}

#[test]
fn unsynced_named_deliveries_are_idempotent_and_synced_in_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let md = pobox_store::Maildir::open_or_create(dir.path().join("local")).unwrap();
    for i in 0..3 {
        let r = md.deliver_named_unsynced(&format!("acct-{i}"), &mut &b"Subject: x\n\nbody\n"[..], None).unwrap();
        assert!(matches!(r, pobox_store::NamedDelivery::Stored(_)));
    }
    md.sync_new().unwrap();
    let again = md.deliver_named_unsynced("acct-1", &mut &b"Subject: x\n\nbody\n"[..], None).unwrap();
    assert!(matches!(again, pobox_store::NamedDelivery::AlreadyPresent(_)));
    assert_eq!(std::fs::read_dir(dir.path().join("local/new")).unwrap().count(), 3);
}

#[test]
fn indexed_named_deliveries_skip_known_bases_without_rescanning() {
    let dir = tempfile::tempdir().unwrap();
    let md = pobox_store::Maildir::open_or_create(dir.path().join("local")).unwrap();
    md.deliver_named("old-1", &mut &b"x\n"[..], None).unwrap();
    let mut index = md.base_index().unwrap();
    assert_eq!(index.len(), 1);
    let again = md.deliver_named_indexed(&mut index, "old-1", &mut &b"x\n"[..], None).unwrap();
    assert!(matches!(again, pobox_store::NamedDelivery::AlreadyPresent(_)));
    let new = md.deliver_named_indexed(&mut index, "new-1", &mut &b"y\n"[..], None).unwrap();
    assert!(matches!(new, pobox_store::NamedDelivery::Stored(_)));
    assert_eq!(index.len(), 2, "what it stores is recorded");
    let twice = md.deliver_named_indexed(&mut index, "new-1", &mut &b"y\n"[..], None).unwrap();
    assert!(matches!(twice, pobox_store::NamedDelivery::AlreadyPresent(_)));
    md.sync_new().unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join("local/new")).unwrap().count(), 2);
}

/// A configuration reload replaces the policies of the store in use (its
/// lock table and listing cache stay); a clone taken before keeps its own.
#[test]
fn set_policies_replaces_retention_and_size_limit_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let three = Policy { retrieved: Days::After(3), ..Policy::default() };
    let s = store(&dir, three);
    let before = s.clone();
    deliver(&s, 1);
    let t0 = SystemTime::now();
    retrieve(&s, 0, t0);
    assert!(s.expire("alice", t0, false).unwrap().expired.is_empty());
    let zero = Policy { retrieved: Days::After(0), ..Policy::default() };
    s.set_policies(Some(10), RetentionConfig { default: zero, users: HashMap::new() }, Default::default());
    assert_eq!(s.policy("alice").retrieved, Days::After(0));
    assert_eq!(before.policy("alice").retrieved, Days::After(3), "the clone keeps its own");
    assert_eq!(s.expire("alice", t0, false).unwrap().expired.len(), 1);
    let big = s.deliver("alice", &mut &b"Subject: big\n\nmore than ten octets\n"[..]);
    assert!(matches!(big, Err(StoreError::TooLarge { .. })), "{big:?}");
}
