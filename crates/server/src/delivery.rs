//! The delivery pipeline shared by LMTP and `pobox deliver`: Sieve filtering
//! (global before scripts, the user's script, global after scripts), then
//! storage, with quotas applied by the store.
//!
//! Everything here is synchronous (Sieve is pure CPU, the store is blocking
//! file I/O); async callers run it on the blocking pool.
//!
//! Filtering never loses mail: a script that does not compile, fails at run
//! time or files into an unusable folder ends in keep (the inbox), and the
//! problem is logged.
//!
//! Vacation (with a relay configured): the message is stored first; only
//! then is the `:days` tracking consulted and the reply queued in the
//! outbox (`outbox.rs`), which a background task sends. Nothing about the
//! reply can fail or delay the delivery: its errors are logged.
//!
//! Redirect (with a relay): the whole message, with an `X-Pobox-Loop`
//! header naming the user prepended, is queued in the outbox with the
//! original envelope sender (as Pigeonhole does by default). A message
//! that already carries this user's loop header is kept instead of sent
//! round again. When the message is not also stored here (no `:copy`, no
//! keep) and the queue cannot take it, or the relay later refuses it or
//! gives up, it is delivered to the inbox: a redirect never loses mail.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use pobox_sieve::{Action, Capabilities, Envelope, Limits, Message, Script};
use pobox_store::stamp::FileStamp;
use pobox_store::{Delivered, Mailstore, StoreError};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::outbox::{self, OutboundConfig};

/// Where Sieve scripts are.
#[derive(Debug, Clone, Default)]
pub struct SieveConfig {
    /// Directory of per-user scripts, `<dir>/<user>.sieve`; `None` disables them.
    pub user_dir: Option<PathBuf>,
    /// Global scripts run before the user's.
    pub before: Vec<PathBuf>,
    /// Global scripts run after the user's.
    pub after: Vec<PathBuf>,
}

/// The envelope of one recipient's copy.
#[derive(Debug, Clone)]
pub struct Rcpt<'a> {
    /// The reverse path (`""` for `<>`).
    pub from: &'a str,
    /// The recipient address as given (may carry `+detail`).
    pub to: &'a str,
    /// The local user it maps to.
    pub user: &'a str,
}

/// Sieve reads at most this much of a message: the header section and the
/// start of the body. A big message is streamed from its spool file to the
/// store; loading it whole for Sieve would undo that. `size` tests still
/// see the real size ([`pobox_sieve::Message::head`]); `body` tests on a
/// longer message see its first MiB (LMTP and SMTP charge it to the DATA
/// memory budget and give Sieve 64 KiB when the budget has no room).
pub const SIEVE_HEAD_MAX: usize = 1024 * 1024;

/// A message to deliver, readable once per copy (recipient, folder)
/// without being held whole in memory.
pub trait Source: Sync {
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Its first `max` bytes (all of it if shorter).
    ///
    /// # Errors
    /// If the underlying storage cannot be read.
    fn head(&self, max: usize) -> io::Result<Cow<'_, [u8]>>;
    /// A reader from its first byte.
    fn reader(&self) -> Box<dyn io::Read + '_>;
}

impl Source for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn head(&self, max: usize) -> io::Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(&self[..self.len().min(max)]))
    }
    fn reader(&self) -> Box<dyn io::Read + '_> {
        Box::new(*self)
    }
}

/// What happened to one recipient's copy.
#[derive(Debug)]
pub enum Outcome {
    /// Stored: in the inbox (`folder` `None`) and/or folders.
    Stored(Vec<(Option<String>, Delivered)>),
    /// Accepted and not stored here: a Sieve `discard`, or a `redirect`
    /// (queued for the relay) without a local copy.
    Discarded,
    /// A Sieve `reject`/`ereject`: refuse with this reason (LMTP 550 5.7.1).
    Rejected(String),
    /// Storing failed; nothing of this copy counts as delivered.
    Failed(StoreError),
}

/// Compiled scripts, cached by path until the file changes.
#[derive(Default)]
struct Cache {
    scripts: HashMap<PathBuf, (FileStamp, Option<Arc<Script>>)>,
}

/// Where vacation replies go: the outbox, and who sends it.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The relay and state directories.
    pub config: OutboundConfig,
    /// The right-hand side of the replies' Message-IDs.
    pub hostname: String,
    /// Wakes the sender task after queueing (`None` in `pobox deliver`,
    /// whose queue the running server sends at its next pass).
    pub wake: Option<Arc<Notify>>,
}

