//! User enumeration: an unknown user must get the same answer *and* cost
//! the same work as a wrong password. Work is counted, not timed (timing
//! assertions are flaky on shared CI machines): both paths must run exactly
//! one Argon2 verification with the default parameters. Its own test binary,
//! because the counter is process-wide.

use pobox_auth::{AuthError, UserDb, hash};

#[test]
fn unknown_user_costs_one_argon2_like_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let db = UserDb::open(dir.path().join("passwd"));
    db.add("alice", b"correct horse").unwrap();
    db.verify("alice", b"correct horse").unwrap(); // load the file

    let before = hash::argon2_verifications();
    let wrong = db.verify("alice", b"wrong").unwrap_err();
    let after_wrong = hash::argon2_verifications();
    let unknown = db.verify("mallory", b"wrong").unwrap_err();
    let after_unknown = hash::argon2_verifications();

    assert!(matches!(wrong, AuthError::InvalidCredentials));
    assert!(matches!(unknown, AuthError::InvalidCredentials));
    assert_eq!(wrong.to_string(), unknown.to_string(), "same text for both");
    assert_eq!(after_wrong - before, 1, "a wrong password runs one Argon2");
    assert_eq!(after_unknown - after_wrong, 1, "an unknown user runs one Argon2 too");

    unknown_user_costs_as_much_for_a_password_saslprep_changes();
}

/// A password SASLprep changes is checked twice (prepared, then raw for
/// legacy hashes); an unknown user must cost the same two verifications.
/// Called from the test above: the counter is process-wide and tests in one
/// binary run in parallel.
fn unknown_user_costs_as_much_for_a_password_saslprep_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = UserDb::open(dir.path().join("passwd"));
    db.add("alice", b"correct horse").unwrap();
    db.verify("alice", b"correct horse").unwrap(); // load the file
    let password = "\u{FF30}ässwörd\u{00A0}1".as_bytes();

    let before = hash::argon2_verifications();
    assert!(db.verify("alice", password).is_err());
    let after_wrong = hash::argon2_verifications();
    assert!(db.verify("mallory", password).is_err());
    let after_unknown = hash::argon2_verifications();

    assert_eq!(after_wrong - before, 2, "prepared form, then raw bytes");
    assert_eq!(after_unknown - after_wrong, 2, "an unknown user runs two Argon2 too");
}
