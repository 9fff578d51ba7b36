//! Client autoconfiguration (issue 13 items 4 and 5): `pobox serve` with the
//! `[autoconfig]` listener on 127.0.0.1, plain HTTP and HTTPS (the test's
//! self-signed certificate), every document fetched over the wire (curl
//! for HTTPS, raw TCP for the rest) and parsed: XML with roxmltree, the
//! profile with Python's plistlib, JSON with serde_json. Then `pobox dns`
//! for configurations with and without STLS on 110 and SMTP.

use std::io::Write;

use crate::util::*;

/// A raw HTTP/1.1 request; returns (status, head, body).
fn http(port: u16, request: &str) -> (u16, String, String) {
    let mut s = tcp(port);
    s.write_all(request.as_bytes()).unwrap();
    let raw = String::from_utf8(read_until_closed(&mut s)).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {raw:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (status, head.to_string(), body.to_string())
}

fn get(port: u16, target: &str) -> (u16, String, String) {
    http(port, &format!("GET {target} HTTP/1.1\r\nHost: autoconfig.example.org\r\n\r\n"))
}

fn post(port: u16, target: &str, body: &str) -> (u16, String, String) {
    http(
        port,
        &format!(
            "POST {target} HTTP/1.1\r\nHost: autodiscover.example.org\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// (http port, https port) from the banner lines `autoconfig   http(s)://ADDR/`.
fn ports(server: &Server<'_>) -> (u16, u16) {
    let out = server.stdout();
    let port = |scheme: &str| -> u16 {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("autoconfig") && l.contains(&format!("{scheme}://")))
            .unwrap_or_else(|| panic!("no {scheme} autoconfig line\n{}", server.dump()));
        line.trim().trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap()
    };
    (port("http"), port("https"))
}

/// GET over HTTPS with curl, verifying the server's certificate.
fn curl_get(server: &Server<'_>, port: u16, target: &str) -> String {
    let out = server.curl(port).args(["--fail", "--include"]).arg(format!("https://localhost:{port}{target}")).output();
    assert!(out.status.success(), "curl {target}\n{}\n{}", out.dump(), server.dump());
    out.stdout()
}

/// Parses a plist with Python's plistlib; prints the POP payload's keys
/// as `key=value` lines.
fn plist_payload(server: &Server<'_>, plist: &str) -> Vec<(String, String)> {
    const SCRIPT: &str = r#"
import plistlib, sys
p = plistlib.loads(sys.stdin.buffer.read())
assert p["PayloadType"] == "Configuration", p
[mail] = p["PayloadContent"]
for k, v in sorted(mail.items()):
    print("%s=%s" % (k, v))
"#;
    let out = TestCommand::tool("python3").args(["-c", SCRIPT]).stdin(plist.as_bytes()).output();
    assert!(out.status.success(), "plistlib refused the profile\n{}\n{plist}\n{}", out.dump(), server.dump());
    out.stdout().lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no {key} in {pairs:?}"))
}

/// The text of `parent`'s child element `name`.
fn child<'a>(parent: roxmltree::Node<'a, '_>, name: &str) -> &'a str {
    parent
        .children()
        .find(|n| n.tag_name().name() == name)
        .and_then(|n| n.text())
        .unwrap_or_else(|| panic!("no <{name}> in <{}>", parent.tag_name().name()))
}

const AUTOCONFIG: &str = r#"{ listen = ["127.0.0.1:0"], listen_tls = ["127.0.0.1:0"], hostname = "mail.example.org", provider_name = "Example & <Co>", submission = "smtp.example.org:465" }"#;

fn start<'d>(dir: &'d Dir, autoconfig: &str) -> Server<'d> {
    dir.add_user("alice", PW);
    dir.server().config("domains", r#"["example.org"]"#).config("autoconfig", autoconfig).start()
}

#[test]
fn every_document_names_the_pop3_listeners_the_server_has() {
    let dir = Dir::new();
    let server = start(&dir, AUTOCONFIG);
    let (plain, tls) = ports(&server);

    // Thunderbird, over HTTPS with curl: implicit TLS first, STLS second,
    // on the ports the server really listens on.
    let raw = curl_get(&server, tls, "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice%40example.org");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: text/xml; charset=utf-8"), "{head}");
    let doc = roxmltree::Document::parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let provider = doc.descendants().find(|n| n.has_tag_name("emailProvider")).unwrap();
    assert_eq!(provider.attribute("id"), Some("example.org"));
    assert_eq!(child(provider, "displayName"), "Example & <Co>");
    let incoming: Vec<_> = provider.children().filter(|n| n.has_tag_name("incomingServer")).collect();
    assert_eq!(incoming.len(), 2, "{body}");
    for (server_el, (port, socket)) in incoming.iter().zip([(server.pop3s, "SSL"), (server.pop3, "STARTTLS")]) {
        assert_eq!(server_el.attribute("type"), Some("pop3"));
        assert_eq!(child(*server_el, "hostname"), "mail.example.org");
        assert_eq!(child(*server_el, "port"), port.to_string());
        assert_eq!(child(*server_el, "socketType"), socket);
        assert_eq!(child(*server_el, "username"), "%EMAILLOCALPART%");
        assert_eq!(child(*server_el, "authentication"), "password-cleartext");
    }
    let outgoing = provider.children().find(|n| n.has_tag_name("outgoingServer")).unwrap();
    assert_eq!((child(outgoing, "port"), child(outgoing, "socketType")), ("465", "SSL"));

    // The same over plain HTTP on autoconfig.DOMAIN without an address:
    // the domain comes from the Host header.
    let (status, _, body) = get(plain, "/mail/config-v1.1.xml");
    assert_eq!(status, 200, "{body}");
    let doc = roxmltree::Document::parse(&body).unwrap();
    assert_eq!(doc.descendants().find(|n| n.has_tag_name("domain")).and_then(|n| n.text()), Some("example.org"));

    // Outlook POX: the address in the request body; the local part logs in.
    let request = r#"<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>alice@example.org</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"#;
    let (status, head, body) = post(plain, "/Autodiscover/Autodiscover.xml", request);
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("Content-Type: application/xml"), "{head}");
    let doc = roxmltree::Document::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let root = doc.root_element();
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006")
    );
    let response = root.children().find(|n| n.has_tag_name("Response")).unwrap();
    assert_eq!(
        response.tag_name().namespace(),
        Some("http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a")
    );
    let protocols: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("Protocol")).collect();
    let pop: Vec<_> = protocols.iter().filter(|p| child(**p, "Type") == "POP3").collect();
    assert_eq!(pop.len(), 2, "{body}");
    for (p, (port, encryption)) in pop.iter().zip([(server.pop3s, "SSL"), (server.pop3, "TLS")]) {
        assert_eq!(child(**p, "Server"), "mail.example.org");
        assert_eq!(child(**p, "Port"), port.to_string());
        assert_eq!(child(**p, "SSL"), "on");
        assert_eq!(child(**p, "Encryption"), encryption);
        assert_eq!(child(**p, "LoginName"), "alice");
    }
    assert!(protocols.iter().any(|p| child(*p, "Type") == "SMTP" && child(*p, "Port") == "465"));

    // autodiscover.json: AutodiscoverV1 points at the POX URL; Exchange
    // protocols are not served.
    let (status, head, body) =
        get(plain, "/autodiscover/autodiscover.json/v1.0/alice@example.org?Protocol=AutodiscoverV1");
    assert_eq!(status, 200, "{head}\n{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["Protocol"], "AutodiscoverV1");
    assert_eq!(v["Url"], "https://mail.example.org/autodiscover/autodiscover.xml");
    let (status, _, body) = get(plain, "/autodiscover/autodiscover.json?Email=alice%40example.org&Protocol=ActiveSync");
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ErrorCode"], "ProtocolNotSupported");

    // Apple: a profile whose one payload is a POP account.
    let (status, head, body) = get(plain, "/apple/pobox.mobileconfig?emailaddress=alice%40example.org");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: application/x-apple-aspen-config\r\n"), "{head}");
    let payload = plist_payload(&server, &body);
    assert_eq!(value(&payload, "PayloadType"), "com.apple.mail.managed");
    assert_eq!(value(&payload, "EmailAccountType"), "EmailTypePOP");
    assert_eq!(value(&payload, "IncomingMailServerHostName"), "mail.example.org");
    assert_eq!(value(&payload, "IncomingMailServerPortNumber"), server.pop3s.to_string());
    assert_eq!(value(&payload, "IncomingMailServerUseSSL"), "True");
    assert_eq!(value(&payload, "IncomingMailServerUsername"), "alice");
    assert_eq!(value(&payload, "OutgoingMailServerHostName"), "smtp.example.org");

    // PACC has no port field: implicit TLS on 995 is implied, so with
    // POP3S on an ephemeral port there is no honest document to serve.
    assert_eq!(get(plain, "/.well-known/user-agent-configuration.json").0, 404);
}

