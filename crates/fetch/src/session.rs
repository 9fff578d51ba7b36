//! One account's fetch, start to finish: connect, secure, authenticate, list,
//! plan, download (pipelined), store, journal, delete, QUIT.
//!
//! The order per message is the whole point (see `journal`): the message is
//! complete (terminator seen) → stored durably → journalled durably → only
//! then is its DELE queued. Messages go through that order in batches
//! (group commit, see `Run::transfer`): each file is fsynced as it is
//! stored, then one fsync of the Maildir's `new/` and one journal append +
//! fsync cover the batch, and only then are the batch's DELEs queued. QUIT is sent only after every reply has been
//! read; any error before that drops the connection without QUIT, so the
//! server rolls back every DELE of the session (RFC 1939 §6) and the
//! journal's records turn them into pending deletes for the next run.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pobox_proto::pop3::client::{
    body_lines, parse_list_line, parse_uidl_line, Capabilities, LineEnding, Reply, ReplyError, Request,
};
use pobox_proto::pop3::response::StatusError;
use pobox_proto::pop3::Status;
use sha2::{Digest, Sha256};

use crate::auth::{choose, Login, SaslClient, Secret};
use crate::config::{Account, Retention, Security};
use crate::conn::Conn;
use crate::dest::{Delivery, Dest, MessageId};
use crate::error::FetchError;
use crate::journal::Journal;
use crate::plan::{plan, Action, Listed, Policy, Step};
use crate::progress::AccountProgress;
use crate::spool::Spool;
use crate::tls::AccountTls;

/// What one account's run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages newly stored.
    pub fetched: u64,
    /// Octets of those messages.
    pub bytes: u64,
    /// Messages downloaded again but recognised as already stored (after an
    /// interrupted run).
    pub already_present: u64,
    /// DELEs the server accepted and committed with QUIT.
    pub deleted: u64,
    /// Messages left on the server by policy.
    pub kept: u64,
    /// Messages over `max_size`, left alone.
    pub skipped: u64,
    /// Header-only copies stored.
    pub headers_only: u64,
    /// Messages abandoned because the server sent more than it announced
    /// (left on the server, nothing stored).
    pub oversent: u64,
    /// `--dry-run`: the plan, one line per message.
    pub plan: Vec<String>,
    /// Things the user should know that did not stop the fetch (a refused
    /// RETR or DELE, LIST sizes that were wrong).
    pub warnings: Vec<String>,
    /// The server's CAPA `LOGIN-DELAY` (RFC 2449 §6.8), in seconds: the
    /// daemon waits at least this long before the next login.
    pub login_delay: Option<u64>,
}

impl Summary {
    /// True when this run brought new mail.
    pub fn got_mail(&self) -> bool {
        self.fetched + self.headers_only > 0
    }
}

/// Fetches one account.
///
/// # Errors
/// [`FetchError`]; whatever was stored and journalled before the error stays
/// so, and the next run continues from there.
pub async fn fetch_account(
    account: &Account,
    secret: Secret,
    state_dir: &Path,
    dry_run: bool,
    progress: &AccountProgress,
) -> Result<Summary, FetchError> {
    fetch_account_until(account, secret, state_dir, dry_run, progress, None).await
}

/// [`fetch_account`] that stops early once `stop` is set (the daemon's
/// SIGTERM): the message being downloaded is finished, stored and
/// journalled; no RETR or DELE is sent after that, and the connection is
/// closed without QUIT when downloads were still in flight, so the server
/// keeps everything not yet journalled ([`FetchError::Interrupted`]).
///
/// # Errors
/// As [`fetch_account`], plus [`FetchError::Interrupted`].
pub async fn fetch_account_until(
    account: &Account,
    secret: Secret,
    state_dir: &Path,
    dry_run: bool,
    progress: &AccountProgress,
    stop: Option<&AtomicBool>,
) -> Result<Summary, FetchError> {
    if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
        return Err(FetchError::Interrupted);
    }
    let identity = account.identity();
    let mut journal =
        if dry_run { Journal::peek(state_dir, &identity)? } else { Journal::open(state_dir, &identity)? };
    let dest = if dry_run { None } else { Some(Dest::open(&account.destination)?) };
    let mut summary = Summary::default();
    let mut oversent: Vec<SkipKey> = Vec::new();
    // A message the server sends more of than it announced is abandoned
    // mid-reply, and with it the connection (nothing can be sent behind an
    // unfinished reply). The run goes on in a new session that skips it.
    // Each round skips one more message, so this ends.
    loop {
        let session =
            Session { account, identity: &identity, state_dir, dry_run, journal: &mut journal, dest: dest.as_ref(), stop };
        match session.run(secret.clone(), progress, &oversent, &mut summary).await {
            Ok(()) => return Ok(summary),
            // A server that renumbers or resizes its messages between our
            // sessions (no UIDL) could dodge the skip list forever.
            Err(e @ FetchError::Oversent { .. }) if oversent.len() >= MAX_OVERSENT => return Err(e),
            Err(FetchError::Oversent { num, uidl, announced, limit }) => {
                let what = format!("message {num} (uidl {})", uidl.as_deref().unwrap_or("-"));
                summary.warnings.push(format!(
                    "{what}: the server sent more than {limit} octets though LIST announced {announced}; \
                     skipped (nothing of it stored), left on the server"
                ));
                summary.oversent += 1;
                oversent.push(SkipKey { uidl, num, size: announced });
            }
            Err(e) => return Err(e),
        }
    }
}

