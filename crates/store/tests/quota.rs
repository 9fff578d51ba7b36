//! Quotas and folders on a real Maildir.

use std::collections::HashMap;

use pobox_identity::Authenticated;
use pobox_store::MailstoreAdmin as _;
use pobox_store::quota::{Quota, QuotaConfig, Usage};
use pobox_store::{MailLocation, Mailstore, MaildirStore, StoreError};

fn store(dir: &tempfile::TempDir, quota: Quota) -> MaildirStore {
    let location = MailLocation::new(format!("{}/{{user}}", dir.path().display())).unwrap();
    MaildirStore::new(location).with_quota(QuotaConfig { default: quota, users: HashMap::new() })
}

#[test]
fn message_quota_refuses_the_next_delivery_and_frees_up_after_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, Quota { bytes: None, messages: Some(2) });
    s.deliver("u", &mut &b"a\n"[..]).unwrap();
    s.deliver("u", &mut &b"b\n"[..]).unwrap();
    assert!(matches!(s.deliver("u", &mut &b"c\n"[..]), Err(StoreError::OverQuota(_))));
    assert_eq!(s.usage("u").unwrap().0, Usage { bytes: 6, messages: 2 });
    // A POP3 session deletes one: room again, without a rescan.
    s.open(&Authenticated::for_tests("u")).unwrap().commit(&[0], &[]).unwrap();
    assert_eq!(s.usage("u").unwrap().0, Usage { bytes: 3, messages: 1 });
    s.deliver("u", &mut &b"c\n"[..]).unwrap();
}

#[test]
fn byte_quota_refuses_while_streaming_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, Quota { bytes: Some(100), messages: None });
    s.deliver("u", &mut vec![b'x'; 60].as_slice()).unwrap();
    let big = vec![b'y'; 50];
    assert!(matches!(s.deliver("u", &mut big.as_slice()), Err(StoreError::OverQuota(_))));
    assert_eq!(std::fs::read_dir(dir.path().join("u/tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("u/new")).unwrap().count(), 1);
    s.deliver("u", &mut vec![b'z'; 30].as_slice()).unwrap();
}

#[test]
fn usage_survives_a_lost_or_stale_maildirsize() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, Quota { bytes: Some(1000), messages: Some(10) });
    for _ in 0..3 {
        s.deliver("u", &mut &b"abc\n"[..]).unwrap();
    }
    std::fs::remove_file(dir.path().join("u/maildirsize")).unwrap();
    assert_eq!(s.usage("u").unwrap().0, Usage { bytes: 15, messages: 3 });
    std::fs::write(dir.path().join("u/maildirsize"), "garbage\n1 1\n").unwrap();
    assert_eq!(s.usage("u").unwrap().0, Usage { bytes: 15, messages: 3 });
}

#[test]
fn folders_are_separate_validated_and_releasable() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, Quota::default());
    let d = s.deliver_to_folder("u", "Junk", &mut &b"Subject: spam?\n\nhi\n"[..]).unwrap();
    assert!(std::path::Path::new(&d.location).starts_with(dir.path().join("u/.Junk/new")));
    assert!(s.open(&Authenticated::for_tests("u")).unwrap().messages().is_empty(), "POP3 does not see folders");
    for bad in ["", "../x", ".hidden", "a/b", "INBOX", "a..b"] {
        assert!(matches!(s.deliver_to_folder("u", bad, &mut &b"x\n"[..]), Err(StoreError::InvalidFolder(_))), "{bad}");
    }
    let released = s.release("u", "Junk", d.uidl.as_str()).unwrap();
    assert!(std::path::Path::new(&released).starts_with(dir.path().join("u/new")));
    let mb = s.open(&Authenticated::for_tests("u")).unwrap();
    assert_eq!(mb.messages().len(), 1);
    assert_eq!(mb.messages()[0].uidl, d.uidl, "released intact, same UIDL");
    drop(mb);
    assert!(matches!(s.release("u", "Junk", d.uidl.as_str()), Err(StoreError::Vanished(_))));
}
