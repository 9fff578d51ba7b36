//! `pobox import pop3`: copies every message of a live POP3 maildrop into
//! a pobox user's maildrop under the UIDL the old server gave it, so
//! leave-on-server clients switched to pobox download nothing again.
//!
//! The connection, TLS verification, authentication and decoding are the
//! fetcher's (`pobox_fetch::remote`); the store's import primitive
//! (`MaildirStore::begin_import`) does the writing. The source is never
//! changed: no DELE is ever sent.
//!
//! Exactly once without a journal: the maildrop itself records what was
//! imported, because `UserImport::import` is idempotent by UIDL and makes
//! the UIDL durable no later than the message (the UIDL-named file, or an
//! override line fsynced before the message is renamed into `new/`). A
//! run killed at any instant leaves each message either absent (the next
//! run imports it) or present under its UIDL (the next run skips it). The
//! fetcher's journal exists to know when a DELE is safe; with no DELE it
//! would only be a second, weaker copy of that record, and one that could
//! disagree with the maildrop (a user's mail restored or purged by hand).

use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use pobox_auth::UserDb;
use pobox_fetch::FetchError;
use pobox_fetch::auth::{Secret, obtain_secret};
use pobox_fetch::config::{Account, AuthMethod, Config, Destination, Oversize, PasswordSource, Retention, Security};
use pobox_fetch::plan::Listed;
use pobox_fetch::progress::{AccountProgress, Display};
use pobox_fetch::remote::{RemoteMaildrop, Retrieved};
use pobox_fetch::spool::Spool;
use pobox_store::{ImportOutcome, StoreError, UserImport};

use crate::config::Settings;

/// Arguments of `pobox import pop3`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
One user:   pobox import pop3 --server pop.example.com --remote-user alice@example.com \\
                --password-file pw.txt --to alice
Many users: pobox import pop3 --accounts import.toml   (the `pobox fetch` accounts format;
            each [accounts.NAME] table is imported into the pobox user NAME)

Nothing is ever deleted on the old server. Running the command again (after an
interruption, or to pick up mail that arrived meanwhile) imports only what is
missing; a message is never imported twice. Exit status 0 only when every
message is in pobox under its old UIDL.")]
pub struct Pop3Args {
    /// The old server: HOST or HOST:PORT (port 995 with TLS, 110 otherwise).
    #[arg(long, value_name = "HOST[:PORT]", required_unless_present = "accounts")]
    pub server: Option<String>,
    /// TLS from the first byte (the default).
    #[arg(long, conflicts_with_all = ["starttls", "insecure_plaintext"])]
    pub tls: bool,
    /// Plain connection upgraded with STLS (mandatory, never opportunistic).
    #[arg(long, conflicts_with = "insecure_plaintext")]
    pub starttls: bool,
    /// No TLS at all: the password and every message cross the network in
    /// clear text. Meant for a server on this machine.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Extra trust anchors (PEM) for the old server's certificate.
    #[arg(long, value_name = "FILE", requires = "server")]
    pub ca_file: Option<PathBuf>,
    /// Pin the old server's certificate by its SHA-256 fingerprint instead.
    #[arg(long, value_name = "SHA256", requires = "server")]
    pub fingerprint: Option<String>,
    /// Login name on the old server.
    #[arg(long, value_name = "USER", requires = "server")]
    pub remote_user: Option<String>,
    /// File whose first line is the password on the old server (mode 0600);
    /// without it the password is asked on the terminal.
    #[arg(long, value_name = "FILE", requires = "server")]
    pub password_file: Option<PathBuf>,
    /// Authentication: auto (the strongest offered: SCRAM-SHA-256, PLAIN,
    /// USER, LOGIN), user, plain, login, scram-sha-256, or xoauth2 /
    /// oauthbearer with an access token in --password-file.
    #[arg(long, value_name = "METHOD", default_value = "auto", value_parser = parse_auth, requires = "server")]
    pub auth: AuthMethod,
    /// The pobox user the mail goes to (must exist: `pobox user add`).
    #[arg(long, value_name = "LOCALUSER", requires = "server")]
    pub to: Option<String>,
    /// Import many users: an accounts file in the `pobox fetch` format;
    /// each [accounts.NAME] is imported into the pobox user NAME.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["server", "tls", "starttls"])]
    pub accounts: Option<PathBuf>,
    /// With --accounts: only these accounts (default: all).
    #[arg(value_name = "ACCOUNT", requires = "accounts")]
    pub only: Vec<String>,
    /// List what would be imported; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// No progress bar and no per-account summary; errors only.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Network timeout per read or write, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub timeout: u64,
}

