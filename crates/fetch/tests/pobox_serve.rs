//! `pobox fetch` against `pobox serve` (the binary named by `POBOX_BIN`):
//! TLS and STARTTLS with the server's self-signed certificate pinned, delete
//! and keep modes, and the kill test through the fault-injecting proxy.
//! Skipped, with a message, when `POBOX_BIN` is not set.

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
    // The proxy must see commands: plaintext port; pobox serve may refuse
    // cleartext logins, in which case that is the answer we test around.
    let s = Setup::new(srv.pop3, "127.0.0.1", "security = \"none\"\nallow_insecure = true\n");
    let probe = s.run(&["--dry-run"]);
    if code(&probe) > 1 {
        eprintln!("SKIP: pobox serve refuses plaintext login here: {}", show(&probe));
        return;
    }
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
