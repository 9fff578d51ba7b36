//! A throwaway PostgreSQL 15 cluster for tests (feature `testkit`), from
//! Debian's `postgresql-15` (`/usr/lib/postgresql/15/bin`).
//!
//! * [`TestPg::new`] initialises a cluster in a temporary directory and
//!   starts it on a free port on 127.0.0.1 only (no Unix socket outside
//!   that directory), as an unprivileged user: when the tests run as
//!   root (CI does) the binaries run as `postgres` through `runuser`, in a
//!   directory owned by that user. Authentication is `trust`: only
//!   loopback connections are accepted and nothing in it matters.
//! * [`TestPg::create_database`] gives each test a fresh database, so
//!   tests sharing a cluster ([`TestPg::shared`]) do not see each other.
//! * [`TestPg::stop`], [`start`](TestPg::start),
//!   [`restart`](TestPg::restart) for tests of outages.
//! * Dropping a [`TestPg`] stops the cluster at once (`-m immediate`) and
//!   removes its directory; the shared cluster is stopped by a watchdog
//!   when the test process exits, however it exits.
//!
//! [`require`] makes a missing PostgreSQL a test failure unless
//! `POBOX_ALLOW_SKIP=1` is set.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::PgConfig;

/// Where Debian's `postgresql-15` puts its programs.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The cluster's superuser (trust authentication on loopback).
pub const SUPERUSER: &str = "pobox";

/// A running throwaway cluster.
pub struct TestPg {
    dir: PathBuf,
    port: u16,
    /// Keeps the temporary directory's owner (`postgres` under root).
    run_as: Option<String>,
    /// The shared cluster's watchdog: stops the cluster when this
    /// process's end closes the pipe.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    owned: bool,
    /// Server options beyond the port and address (TLS).
    extra: String,
}

/// Whether PostgreSQL 15 can run here; if not, fails the test, or skips
/// it (returns `false`) when `POBOX_ALLOW_SKIP=1`.
///
/// # Panics
///
/// When PostgreSQL is missing and skipping is not allowed.
#[must_use]
pub fn require(test: &str) -> bool {
    if Path::new(BIN_DIR).join("initdb").exists() && Path::new(BIN_DIR).join("pg_ctl").exists() {
        return true;
    }
    if std::env::var_os("POBOX_ALLOW_SKIP").is_some_and(|v| v == "1") {
        eprintln!(
            "SKIPPED {test}: needs PostgreSQL 15 (apt-get install postgresql-15) (POBOX_ALLOW_SKIP=1)"
        );
        return false;
    }
    panic!(
        "{test} cannot run: needs PostgreSQL 15 in {BIN_DIR} (apt-get install postgresql-15); \
         or set POBOX_ALLOW_SKIP=1 to skip it explicitly"
    );
}

static NEXT_DB: AtomicU32 = AtomicU32::new(1);

