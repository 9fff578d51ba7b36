//! Shared test harness: a private Dovecot on loopback, a `pobox serve`
//! instance, a fault-injecting proxy, test messages, and a runner for the
//! real entry point, `pobox --config FILE fetch` (the `pobox` binary of this
//! workspace). Everything binds 127.0.0.1 and has timeouts.
//!
//! A test that cannot run because a tool is missing fails, naming the
//! Debian package; with `POBOX_ALLOW_SKIP=1` it says why on stderr and
//! returns instead (see [`require`]).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const USER: &str = "tester";
pub const PASSWORD: &str = "s3cret pass";

/// A free loopback port (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for_port(port: u16, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A self-signed certificate for `localhost` only (no IP SAN, so
/// connecting as 127.0.0.1 is a name mismatch).
pub fn write_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// Whether a test may run: true when `path` exists. Otherwise the test
/// fails naming `package`, unless `POBOX_ALLOW_SKIP=1` is set, in which
/// case this prints why and returns false (the caller returns).
pub fn require(path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    let why = format!("{path} is missing: apt-get install -y {package}");
    if std::env::var_os("POBOX_ALLOW_SKIP").is_some_and(|v| v == "1") {
        eprintln!("SKIP (POBOX_ALLOW_SKIP=1): {why}");
        return false;
    }
    panic!("{why} (or set POBOX_ALLOW_SKIP=1 to skip this test)");
}

/// The workspace's `pobox` binary (or `POBOX_BIN`). `cargo test
/// --workspace` builds it before any test runs; with `-p pobox-fetch` alone
/// it may be missing or older than the fetcher's sources, and a test must
/// not pass against old code, so both are failures.
pub fn pobox_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("POBOX_BIN") {
        return PathBuf::from(b);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("debug/pobox");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} does not exist: run `cargo build -p pobox` first, or set POBOX_BIN", bin.display()));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for dir in [root.join("src"), root.join("src/dest"), root.join("../pobox/src"), root.join("../pobox/src/cli"), root.join("../pobox/src/cli/import")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let changed = e.metadata().and_then(|m| m.modified()).unwrap_or(built);
            assert!(
                changed <= built,
                "{} is older than {}: run `cargo build -p pobox` (or set POBOX_BIN)",
                bin.display(),
                e.path().display()
            );
        }
    }
    bin
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A private Dovecot 2.3 POP3 server with one user whose Maildir we fill
/// directly.
pub struct Dovecot {
    pub dir: tempfile::TempDir,
    pub pop3: u16,
    pub pop3s: u16,
    pub cert: PathBuf,
    child: Child,
    uid: u32,
    gid: u32,
    seq: AtomicU64,
}

impl Dovecot {
    /// Starts Dovecot with a self-signed certificate for `localhost`; see
    /// [`require`] for when it is not installed.
    pub fn start() -> Option<Dovecot> {
        Dovecot::start_with(None)
    }

    /// Starts Dovecot with the given certificate and key (PEM), or a fresh
    /// self-signed one.
    pub fn start_with(cert_key: Option<(PathBuf, PathBuf)>) -> Option<Dovecot> {
        Dovecot::start_full(cert_key, "%08Xu%08Xv")
    }

