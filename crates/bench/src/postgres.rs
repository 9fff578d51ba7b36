//! pobox on PostgreSQL for the benchmark (`--postgres`): one throwaway
//! PostgreSQL 15 cluster (the store crate's testkit: `initdb` as an
//! unprivileged user, loopback port), pinned to the server CPU, with one
//! database per pobox server under test, loaded from the same Maildirs the
//! Maildir server serves (`pobox import maildir`, which keeps UIDLs), so
//! every server answers with the same messages.
//!
//! Two servers: `pobox-pg` (one node) and `pobox-pg2` (two nodes on one
//! database; the scenarios spread workers across the nodes). The
//! database's CPU counts as the server's: it does the storage work that
//! the kernel's page cache and filesystem do for Maildir.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use pobox_store_pg::testkit::TestPg;

use crate::servers::{Server, command, pobox_config};

/// Starts the cluster and pins it (and the backends it will fork) to the
/// server CPUs.
///
/// # Errors
/// When PostgreSQL 15 is not installed.
pub(crate) fn start_cluster(pin: Option<&str>) -> anyhow::Result<TestPg> {
    if !Path::new(pobox_store_pg::testkit::BIN_DIR).join("initdb").exists() {
        bail!("--postgres needs PostgreSQL 15 (apt-get install postgresql-15)");
    }
    let pg = TestPg::new();
    if let (Some(cpus), Some(pid)) = (pin, pg.postmaster_pid()) {
        let st = Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid.to_string()]).output()?;
        if !st.status.success() {
            bail!("taskset on PostgreSQL's postmaster failed: {}", String::from_utf8_lossy(&st.stderr));
        }
    }
    Ok(pg)
}

/// A pobox server on PostgreSQL, prepared once (database created,
/// migrated and loaded; node configs written) and started as often as the
/// harness restarts its servers.
pub(crate) struct PgServer {
    name: &'static str,
    /// The database's URL.
    url: String,
    /// Per node: its directory (data dir, config, log) and ports.
    nodes: Vec<(std::path::PathBuf, [u16; 3])>,
}

impl PgServer {
    /// Creates a database on `pg` for `nodes` nodes: a copy of `from`'s if
    /// given, else a fresh one, migrated and loaded with the `pobox`
    /// server's Maildir tree (`pobox import maildir`, which keeps UIDLs).
    ///
    /// # Errors
    /// A failed migration or import.
    #[allow(clippy::too_many_arguments)] // the harness's shared inputs, once
    pub(crate) fn prepare(
        name: &'static str,
        nodes: usize,
        work: &Path,
        bin: &Path,
        pg: &TestPg,
        from: Option<&PgServer>,
        passwd: &Path,
        cert: &Path,
        key: &Path,
    ) -> anyhow::Result<PgServer> {
        let url = match from {
            // A copy of an already loaded database: PostgreSQL copies its
            // files, much faster than a second import.
            Some(template) => {
                let (base, db) = template.url.rsplit_once('/').context("database URL")?;
                let (template_db, params) = db.split_once('?').unwrap_or((db, ""));
                let copy = format!("{template_db}_{}", name.replace('-', "_"));
                let _ = pg.psql(&format!("{base}/postgres?{params}"), &format!("CREATE DATABASE {copy} TEMPLATE {template_db}"));
                format!("{base}/{copy}?{params}")
            }
            None => pg.create_database(),
        };
        let mut out = PgServer { name, url: url.clone(), nodes: Vec::new() };
        for n in 0..nodes {
            let p = crate::setup::free_ports(3)?;
            let ports = [p[0], p[1], p[2]];
            let node = work.join(name).join(format!("node{n}"));
            std::fs::create_dir_all(node.join("data"))?;
            // The pool covers the benchmark's highest concurrency per node.
            let store = format!(
                "\n[store]\nbackend = \"postgres\"\n\n[store.postgres]\nurl = \"{url}\"\nnode = \"{name}-{n}\"\npool_size = 32\n"
            );
            std::fs::write(node.join("pobox.toml"), pobox_config(work, &ports, passwd, cert, key) + &store)?;
            out.nodes.push((node, ports));
        }
        if from.is_some() {
            return Ok(out);
        }
        let t = std::time::Instant::now();
        out.pobox(bin, &["db", "migrate"])?;
        let tree = format!("{}/{{user}}/Maildir", crate::setup::mail_root(work, "pobox").display());
        out.pobox(bin, &["import", "maildir", "--quiet", &tree])?;
        println!("{name}: database migrated and loaded from the Maildirs in {:.1} s", t.elapsed().as_secs_f64());
        Ok(out)
    }

    /// Runs a pobox admin command with the first node's config.
    fn pobox(&self, bin: &Path, args: &[&str]) -> anyhow::Result<()> {
        let node = &self.nodes[0].0;
        let out = Command::new(bin)
            .arg("--data")
            .arg(node.join("data"))
            .arg("--config")
            .arg(node.join("pobox.toml"))
            .args(args)
            .output()
            .with_context(|| format!("running pobox {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "pobox {} failed:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts every node; the database's CPU counts as the server's.
    ///
    /// # Errors
    /// A node that does not come up.
    pub(crate) fn start(&self, bin: &Path, pin: Option<&str>, pg: &TestPg) -> anyhow::Result<Server> {
        let mut first: Option<Server> = None;
        for (node, ports) in &self.nodes {
            let mut cmd = command(pin, bin);
            cmd.arg("--data").arg(node.join("data")).arg("--config").arg(node.join("pobox.toml")).arg("serve");
            let a = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
            let log = node.join("pobox.log");
            let server = Server::spawn(self.name, cmd, log, a(ports[0]), Some(a(ports[1])), Some(a(ports[2])))?;
            first = Some(match first {
                None => match pg.postmaster_pid() {
                    Some(pid) => server.with_helper(pid),
                    None => server,
                },
                Some(f) => f.with_node(server),
            });
        }
        first.context("no nodes")
    }
}