/// One source maildrop and where it goes.
struct Job {
    account: Account,
    to: String,
}

/// What one account's import did.
#[derive(Debug, Default)]
struct Tally {
    imported: u64,
    bytes: u64,
    present: u64,
    failed: Vec<String>,
}

/// Runs `pobox import pop3`.
///
/// # Errors
/// Bad arguments or configuration; and, after every account was tried,
/// any account or message that could not be imported.
pub fn run(data: &Path, config: Option<&Path>, args: &Pop3Args) -> anyhow::Result<()> {
    let settings = Settings::load(data, config)?;
    let store = super::super::open_store(&settings)?;
    let users = super::super::open_users(&settings);
    let jobs = jobs(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let display = Display::new(!args.quiet).with_names(jobs.iter().map(|j| j.to.as_str()));
    let spool_dir = settings.data_dir.clone();
    let mut failed_accounts = 0usize;
    let mut failed_messages = 0usize;
    for job in &jobs {
        let progress = display.account(&job.to);
        let result = import_account(&runtime, &store, &users, job, args.dry_run, &spool_dir, &progress, &display);
        progress.finish();
        match result {
            Ok(t) => {
                if !args.quiet {
                    display.println(&summary(&job.to, &t, args.dry_run));
                }
                for f in &t.failed {
                    display.eprintln(&format!("pobox import pop3: {}: {f}", job.to));
                }
                failed_messages += t.failed.len();
            }
            Err(e) => {
                failed_accounts += 1;
                display.eprintln(&format!("pobox import pop3: {}: {e:#}", job.to));
            }
        }
    }
    match (failed_accounts, failed_messages) {
        (0, 0) => Ok(()),
        (a, m) => bail!(
            "import incomplete: {a} account(s) failed, {m} message(s) not imported; \
             fix the cause and run the same command again (nothing is imported twice)"
        ),
    }
}

/// The one line per account.
fn summary(to: &str, t: &Tally, dry_run: bool) -> String {
    let mib = t.bytes as f64 / (1024.0 * 1024.0);
    let first = if dry_run {
        format!("would import {}", t.imported)
    } else {
        format!("{} imported ({mib:.2} MiB)", t.imported)
    };
    format!("{to}: {first}, {} already present, {} failed", t.present, t.failed.len())
}

/// The accounts to import, from the command line or the accounts file.
fn jobs(args: &Pop3Args) -> anyhow::Result<Vec<Job>> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    if let Some(path) = &args.accounts {
        let config = Config::load(path)?;
        let mut jobs = Vec::new();
        for mut account in config.select(&args.only)? {
            if account.security == Security::None {
                plaintext_warning(&account.host);
            }
            // The file's destination and retention settings are the
            // fetcher's: here mail goes to the pobox user and nothing is
            // ever deleted on the source.
            account.retention = Retention::Keep;
            account.max_size = None;
            account.timeout = timeout;
            jobs.push(Job { to: account.name.clone(), account });
        }
        return Ok(jobs);
    }
    let server = args.server.as_deref().ok_or_else(|| anyhow!("--server or --accounts is required"))?;
    let (Some(user), Some(to)) = (&args.remote_user, &args.to) else {
        bail!("--server needs --remote-user (the login on the old server) and --to (the pobox user)");
    };
    let security = if args.insecure_plaintext {
        Security::None
    } else if args.starttls {
        Security::Starttls
    } else {
        Security::Tls
    };
    let (host, port) = split_server(server, security)?;
    if security == Security::None {
        if args.ca_file.is_some() || args.fingerprint.is_some() {
            bail!("--ca-file and --fingerprint make no sense with --insecure-plaintext");
        }
        plaintext_warning(&host);
    }
    let password = match &args.password_file {
        Some(p) => PasswordSource::Inline(read_password_file(p)?),
        None => PasswordSource::Prompt,
    };
    let fingerprint = args
        .fingerprint
        .as_deref()
        .map(pobox_fetch::config::parse_fingerprint)
        .transpose()
        .map_err(|e| anyhow!("--fingerprint: {e}"))?;
    let account = Account {
        name: to.clone(),
        host,
        port,
        security,
        user: user.clone(),
        password,
        auth: args.auth,
        ca_file: args.ca_file.clone(),
        fingerprint,
        tls_server_name: None,
        // Unused: the store is the destination.
        destination: Destination::Maildir(PathBuf::new()),
        retention: Retention::Keep,
        max_size: None,
        oversize: Oversize::Skip,
        timeout,
        pipeline_depth: 1,
        oauth: None,
        poll_interval: Duration::ZERO,
        on_new_mail: None,
    };
    Ok(vec![Job { account, to: to.clone() }])
}

