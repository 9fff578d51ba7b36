//! `pobox import maildir` and `pobox export maildir`: copy maildrops
//! between a Maildir tree and the configured store (PostgreSQL, usually),
//! each message keeping its UIDL and delivery time, so POP3 clients that
//! leave mail on the server download nothing twice after the move.
//!
//! Both run one copy, source → target, through the storage port: the
//! source is read without its lock ([`MailstoreAdmin::inspect`] and
//! [`MailstoreAdmin::head`]), so it works while the server runs; the
//! target takes each message with [`MailstoreAdmin::import_message`],
//! which is idempotent by UIDL. A run that is stopped (killed, a lost
//! database) is resumed by running it again: what is there already is
//! skipped, the rest copied, nothing doubled. The source is never changed.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use clap::Args;
use pobox_store::{ImportOutcome, MaildirStore, MailstoreAdmin, StoreError, UserImport};

use crate::config::Settings;
use crate::store_config::StoreSettings;

/// Arguments of `pobox import maildir` and `pobox export maildir`.
#[derive(Debug, Clone, Args)]
pub struct MaildirArgs {
    /// The Maildir tree: a path with `{user}`, as `mail_location` is
    /// written (e.g. /var/lib/pobox/mail/{user}).
    #[arg(value_name = "LOCATION")]
    pub location: String,
    /// Only this user (repeatable). Default: every user of the passwd-file.
    #[arg(long = "user", value_name = "USER")]
    pub users: Vec<String>,
    /// Count what would be copied; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print only errors and the summary.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Which way the mail goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The Maildir tree → the configured store.
    Import,
    /// The configured store → the Maildir tree.
    Export,
}

/// What one user's copy did.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Messages in the source.
    source: usize,
    /// Copied now (or, with --dry-run, that would be).
    copied: usize,
    /// Already in the target (an earlier run, or mail that was never moved).
    present: usize,
}

/// Runs one copy for every selected user; per-user problems are reported
/// and make the command fail after the others were done.
///
/// # Errors
/// Configuration errors; then any user that could not be copied in full.
pub fn run(data: &Path, config: Option<&Path>, direction: Direction, args: &MaildirArgs) -> anyhow::Result<()> {
    let settings = Settings::load(data, config)?;
    if settings.store == StoreSettings::Maildir && same_location(&args.location, &settings.mail_location) {
        anyhow::bail!(
            "{} is the configured store's own mail_location: there is nothing to copy (configure the \
             other store, e.g. [store] backend = \"postgres\", then run this again)",
            args.location
        );
    }
    let store = super::open_store(&settings)?;
    let maildir = super::store::maildir_at(&args.location)?;
    let users = super::open_users(&settings);
    let known = users.list().context("cannot read the passwd-file")?;
    let selected: Vec<String> = if args.users.is_empty() {
        known
    } else {
        for u in &args.users {
            if !known.contains(u) {
                anyhow::bail!("no such user in {}: {u}", settings.passwd_file.display());
            }
        }
        args.users.clone()
    };
    let (from, to) = match direction {
        Direction::Import => (format!("Maildir {}", args.location), format!("the {} store", store.backend().name())),
        Direction::Export => (format!("the {} store", store.backend().name()), format!("Maildir {}", args.location)),
    };
    if !args.quiet {
        let what = if args.dry_run { "dry run: would copy" } else { "copying" };
        println!("{what} {} users from {from} to {to}", selected.len());
    }
    let mut total = Counts::default();
    let mut failed = Vec::new();
    for user in &selected {
        let result = match direction {
            Direction::Import => copy_user(&maildir, Sink::Port(&*store), user, args),
            Direction::Export => copy_user(&*store, Sink::Maildir(&maildir), user, args),
        };
        match result {
            Ok(c) => {
                total.source += c.source;
                total.copied += c.copied;
                total.present += c.present;
            }
            Err(e) => {
                eprintln!("pobox: {user}: {e:#}");
                failed.push(user.clone());
            }
        }
    }
    let verb = if args.dry_run { "to copy" } else { "copied" };
    println!(
        "{} users, {} messages: {} {verb}, {} already there{}",
        selected.len(),
        total.source,
        total.copied,
        total.present,
        if failed.is_empty() { String::new() } else { format!(", {} users failed", failed.len()) }
    );
    if !failed.is_empty() {
        anyhow::bail!("not copied in full: {} (run the same command again to resume)", failed.join(", "));
    }
    Ok(())
}

