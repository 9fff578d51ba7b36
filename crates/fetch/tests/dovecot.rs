//! `pobox fetch` against a private Dovecot (Debian's dovecot-pop3d) on
//! loopback: TLS and STARTTLS, delete and keep modes, SCRAM, mbox and MDA
//! destinations, dry-run, the TLS refusal cases, and a `ca_file` holding an
//! `openssl req -x509` certificate. Fails without Dovecot unless
//! `POBOX_ALLOW_SKIP=1` (see `common::require`).

mod common;

use common::*;

fn tls_extra(dv: &Dovecot) -> String {
    format!("security = \"tls\"\nca_file = \"{}\"\n", dv.cert.display())
}

#[test]
fn tls_delete_mode_fetches_everything_once_and_empties_the_server() {
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(40, "tls-delete");
    dv.deliver(&msgs);
    let s = Setup::new(dv.pop3s, "localhost", &tls_extra(&dv));
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("acct: 40 fetched"), "{}", show(&o));
    assert_exactly_once_clean(&s.maildir, &msgs);
    assert_eq!(dv.server_count(), 0, "delete mode must empty the maildrop");
    let o = s.run(&[]);
    assert_eq!(code(&o), 1, "second run has nothing new: {}", show(&o));
    assert_exactly_once_clean(&s.maildir, &msgs);
}