/// `--auth`: the accounts file's `auth` values, except `oauth2` (which
/// needs an `[accounts.NAME.oauth]` table: use --accounts for it).
fn parse_auth(text: &str) -> Result<AuthMethod, String> {
    use serde::Deserialize as _;
    let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(text);
    match AuthMethod::deserialize(de) {
        Ok(AuthMethod::Oauth2) => Err("oauth2 needs an accounts file with an [accounts.NAME.oauth] table".into()),
        Ok(m) => Ok(m),
        Err(_) => Err("expected auto, user, plain, login, scram-sha-256, xoauth2 or oauthbearer".into()),
    }
}

/// `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address.
fn split_server(server: &str, security: Security) -> anyhow::Result<(String, u16)> {
    let default_port = if security == Security::Tls { 995 } else { 110 };
    if let Some(rest) = server.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| anyhow!("--server {server:?}: missing ']'"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().with_context(|| format!("--server {server:?}: bad port"))?,
            None if after.is_empty() => default_port,
            None => bail!("--server {server:?}: expected [ADDRESS]:PORT"),
        };
        return Ok((host.to_string(), port));
    }
    if server.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((server.to_string(), default_port));
    }
    match server.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            Ok((host.to_string(), port.parse().with_context(|| format!("--server {server:?}: bad port"))?))
        }
        Some(_) => bail!("--server {server:?}: no host name"),
        None if server.is_empty() => bail!("--server is empty"),
        None => Ok((server.to_string(), default_port)),
    }
}

/// True for `localhost` and loopback addresses: plaintext there never
/// leaves the machine.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

fn plaintext_warning(host: &str) {
    if is_loopback(host) {
        eprintln!("pobox import pop3: note: no TLS to {host} (loopback: nothing leaves this machine)");
    } else {
        eprintln!(
            "pobox import pop3: WARNING: NO TLS to {host}: the password and every message cross the \
             network in clear text, readable and changeable by anyone on the path"
        );
    }
}

/// The first line of a password file that only its owner can read.
fn read_password_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} can be read by others (mode {:04o}); refusing to use a password from it. Fix: chmod 600 {}",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text).with_context(|| format!("cannot read {}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!("{}: the first line (the password) is empty", path.display());
    }
    Ok(line.to_string())
}

/// Imports one account. `Err` when the account could not be done at all
/// or had to stop (login refused, connection lost, local disk error);
/// messages that failed alone are in the tally.
#[allow(clippy::too_many_arguments)]
fn import_account(
    runtime: &tokio::runtime::Runtime,
    store: &super::super::Store,
    users: &UserDb,
    job: &Job,
    dry_run: bool,
    spool_dir: &Path,
    progress: &AccountProgress,
    display: &Display,
) -> anyhow::Result<Tally> {
    if !users.exists(&job.to)? {
        bail!("no pobox user {:?}: create it first (`pobox user add {}`)", job.to, job.to);
    }
    let secret = obtain_secret(&job.account)?;
    // Before connecting: a maildrop a POP3 session holds is no place to
    // write, and the lock is kept until the import ends.
    let mut target = match store.as_maildir() {
        _ if dry_run => Target::Peek(existing_uidls(store, &job.to)?),
        Some(maildir) => {
            Target::Import(Box::new(maildir.begin_import(&job.to).map_err(|e| in_use_hint(e, &job.to))?))
        }
        // Another backend (PostgreSQL): one idempotent import per message
        // through the port, which takes the maildrop lock for each.
        None => Target::Port { store, user: job.to.clone(), present: existing_uidls(store, &job.to)? },
    };
    runtime.block_on(import_session(&job.account, secret, &mut target, dry_run, spool_dir, progress, display))
}

