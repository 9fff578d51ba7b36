//! `pobox deliver USER`: a local delivery agent for MTAs that pipe
//! (Postfix `mailbox_command`, Exim pipe transport, procmail-style).
//!
//! Exit codes follow sysexits(3), which every MTA understands: 0 delivered,
//! 67 unknown user (bounce), 75 temporary failure (retry later; also over
//! quota by default), 77 rejected by a Sieve script or over quota when
//! quotas are permanent (bounce), 69 for a message larger than the
//! configured maximum (bounce). Sieve scripts apply as for LMTP.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use pobox_server::delivery::{Outcome, Pipeline, Rcpt};
use pobox_store::StoreError;

use crate::config::Settings;

const EX_NOUSER: u8 = 67;
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

/// Arguments of `pobox deliver`.
#[derive(Debug, Args)]
pub struct DeliverArgs {
    /// The local user (a `+tag` suffix is ignored).
    user: String,
    /// Envelope sender, for Sieve (`-f` as sendmail-style MTAs pass it).
    #[arg(long, short = 'f', default_value = "")]
    from: String,
    /// The recipient address as the MTA received it (Postfix:
    /// `-a "$RECIPIENT"`), for Sieve's envelope test and for vacation,
    /// which answers only mail addressed to the user; default USER@localhost.
    #[arg(long = "address", short = 'a')]
    address: Option<String>,
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
    let mut message = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut message) {
        eprintln!("pobox deliver: cannot read the message: {e}");
        return ExitCode::from(EX_TEMPFAIL);
    }
    // Vacation replies are queued in the data dir's outbox; the running
    // `pobox serve` sends them (this process exits as soon as the message
    // is stored).
    let pipeline = Pipeline::new(store.mailstore(), settings.server.sieve.clone())
        .with_outbound(pobox_server::delivery::Outbound::from_config(&settings.server, None));
    let to = args.address.clone().unwrap_or_else(|| format!("{}@localhost", args.user));
    let rcpt = Rcpt { from: &args.from, to: &to, user };
    match pipeline.deliver(&rcpt, &message) {
        Outcome::Stored(copies) => {
            for (folder, d) in copies {
                eprintln!(
                    "pobox deliver: delivered to {user}{} as {} ({} octets)",
                    folder.map(|f| format!(" folder {f}")).unwrap_or_default(),
                    d.uidl,
                    d.size
                );
            }
            ExitCode::SUCCESS
        }
        Outcome::Discarded => {
            eprintln!("pobox deliver: discarded by a Sieve script");
            ExitCode::SUCCESS
        }
        Outcome::Rejected(reason) => {
            eprintln!("pobox deliver: rejected by a Sieve script: {reason}");
            ExitCode::from(EX_NOPERM)
        }
        Outcome::Failed(StoreError::TooLarge { limit }) => {
            eprintln!("pobox deliver: message larger than the maximum of {limit} octets");
            ExitCode::from(EX_UNAVAILABLE)
        }
        Outcome::Failed(StoreError::OverQuota(detail)) => {
            eprintln!("pobox deliver: {user} is over quota ({detail})");
            ExitCode::from(if settings.server.quota_permanent { EX_NOPERM } else { EX_TEMPFAIL })
        }
        Outcome::Failed(StoreError::NoSuchUser(u)) => {
            eprintln!("pobox deliver: no such user: {u}");
            ExitCode::from(EX_NOUSER)
        }
        Outcome::Failed(e) => {
            eprintln!("pobox deliver: temporary failure, nothing delivered: {e}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}
