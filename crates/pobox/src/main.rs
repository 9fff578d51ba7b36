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

use clap::{Parser, Subcommand};

/// A POP3 mail server and fetcher.
#[derive(Debug, Parser)]
#[command(name = "pobox", version, about, propagate_version = true)]
struct Args {
    /// Data directory: users, maildrops, TLS certificate.
    #[arg(long, global = true, env = "POBOX_DATA", default_value = "./pobox-data", value_name = "DIR")]
    data: PathBuf,
    /// Configuration file (TOML). Without one, embedded defaults apply.
    #[arg(long, global = true, env = "POBOX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: POP3 (110, STLS), POP3S (995) and LMTP (127.0.0.1:24).
    Serve(cli::serve::ServeArgs),
    /// Manage users in the passwd-file.
    #[command(subcommand)]
    User(cli::user::UserCommand),
    /// Deliver one message from stdin to USER (for MTAs that pipe to an MDA).
    Deliver(cli::deliver::DeliverArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Serve(serve) => cli::serve::run(&args.data, args.config.as_deref(), serve),
        Command::User(cmd) => cli::user::run(&args.data, args.config.as_deref(), cmd),
        Command::Deliver(d) => return cli::deliver::run(&args.data, args.config.as_deref(), d),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pobox: {e:#}");
            ExitCode::FAILURE
        }
    }
}
