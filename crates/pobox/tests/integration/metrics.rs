//! The OpenMetrics endpoint (`metrics = "ADDR"`, issue 12 item 6): a
//! scripted day of LMTP deliveries and POP3 sessions, then a scrape whose
//! counters equal exactly what was done, parsed by the reference Python
//! parser (`prometheus_client.openmetrics.parser`, Debian package
//! `python3-prometheus-client`).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use crate::util::*;

/// Carol's script: [SPAM] is filed into Junk, one sender is rejected,
/// everything else is kept.
const SCRIPT: &str = r#"require ["fileinto", "reject"];
if header :contains "subject" "[SPAM]" { fileinto "Junk"; stop; }
if address :is "from" "blocked@bad.example" { reject "not from you"; }
"#;

/// Prints every sample as `name{k="v",...} value`, labels sorted, after the
/// reference parser accepted the whole exposition.
const PARSE: &str = r##"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = sys.stdin.read()
assert text.endswith("# EOF\n"), "no # EOF at the end"
for family in text_string_to_metric_families(text):
    assert family.name.startswith("pobox_"), family.name
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        print("%s{%s} %r" % (s.name, labels, float(s.value)))
"##;

const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// `GET path` with extra header lines; returns (head, body).
fn http_get(port: u16, path: &str, headers: &str) -> (String, String) {
    let mut s = tcp(port);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n").as_bytes()).unwrap();
    let raw = String::from_utf8(read_until_closed(&mut s)).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {raw:?}"));
    (head.to_string(), body.to_string())
}

/// The metrics port from the banner line `metrics      http://ADDR/metrics`.
fn metrics_port(server: &Server<'_>) -> u16 {
    let out = server.stdout();
    let line = out.lines().find(|l| l.trim_start().starts_with("metrics")).unwrap_or_else(|| panic!("{}", server.dump()));
    let url = line.split_whitespace().nth(1).unwrap();
    url.trim_start_matches("http://").trim_end_matches("/metrics").rsplit(':').next().unwrap().parse().unwrap()
}

/// Scrapes and parses with the reference parser: sample → value.
fn scrape(server: &Server<'_>, port: u16) -> BTreeMap<String, f64> {
    let (head, body) = http_get(port, "/metrics", "");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    // Debian's interpreter, which python3-prometheus-client installs into
    // (a python3 earlier on PATH, such as pyenv's, does not see it).
    assert!(
        std::path::Path::new(DEBIAN_PYTHON).is_file(),
        "{DEBIAN_PYTHON} is missing: apt-get install -y python3 python3-prometheus-client"
    );
    let out = TestCommand::new(DEBIAN_PYTHON).args(["-c", PARSE]).stdin(body.as_bytes()).output();
    assert!(out.status.success(), "the OpenMetrics parser refused the scrape\n{}\n{body}\n{}", out.dump(), server.dump());
    out.stdout()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse::<f64>().unwrap())
        })
        .collect()
}

/// Waits until no connection is being served (`pobox_sessions` all 0), so
/// the connection limits see only what the next step opens. The gauge drops
/// after the client has its last reply, when the server task ends.
fn wait_idle(port: u16) {
    let idle = eventually(Duration::from_secs(10), || {
        let (_, body) = http_get(port, "/metrics", "");
        body.lines().filter(|l| l.starts_with("pobox_sessions{")).all(|l| l.ends_with(" 0"))
    });
    assert!(idle, "sessions still open after 10 s");
}

/// Reads what a refused connection gets before it is closed.
fn refused(port: u16) -> String {
    String::from_utf8_lossy(&read_until_closed(&mut tcp(port))).into_owned()
}

