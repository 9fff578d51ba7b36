//! The storage port's behaviour suite (`suite/mod.rs`, shared with the
//! PostgreSQL backend's `crates/store-pg/tests/behaviour.rs`) against
//! [`MaildirStore`] and [`MemoryStore`].
//!
//! Backend-specific behaviour (Maildir's on-disk format, symlinks, fsync)
//! stays in the other files of this directory.

include!("suite/mod.rs");

use pobox_store::{MailLocation, MaildirStore, MemoryStore};

fn maildir(setup: Setup) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let location = MailLocation::new(format!("{}/{{user}}", dir.path().display())).unwrap();
    let mut store = MaildirStore::new(location).with_retention(retention(setup.policy)).with_quota(quota(setup.quota));
    if let Some(max) = setup.max_size {
        store = store.with_max_size(max);
    }
    Fixture { store: Box::new(store), _keep: Some(Box::new(dir)) }
}

fn memory(setup: Setup) -> Fixture {
    let mut store = MemoryStore::new().with_retention(retention(setup.policy)).with_quota(quota(setup.quota));
    if let Some(max) = setup.max_size {
        store = store.with_max_size(max);
    }
    Fixture { store: Box::new(store), _keep: None }
}

behaviour_suite!(maildir_store, super::maildir);
behaviour_suite!(memory_store, super::memory);