#[test]
fn the_pacc_document_served_is_the_one_pobox_dns_vouches_for() {
    let dir = Dir::new();
    // Port forwarding: clients reach POP3S on 995 (the listener is
    // ephemeral), which PACC needs.
    let autoconfig = AUTOCONFIG.replace(" }", r#", pop3s_port = 995 }"#);
    let server = dir.server().config("domains", r#"["example.org"]"#).config("autoconfig", &autoconfig).start();
    let (_, tls) = ports(&server);
    let raw = curl_get(&server, tls, "/.well-known/user-agent-configuration.json");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert_eq!(v["protocols"]["pop3"]["host"], "mail.example.org");
    assert_eq!(v["protocols"]["smtp"]["host"], "smtp.example.org");
    assert_eq!(v["authentication"]["password"], true);
    assert_eq!(v["info"]["provider"]["name"], "Example & <Co>");

    // The TXT record `pobox dns` prints for the same config file carries
    // the SHA-256 of exactly these bytes.
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body.as_bytes()));
    let out = dir.pobox().arg("--config").arg(dir.scratch("pobox.toml")).args(["dns", "--json"]).assert_exit(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    let txt = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "TXT" && r["name"] == "_ua-auto-config.example.org.")
        .unwrap_or_else(|| panic!("no PACC TXT record: {v}"));
    assert_eq!(txt["value"], format!("\"v=UAAC1; a=sha256; d={digest}\""));
}