/// Most messages one run abandons for being longer than announced before
/// it gives up on the server (exit 3).
const MAX_OVERSENT: usize = 100;

/// Identifies a message to skip in a later session of the same run: by
/// UIDL, or by number and size where the server has no UIDL (numbers are
/// stable between our sessions, which delete nothing without QUIT).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SkipKey {
    uidl: Option<String>,
    num: u32,
    size: u64,
}

impl SkipKey {
    fn matches(&self, m: &Listed) -> bool {
        match (&self.uidl, &m.uidl) {
            (Some(a), Some(b)) => a == b,
            _ => self.num == m.num && self.size == m.size,
        }
    }
}

/// One connection's worth of an account's run.
struct Session<'a> {
    account: &'a Account,
    identity: &'a str,
    state_dir: &'a Path,
    dry_run: bool,
    journal: &'a mut Journal,
    dest: Option<&'a Dest>,
    /// Set by the daemon on SIGTERM.
    stop: Option<&'a AtomicBool>,
}

impl Session<'_> {
    /// Connects, lists, plans and transfers, adding to `summary`. On
    /// [`FetchError::Oversent`] only what is true whatever happens to this
    /// connection (stored, journalled) has been added.
    async fn run(
        self,
        secret: Secret,
        progress: &AccountProgress,
        skip: &[SkipKey],
        summary: &mut Summary,
    ) -> Result<(), FetchError> {
        let Session { account, identity, state_dir, dry_run, journal, dest, stop } = self;
        let (mut conn, caps) = open_session(account, secret).await?;
        summary.login_delay = caps.as_ref().and_then(|c| c.login_delay);
        let listed = list(&mut conn, caps.as_ref()).await?;
        let has_uidl = listed.iter().all(|m| m.uidl.is_some());
        if !has_uidl && account.retention != Retention::Delete {
            return Err(FetchError::NoUidl);
        }
        let now = unix_now();
        if has_uidl && !dry_run {
            // UIDLs the server no longer lists were deleted (RFC 1939 §7: never
            // reused), so their records are done with.
            let live: std::collections::HashSet<&str> = listed.iter().filter_map(|m| m.uidl.as_deref()).collect();
            journal.retain(&|u| live.contains(u))?;
        }
        let policy = Policy { retention: account.retention, max_size: account.max_size, oversize: account.oversize };
        let mut steps = plan(&listed, journal, policy, now);
        steps.retain(|s| !skip.iter().any(|k| k.matches(&s.msg)));

        if dry_run {
            summary.plan = steps.iter().map(describe).collect();
            for s in &steps {
                match s.action {
                    Action::Fetch { headers_only: false, then_delete } => {
                        summary.fetched += 1;
                        summary.deleted += u64::from(then_delete);
                    }
                    Action::Fetch { headers_only: true, .. } => summary.headers_only += 1,
                    Action::Delete => summary.deleted += 1,
                    Action::Keep => summary.kept += 1,
                    Action::SkipOversize => summary.skipped += 1,
                }
            }
            let _ = quit(&mut conn).await?;
            return Ok(());
        }
        let dest = dest.expect("opened when not a dry run");
        let depth = if caps.as_ref().is_some_and(|c| c.pipelining) { account.pipeline_depth } else { 1 };
        let total: u64 = steps.iter().filter(|s| matches!(s.action, Action::Fetch { .. })).map(|s| s.msg.size).sum();
        let count = steps.iter().filter(|s| matches!(s.action, Action::Fetch { .. })).count() as u64;
        progress.start(count, total);

        let mut run = Run {
            account,
            identity,
            state_dir,
            dest,
            journal,
            summary: std::mem::take(summary),
            now,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_started: None,
            batch_limit: dest.batch_limit(),
            size_mismatch: (0, None),
            stop,
            deleted_before: 0,
            kept_before: 0,
            skipped_before: 0,
        };
        (run.deleted_before, run.kept_before, run.skipped_before) =
            (run.summary.deleted, run.summary.kept, run.summary.skipped);
        let result = run.transfer(&mut conn, &steps, depth, progress).await;
        run.finish_warnings();
        let Run { summary: mut got, deleted_before, kept_before, skipped_before, .. } = run;
        if let Err(e) = result {
            // This connection is dropped without QUIT: its DELEs are rolled
            // back by the server, and what it kept or skipped is planned
            // again by the next session.
            (got.deleted, got.kept, got.skipped) = (deleted_before, kept_before, skipped_before);
            *summary = got;
            return Err(e);
        }
        let dele_sent = got.deleted - deleted_before;
        got.deleted = deleted_before;
        *summary = got;
        match quit(&mut conn).await? {
            Ok(()) => summary.deleted += dele_sent,
            // RFC 1939 §6: -ERR on QUIT means some deletions failed. The
            // journal still lists them, so the next run retries.
            Err(text) => summary.warnings.push(format!("the server could not commit the deletions: {text}")),
        }
        Ok(())
    }
}