impl TestPg {
    /// Initialises and starts a cluster of this test's own.
    ///
    /// # Panics
    ///
    /// If `initdb` or `pg_ctl` fail (their output is in the message).
    #[must_use]
    #[allow(
        clippy::new_without_default,
        reason = "starting a server is not a default value"
    )]
    pub fn new() -> TestPg {
        TestPg::init(false)
    }

    /// [`new`](TestPg::new) with TLS on (`ssl=on`), a self-signed
    /// certificate for `127.0.0.1` and `localhost`; [`ca_file`](TestPg::ca_file)
    /// is that certificate, for [`PgConfig::ca_file`].
    #[must_use]
    pub fn new_tls() -> TestPg {
        TestPg::init(true)
    }

    /// The PEM certificate a TLS cluster presents (its own root).
    #[must_use]
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    fn init(tls: bool) -> TestPg {
        let root = std::env::temp_dir().join(format!(
            "pobox-pg-{}-{}",
            std::process::id(),
            next_cluster()
        ));
        std::fs::create_dir(&root).expect("creating the cluster directory");
        let run_as = nix::unistd::geteuid()
            .is_root()
            .then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let u = nix::unistd::User::from_name(user)
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    panic!("running as root needs the user {user} (created by postgresql-15)")
                });
            nix::unistd::chown(&root, Some(u.uid), Some(u.gid))
                .expect("chown of the cluster directory");
        }
        let owner = match &run_as {
            Some(user) => nix::unistd::User::from_name(user)
                .ok()
                .flatten()
                .map(|u| (u.uid, u.gid)),
            None => None,
        };
        let mut pg = TestPg {
            dir: root,
            port: free_port(),
            run_as,
            watchdog: Mutex::new(None),
            owned: true,
            extra: String::new(),
        };
        if tls {
            let cert = rcgen::generate_simple_self_signed(vec![
                "127.0.0.1".to_owned(),
                "localhost".to_owned(),
            ])
            .expect("generating the test certificate");
            let (crt, key) = (pg.dir.join("server.crt"), pg.dir.join("server.key"));
            std::fs::write(&crt, cert.cert.pem()).expect("writing server.crt");
            std::fs::write(&key, cert.signing_key.serialize_pem()).expect("writing server.key");
            // PostgreSQL refuses a key others can read.
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod server.key");
            for f in [&crt, &key] {
                if let Some((uid, gid)) = owner {
                    nix::unistd::chown(f, Some(uid), Some(gid)).expect("chown of the certificate");
                }
            }
            pg.extra = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                path_str(&crt),
                path_str(&key)
            );
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
        );
        pg.start();
        // Stops the cluster even if this process dies without unwinding.
        pg.arm_watchdog();
        pg
    }

    /// One cluster for the whole test process, started on first use and
    /// stopped when the process exits. Tests use a database each
    /// ([`create_database`](TestPg::create_database)); a test that stops or
    /// restarts the server needs its own [`TestPg::new`].
    pub fn shared() -> &'static TestPg {
        static SHARED: OnceLock<TestPg> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut pg = TestPg::new();
            pg.owned = false;
            pg
        })
    }

    /// The port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates an empty database and returns its URL (superuser, no
    /// password, TLS off).
    ///
    /// # Panics
    ///
    /// If `createdb` fails.
    #[must_use]
    pub fn create_database(&self) -> String {
        let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        let port = self.port.to_string();
        self.run(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", SUPERUSER, &name],
        );
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// A fresh database with the schema applied, as a [`PgConfig`] with a
    /// small pool and the given lease time and node name.
    ///
    /// # Panics
    ///
    /// If the database cannot be created or migrated.
    #[must_use]
    pub fn migrated(&self, node: &str, lease_secs: u64) -> PgConfig {
        let cfg = PgConfig {
            url: self.create_database(),
            pool_size: 4,
            lease_secs,
            node: node.to_owned(),
            ..PgConfig::default()
        };
        crate::migrate(&cfg).expect("migrating a fresh test database");
        cfg
    }

    /// Runs `sql` with `psql` on the database of `url` (one made by
    /// [`create_database`](TestPg::create_database)) and returns its
    /// unaligned, tuples-only output, trimmed: for tests that look at the
    /// tables themselves.
    ///
    /// # Panics
    ///
    /// If `psql` fails.
    #[must_use]
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server (fast shutdown: sessions are cut, data kept).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["stop", "-D", path_str(&self.data()), "-m", "fast", "-w"],
        );
    }

    /// Starts the server (again, after [`stop`](TestPg::stop)) on the same port.
    pub fn start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=300{}",
            self.port,
            path_str(&self.dir),
            self.extra
        );
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "start",
                "-D",
                path_str(&self.data()),
                "-l",
                path_str(&log),
                "-w",
                "-o",
                &opts,
            ],
        );
    }

    /// [`stop`](TestPg::stop) then [`start`](TestPg::start).
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = Path::new(BIN_DIR).join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A shell that waits for this process to close its stdin (at exit,
    /// even on a panic or abort), then stops the cluster and removes it.
    fn arm_watchdog(&self) {
        let stop = format!(
            "cat >/dev/null; {} {}/pg_ctl stop -D {} -m immediate >/dev/null 2>&1; rm -rf {}",
            match &self.run_as {
                Some(u) => format!("runuser -u {u} --"),
                None => String::new(),
            },
            BIN_DIR,
            path_str(&self.data()),
            path_str(&self.dir)
        );
        let mut child = Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the cluster's watchdog");
        let stdin = child.stdin.take().expect("piped");
        *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some((child, stdin));
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = self
            .command("pg_ctl")
            .args([
                "stop",
                "-D",
                path_str(&self.data()),
                "-m",
                "immediate",
                "-w",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((mut child, mut stdin)) = self
            .watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = stdin.flush();
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn next_cluster() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free loopback port");
    l.local_addr().expect("local address").port()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
