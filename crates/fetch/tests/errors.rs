//! What `pobox fetch` says when it cannot go on, and its exit code: the
//! exact first line of each message and the code (3: may pass by itself,
//! 4: needs you, 2: bad command line or accounts file), through the real
//! entry point. TLS cases against a private Dovecot on loopback.

mod common;

use std::process::Command;

use common::*;

fn first_line(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("").to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// No message may carry a library's Debug text.
fn assert_plain(o: &std::process::Output) {
    let err = stderr(o);
    for debug in ["IpAddress(", "V4(", "Ipv4Addr", "DnsName(", "Context {", "InvalidContentType", "OtherError", "Some("] {
        assert!(!err.contains(debug), "Debug text {debug:?} in: {err}");
    }
}

#[test]
fn certificate_errors_say_what_to_do() {
    let Some(dv) = Dovecot::start() else { return };
    dv.deliver(&messages(2, "errors"));
    let fp = {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_file(&dv.cert).unwrap();
        pobox_fetch::config::format_fingerprint(&pobox_fetch::tls::fingerprint(&der))
    };

    // First contact with a self-signed certificate: pin it (after checking).
    let s = Setup::new(dv.pop3s, "localhost", "security = \"tls\"\n");
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert_eq!(
        first_line(&o),
        format!(
            "pobox fetch: acct: refusing localhost:{}: its TLS certificate is not trusted: it is not signed by a \
             certificate authority this computer trusts (a self-signed or private-CA certificate; see ca_file and \
             fingerprint); nothing was sent.",
            dv.pop3s
        )
    );
    assert!(stderr(&o).contains(&format!("fingerprint = \"{fp}\"")), "{}", show(&o));
    assert_plain(&o);

    // A pin that no longer matches: not the same advice.
    let old = format!("sha256:{}", ["AB"; 32].join(":"));
    let s = Setup::new(dv.pop3s, "localhost", &format!("security = \"tls\"\nfingerprint = \"{old}\"\n"));
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert_eq!(
        first_line(&o),
        format!(
            "pobox fetch: acct: refusing localhost:{}: the certificate changed since you pinned it; nothing was sent.",
            dv.pop3s
        )
    );
    let err = stderr(&o);
    assert!(err.contains(&old) && err.contains(&fp), "both fingerprints: {err}");
    assert!(err.contains("Before you replace the fingerprint") && err.contains("compare"), "{err}");
    assert!(!err.contains("fingerprint = \""), "no ready-made pin for a changed certificate: {err}");
    assert_plain(&o);

    // A name mismatch, in words.
    let ca = format!("ca_file = \"{}\"\n", dv.cert.display());
    let s = Setup::new(dv.pop3s, "127.0.0.1", &format!("security = \"tls\"\n{ca}"));
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert_eq!(
        first_line(&o),
        format!(
            "pobox fetch: acct: refusing 127.0.0.1:{}: its TLS certificate is not trusted: it is issued for \
             localhost, not for 127.0.0.1 (connect by one of its names, or set tls_server_name); nothing was sent.",
            dv.pop3s
        )
    );
    assert_plain(&o);

    // Implicit TLS against the plain POP3 port.
    let s = Setup::new(dv.pop3, "localhost", &format!("security = \"tls\"\n{ca}"));
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert_eq!(
        first_line(&o),
        format!(
            "pobox fetch: acct: localhost:{} did not answer in TLS (it sent plain text, as a plain POP3 port such \
             as 110 does); nothing was sent. For STARTTLS on this port set security = \"starttls\"; for TLS from \
             the first byte use the server's TLS port (usually 995)",
            dv.pop3
        )
    );
    assert_plain(&o);

    // STARTTLS against the TLS port: silence, then the hint.
    let s = Setup::new(dv.pop3s, "localhost", &format!("security = \"starttls\"\n{ca}"));
    s.edit("timeout_secs = 20", "timeout_secs = 2");
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert_eq!(
        first_line(&o),
        format!(
            "pobox fetch: acct: localhost:{} sent no greeting within 2 seconds because it speaks TLS from the \
             first byte (like port 995): set security = \"tls\" (STARTTLS is for the plain port, usually 110)",
            dv.pop3s
        )
    );
    assert_plain(&o);
}

#[test]
fn login_refused_and_dry_run_counts() {
    let Some(dv) = Dovecot::start() else { return };
    dv.deliver(&messages(4, "dry-count"));
    let ca = format!("security = \"tls\"\nca_file = \"{}\"\n", dv.cert.display());
    let s = Setup::new(dv.pop3s, "localhost", &format!("{ca}auth = \"user\"\n"));
    s.edit(PASSWORD, "wrong");
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert_eq!(first_line(&o), "pobox fetch: acct: authentication failed: PASS: [AUTH] Authentication failed.");

    let s = Setup::new(dv.pop3s, "localhost", &ca);
    let o = s.run(&["--dry-run"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("fetch, then delete from server").count(), 4, "{out}");
    let summary = out.lines().last().unwrap();
    assert!(summary.starts_with("acct: would fetch 4, 4 to be deleted in "), "the sum must agree with the list: {out}");
}

#[test]
fn password_problems_need_attention() {
    // Nothing listens on port 1: the password comes first, so these fail
    // before any connection is tried.
    let s = Setup::new(1, "127.0.0.1", "security = \"none\"\nallow_insecure = true\n");
    s.edit(&format!("password = \"{PASSWORD}\""), "password_command = \"echo oops >&2; exit 3\"");
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert!(
        stderr(&o).lines().any(|l| l == "pobox fetch: acct: cannot get the password: password_command failed (exit status: 3)"),
        "{}",
        show(&o)
    );

    // No password and no terminal to ask on (a new session has none).
    if !require("/usr/bin/setsid", "util-linux") {
        return;
    }
    s.edit("password_command = \"echo oops >&2; exit 3\"", "");
    let mut cmd = Command::new("setsid");
    cmd.arg("--wait").arg(pobox_bin()).arg("--config").arg(&s.config).arg("fetch");
    cmd.env_remove("POBOX_CONFIG").stdin(std::process::Stdio::null());
    let o = s.run_cmd(cmd);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert_eq!(first_line(&o), "pobox fetch: acct: cannot get the password: no password configured and no terminal to ask on");
}

#[test]
fn accounts_file_problems_are_usage_errors() {
    let s = Setup::new(1, "127.0.0.1", "security = \"none\"\nallow_insecure = true\n");
    set_mode(&s.config, 0o644);
    let o = s.run(&[]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    let p = s.config.display();
    assert_eq!(
        first_line(&o),
        format!("pobox fetch: {p} holds a password and can be read by others (mode 0644); refusing to use it. Fix: chmod 600 {p}")
    );

    let missing = s.dir.path().join("nowhere.toml");
    let mut cmd = Command::new(pobox_bin());
    cmd.arg("fetch").arg("--accounts").arg(&missing).env_remove("POBOX_CONFIG");
    let o = s.run_cmd(cmd);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert_eq!(first_line(&o), format!("pobox fetch: no accounts file at {}", missing.display()));
    assert!(stderr(&o).contains("[accounts.work]") && stderr(&o).contains("chmod 600"), "a starter: {}", show(&o));
}

#[test]
fn the_fetcher_reads_its_own_file_not_the_servers() {
    let s = Setup::new(1, "127.0.0.1", "security = \"none\"\nallow_insecure = true\n");
    s.edit(&format!("password = \"{PASSWORD}\""), "password_command = \"exit 9\"");
    let server_config = s.dir.path().join("server.toml");
    std::fs::write(&server_config, "this is the server's file, not TOML accounts\n").unwrap();
    // POBOX_CONFIG is the server's: the fetcher must not read it, and
    // finds its own file through POBOX_FETCH_CONFIG (or --accounts).
    for via_env in [true, false] {
        let mut cmd = Command::new(pobox_bin());
        cmd.arg("fetch").env("POBOX_CONFIG", &server_config);
        if via_env {
            cmd.env("POBOX_FETCH_CONFIG", &s.config);
        } else {
            cmd.env_remove("POBOX_FETCH_CONFIG").arg("--accounts").arg(&s.config);
        }
        let o = s.run_cmd(cmd);
        assert_eq!(code(&o), 4, "reached the password step of our account: {}", show(&o));
        assert!(stderr(&o).contains("acct: cannot get the password"), "{}", show(&o));
    }
    let help = Command::new(pobox_bin()).args(["fetch", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    for want in ["--accounts <FILE>", "Files:", "accounts  ", "state     ", "Exit codes:", "  4  "] {
        assert!(text.contains(want), "{want:?} missing from --help: {text}");
    }
    assert!(!text.contains("--data"), "the server's --data has no place in fetch --help: {text}");
}
