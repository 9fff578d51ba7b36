//! `pobox uidl verify`: compares the UIDL listing of the old server (over
//! POP3, logged in the way `pobox fetch` logs in) with pobox's for the
//! same user, and prints every difference. Reads pobox's maildrop without
//! its lock, so it works while pobox serves it.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand};
use pobox_fetch::auth::{Secret, obtain_secret};
use pobox_fetch::config::{
    Account, AuthMethod, Destination, Oversize, PasswordSource, Retention, Security,
};

use crate::config::Settings;

/// UIDL tools.
#[derive(Debug, Subcommand)]
pub enum UidlCommand {
    /// Compare a user's UIDLs on the old server with pobox's; exit 0 only
    /// when they match.
    Verify(VerifyArgs),
}

/// `pobox uidl verify` arguments.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("who").required(true).args(["user", "users_file"])))]
#[command(group(ArgGroup::new("security").args(["tls", "starttls", "no_tls"])))]
pub struct VerifyArgs {
    /// The pobox user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Many users: lines `USER PASSWORD-FILE [REMOTE-USER]` (# comments).
    #[arg(long, value_name = "FILE")]
    pub users_file: Option<PathBuf>,
    /// The old server.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: String,
    /// TLS from the first byte (the default; port 995).
    #[arg(long)]
    pub tls: bool,
    /// Plain connection upgraded with STLS (port 110); never falls back.
    #[arg(long)]
    pub starttls: bool,
    /// No encryption at all: only for a server on this machine.
    #[arg(long)]
    pub no_tls: bool,
    /// Extra CA certificates (PEM) to trust for the old server.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// File whose first line is the user's password on the old server
    /// (without it, the password is asked on the terminal).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The login name on the old server, when it differs from the pobox
    /// user.
    #[arg(long, value_name = "NAME")]
    pub remote_user: Option<String>,
    /// Network timeout in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
}

/// One user to compare.
#[derive(Debug)]
struct Job {
    user: String,
    remote_user: String,
    password_file: Option<PathBuf>,
}