impl Outbound {
    /// From the server configuration; `None` when no relay is configured.
    pub fn from_config(config: &crate::Config, wake: Option<Arc<Notify>>) -> Option<Outbound> {
        config.outbound.clone().map(|c| Outbound { config: c, hostname: config.hostname.clone(), wake })
    }
}

/// The pipeline: Sieve, then the store.
pub struct Pipeline {
    store: Arc<dyn Mailstore>,
    sieve: SieveConfig,
    cache: Mutex<Cache>,
    limits: Limits,
    outbound: Option<Outbound>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("sieve", &self.sieve).finish_non_exhaustive()
    }
}

/// What Sieve decides for one copy, before anything is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Store in the inbox.
    Inbox,
    /// Store in this folder.
    Folder(String),
    /// Drop.
    Discard,
    /// Refuse.
    Reject(String),
    /// Answer the sender (RFC 5230), after storing, unless already answered
    /// within `:days`.
    Vacation(Box<pobox_sieve::Vacation>),
    /// Forward to this address through the relay (RFC 5228 §4.2).
    Redirect(String),
}

impl Pipeline {
    /// A pipeline over `store` with these scripts.
    pub fn new(store: Arc<dyn Mailstore>, sieve: SieveConfig) -> Pipeline {
        Pipeline { store, sieve, cache: Mutex::new(Cache::default()), limits: Limits::default(), outbound: None }
    }

    /// With outbound mail: scripts may use `vacation`, and its replies
    /// are queued in the outbox.
    #[must_use]
    pub fn with_outbound(mut self, outbound: Option<Outbound>) -> Pipeline {
        self.outbound = outbound;
        self
    }