/// Connects, reads the greeting, secures the connection and logs in.
/// Returns the connection in TRANSACTION state and the (post-TLS) CAPA.
pub(crate) async fn open_session(account: &Account, secret: Secret) -> Result<(Conn, Option<Capabilities>), FetchError> {
    let tls = match account.security {
        Security::None => None,
        Security::Tls | Security::Starttls => Some(AccountTls::new(account)?),
    };
    let mut conn = Conn::connect(&account.host, account.port, account.timeout).await?;
    if account.security == Security::Tls {
        conn = conn.upgrade(tls.as_ref().expect("built for tls"), account).await?;
    }
    greeting(&mut conn, account).await?;
    let mut caps = capa(&mut conn).await?;
    if account.security == Security::Starttls {
        // STLS is mandatory here, never opportunistic: if the server does
        // not do it we stop before anything secret is sent.
        if caps.as_ref().is_some_and(|c| !c.stls) {
            return Err(FetchError::NoStls);
        }
        match conn.command(&Request::Stls).await? {
            Reply::Status(Status::Ok(_)) => {}
            _ => return Err(FetchError::NoStls),
        }
        conn = conn.upgrade(tls.as_ref().expect("built for starttls"), account).await?;
        // RFC 2595 §4: capabilities may differ after TLS; ask again and
        // forget the plaintext answer.
        caps = capa(&mut conn).await?;
    }
    login(&mut conn, account, caps.as_ref(), secret).await?;
    Ok((conn, caps))
}

/// Reads the greeting, telling "this is not a POP3 server" apart from a
/// POP3 server that is refusing service.
async fn greeting(conn: &mut Conn, account: &Account) -> Result<(), FetchError> {
    let server = || format!("{}:{}", account.host, account.port);
    let quote = |line: &str| {
        let mut q = format!("{:?}", line.trim_end());
        if q.len() > 80 {
            q.truncate(q.char_indices().take_while(|(i, _)| *i < 76).last().map_or(0, |(i, c)| i + c.len_utf8()));
            q.push_str("…\"");
        }
        q
    };
    match conn.read_reply(false).await {
        Ok(reply) => expect_ok(reply, "greeting").map(drop),
        Err(FetchError::Protocol(ReplyError::NotAStatus(StatusError::NotAStatus(line)))) => {
            Err(FetchError::NotPop3 { server: server(), said: quote(&line) })
        }
        Err(FetchError::Protocol(ReplyError::StatusTooLong)) => {
            Err(FetchError::NotPop3 { server: server(), said: "a line too long for a POP3 status".into() })
        }
        // A TLS port spoken to in plaintext (STARTTLS against 995) waits
        // silently for our handshake. Ask it for one, on a new connection
        // that carries nothing else, to say so for sure.
        Err(FetchError::Timeout(secs)) if account.security != Security::Tls && speaks_tls(account).await => {
            Err(FetchError::TlsPort { server: server(), secs })
        }
        Err(FetchError::Timeout(secs)) => Err(FetchError::NoGreeting { server: server(), secs }),
        Err(e) => Err(e),
    }
}

