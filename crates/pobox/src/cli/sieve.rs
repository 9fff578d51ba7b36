//! `pobox sieve check FILE` and `pobox sieve test USER < message`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use pobox_server::delivery::{Pipeline, Plan, Rcpt};

use crate::config::Settings;

/// Sieve tools.
#[derive(Debug, Subcommand)]
pub enum SieveCommand {
    /// Check a script; errors are printed as line:column: reason.
    Check {
        /// The script.
        file: PathBuf,
    },
    /// Show what the scripts would do with a message read from stdin.
    Test {
        /// The recipient user (their script, plus the global ones).
        user: String,
        /// Envelope sender.
        #[arg(long, default_value = "")]
        from: String,
        /// Envelope recipient (default: USER@localhost).
        #[arg(long)]
        to: Option<String>,
    },
}

/// Runs a sieve subcommand. `check` exits 1 when the script has errors.
///
/// # Errors
/// Unreadable files, configuration errors.
pub fn run(data: &Path, config: Option<&Path>, cmd: SieveCommand) -> anyhow::Result<bool> {
    match cmd {
        SieveCommand::Check { file } => {
            let source =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // `vacation` and `redirect` compile only where a relay is configured.
            let relay = Settings::load(data, config).is_ok_and(|s| s.server.outbound.is_some());
            let caps = pobox_sieve::Capabilities { vacation: relay, redirect: relay };
            match pobox_sieve::compile(&source, &caps) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    Ok(true)
                }
                Err(errors) => {
                    for e in errors.errors() {
                        println!("{}:{e}", file.display());
                    }
                    Ok(false)
                }
            }
        }
        SieveCommand::Test { user, from, to } => {
            let settings = Settings::load(data, config)?;
            let store = super::open_store(&settings)?;
            let pipeline = Pipeline::new(store.mailstore(), settings.server.sieve.clone())
                .with_outbound(pobox_server::delivery::Outbound::from_config(&settings.server, None));
            let mut message = Vec::new();
            std::io::stdin().read_to_end(&mut message).context("cannot read the message from stdin")?;
            let to = to.unwrap_or_else(|| format!("{user}@localhost"));
            let rcpt = Rcpt { from: &from, to: &to, user: &user };
            for plan in pipeline.plan(&rcpt, &message) {
                match plan {
                    Plan::Inbox => println!("keep (inbox)"),
                    Plan::Folder(f) => println!("fileinto {f:?}"),
                    Plan::Discard => println!("discard"),
                    Plan::Reject(r) => println!("reject {r:?}"),
                    Plan::Redirect(a) => println!("redirect to {a} (through the relay)"),
                    Plan::Vacation(v) => println!(
                        "vacation reply to {} (at most once per {} day(s) for handle {:?})",
                        v.to, v.days, v.handle
                    ),
                }
            }
            Ok(true)
        }
    }
}
