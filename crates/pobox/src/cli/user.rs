//! `pobox user add|passwd|del|list|quota|show`, `pobox user apppass add|list|revoke`.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;

use super::logins;
use super::mailbox::{clip, print_json, table};
use crate::config::Settings;

/// User management.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (password from a prompt, or --password-stdin).
    Add {
        /// The user name (letters, digits, . _ @ -).
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password.
    Passwd {
        /// The user name.
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user (the maildrop is kept).
    Del {
        /// The user name.
        name: String,
    },
    /// List users.
    List,
    /// Show a user's quota use.
    Quota {
        /// The user name.
        name: String,
    },
    /// What is known about a user: usage, app passwords, and recent logins
    /// (when, from where, which credential, what each session retrieved and
    /// deleted).
    Show {
        /// The user name.
        name: String,
        /// Logins to show, newest first.
        #[arg(long, default_value_t = 20)]
        logins: usize,
        /// Machine-readable output (with the UIDLs each session took).
        #[arg(long)]
        json: bool,
    },
    /// App passwords: one per device, each revocable on its own.
    #[command(subcommand)]
    Apppass(ApppassCommand),
}

/// `pobox user apppass ...`.
#[derive(Debug, Subcommand)]
pub enum ApppassCommand {
    /// Make an app password for a device and print it (once: only a hash is kept).
    Add {
        /// The user name.
        name: String,
        /// The device's name (letters, digits, . _ -), shown in the login history.
        #[arg(long)]
        label: String,
        /// Protocols it may log in to: pop3, or none.
        #[arg(long, value_delimiter = ',', default_value = "pop3")]
        protocols: Vec<String>,
    },
    /// A user's app passwords: label, protocols, created, last used.
    List {
        /// The user name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one app password: its next login fails.
    Revoke {
        /// The user name.
        name: String,
        /// The label given at `add`.
        label: String,
    },
}

/// Runs a user subcommand.
///
/// # Errors
/// Invalid names, existing/missing users, unreadable files.
pub fn run(data: &Path, config: Option<&Path>, cmd: UserCommand) -> anyhow::Result<()> {
    let settings = Settings::load(data, config)?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
    let users = super::open_users(&settings);
    match cmd {
        UserCommand::Add { name, password_stdin } => {
            if users.exists(&name).unwrap_or(false) {
                bail!("user {name} already exists (use `pobox user passwd {name}`)");
            }
            let password = read_password(password_stdin)?;
            users.add(&name, password.as_bytes())?;
            println!("added user {name} to {}", settings.passwd_file.display());
        }
        UserCommand::Passwd { name, password_stdin } => {
            // No existence pre-check: set_password also repairs a line that
            // failed to load (e.g. an unsupported hash scheme).
            let password = read_password(password_stdin)?;
            users.set_password(&name, password.as_bytes())?;
            println!("password changed for {name}");
        }
        UserCommand::Del { name } => {
            users.remove(&name)?;
            println!("removed user {name} and their app passwords (maildrop kept)");
        }
        UserCommand::Show { name, logins, json } => show(&settings, &users, &name, logins, json)?,
        UserCommand::Apppass(cmd) => apppass(&settings, &users, cmd)?,
        UserCommand::Quota { name } => {
            if !users.exists(&name).unwrap_or(false) {
                bail!("no such user: {name}");
            }
            let store = super::open_store(&settings)?;
            let (usage, quota) = store.usage(&name)?;
            let show = |used: u64, limit: Option<u64>| match limit {
                Some(l) if l > 0 => format!("{used} of {l} ({}%)", used * 100 / l),
                Some(l) => format!("{used} of {l}"),
                None => format!("{used} (no limit)"),
            };
            println!("{name}");
            println!("  octets    {}", show(usage.bytes, quota.bytes));
            println!("  messages  {}", show(usage.messages, quota.messages));
        }
        UserCommand::List => {
            for entry in users.entries()? {
                println!("{}\t{}", entry.name, entry.scheme);
            }
        }
    }
    Ok(())
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Repeat password: ")?;
        if first != again {
            bail!("passwords do not match");
        }
        first
    };
    if password.is_empty() {
        bail!("empty password refused");
    }
    Ok(password)
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Serialize)]
struct AppPasswordRow {
    label: String,
    protocols: Vec<String>,
    created: String,
    last_used: Option<String>,
    last_used_from: Option<String>,
}

fn app_password_rows(
    users: &pobox_auth::UserDb,
    name: &str,
    sessions: &[pobox_store::history::Session],
) -> anyhow::Result<Vec<AppPasswordRow>> {
    Ok(users
        .app_passwords(name)?
        .into_iter()
        .map(|a| {
            let last = sessions.iter().rev().find(|s| s.login.credential == a.label);
            AppPasswordRow {
                created: logins::time(a.created),
                last_used: last.map(|s| logins::time(s.login.time)),
                last_used_from: last.map(|s| s.login.client.clone()),
                protocols: a.protocols,
                label: a.label,
            }
        })
        .collect())
}