/// True when the account's port answers a TLS handshake (whether or not
/// its certificate would be trusted). Sends a ClientHello, nothing else.
async fn speaks_tls(account: &Account) -> bool {
    let Ok(tls) = AccountTls::new(account) else { return false };
    let Ok(conn) = Conn::connect(&account.host, account.port, account.timeout).await else { return false };
    match conn.upgrade(&tls, account).await {
        Ok(_) => true,
        Err(FetchError::Tls(e)) => !matches!(e, crate::tls::TlsError::NotTls { .. } | crate::tls::TlsError::Handshake { .. }),
        Err(_) => false,
    }
}

async fn capa(conn: &mut Conn) -> Result<Option<Capabilities>, FetchError> {
    match conn.command(&Request::Capa).await? {
        Reply::Status(Status::Ok(_)) => {
            let body = conn.read_listing().await?;
            Ok(Some(Capabilities::parse(body_lines(&body))))
        }
        // An RFC 1939-only server: no CAPA, assume nothing.
        _ => Ok(None),
    }
}

async fn login(conn: &mut Conn, account: &Account, caps: Option<&Capabilities>, secret: Secret) -> Result<(), FetchError> {
    if secret.as_str().is_none() {
        return Err(FetchError::Password("the password or token is not valid UTF-8".into()));
    }
    match choose(account.auth, caps)? {
        Login::UserPass => {
            auth_result(conn.command(&Request::User(&account.user)).await?, "USER")?;
            auth_result(conn.command(&Request::Pass(crate::auth::expose(&secret))).await?, "PASS")
        }
        Login::Sasl(mech) => {
            let mut sasl = SaslClient::new(mech, &account.user, secret, &account.host, account.port);
            let initial = sasl.initial().map(|ir| B64.encode(&*ir));
            // RFC 5034 §4: an initial response that would push the line past
            // 255 octets is sent after an empty challenge instead.
            let (first, mut deferred) = match initial {
                Some(ir) if ir.len() + mech.name().len() + 7 > 255 => (None, Some(ir)),
                Some(ir) if ir.is_empty() => (Some("=".to_string()), None),
                other => (other, None),
            };
            conn.queue(&Request::Auth { mechanism: mech.name(), initial: first.as_deref() })?;
            conn.flush().await?;
            loop {
                match conn.read_reply(true).await? {
                    Reply::Continue(ch) => {
                        let response = match deferred.take() {
                            Some(ir) if ch.is_empty() => ir,
                            _ => {
                                let challenge =
                                    B64.decode(ch.as_bytes()).map_err(|_| FetchError::Auth("bad base64 challenge".into()))?;
                                match sasl.respond(&challenge) {
                                    Ok(r) => B64.encode(&*r),
                                    Err(e) => {
                                        // Cancel (RFC 5034 §4) and report.
                                        conn.queue(&Request::SaslResponse("*"))?;
                                        conn.flush().await?;
                                        return Err(e);
                                    }
                                }
                            }
                        };
                        conn.queue(&Request::SaslResponse(&response))?;
                        conn.flush().await?;
                    }
                    Reply::Status(Status::Ok(_)) if sasl.accept_success() => return Ok(()),
                    Reply::Status(Status::Ok(_)) => {
                        return Err(FetchError::Auth("server accepted SCRAM without proving it knows the password".into()));
                    }
                    Reply::Status(Status::Err(code, text)) => {
                        return Err(FetchError::Auth(err_text(code.as_ref(), &text, mech.name())));
                    }
                }
            }
        }
    }
}

fn auth_result(reply: Reply, step: &str) -> Result<(), FetchError> {
    match reply {
        Reply::Status(Status::Ok(_)) => Ok(()),
        Reply::Status(Status::Err(code, text)) => Err(FetchError::Auth(err_text(code.as_ref(), &text, step))),
        Reply::Continue(_) => Err(FetchError::Auth(format!("unexpected continuation after {step}"))),
    }
}

fn err_text(code: Option<&pobox_proto::pop3::RespCode>, text: &str, step: &str) -> String {
    match code {
        Some(c) => format!("{step}: [{c}] {text}"),
        None => format!("{step}: {text}"),
    }
}

