//! Sieve mail filtering (RFC 5228) for pobox: compile scripts, run them
//! against a message, get back the actions to take.
//!
//! # What it does
//! - [`compile`] checks a script and turns it into an immutable [`Script`]
//!   (`Send + Sync`, cache it until the file changes). Errors carry
//!   `line:column` and a reason ([`CompileErrors`]).
//! - [`execute`] runs a chain of scripts (global "before" scripts, the user's
//!   script, global "after" scripts) against an [`Envelope`] and a
//!   [`Message`] within [`Limits`], and returns an [`Outcome`]: the
//!   [`Action`]s to perform and any runtime errors to log.
//!
//! Supported: RFC 5228 (require, if/elsif/else, stop, keep, discard,
//! redirect, the address/allof/anyof/envelope/exists/false/header/not/size/
//! true tests, `:is`/`:contains`/`:matches`, `i;octet`, `i;ascii-casemap`,
//! `:all`/`:localpart`/`:domain`), `fileinto`, `envelope`, RFC 5429
//! `reject`/`ereject`, RFC 5173 `body` (`:raw`, `:content`, `:text`),
//! RFC 5229 `variables` (`set` with all modifiers, `${...}`, match variables,
//! the `string` test), RFC 5233 `subaddress` (`:user`/`:detail`, separator
//! `+`), RFC 3894 `copy`, RFC 5230 `vacation`, and RFC 5232 `imap4flags`
//! (`:flags`, `setflag`/`addflag`/`removeflag`, `hasflag`), whose flags are
//! carried in the actions and ignored by POP3.
//!
//! # What it does not do
//! - No I/O, no clock, no threads, no tokio: the crate is pure and sync.
//! - It does not deliver, send or bounce anything. [`Action::Redirect`],
//!   [`Action::Vacation`], [`Action::Reject`] and [`Action::Ereject`] are
//!   requests the caller carries out (through the outbound relay, an SMTP
//!   reply or a DSN). Vacation's `:days` response tracking needs state, so it
//!   is the caller's too; the pure RFC 5230 §4.5/§4.6 "do not answer" rules
//!   are applied here.
//! - Mailbox names in [`Action::FileInto`] are untrusted script text: the
//!   caller maps them to folders and must refuse path tricks (`..`, `/`).
//! - Not supported: `encoded-character`, `relational`, `regex`, `include`,
//!   `i;ascii-numeric`, `:seconds`, namespaces in variable names, and
//!   charsets other than UTF-8, US-ASCII and the Latin-1 family (others are
//!   decoded as lossy UTF-8).
//!
//! # Script chains
//! [`execute`] follows Dovecot Pigeonhole's `sieve_before`/`sieve_after`
//! semantics: the scripts form a sequence in which the next script runs only
//! if the previous one ended with keep in effect (implicit keep not
//! cancelled, or an explicit `keep`). `stop` ends the current script only.
//! The keep of a script that hands over to the next one is not performed
//! twice: it is the last script that ran whose keep counts. Actions that do
//! not cancel the keep (`fileinto :copy`, `redirect :copy`, `vacation`)
//! accumulate along the chain. Variables do not cross scripts (RFC 5229 §3).
//!
//! # Failure never loses mail
//! A runtime error (a limit, an invalid redirect address, conflicting
//! actions) drops the failing script's actions, stops the chain, and ends in
//! [`Action::Keep`]; the error is reported in [`Outcome::errors`].
//!
//! # Layout
//! - `lexer`: RFC 5228 §8.1 tokens (comments, strings, numbers, tags).
//! - `parser`: the §8.2 grammar into a generic tree; nesting is bounded.
//! - `check`: meaning, `require`, capabilities; the typed program.
//! - `eval`: the bounded interpreter.
//! - `matching`: match types and comparators.
//! - `message`: header fields, RFC 2047, addresses, the MIME walk.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod check;
mod eval;
mod lexer;
mod matching;
mod message;
mod parser;

use std::fmt;

/// Blocks and tests nest at most this deep; deeper scripts do not compile.
pub const MAX_NESTING: usize = 32;

/// Scripts longer than this many bytes do not compile.
pub const MAX_SCRIPT_LEN: usize = 1 << 20;

