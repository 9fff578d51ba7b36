// The storage port's behaviour suite: every test here runs against every
// backend. Included (with `include!`) by `crates/store/tests/behaviour.rs`
// (Maildir, Memory) and `crates/store-pg/tests/behaviour.rs`
// (PostgreSQL), which each define their constructors and instantiate the
// suite with `behaviour_suite!(module, constructor)`. One body of tests,
// so a rule one backend breaks fails there; a new test goes here and runs
// on every backend.
//
// What a POP3 client or an admin can observe must be the same whatever
// stores the mail: locking, snapshot sizes and bytes, UIDL stability,
// UPDATE, retention (expiry at open, EXPIRE 0, the restore area), quota,
// folders, import and policy reload.

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, SystemTime};

use pobox_store::quota::{Quota, QuotaConfig, Usage};
use pobox_store::retention::{Days, ExpiryReason, Policy, RetentionConfig};
use pobox_store::{ImportOutcome, MailstoreAdmin, StoreError, Uidl};

const DAY: Duration = Duration::from_secs(86_400);

/// What a test configures; each backend builds a store from it.
#[derive(Default)]
struct Setup {
    policy: Policy,
    quota: Quota,
    max_size: Option<u64>,
}

/// A store and whatever must live as long as it (Maildir's directory).
struct Fixture {
    store: Box<dyn MailstoreAdmin>,
    _keep: Option<Box<dyn std::any::Any>>,
}

