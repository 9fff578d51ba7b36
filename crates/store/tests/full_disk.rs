//! UPDATE on a full disk (issue 17, finding 6): the messages are moved to
//! the restore area (renames need no free blocks), but the retention log
//! cannot grow. The commit report must say what happened: removed, and
//! restorable; nothing lost.
//!
//! Needs root to mount a small tmpfs; without it the test says so loudly
//! and passes vacuously (CI runs as root).

// The test fills the filesystem with a plain file.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use pobox_identity::Authenticated;
use pobox_store::MailstoreAdmin as _;
use pobox_store::retention::{Policy, RetentionConfig};
use pobox_store::{MailLocation, MaildirStore, Mailstore};

/// A tmpfs mounted for the test, unmounted (lazily if busy) on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes into `path` until the filesystem says it is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![b'x'; 4096];
    for _ in 0..100_000 {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    panic!("{} never filled up", path.display());
}

#[test]
fn update_on_a_full_disk_reports_the_messages_removed_and_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let Some(mount) = Mount::tmpfs(&mnt, "256k") else {
        eprintln!("full_disk: SKIPPED LOUDLY: cannot mount a tmpfs; run as root");
        return;
    };
    let policy = Policy { restore_days: 7, ..Policy::default() };
    let store = MaildirStore::new(MailLocation::new(format!("{}/mail/{{user}}", mnt.display())).unwrap())
        .with_retention(RetentionConfig { default: policy, users: HashMap::new() });
    for i in 0..2 {
        store.deliver("eve", &mut format!("Subject: {i}\n\nbody {i}\n").as_bytes()).unwrap();
    }
    let uidls: Vec<String> = store.inspect("eve").unwrap().into_iter().map(|m| m.uidl.into_string()).collect();
    let filler = mnt.join("filler");
    fill(&filler);

    let mb = store.open(&Authenticated::for_tests("eve")).unwrap();
    let report = match mb.commit(&[0, 1], &[]) {
        Ok(r) => r,
        Err(e) => panic!("UPDATE on a full disk failed as a whole ({e}) although both messages were moved aside"),
    };
    assert_eq!((report.removed, report.failed), (2, 0), "{report:?}");
    assert_eq!(report.restorable, 2, "{report:?}");
    assert!(store.inspect("eve").unwrap().is_empty(), "the messages are out of the maildrop");
    let removed: Vec<String> = store.removed_messages("eve").unwrap().into_iter().map(|m| m.uidl).collect();
    assert_eq!(sorted(removed), sorted(uidls.clone()), "both are in the restore area");

    // With room again, they come back under the same UIDLs.
    std::fs::remove_file(&filler).unwrap();
    let mut restored = store.restore("eve", None, SystemTime::now()).unwrap();
    restored.sort();
    assert_eq!(restored, sorted(uidls.clone()));
    let back: Vec<String> = store.inspect("eve").unwrap().into_iter().map(|m| m.uidl.into_string()).collect();
    assert_eq!(sorted(back), sorted(uidls));
    drop(store);
    drop(mount);
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}