#[test]
fn bad_requests_are_refused_and_hostile_addresses_escaped() {
    let dir = Dir::new();
    let server = start(&dir, AUTOCONFIG);
    let (plain, _) = ports(&server);

    assert_eq!(get(plain, "/").0, 404);
    assert_eq!(get(plain, "/mail/../../../etc/passwd").0, 404);
    assert_eq!(get(plain, "/mail/config-v1.1.xml/../../etc/passwd").0, 404);
    assert_eq!(get(plain, "/autodiscover/autodiscover.xml").0, 405, "POX is POST only");
    assert_eq!(http(plain, "DELETE /mail/config-v1.1.xml HTTP/1.1\r\n\r\n").0, 405);
    // A domain the server does not serve, and things that are no address.
    assert_eq!(get(plain, "/mail/config-v1.1.xml?emailaddress=alice%40elsewhere.example").0, 404);
    assert_eq!(get(plain, "/apple/pobox.mobileconfig?emailaddress=no-at-sign").0, 400);
    assert_eq!(get(plain, "/apple/pobox.mobileconfig").0, 400);

    // Oversized: a 9 KiB header, and a body over 16 KiB (refused before
    // it is read).
    let (status, _, _) = http(plain, &format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(9 * 1024)));
    assert_eq!(status, 431);
    let (status, _, _) = http(plain, "POST /autodiscover/autodiscover.xml HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
    assert_eq!(status, 413);
    let (status, _, _) =
        http(plain, "POST /autodiscover/autodiscover.xml HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(status, 411);

    // Markup in the address comes back as text, never as elements.
    let hostile = "x</LoginName><Server>evil.example</Server><LoginName>\"'&@example.org";
    let escaped = hostile.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let request = format!("<Autodiscover><Request><EMailAddress>{escaped}</EMailAddress></Request></Autodiscover>");
    let (status, _, body) = post(plain, "/autodiscover/autodiscover.xml", &request);
    assert_eq!(status, 200, "{body}");
    let doc = roxmltree::Document::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let logins: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("LoginName")).filter_map(|n| n.text()).collect();
    let local = hostile.rsplit_once('@').unwrap().0;
    assert_eq!(logins[..2], [local, local], "{body}");
    assert!(doc.descendants().filter(|n| n.has_tag_name("Server")).all(|n| n.text() != Some("evil.example")), "{body}");

    let query: String = hostile.bytes().map(|b| format!("%{b:02X}")).collect();
    let (status, _, body) = get(plain, &format!("/apple/pobox.mobileconfig?emailaddress={query}"));
    assert_eq!(status, 200, "{body}");
    let payload = plist_payload(&server, &body);
    assert_eq!(value(&payload, "EmailAddress"), hostile);
    assert_eq!(value(&payload, "IncomingMailServerHostName"), "mail.example.org");
}

/// `pobox dns --domain example.org` for a config file.
fn dns(dir: &Dir, config: &str) -> String {
    let path = dir.scratch("dns.toml");
    std::fs::write(&path, config).unwrap();
    dir.pobox().arg("--config").arg(&path).args(["dns", "--domain", "example.org"]).assert_exit(0).stdout()
}

