//! TLS: implicit (POP3S) and STLS, with poplib, curl and openssl s_client,
//! each verifying the server's self-signed certificate for "localhost"; the
//! plaintext-auth policy; and the STARTTLS command-injection class.

use crate::util::*;

const MESSAGE: &[u8] = b"From: a@example.org\nSubject: tls\r\n\n.leading dot\n..two dots\nbare lf\n.\nend\n";

#[test]
fn poplib_pop3_ssl_verifies_the_certificate_and_retrieves() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", MESSAGE);
    let srv = dir.server().start();
    let out = srv.python_ok(
        r#"
p = pop3s()
check(p.sock.version() in ("TLSv1.2", "TLSv1.3"), p.sock.version())
caps = p.capa()
check("STLS" not in caps, "no STLS on implicit TLS", caps)
check("USER" in caps and caps.get("SASL") == ["PLAIN", "LOGIN"], caps)
p.user("alice"); p.pass_(PW)
resp, lines, octets = p.retr(1)
sys.stdout.buffer.write(b"\r\n".join(lines) + b"\r\n")
p.quit()
"#,
    );
    assert_eq!(out.as_bytes(), crlf(MESSAGE));
}

#[test]
fn poplib_stls_upgrades_and_the_client_relearns_capabilities() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", MESSAGE);
    let srv = dir.server().start();
    srv.python_ok(
        r#"
p = pop3()
check("STLS" in p.capa())
p.stls(tls_context())
check(p.sock.version() in ("TLSv1.2", "TLSv1.3"), p.sock.version())
caps = p.capa()
check("STLS" not in caps, "STLS is gone after the handshake", caps)
check("USER" in caps, caps)
try:
    p._shortcmd("STLS")
    check(False, "a second STLS was accepted")
except poplib.error_proto as e:
    check(e.args[0].startswith(b"-ERR"), e)
p.user("alice"); p.pass_(PW)
check(p.stat()[0] == 1)
p.quit()
"#,
    );
}

#[test]
fn plaintext_auth_refused_before_stls_and_accepted_after_when_loopback_is_not_trusted() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().config("plaintext_auth_on_loopback", "false").start();
    srv.python_ok(
        r#"
p = pop3()
caps = p.capa()
check("STLS" in caps, caps)
check("USER" not in caps and "SASL" not in caps, "no USER/SASL advertised in cleartext", caps)
for cmd in ("USER alice", "AUTH PLAIN AGFsaWNlAHg=", "AUTH LOGIN"):
    try:
        p._shortcmd(cmd)
        check(False, cmd, "accepted in cleartext")
    except poplib.error_proto as e:
        check(e.args[0].startswith(b"-ERR [AUTH]"), cmd, e)
try:
    p._shortcmd("PASS " + PW)
    check(False, "PASS accepted in cleartext")
except poplib.error_proto as e:
    check(e.args[0].startswith(b"-ERR"), e)
p.stls(tls_context())
caps = p.capa()
check("USER" in caps and caps.get("SASL") == ["PLAIN", "LOGIN"], caps)
p.user("alice"); p.pass_(PW)
p.quit()
"#,
    );
    // Implicit TLS is never refused.
    srv.python_ok("p = pop3s(); p.user('alice'); p.pass_(PW); p.quit()");
}

/// CVE-2011-0411 class: commands pipelined after STLS arrived in cleartext
/// and must be discarded, not executed inside the TLS session.
#[test]
fn stls_discards_plaintext_commands_pipelined_after_it() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    let srv = dir.server().start();
    let out = srv.python_ok(
        r#"
s = socket.create_connection(("127.0.0.1", POP3_PORT), TIMEOUT)
def line(sock):
    buf = b""
    while not buf.endswith(b"\r\n"):
        b = sock.recv(1)
        check(b, "connection closed; got", buf)
        buf += b
    return buf
check(line(s).startswith(b"+OK"))
s.sendall(b"STLS\r\nCAPA\r\nUSER alice\r\n")   # one write
r = line(s)
check(r.startswith(b"+OK"), r)
t = tls_context().wrap_socket(s, server_hostname="localhost")
t.sendall(("PASS " + PW + "\r\n").encode())
first = line(t)
# Had the injected CAPA run, this would be its "+OK capability list";
# had the injected USER run, PASS would log in.
check(first.startswith(b"-ERR"), "first reply inside TLS:", first)
t.sendall(("USER alice\r\nPASS " + PW + "\r\nQUIT\r\n").encode())
check(line(t).startswith(b"+OK"))
check(line(t).startswith(b"+OK"), "login works after the discarded input")
check(line(t).startswith(b"+OK"))
print(first.decode().strip())
"#,
    );
    assert!(out.starts_with("-ERR"), "{out}");
}

#[test]
fn curl_pop3_with_ssl_reqd_upgrades_via_stls_and_retrieves_byte_exact() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", MESSAGE);
    let srv = dir.server().config("plaintext_auth_on_loopback", "false").start();
    let out = srv
        .curl(srv.pop3)
        .args(["--ssl-reqd", "--user", &format!("alice:{PW}")])
        .arg(format!("pop3://localhost:{}/1", srv.pop3))
        .output();
    assert!(out.status.success(), "{}\n{}", out.dump(), srv.dump());
    assert_eq!(out.stdout, crlf(MESSAGE), "{}", out.stdout());
    assert!(srv.stderr_eventually_contains("tls=true"), "the login happened inside TLS\n{}", srv.dump());
}

