//! `pobox deliver USER`: a local delivery agent for MTAs that pipe
//! (Postfix `mailbox_command`, Exim pipe transport, procmail-style).
//!
//! Exit codes follow sysexits(3), which every MTA understands: 0 delivered,
//! 67 unknown user (bounce), 75 temporary failure (retry later), 69 for a
//! message larger than the configured maximum (bounce).

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use pobox_store::{Mailstore, StoreError};

use crate::config::Settings;

const EX_NOUSER: u8 = 67;
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

/// Arguments of `pobox deliver`.
#[derive(Debug, Args)]
pub struct DeliverArgs {
    /// The local user (a `+tag` suffix is ignored).
    user: String,
}

/// Delivers stdin to the user's maildrop; the exit code tells the MTA what happened.
pub fn run(data: &Path, config: Option<&Path>, args: DeliverArgs) -> ExitCode {
    let settings = match Settings::load(data, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pobox deliver: {e:#}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let user = args.user.split_once('+').map_or(args.user.as_str(), |(u, _)| u);
    let users = super::open_users(&settings);
    match users.exists(user) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("pobox deliver: no such user: {user}");
            return ExitCode::from(EX_NOUSER);
        }
        Err(e) => {
            eprintln!("pobox deliver: user database unavailable: {e}");
            return ExitCode::from(EX_TEMPFAIL);
        }
    }
    let store = match super::open_store(&settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pobox deliver: {e:#}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let mut stdin = std::io::stdin().lock();
    match store.deliver(user, &mut stdin) {
        Ok(d) => {
            eprintln!("pobox deliver: delivered to {user} as {} ({} octets)", d.uidl, d.size);
            ExitCode::SUCCESS
        }
        Err(StoreError::TooLarge { limit }) => {
            eprintln!("pobox deliver: message larger than the maximum of {limit} octets");
            ExitCode::from(EX_UNAVAILABLE)
        }
        Err(StoreError::NoSuchUser(u)) => {
            eprintln!("pobox deliver: no such user: {u}");
            ExitCode::from(EX_NOUSER)
        }
        Err(e) => {
            eprintln!("pobox deliver: temporary failure, nothing delivered: {e}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}