/// What this site allows scripts to do.
///
/// `redirect` and `vacation` send mail, so they are available only when an
/// outbound relay is configured; otherwise a script using them fails to
/// compile with a message naming the missing setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Allow `redirect` (RFC 5228 §4.2).
    pub redirect: bool,
    /// Allow `require "vacation"` (RFC 5230).
    pub vacation: bool,
}

/// One compile error at a position in the script.
///
/// Displayed as `line:column: message`; lines and columns start at 1,
/// columns count characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct CompileError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, for the script's author.
    pub message: String,
}

/// All errors found in a script, in source order (never empty).
///
/// Displayed one error per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CompileErrors {
    errors: Vec<CompileError>,
}

impl CompileErrors {
    /// The errors, in source order; there is at least one.
    pub fn errors(&self) -> &[CompileError] {
        &self.errors
    }

    /// The first error.
    pub fn first(&self) -> &CompileError {
        &self.errors[0]
    }
}

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// A checked, compiled script. Immutable, `Send + Sync`, cheap to share.
#[derive(Debug, Clone)]
pub struct Script {
    program: Vec<check::Cmd>,
}

/// Compiles `source` for a site with capabilities `caps`.
///
/// # Errors
/// [`CompileErrors`] with every error found: lexical and syntax errors stop
/// at the first one; semantic errors (unknown commands or tests, missing
/// `require`, wrong arguments, capabilities the site lacks) are collected.
///
/// # Panics
/// Never; arbitrary input is fuzzed.
pub fn compile(source: &str, caps: &Capabilities) -> Result<Script, CompileErrors> {
    let one = |e: CompileError| CompileErrors { errors: vec![e] };
    if source.len() > MAX_SCRIPT_LEN {
        return Err(one(CompileError {
            line: 1,
            column: 1,
            message: format!("script is longer than {MAX_SCRIPT_LEN} bytes"),
        }));
    }
    let tokens = lexer::tokenize(source).map_err(one)?;
    let tree = parser::parse(&tokens).map_err(one)?;
    let program = check::check(&tree, caps).map_err(|errors| CompileErrors { errors })?;
    Ok(Script { program })
}

/// The SMTP envelope of the message being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `MAIL FROM`; `""` for the null reverse-path `<>`.
    pub from: &'a str,
    /// The original `RCPT TO`, including any `+detail`.
    pub to: &'a str,
    /// The authenticated submitter, if any (envelope part `"auth"`).
    pub auth: Option<&'a str>,
}

/// The RFC 5322 message (CRLF or bare LF line ends; any bytes).
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    raw: &'a [u8],
    size: u64,
}

impl<'a> Message<'a> {
    /// Wraps the raw message. Parsing is lazy and lenient.
    pub fn new(raw: &'a [u8]) -> Message<'a> {
        Message { raw, size: raw.len() as u64 }
    }

    /// The first bytes of a bigger message (its header section and the
    /// start of its body) and the whole message's size: a delivery that
    /// streams a big message from a spool file bounds what Sieve reads, and
    /// the `size` test (RFC 5228 §5.9) still sees the real size.
    pub fn head(raw: &'a [u8], size: u64) -> Message<'a> {
        Message { raw, size: size.max(raw.len() as u64) }
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
}

/// Bounds on one execution; exceeding one is a runtime error, which ends in
/// keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Steps per script: one per command and test, one per comparison, plus
    /// one per KiB of text scanned or produced.
    pub max_steps: u64,
    /// Longest variable value in bytes; longer values are truncated
    /// (RFC 5229 §3 allows it).
    pub max_variable_len: usize,
    /// Longest string after `${...}` expansion; longer ones are truncated.
    pub max_expansion_len: usize,
    /// Distinct variables per script.
    pub max_variables: usize,
    /// Actions per script.
    pub max_actions: usize,
    /// Redirects over the whole chain (Pigeonhole's default is 4).
    pub max_redirects: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_steps: 100_000,
            max_variable_len: 4096,
            max_expansion_len: 64 * 1024,
            max_variables: 128,
            max_actions: 64,
            max_redirects: 4,
        }
    }
}