#[test]
fn curl_pop3s_retrieves_byte_exact_and_lists_sizes() {
    let dir = Dir::new();
    dir.add_user("alice", PW);
    dir.deliver("alice", MESSAGE);
    dir.deliver("alice", b"Subject: second\n\nx\n");
    let srv = dir.server().start();
    let user = format!("alice:{PW}");
    let out = srv.curl(srv.pop3s).args(["--user", &user]).arg(format!("pop3s://localhost:{}/1", srv.pop3s)).output();
    assert!(out.status.success(), "{}\n{}", out.dump(), srv.dump());
    assert_eq!(out.stdout, crlf(MESSAGE), "{}", out.stdout());

    let out = srv.curl(srv.pop3s).args(["--user", &user]).arg(format!("pop3s://localhost:{}/", srv.pop3s)).output();
    assert!(out.status.success(), "{}", out.dump());
    let want = format!("1 {}\r\n2 {}\r\n", crlf(MESSAGE).len(), crlf(b"Subject: second\n\nx\n").len());
    assert_eq!(out.stdout(), want);

    // A wrong password is a clean failure, not a hang.
    let out = srv
        .curl(srv.pop3s)
        .args(["--user", "alice:wrong"])
        .arg(format!("pop3s://localhost:{}/1", srv.pop3s))
        .output();
    assert!(!out.status.success(), "{}", out.dump());
}

#[test]
fn openssl_s_client_starttls_pop3_verifies_and_capa_works_after_the_handshake() {
    let dir = Dir::new();
    let srv = dir.server().start();
    let out = TestCommand::tool("openssl")
        .args(["s_client", "-starttls", "pop3", "-connect"])
        .arg(format!("127.0.0.1:{}", srv.pop3))
        .args(["-servername", "localhost", "-verify_hostname", "localhost", "-verify_return_error"])
        .arg("-CAfile")
        .arg(dir.cert())
        .args(["-crlf", "-ign_eof"])
        .stdin("CAPA\nQUIT\n")
        .output();
    let text = out.stdout();
    assert!(out.status.success(), "{}\n{}", out.dump(), srv.dump());
    assert!(text.contains("Verify return code: 0 (ok)"), "{}", out.dump());
    let protocol_ok = text.contains("TLSv1.3") || text.contains("TLSv1.2");
    assert!(protocol_ok, "{text}");
    // s_client prints the session (ending in "Verify return code") once the
    // handshake is done; what the server sent inside TLS comes after it.
    let (_, after) = text.split_once("Verify return code: 0 (ok)").unwrap();
    assert!(after.contains("+OK capability list follows"), "CAPA answered inside TLS: {text}");
    assert!(after.contains("\nUSER") && after.contains("SASL PLAIN LOGIN"), "{text}");
    assert!(!after.contains("\nSTLS"), "no STLS after STLS: {text}");
    assert!(after.contains("+OK pobox signing off"), "{text}");
}

#[test]
fn printed_fingerprint_is_the_certificates_sha256() {
    let dir = Dir::new();
    let srv = dir.server().start();
    assert!(srv.stdout().contains("generated now, self-signed"), "{}", srv.stdout());
    let out = TestCommand::tool("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(dir.cert())
        .assert_exit(0);
    let fp = out.stdout().trim().rsplit('=').next().unwrap().to_ascii_uppercase();
    assert_eq!(fp, srv.fingerprint.to_ascii_uppercase());

    // The second start loads the same certificate.
    srv.stop();
    let srv = dir.server().start();
    assert!(srv.stdout().contains("(loaded)"), "{}", srv.stdout());
    assert_eq!(fp, srv.fingerprint.to_ascii_uppercase());
}

/// RFC 8996: TLS 1.0 and 1.1 must not be negotiated.
#[test]
fn tls_1_1_is_refused_on_pop3s() {
    let dir = Dir::new();
    let srv = dir.server().start();
    let out = TestCommand::tool("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", srv.pop3s))
        .args(["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin("")
        .output();
    assert!(!out.status.success(), "TLS 1.1 handshake succeeded\n{}", out.dump());
    // The server said no (a TLS alert), not the local OpenSSL.
    assert!(out.stderr().contains("alert"), "no alert from the server\n{}", out.dump());
    // And the server keeps serving TLS 1.2.
    let out = TestCommand::tool("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", srv.pop3s))
        .args(["-tls1_2", "-CAfile"])
        .arg(dir.cert())
        .args(["-verify_return_error", "-verify_hostname", "localhost", "-servername", "localhost", "-crlf", "-ign_eof"])
        .stdin("QUIT\n")
        .output();
    assert!(out.status.success(), "{}", out.dump());
    assert!(out.stdout().contains("+OK pobox signing off"), "{}", out.dump());
}