    /// Starts Dovecot giving UIDLs in `pop3_uidl_format` (Dovecot's own
    /// syntax, e.g. `%08Xu%08Xv`, its 2.3 default).
    pub fn start_full(cert_key: Option<(PathBuf, PathBuf)>, uidl_format: &str) -> Option<Dovecot> {
        if !require("/usr/sbin/dovecot", "dovecot-pop3d") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // Dovecot's unprivileged processes must traverse it.
        set_mode(dir.path(), 0o755);
        let (cert, key) = match cert_key {
            Some((c, k)) => {
                let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
                std::fs::copy(c, &cert).unwrap();
                std::fs::copy(k, &key).unwrap();
                (cert, key)
            }
            None => write_cert(dir.path()),
        };
        let (pop3, pop3s) = (free_port(), free_port());
        let d = dir.path().display();
        // As root, Dovecot insists on unprivileged login/mail users; as an
        // ordinary user, everything runs as that user.
        let (uid, gid, login_user, internal_user, internal_group) = if is_root() {
            (65534, 65534, "dovenull".to_string(), "dovecot".to_string(), "dovecot".to_string())
        } else {
            let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
            let grp = String::from_utf8(Command::new("id").arg("-gn").output().unwrap().stdout).unwrap();
            let (u, g) = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
            (u, g, me.trim().to_string(), me.trim().to_string(), grp.trim().to_string())
        };
        std::fs::write(
            dir.path().join("passwd"),
            format!("{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{d}/home::\n"),
        )
        .unwrap();
        let conf = format!(
            r#"protocols = pop3
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/run/state
log_path = {d}/dovecot.log
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login scram-sha-256
auth_failure_delay = 0
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = 1
mail_location = maildir:~/Maildir
pop3_uidl_format = {uidl_format}
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/passwd
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"#,
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(dir.path().join("dovecot.conf"), conf).unwrap();
        let md = dir.path().join("home/Maildir");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        let child = Dovecot::spawn(&dir.path().join("dovecot.conf"));
        let dv = Dovecot { dir, pop3, pop3s, cert, child, uid, gid, seq: AtomicU64::new(0) };
        dv.chown_home();
        assert!(wait_for_port(pop3, Duration::from_secs(15)), "dovecot did not start: {}", dv.log());
        assert!(wait_for_port(pop3s, Duration::from_secs(15)));
        Some(dv)
    }

    /// Dovecot in the foreground, in a process group of its own so that
    /// [`kill_hard`](Self::kill_hard) reaches its children too.
    fn spawn(conf: &Path) -> Child {
        use std::os::unix::process::CommandExt as _;
        Command::new("/usr/sbin/dovecot")
            .arg("-F")
            .arg("-c")
            .arg(conf)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// SIGKILLs Dovecot and all its processes at once (the master and
    /// every login and pop3 process, open connections included), as a
    /// crashing machine would.
    pub fn kill_hard(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }

    /// Starts Dovecot again on the same configuration, ports and Maildir
    /// after [`kill_hard`](Self::kill_hard).
    pub fn restart(&mut self) {
        self.child = Dovecot::spawn(&self.dir.path().join("dovecot.conf"));
        assert!(wait_for_port(self.pop3, Duration::from_secs(15)), "dovecot did not restart: {}", self.log());
        assert!(wait_for_port(self.pop3s, Duration::from_secs(15)));
    }

    fn chown_home(&self) {
        if is_root() {
            let _ = Command::new("chown").arg("-R").arg(format!("{}:{}", self.uid, self.gid)).arg(self.dir.path().join("home")).status();
        }
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("home/Maildir")
    }

    /// Puts messages into the user's Maildir `new/` (as an MDA would).
    pub fn deliver(&self, msgs: &[Vec<u8>]) {
        for m in msgs {
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let tmp = self.maildir().join(format!("tmp/{n}.test"));
            std::fs::write(&tmp, m).unwrap();
            // Plays the server side's MDA on Dovecot's Maildir, not ours.
            #[allow(clippy::disallowed_methods)]
            std::fs::rename(&tmp, self.maildir().join(format!("new/{n}.test"))).unwrap();
        }
        self.chown_home();
    }

    /// Messages left in the server's Maildir.
    pub fn server_count(&self) -> usize {
        ["new", "cur"].iter().map(|s| std::fs::read_dir(self.maildir().join(s)).unwrap().count()).sum()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Test messages: LF line endings (what the Maildir on both sides holds),
/// with the awkward cases in them: lines that need dot-stuffing, a lone
/// ".", mbox "From " lines, 8-bit bytes, a long line, varied sizes.
pub fn messages(count: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut m = format!(
                "From: sender{i}@example.org\nTo: {USER}@example.org\nSubject: test {tag} {i}\nMessage-ID: <{tag}.{i}@example.org>\n\n"
            )
            .into_bytes();
            m.extend_from_slice(b"Hello.\n.leading dot\n.\n..two dots\nFrom the start of a line\n");
            m.extend_from_slice("8-bit: gr\u{fc}\u{df}e \u{2603}\n".as_bytes());
            let filler = (i * 7919) % 20_000;
            let line: String = (0..filler).map(|k| (b'a' + (k % 26) as u8) as char).collect();
            m.extend_from_slice(line.as_bytes());
            m.extend_from_slice(format!("\nend of {tag} {i}\n").as_bytes());
            m
        })
        .collect()
}

/// All message files of a local Maildir (new/ and cur/).
pub fn local_messages(maildir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(maildir.join(sub)) {
            for e in rd {
                out.push(std::fs::read(e.unwrap().path()).unwrap());
            }
        }
    }
    out
}

/// [`assert_exactly_once`], plus nothing left in `tmp/` (a killed writer
/// leaves its tmp file; the next run removes it once it is a minute old).
pub fn assert_exactly_once_clean(maildir: &Path, expected: &[Vec<u8>]) {
    assert_exactly_once(maildir, expected);
    let tmp = std::fs::read_dir(maildir.join("tmp")).map(|r| r.count()).unwrap_or(0);
    assert_eq!(tmp, 0, "files left in tmp/");
}

/// Asserts every expected message is in the Maildir exactly once, byte for
/// byte, and nothing else is.
pub fn assert_exactly_once(maildir: &Path, expected: &[Vec<u8>]) {
    let local = local_messages(maildir);
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for m in &local {
        *counts.entry(m.as_slice()).or_default() += 1;
    }
    for (i, m) in expected.iter().enumerate() {
        let n = counts.get(m.as_slice()).copied().unwrap_or(0);
        assert_eq!(n, 1, "message {i} is stored {n} times (byte-exact)");
    }
    assert_eq!(local.len(), expected.len(), "unexpected extra files in {}", maildir.display());
}

/// A test account's settings, turned into a config file.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub maildir: PathBuf,
}