pub(crate) fn expect_ok(reply: Reply, what: &str) -> Result<String, FetchError> {
    match reply {
        Reply::Status(Status::Ok(t)) => Ok(t),
        Reply::Status(Status::Err(_, text)) => Err(FetchError::Server { command: what.into(), text }),
        Reply::Continue(t) => Err(FetchError::Server { command: what.into(), text: format!("+ {t}") }),
    }
}

/// Logs in to `account`'s server exactly as a fetch does (TLS or STLS
/// and certificate checks first, then the configured authentication),
/// reads its UIDL and LIST listing, and ends with QUIT without having
/// deleted or retrieved anything. UIDLs are as the server sent them,
/// duplicates included. For `pobox uidl verify`.
///
/// # Errors
///
/// As a fetch: connection, TLS, authentication or protocol errors.
pub async fn remote_listing(account: &Account, secret: Secret) -> Result<Vec<Listed>, FetchError> {
    let (mut conn, caps) = open_session(account, secret).await?;
    let listed = list_raw(&mut conn, caps.as_ref()).await?;
    // Nothing was marked for deletion, so UPDATE changes nothing; a
    // server that answers QUIT with -ERR does not make the listing wrong.
    let _ = quit(&mut conn).await?;
    Ok(listed)
}

/// UIDL and LIST, pipelined when possible, merged by message number.
async fn list(conn: &mut Conn, caps: Option<&Capabilities>) -> Result<Vec<Listed>, FetchError> {
    let mut listed = list_raw(conn, caps).await?;
    // Duplicate UIDLs would map two messages to one name and lose one of
    // them; treat the maildrop as having no usable UIDL instead.
    let mut seen = std::collections::HashSet::new();
    if !listed.iter().all(|m| m.uidl.as_ref().is_none_or(|u| seen.insert(u.clone()))) {
        tracing::warn!("server reports duplicate UIDLs; falling back to content digests");
        listed.iter_mut().for_each(|m| m.uidl = None);
    }
    Ok(listed)
}

/// [`list`] without the duplicate check.
async fn list_raw(conn: &mut Conn, caps: Option<&Capabilities>) -> Result<Vec<Listed>, FetchError> {
    let pipelining = caps.is_some_and(|c| c.pipelining);
    // Without CAPA we cannot know whether UIDL exists; ask anyway.
    let try_uidl = caps.is_none_or(|c| c.uidl);
    let mut uidls = std::collections::HashMap::new();
    if pipelining && try_uidl {
        conn.queue(&Request::Uidl(None))?;
        conn.queue(&Request::List(None))?;
        conn.flush().await?;
        read_uidl(conn, &mut uidls).await?;
    } else if try_uidl {
        conn.queue(&Request::Uidl(None))?;
        conn.flush().await?;
        read_uidl(conn, &mut uidls).await?;
        conn.queue(&Request::List(None))?;
        conn.flush().await?;
    } else {
        conn.queue(&Request::List(None))?;
        conn.flush().await?;
    }
    expect_ok(conn.read_reply(false).await?, "LIST")?;
    let body = conn.read_listing().await?;
    let mut listed = Vec::new();
    for line in body_lines(&body) {
        let (num, size) = parse_list_line(line)?;
        listed.push(Listed { num, size, uidl: uidls.remove(&num) });
    }
    Ok(listed)
}

pub(crate) async fn read_uidl(conn: &mut Conn, uidls: &mut std::collections::HashMap<u32, String>) -> Result<(), FetchError> {
    if let Reply::Status(Status::Ok(_)) = conn.read_reply(false).await? {
        let body = conn.read_listing().await?;
        for line in body_lines(&body) {
            match parse_uidl_line(line) {
                Ok((n, u)) => {
                    uidls.insert(n, u.to_string());
                }
                // An invalid id: that message falls back to a digest name.
                Err(e) => tracing::warn!("ignoring UIDL line: {e}"),
            }
        }
    }
    Ok(())
}

/// Sends QUIT and reads the answer: `Ok(Ok(()))` when the server confirmed,
/// i.e. committed the session's DELEs, `Ok(Err(text))` when it said it
/// could not.
async fn quit(conn: &mut Conn) -> Result<Result<(), String>, FetchError> {
    Ok(match conn.command(&Request::Quit).await? {
        Reply::Status(Status::Ok(_)) => Ok(()),
        other => Err(reply_text(&other)),
    })
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Retr(usize),
    Top(usize),
    Dele(usize),
}

impl Pending {
    fn is_download(self) -> bool {
        matches!(self, Pending::Retr(_) | Pending::Top(_))
    }
}