/// The records of one type and owner, as `VALUE` strings.
fn rr(zone: &str, name: &str, kind: &str) -> Vec<String> {
    zone.lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (n, _ttl, _in, k) = (f.next()?, f.next()?, f.next()?, f.next()?);
            (n == name && k == kind).then(|| f.collect::<Vec<_>>().join(" "))
        })
        .collect()
}

#[test]
fn pobox_dns_publishes_what_the_config_serves() {
    let dir = Dir::new();
    // Everything: STLS on 110, POP3S, SMTP, autoconfig on 80 and 443, ACME.
    let full = dns(
        &dir,
        r#"hostname = "mail.example.org"
pop3 = ["0.0.0.0:110"]
pop3s = ["0.0.0.0:995"]
smtp = ["192.0.2.10:25"]
[autoconfig]
listen = ["0.0.0.0:80"]
listen_tls = ["0.0.0.0:443"]
[acme]
contact = "admin@example.org"
"#,
    );
    assert_eq!(rr(&full, "example.org.", "MX"), ["10 mail.example.org."], "{full}");
    assert_eq!(rr(&full, "mail.example.org.", "A"), ["192.0.2.10"], "{full}");
    assert_eq!(rr(&full, "_pop3s._tcp.example.org.", "SRV"), ["0 1 995 mail.example.org."], "{full}");
    assert_eq!(rr(&full, "_pop3._tcp.example.org.", "SRV"), ["10 1 110 mail.example.org."], "{full}");
    assert_eq!(rr(&full, "autoconfig.example.org.", "CNAME"), ["mail.example.org."], "{full}");
    assert_eq!(rr(&full, "autodiscover.example.org.", "CNAME"), ["mail.example.org."], "{full}");
    assert_eq!(rr(&full, "_autodiscover._tcp.example.org.", "SRV"), ["0 1 443 mail.example.org."], "{full}");
    let txt = rr(&full, "_ua-auto-config.example.org.", "TXT");
    assert!(txt.len() == 1 && txt[0].starts_with("\"v=UAAC1; a=sha256; d="), "{full}");
    assert_eq!(rr(&full, "example.org.", "CAA"), ["0 issue \"letsencrypt.org\""], "{full}");

    // No cleartext/STLS listener, no SMTP, no autoconfig, no ACME: POP3 on
    // 110 is stated as not offered, and nothing else is published.
    let minimal = dns(
        &dir,
        r#"hostname = "mail.example.org"
pop3 = []
pop3s = ["0.0.0.0:995"]
smtp = []
"#,
    );
    assert_eq!(rr(&minimal, "_pop3._tcp.example.org.", "SRV"), ["0 0 0 ."], "{minimal}");
    assert_eq!(rr(&minimal, "_pop3s._tcp.example.org.", "SRV"), ["0 1 995 mail.example.org."], "{minimal}");
    for kind in ["MX", "CAA", "CNAME", "TXT"] {
        assert!(
            !minimal.lines().any(|l| !l.starts_with(';') && l.split_whitespace().nth(3) == Some(kind)),
            "{kind}: {minimal}"
        );
    }
    assert!(minimal.contains("; mail.example.org. needs A/AAAA records"), "{minimal}");

    // SMTP without STLS, and the reverse.
    let smtp_only = dns(&dir, "hostname = \"mail.example.org\"\npop3 = []\nsmtp = [\"0.0.0.0:25\"]\n");
    assert_eq!(rr(&smtp_only, "example.org.", "MX"), ["10 mail.example.org."], "{smtp_only}");
    assert_eq!(rr(&smtp_only, "_pop3._tcp.example.org.", "SRV"), ["0 0 0 ."], "{smtp_only}");
    let stls_only = dns(&dir, "hostname = \"mail.example.org\"\npop3 = [\"0.0.0.0:110\"]\nsmtp = []\n");
    assert!(rr(&stls_only, "example.org.", "MX").is_empty(), "{stls_only}");
    assert_eq!(rr(&stls_only, "_pop3._tcp.example.org.", "SRV"), ["10 1 110 mail.example.org."], "{stls_only}");

    // Without a domain there is nothing to print.
    let path = dir.scratch("dns.toml");
    let out = dir.pobox().arg("--config").arg(&path).arg("dns").assert_exit(1);
    assert!(out.stderr().contains("--domain"), "{}", out.dump());
}