/// What the caller must do with the message.
///
/// After deduplication: at most one [`Action::Keep`], one `FileInto` per
/// mailbox, one `Redirect` per address, one `Vacation`. [`Action::Discard`]
/// appears only when nothing else keeps, files, redirects or rejects the
/// message: it is the explicit "deliver nowhere".
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Deliver to the inbox (RFC 5228 §4.3), with IMAP flags (RFC 5232).
    Keep {
        /// IMAP flags; POP3 ignores them.
        flags: Vec<String>,
    },
    /// Deliver to a folder (RFC 5228 §4.1).
    FileInto {
        /// The mailbox name as the script wrote it (untrusted).
        mailbox: String,
        /// `:copy` (RFC 3894): this action did not cancel the implicit keep.
        copy: bool,
        /// IMAP flags; POP3 ignores them.
        flags: Vec<String>,
    },
    /// Deliver nowhere (RFC 5228 §4.4).
    Discard,
    /// Refuse the message (RFC 5429 §2.2): at the protocol level if
    /// possible, else by an MDN/DSN.
    Reject {
        /// The human-readable reason.
        reason: String,
    },
    /// Refuse at the protocol level (RFC 5429 §2.1), e.g. LMTP `550 5.7.1`.
    Ereject {
        /// The human-readable reason.
        reason: String,
    },
    /// Forward to another address (RFC 5228 §4.2) through the relay.
    Redirect {
        /// A syntactically checked `local@domain`.
        address: String,
        /// `:copy` (RFC 3894): this action did not cancel the implicit keep.
        copy: bool,
    },
    /// Send an auto-reply (RFC 5230), subject to the caller's `:days`
    /// tracking.
    Vacation(Box<Vacation>),
}

/// An auto-reply to send (RFC 5230 §4); the "do not answer lists, daemons,
/// auto-submitted mail or mail not addressed to me" rules already passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacation {
    /// Whom to answer: the envelope sender.
    pub to: String,
    /// `:from`, if given.
    pub from: Option<String>,
    /// `:subject`, if given (else the caller uses "Auto: " + the subject).
    pub subject: Option<String>,
    /// The reply text, or a MIME entity when `mime` is set.
    pub reason: String,
    /// `:mime`: `reason` is a MIME entity with its own headers.
    pub mime: bool,
    /// `:days`, clamped to 1..=365: answer the same sender at most once per
    /// this many days for this `handle`.
    pub days: u64,
    /// `:handle`, or a hash of the reply's content when not given.
    pub handle: String,
    /// `:addresses`: the user's other addresses.
    pub addresses: Vec<String>,
    /// The message's `Subject`, RFC 2047-decoded, for the default reply
    /// subject ("Auto: " + it, RFC 5230 §4.7).
    pub original_subject: Option<String>,
    /// The message's `Message-ID` (with its angle brackets), for the
    /// reply's `In-Reply-To` and `References` (RFC 5230 §5.8).
    pub message_id: Option<String>,
    /// The message's `References`, continued by the reply's.
    pub references: Option<String>,
}

/// A runtime error; the message is then kept (never lost).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The script ran more than [`Limits::max_steps`] steps.
    #[error("the script exceeded its step limit ({limit})")]
    StepLimit {
        /// The limit.
        limit: u64,
    },
    /// More than [`Limits::max_variables`] variables were set.
    #[error("the script set more than {limit} variables")]
    TooManyVariables {
        /// The limit.
        limit: usize,
    },
    /// More than [`Limits::max_actions`] actions.
    #[error("the script produced more than {limit} actions")]
    TooManyActions {
        /// The limit.
        limit: usize,
    },
    /// More than [`Limits::max_redirects`] redirects.
    #[error("more than {limit} redirects")]
    TooManyRedirects {
        /// The limit.
        limit: usize,
    },
    /// A `redirect` target (after variable expansion) is not an address.
    #[error("redirect to an invalid address {0:?}")]
    InvalidRedirect(String),
    /// A `fileinto` mailbox (after variable expansion) is empty or contains
    /// control characters.
    #[error("fileinto an invalid mailbox name {0:?}")]
    InvalidMailbox(String),
    /// Actions that cannot be combined (RFC 5429 §2.3: reject/ereject with
    /// keep, fileinto, redirect or another reject).
    #[error("conflicting actions: {0}")]
    ActionConflict(String),
}

