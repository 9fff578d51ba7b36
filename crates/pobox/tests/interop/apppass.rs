//! App passwords and the login history with real clients: fetchmail and
//! mpop (Debian's packages) are two devices of one user, each with its own
//! app password, over implicit TLS that they verify against the server's
//! certificate. `pobox user show --json` and `pobox mailbox show` must then
//! say which device retrieved and which deleted which message; revoking one
//! device's password stops that device only.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use std::time::Duration;

use crate::util::{self, Dir, PW, Pop3, Server, TestCommand};

const USER: &str = "alice";

/// `pobox user apppass add` → the password it prints once.
fn add_app_password(dir: &Dir, label: &str, protocols: &str) -> String {
    let out = dir
        .pobox()
        .args([
            "user",
            "apppass",
            "add",
            USER,
            "--label",
            label,
            "--protocols",
            protocols,
        ])
        .assert_exit(0);
    let password = out.stdout().trim().to_owned();
    assert_eq!(
        password.len(),
        29,
        "24 letters in groups of 4: {password:?}\n{}",
        out.dump()
    );
    password
}

fn message(n: usize) -> Vec<u8> {
    format!("From: sender{n}@example.org\r\nTo: {USER}@example.org\r\nSubject: message {n}\r\n\r\nbody {n}\r\n").into_bytes()
}

fn json(out: util::Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout())
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.dump()))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    let mut list: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    list.sort();
    list
}

/// The UIDLs of the maildrop, from the server itself.
fn uidls(srv: &Server<'_>) -> Vec<String> {
    let mut pop = srv.login(USER, PW);
    let mut list: Vec<String> = pop.uidl().into_iter().map(|(_, u)| u).collect();
    pop.quit();
    list.sort();
    list
}

/// fetchmail in keep mode (`uidl`: it remembers what it has seen), over
/// implicit TLS; returns its exit code (0 = mail, 1 = no mail, 3 = auth).
fn fetchmail(srv: &Server<'_>, work: &Path, out: &Path, password: &str) -> (i32, String) {
    std::fs::create_dir_all(out).unwrap();
    let rc = work.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no bouncemail\nset no syslog\n\
             poll localhost protocol pop3 port {port} uidl timeout 30\n  \
             user \"{USER}\" there with password \"{password}\" is root here\n  \
             mda \"cat > {out}/m.$$\"\n  keep fetchall ssl sslcertck sslcertfile \"{cert}\"\n",
            port = srv.pop3s,
            out = out.display(),
            cert = srv.dir.cert().display(),
        ),
    )
    .unwrap();
    set_mode(&rc, 0o600);
    let mut cmd = TestCommand::new("fetchmail");
    cmd.arg("-f")
        .arg(&rc)
        .args(["--nodetach", "-v"])
        // Its own lock: as root fetchmail would share /var/run/fetchmail.pid
        // with the interop matrix's runs in the same test binary.
        .arg("--pidfile")
        .arg(work.join("fetchmail.pid"))
        .env("FETCHMAILHOME", work)
        .env("HOME", work);
    cmd.timeout(Duration::from_secs(60));
    let o = cmd.output();
    (o.status.code().unwrap_or(-1), o.dump())
}

