//! The Dovecot-format passwd-file parser (`pobox_auth::UserDb`) on arbitrary
//! file contents, through its public API (the parser itself is private): the
//! file is written to a temp file and loaded. No panic; every listed user is
//! a valid user name and is found again by `exists`; warnings never repeat
//! the secret part of a line; loading the same bytes twice gives the same
//! result. (`verify` is left out: argon2 costs make it ~1 exec/s.)
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pobox_auth::userdb::{UserDb, valid_username};

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new().prefix("pobox-fuzz-passwd").tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap()
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("users");
    std::fs::write(&path, data).unwrap();
    let db = UserDb::open(&path);
    let Ok(list) = db.list() else { return };
    for user in &list {
        assert!(valid_username(user), "listed an invalid user name {user:?}");
        assert_eq!(db.exists(user).ok(), Some(true), "listed {user:?} but exists() says no");
        let _ = db.fingerprint(user);
        let _ = db.scram_secret(user);
    }
    let entries = db.entries().expect("entries after list");
    assert_eq!(entries.len(), list.len());
    let _ = db.warnings();
    let _ = db.has_scram();
    // Same bytes, fresh database: same users.
    let again = UserDb::open(&path);
    assert_eq!(again.list().unwrap(), list);
});