/// Whether two location templates name the same tree (textually, after
/// making them absolute): a cheap guard against copying onto oneself.
fn same_location(a: &str, b: &str) -> bool {
    let norm = |s: &str| std::path::absolute(s.trim_end_matches('/')).unwrap_or_else(|_| s.into());
    norm(a) == norm(b)
}

/// Where messages go: any store through the port, or a Maildir tree
/// through one import per user (its lock and UIDL index taken once, not
/// once per message).
enum Sink<'a> {
    Port(&'a dyn MailstoreAdmin),
    Maildir(&'a MaildirStore),
}

/// One user's messages in the target, opened for the copy.
enum Target<'a> {
    Port(&'a dyn MailstoreAdmin),
    Maildir(Box<UserImport>),
}

impl Target<'_> {
    fn import(
        &mut self,
        user: &str,
        uidl: &pobox_store::Uidl,
        received: std::time::SystemTime,
        message: &mut dyn std::io::Read,
    ) -> Result<ImportOutcome, StoreError> {
        match self {
            Target::Port(store) => store.import_message(user, uidl, received, message),
            Target::Maildir(import) => import.import(uidl.as_str(), received, message),
        }
    }
}

fn copy_user(source: &dyn MailstoreAdmin, sink: Sink<'_>, user: &str, args: &MaildirArgs) -> anyhow::Result<Counts> {
    let messages = source.inspect(user).context("reading the source")?;
    // A Maildir target is read without creating the user's maildrop (a
    // dry run must not leave directories behind).
    let present: HashSet<String> = match &sink {
        Sink::Port(store) => store.inspect(user).map(|v| v.into_iter().map(|m| m.uidl.into_string()).collect()),
        Sink::Maildir(store) => {
            store.uidl_listing(user).map(|v| v.unwrap_or_default().into_iter().map(|(u, _)| u).collect())
        }
    }
    .context("reading the target")?;
    let mut counts = Counts { source: messages.len(), ..Counts::default() };
    let todo: Vec<_> = messages.iter().filter(|m| !present.contains(m.uidl.as_str())).collect();
    counts.present = messages.len() - todo.len();
    if !args.quiet {
        println!("{user}: {} messages, {} already there, {} to copy", messages.len(), counts.present, todo.len());
    }
    if args.dry_run || todo.is_empty() {
        counts.copied = todo.len();
        return Ok(counts);
    }
    let mut target = match sink {
        Sink::Port(store) => Target::Port(store),
        Sink::Maildir(store) => Target::Maildir(Box::new(store.begin_import(user).context("opening the target")?)),
    };
    for (done, m) in todo.iter().enumerate() {
        // The stored bytes are at most the listed (wire) size; one more
        // byte asked for shows a message that is not what the listing says.
        let limit = usize::try_from(m.size.saturating_add(1)).unwrap_or(usize::MAX);
        let body = source.head(user, m, limit).with_context(|| format!("reading message {}", m.uidl.as_str()))?;
        if body.len() as u64 > m.size {
            anyhow::bail!("message {} is larger than its listed size {}; not copied", m.uidl.as_str(), m.size);
        }
        match target.import(user, &m.uidl, m.received, &mut body.as_slice()) {
            Ok(ImportOutcome::Imported(_)) => counts.copied += 1,
            // Delivered meanwhile under the same UIDL, or copied by
            // another run at the same time.
            Ok(ImportOutcome::AlreadyPresent) => counts.present += 1,
            Err(StoreError::InUse) => anyhow::bail!(
                "{user}'s maildrop is in use by a POP3 session; {} of {} copied, run again to copy the rest",
                counts.copied,
                todo.len()
            ),
            Err(e) => return Err(e).with_context(|| format!("copying message {}", m.uidl.as_str())),
        }
        super::fault::point("copy-message");
        if !args.quiet && (done + 1) % 500 == 0 {
            println!("{user}: {} of {} copied", done + 1, todo.len());
        }
    }
    if let Target::Maildir(mut import) = target {
        import.flush().context("finishing the Maildir import")?;
    }
    if !args.quiet {
        println!("{user}: {} copied", counts.copied);
    }
    Ok(counts)
}