impl std::ops::Deref for Fixture {
    type Target = dyn MailstoreAdmin;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

fn retention(policy: Policy) -> RetentionConfig {
    RetentionConfig { default: policy, users: HashMap::new() }
}

fn quota(quota: Quota) -> QuotaConfig {
    QuotaConfig { default: quota, users: HashMap::new() }
}

type Make = fn(Setup) -> Fixture;

fn deliver(s: &Fixture, user: &str, msg: &str) -> pobox_store::Delivered {
    s.deliver(user, &mut msg.as_bytes()).unwrap()
}

fn read(mb: &dyn pobox_store::Mailbox, i: usize) -> Vec<u8> {
    let mut out = Vec::new();
    mb.open_message(i).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn uidls(s: &Fixture, user: &str) -> Vec<String> {
    s.inspect(user).unwrap().into_iter().map(|m| m.uidl.into_string()).collect()
}

fn a_new_user_has_an_empty_maildrop(make: Make) {
    let s = make(Setup::default());
    let mb = s.open("alice").unwrap();
    assert!(mb.messages().is_empty());
    assert_eq!(mb.user(), "alice");
}

fn unusable_user_names_are_refused(make: Make) {
    let s = make(Setup::default());
    for bad in ["", "../x", ".hidden", "a/b"] {
        assert!(matches!(s.open(bad), Err(StoreError::NoSuchUser(_))), "{bad:?}");
        assert!(matches!(s.deliver(bad, &mut &b"x\n"[..]), Err(StoreError::NoSuchUser(_))), "{bad:?}");
    }
}

fn sizes_are_exact_wire_octets_and_bytes_are_stored_with_lf(make: Make) {
    let s = make(Setup::default());
    // CRLF and LF lines, no final newline: 4 lines of wire text.
    let d = deliver(&s, "alice", "Subject: a\r\n\r\nline\nlast");
    let wire = "Subject: a\r\n\r\nline\r\nlast\r\n".len() as u64;
    assert_eq!(d.size, wire);
    let mb = s.open("alice").unwrap();
    assert_eq!(mb.messages().len(), 1);
    assert_eq!(mb.messages()[0].size, wire);
    assert_eq!(mb.messages()[0].uidl, d.uidl, "Delivered names the UIDL the listing shows");
    assert_eq!(read(&*mb, 0), b"Subject: a\n\nline\nlast\n");
    assert!(matches!(mb.open_message(1), Err(StoreError::NoSuchMessage { index: 1 })));
}

fn one_session_per_maildrop_and_drop_releases_without_changes(make: Make) {
    let s = make(Setup::default());
    deliver(&s, "alice", "a\n");
    let first = s.open("alice").unwrap();
    let err = s.open("alice").err().expect("a second session must be refused");
    assert!(matches!(err, StoreError::InUse), "{err:?}");
    assert!(err.is_temporary(), "[IN-USE] is temporary");
    s.open("bob").expect("another user's maildrop is independent");
    drop(first);
    let again = s.open("alice").expect("released on drop");
    assert_eq!(again.messages().len(), 1, "no UPDATE without commit");
}

fn mail_delivered_during_a_session_waits_for_the_next(make: Make) {
    let s = make(Setup::default());
    deliver(&s, "alice", "a\n");
    let mb = s.open("alice").unwrap();
    deliver(&s, "alice", "b\n");
    assert_eq!(mb.messages().len(), 1, "the snapshot is fixed");
    mb.commit(&[], &[]).unwrap();
    assert_eq!(s.open("alice").unwrap().messages().len(), 2);
}

fn uidls_are_stable_unique_and_never_reused(make: Make) {
    let s = make(Setup::default());
    for i in 0..3 {
        deliver(&s, "alice", &format!("m{i}\n"));
    }
    let before = uidls(&s, "alice");
    let mut unique = before.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3);
    s.open("alice").unwrap().commit(&[], &[0]).unwrap();
    assert_eq!(uidls(&s, "alice"), before, "same UIDLs after a session");
    s.open("alice").unwrap().commit(&[1], &[]).unwrap();
    let d = deliver(&s, "alice", "m1\n");
    assert!(!before.contains(&d.uidl.as_str().to_owned()), "a deleted message's UIDL is not reused");
    assert_eq!(uidls(&s, "alice"), vec![before[0].clone(), before[2].clone(), d.uidl.into_string()]);
}

fn commit_removes_exactly_the_marked_messages(make: Make) {
    let s = make(Setup::default());
    for i in 0..4 {
        deliver(&s, "alice", &format!("m{i}\n"));
    }
    let before = uidls(&s, "alice");
    let report = s.open("alice").unwrap().commit(&[1, 3, 3], &[]).unwrap();
    assert_eq!((report.removed, report.restorable, report.failed), (2, 0, 0));
    assert_eq!(uidls(&s, "alice"), vec![before[0].clone(), before[2].clone()]);
    let err = s.open("alice").unwrap().commit(&[0, 5], &[]).unwrap_err();
    assert!(matches!(err, StoreError::NoSuchMessage { index: 5 }));
    assert_eq!(uidls(&s, "alice").len(), 2, "nothing removed on a bad index");
}

fn commit_records_retrievals_once(make: Make) {
    let s = make(Setup::default());
    deliver(&s, "alice", "a\n");
    deliver(&s, "alice", "b\n");
    let t0 = SystemTime::now() - DAY;
    let mut mb = s.open("alice").unwrap();
    mb.record_retrievals(&[0], t0).unwrap();
    mb.commit(&[], &[0, 1]).unwrap();
    let listed = s.inspect("alice").unwrap();
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(listed[0].retrieved.map(secs), Some(secs(t0)), "only the first retrieval counts");
    assert!(listed[1].retrieved.is_some(), "commit records what the session retrieved");
    let mb = s.open("alice").unwrap();
    assert!(mb.messages().iter().all(|m| m.retrieved.is_some()), "a session sees the records");
}

fn expire_zero_removes_what_the_session_retrieved(make: Make) {
    let s = make(Setup { policy: Policy { retrieved: Days::After(0), ..Policy::default() }, ..Setup::default() });
    for i in 0..3 {
        deliver(&s, "alice", &format!("m{i}\n"));
    }
    let before = uidls(&s, "alice");
    let mb = s.open("alice").unwrap();
    assert_eq!(mb.removals(&[2], &[0]), vec![0, 2]);
    let report = mb.commit(&[2], &[0]).unwrap();
    assert_eq!(report.removed, 2);
    assert_eq!(uidls(&s, "alice"), vec![before[1].clone()]);
}

fn without_expire_zero_retrieved_mail_stays(make: Make) {
    let s = make(Setup { policy: Policy { retrieved: Days::After(3), ..Policy::default() }, ..Setup::default() });
    deliver(&s, "alice", "a\n");
    let mb = s.open("alice").unwrap();
    assert_eq!(mb.removals(&[], &[0]), Vec::<usize>::new());
    mb.commit(&[], &[0]).unwrap();
    assert_eq!(uidls(&s, "alice").len(), 1);
}

fn open_expires_retrieved_mail_before_the_snapshot(make: Make) {
    let s = make(Setup { policy: Policy { retrieved: Days::After(1), ..Policy::default() }, ..Setup::default() });
    deliver(&s, "alice", "old\n");
    deliver(&s, "alice", "fresh\n");
    let mut mb = s.open("alice").unwrap();
    mb.record_retrievals(&[0], SystemTime::now() - 2 * DAY).unwrap();
    drop(mb);
    let mb = s.open("alice").unwrap();
    assert_eq!(mb.messages().len(), 1, "expired at login, never offered again");
    assert_eq!(read(&*mb, 0), b"fresh\n");
    let report = mb.expired_at_open();
    assert_eq!(report.expired.len(), 1);
    assert_eq!(report.expired[0].1, ExpiryReason::Retrieved);
}

fn expiry_skips_a_held_maildrop_and_dry_run_changes_nothing(make: Make) {
    let s = make(Setup { policy: Policy { max_age: Days::After(1), ..Policy::default() }, ..Setup::default() });
    deliver(&s, "alice", "a\n");
    deliver(&s, "alice", "b\n");
    let later = SystemTime::now() + 2 * DAY;
    let session = s.open("alice").unwrap();
    let report = s.expire("alice", later, false).unwrap();
    assert!(report.skipped_in_use);
    assert!(report.expired.is_empty());
    drop(session);
    let dry = s.expire("alice", later, true).unwrap();
    assert_eq!(dry.expired.len(), 2);
    assert_eq!(uidls(&s, "alice").len(), 2, "a dry run changes nothing");
    let report = s.expire("alice", later, false).unwrap();
    assert_eq!(report.expired.iter().map(|e| e.1).collect::<Vec<_>>(), [ExpiryReason::MaxAge; 2]);
    assert!(uidls(&s, "alice").is_empty());
}

fn removed_mail_is_restorable_within_the_window_and_purged_after(make: Make) {
    let s = make(Setup { policy: Policy { restore_days: 7, ..Policy::default() }, ..Setup::default() });
    for i in 0..3 {
        deliver(&s, "alice", &format!("m{i}\n"));
    }
    let before = uidls(&s, "alice");
    let report = s.open("alice").unwrap().commit(&[0, 2], &[]).unwrap();
    assert_eq!((report.removed, report.restorable), (2, 2));
    let mut removed: Vec<String> = s.removed_messages("alice").unwrap().into_iter().map(|m| m.uidl).collect();
    removed.sort();
    let mut want = vec![before[0].clone(), before[2].clone()];
    want.sort();
    assert_eq!(removed, want);
    // A session holds the maildrop: restore waits for it to end.
    let session = s.open("alice").unwrap();
    assert!(matches!(s.restore("alice", None, SystemTime::now()), Err(StoreError::InUse)));
    drop(session);
    let mut restored = s.restore("alice", None, SystemTime::now()).unwrap();
    restored.sort();
    assert_eq!(restored, want);
    let mut now = uidls(&s, "alice");
    now.sort();
    let mut all = before.clone();
    all.sort();
    assert_eq!(now, all, "restored with their UIDLs");
    assert!(s.removed_messages("alice").unwrap().is_empty());
    // Removed again, then past the window: purged for good.
    s.open("alice").unwrap().commit(&[0], &[]).unwrap();
    assert_eq!(s.expire("alice", SystemTime::now() + 3 * DAY, false).unwrap().purged, 0);
    assert_eq!(s.expire("alice", SystemTime::now() + 8 * DAY, false).unwrap().purged, 1);
    assert!(s.removed_messages("alice").unwrap().is_empty());
    assert!(s.restore("alice", None, SystemTime::now()).unwrap().is_empty());
}

fn without_a_window_removal_is_final(make: Make) {
    let s = make(Setup::default());
    deliver(&s, "alice", "a\n");
    let report = s.open("alice").unwrap().commit(&[0], &[]).unwrap();
    assert_eq!((report.removed, report.restorable), (1, 0));
    assert!(s.removed_messages("alice").unwrap().is_empty());
    assert!(s.restore("alice", None, SystemTime::now()).unwrap().is_empty());
}

fn purge_removes_everything_but_not_under_a_session(make: Make) {
    let s = make(Setup::default());
    deliver(&s, "alice", "a\n");
    deliver(&s, "alice", "b\n");
    let session = s.open("alice").unwrap();
    assert!(matches!(s.purge("alice", SystemTime::now()), Err(StoreError::InUse)));
    drop(session);
    assert_eq!(s.purge("alice", SystemTime::now()).unwrap().removed, 2);
    assert!(uidls(&s, "alice").is_empty());
    assert!(s.removed_messages("alice").unwrap().is_empty(), "no window: final");
}

fn purge_with_a_window_keeps_mail_restorable(make: Make) {
    let s = make(Setup { policy: Policy { restore_days: 1, ..Policy::default() }, ..Setup::default() });
    let d = deliver(&s, "alice", "a\n");
    let report = s.purge("alice", SystemTime::now()).unwrap();
    assert_eq!((report.removed, report.restorable), (1, 1));
    assert_eq!(s.removed_messages("alice").unwrap().len(), 1);
    assert_eq!(s.restore("alice", None, SystemTime::now()).unwrap(), vec![d.uidl.into_string()]);
}

fn size_limit_refuses_and_keeps_nothing(make: Make) {
    let s = make(Setup { max_size: Some(10), ..Setup::default() });
    assert!(matches!(s.deliver("alice", &mut &b"0123456789abc\n"[..]), Err(StoreError::TooLarge { limit: 10 })));
    assert!(uidls(&s, "alice").is_empty());
    deliver(&s, "alice", "short\n");
}

fn quota_counts_wire_octets_and_refuses_over_it(make: Make) {
    let s = make(Setup { quota: Quota { bytes: Some(20), messages: Some(2) }, ..Setup::default() });
    assert_eq!(s.quota_full("alice").unwrap(), None);
    deliver(&s, "alice", "abc\n");
    assert_eq!(s.usage("alice").unwrap().0, Usage { bytes: 5, messages: 1 });
    assert!(matches!(s.deliver("alice", &mut &b"0123456789012345678\n"[..]), Err(StoreError::OverQuota(_))));
    assert_eq!(s.quota_exceeded_by("alice", 16).unwrap(), Some(Usage { bytes: 5, messages: 1 }));
    deliver(&s, "alice", "x\n");
    assert_eq!(s.quota_full("alice").unwrap(), Some(Usage { bytes: 8, messages: 2 }), "message count reached");
    assert!(matches!(s.deliver("alice", &mut &b"y\n"[..]), Err(StoreError::OverQuota(_))));
    s.open("alice").unwrap().commit(&[0], &[]).unwrap();
    assert_eq!(s.usage("alice").unwrap().0, Usage { bytes: 3, messages: 1 });
}

fn folders_are_hidden_from_pop3_and_releasable(make: Make) {
    let s = make(Setup::default());
    let d = s.deliver_to_folder("alice", "Junk", &mut &b"Subject: spam?\n\nhi\n"[..]).unwrap();
    assert!(s.open("alice").unwrap().messages().is_empty(), "POP3 does not see folders");
    for bad in ["", "../x", ".hidden", "a/b", "INBOX", "a..b"] {
        assert!(
            matches!(s.deliver_to_folder("alice", bad, &mut &b"x\n"[..]), Err(StoreError::InvalidFolder(_))),
            "{bad}"
        );
    }
    s.release("alice", "Junk", d.uidl.as_str()).unwrap();
    let mb = s.open("alice").unwrap();
    assert_eq!(mb.messages().len(), 1);
    assert_eq!(mb.messages()[0].uidl, d.uidl, "released intact, same UIDL");
    assert_eq!(read(&*mb, 0), b"Subject: spam?\n\nhi\n");
    drop(mb);
    assert!(matches!(s.release("alice", "Junk", d.uidl.as_str()), Err(StoreError::Vanished(_))));
}

fn inspect_and_head_list_without_locking(make: Make) {
    let s = make(Setup::default());
    deliver(&s, "alice", "Subject: hello\n\nbody\n");
    let _session = s.open("alice").unwrap();
    let listed = s.inspect("alice").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(s.head("alice", &listed[0], 14).unwrap(), b"Subject: hello");
    assert_eq!(s.head("alice", &listed[0], 1000).unwrap(), b"Subject: hello\n\nbody\n");
}

fn import_keeps_uidl_and_time_and_is_idempotent(make: Make) {
    let s = make(Setup::default());
    let fresh = deliver(&s, "alice", "fresh\n");
    let uidl = Uidl::try_from("imported-0001").unwrap();
    let received = SystemTime::now() - 2 * DAY;
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let outcome = s.import_message("alice", &uidl, received, &mut &b"Subject: old\r\n\r\nbody"[..]).unwrap();
    let ImportOutcome::Imported(d) = outcome else { panic!("{outcome:?}") };
    assert_eq!(d.uidl, uidl);
    assert_eq!(d.size, "Subject: old\r\n\r\nbody\r\n".len() as u64);
    let again = s.import_message("alice", &uidl, received, &mut &b"other\n"[..]).unwrap();
    assert_eq!(again, ImportOutcome::AlreadyPresent, "idempotent by UIDL");
    let listed = s.inspect("alice").unwrap();
    assert_eq!(listed.len(), 2, "nothing stored twice");
    assert_eq!(listed[0].uidl, uidl, "ordered by its delivery time, before newer mail");
    assert_eq!(secs(listed[0].received), secs(received));
    assert_eq!(listed[1].uidl, fresh.uidl);
    let mb = s.open("alice").unwrap();
    assert_eq!(read(&*mb, 0), b"Subject: old\n\nbody\n");
    let other = Uidl::try_from("imported-0002").unwrap();
    let err = s.import_message("alice", &other, received, &mut &b"x\n"[..]).unwrap_err();
    assert!(matches!(err, StoreError::InUse), "a session holds the maildrop: {err:?}");
    drop(mb);
    assert_eq!(s.usage("alice").unwrap().0.messages, 2, "imports count in the usage");
}

fn set_policies_applies_to_new_operations_only(make: Make) {
    let s = make(Setup::default());
    deliver(&s, "alice", "a\n");
    let session = s.open("alice").unwrap();
    let window = Policy { restore_days: 3, ..Policy::default() };
    s.set_policies(Some(5), retention(window), quota(Quota { bytes: None, messages: Some(1) }));
    assert_eq!(session.policy().restore_days, 0, "an open maildrop keeps its policy");
    assert_eq!(s.policy("alice").restore_days, 3);
    assert_eq!(s.retention().default, window);
    assert!(matches!(s.deliver("bob", &mut &b"0123456789\n"[..]), Err(StoreError::TooLarge { limit: 5 })));
    assert!(matches!(s.deliver("alice", &mut &b"b\n"[..]), Err(StoreError::OverQuota(_))));
    let report = session.commit(&[0], &[]).unwrap();
    assert_eq!(report.restorable, 0, "the session's own policy: no window");
}

/// Instantiates every test of the suite for one backend: `$module` holds
/// one `#[test]` per suite function, each calling it with `$make`. With
/// `if $ready`, each test first calls `$ready()` and ends (skipped) when
/// it returns false: for a backend that needs an outside program, whose
/// absence `$ready` turns into a failure unless skipping is allowed.
macro_rules! behaviour_suite {
    ($module:ident, $make:path) => {
        behaviour_suite!($module, $make, if (|_: &str| true));
    };
    ($module:ident, $make:path, if $ready:expr) => {
        behaviour_suite!(@tests $module, $make, $ready, a_new_user_has_an_empty_maildrop, unusable_user_names_are_refused, sizes_are_exact_wire_octets_and_bytes_are_stored_with_lf, one_session_per_maildrop_and_drop_releases_without_changes, mail_delivered_during_a_session_waits_for_the_next, uidls_are_stable_unique_and_never_reused, commit_removes_exactly_the_marked_messages, commit_records_retrievals_once, expire_zero_removes_what_the_session_retrieved, without_expire_zero_retrieved_mail_stays, open_expires_retrieved_mail_before_the_snapshot, expiry_skips_a_held_maildrop_and_dry_run_changes_nothing, removed_mail_is_restorable_within_the_window_and_purged_after, without_a_window_removal_is_final, purge_removes_everything_but_not_under_a_session, purge_with_a_window_keeps_mail_restorable, size_limit_refuses_and_keeps_nothing, quota_counts_wire_octets_and_refuses_over_it, folders_are_hidden_from_pop3_and_releasable, inspect_and_head_list_without_locking, import_keeps_uidl_and_time_and_is_idempotent, set_policies_applies_to_new_operations_only);
    };
    (@tests $module:ident, $make:path, $ready:expr, $($test:ident),* $(,)?) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    if $ready(stringify!($test)) {
                        super::$test($make)
                    }
                }
            )*
        }
    };
}