/// Where "already present" is looked up: the import itself, or (dry run)
/// a listing read without taking the lock or creating anything.
enum Target<'a> {
    Import(Box<UserImport>),
    Port { store: &'a super::super::Store, user: String, present: std::collections::HashSet<String> },
    Peek(std::collections::HashSet<String>),
}

impl Target<'_> {
    fn contains(&self, uidl: &str) -> bool {
        match self {
            Target::Import(i) => i.contains(uidl),
            Target::Port { present, .. } | Target::Peek(present) => present.contains(uidl),
        }
    }

    fn import(
        &mut self,
        uidl: &str,
        received: SystemTime,
        message: &mut dyn std::io::Read,
    ) -> Result<ImportOutcome, StoreError> {
        match self {
            Target::Import(import) => import.import(uidl, received, message),
            Target::Port { store, user, .. } => {
                let uidl = pobox_store::Uidl::try_from(uidl)
                    .map_err(|_| StoreError::UidlRefused { uidl: uidl.to_string(), reason: "not a valid UIDL".into() })?;
                store.import_message(user, &uidl, received, message)
            }
            Target::Peek(_) => unreachable!("a dry run imports nothing"),
        }
    }
}

fn existing_uidls(store: &super::super::Store, user: &str) -> anyhow::Result<std::collections::HashSet<String>> {
    Ok(store.uidl_listing(user)?.into_iter().map(|(u, _)| u).collect())
}

fn in_use_hint(e: StoreError, user: &str) -> anyhow::Error {
    match e {
        StoreError::InUse => anyhow!(
            "{user}'s maildrop is held by a POP3 session (or another import); retry when it ends \
             (see `pobox who`, or `pobox kick {user}`)"
        ),
        other => other.into(),
    }
}

async fn import_session(
    account: &Account,
    secret: Secret,
    target: &mut Target<'_>,
    dry_run: bool,
    spool_dir: &Path,
    progress: &AccountProgress,
    display: &Display,
) -> anyhow::Result<Tally> {
    let server = format!("{}:{}", account.host, account.port);
    let mut remote = RemoteMaildrop::open(account, secret.clone()).await.with_context(|| server.clone())?;
    let listed = remote.listing().await.with_context(|| format!("{server}: reading the listing"))?;
    if !listed.is_empty() && listed.iter().all(|m| m.uidl.is_none()) {
        let _ = remote.quit().await;
        bail!(
            "{server} does not give UIDLs (no UIDL command): pobox cannot keep the UIDLs clients know, \
             so they would download everything again; refusing to import. Use `pobox fetch` instead \
             if that is acceptable"
        );
    }
    let mut tally = Tally::default();
    let mut todo = plan(&listed, target, &mut tally);
    if dry_run {
        for m in &todo {
            display.println(&format!(
                "would import message {} ({} octets, UIDL {})",
                m.num,
                m.size,
                m.uidl.as_deref().unwrap_or_default()
            ));
            tally.imported += 1;
            tally.bytes += m.size;
        }
        let _ = remote.quit().await;
        return Ok(tally);
    }
    progress.start(todo.len() as u64, todo.iter().map(|m| m.size).sum());
    let total = todo.len();
    let mut oversent = 0;
    let mut next = 0;
    while next < todo.len() {
        let done = next;
        next += 1;
        let m = &todo[done];
        // No UIDL: gone from the server (see `reconnect`).
        let Some(uidl) = m.uidl.as_deref() else { continue };
        let mut spool = Spool::new(spool_dir.to_owned());
        let got = match remote.retrieve(m, &mut spool, progress).await {
            Ok(got) => got,
            // A server sending far more than it announced: that message
            // is left out, the rest goes on over a new connection (this
            // one is stuck in the middle of a reply).
            Err(FetchError::Oversent { limit, .. }) if oversent < MAX_OVERSENT => {
                oversent += 1;
                tally.failed.push(format!(
                    "message {} (UIDL {uidl}): the server sent more than {limit} octets though LIST said {}; \
                     not imported",
                    m.num, m.size
                ));
                // Closed first: most servers lock the maildrop per session.
                drop(remote);
                remote = reconnect(account, &secret, &server, &mut todo[next..], &mut tally).await?;
                continue;
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "{server}: retrieving message {} (UIDL {uidl}), {done} of {total} done in this run; \
                     run the same command again to continue",
                    m.num
                )));
            }
        };
        if got == Retrieved::Refused {
            tally.failed.push(format!("message {} (UIDL {uidl}): the server refused RETR", m.num));
            continue;
        }
        let received = received_time(&mut spool).unwrap_or_else(SystemTime::now);
        let len = spool.len();
        let mut reader = spool.reader().context("reading the spool")?;
        match target.import(uidl, received, &mut reader) {
            Ok(ImportOutcome::Imported(_)) => {
                tally.imported += 1;
                tally.bytes += len;
            }
            Ok(ImportOutcome::AlreadyPresent) => tally.present += 1,
            Err(StoreError::UidlRefused { uidl, reason }) => {
                tally.failed.push(format!("message {}: UIDL {uidl:?} refused: {reason}", m.num));
            }
            // A local disk problem will not go away for the next message.
            Err(e) => return Err(anyhow!(e).context(format!("storing message {} (UIDL {uidl})", m.num))),
        }
        pobox_fetch::fault::point("import-stored");
    }
    remote.quit().await.with_context(|| format!("{server}: QUIT"))?;
    Ok(tally)
}