/// mpop in delete mode (`keep off`) into a Maildir, over implicit TLS.
fn mpop(srv: &Server<'_>, work: &Path, out: &Path, password: &str) -> (i32, String) {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(out.join(sub)).unwrap();
    }
    let cfg = work.join("mpoprc");
    std::fs::write(
        &cfg,
        format!(
            "account default\nhost localhost\nport {port}\nuser {USER}\npassword {password}\nauth user\n\
             tls on\ntls_starttls off\ntls_trust_file {cert}\nkeep off\nonly_new off\n\
             delivery maildir {out}\nuidls_file {work}/uidls\ntimeout 30\n",
            port = srv.pop3s,
            cert = srv.dir.cert().display(),
            out = out.display(),
            work = work.display(),
        ),
    )
    .unwrap();
    set_mode(&cfg, 0o600);
    let mut cmd = TestCommand::new("mpop");
    cmd.arg("-C").arg(&cfg).arg("-q").env("HOME", work);
    cmd.timeout(Duration::from_secs(60));
    let o = cmd.output();
    (o.status.code().unwrap_or(-1), o.dump())
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn files(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn two_devices_with_app_passwords_and_who_took_what() {
    util::require_tool("fetchmail");
    util::require_tool("mpop");
    let dir = Dir::new();
    dir.add_user(USER, PW);
    let srv = dir
        .server()
        // Removed mail stays restorable, so `mailbox show --removed` can
        // name the device that deleted it.
        .config(
            "retention",
            "{ expire_interval_secs = 0, restore_days = 7 }",
        )
        .start();
    let config = dir.scratch("pobox.toml");
    let laptop_pw = add_app_password(&dir, "laptop", "pop3");
    let phone_pw = add_app_password(&dir, "phone", "pop3");
    for n in 1..=3 {
        dir.deliver(USER, &message(n));
    }
    let first = uidls(&srv);
    assert_eq!(first.len(), 3);

    // The laptop (fetchmail) keeps mail on the server.
    let laptop = dir.scratch("laptop");
    std::fs::create_dir_all(&laptop).unwrap();
    let (code, log) = fetchmail(&srv, &laptop, &laptop.join("out"), &laptop_pw);
    assert_eq!(code, 0, "fetchmail with its app password\n{log}");
    assert_eq!(files(&laptop.join("out")), 3, "{log}");
    assert_eq!(uidls(&srv), first, "fetchmail keeps mail");

    let show = json(
        dir.pobox()
            .args(["mailbox", "show", USER, "--json"])
            .assert_exit(0),
    );
    for row in show.as_array().unwrap() {
        assert_eq!(strings(&row["retrieved_by"]), vec!["laptop"], "{show:#}");
    }

    // The phone (mpop) deletes what it downloads.
    let phone = dir.scratch("phone");
    std::fs::create_dir_all(&phone).unwrap();
    let (code, log) = mpop(&srv, &phone, &phone.join("out"), &phone_pw);
    assert_eq!(code, 0, "mpop with its app password\n{log}");
    assert_eq!(files(&phone.join("out")), 3, "{log}");
    assert!(uidls(&srv).is_empty(), "mpop deleted everything");

    // Which device took which mail.
    let report = json(
        dir.pobox()
            .args(["user", "show", USER, "--json"])
            .assert_exit(0),
    );
    let logins = report["logins"].as_array().unwrap();
    let by = |credential: &str| -> Vec<&serde_json::Value> {
        logins
            .iter()
            .filter(|l| l["credential"] == credential)
            .collect()
    };
    let laptop_sessions = by("laptop");
    assert_eq!(laptop_sessions.len(), 1, "{report:#}");
    assert_eq!(
        strings(&laptop_sessions[0]["retrieved"]),
        first,
        "{report:#}"
    );
    assert!(
        strings(&laptop_sessions[0]["deleted"]).is_empty(),
        "{report:#}"
    );
    assert_eq!(laptop_sessions[0]["client"], "127.0.0.1");
    assert_eq!(laptop_sessions[0]["quit"], true);
    let phone_sessions = by("phone");
    assert_eq!(phone_sessions.len(), 1, "{report:#}");
    assert_eq!(
        strings(&phone_sessions[0]["retrieved"]),
        first,
        "{report:#}"
    );
    assert_eq!(strings(&phone_sessions[0]["deleted"]), first, "{report:#}");
    // The test's own checks logged in with the main password.
    assert!(!by("password").is_empty(), "{report:#}");
    let apps = report["app_passwords"].as_array().unwrap();
    assert_eq!(apps.len(), 2);
    assert!(
        apps.iter()
            .all(|a| a["last_used"].is_string() && a["last_used_from"] == "127.0.0.1"),
        "{report:#}"
    );
    // Never a password in the history.
    let history = std::fs::read_to_string(dir.data().join("logins/alice.log")).unwrap();
    for secret in [laptop_pw.as_str(), phone_pw.as_str(), PW] {
        assert!(!history.contains(secret), "{history}");
    }

    // The deleted messages in the restore area name the phone.
    let removed = json(
        dir.pobox()
            .arg("--config")
            .arg(&config)
            .args(["mailbox", "show", USER, "--removed", "--json"])
            .assert_exit(0),
    );
    let removed = removed.as_array().unwrap();
    assert_eq!(removed.len(), 3, "{removed:?}");
    for row in removed {
        assert_eq!(row["deleted_by"], "phone", "{row:#}");
        assert_eq!(
            strings(&row["retrieved_by"]),
            vec!["laptop", "phone"],
            "{row:#}"
        );
    }
    let text = dir
        .pobox()
        .args(["user", "show", USER])
        .assert_exit(0)
        .stdout();
    assert!(
        text.contains("phone") && text.contains("laptop") && text.contains("Recent logins"),
        "{text}"
    );

    // Revoke the phone: its next login fails (the server's credential
    // cache must not keep it alive), the laptop and the main password work.
    dir.deliver(USER, &message(4));
    dir.pobox()
        .args(["user", "apppass", "revoke", USER, "phone"])
        .assert_exit(0);
    let (code, log) = mpop(&srv, &phone, &phone.join("out"), &phone_pw);
    assert_ne!(code, 0, "a revoked app password must not log in\n{log}");
    assert!(
        log.to_lowercase().contains("auth") || log.contains("-ERR"),
        "{log}"
    );
    assert_eq!(
        files(&phone.join("out")),
        3,
        "nothing downloaded after revocation\n{log}"
    );
    assert_eq!(uidls(&srv).len(), 1);
    let (code, log) = fetchmail(&srv, &laptop, &laptop.join("out"), &laptop_pw);
    assert_eq!(code, 0, "the other device still works\n{log}");
    assert_eq!(files(&laptop.join("out")), 4, "{log}");
    let main = dir.scratch("main");
    std::fs::create_dir_all(&main).unwrap();
    let (code, log) = fetchmail(&srv, &main, &main.join("out"), PW);
    assert_eq!(code, 0, "the main password still works\n{log}");
    let listed = dir
        .pobox()
        .args(["user", "apppass", "list", USER])
        .assert_exit(0)
        .stdout();
    assert!(
        listed.contains("laptop") && !listed.contains("phone"),
        "{listed}"
    );
}

#[test]
fn app_password_scopes_and_require_app_passwords() {
    let dir = Dir::new();
    dir.add_user(USER, PW);
    // A user with a SCRAM secret, so that SCRAM would be offered.
    dir.pobox()
        .args(["user", "add", "bob", "--password-stdin"])
        .stdin("bob pw\n")
        .assert_exit(0);
    let srv = dir.server().config("require_app_passwords", "true").start();
    let pop3 = add_app_password(&dir, "desk", "pop3");
    let none = add_app_password(&dir, "spare", "none");
    let attempt = |password: &str| {
        let mut pop = Pop3::connect(srv.pop3);
        assert!(pop.cmd(&format!("USER {USER}")).starts_with("+OK"));
        let reply = pop.cmd(&format!("PASS {password}"));
        pop.quit();
        reply
    };
    // The main password is refused under require_app_passwords, as [AUTH].
    let reply = attempt(PW);
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    // An app password without pop3 in its protocols is refused for POP3.
    let reply = attempt(&none);
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    // The POP3 one logs in, typed without dashes and capitalised too.
    assert!(attempt(&pop3).starts_with("+OK"));
    let loose = pop3.replace('-', "");
    let loose = format!("{}{}", loose[..1].to_uppercase(), &loose[1..]);
    assert!(
        attempt(&loose).starts_with("+OK"),
        "dashes are optional, case ignored"
    );
    // AUTH PLAIN (RFC 4616) takes app passwords too.
    let mut pop = Pop3::connect(srv.pop3);
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{pop3}"));
    assert!(pop.cmd(&format!("AUTH PLAIN {plain}")).starts_with("+OK"));
    pop.quit();
    // A session that ends without QUIT took nothing: its login is
    // recorded, with nothing retrieved.
    dir.deliver(USER, &message(1));
    let mut pop = Pop3::connect(srv.pop3);
    pop.login(USER, &pop3);
    assert!(pop.cmd_multi("RETR 1").starts_with(b"From:"));
    pop.drop_connection();
    // SCRAM derives from the main password: not offered under the option.
    let mut pop = Pop3::connect(srv.pop3);
    let capa = pop.cmd_lines("CAPA").join("\n");
    assert!(!capa.contains("SCRAM"), "{capa}");
    pop.quit();
    assert!(
        srv.stderr().contains("require_app_passwords"),
        "the refusal is explained in the log"
    );
    // Only the app-password logins are in the history.
    let report = json(
        dir.pobox()
            .args(["user", "show", USER, "--json"])
            .assert_exit(0),
    );
    let credentials: Vec<&str> = report["logins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["credential"].as_str().unwrap())
        .collect();
    assert_eq!(credentials, vec!["desk"; 4], "{report:#}");
    let mechanisms: Vec<&str> = report["logins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mechanism"].as_str().unwrap())
        .collect();
    assert_eq!(
        mechanisms,
        vec!["USER", "PLAIN", "USER", "USER"],
        "newest first: {report:#}"
    );
    let dropped = &report["logins"][0];
    assert_eq!(dropped["quit"], false, "{report:#}");
    assert!(
        strings(&dropped["retrieved"]).is_empty(),
        "no QUIT, nothing taken: {report:#}"
    );
    assert_eq!(report["logins"][1]["quit"], true);
    // The server's log never shows a password.
    for secret in [&pop3, &none, &loose] {
        assert!(!srv.stderr().contains(&**secret));
    }
}
