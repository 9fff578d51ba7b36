//! One account's fetch, start to finish: connect, secure, authenticate, list,
//! plan, download (pipelined), store, journal, delete, QUIT.
//!
//! The order per message is the whole point (see `journal`): the message is
//! complete (terminator seen) → stored durably → journalled durably → only
//! then is its DELE queued. QUIT is sent only after every reply has been
//! read; any error before that drops the connection without QUIT, so the
//! server rolls back every DELE of the session (RFC 1939 §6) and the
//! journal's records turn them into pending deletes for the next run.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pobox_proto::pop3::client::{
    body_lines, parse_list_line, parse_uidl_line, Capabilities, LineEnding, Reply, Request,
};
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
    /// `--dry-run`: the plan, one line per message.
    pub plan: Vec<String>,
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
    let identity = account.identity();
    let mut journal =
        if dry_run { Journal::peek(state_dir, &identity)? } else { Journal::open(state_dir, &identity)? };
    let dest = if dry_run { None } else { Some(Dest::open(&account.destination)?) };

    let (mut conn, caps) = open_session(account, secret).await?;
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
    let steps = plan(&listed, &journal, policy, now);

    let mut summary = Summary::default();
    if dry_run {
        summary.plan = steps.iter().map(describe).collect();
        for s in &steps {
            match s.action {
                Action::Fetch { headers_only: false, .. } => summary.fetched += 1,
                Action::Fetch { headers_only: true, .. } => summary.headers_only += 1,
                Action::Delete => summary.deleted += 1,
                Action::Keep => summary.kept += 1,
                Action::SkipOversize => summary.skipped += 1,
            }
        }
        quit(&mut conn).await?;
        return Ok(summary);
    }
    let dest = dest.expect("opened when not a dry run");
    let depth = if caps.as_ref().is_some_and(|c| c.pipelining) { account.pipeline_depth } else { 1 };
    let total: u64 = steps.iter().filter(|s| matches!(s.action, Action::Fetch { .. })).map(|s| s.msg.size).sum();
    let count = steps.iter().filter(|s| matches!(s.action, Action::Fetch { .. })).count() as u64;
    progress.start(count, total);

    let mut run = Run { account, identity: &identity, state_dir, dest: &dest, journal: &mut journal, summary, now };
    run.transfer(&mut conn, &steps, depth, progress).await?;
    let Run { mut summary, .. } = run;
    let dele_sent = summary.deleted;
    summary.deleted = 0;
    if quit(&mut conn).await? {
        summary.deleted = dele_sent;
    }
    Ok(summary)
}

