//! Times `MaildirStore::open` on a big maildrop: cold (a fresh store, so
//! an empty listing cache: a full scan) and warm (the same store again).
//!
//! ```text
//! cargo run --release -p pobox-store --example open_bench -- [MESSAGES] [DIR]
//! ```
//!
//! Builds `DIR/bench/Maildir` (default `/tmp/pobox-open-bench`, 100,000
//! messages) on first use, the way the `big-maildrop` benchmark does:
//! Dovecot-style names `<base>,S=<n>,W=<n>:2,` in `cur/`, tiny files. The
//! directories' mtimes are then set an hour back, as for a maildrop that
//! has been sitting there (the cache only keeps listings of directories
//! that have been stable for a while).

use std::fs::{self, File, FileTimes};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use pobox_identity::Authenticated;
use pobox_store::{MailLocation, MaildirStore, Mailstore};

fn build(maildir: &Path, count: usize) {
    let cur = maildir.join("cur");
    let marker = maildir.join("bench-complete");
    if marker.exists() {
        return;
    }
    if maildir.exists() {
        fs::remove_dir_all(maildir).unwrap();
    }
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let body = b"Subject: x\n\nbody\n";
    let wire = body.len() + body.iter().filter(|&&b| b == b'\n').count();
    for seq in 0..count {
        let name = format!(
            "{}.M{}P4242.benchhost,S={},W={}:2,",
            1_700_000_000 + seq,
            seq % 1_000_000,
            body.len(),
            wire
        );
        fs::write(cur.join(name), body).unwrap();
    }
    let past = SystemTime::now() - Duration::from_secs(3600);
    for sub in ["cur", "new"] {
        File::open(maildir.join(sub))
            .unwrap()
            .set_times(FileTimes::new().set_modified(past))
            .unwrap();
    }
    fs::write(marker, b"").unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .map_or(100_000, |a| a.parse().expect("MESSAGES"));
    let dir = args
        .next()
        .unwrap_or_else(|| "/tmp/pobox-open-bench".into());
    let location = MailLocation::new(format!("{dir}/{{user}}/Maildir")).unwrap();
    let store = MaildirStore::new(location.clone());
    let maildir = store.location().path_for("bench").unwrap();
    build(&maildir, count);

    let open = |store: &MaildirStore| {
        let t = Instant::now();
        let mailbox = store.open(&Authenticated::for_tests("bench")).unwrap();
        let elapsed = t.elapsed();
        assert_eq!(mailbox.messages().len(), count);
        elapsed
    };
    // Warm the kernel's dentry and inode caches first.
    open(&MaildirStore::new(location.clone()));

    let runs = 9;
    let cold: Vec<_> = (0..runs)
        .map(|_| open(&MaildirStore::new(location.clone())))
        .collect();
    open(&store);
    let warm: Vec<_> = (0..runs).map(|_| open(&store)).collect();
    println!("{count} messages in {}", maildir.display());
    println!(
        "open cold (fresh store, full scan): median {:?} (min {:?})",
        median(cold.clone()),
        cold.iter().min().unwrap()
    );
    println!(
        "open warm (same store again):       median {:?} (min {:?})",
        median(warm.clone()),
        warm.iter().min().unwrap()
    );
}
