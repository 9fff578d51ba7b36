//! The interpreter: runs checked programs against one message.
//!
//! Execution is bounded: every command, test, comparison and every KiB of
//! text scanned or produced costs steps ([`crate::Limits::max_steps`]);
//! variables, expansions and the number of actions are capped. Any breach is
//! a [`RuntimeError`], and the caller of [`crate::execute`] turns it into an
//! implicit keep.

use std::collections::HashMap;

use crate::check::{AddressPart, BodyTransform, Cmd, FlagOp, Match, Modifier, Str, StrPart, Test, VacationCmd};
use crate::matching::{self, MatchType};
use crate::message::{Address, ParsedMessage, parse_address_list};
use crate::{Action, Envelope, Limits, RuntimeError, Vacation};

/// What one script produced.
#[derive(Debug, Default)]
pub(crate) struct ScriptRun {
    /// Actions other than keep and discard, in execution order.
    pub(crate) actions: Vec<Action>,
    /// RFC 5228 §2.10.2: still set unless an action cancelled it.
    pub(crate) implicit_keep: bool,
    /// An explicit `keep` ran.
    pub(crate) explicit_keep: bool,
    /// IMAP flags for the keep (RFC 5232; POP3 ignores them).
    pub(crate) keep_flags: Vec<String>,
}

impl ScriptRun {
    /// Whether the message goes to the inbox after this script.
    pub(crate) fn keeps(&self) -> bool {
        self.implicit_keep || self.explicit_keep
    }
}

enum Flow {
    Continue,
    Stop,
}

/// Runs one script.
///
/// # Errors
/// A [`RuntimeError`] when a limit is exceeded or an action is invalid; the
/// partial result is then dropped by the caller.
pub(crate) fn run(
    program: &[Cmd],
    env: &Envelope<'_>,
    msg: &ParsedMessage<'_>,
    limits: &Limits,
    redirects_so_far: usize,
) -> Result<ScriptRun, RuntimeError> {
    let mut interp = Interp {
        env,
        msg,
        limits,
        steps: 0,
        variables: HashMap::new(),
        match_vars: Vec::new(),
        internal_flags: Vec::new(),
        redirects: redirects_so_far,
        out: ScriptRun { implicit_keep: true, ..ScriptRun::default() },
    };
    interp.block(program)?;
    if !interp.out.explicit_keep {
        // RFC 5232 §3: the implicit keep uses the internal flags variable.
        interp.out.keep_flags = interp.internal_flags.clone();
    }
    Ok(interp.out)
}

struct Interp<'e, 'm> {
    env: &'e Envelope<'e>,
    msg: &'e ParsedMessage<'m>,
    limits: &'e Limits,
    steps: u64,
    variables: HashMap<String, String>,
    match_vars: Vec<String>,
    internal_flags: Vec<String>,
    redirects: usize,
    out: ScriptRun,
}

impl Interp<'_, '_> {
    fn step(&mut self, cost: u64) -> Result<(), RuntimeError> {
        self.steps = self.steps.saturating_add(cost);
        if self.steps > self.limits.max_steps {
            Err(RuntimeError::StepLimit { limit: self.limits.max_steps })
        } else {
            Ok(())
        }
    }

    fn text_cost(len: usize) -> u64 {
        1 + (len / 1024) as u64
    }