/// Connects, reads the greeting, secures the connection and logs in.
/// Returns the connection in TRANSACTION state and the (post-TLS) CAPA.
async fn open_session(account: &Account, secret: Secret) -> Result<(Conn, Option<Capabilities>), FetchError> {
    let tls = match account.security {
        Security::None => None,
        Security::Tls | Security::Starttls => Some(AccountTls::new(account)?),
    };
    let mut conn = Conn::connect(&account.host, account.port, account.timeout).await?;
    if account.security == Security::Tls {
        conn = conn.upgrade(tls.as_ref().expect("built for tls"), account).await?;
    }
    expect_ok(conn.read_reply(false).await?, "greeting")?;
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
    match choose(account.auth, caps)? {
        Login::UserPass => {
            auth_result(conn.command(&Request::User(&account.user)).await?, "USER")?;
            auth_result(conn.command(&Request::Pass(secret.expose())).await?, "PASS")
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

fn expect_ok(reply: Reply, what: &str) -> Result<String, FetchError> {
    match reply {
        Reply::Status(Status::Ok(t)) => Ok(t),
        Reply::Status(Status::Err(_, text)) => Err(FetchError::Server { command: what.into(), text }),
        Reply::Continue(t) => Err(FetchError::Server { command: what.into(), text: format!("+ {t}") }),
    }
}

/// UIDL and LIST, pipelined when possible, merged by message number.
async fn list(conn: &mut Conn, caps: Option<&Capabilities>) -> Result<Vec<Listed>, FetchError> {
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
    // Duplicate UIDLs would map two messages to one name and lose one of
    // them; treat the maildrop as having no usable UIDL instead.
    let mut seen = std::collections::HashSet::new();
    if !listed.iter().all(|m| m.uidl.as_ref().is_none_or(|u| seen.insert(u.clone()))) {
        tracing::warn!("server reports duplicate UIDLs; falling back to content digests");
        listed.iter_mut().for_each(|m| m.uidl = None);
    }
    Ok(listed)
}

async fn read_uidl(conn: &mut Conn, uidls: &mut std::collections::HashMap<u32, String>) -> Result<(), FetchError> {
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

/// Sends QUIT and reads the answer. True when the server confirmed, i.e.
/// committed the session's DELEs.
async fn quit(conn: &mut Conn) -> Result<bool, FetchError> {
    match conn.command(&Request::Quit).await {
        Ok(Reply::Status(Status::Ok(_))) => Ok(true),
        Ok(Reply::Status(Status::Err(_, text))) => {
            // RFC 1939 §6: -ERR on QUIT means some deletions failed. The
            // journal still lists them, so the next run retries.
            tracing::warn!("server reported a problem committing deletions: {text}");
            Ok(false)
        }
        Ok(Reply::Continue(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Retr(usize),
    Top(usize),
    Dele(usize),
}

struct Run<'a> {
    account: &'a Account,
    identity: &'a str,
    state_dir: &'a Path,
    dest: &'a Dest,
    journal: &'a mut Journal,
    summary: Summary,
    now: u64,
}

impl Run<'_> {
    /// Sends RETR/TOP/DELE with up to `depth` commands in flight and
    /// handles each reply in order.
    async fn transfer(
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
        let mut in_flight: VecDeque<Pending> = VecDeque::new();
        loop {
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
                    let step = &steps[i];
                    let headers_only = matches!(p, Pending::Top(_));
                    if self.download(conn, step, headers_only, progress).await? {
                        if let Action::Fetch { then_delete: true, .. } = step.action {
                            // Stored and journalled: now, and only now, DELE.
                            to_send.push_front(Pending::Dele(i));
                        }
                    }
                }
                Pending::Dele(i) => match conn.read_reply(false).await? {
                    Reply::Status(Status::Ok(_)) => self.summary.deleted += 1,
                    other => tracing::warn!(msg = steps[i].msg.num, "DELE refused: {other:?}"),
                },
            }
        }
        Ok(())
    }

    /// Reads one RETR/TOP reply into a spool and stores it. Returns false
    /// when the server refused the command (message gone meanwhile).
    async fn download(
        &mut self,
        conn: &mut Conn,
        step: &Step,
        headers_only: bool,
        progress: &AccountProgress,
    ) -> Result<bool, FetchError> {
        match conn.read_reply(false).await? {
            Reply::Status(Status::Ok(_)) => {}
            other => {
                tracing::warn!(msg = step.msg.num, "RETR refused: {other:?}");
                return Ok(false);
            }
        }
        let mut spool = Spool::new(self.state_dir.to_owned());
        conn.read_body(LineEnding::Lf, &mut |chunk| {
            progress.add_bytes(chunk.len() as u64);
            spool.write(chunk).map_err(|source| FetchError::Local { context: "writing the spool".into(), source })
        })
        .await?;
        // Only now, with the terminator seen, is this a whole message.
        let base = base_name(self.identity, step.msg.uidl.as_deref(), &spool.digest(), headers_only);
        let id = MessageId { base: &base, uidl: step.msg.uidl.as_deref(), account: &self.account.name };
        let (dest, journal, now) = (self.dest, &mut *self.journal, self.now);
        let delivery = blocking(|| dest.deliver(id, &mut spool, journal, now))?;
        if let Some(uidl) = step.msg.uidl.as_deref() {
            let journal = &mut *self.journal;
            blocking(|| journal.record_stored(uidl, now, headers_only))?;
        }
        match (delivery, headers_only) {
            (Delivery::AlreadyPresent, _) => self.summary.already_present += 1,
            (Delivery::Stored, true) => self.summary.headers_only += 1,
            (Delivery::Stored, false) => {
                self.summary.fetched += 1;
                self.summary.bytes += spool.len();
            }
        }
        progress.message_done();
        Ok(true)
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