/// A message stored (not yet durably) in the current group-commit batch.
#[derive(Debug)]
struct Uncommitted {
    step: usize,
    headers_only: bool,
}

/// A batch waiting too long for more messages is committed anyway, so a
/// slow server does not hold back DELEs (and journal records) for long.
const BATCH_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

struct Run<'a> {
    account: &'a Account,
    identity: &'a str,
    state_dir: &'a Path,
    dest: &'a Dest,
    journal: &'a mut Journal,
    summary: Summary,
    now: u64,
    /// Stored, not yet durable/journalled: no DELE for these yet.
    batch: Vec<Uncommitted>,
    batch_bytes: u64,
    batch_started: Option<std::time::Instant>,
    batch_limit: usize,
    /// Full downloads whose size differed from LIST: (count, first example).
    size_mismatch: (u64, Option<String>),
    /// Set by the daemon on SIGTERM.
    stop: Option<&'a AtomicBool>,
    /// Counts from earlier sessions of this run, restored if this one's
    /// connection is abandoned.
    deleted_before: u64,
    kept_before: u64,
    skipped_before: u64,
}

impl Run<'_> {
    /// Sends RETR/TOP/DELE with up to `depth` commands in flight and
    /// handles each reply in order.
    ///
    /// Group commit: downloaded messages are stored (each file fsynced)
    /// into a batch; once per batch (full, [`BATCH_BYTES`] reached, older
    /// than [`BATCH_MAX_AGE`], or no download left in flight) the
    /// destination's directory is fsynced once, the journal gets one append
    /// and one fsync for the whole batch, and only then are the batch's
    /// DELEs queued. On an error the batch is committed (without DELEs)
    /// before returning, so the next run does not download it again.
    ///
    /// [`BATCH_BYTES`]: crate::dest::BATCH_BYTES
    async fn transfer(
        &mut self,
        conn: &mut Conn,
        steps: &[Step],
        depth: usize,
        progress: &AccountProgress,
    ) -> Result<(), FetchError> {
        let result = self.transfer_inner(conn, steps, depth, progress).await;
        if result.is_err() && !self.batch.is_empty() {
            // Best effort; the transfer's own error is the one to report.
            if let Err(e) = self.commit(steps, &mut VecDeque::new()) {
                tracing::warn!("could not commit the last batch after an error: {e}");
            }
        }
        result
    }

    async fn transfer_inner(
        &mut self,
        conn: &mut Conn,
        steps: &[Step],
        depth: usize,
        progress: &AccountProgress,
    ) -> Result<(), FetchError> {
        let mut to_send: VecDeque<Pending> = VecDeque::new();
        for (i, s) in steps.iter().enumerate() {
            match s.action {
                Action::Delete => to_send.push_back(Pending::Dele(i)),
                Action::Keep => self.summary.kept += 1,
                Action::SkipOversize => self.summary.skipped += 1,
                Action::Fetch { .. } => {}
            }
        }
        for (i, s) in steps.iter().enumerate() {
            match s.action {
                Action::Fetch { headers_only: true, .. } => to_send.push_back(Pending::Top(i)),
                Action::Fetch { headers_only: false, .. } => to_send.push_back(Pending::Retr(i)),
                _ => {}
            }
        }
        let mut downloads_left = to_send.iter().filter(|p| p.is_download()).count();
        let mut in_flight: VecDeque<Pending> = VecDeque::new();
        loop {
            if self.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                // No new RETR/DELE from here on. What was downloaded is made
                // durable and journalled (its DELE waits for the next run).
                if !self.batch.is_empty() {
                    self.commit(steps, &mut VecDeque::new())?;
                }
                // Pipelined downloads cannot be abandoned mid-stream: drop
                // the connection; the server rolls this session back.
                if in_flight.iter().any(|p| p.is_download()) {
                    return Err(FetchError::Interrupted);
                }
                // Only DELE replies outstanding: read them, then QUIT.
                to_send.clear();
            }
            if !self.batch.is_empty()
                && (downloads_left == 0
                    || self.batch.len() >= self.batch_limit
                    || self.batch_bytes >= crate::dest::BATCH_BYTES
                    || self.batch_started.is_some_and(|t| t.elapsed() >= BATCH_MAX_AGE))
            {
                self.commit(steps, &mut to_send)?;
            }
            while in_flight.len() < depth {
                let Some(p) = to_send.pop_front() else { break };
                let req = match p {
                    Pending::Retr(i) => Request::Retr(steps[i].msg.num),
                    Pending::Top(i) => Request::Top(steps[i].msg.num, 0),
                    Pending::Dele(i) => Request::Dele(steps[i].msg.num),
                };
                conn.queue(&req)?;
                in_flight.push_back(p);
            }
            let Some(p) = in_flight.pop_front() else { break };
            conn.flush().await?;
            match p {
                Pending::Retr(i) | Pending::Top(i) => {
                    downloads_left -= 1;
                    self.download(conn, steps, i, matches!(p, Pending::Top(_)), progress).await?;
                }
                Pending::Dele(i) => match conn.read_reply(false).await? {
                    Reply::Status(Status::Ok(_)) => self.summary.deleted += 1,
                    other => self.warn(format!("the server refused DELE {}: {}", steps[i].msg.num, reply_text(&other))),
                },
            }
        }
        debug_assert!(self.batch.is_empty());
        Ok(())
    }

    /// Makes the batch durable (one directory fsync, one journal append
    /// and fsync), then queues its DELEs, in order, ahead of everything
    /// else. The batch is taken first: after a failed fsync it must never
    /// be journalled (a second fsync's success would prove nothing).
    fn commit(&mut self, steps: &[Step], to_send: &mut VecDeque<Pending>) -> Result<(), FetchError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.batch_started = None;
        let records: Vec<(&str, bool)> =
            batch.iter().filter_map(|u| steps[u.step].msg.uidl.as_deref().map(|id| (id, u.headers_only))).collect();
        let (dest, journal, now) = (self.dest, &mut *self.journal, self.now);
        blocking(|| -> Result<(), FetchError> {
            dest.make_durable()?;
            crate::fault::point("batch-durable");
            journal.record_stored_batch(&records, now)?;
            crate::fault::point("batch-journalled");
            Ok(())
        })?;
        // Stored and journalled: now, and only now, DELE; ahead of the
        // remaining downloads, behind DELEs queued earlier (in order).
        let mut at = to_send.iter().position(|p| p.is_download()).unwrap_or(to_send.len());
        for u in &batch {
            if let Action::Fetch { then_delete: true, .. } = steps[u.step].action {
                to_send.insert(at, Pending::Dele(u.step));
                at += 1;
            }
        }
        Ok(())
    }

    fn warn(&mut self, text: String) {
        tracing::warn!("{text}");
        self.summary.warnings.push(text);
    }

    /// Reads one RETR/TOP reply into a spool and stores it (not yet
    /// durably: see [`commit`](Self::commit)). A refused command (message
    /// gone meanwhile) is a warning, not an error.
    async fn download(
        &mut self,
        conn: &mut Conn,
        steps: &[Step],
        i: usize,
        headers_only: bool,
        progress: &AccountProgress,
    ) -> Result<(), FetchError> {
        let step = &steps[i];
        match conn.read_reply(false).await? {
            Reply::Status(Status::Ok(_)) => {}
            other => {
                let cmd = if headers_only { "TOP" } else { "RETR" };
                self.warn(format!("the server refused {cmd} {}: {}", step.msg.num, reply_text(&other)));
                return Ok(());
            }
        }
        let mut spool = Spool::new(self.state_dir.to_owned());
        let mut lines = 0u64;
        let limit = download_limit(step.msg.size, self.account.max_size);
        conn.read_body(LineEnding::Lf, &mut |chunk| {
            let nl = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            lines += nl;
            progress.add_bytes(chunk.len() as u64 + nl);
            // A server that announced a size and sends far more (or never
            // ends the message) must not fill the disk through the spool.
            if spool.len() + chunk.len() as u64 + lines > limit {
                return Err(FetchError::Oversent {
                    num: step.msg.num,
                    uidl: step.msg.uidl.clone(),
                    announced: step.msg.size,
                    limit,
                });
            }
            spool.write(chunk).map_err(|source| FetchError::Local { context: "writing the spool".into(), source })
        })
        .await?;
        // Only now, with the terminator seen, is this a whole message.
        // RFC 1939 sizes count CRLF line ends; ours are LF.
        let wire = spool.len() + lines;
        if !headers_only && wire != step.msg.size {
            // Never lose data over it: store what arrived (it was framed
            // correctly), and say so once per run.
            self.size_mismatch.0 += 1;
            self.size_mismatch.1.get_or_insert_with(|| {
                format!("message {} (uidl {}): LIST said {} octets, RETR sent {wire}", step.msg.num, step.msg.uidl.as_deref().unwrap_or("-"), step.msg.size)
            });
        }
        let base = base_name(self.identity, step.msg.uidl.as_deref(), &spool.digest(), headers_only);
        let id = MessageId { base: &base, uidl: step.msg.uidl.as_deref(), account: &self.account.name };
        let (dest, journal, now) = (self.dest, &mut *self.journal, self.now);
        let delivery = blocking(|| dest.deliver_deferred(id, &mut spool, journal, now))?;
        crate::fault::point("message-stored");
        match (delivery, headers_only) {
            (Delivery::AlreadyPresent, _) => self.summary.already_present += 1,
            (Delivery::Stored, true) => self.summary.headers_only += 1,
            (Delivery::Stored, false) => {
                self.summary.fetched += 1;
                self.summary.bytes += spool.len();
            }
        }
        self.batch_started.get_or_insert_with(std::time::Instant::now);
        self.batch_bytes += spool.len();
        self.batch.push(Uncommitted { step: i, headers_only });
        progress.message_done(step.msg.size, wire);
        Ok(())
    }

    /// Turns the size-mismatch tally into one warning line.
    fn finish_warnings(&mut self) {
        if let (n, Some(first)) = std::mem::take(&mut self.size_mismatch) {
            let more = if n > 1 { format!(" (and {} more)", n - 1) } else { String::new() };
            self.warn(format!("the server's LIST size was wrong for {n} message(s), stored as received: {first}{more}"));
        }
    }
}