    /// What scripts may use here: `vacation` and `redirect` only with a
    /// relay.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities { vacation: self.outbound.is_some(), redirect: self.outbound.is_some() }
    }

    /// The store behind the pipeline.
    pub fn store(&self) -> &Arc<dyn Mailstore> {
        &self.store
    }

    /// Runs the scripts and returns what they decide, storing nothing (for
    /// `pobox sieve test`, and the first half of [`Pipeline::deliver`]).
    pub fn plan(&self, rcpt: &Rcpt<'_>, message: &[u8]) -> Vec<Plan> {
        self.plan_source(rcpt, &message)
    }

    /// [`Pipeline::plan`] over a [`Source`]: the scripts see its first
    /// [`SIEVE_HEAD_MAX`] bytes, read only when a script applies.
    fn plan_source(&self, rcpt: &Rcpt<'_>, source: &dyn Source) -> Vec<Plan> {
        let scripts = self.scripts_for(rcpt.user);
        if scripts.is_empty() {
            return vec![Plan::Inbox];
        }
        let head = match source.head(SIEVE_HEAD_MAX) {
            Ok(h) => h,
            Err(e) => {
                warn!(user = %rcpt.user, error = %e, "cannot read the message for sieve; the message is kept");
                return vec![Plan::Inbox];
            }
        };
        let refs: Vec<&Script> = scripts.iter().map(|s| s.as_ref()).collect();
        let env = Envelope { from: rcpt.from, to: rcpt.to, auth: None };
        let message = Message::head(&head, source.size());
        let outcome = pobox_sieve::execute(&refs, &env, &message, &self.limits);
        for e in &outcome.errors {
            warn!(user = %rcpt.user, error = %e, "sieve runtime error; the message is kept");
        }
        let mut plans = Vec::new();
        for action in outcome.actions {
            crate::metrics::sieve_action(&action);
            match action {
                Action::Keep { .. } => plans.push(Plan::Inbox),
                Action::FileInto { mailbox, .. } => plans.push(Plan::Folder(mailbox)),
                Action::Discard => plans.push(Plan::Discard),
                Action::Reject { reason } | Action::Ereject { reason } => plans.push(Plan::Reject(reason)),
                Action::Vacation(v) if self.outbound.is_some() => plans.push(Plan::Vacation(v)),
                Action::Redirect { address, .. } if self.outbound.is_some() => plans.push(Plan::Redirect(address)),
                other => {
                    // redirect and vacation compile only with a relay:
                    // keep rather than lose.
                    warn!(user = %rcpt.user, action = %action_name(&other), "sieve action not available; the message is kept");
                    plans.push(Plan::Inbox);
                }
            }
        }
        if plans.is_empty() {
            plans.push(Plan::Inbox);
        }
        plans.dedup();
        plans
    }

    /// Filters and stores one recipient's copy. `message` is the complete
    /// message including any trace headers the caller added.
    pub fn deliver(&self, rcpt: &Rcpt<'_>, message: &[u8]) -> Outcome {
        self.deliver_from(rcpt, &message)
    }

    /// [`Pipeline::deliver`] from a [`Source`]: each copy is streamed from
    /// it to the store (LMTP and SMTP pass their spooled message this way).
    pub fn deliver_from(&self, rcpt: &Rcpt<'_>, message: &dyn Source) -> Outcome {
        let plans = self.plan_source(rcpt, message);
        if let Some(Plan::Reject(reason)) = plans.iter().find(|p| matches!(p, Plan::Reject(_))) {
            info!(user = %rcpt.user, "sieve rejected the message");
            return Outcome::Rejected(reason.clone());
        }
        let mut plans = plans;
        let replies: Vec<pobox_sieve::Vacation> =
            plans.iter().filter_map(|p| if let Plan::Vacation(v) = p { Some(v.as_ref().clone()) } else { None }).collect();
        let mut redirects: Vec<String> =
            plans.iter().filter_map(|p| if let Plan::Redirect(a) = p { Some(a.clone()) } else { None }).collect();
        let me = crate::vacation::base_address(rcpt.to);
        if !redirects.is_empty() && redirected_by(message, &me) {
            warn!(user = %rcpt.user, "sieve redirect: the message was already redirected by this user (X-Pobox-Loop); kept instead");
            redirects.clear();
            if !plans.contains(&Plan::Inbox) {
                plans.push(Plan::Inbox);
            }
        }
        if !plans.iter().any(|p| matches!(p, Plan::Inbox | Plan::Folder(_))) {
            if redirects.iter().all(|a| self.queue_redirect(rcpt, &me, a, message, true)) {
                if redirects.is_empty() {
                    info!(user = %rcpt.user, "sieve discarded the message");
                }
                for v in &replies {
                    self.queue_vacation(rcpt, v);
                }
                return Outcome::Discarded;
            }
            // A redirect could not be queued and nothing else keeps the
            // message: it goes to the inbox.
            redirects.clear();
            plans.push(Plan::Inbox);
        }
        let mut stored = Vec::new();
        for plan in plans {
            let result = match &plan {
                Plan::Inbox => self.store.deliver(rcpt.user, &mut message.reader()).map(|d| (None, d)),
                Plan::Folder(folder) => match self.store.deliver_to_folder(rcpt.user, folder, &mut message.reader()) {
                    Err(StoreError::InvalidFolder(name)) => {
                        warn!(user = %rcpt.user, folder = %name, "sieve fileinto an unusable folder; kept in the inbox");
                        self.store.deliver(rcpt.user, &mut message.reader()).map(|d| (None, d))
                    }
                    other => other.map(|d| (Some(folder.clone()), d)),
                },
                Plan::Discard | Plan::Reject(_) | Plan::Vacation(_) | Plan::Redirect(_) => continue,
            };
            match result {
                Ok(s) => stored.push(s),
                // A copy that could not be stored fails the whole recipient:
                // the sender retries, and a copy already filed elsewhere may
                // then be stored twice, which is better than losing one.
                Err(e) => return Outcome::Failed(e),
            }
        }
        // Stored durably: now, and only now, the redirects and the reply.
        for address in &redirects {
            self.queue_redirect(rcpt, &me, address, message, false);
        }
        for v in &replies {
            self.queue_vacation(rcpt, v);
        }
        Outcome::Stored(stored)
    }

    /// Queues the message for `address` with our loop header; false when
    /// it could not be queued (logged). `keep_on_failure`: the message is
    /// stored nowhere else, so the sender task delivers it to the inbox if
    /// the relay refuses it or it is given up.
    fn queue_redirect(&self, rcpt: &Rcpt<'_>, me: &str, address: &str, message: &dyn Source, keep_on_failure: bool) -> bool {
        let Some(out) = &self.outbound else { return false };
        let envelope = outbox::Envelope {
            v: 1,
            created: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
            from: Some(rcpt.from.trim_start_matches('<').trim_end_matches('>').to_owned()).filter(|f| !f.is_empty()),
            to: vec![address.to_owned()],
            kind: "redirect".into(),
            user: rcpt.user.to_owned(),
            keep_on_failure,
        };
        let loop_header = format!("{LOOP_HEADER}: {me}\r\n");
        let mut body = io::Read::chain(loop_header.as_bytes(), message.reader());
        match outbox::enqueue(&out.config.outbox_dir, &envelope, &mut body) {
            Ok(_) => {
                info!(user = %rcpt.user, to = %address, "sieve redirect queued");
                if let Some(wake) = &out.wake {
                    wake.notify_one();
                }
                true
            }
            Err(e) => {
                warn!(user = %rcpt.user, error = %e, "sieve redirect: cannot queue the message");
                false
            }
        }
    }

    /// Queues a vacation reply unless this sender was answered for this
    /// handle within `:days`. Every failure is logged and ends here: the
    /// message is already stored.
    fn queue_vacation(&self, rcpt: &Rcpt<'_>, v: &pobox_sieve::Vacation) {
        let Some(out) = &self.outbound else { return };
        let now = SystemTime::now();
        match crate::vacation::should_reply(&out.config.vacation_dir, rcpt.user, &v.to, &v.handle, v.days, now) {
            Ok(true) => {}
            Ok(false) => {
                info!(user = %rcpt.user, to = %v.to, days = v.days, "vacation: sender already answered; no reply");
                return;
            }
            Err(e) => {
                warn!(user = %rcpt.user, error = %e, "vacation: response tracking unavailable; no reply sent");
                return;
            }
        }
        let message = crate::vacation::compose(v, rcpt.to, &out.hostname, now);
        let envelope = outbox::Envelope {
            v: 1,
            created: now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
            from: None,
            to: vec![v.to.clone()],
            kind: "vacation".into(),
            user: rcpt.user.to_owned(),
            keep_on_failure: false,
        };
        match outbox::enqueue(&out.config.outbox_dir, &envelope, &mut message.as_slice()) {
            Ok(_) => {
                info!(user = %rcpt.user, to = %v.to, "vacation: reply queued");
                if let Some(wake) = &out.wake {
                    wake.notify_one();
                }
            }
            Err(e) => warn!(user = %rcpt.user, error = %e, "vacation: cannot queue the reply; not sent"),
        }
    }

    /// The compiled scripts that apply to `user`, in order. A script that
    /// fails to compile is skipped (and logged once per change).
    fn scripts_for(&self, user: &str) -> Vec<Arc<Script>> {
        let mut paths: Vec<PathBuf> = self.sieve.before.clone();
        if let Some(dir) = &self.sieve.user_dir {
            paths.push(dir.join(format!("{user}.sieve")));
        }
        paths.extend(self.sieve.after.iter().cloned());
        paths.iter().filter_map(|p| self.compiled(p)).collect()
    }

    fn compiled(&self, path: &Path) -> Option<Arc<Script>> {
        let meta = std::fs::metadata(path).ok()?;
        let stamp = FileStamp::of(&meta);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, script)) = cache.scripts.get(path)
            && *cached == stamp
        {
            return script.clone();
        }
        let script = match std::fs::read_to_string(path) {
            Ok(source) => match pobox_sieve::compile(&source, &self.capabilities()) {
                Ok(s) => Some(Arc::new(s)),
                Err(errors) => {
                    warn!(path = %path.display(), errors = %errors, "sieve script does not compile; ignored");
                    None
                }
            },
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read sieve script; ignored");
                None
            }
        };
        cache.scripts.insert(path.to_path_buf(), (stamp, script.clone()));
        script
    }
}

/// The header a redirected copy carries, naming the user who redirected
/// it (loop protection, RFC 5228 §4.2).
pub const LOOP_HEADER: &str = "X-Pobox-Loop";

/// Whether the message's header section has `X-Pobox-Loop: <me>`.
fn redirected_by(message: &dyn Source, me: &str) -> bool {
    let Ok(head) = message.head(SIEVE_HEAD_MAX) else { return false };
    let text = String::from_utf8_lossy(&head);
    text.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| name.trim().eq_ignore_ascii_case(LOOP_HEADER) && value.trim().eq_ignore_ascii_case(me))
}

/// A Sieve action's name for a log line (its fields may hold addresses and
/// reply text the log has no use for).
fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Keep { .. } => "keep",
        Action::FileInto { .. } => "fileinto",
        Action::Discard => "discard",
        Action::Reject { .. } => "reject",
        Action::Ereject { .. } => "ereject",
        Action::Redirect { .. } => "redirect",
        Action::Vacation(_) => "vacation",
        // `Action` is non_exhaustive: a new action is logged as "other".
        _ => "other",
    }
}