impl Setup {
    /// Writes a config with one account `acct`; `extra` is appended to the
    /// account table (security, port, policy…).
    pub fn new(port: u16, host: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("Mail");
        let config = dir.path().join("fetch.toml");
        let text = format!(
            "state_dir = \"{}\"\n[accounts.acct]\nhost = \"{host}\"\nport = {port}\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\nmaildir = \"{}\"\ntimeout_secs = 20\n{extra}\n",
            dir.path().join("state").display(),
            maildir.display()
        );
        std::fs::write(&config, text).unwrap();
        // It holds a password: anything wider is refused.
        set_mode(&config, 0o600);
        Setup { dir, config, maildir }
    }

    /// `pobox --config FILE fetch ARGS`, with no `POBOX_*` variables from
    /// the environment of whoever runs the tests.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(pobox_bin());
        c.arg("--config").arg(&self.config).arg("fetch").args(args);
        for v in ["POBOX_CONFIG", "POBOX_DATA", "POBOX_FETCH_CONFIG", "POBOX_FETCH_FAULT"] {
            c.env_remove(v);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Replaces `from` with `to` in the config file.
    pub fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "{from:?} not in the config");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    /// Runs a fetch to completion (bounded to 120 s).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_cmd(self.command(args))
    }

    /// Runs a prepared command to completion (bounded to 120 s).
    pub fn run_cmd(&self, mut cmd: Command) -> Output {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if start.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("fetch did not finish in 120 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Where the fault-injecting proxy breaks the connection.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// After relaying this many octets from the server (lands inside a
    /// RETR reply for most values).
    AfterServerBytes(u64),
    /// When the client sends its n-th DELE (1-based): forward it, relay no
    /// reply, close.
    BeforeDeleOk(u32),
    /// Forward QUIT, let the server commit, relay no reply, close.
    BeforeQuitReply,
}

/// A one-connection loopback proxy in front of `upstream` that injects
/// `fault`. Returns its port and a flag set once the fault fired.
pub fn proxy(upstream: u16, fault: Fault) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fired = Arc::new(AtomicBool::new(false));
    let fired2 = fired.clone();
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else { return };
        let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
        let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = server.set_read_timeout(Some(Duration::from_secs(60)));
        let mute = Arc::new(AtomicBool::new(false));
        // server -> client
        let (mut s_r, mut c_w) = (server.try_clone().unwrap(), client.try_clone().unwrap());
        let (mute2, fired3) = (mute.clone(), fired2.clone());
        let down = std::thread::spawn(move || {
            let mut relayed = 0u64;
            let mut buf = [0u8; 8192];
            loop {
                let n = match s_r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if mute2.load(Ordering::SeqCst) {
                    continue;
                }
                let mut n = n;
                if let Fault::AfterServerBytes(limit) = fault
                    && relayed + n as u64 >= limit
                {
                    n = (limit - relayed) as usize;
                    let _ = c_w.write_all(&buf[..n]);
                    fired3.store(true, Ordering::SeqCst);
                    break;
                }
                if c_w.write_all(&buf[..n]).is_err() {
                    break;
                }
                relayed += n as u64;
            }
            let _ = c_w.shutdown(Shutdown::Both);
            let _ = s_r.shutdown(Shutdown::Both);
        });
        // client -> server, watching command lines
        let (mut c_r, mut s_w) = (client, server);
        let mut line = Vec::new();
        let mut deles = 0u32;
        let mut buf = [0u8; 4096];
        'outer: loop {
            let n = match c_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                line.push(b);
                if b != b'\n' {
                    continue;
                }
                let upper = String::from_utf8_lossy(&line).to_ascii_uppercase();
                let trip = match fault {
                    Fault::BeforeDeleOk(k) if upper.starts_with("DELE ") => {
                        deles += 1;
                        deles == k
                    }
                    Fault::BeforeQuitReply => upper.starts_with("QUIT"),
                    _ => false,
                };
                if trip {
                    // Mute first, so no reply to this command gets through.
                    mute.store(true, Ordering::SeqCst);
                    fired2.store(true, Ordering::SeqCst);
                    let _ = s_w.write_all(&line);
                    if matches!(fault, Fault::BeforeQuitReply) {
                        // Let the server do its UPDATE and close; the muted
                        // reader then closes the client side.
                        break 'outer;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    let _ = c_r.shutdown(Shutdown::Both);
                    let _ = s_w.shutdown(Shutdown::Both);
                    break 'outer;
                }
                if s_w.write_all(&line).is_err() {
                    break 'outer;
                }
                line.clear();
            }
        }
        let _ = down.join();
    });
    (port, fired)
}