/// One runtime error and the script it happened in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("script {script}: {error}")]
pub struct ScriptError {
    /// Index of the script in the chain passed to [`execute`].
    pub script: usize,
    /// What went wrong.
    pub error: RuntimeError,
}

/// The result of [`execute`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What to do, deduplicated; never empty.
    pub actions: Vec<Action>,
    /// Runtime errors, for the log. Non-empty means the result fell back
    /// to keep.
    pub errors: Vec<ScriptError>,
}

impl Outcome {
    /// Whether the message goes to the inbox.
    pub fn keeps(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Keep { .. }))
    }
}

/// Runs `scripts` in order (before scripts, the user's, after scripts)
/// against one message. See the crate docs for the chain semantics.
///
/// An empty chain keeps the message.
///
/// # Panics
/// Never; malformed messages are parsed leniently and every loop is bounded.
pub fn execute(scripts: &[&Script], env: &Envelope<'_>, msg: &Message<'_>, limits: &Limits) -> Outcome {
    let mut parsed = message::ParsedMessage::new(msg.raw);
    parsed.size = msg.size;
    let mut actions: Vec<Action> = Vec::new();
    let mut errors = Vec::new();
    let mut keep: Option<Vec<String>> = Some(Vec::new());
    let mut redirects = 0;
    let mut last_ran = 0;
    for (index, script) in scripts.iter().enumerate() {
        last_ran = index;
        match eval::run(&script.program, env, &parsed, limits, redirects) {
            Ok(run) => {
                redirects += run.actions.iter().filter(|a| matches!(a, Action::Redirect { .. })).count();
                actions.extend(run.actions.iter().cloned());
                if run.keeps() {
                    keep = Some(run.keep_flags);
                } else {
                    keep = None;
                    break;
                }
            }
            Err(error) => {
                errors.push(ScriptError { script: index, error });
                keep = Some(Vec::new());
                break;
            }
        }
    }
    let actions = match resolve(actions, keep) {
        Ok(actions) => actions,
        Err(error) => {
            // The conflict is reported against the last script that ran.
            errors.push(ScriptError { script: last_ran, error });
            vec![Action::Keep { flags: Vec::new() }]
        }
    };
    Outcome { actions, errors }
}

/// Deduplicates (RFC 5228 §2.10.3), checks RFC 5429 §2.3 conflicts, and
/// adds the final keep or discard.
fn resolve(actions: Vec<Action>, keep: Option<Vec<String>>) -> Result<Vec<Action>, RuntimeError> {
    let rejects = actions.iter().filter(|a| matches!(a, Action::Reject { .. } | Action::Ereject { .. })).count();
    if rejects > 0 {
        if rejects > 1 {
            return Err(RuntimeError::ActionConflict("more than one reject/ereject".into()));
        }
        if keep.is_some() {
            return Err(RuntimeError::ActionConflict("reject/ereject together with keep".into()));
        }
        if actions.iter().any(|a| matches!(a, Action::FileInto { .. } | Action::Redirect { .. })) {
            return Err(RuntimeError::ActionConflict("reject/ereject together with fileinto or redirect".into()));
        }
    }
    let mut out: Vec<Action> = Vec::with_capacity(actions.len() + 1);
    for action in actions {
        let duplicate = out.iter().any(|seen| match (seen, &action) {
            (Action::FileInto { mailbox: a, .. }, Action::FileInto { mailbox: b, .. }) => a == b,
            (Action::Redirect { address: a, .. }, Action::Redirect { address: b, .. }) => a.eq_ignore_ascii_case(b),
            (Action::Vacation(_), Action::Vacation(_)) => true,
            _ => false,
        });
        if !duplicate {
            out.push(action);
        }
    }
    let delivered = out.iter().any(|a| {
        matches!(a, Action::FileInto { .. } | Action::Redirect { .. } | Action::Reject { .. } | Action::Ereject { .. })
    });
    match keep {
        Some(flags) => out.push(Action::Keep { flags }),
        None if !delivered => out.push(Action::Discard),
        None => {}
    }
    Ok(out)
}
