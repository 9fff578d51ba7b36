//! `pobox`: the POP3 server, its admin commands, the delivery agent and the
//! fetcher, in one binary.
//!
//! This crate only parses the command line and configuration, wires the
//! library crates together and reports errors; see ARCHITECTURE.md for where
//! everything else lives.

#![forbid(unsafe_code)]
// A binary: `pub` only marks what modules share with each other.
#![allow(unreachable_pub)]

mod cli;
mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// A POP3 mail server and fetcher.
#[derive(Debug, Parser)]
#[command(name = "pobox", version, about, propagate_version = true)]
struct Args {
    /// Data directory: users, maildrops, TLS certificate.
    #[arg(long, global = true, env = "POBOX_DATA", default_value = "./pobox-data", value_name = "DIR")]
    data: PathBuf,
    /// Configuration file (TOML). Without one, embedded defaults apply.
    /// For `pobox fetch`, when typed on the command line, it is the
    /// accounts file (`POBOX_CONFIG` is the server's only).
    #[arg(long, global = true, env = "POBOX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: POP3 (110, STLS), POP3S (995) and LMTP (127.0.0.1:24).
    Serve(cli::serve::ServeArgs),
    /// Validate the config, passwd-file, data dir, certificates and JWKS.
    Check,
    /// Manage users in the passwd-file.
    #[command(subcommand)]
    User(cli::user::UserCommand),
    /// Deliver one message from stdin to USER (for MTAs that pipe to an MDA).
    Deliver(cli::deliver::DeliverArgs),
    /// Inspect and maintain maildrops: ls, show, expire, restore, purge.
    #[command(subcommand)]
    Mailbox(cli::mailbox::MailboxCommand),
    /// Download mail from POP3 accounts to local Maildir/mbox/MDA.
    Fetch(pobox_fetch::FetchArgs),
    /// Check Sieve scripts and try them on a message.
    #[command(subcommand)]
    Sieve(cli::sieve::SieveCommand),
    /// List the sessions open in the running server.
    Who {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Close a user's sessions in the running server (nothing is deleted).
    Kick {
        /// The user.
        user: String,
    },
}

/// Where a global argument's value came from, looking in the subcommand's
/// matches first (a global given after the subcommand is recorded there).
fn subcommand_value_source(matches: &clap::ArgMatches, id: &str) -> Option<ValueSource> {
    let sub = matches.subcommand().and_then(|(_, m)| m.value_source(id));
    sub.or_else(|| matches.value_source(id))
}

fn main() -> ExitCode {
    // `pobox fetch --help` shows the fetcher's files and exit codes, not
    // the server's data directory.
    // A subcommand that already has an argument of a global's id does not
    // get the global's copy, so a hidden copy hides it there only.
    let command = Args::command();
    let hidden: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|a| matches!(a.get_id().as_str(), "data" | "config"))
        .map(|a| a.clone().hide(true))
        .collect();
    let command = command.mut_subcommand("fetch", |c| c.args(hidden).after_help(pobox_fetch::help_epilogue()));
    let matches = command.get_matches();
    // The fetcher takes `--config` only from the command line: from the
    // environment, POBOX_CONFIG names the server's configuration (a user
    // who sets it for the server must not have it read as accounts).
    let config_typed = subcommand_value_source(&matches, "config") == Some(ValueSource::CommandLine);
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let result = match args.command {
        Command::Serve(serve) => cli::serve::run(&args.data, args.config.as_deref(), serve),
        Command::Check => cli::check::run(&args.data, args.config.as_deref()),
        Command::User(cmd) => cli::user::run(&args.data, args.config.as_deref(), cmd),
        Command::Deliver(d) => return cli::deliver::run(&args.data, args.config.as_deref(), d),
        Command::Fetch(mut f) => {
            f.config = if config_typed { args.config } else { None };
            return pobox_fetch::run(f);
        }
        Command::Sieve(cmd) => {
            return match cli::sieve::run(&args.data, args.config.as_deref(), cmd) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("pobox: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Mailbox(cmd) => cli::mailbox::run(&args.data, args.config.as_deref(), cmd),
        Command::Who { json } => cli::mailbox::who(&args.data, args.config.as_deref(), json),
        Command::Kick { user } => cli::mailbox::kick(&args.data, args.config.as_deref(), &user),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pobox: {e:#}");
            ExitCode::FAILURE
        }
    }
}
