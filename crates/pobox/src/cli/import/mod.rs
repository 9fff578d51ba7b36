//! `pobox import`: moving users and mail in from another server, every
//! message keeping the UIDL its clients know. One module per source.

pub mod dovecot;
pub mod dovecot_files;
pub mod pop3;

use clap::Subcommand;

/// Where to import from.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Users and Maildirs of a Dovecot server (2.3 or 2.4), UIDLs kept.
    Dovecot(dovecot::DovecotArgs),
    /// Mail from any live POP3 server (a provider, Courier, an old box),
    /// UIDLs kept, resumable; the source is left untouched.
    Pop3(pop3::Pop3Args),
    /// Mail from a Maildir tree (LOCATION with {user}) into the configured
    /// store, e.g. PostgreSQL: UIDLs and delivery times kept, resumable.
    Maildir(super::copy::MaildirArgs),
}

/// Runs an import subcommand.
///
/// # Errors
/// Configuration errors; per-user problems are reported and make the
/// command fail after the other users were done.
pub fn run(
    data: &std::path::Path,
    config: Option<&std::path::Path>,
    cmd: ImportCommand,
) -> anyhow::Result<()> {
    match cmd {
        ImportCommand::Dovecot(args) => dovecot::run(data, config, &args),
        ImportCommand::Pop3(args) => pop3::run(data, config, &args),
        ImportCommand::Maildir(args) => super::copy::run(data, config, super::copy::Direction::Import, &args),
    }
}