/// The most octets accepted for one message: the larger of its announced
/// size and `max_size`, plus a quarter and 64 KiB. The margin lets through
/// servers that count line ends as LF rather than CRLF (up to half the
/// octets of a message of empty lines, rarely more than a few percent),
/// which the run stores with a warning; anything beyond is a server that
/// lies or never ends its message.
pub(crate) fn download_limit(announced: u64, max_size: Option<u64>) -> u64 {
    let base = announced.max(max_size.unwrap_or(0));
    base.saturating_add(base / 4).saturating_add(64 * 1024)
}

fn reply_text(r: &Reply) -> String {
    match r {
        Reply::Status(Status::Ok(t)) => format!("+OK {t}"),
        Reply::Status(Status::Err(_, t)) => format!("-ERR {t}"),
        Reply::Continue(t) => format!("+ {t}"),
    }
}

/// Runs fsync-heavy work without stalling other accounts' tasks on a
/// multi-threaded runtime; inline on a current-thread one (tests).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The stored message's name: `pobox-` and 32 hex digits of
/// SHA-256(identity NUL uidl), or of the content digest when the server has
/// no UIDL. Stable across runs, so a second download of the same message is
/// recognised by the destination.
pub fn base_name(identity: &str, uidl: Option<&str>, digest: &[u8; 32], headers_only: bool) -> String {
    let mut h = Sha256::new();
    h.update(identity.as_bytes());
    h.update([0]);
    match uidl {
        Some(u) => h.update(u.as_bytes()),
        None => {
            h.update([0]);
            h.update(digest);
        }
    }
    let hash = hex::encode(h.finalize());
    let suffix = if headers_only { "-headers" } else { "" };
    format!("pobox-{}{suffix}", &hash[..32])
}

