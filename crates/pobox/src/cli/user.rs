//! `pobox user add|passwd|del|list`.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use anyhow::{Context, bail};
use clap::Subcommand;

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
            println!("removed user {name} (maildrop kept)");
        }
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