fn lmtp_transaction(c: &mut Lmtp, from: &str, rcpts: &[&str], message: &str) -> Vec<String> {
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    for r in rcpts {
        let reply = c.cmd(&format!("RCPT TO:<{r}>"));
        assert!(reply.starts_with("250"), "{r}: {reply}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("{message}\r\n.\r\n"));
    rcpts.iter().map(|_| c.reply()).collect()
}

#[test]
fn a_scrape_counts_exactly_what_sessions_and_deliveries_did() {
    let dir = Dir::new();
    for user in ["alice", "bob", "carol", "dave"] {
        dir.add_user(user, PW);
    }
    let sieve = dir.data().join("sieve");
    std::fs::create_dir_all(&sieve).unwrap();
    std::fs::write(sieve.join("carol.sieve"), SCRIPT).unwrap();
    let server = dir
        .server()
        .config("metrics", "\"127.0.0.1:0\"")
        .config("max_connections", "4")
        .config("max_connections_per_ip", "2")
        // bob: the first message (~200 octets) fits, the second pushes
        // him over at DATA (counted); then he is full at RCPT (not a delivery).
        .config("quota", "{ users = { bob = { bytes = 300 } } }")
        .config("retention", "{ expire_interval_secs = 0, users = { dave = { max_age_days = 1 } } }")
        .start();
    let port = metrics_port(&server);

    // Before anything: the series exist, at zero; build info is 1.
    let before = scrape(&server, port);
    let version = format!("pobox_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(before.get(&version), Some(&1.0), "{before:#?}");
    assert_eq!(before.get("pobox_connections_total{protocol=\"pop3\",tls=\"no\"}"), Some(&0.0));
    assert_eq!(before.get("pobox_logins_total{mechanism=\"USER\",result=\"ok\"}"), Some(&0.0));
    // Only /metrics; text/plain alone gets the Prometheus 0.0.4 format.
    assert!(http_get(port, "/", "").0.starts_with("HTTP/1.1 404 "));
    let (head, body) = http_get(port, "/metrics", "Accept: text/plain\r\n");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("# TYPE pobox_logins_total counter") && !body.contains("# EOF"), "{body}");

    // LMTP, one connection: 8 recipients reach the pipeline.
    let mut l = server.lmtp();
    let r = lmtp_transaction(&mut l, "x@example.org", &["alice@example.org", "bob@example.org"], "Subject: one\r\n\r\nfirst");
    assert!(r[0].starts_with("250") && r[1].starts_with("250"), "{r:?}");
    let r = lmtp_transaction(&mut l, "x@example.org", &["alice@example.org", "bob@example.org"], "Subject: two\r\n\r\nsecond");
    assert!(r[0].starts_with("250") && r[1].starts_with("452 4.2.2"), "bob is over quota: {r:?}");
    assert!(l.cmd("MAIL FROM:<x@example.org>").starts_with("250"));
    assert!(l.cmd("RCPT TO:<bob@example.org>").starts_with("250"), "under quota at RCPT");
    assert!(l.cmd("RSET").starts_with("250"));
    let r = lmtp_transaction(&mut l, "x@example.org", &["carol@example.org"], "Subject: [SPAM] win\r\n\r\nx");
    assert!(r[0].starts_with("250"), "{r:?}");
    let r = lmtp_transaction(&mut l, "x@example.org", &["carol@example.org"], "From: blocked@bad.example\r\n\r\nx");
    assert!(r[0].starts_with("550 5.7.1"), "{r:?}");
    let r = lmtp_transaction(&mut l, "x@example.org", &["carol@example.org"], "Subject: hello\r\n\r\nx");
    assert!(r[0].starts_with("250"), "{r:?}");
    let r = lmtp_transaction(&mut l, "x@example.org", &["dave@example.org"], "Subject: old\r\n\r\nx");
    assert!(r[0].starts_with("250"), "{r:?}");
    // Refused at RCPT: not a delivery.
    assert!(l.cmd("MAIL FROM:<x@example.org>").starts_with("250"));
    assert!(l.cmd("RCPT TO:<nobody@example.org>").starts_with("550"));
    assert!(l.cmd("QUIT").starts_with("221"));
    wait_idle(port);

    // Dave's message is ten days old now: his policy expires it at login.
    let dave = dir.message_files("dave");
    assert_eq!(dave.len(), 1);
    let old = std::time::SystemTime::now() - Duration::from_secs(10 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(dir.maildir("dave", "new").join(&dave[0]))
        .unwrap()
        .set_modified(old)
        .unwrap();

    // POP3: retrieve both, delete one.
    let mut c = server.login("alice", PW);
    assert_eq!(c.stat().0, 2);
    let sizes: Vec<u64> =
        c.cmd_lines("LIST").iter().map(|l| l.split(' ').nth(1).unwrap().parse().unwrap()).collect();
    c.cmd_multi("RETR 1");
    c.cmd_multi("RETR 2");
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    c.quit();
    wait_idle(port);

    // [IN-USE], then both limits. The per-IP limit counts connections that
    // have not logged in yet: two of them fill it (the logged-in session
    // does not count); an LMTP connection then fills the global limit of 4.
    let mut a = server.login("alice", PW);
    let mut b = server.pop3();
    assert!(b.cmd("USER alice").starts_with("+OK"));
    let r = b.cmd(&format!("PASS {PW}"));
    assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
    b.quit();
    let p1 = server.pop3();
    let p2 = server.pop3();
    let r = refused(server.pop3);
    assert!(r.starts_with("-ERR [SYS/TEMP] too many connections"), "per IP: {r}");
    let mut l2 = server.lmtp();
    let r = refused(server.pop3);
    assert!(r.starts_with("-ERR [SYS/TEMP] too many connections"), "global: {r}");
    assert!(l2.cmd("QUIT").starts_with("221"));
    p1.quit();
    p2.quit();
    assert_eq!(a.stat().0, 1);
    a.quit();
    wait_idle(port);

    // A failed login and an unknown command.
    let mut c = server.pop3();
    assert!(c.cmd("USER bob").starts_with("+OK"));
    assert!(c.cmd("PASS wrong").starts_with("-ERR [AUTH]"));
    assert!(c.cmd("XYZZY secret-looking-argument").starts_with("-ERR"));
    c.quit();
    wait_idle(port);

    // Expiry at login.
    let mut c = server.login("dave", PW);
    assert_eq!(c.stat(), (0, 0), "expired at login");
    c.quit();
    wait_idle(port);

    // TLS with a real client (poplib): an STLS upgrade on the cleartext
    // port, then a session on the implicit-TLS port.
    server.python_ok(
        r#"
p = pop3()
p.stls(tls_context())
p.user("alice"); p.pass_(PW)
p.quit()
p = pop3s()
p.user("alice"); p.pass_(PW)
check(p.stat()[0] == 1, "alice keeps one message")
p.quit()
"#,
    );
    wait_idle(port);

    let m = scrape(&server, port);
    let value = |key: &str| *m.get(key).unwrap_or_else(|| panic!("no sample {key}\n{m:#?}"));
    let expect = [
        ("pobox_connections_total{protocol=\"pop3\",tls=\"no\"}", 10.0),
        ("pobox_connections_total{protocol=\"pop3s\",tls=\"yes\"}", 1.0),
        ("pobox_connections_total{protocol=\"lmtp\",tls=\"no\"}", 2.0),
        ("pobox_connections_refused_total{protocol=\"pop3\",reason=\"per_ip\"}", 1.0),
        ("pobox_connections_refused_total{protocol=\"pop3\",reason=\"max_connections\"}", 1.0),
        ("pobox_sessions{protocol=\"pop3\"}", 0.0),
        ("pobox_sessions{protocol=\"lmtp\"}", 0.0),
        ("pobox_sessions{protocol=\"pop3s\"}", 0.0),
        ("pobox_starttls_total{protocol=\"pop3\"}", 1.0),
        ("pobox_starttls_total{protocol=\"smtp\"}", 0.0),
        ("pobox_logins_total{mechanism=\"USER\",result=\"ok\"}", 5.0),
        ("pobox_logins_total{mechanism=\"USER\",result=\"in_use\"}", 1.0),
        ("pobox_logins_total{mechanism=\"USER\",result=\"failed\"}", 1.0),
        ("pobox_logins_total{mechanism=\"PLAIN\",result=\"ok\"}", 0.0),
        ("pobox_login_duration_seconds_count{}", 5.0),
        ("pobox_pop3_commands_total{command=\"USER\"}", 7.0),
        ("pobox_pop3_commands_total{command=\"PASS\"}", 7.0),
        ("pobox_pop3_commands_total{command=\"STAT\"}", 4.0),
        ("pobox_pop3_commands_total{command=\"CAPA\"}", 1.0),
        ("pobox_pop3_commands_total{command=\"STLS\"}", 1.0),
        ("pobox_pop3_commands_total{command=\"LIST\"}", 1.0),
        ("pobox_pop3_commands_total{command=\"RETR\"}", 2.0),
        ("pobox_pop3_commands_total{command=\"DELE\"}", 1.0),
        ("pobox_pop3_commands_total{command=\"QUIT\"}", 9.0),
        ("pobox_pop3_commands_total{command=\"TOP\"}", 0.0),
        ("pobox_pop3_commands_total{command=\"unknown\"}", 1.0),
        ("pobox_pop3_retr_bytes_total{}", (sizes[0] + sizes[1]) as f64),
        ("pobox_pop3_retr_duration_seconds_count{}", 2.0),
        ("pobox_pop3_deleted_messages_total{}", 1.0),
        ("pobox_auth_penalties_total{}", 0.0),
        ("pobox_deliveries_total{protocol=\"lmtp\",result=\"stored\"}", 6.0),
        ("pobox_deliveries_total{protocol=\"lmtp\",result=\"over_quota\"}", 1.0),
        ("pobox_deliveries_total{protocol=\"lmtp\",result=\"rejected\"}", 1.0),
        ("pobox_deliveries_total{protocol=\"lmtp\",result=\"failed\"}", 0.0),
        ("pobox_deliveries_total{protocol=\"smtp\",result=\"stored\"}", 0.0),
        ("pobox_delivery_duration_seconds_count{}", 8.0),
        ("pobox_sieve_actions_total{action=\"fileinto\"}", 1.0),
        ("pobox_sieve_actions_total{action=\"reject\"}", 1.0),
        ("pobox_sieve_actions_total{action=\"keep\"}", 1.0),
        ("pobox_sieve_actions_total{action=\"discard\"}", 0.0),
        ("pobox_expired_messages_total{}", 1.0),
        ("pobox_restore_purged_messages_total{}", 0.0),
        (version.as_str(), 1.0),
    ];
    for (key, want) in expect {
        assert_eq!(value(key), want, "{key}\n{m:#?}\n{}", server.dump());
    }
    // Client text never becomes a label value.
    assert!(!m.keys().any(|k| k.contains("XYZZY") || k.contains("secret")), "{m:#?}");
    // The dashboard in contrib/ queries only series that exist.
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/grafana/pobox.json")).unwrap();
    let mut queried = 0;
    for (at, _) in dashboard.match_indices("pobox_") {
        let name: String =
            dashboard[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit()).collect();
        if name == "pobox_" {
            continue; // the dashboard's own title or tags
        }
        queried += 1;
        assert!(m.keys().any(|k| k.starts_with(&format!("{name}{{"))), "the dashboard queries {name}, not exposed");
    }
    assert!(queried > 10, "{queried} series queried by the dashboard");
    // Every histogram's +Inf bucket equals its count.
    for h in ["pobox_login_duration_seconds", "pobox_pop3_retr_duration_seconds", "pobox_delivery_duration_seconds"] {
        assert_eq!(value(&format!("{h}_bucket{{le=\"+Inf\"}}")), value(&format!("{h}_count{{}}")), "{h}");
    }
}
