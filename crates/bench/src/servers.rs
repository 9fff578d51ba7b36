//! Starting, measuring and stopping the servers under test: pobox, the
//! private Dovecot (see `dovecot.rs`) and the raw sender. Each is pinned
//! to the server CPU with `taskset`, which execs it, so the child's pid is
//! the server's.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::procfs;

/// A running server: one process, or several nodes sharing one store
/// (pobox on PostgreSQL) that the load is spread across.
pub(crate) struct Server {
    pub(crate) name: &'static str,
    pub(crate) pop3: SocketAddr,
    pub(crate) pop3s: Option<SocketAddr>,
    pub(crate) lmtp: Option<SocketAddr>,
    pub(crate) pid: u32,
    child: Child,
    pub(crate) log: PathBuf,
    tck: f64,
    /// Further nodes of the same server, after the first (whose addresses
    /// are the fields above). Worker `w` talks to node `w % nodes`.
    more: Vec<Server>,
    /// Processes outside the server that do its work and whose CPU counts
    /// as the server's (PostgreSQL's postmaster, with its backends).
    helpers: Vec<u32>,
}

/// How to pin: `Some("0")` runs the command under `taskset -c 0`.
pub(crate) fn command(pin: Option<&str>, program: &Path) -> Command {
    match pin {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Server {
    /// Spawns `cmd` (stdout and stderr to `log`) and waits until `pop3`
    /// greets.
    ///
    /// # Errors
    /// Spawn failure, or no greeting within 30 s (the log's tail is shown).
    pub(crate) fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: PathBuf,
        pop3: SocketAddr,
        pop3s: Option<SocketAddr>,
        lmtp: Option<SocketAddr>,
    ) -> anyhow::Result<Server> {
        let out = File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        let mut s =
            Server { name, pop3, pop3s, lmtp, pid, child, log, tck: procfs::clk_tck(), more: Vec::new(), helpers: Vec::new() };
        s.wait_ready(Duration::from_secs(30))?;
        Ok(s)
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(st) = self.child.try_wait()? {
                bail!("{} exited at start ({st}); log:\n{}", self.name, self.log_tail());
            }
            if let Ok(s) = std::net::TcpStream::connect_timeout(&self.pop3, Duration::from_millis(200)) {
                use std::io::Read;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut b = [0u8; 3];
                if (&s).read_exact(&mut b).is_ok() && &b == b"+OK" {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not greet on {} within {limit:?}; log:\n{}", self.name, self.pop3, self.log_tail())
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Adds `node` as a further node of this server (see [`Server::pop3_for`]).
    pub(crate) fn with_node(mut self, node: Server) -> Server {
        self.more.push(node);
        self
    }

    /// Counts `pid` (and its children) in this server's CPU time.
    pub(crate) fn with_helper(mut self, pid: u32) -> Server {
        self.helpers.push(pid);
        self
    }

    /// How many nodes serve this server's clients.
    pub(crate) fn nodes(&self) -> usize {
        1 + self.more.len()
    }

    fn node(&self, w: usize) -> &Server {
        match w % self.nodes() {
            0 => self,
            i => &self.more[i - 1],
        }
    }

    /// The POP3 address worker `w` uses: nodes take workers in turn.
    pub(crate) fn pop3_for(&self, w: usize) -> SocketAddr {
        self.node(w).pop3
    }

    /// The POP3S address worker `w` uses.
    pub(crate) fn pop3s_for(&self, w: usize) -> Option<SocketAddr> {
        self.node(w).pop3s
    }

    /// The LMTP address worker `w` uses.
    pub(crate) fn lmtp_for(&self, w: usize) -> Option<SocketAddr> {
        self.node(w).lmtp
    }

    /// CPU seconds used so far by the server's processes: every node, and
    /// the helpers that work for it (the database).
    pub(crate) fn cpu_secs(&self) -> f64 {
        let own = procfs::cpu_ticks(self.pid) + self.helpers.iter().map(|&p| procfs::cpu_ticks(p)).sum::<u64>();
        own as f64 / self.tck + self.more.iter().map(Server::cpu_secs).sum::<f64>()
    }

    /// Memory of the server's own processes (every node; not the
    /// database's, which a pool keeps constant whatever the sessions).
    pub(crate) fn mem(&self) -> procfs::Mem {
        let mut m = procfs::mem(self.pid);
        for n in &self.more {
            let o = n.mem();
            m.rss_kib += o.rss_kib;
            m.pss_kib += o.pss_kib;
            m.processes += o.processes;
        }
        m
    }

    /// Errors if the server (any node) died.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} died ({st}); log:\n{}", self.name, self.log_tail());
        }
        for n in &mut self.more {
            n.check_alive()?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 15 s (every node).
    pub(crate) fn stop(mut self) {
        for n in std::mem::take(&mut self.more) {
            n.stop();
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pobox's config for the benchmark: the shared passwd-file, cert and key.
pub(crate) fn pobox_config(work: &Path, ports: &[u16; 3], passwd: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "# written by pobox-bench\n\
         pop3 = [\"127.0.0.1:{}\"]\npop3s = [\"127.0.0.1:{}\"]\nlmtp = [\"127.0.0.1:{}\"]\nsmtp = []\n\
         mail_location = \"{}/{{user}}/Maildir\"\npasswd_file = \"{}\"\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\nmax_connections = 30000\nmax_connections_per_ip = 30000\nlog = \"warn\"\n",
        ports[0],
        ports[1],
        ports[2],
        crate::setup::mail_root(work, "pobox").display(),
        passwd.display(),
        cert.display(),
        key.display(),
    )
}

/// Starts pobox on three fresh loopback ports.
///
/// # Errors
/// See [`Server::spawn`].
pub(crate) fn start_pobox(work: &Path, bin: &Path, pin: Option<&str>, passwd: &Path, cert: &Path, key: &Path) -> anyhow::Result<Server> {
    let p = crate::setup::free_ports(3)?;
    let ports = [p[0], p[1], p[2]];
    let dir = work.join("pobox");
    std::fs::create_dir_all(dir.join("data"))?;
    let conf = dir.join("pobox.toml");
    std::fs::write(&conf, pobox_config(work, &ports, passwd, cert, key))?;
    let mut cmd = command(pin, bin);
    cmd.arg("--data").arg(dir.join("data")).arg("--config").arg(&conf).arg("serve");
    let a = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    Server::spawn("pobox", cmd, dir.join("pobox.log"), a(ports[0]), Some(a(ports[1])), Some(a(ports[2])))
}

/// Starts the raw sender (this binary's `raw-server`) over pobox's Maildirs.
///
/// # Errors
/// See [`Server::spawn`].
pub(crate) fn start_raw(work: &Path, pin: Option<&str>) -> anyhow::Result<Server> {
    let port = crate::setup::free_ports(1)?[0];
    let me = std::env::current_exe()?;
    let mut cmd = command(pin, &me);
    cmd.arg("raw-server")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--mail-root")
        .arg(crate::setup::mail_root(work, "pobox"));
    Server::spawn("raw", cmd, work.join("raw.log"), SocketAddr::from(([127, 0, 0, 1], port)), None, None)
}
