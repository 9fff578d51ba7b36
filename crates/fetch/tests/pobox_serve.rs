//! `pobox fetch` against `pobox serve` (the binary named by `POBOX_BIN`):
//! TLS and STARTTLS with the server's self-signed certificate pinned, delete
//! and keep modes, a `ca_file` holding an `openssl req -x509` certificate,
//! and the kill test through the fault-injecting proxy. Uses this
//! workspace's `pobox` binary (or `POBOX_BIN`) for both sides.

mod common;

use std::sync::atomic::Ordering;

use common::*;

/// The server's certificate as a pin, the way a user would take it from
/// `pobox serve`'s startup line.
fn pin(srv: &PoboxServe) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(srv.cert()).unwrap();
    let fp = pobox_fetch::tls::fingerprint(&der);
    format!("fingerprint = \"{}\"\n", pobox_fetch::config::format_fingerprint(&fp))
}

/// Messages on the server, counted by a dry run with fresh state.
fn server_count(srv: &PoboxServe) -> usize {
    let s = Setup::new(srv.pop3s, "localhost", &format!("security = \"tls\"\n{}", pin(srv)));
    let o = s.run(&["--dry-run"]);
    assert!(code(&o) <= 1, "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let n = out.split("would fetch ").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.trim().parse().ok());
    n.unwrap_or_else(|| panic!("no count in {out}"))
}

#[test]
fn pobox_serve_tls_delete_and_starttls_keep() {
    let Some(srv) = PoboxServe::start() else { return };
    let msgs = messages(25, "pobox-a");
    srv.deliver(&msgs);
    let keep = Setup::new(srv.pop3, "localhost", &format!("security = \"starttls\"\nkeep = true\n{}", pin(&srv)));
    let o = keep.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_exactly_once_clean(&keep.maildir, &msgs);
    assert_eq!(code(&keep.run(&[])), 1, "keep mode: nothing new the second time");
    assert_eq!(server_count(&srv), 25);

    let del = Setup::new(srv.pop3s, "localhost", &format!("security = \"tls\"\n{}", pin(&srv)));
    let o = del.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_exactly_once_clean(&del.maildir, &msgs);
    assert_eq!(server_count(&srv), 0, "delete mode empties the maildrop");
}

#[test]
fn pobox_serve_refuses_unpinned_self_signed() {
    let Some(srv) = PoboxServe::start() else { return };
    let s = Setup::new(srv.pop3s, "localhost", "security = \"tls\"\n");
    let o = s.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains(pin(&srv).trim()), "the error must show the pin: {}", show(&o));
}

#[test]
fn pobox_serve_kill_test() {
    let Some(srv) = PoboxServe::start() else { return };
    let msgs = messages(200, "pobox-kill");
    srv.deliver(&msgs);
    // The proxy must see commands: plaintext port, which pobox serve
    // allows on loopback; a refusal there is a failure, not a reason to skip.
    let s = Setup::new(srv.pop3, "127.0.0.1", "security = \"none\"\nallow_insecure = true\n");
    let probe = s.run(&["--dry-run"]);
    assert_eq!(code(&probe), 0, "plaintext login on loopback must work: {}", show(&probe));
    let mut points = 0;
    for cut in [4_000u64, 15_000, 40_000, 90_000, 200_000] {
        let (port, fired) = proxy(srv.pop3, Fault::AfterServerBytes(cut));
        let t = Setup::new(port, "127.0.0.1", "security = \"none\"\nallow_insecure = true\n");
        std::fs::write(&t.config, std::fs::read_to_string(&s.config).unwrap().replace(&format!("port = {}", srv.pop3), &format!("port = {port}"))).unwrap();
        let _ = t.run(&["--quiet"]);
        points += usize::from(fired.load(Ordering::SeqCst));
    }
    for ms in [5u64, 20, 50, 100, 200, 400] {
        let mut child = s.command(&["--quiet"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        if child.try_wait().unwrap().is_none() {
            points += 1;
            child.kill().unwrap();
        }
        child.wait().unwrap();
    }
    eprintln!("pobox serve kill test: {points} kill points");
    let o = s.run(&[]);
    assert!(code(&o) <= 1, "{}", show(&o));
    assert_exactly_once(&s.maildir, &msgs);
    assert_eq!(server_count(&srv), 0);
}

#[test]
fn pobox_serve_with_an_openssl_x509_certificate_in_ca_file() {
    let work = tempfile::tempdir().unwrap();
    let Some((cert, key)) = openssl_self_signed(work.path()) else { return };
    let Some(srv) = PoboxServe::start_with(Some((cert.clone(), key))) else { return };
    let msgs = messages(4, "pobox-x509");
    srv.deliver(&msgs);
    let ca = format!("ca_file = \"{}\"\n", cert.display());
    let s = Setup::new(srv.pop3s, "localhost", &format!("security = \"tls\"\n{ca}keep = true\n"));
    let o = s.run(&[]);
    assert_eq!(code(&o), 0, "a CA:TRUE self-signed certificate in ca_file must be accepted: {}", show(&o));
    assert_exactly_once_clean(&s.maildir, &msgs);
    let st = Setup::new(srv.pop3, "localhost", &format!("security = \"starttls\"\n{ca}"));
    let o = st.run(&[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_exactly_once_clean(&st.maildir, &msgs);
    let by_ip = Setup::new(srv.pop3s, "127.0.0.1", &format!("security = \"tls\"\n{ca}"));
    let o = by_ip.run(&[]);
    assert_eq!(code(&o), 4, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("it is issued for localhost, not for 127.0.0.1"), "{}", show(&o));
}
