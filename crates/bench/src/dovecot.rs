//! A private Dovecot 2.3 instance (Debian's `dovecot-pop3d` +
//! `dovecot-lmtpd`): its own base_dir, loopback ports, Maildir and the
//! shared passwd-file. Nothing of the system's Dovecot config is used.
//!
//! Settings that matter for the comparison:
//! * high-performance login mode (`service_count = 0`, one login process
//!   per core: the server is pinned to one) — Dovecot's fastest login path;
//! * no auth cache (Dovecot's default), `mail_fsync = optimized` (default:
//!   fsync on delivery, like pobox);
//! * limits raised for 10,000 idle sessions (`process_limit`,
//!   `mail_max_userip_connections`, `client_limit`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::servers::{Server, command};

/// The unprivileged mail user Dovecot's mail processes run as.
pub(crate) const MAIL_USER: &str = "pobench";

/// Why Dovecot cannot be used here, if it cannot.
pub(crate) fn unavailable() -> Option<String> {
    let Some(bin) = find_dovecot() else {
        return Some("dovecot is not installed (apt-get install dovecot-pop3d dovecot-lmtpd)".into());
    };
    for helper in ["pop3", "lmtp", "pop3-login"] {
        if !Path::new("/usr/lib/dovecot").join(helper).exists() {
            return Some(format!("{} found but /usr/lib/dovecot/{helper} is missing (apt-get install dovecot-pop3d dovecot-lmtpd)", bin.display()));
        }
    }
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("not running as root: a private Dovecot needs root to start".into());
    }
    None
}

fn find_dovecot() -> Option<PathBuf> {
    ["/usr/sbin/dovecot", "/usr/local/sbin/dovecot"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// The mail user's uid and gid, creating the user if needed.
///
/// # Errors
/// useradd failing.
pub(crate) fn mail_user() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").arg(flag).arg(MAIL_USER).output().ok()?;
        if !o.status.success() {
            return None;
        }
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let st = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", MAIL_USER])
            .status()
            .context("useradd")?;
        if !st.success() {
            bail!("useradd {MAIL_USER} failed");
        }
    }
    match (id("-u"), id("-g")) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => bail!("cannot resolve uid/gid of {MAIL_USER}"),
    }
}

fn config(work: &Path, ports: &[u16; 3], passwd: &Path, cert: &Path, key: &Path, uid: u32) -> String {
    let d = work.join("dovecot");
    let mail = crate::setup::mail_root(work, "dovecot");
    format!(
        r#"# written by pobox-bench: a private Dovecot for benchmarking
base_dir = {d}/run
state_dir = {d}/state
instance_name = pobox-bench
log_path = {d}/log/dovecot.log
info_log_path = {d}/log/info.log
protocols = pop3 lmtp
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain
auth_username_format = %Ln
mail_location = maildir:{mail}/%u/Maildir
first_valid_uid = {uid}
last_valid_uid = {uid}
default_process_limit = 12000
default_client_limit = 30000
default_vsz_limit = 1G
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {p0}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {p1}
    ssl = yes
  }}
  # high-performance mode: long-lived login processes, one per core
  service_count = 0
  process_min_avail = 1
  client_limit = 30000
}}
service pop3 {{
  process_limit = 12000
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {p2}
  }}
}}
service anvil {{
  client_limit = 40000
}}
service auth {{
  client_limit = 40000
}}
protocol pop3 {{
  mail_max_userip_connections = 20000
}}
"#,
        d = d.display(),
        cert = cert.display(),
        key = key.display(),
        mail = mail.display(),
        passwd = passwd.display(),
        p0 = ports[0],
        p1 = ports[1],
        p2 = ports[2],
    )
}

/// Writes the config and starts `dovecot -F` pinned like pobox.
///
/// # Errors
/// Missing binaries, config errors (the log's tail is shown).
pub(crate) fn start(work: &Path, pin: Option<&str>, passwd: &Path, cert: &Path, key: &Path, uid: u32) -> anyhow::Result<Server> {
    let bin = find_dovecot().context("dovecot binary not found")?;
    let d = work.join("dovecot");
    for sub in ["run", "state", "log"] {
        std::fs::create_dir_all(d.join(sub))?;
    }
    let p = crate::setup::free_ports(3)?;
    let ports = [p[0], p[1], p[2]];
    let conf = d.join("dovecot.conf");
    std::fs::write(&conf, config(work, &ports, passwd, cert, key, uid))?;
    let mut cmd = command(pin, &bin);
    cmd.arg("-F").arg("-c").arg(&conf);
    let a = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let log = d.join("log").join("stdout.log");
    Server::spawn("dovecot", cmd, log, a(ports[0]), Some(a(ports[1])), Some(a(ports[2])))
        .map_err(|e| anyhow::anyhow!("{e:#}\ndovecot.log:\n{}", std::fs::read_to_string(d.join("log/dovecot.log")).unwrap_or_default()))
}

/// Dovecot's version string, for the record.
pub(crate) fn version() -> String {
    find_dovecot()
        .and_then(|b| Command::new(b).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