fn describe(s: &Step) -> String {
    let what = match s.action {
        Action::Fetch { headers_only: true, .. } => "fetch headers only (over max_size), keep on server",
        Action::Fetch { then_delete: true, .. } => "fetch, then delete from server",
        Action::Fetch { then_delete: false, .. } => "fetch, keep on server",
        Action::Delete => "already stored: delete from server",
        Action::Keep => "already stored: keep on server",
        Action::SkipOversize => "skip (over max_size)",
    };
    format!("message {} ({} octets, uidl {}): {what}", s.msg.num, s.msg.size, s.msg.uidl.as_deref().unwrap_or("-"))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names_are_stable_distinct_and_maildir_safe() {
        let d = [7u8; 32];
        let a = base_name("u@h:995", Some("abc"), &d, false);
        assert_eq!(a, base_name("u@h:995", Some("abc"), &[0; 32], false), "digest unused with a UIDL");
        assert_ne!(a, base_name("u@h:995", Some("abd"), &d, false));
        assert_ne!(a, base_name("v@h:995", Some("abc"), &d, false));
        assert_ne!(base_name("u@h:995", None, &d, false), base_name("u@h:995", None, &[8; 32], false));
        assert!(base_name("u@h:995", Some("abc"), &d, true).ends_with("-headers"));
        assert_eq!(a.len(), 6 + 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
