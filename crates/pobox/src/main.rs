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
mod store_config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// A POP3 mail server and fetcher.
#[derive(Debug, Parser)]
#[command(name = "pobox", version, about, propagate_version = true)]
struct Args {
    /// Data directory: users, maildrops, TLS certificate. Default: the
    /// config's `data_dir`, else ./pobox-data.
    #[arg(long, global = true, env = "POBOX_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Configuration file (TOML). Default: /etc/pobox/pobox.toml if it
    /// exists, else embedded defaults (`none` forces those).
    /// For `pobox fetch`, when typed on the command line, it is the
    /// accounts file (`POBOX_CONFIG` is the server's only).
    #[arg(long, global = true, env = "POBOX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The resolved global options of a server-side subcommand.
struct ServerArgs {
    data: PathBuf,
    config: Option<PathBuf>,
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: POP3 (110, STLS), POP3S (995) and LMTP (127.0.0.1:24).
    Serve(cli::serve::ServeArgs),
    /// Validate the config, passwd-file, data dir, certificates and JWKS.
    Check,
    /// Print the DNS records to publish for the mail domains (MX, RFC 6186
    /// SRV, autoconfig/autodiscover names, the PACC TXT digest, CAA).
    Dns(cli::dns::DnsArgs),
    /// Manage users in the passwd-file.
    #[command(subcommand)]
    User(cli::user::UserCommand),
    /// Deliver one message from stdin to USER (for MTAs that pipe to an MDA).
    Deliver(cli::deliver::DeliverArgs),
    /// Inspect and maintain maildrops: ls, show, expire, restore, purge.
    #[command(subcommand)]
    Mailbox(cli::mailbox::MailboxCommand),
    /// Move users and mail in from another server, keeping every UIDL.
    #[command(subcommand)]
    Import(cli::import::ImportCommand),
    /// Copy mail out of the configured store, keeping every UIDL.
    #[command(subcommand)]
    Export(ExportCommand),
    /// The PostgreSQL store's schema: migrate, status.
    #[command(subcommand)]
    Db(cli::db::DbCommand),
    /// Compare UIDLs with another POP3 server (after an import).
    #[command(subcommand)]
    Uidl(cli::uidl::UidlCommand),
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
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (pobox.1 and one per subcommand) into DIR,
    /// or print pobox(1) without --dir.
    Man {
        /// Target directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Where `pobox export` writes.
#[derive(Debug, Subcommand)]
enum ExportCommand {
    /// The configured store's mail (e.g. PostgreSQL) into a Maildir tree
    /// (LOCATION with {user}): UIDLs and delivery times kept, resumable.
    Maildir(cli::copy::MaildirArgs),
}

/// `pobox completions` and `pobox man`: generated from the clap
/// definitions, so they cannot drift from the real options.
fn generated_docs(command: &Command) -> Option<ExitCode> {
    use clap::CommandFactory;
    let result = match command {
        Command::Completions { shell } => {
            use clap_complete::Generator as _;
            use std::io::Write as _;
            let mut cmd = Args::command();
            cmd.set_bin_name("pobox");
            cmd.build();
            let mut script = Vec::new();
            shell.try_generate(&cmd, &mut script).and_then(|()| std::io::stdout().write_all(&script))
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Args::command(), dir))
        }
        Command::Man { dir: None } => clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()),
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pobox: {e}");
            ExitCode::FAILURE
        }
    })
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
    if let Some(code) = generated_docs(&args.command) {
        return code;
    }
    if let Command::Fetch(mut f) = args.command {
        // `none` means "no server config", never an accounts file.
        f.config = if config_typed { args.config.filter(|p| p.as_os_str() != "none") } else { None };
        return pobox_fetch::run(f);
    }
    // Every other subcommand is server-side: the same config and data dir
    // as the running server, found without flags on an installed system.
    let config = config::config_path(args.config.as_deref());
    // `pobox deliver` speaks sysexits to the MTA even this early: a broken
    // config is EX_CONFIG (78), a failed switch to the service user
    // EX_TEMPFAIL (75), so the MTA keeps the message instead of bouncing it.
    let delivering = matches!(args.command, Command::Deliver(_));
    let early_exit = |code: u8| if delivering { ExitCode::from(code) } else { ExitCode::FAILURE };
    let data = match config::data_dir(args.data.as_deref(), config.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pobox: {e:#}");
            return early_exit(78);
        }
    };
    let args = ServerArgs { data, config, command: args.command };
    // Admin commands run as root act as the service user (serve drops
    // privileges itself, after binding its ports).
    if !matches!(args.command, Command::Serve(_) | Command::Who { .. } | Command::Kick { .. } | Command::Dns(_))
        && let Err(e) = cli::act_as_service_user(&args.data, args.config.as_deref())
    {
        eprintln!("pobox: {e:#}");
        return early_exit(75);
    }
    let result = match args.command {
        Command::Serve(serve) => cli::serve::run(&args.data, args.config.as_deref(), serve),
        Command::Check => cli::check::run(&args.data, args.config.as_deref()),
        Command::Dns(dns) => cli::dns::run(&args.data, args.config.as_deref(), dns),
        Command::User(cmd) => cli::user::run(&args.data, args.config.as_deref(), cmd),
        Command::Deliver(d) => return cli::deliver::run(&args.data, args.config.as_deref(), d),
        Command::Fetch(_) | Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
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
        Command::Import(cmd) => cli::import::run(&args.data, args.config.as_deref(), cmd),
        Command::Export(ExportCommand::Maildir(a)) => {
            cli::copy::run(&args.data, args.config.as_deref(), cli::copy::Direction::Export, &a)
        }
        Command::Db(cmd) => {
            return match cli::db::run(&args.data, args.config.as_deref(), &cmd) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("pobox: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Uidl(cmd) => return cli::uidl::run(&args.data, args.config.as_deref(), cmd),
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