/// Runs a `pobox uidl` subcommand; the exit code says whether they match.
pub fn run(data: &Path, config: Option<&Path>, cmd: UidlCommand) -> ExitCode {
    let UidlCommand::Verify(args) = cmd;
    match verify(data, config, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pobox: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn verify(data: &Path, config: Option<&Path>, args: &VerifyArgs) -> anyhow::Result<bool> {
    let settings = Settings::load(data, config)?;
    let store = super::open_store(&settings)?;
    let (host, port) = split_server(&args.server)?;
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    let security = if args.starttls {
        Security::Starttls
    } else if args.no_tls {
        // A password in clear text over a network is not something to
        // make easy: only a server on this machine.
        if !loopback {
            bail!(
                "--no-tls is only allowed for a server on this machine (localhost, 127.0.0.1, ::1)"
            );
        }
        Security::None
    } else {
        Security::Tls
    };
    let jobs = match (&args.user, &args.users_file) {
        (Some(user), _) => vec![Job {
            user: user.clone(),
            remote_user: args.remote_user.clone().unwrap_or_else(|| user.clone()),
            password_file: args.password_file.clone(),
        }],
        (None, Some(file)) => read_users_file(file)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut all_match = true;
    for job in &jobs {
        let password = match &job.password_file {
            Some(f) => PasswordSource::Inline(read_first_line(f)?),
            None => PasswordSource::Prompt,
        };
        let account = Account {
            name: format!("verify-{}", job.user),
            host: host.clone(),
            port,
            security,
            user: job.remote_user.clone(),
            password,
            auth: AuthMethod::Auto,
            ca_file: args.ca_file.clone(),
            fingerprint: None,
            tls_server_name: None,
            // Never used: nothing is downloaded.
            destination: Destination::Mda(String::new()),
            retention: Retention::Keep,
            max_size: None,
            oversize: Oversize::Skip,
            timeout: Duration::from_secs(args.timeout.max(1)),
            pipeline_depth: 1,
            oauth: None,
            poll_interval: Duration::from_secs(60),
            on_new_mail: None,
        };
        let secret: Secret =
            obtain_secret(&account).map_err(|e| anyhow::anyhow!("{}: {e}", job.user))?;
        let remote = runtime
            .block_on(pobox_fetch::remote_listing(&account, secret))
            .map_err(|e| anyhow::anyhow!("{}: {}:{port}: {e}", job.user, host))?;
        let local = store.uidl_listing(&job.user)?;
        let differences = compare(&remote, &local);
        for line in &differences {
            println!("{}: {line}", job.user);
        }
        let matched = differences.iter().all(|d| d.starts_with("size differs"));
        if matched {
            println!(
                "{}: match: {} messages, the same UIDLs on both servers",
                job.user,
                local.len()
            );
        } else {
            all_match = false;
        }
    }
    Ok(all_match)
}

/// Every difference between the old server's listing and pobox's, one
/// line each: UIDLs missing in pobox, UIDLs only in pobox, messages the
/// old server gave no (or a duplicate) UIDL, sizes that differ (reported,
/// but a size alone does not make a client download again).
fn compare(remote: &[pobox_fetch::plan::Listed], local: &[(String, u64)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut theirs: BTreeMap<&str, u64> = BTreeMap::new();
    for m in remote {
        match &m.uidl {
            None => out.push(format!("old server message {} has no UIDL", m.num)),
            Some(u) => {
                if theirs.insert(u, m.size).is_some() {
                    out.push(format!("old server lists UIDL {u} twice"));
                }
            }
        }
    }
    let ours: HashMap<&str, u64> = local.iter().map(|(u, s)| (u.as_str(), *s)).collect();
    for (uidl, size) in &theirs {
        match ours.get(uidl) {
            None => out.push(format!("missing in pobox: {uidl} ({size} octets)")),
            Some(s) if s != size => out.push(format!(
                "size differs: {uidl}: {size} octets on the old server, {s} in pobox"
            )),
            Some(_) => {}
        }
    }
    let mut extra: Vec<&str> = ours
        .keys()
        .filter(|u| !theirs.contains_key(*u))
        .copied()
        .collect();
    extra.sort_unstable();
    for uidl in extra {
        out.push(format!("only in pobox: {uidl}"));
    }
    out
}

fn split_server(server: &str) -> anyhow::Result<(String, u16)> {
    let Some((host, port)) = server.rsplit_once(':') else {
        bail!("--server {server:?}: give HOST:PORT");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port
        .parse()
        .with_context(|| format!("--server {server:?}: bad port"))?;
    if host.is_empty() {
        bail!("--server {server:?}: no host");
    }
    Ok((host.to_owned(), port))
}

fn read_first_line(path: &Path) -> anyhow::Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(file)
        .read_line(&mut line)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        bail!("{}: the first line (the password) is empty", path.display());
    }
    Ok(line)
}

fn read_users_file(path: &Path) -> anyhow::Result<Vec<Job>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !(2..=3).contains(&fields.len()) {
            bail!(
                "{}:{}: expected USER PASSWORD-FILE [REMOTE-USER]",
                path.display(),
                i + 1
            );
        }
        jobs.push(Job {
            user: fields[0].to_owned(),
            remote_user: fields.get(2).unwrap_or(&fields[0]).to_string(),
            password_file: Some(PathBuf::from(fields[1])),
        });
    }
    if jobs.is_empty() {
        bail!("{}: no users", path.display());
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use pobox_fetch::plan::Listed;

    use super::*;

    #[test]
    fn every_difference_is_named() {
        let remote = vec![
            Listed {
                num: 1,
                size: 10,
                uidl: Some("a".into()),
            },
            Listed {
                num: 2,
                size: 20,
                uidl: Some("b".into()),
            },
            Listed {
                num: 3,
                size: 30,
                uidl: Some("c".into()),
            },
            Listed {
                num: 4,
                size: 1,
                uidl: None,
            },
        ];
        let local = vec![
            ("a".to_owned(), 10),
            ("b".to_owned(), 21),
            ("z".to_owned(), 5),
        ];
        let d = compare(&remote, &local);
        assert_eq!(
            d,
            [
                "old server message 4 has no UIDL",
                "size differs: b: 20 octets on the old server, 21 in pobox",
                "missing in pobox: c (30 octets)",
                "only in pobox: z",
            ]
        );
        let same = compare(&remote[..1], &local[..1]);
        assert!(same.is_empty());
    }

    #[test]
    fn users_files_name_their_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("users");
        std::fs::write(
            &f,
            "# pobox user, password file, old login\nalice /pw/alice\nbob@x.org /pw/bob bob\n",
        )
        .unwrap();
        let jobs = read_users_file(&f).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            (jobs[0].user.as_str(), jobs[0].remote_user.as_str()),
            ("alice", "alice")
        );
        assert_eq!(
            (jobs[1].user.as_str(), jobs[1].remote_user.as_str()),
            ("bob@x.org", "bob")
        );
        assert_eq!(jobs[1].password_file.as_deref(), Some(Path::new("/pw/bob")));
        std::fs::write(&f, "alice\n").unwrap();
        assert!(
            read_users_file(&f)
                .unwrap_err()
                .to_string()
                .contains(":1: expected")
        );
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(read_users_file(&f).is_err());
    }

    #[test]
    fn servers_are_host_and_port() {
        assert_eq!(
            split_server("127.0.0.1:110").unwrap(),
            ("127.0.0.1".into(), 110)
        );
        assert_eq!(split_server("[::1]:995").unwrap(), ("::1".into(), 995));
        assert!(split_server("host").is_err());
        assert!(split_server("host:x").is_err());
    }
}