/// Most messages one account may over-send before the import stops.
const MAX_OVERSENT: usize = 10;

/// A new session after the old one had to be dropped: logs in again and
/// finds the messages still to do by UIDL (numbers are per session). Those
/// no longer listed were deleted on the server meanwhile: reported, and
/// their UIDL cleared so they are passed over.
async fn reconnect(
    account: &Account,
    secret: &Secret,
    server: &str,
    rest: &mut [Listed],
    tally: &mut Tally,
) -> anyhow::Result<RemoteMaildrop> {
    let mut remote =
        RemoteMaildrop::open(account, secret.clone()).await.with_context(|| format!("{server} (again)"))?;
    let listed = remote.listing().await.with_context(|| format!("{server}: reading the listing again"))?;
    let now: std::collections::HashMap<&str, &Listed> =
        listed.iter().filter_map(|l| l.uidl.as_deref().map(|u| (u, l))).collect();
    for m in rest.iter_mut() {
        // Gone at an earlier reconnection: reported then.
        let Some(uidl) = m.uidl.as_deref() else { continue };
        match now.get(uidl) {
            Some(l) => m.num = l.num,
            None => {
                tally.failed.push(format!("UIDL {uidl}: gone from the server during the import; not imported"));
                m.uidl = None;
            }
        }
    }
    Ok(remote)
}

/// Which listed messages to retrieve: those with a UIDL that is neither
/// already in the maildrop nor shared with another message. Counts the
/// rest in `tally`.
fn plan(listed: &[Listed], target: &Target<'_>, tally: &mut Tally) -> Vec<Listed> {
    let mut uses: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for m in listed {
        if let Some(u) = &m.uidl {
            *uses.entry(u.as_str()).or_default() += 1;
        }
    }
    let mut todo = Vec::new();
    for m in listed {
        match m.uidl.as_deref() {
            None => tally.failed.push(format!("message {}: the server gave it no valid UIDL; not imported", m.num)),
            // Which of them would a client know by that UIDL? Neither can
            // be kept faithfully.
            Some(u) if uses[u] > 1 => tally
                .failed
                .push(format!("message {}: the server gives UIDL {u:?} to {} messages; not imported", m.num, uses[u])),
            Some(u) if target.contains(u) => tally.present += 1,
            Some(_) => todo.push(m.clone()),
        }
    }
    todo
}

