//! The benchmark's data: users, the one passwd-file both servers read, the
//! one TLS certificate both serve, and identical Maildirs for each server.
//!
//! Layout under the work dir `W`:
//! ```text
//! W/passwd                    Dovecot-format passwd-file, {SHA512-CRYPT}, shared
//! W/tls/{cert,key}.pem        one ECDSA P-256 certificate, shared
//! W/pobox/{data,pobox.toml}   pobox's data dir and config
//! W/pobox/mail/<user>/Maildir
//! W/dovecot/...               see dovecot.rs
//! W/dovecot/mail/<user>/Maildir   the same files as pobox's
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};

use crate::corpus::{self, Corpus};

/// Who exists and how much mail they have.
#[derive(Debug, Clone)]
pub(crate) struct Users {
    /// `f000`…: maildrops of `fetch_msgs` corpus messages (login, fetch).
    pub(crate) fetch: Vec<String>,
    pub(crate) fetch_msgs: usize,
    /// `d00`…: empty at start; LMTP targets, one per sender.
    pub(crate) deliver: Vec<String>,
    /// `i00000`…: empty; one per idle session (pobox locks maildrops).
    pub(crate) idle: Vec<String>,
    /// `big`: the big maildrop.
    pub(crate) big: String,
    pub(crate) big_msgs: usize,
}

impl Users {
    pub(crate) fn new(fetch: usize, fetch_msgs: usize, deliver: usize, idle: usize, big_msgs: usize) -> Users {
        Users {
            fetch: (0..fetch).map(|i| format!("f{i:03}")).collect(),
            fetch_msgs,
            deliver: (0..deliver).map(|i| format!("d{i:02}")).collect(),
            idle: (0..idle).map(|i| format!("i{i:05}")).collect(),
            big: "big".to_string(),
            big_msgs,
        }
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &String> {
        self.fetch.iter().chain(&self.deliver).chain(&self.idle).chain(std::iter::once(&self.big))
    }
}

/// Every user's password (distinct, so no two hashes are equal).
pub(crate) fn password(user: &str) -> String {
    format!("pw-{user}")
}

/// The mail root for one server: `W/<server>/mail`.
pub(crate) fn mail_root(work: &Path, server: &str) -> PathBuf {
    work.join(server).join("mail")
}

pub(crate) fn maildir(work: &Path, server: &str, user: &str) -> PathBuf {
    mail_root(work, server).join(user).join("Maildir")
}

/// Writes `W/passwd` with `{SHA512-CRYPT}` hashes made by `openssl passwd -6`
/// (5000 rounds, what `doveadm pw -s SHA512-CRYPT` makes), reusing the file
/// when the same users and uid were hashed before (10,000 hashes take a while).
///
/// # Errors
/// openssl missing or failing, file errors.
pub(crate) fn passwd_file(work: &Path, users: &Users, uid: u32, gid: u32) -> anyhow::Result<PathBuf> {
    let path = work.join("passwd");
    let stamp_path = work.join("passwd.stamp");
    let names: Vec<&String> = users.all().collect();
    let stamp = format!("v1 uid={uid} gid={gid} users={} last={:?}", names.len(), names.last());
    if path.exists() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(path);
    }
    let mut child = Command::new("openssl")
        .args(["passwd", "-6", "-salt", "pobench1", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running openssl (apt-get install openssl)")?;
    let mut input = String::new();
    for u in &names {
        writeln!(input, "{}", password(u)).expect("write to String");
    }
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    ensure!(out.status.success(), "openssl passwd failed");
    let hashes: Vec<&str> = std::str::from_utf8(&out.stdout)?.lines().collect();
    ensure!(hashes.len() == names.len(), "openssl gave {} hashes for {} users", hashes.len(), names.len());
    let mut text = String::new();
    for (u, h) in names.iter().zip(hashes) {
        ensure!(h.starts_with("$6$"), "unexpected hash {h:?}");
        let home = mail_root(work, "dovecot").join(u.as_str());
        writeln!(text, "{u}:{{SHA512-CRYPT}}{h}:{uid}:{gid}::{}::", home.display()).expect("write to String");
    }
    fs::write(&path, text)?;
    fs::write(&stamp_path, stamp)?;
    Ok(path)
}

/// One self-signed ECDSA P-256 certificate for `localhost`, both servers.
///
/// # Errors
/// openssl missing or failing.
pub(crate) fn tls_cert(work: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = work.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    fs::create_dir_all(&dir)?;
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl req")?;
    ensure!(st.success(), "openssl req failed");
    Ok((cert, key))
}

/// Writes identical Maildirs for each server in `servers`.
///
/// # Errors
/// File-system errors.
pub(crate) fn maildrops(work: &Path, servers: &[&str], users: &Users, corpus: &Corpus) -> anyhow::Result<()> {
    for server in servers {
        for (i, u) in users.fetch.iter().enumerate() {
            let drop = corpus.maildrop(i, users.fetch_msgs);
            corpus::write_maildir(&maildir(work, server, u), drop.iter().map(|&k| corpus.msgs[k].stored.as_slice()))?;
        }
        for u in users.deliver.iter().chain(&users.idle) {
            corpus::empty_maildir(&maildir(work, server, u))?;
        }
        let tiny = big_message();
        corpus::write_maildir(&maildir(work, server, &users.big), (0..users.big_msgs).map(|_| tiny.as_slice()))?;
    }
    Ok(())
}

/// The big maildrop's message: its content is never read by the scenario
/// (login + STAT + UIDL work from the file names), so it is small.
fn big_message() -> Vec<u8> {
    let mut m = b"X-Bench-Id: big\nFrom: <a@example.org>\nSubject: big maildrop\n\n".to_vec();
    for _ in 0..8 {
        m.extend_from_slice(b"a line of body text that is long enough to look like mail\n");
    }
    m
}

/// A free loopback port (bound, then released; the race is harmless here).
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// `chown -R user:group path` (Dovecot's mail processes run as the
/// passwd-file's uid, never root).
///
/// # Errors
/// chown failing.
pub(crate) fn chown(path: &Path, owner: &str) -> anyhow::Result<()> {
    let st = Command::new("chown").arg("-R").arg(owner).arg(path).status()?;
    if !st.success() {
        bail!("chown -R {owner} {} failed", path.display());
    }
    Ok(())
}