/// `pobox serve` (from `POBOX_BIN`, or the workspace's target directory),
/// with one user.
pub struct PoboxServe {
    pub dir: tempfile::TempDir,
    pub pop3: u16,
    pub pop3s: u16,
    pub bin: PathBuf,
    child: Child,
}

impl PoboxServe {
    pub fn start() -> Option<PoboxServe> {
        PoboxServe::start_with(None)
    }

    /// `pobox serve` with this certificate and key (PEM) in its data
    /// directory's `tls/`, or one it generates.
    pub fn start_with(cert_key: Option<(PathBuf, PathBuf)>) -> Option<PoboxServe> {
        let bin = pobox_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if let Some((c, k)) = cert_key {
            std::fs::create_dir_all(data.join("tls")).unwrap();
            std::fs::copy(c, data.join("tls/cert.pem")).unwrap();
            std::fs::copy(k, data.join("tls/key.pem")).unwrap();
            set_mode(&data.join("tls/key.pem"), 0o600);
        }
        let mut add = Command::new(&bin)
            .env_remove("POBOX_CONFIG")
            .arg("--data")
            .arg(&data)
            .args(["user", "add", USER, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        add.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
        assert!(add.wait().unwrap().success(), "pobox user add failed");
        let (pop3, pop3s) = (free_port(), free_port());
        let child = Command::new(&bin)
            .env_remove("POBOX_CONFIG")
            .arg("--data")
            .arg(&data)
            .args(["serve", "--pop3", &format!("127.0.0.1:{pop3}"), "--pop3s", &format!("127.0.0.1:{pop3s}"), "--lmtp", "none", "--smtp", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for_port(pop3s, Duration::from_secs(15)), "pobox serve did not start");
        Some(PoboxServe { dir, pop3, pop3s, bin, child })
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("data/tls/cert.pem")
    }

    pub fn deliver(&self, msgs: &[Vec<u8>]) {
        for m in msgs {
            let mut c = Command::new(&self.bin)
                .arg("--data")
                .arg(self.dir.path().join("data"))
                .args(["deliver", USER])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(m).unwrap();
            assert!(c.wait().unwrap().success(), "pobox deliver failed");
        }
    }
}

impl Drop for PoboxServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl req -x509`'s self-signed certificate for `localhost`, as a user
/// makes one: Debian's openssl.cnf marks it `basicConstraints CA:TRUE`.
/// Returns (cert, key) in `dir`.
pub fn openssl_self_signed(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    if !require("/usr/bin/openssl", "openssl") {
        return None;
    }
    let (cert, key) = (dir.join("x509-cert.pem"), dir.join("x509-key.pem"));
    let o = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&o.stderr));
    let text = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&cert).output().unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
        "this openssl made no CA:TRUE certificate, so the test would prove nothing"
    );
    Some((cert, key))
}

/// Parses an mboxrd file into its messages (the `From ` lines removed, one
/// `>` taken off quoted `From ` lines, the separator line dropped).
pub fn mbox_messages(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read(path).unwrap_or_default();
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            out.push(Vec::new());
            continue;
        }
        let cur = out.last_mut().expect("an mbox starts with a From line");
        let quoted = line.iter().position(|&b| b != b'>').is_some_and(|p| p > 0 && line[p..].starts_with(b"From "));
        cur.extend_from_slice(if quoted { &line[1..] } else { line });
    }
    for m in &mut out {
        assert_eq!(m.pop(), Some(b'\n'), "each entry ends with a blank separator line");
    }
    out
}

/// Every expected message exactly once, byte for byte, and nothing else.
pub fn assert_each_once(found: &[Vec<u8>], expected: &[Vec<u8>], what: &str) {
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for m in found {
        *counts.entry(m.as_slice()).or_default() += 1;
    }
    for (i, m) in expected.iter().enumerate() {
        let n = counts.get(m.as_slice()).copied().unwrap_or(0);
        assert_eq!(n, 1, "{what}: message {i} is stored {n} times (byte-exact)");
    }
    assert_eq!(found.len(), expected.len(), "{what}: unexpected extra entries");
}
