//! The storage port's behaviour suite (`crates/store/tests/suite/mod.rs`,
//! the same file Maildir and Memory run) against [`PgStore`] on a
//! throwaway PostgreSQL 15 cluster: one fresh database per test.

include!("../../store/tests/suite/mod.rs");

use pobox_store_pg::PgStore;
use pobox_store_pg::testkit::{TestPg, require};

fn postgres(setup: Setup) -> Fixture {
    let cfg = TestPg::shared().migrated("behaviour", 30);
    let mut store = PgStore::connect(cfg)
        .unwrap()
        .with_retention(retention(setup.policy))
        .with_quota(quota(setup.quota));
    if let Some(max) = setup.max_size {
        store = store.with_max_size(max);
    }
    Fixture {
        store: Box::new(store),
        _keep: None,
    }
}

behaviour_suite!(pg_store, super::postgres, if super::require);