fn apppass(settings: &Settings, users: &pobox_auth::UserDb, cmd: ApppassCommand) -> anyhow::Result<()> {
    match cmd {
        ApppassCommand::Add { name, label, protocols } => {
            let protocols: Vec<String> =
                if protocols.iter().any(|p| p.eq_ignore_ascii_case("none")) { Vec::new() } else { protocols };
            let new = users.add_app_password(&name, &label, &protocols, unix_now())?;
            let password = String::from_utf8_lossy(new.password.as_bytes()).into_owned();
            // The only time it is shown: stdout, for the admin to pass on.
            println!("{password}");
            eprintln!(
                "app password {label} for {name} ({}); shown once, only a hash is kept. \
                 Log in as {name} with it; revoke with `pobox user apppass revoke {name} {label}`.",
                if protocols.is_empty() { "no protocols: it logs in nowhere".into() } else { protocols.join(",") }
            );
        }
        ApppassCommand::List { name, json } => {
            if !users.exists(&name)? {
                bail!("no such user: {name}");
            }
            let sessions = logins::sessions(settings, &name)?;
            let rows = app_password_rows(users, &name, &sessions)?;
            if json {
                print_json(&rows)?;
            } else {
                table(
                    &["LABEL", "PROTOCOLS", "CREATED", "LAST USED", "FROM"],
                    rows.iter().map(|r| {
                        vec![
                            r.label.clone(),
                            if r.protocols.is_empty() { "none".into() } else { r.protocols.join(",") },
                            r.created.clone(),
                            r.last_used.clone().unwrap_or_else(|| "never".into()),
                            r.last_used_from.clone().unwrap_or_else(|| "-".into()),
                        ]
                    }),
                );
            }
        }
        ApppassCommand::Revoke { name, label } => {
            users.revoke_app_password(&name, &label)?;
            println!("revoked app password {label} of {name}");
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct UserReport {
    user: String,
    scheme: String,
    octets: Option<u64>,
    messages: Option<u64>,
    quota_octets: Option<u64>,
    quota_messages: Option<u64>,
    app_passwords: Vec<AppPasswordRow>,
    logins: Vec<LoginRow>,
}

#[derive(Serialize)]
struct LoginRow {
    time: String,
    client: String,
    credential: String,
    mechanism: String,
    /// False: the session ended without QUIT, so it took nothing.
    quit: bool,
    retrieved: Vec<String>,
    deleted: Vec<String>,
}

fn show(settings: &Settings, users: &pobox_auth::UserDb, name: &str, limit: usize, json: bool) -> anyhow::Result<()> {
    let Some(entry) = users.entries()?.into_iter().find(|e| e.name == name) else {
        bail!("no such user: {name}");
    };
    let store = super::open_store(settings)?;
    // Usage is a read of `maildirsize` (a scan only when it is missing):
    // shown when it works, left out when it does not.
    let usage = store.usage(name).ok();
    let sessions = logins::sessions(settings, name)?;
    let report = UserReport {
        user: name.to_owned(),
        scheme: entry.scheme,
        octets: usage.as_ref().map(|(u, _)| u.bytes),
        messages: usage.as_ref().map(|(u, _)| u.messages),
        quota_octets: usage.as_ref().and_then(|(_, q)| q.bytes),
        quota_messages: usage.as_ref().and_then(|(_, q)| q.messages),
        app_passwords: app_password_rows(users, name, &sessions)?,
        logins: sessions
            .iter()
            .rev()
            .take(limit)
            .map(|s| LoginRow {
                time: logins::time(s.login.time),
                client: s.login.client.clone(),
                credential: s.login.credential.clone(),
                mechanism: s.login.mechanism.clone(),
                quit: s.update.is_some(),
                retrieved: s.update.as_ref().map(|u| u.retrieved.clone()).unwrap_or_default(),
                deleted: s.update.as_ref().map(|u| u.deleted.clone()).unwrap_or_default(),
            })
            .collect(),
    };
    if json {
        return print_json(&report);
    }
    println!("{name}");
    println!("  password  {{{}}}", report.scheme);
    if let (Some(octets), Some(messages)) = (report.octets, report.messages) {
        let limit = |l: Option<u64>| l.map_or_else(|| "no limit".into(), |l| format!("of {l}"));
        println!("  octets    {octets} ({})", limit(report.quota_octets));
        println!("  messages  {messages} ({})", limit(report.quota_messages));
    }
    println!();
    if report.app_passwords.is_empty() {
        println!("No app passwords (`pobox user apppass add {name} --label DEVICE`).");
    } else {
        table(
            &["APP PASSWORD", "PROTOCOLS", "CREATED", "LAST USED", "FROM"],
            report.app_passwords.iter().map(|r| {
                vec![
                    r.label.clone(),
                    if r.protocols.is_empty() { "none".into() } else { r.protocols.join(",") },
                    r.created.clone(),
                    r.last_used.clone().unwrap_or_else(|| "never".into()),
                    r.last_used_from.clone().unwrap_or_else(|| "-".into()),
                ]
            }),
        );
    }
    println!();
    if report.logins.is_empty() {
        println!("No logins recorded.");
    } else {
        println!("Recent logins, newest first:");
        table(
            &["TIME", "FROM", "CREDENTIAL", "MECHANISM", "RETRIEVED", "DELETED"],
            report.logins.iter().map(|l| {
                let count = |v: &Vec<String>| if l.quit { v.len().to_string() } else { "- (no QUIT)".into() };
                vec![
                    l.time.clone(),
                    l.client.clone(),
                    clip(&l.credential, 32),
                    l.mechanism.clone(),
                    count(&l.retrieved),
                    count(&l.deleted),
                ]
            }),
        );
    }
    Ok(())
}