    fn block(&mut self, commands: &[Cmd]) -> Result<Flow, RuntimeError> {
        for command in commands {
            self.step(1)?;
            if let Flow::Stop = self.command(command)? {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    fn push(&mut self, action: Action) -> Result<(), RuntimeError> {
        if self.out.actions.len() >= self.limits.max_actions {
            return Err(RuntimeError::TooManyActions { limit: self.limits.max_actions });
        }
        self.out.actions.push(action);
        Ok(())
    }

    fn command(&mut self, command: &Cmd) -> Result<Flow, RuntimeError> {
        match command {
            Cmd::If { branches, otherwise } => {
                for (test, block) in branches {
                    if self.test(test)? {
                        return self.block(block);
                    }
                }
                return self.block(otherwise);
            }
            Cmd::Stop => return Ok(Flow::Stop),
            Cmd::Keep { flags } => {
                self.out.explicit_keep = true;
                self.out.keep_flags = self.flags(flags.as_deref())?;
            }
            Cmd::Discard => self.out.implicit_keep = false,
            Cmd::FileInto { mailbox, copy, flags } => {
                let mailbox = self.expand(mailbox)?;
                if mailbox.is_empty() || mailbox.len() > 1024 || mailbox.chars().any(char::is_control) {
                    return Err(RuntimeError::InvalidMailbox(mailbox));
                }
                let flags = self.flags(flags.as_deref())?;
                self.push(Action::FileInto { mailbox, copy: *copy, flags })?;
                if !copy {
                    self.out.implicit_keep = false;
                }
            }
            Cmd::Redirect { address, copy } => {
                let address = self.expand(address)?;
                if !crate::check::valid_redirect_address(&address) {
                    return Err(RuntimeError::InvalidRedirect(address));
                }
                self.redirects += 1;
                if self.redirects > self.limits.max_redirects {
                    return Err(RuntimeError::TooManyRedirects { limit: self.limits.max_redirects });
                }
                self.push(Action::Redirect { address: address.trim().to_owned(), copy: *copy })?;
                if !copy {
                    self.out.implicit_keep = false;
                }
            }
            Cmd::Reject { reason, extended } => {
                let reason = self.expand(reason)?;
                self.push(if *extended { Action::Ereject { reason } } else { Action::Reject { reason } })?;
                self.out.implicit_keep = false;
            }
            Cmd::Vacation(vacation) => {
                if !self.out.actions.iter().any(|a| matches!(a, Action::Vacation(_)))
                    && let Some(reply) = self.vacation(vacation)? {
                        self.push(Action::Vacation(Box::new(reply)))?;
                    }
            }
            Cmd::Set { name, value, modifiers } => {
                let value = self.expand(value)?;
                let value = apply_modifiers(value, modifiers);
                self.set_variable(name, value)?;
            }
            Cmd::Flags { op, variable, flags } => {
                let mut given = Vec::new();
                for flag in flags {
                    let flag = self.expand(flag)?;
                    given.extend(flag.split_whitespace().map(str::to_owned));
                }
                let mut current = match variable {
                    Some(name) => split_flags(self.variables.get(name).map_or("", String::as_str)),
                    None => self.internal_flags.clone(),
                };
                match op {
                    FlagOp::Set => current = Vec::new(),
                    FlagOp::Add | FlagOp::Remove => {}
                }
                for flag in given {
                    let present = current.iter().position(|f| f.eq_ignore_ascii_case(&flag));
                    match (op, present) {
                        (FlagOp::Remove, Some(i)) => {
                            current.remove(i);
                        }
                        (FlagOp::Set | FlagOp::Add, None) => current.push(flag),
                        _ => {}
                    }
                }
                match variable {
                    Some(name) => self.set_variable(name, current.join(" "))?,
                    None => {
                        let joined = current.join(" ");
                        self.internal_flags = split_flags(truncate(joined, self.limits.max_variable_len).as_str());
                    }
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn flags(&mut self, flags: Option<&[Str]>) -> Result<Vec<String>, RuntimeError> {
        let Some(flags) = flags else { return Ok(self.internal_flags.clone()) };
        let mut out = Vec::new();
        for flag in flags {
            out.extend(self.expand(flag)?.split_whitespace().map(str::to_owned));
        }
        Ok(out)
    }

    fn set_variable(&mut self, name: &str, value: String) -> Result<(), RuntimeError> {
        if !self.variables.contains_key(name) && self.variables.len() >= self.limits.max_variables {
            return Err(RuntimeError::TooManyVariables { limit: self.limits.max_variables });
        }
        let value = truncate(value, self.limits.max_variable_len);
        self.step(Self::text_cost(value.len()))?;
        self.variables.insert(name.to_owned(), value);
        Ok(())
    }

    /// Substitutes variables (RFC 5229 §3); the result is capped at
    /// `max_expansion_len`.
    fn expand(&mut self, s: &Str) -> Result<String, RuntimeError> {
        let mut out = String::new();
        for part in &s.parts {
            let piece: &str = match part {
                StrPart::Literal(text) => text,
                StrPart::Variable(name) => self.variables.get(name).map_or("", String::as_str),
                StrPart::Match(i) => self.match_vars.get(*i).map_or("", String::as_str),
            };
            let room = self.limits.max_expansion_len.saturating_sub(out.len());
            if piece.len() > room {
                out.push_str(&truncate(piece.to_owned(), room));
                break;
            }
            out.push_str(piece);
        }
        self.step(Self::text_cost(out.len()))?;
        Ok(out)
    }

    fn expand_all(&mut self, list: &[Str]) -> Result<Vec<String>, RuntimeError> {
        list.iter().map(|s| self.expand(s)).collect()
    }

    /// Whether any value matches any key; a successful `:matches` sets the
    /// match variables (RFC 5229 §3.2).
    fn match_values(&mut self, m: Match, values: &[String], keys: &[Str]) -> Result<bool, RuntimeError> {
        let keys = self.expand_all(keys)?;
        let mut captures = Vec::new();
        for value in values {
            for key in &keys {
                self.step(Self::text_cost(value.len()))?;
                let want = (m.match_type == MatchType::Matches).then_some(&mut captures);
                if matching::matches(m.match_type, m.comparator, value, key, want) {
                    if m.match_type == MatchType::Matches {
                        self.match_vars = std::mem::take(&mut captures);
                    }
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn test(&mut self, test: &Test) -> Result<bool, RuntimeError> {
        self.step(1)?;
        match test {
            Test::Address { part, m, headers, keys } => {
                let mut values = Vec::new();
                for name in self.expand_all(headers)? {
                    for raw in self.msg.raw_values(&name) {
                        self.step(Self::text_cost(raw.len()))?;
                        values.extend(parse_address_list(&raw).iter().filter_map(|a| address_part(a, *part)));
                    }
                }
                self.match_values(*m, &values, keys)
            }
            Test::AllOf(tests) => {
                for t in tests {
                    if !self.test(t)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Test::AnyOf(tests) => {
                for t in tests {
                    if self.test(t)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Test::Envelope { part, m, parts, keys } => {
                let mut values = Vec::new();
                for name in self.expand_all(parts)? {
                    let raw = match name.to_ascii_lowercase().as_str() {
                        "from" => Some(self.env.from),
                        "to" => Some(self.env.to),
                        "auth" => self.env.auth,
                        _ => None,
                    };
                    let Some(raw) = raw else { continue };
                    let raw = raw.trim();
                    let raw = raw.strip_prefix('<').and_then(|r| r.strip_suffix('>')).unwrap_or(raw);
                    if raw.is_empty() {
                        // RFC 5228 §5.4: the null reverse-path is matched as
                        // the empty string, whatever the address part.
                        values.push(String::new());
                    } else if let Some(v) = address_part(&Address::from_addr_spec(raw), *part) {
                        values.push(v);
                    }
                }
                self.match_values(*m, &values, keys)
            }
            Test::Exists(names) => {
                for name in self.expand_all(names)? {
                    if !self.msg.has_header(&name) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Test::False => Ok(false),
            Test::Header { m, names, keys } => {
                let mut values = Vec::new();
                for name in self.expand_all(names)? {
                    values.extend(self.msg.decoded_values(&name));
                }
                self.match_values(*m, &values, keys)
            }
            Test::Not(inner) => Ok(!self.test(inner)?),
            Test::Size { over, limit } => {
                let size = self.msg.size();
                Ok(if *over { size > *limit } else { size < *limit })
            }
            Test::True => Ok(true),
            Test::Body { m, transform, keys } => {
                let texts: Vec<String> = match transform {
                    BodyTransform::Raw => vec![self.msg.raw_body()],
                    BodyTransform::Text => self
                        .msg
                        .parts()
                        .iter()
                        .filter(|p| p.content_type.starts_with("text/"))
                        .map(|p| p.text.clone())
                        .collect(),
                    BodyTransform::Content(types) => {
                        let types = self.expand_all(types)?;
                        self.msg
                            .parts()
                            .iter()
                            .filter(|p| types.iter().any(|t| content_type_matches(&p.content_type, t)))
                            .map(|p| p.text.clone())
                            .collect()
                    }
                };
                self.match_values(*m, &texts, keys)
            }
            Test::String { m, sources, keys } => {
                let values = self.expand_all(sources)?;
                self.match_values(*m, &values, keys)
            }
            Test::HasFlag { m, variables, keys } => {
                let flags: Vec<String> = if variables.is_empty() {
                    self.internal_flags.clone()
                } else {
                    variables
                        .iter()
                        .flat_map(|v| split_flags(self.variables.get(v).map_or("", String::as_str)))
                        .collect()
                };
                self.match_values(*m, &flags, keys)
            }
        }
    }

    /// RFC 5230 §4.5/§4.6: whom not to answer; the rest is the caller's
    /// (sending, and the `:days` response tracking, which needs state).
    fn vacation(&mut self, cmd: &VacationCmd) -> Result<Option<Vacation>, RuntimeError> {
        let reason = self.expand(&cmd.reason)?;
        let subject = cmd.subject.as_ref().map(|s| self.expand(s)).transpose()?;
        let from = cmd.from.as_ref().map(|s| self.expand(s)).transpose()?;
        let addresses = self.expand_all(&cmd.addresses)?;
        let handle = match &cmd.handle {
            Some(h) => self.expand(h)?,
            None => {
                // §4.2: without :handle, the reply's content identifies it.
                let seed = format!("{reason}\0{}\0{}\0{}", subject.as_deref().unwrap_or(""), from.as_deref().unwrap_or(""), cmd.mime);
                format!("{:016x}", fnv1a(seed.as_bytes()))
            }
        };
        let sender = self.env.from.trim().trim_start_matches('<').trim_end_matches('>').to_owned();
        if sender.is_empty() {
            return Ok(None);
        }
        let sender_local = sender.rsplit_once('@').map_or(sender.as_str(), |(l, _)| l).to_ascii_lowercase();
        if sender_local == "mailer-daemon"
            || sender_local == "listserv"
            || sender_local == "majordomo"
            || sender_local.starts_with("owner-")
            || sender_local.ends_with("-request")
        {
            return Ok(None);
        }
        let auto = self.msg.decoded_values("auto-submitted");
        if auto.iter().any(|v| !v.trim().eq_ignore_ascii_case("no")) {
            return Ok(None);
        }
        let precedence = self.msg.decoded_values("precedence");
        if precedence.iter().any(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "bulk" | "list" | "junk")) {
            return Ok(None);
        }
        if ["list-id", "list-help", "list-unsubscribe", "list-post"].iter().any(|h| self.msg.has_header(h)) {
            return Ok(None);
        }
        // The user's own addresses: the recipient, without its +detail, and :addresses.
        let mut mine: Vec<String> = addresses.iter().map(|a| a.trim().to_ascii_lowercase()).collect();
        let to = self.env.to.trim().trim_start_matches('<').trim_end_matches('>').to_ascii_lowercase();
        if let Some((local, domain)) = to.rsplit_once('@')
            && let Some((user, _)) = local.split_once('+') {
                mine.push(format!("{user}@{domain}"));
            }
        mine.push(to);
        if mine.contains(&sender.to_ascii_lowercase()) {
            return Ok(None);
        }
        let recipients_named = ["to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"].iter().any(|h| {
            self.msg
                .raw_values(h)
                .any(|v| parse_address_list(&v).iter().any(|a| mine.contains(&a.all.to_ascii_lowercase())))
        });
        if !recipients_named {
            return Ok(None);
        }
        Ok(Some(Vacation {
            to: sender,
            from,
            subject,
            reason,
            mime: cmd.mime,
            days: cmd.days,
            handle,
            addresses,
            original_subject: self.msg.decoded_values("subject").into_iter().next(),
            message_id: self.msg.raw_values("message-id").next().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()),
            references: self.msg.raw_values("references").next().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()),
        }))
    }
}

/// RFC 5228 §2.7.4 and RFC 5233 §4 (separator `+`).
fn address_part(address: &Address, part: AddressPart) -> Option<String> {
    match part {
        AddressPart::All => Some(address.all.clone()),
        AddressPart::LocalPart => Some(address.local.clone()),
        AddressPart::Domain => address.domain.clone(),
        AddressPart::User => Some(address.local.split_once('+').map_or(address.local.as_str(), |(u, _)| u).to_owned()),
        // RFC 5233 §4: no separator, no detail: the test fails, even `:matches "*"`.
        AddressPart::Detail => address.local.split_once('+').map(|(_, d)| d.to_owned()),
    }
}

/// RFC 5173 §5.2: `""` matches every part, `"text"` a whole top-level type,
/// `"text/html"` one type exactly.
fn content_type_matches(content_type: &str, wanted: &str) -> bool {
    let wanted = wanted.trim().to_ascii_lowercase();
    if wanted.is_empty() {
        return true;
    }
    if wanted.contains('/') {
        content_type == wanted
    } else {
        content_type.split('/').next() == Some(wanted.as_str())
    }
}

fn split_flags(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// Cuts `s` to at most `max` bytes at a character boundary (RFC 5229 §3
/// allows truncating long values).
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// RFC 5229 §4.1, modifiers already in precedence order.
fn apply_modifiers(mut value: String, modifiers: &[Modifier]) -> String {
    for modifier in modifiers {
        value = match modifier {
            Modifier::Lower => value.to_lowercase(),
            Modifier::Upper => value.to_uppercase(),
            Modifier::LowerFirst | Modifier::UpperFirst => {
                let mut chars = value.chars();
                match chars.next() {
                    Some(first) => {
                        let first: String = if *modifier == Modifier::LowerFirst {
                            first.to_lowercase().collect()
                        } else {
                            first.to_uppercase().collect()
                        };
                        first + chars.as_str()
                    }
                    None => value,
                }
            }
            Modifier::QuoteWildcard => {
                let mut out = String::with_capacity(value.len());
                for c in value.chars() {
                    if matches!(c, '*' | '?' | '\\') {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out
            }
            Modifier::Length => value.chars().count().to_string(),
        };
    }
    value
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5229_modifier_examples() {
        let a = "juMBlEd lETteRS".to_owned();
        assert_eq!(apply_modifiers(a.clone(), &[Modifier::Length]), "15");
        assert_eq!(apply_modifiers(a.clone(), &[Modifier::Lower]), "jumbled letters");
        assert_eq!(apply_modifiers(a.clone(), &[Modifier::UpperFirst]), "JuMBlEd lETteRS");
        assert_eq!(apply_modifiers(a, &[Modifier::Lower, Modifier::UpperFirst]), "Jumbled letters");
        assert_eq!(apply_modifiers("Rock*".into(), &[Modifier::QuoteWildcard]), "Rock\\*");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("ééé".into(), 3), "é");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }

    #[test]
    fn content_types() {
        assert!(content_type_matches("text/html", "text"));
        assert!(content_type_matches("text/html", "TEXT/HTML"));
        assert!(!content_type_matches("text/html", "text/plain"));
        assert!(content_type_matches("image/png", ""));
    }
}