/// When the old server received the message: the date of its topmost
/// Received header (the last hop, normally that server's own), else its
/// Date header. `None` when neither gives a sane time (then: now).
fn received_time(spool: &mut Spool) -> Option<SystemTime> {
    let mut head = Vec::new();
    spool.reader().ok()?.take(256 * 1024).read_to_end(&mut head).ok()?;
    // Only the header: up to the first empty line.
    if let Some(end) = head.windows(2).position(|w| w == b"\n\n") {
        head.truncate(end + 2);
    }
    let message = mail_parser::MessageParser::new().parse_headers(&head)?;
    let date = message
        .received_all()
        .next()
        .and_then(mail_parser::Received::date)
        .filter(mail_parser::DateTime::is_valid)
        .or_else(|| message.date().copied().filter(mail_parser::DateTime::is_valid))?;
    let secs = u64::try_from(date.to_timestamp()).ok()?;
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    // A date in the future would make the message look new for years.
    (t <= SystemTime::now()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool_of(text: &str) -> Spool {
        let mut s = Spool::new(std::env::temp_dir());
        s.write(text.as_bytes()).unwrap();
        s
    }

    #[test]
    fn received_time_prefers_the_top_received_header_then_date() {
        let both = "Received: from b by c; Tue, 3 Dec 2024 10:00:00 +0000\n\
                    Received: from a by b; Mon, 2 Dec 2024 09:00:00 +0000\n\
                    Date: Sun, 1 Dec 2024 08:00:00 +0000\nSubject: x\n\nbody\n";
        assert_eq!(received_time(&mut spool_of(both)), Some(UNIX_EPOCH + Duration::from_secs(1_733_220_000)));
        let date_only = "Date: Sun, 1 Dec 2024 08:00:00 +0100\nSubject: x\n\nReceived: not a header; Tue, 3 Dec 2024 10:00:00 +0000\n";
        assert_eq!(received_time(&mut spool_of(date_only)), Some(UNIX_EPOCH + Duration::from_secs(1_733_036_400)));
        assert_eq!(received_time(&mut spool_of("Subject: no date\n\nbody\n")), None);
        assert_eq!(received_time(&mut spool_of("Date: Sun, 1 Dec 2999 08:00:00 +0000\n\n")), None, "future");
        assert_eq!(received_time(&mut spool_of("Date: yesterday-ish\n\n")), None);
    }

    #[test]
    fn server_forms() {
        assert_eq!(split_server("pop.example.com", Security::Tls).unwrap(), ("pop.example.com".into(), 995));
        assert_eq!(split_server("pop.example.com", Security::Starttls).unwrap(), ("pop.example.com".into(), 110));
        assert_eq!(split_server("h:1995", Security::Tls).unwrap(), ("h".into(), 1995));
        assert_eq!(split_server("[::1]:995", Security::Tls).unwrap(), ("::1".into(), 995));
        assert_eq!(split_server("::1", Security::None).unwrap(), ("::1".into(), 110));
        for bad in ["", ":995", "h:x", "[::1", "[::1]x"] {
            assert!(split_server(bad, Security::Tls).is_err(), "{bad:?} accepted");
        }
        assert!(is_loopback("localhost") && is_loopback("127.0.0.2") && is_loopback("::1"));
        assert!(!is_loopback("pop.example.com") && !is_loopback("10.0.0.1"));
        assert_eq!(parse_auth("scram-sha-256"), Ok(AuthMethod::ScramSha256));
        assert_eq!(parse_auth("user"), Ok(AuthMethod::User));
        assert!(parse_auth("oauth2").is_err() && parse_auth("cram-md5").is_err());
    }

    #[test]
    fn plan_skips_present_and_refuses_missing_or_shared_uidls() {
        let l = |num, uidl: Option<&str>| Listed { num, size: 10, uidl: uidl.map(str::to_string) };
        let listed = [l(1, Some("a")), l(2, Some("b")), l(3, None), l(4, Some("d")), l(5, Some("d")), l(6, Some("f"))];
        let target = Target::Peek(["b".to_string()].into_iter().collect());
        let mut t = Tally::default();
        let todo = plan(&listed, &target, &mut t);
        assert_eq!(todo.iter().map(|m| m.num).collect::<Vec<_>>(), [1, 6]);
        assert_eq!(t.present, 1);
        assert_eq!(t.failed.len(), 3, "{:?}", t.failed);
        assert!(t.failed[1].contains("\"d\" to 2 messages"), "{:?}", t.failed);
    }
}