#[test]
fn starttls_keep_mode_fetches_only_new_uidls() {
    let Some(dv) = Dovecot::start() else { return };
    let first = messages(15, "keep-a");
    dv.deliver(&first);
    let extra = format!("security = \"starttls\"\nca_file = \"{}\"\nkeep = true\n", dv.cert.display());
    let s = Setup::new(dv.pop3, "localhost", &extra);
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_exactly_once_clean(&s.maildir, &first);
    assert_eq!(dv.server_count(), 15, "keep mode leaves mail on the server");
    let o = s.run(&[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let more = messages(5, "keep-b");
    dv.deliver(&more);
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("acct: 5 fetched"), "{}", show(&o));
    let all: Vec<Vec<u8>> = first.into_iter().chain(more).collect();
    assert_exactly_once_clean(&s.maildir, &all);
    assert_eq!(dv.server_count(), 20);
}

#[test]
fn delete_after_days_zero_deletes_and_keep_then_delete_retries() {
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(6, "dad");
    dv.deliver(&msgs);
    // Keep first, then switch the same account to delete mode: the
    // journal knows everything is stored, so only DELEs are sent.
    let keep = Setup::new(dv.pop3s, "localhost", &format!("{}keep = true\n", tls_extra(&dv)));
    assert_eq!(code(&keep.run(&[])), 0);
    let cfg = std::fs::read_to_string(&keep.config).unwrap().replace("keep = true", "delete_after_days = 0");
    std::fs::write(&keep.config, cfg).unwrap();
    let o = keep.run(&[]);
    assert_eq!(code(&o), 1, "nothing new, only deletions: {}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("6 deleted"), "{}", show(&o));
    assert_eq!(dv.server_count(), 0);
    assert_exactly_once_clean(&keep.maildir, &msgs);
}

#[test]
fn scram_sha_256_login_and_wrong_password_is_exit_4() {
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(3, "scram");
    dv.deliver(&msgs);
    let s = Setup::new(dv.pop3s, "localhost", &format!("{}auth = \"scram-sha-256\"\n", tls_extra(&dv)));
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_exactly_once_clean(&s.maildir, &msgs);
    for auth in ["plain", "login", "user"] {
        let bad = Setup::new(dv.pop3s, "localhost", &format!("{}auth = \"{auth}\"\n", tls_extra(&dv)));
        let cfg = std::fs::read_to_string(&bad.config).unwrap().replace(PASSWORD, "wrong");
        std::fs::write(&bad.config, cfg).unwrap();
        let o = bad.run(&[]);
        assert_eq!(code(&o), 4, "{auth}: {}", show(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("authentication failed"), "{}", show(&o));
    }
}

#[test]
fn mbox_and_mda_destinations_get_whole_messages() {
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(5, "mbox");
    dv.deliver(&msgs);
    let s = Setup::new(dv.pop3s, "localhost", &format!("{}keep = true\n", tls_extra(&dv)));
    let mbox = s.dir.path().join("inbox.mbox");
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(&format!("maildir = \"{}\"", s.maildir.display()), &format!("mbox = \"{}\"", mbox.display()));
    std::fs::write(&s.config, cfg).unwrap();
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let text = std::fs::read(&mbox).unwrap();
    let entries = text.windows(6).filter(|w| *w == b"\nFrom " || w[..5] == *b"From ").count();
    assert!(entries >= 5);
    // mboxrd: the body line "From the start" is quoted, nothing else changes.
    for m in &msgs {
        let quoted = String::from_utf8_lossy(m).replace("\nFrom the start", "\n>From the start");
        assert_eq!(String::from_utf8_lossy(&text).matches(quoted.as_str()).count(), 1);
    }

    let out = s.dir.path().join("mda-out");
    std::fs::create_dir(&out).unwrap();
    let s2 = Setup::new(dv.pop3s, "localhost", &format!("{}keep = true\n", tls_extra(&dv)));
    let cfg = std::fs::read_to_string(&s2.config).unwrap().replace(
        &format!("maildir = \"{}\"", s2.maildir.display()),
        &format!("mda = \"cat > {}/$POBOX_MESSAGE_ID\"", out.display()),
    );
    std::fs::write(&s2.config, cfg).unwrap();
    let o = s2.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let mut got: Vec<Vec<u8>> =
        std::fs::read_dir(&out).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    let mut want = msgs.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn dry_run_changes_nothing() {
    let Some(dv) = Dovecot::start() else { return };
    dv.deliver(&messages(4, "dry"));
    let s = Setup::new(dv.pop3s, "localhost", &tls_extra(&dv));
    let o = s.run(&["--dry-run"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("fetch, then delete from server").count(), 4, "{out}");
    assert!(out.contains("acct: would fetch 4, 4 to be deleted in "), "the sum agrees with the list: {out}");
    assert_eq!(dv.server_count(), 4);
    assert!(!s.maildir.exists(), "dry run must not create the Maildir");
    assert!(!s.dir.path().join("state").exists(), "dry run must not create state");
}

#[test]
fn tls_refuses_wrong_host_name_before_any_credential() {
    let Some(dv) = Dovecot::start() else { return };
    dv.deliver(&messages(1, "name"));
    // The certificate names "localhost"; we connect as 127.0.0.1.
    let s = Setup::new(dv.pop3s, "127.0.0.1", &tls_extra(&dv));
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not trusted") && err.contains("fingerprint = \"sha256:"), "{err}");
    assert!(!dv.log().contains("user=<tester>") && dv.log().contains("alert"), "no login may be attempted: {}", dv.log());
    assert_eq!(dv.server_count(), 1);
}

#[test]
fn tls_refuses_unknown_self_signed_and_accepts_matching_pin() {
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(2, "pin");
    dv.deliver(&msgs);
    for (port, sec) in [(dv.pop3s, "tls"), (dv.pop3, "starttls")] {
        let s = Setup::new(port, "localhost", &format!("security = \"{sec}\"\n"));
        let log_start = dv.log().len();
        let o = s.run(&[]);
        assert_eq!(code(&o), 4, "{sec}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(err.contains("not signed by a certificate authority this computer trusts"), "{err}");
        let log = dv.log()[log_start..].to_string();
        assert!(!log.contains("user=<tester>") && log.contains("alert"), "{sec}: nothing may be sent: {log}");
        // The pin the error message suggests must be the one that works.
        let line = err.lines().find(|l| l.trim_start().starts_with("fingerprint = ")).unwrap().trim().to_string();
        let bad_pin = format!("fingerprint = \"sha256:{}\"", ["00"; 32].join(":"));
        let bad = Setup::new(port, "localhost", &format!("security = \"{sec}\"\n{bad_pin}\n"));
        let o = bad.run(&[]);
        assert_eq!(code(&o), 4, "a wrong pin must be refused: {}", show(&o));
        // A pin identifies the certificate itself, so even the IP works.
        let good = Setup::new(port, "127.0.0.1", &format!("security = \"{sec}\"\nkeep = true\n{line}\n"));
        let o = good.run(&[]);
        assert_eq!(code(&o), 0, "{sec}: {}", show(&o));
        assert_exactly_once_clean(&good.maildir, &msgs);
    }
}

#[test]
fn plaintext_without_opt_in_is_a_config_error() {
    let s = Setup::new(1, "localhost", "security = \"none\"\n");
    let o = s.run(&[]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("allow_insecure"));
}

#[test]
fn ca_file_with_an_openssl_x509_certificate_is_trusted_for_its_names() {
    let work = tempfile::tempdir().unwrap();
    let Some((cert, key)) = openssl_self_signed(work.path()) else { return };
    let Some(dv) = Dovecot::start_with(Some((cert.clone(), key))) else { return };
    let msgs = messages(3, "x509");
    dv.deliver(&msgs);
    let ca = format!("ca_file = \"{}\"\nkeep = true\n", cert.display());
    for (port, sec) in [(dv.pop3s, "tls"), (dv.pop3, "starttls")] {
        let s = Setup::new(port, "localhost", &format!("security = \"{sec}\"\n{ca}"));
        let o = s.run(&[]);
        assert_eq!(code(&o), 0, "{sec}: a CA:TRUE self-signed certificate in ca_file must be accepted: {}", show(&o));
        assert_exactly_once_clean(&s.maildir, &msgs);
        // Host names are still checked: the certificate names localhost only.
        let by_ip = Setup::new(port, "127.0.0.1", &format!("security = \"{sec}\"\n{ca}"));
        let o = by_ip.run(&[]);
        assert_eq!(code(&o), 4, "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("it is issued for localhost, not for 127.0.0.1"), "{err}");
    }
}

#[test]
fn an_empty_dotlock_left_by_a_crash_does_not_block_the_next_run() {
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(3, "empty-lock");
    dv.deliver(&msgs);
    let s = Setup::new(dv.pop3s, "localhost", &tls_extra(&dv));
    let mbox = s.dir.path().join("inbox.mbox");
    s.edit(&format!("maildir = \"{}\"", s.maildir.display()), &format!("mbox = \"{}\"", mbox.display()));
    // What a fetch killed between creating the lock and writing its pid
    // into it used to leave: every later run waited 30 s, then exit 3.
    let lock = s.dir.path().join("inbox.mbox.lock");
    std::fs::write(&lock, "").unwrap();
    let f = std::fs::File::options().write(true).open(&lock).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(10)).unwrap();
    let started = std::time::Instant::now();
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "took {:?}", started.elapsed());
    assert_each_once(&mbox_messages(&mbox), &msgs, "mbox");
    assert!(!lock.exists());
}

#[test]
fn a_killed_runs_tmp_file_is_removed_and_state_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let Some(dv) = Dovecot::start() else { return };
    let msgs = messages(2, "tmp-reap");
    dv.deliver(&msgs);
    let s = Setup::new(dv.pop3s, "localhost", &tls_extra(&dv));
    // What the store's writer leaves in tmp/ when the fetch is SIGKILLed
    // mid-write: its name carries the (now dead) pid and this host.
    let host = rustix::system::uname().nodename().to_string_lossy().to_string();
    assert!(host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'), "unusual host name {host:?}");
    std::fs::create_dir_all(s.maildir.join("tmp")).unwrap();
    let leftover = s.maildir.join(format!("tmp/1700000000.M1P4194305Q3R0000abcd.{host}"));
    std::fs::write(&leftover, "half a message").unwrap();
    let f = std::fs::File::options().write(true).open(&leftover).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(120)).unwrap();
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_exactly_once_clean(&s.maildir, &msgs);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = s.dir.path().join("state");
    assert_eq!(mode(&state), 0o700, "the state dir names accounts and message ids");
    for e in std::fs::read_dir(&state).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
    }
}
