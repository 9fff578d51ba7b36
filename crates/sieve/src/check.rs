//! Semantic checks: from the generic syntax tree to the typed program.
//!
//! This is where commands and tests get their meaning: argument types and
//! counts, tags, `require` (RFC 5228 §3.2), the capabilities the site allows
//! (redirect and vacation need an outbound relay), literal header names,
//! envelope parts, comparators and `set` modifiers. Every error carries the
//! position of the offending token; checking continues after an error so one
//! run reports as much as it can.

use std::collections::HashSet;

use crate::lexer::Pos;
use crate::matching::{Comparator, MatchType};
use crate::parser::{Argument, Command, Test as SyntaxTest};
use crate::{Capabilities, CompileError};

/// The extensions this implementation knows, by their `require` names.
const KNOWN_EXTENSIONS: &[&str] = &[
    "fileinto",
    "reject",
    "ereject",
    "envelope",
    "body",
    "variables",
    "subaddress",
    "copy",
    "imap4flags",
    "vacation",
    "comparator-i;octet",
    "comparator-i;ascii-casemap",
];

/// Header fields the `address` test accepts (RFC 5228 §5.1: at least From,
/// To, Cc, Bcc, Sender, Resent-From, Resent-To, and others that hold
/// addresses).
const ADDRESS_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "sender",
    "reply-to",
    "resent-from",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "resent-sender",
    "resent-reply-to",
    "return-path",
    "delivered-to",
    "x-original-to",
    "envelope-to",
    "errors-to",
    "mail-followup-to",
    "mail-reply-to",
    "disposition-notification-to",
    "original-recipient",
    "x-envelope-to",
    "x-envelope-from",
];

/// A string that may contain `${...}` references (RFC 5229 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Str {
    pub(crate) parts: Vec<StrPart>,
}

/// A piece of a [`Str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrPart {
    Literal(String),
    /// A named variable, lower-cased (names are case-insensitive).
    Variable(String),
    /// `${0}`, `${1}`, ...: a match variable.
    Match(usize),
}

impl Str {
    fn literal(s: &str) -> Str {
        Str { parts: vec![StrPart::Literal(s.to_owned())] }
    }

    /// The text when it has no variable references.
    pub(crate) fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [StrPart::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// RFC 5229 §3: `"${" identifier / num-variable "}"`; anything else that
    /// looks like a reference is kept as literal text.
    fn parse_template(s: &str) -> Str {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            literal.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let reference = after.find('}').map(|end| (&after[..end], end)).and_then(|(name, end)| {
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                    // Leading zeros are allowed; absurd numbers never match.
                    let index = name.trim_start_matches('0').parse::<usize>().unwrap_or(
                        if name.trim_start_matches('0').is_empty() { 0 } else { usize::MAX },
                    );
                    Some((StrPart::Match(index), end))
                } else if is_identifier(name) {
                    Some((StrPart::Variable(name.to_ascii_lowercase()), end))
                } else {
                    None
                }
            });
            match reference {
                Some((part, end)) => {
                    if !literal.is_empty() {
                        parts.push(StrPart::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    rest = &after[end + 1..];
                }
                None => {
                    literal.push('$');
                    rest = &rest[start + 1..];
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(StrPart::Literal(literal));
        }
        Str { parts }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A checked command.
#[derive(Debug, Clone)]
pub(crate) enum Cmd {
    If { branches: Vec<(Test, Vec<Cmd>)>, otherwise: Vec<Cmd> },
    Stop,
    Keep { flags: Option<Vec<Str>> },
    Discard,
    FileInto { mailbox: Str, copy: bool, flags: Option<Vec<Str>> },
    Redirect { address: Str, copy: bool },
    Reject { reason: Str, extended: bool },
    Vacation(Box<VacationCmd>),
    Set { name: String, value: Str, modifiers: Vec<Modifier> },
    Flags { op: FlagOp, variable: Option<String>, flags: Vec<Str> },
}

/// `setflag`/`addflag`/`removeflag` (RFC 5232 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagOp {
    Set,
    Add,
    Remove,
}

/// RFC 5230 §4 arguments.
#[derive(Debug, Clone)]
pub(crate) struct VacationCmd {
    pub(crate) days: u64,
    pub(crate) subject: Option<Str>,
    pub(crate) from: Option<Str>,
    pub(crate) addresses: Vec<Str>,
    pub(crate) mime: bool,
    pub(crate) handle: Option<Str>,
    pub(crate) reason: Str,
}

/// `set` modifiers (RFC 5229 §4.1), in precedence order, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Modifier {
    Lower,
    Upper,
    LowerFirst,
    UpperFirst,
    QuoteWildcard,
    Length,
}

impl Modifier {
    fn precedence(self) -> u8 {
        match self {
            Modifier::Lower | Modifier::Upper => 40,
            Modifier::LowerFirst | Modifier::UpperFirst => 30,
            Modifier::QuoteWildcard => 20,
            Modifier::Length => 10,
        }
    }
}

/// Comparator and match type of a test.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Match {
    pub(crate) match_type: MatchType,
    pub(crate) comparator: Comparator,
}

/// RFC 5228 §2.7.4 and RFC 5233 §4.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum AddressPart {
    #[default]
    All,
    LocalPart,
    Domain,
    User,
    Detail,
}

/// RFC 5173 §5 body transforms.
#[derive(Debug, Clone)]
pub(crate) enum BodyTransform {
    Raw,
    Content(Vec<Str>),
    Text,
}

/// A checked test.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    Address { part: AddressPart, m: Match, headers: Vec<Str>, keys: Vec<Str> },
    AllOf(Vec<Test>),
    AnyOf(Vec<Test>),
    Envelope { part: AddressPart, m: Match, parts: Vec<Str>, keys: Vec<Str> },
    Exists(Vec<Str>),
    False,
    Header { m: Match, names: Vec<Str>, keys: Vec<Str> },
    Not(Box<Test>),
    Size { over: bool, limit: u64 },
    True,
    Body { m: Match, transform: BodyTransform, keys: Vec<Str> },
    String { m: Match, sources: Vec<Str>, keys: Vec<Str> },
    HasFlag { m: Match, variables: Vec<String>, keys: Vec<Str> },
}

/// Checks a parsed script.
///
/// # Errors
/// Every semantic error found, in source order.
pub(crate) fn check(commands: &[Command], caps: &Capabilities) -> Result<Vec<Cmd>, Vec<CompileError>> {
    let mut checker = Checker { caps, required: HashSet::new(), errors: Vec::new() };
    let program = checker.block(commands, true);
    if checker.errors.is_empty() { Ok(program) } else { Err(checker.errors) }
}

struct Checker<'c> {
    caps: &'c Capabilities,
    required: HashSet<String>,
    errors: Vec<CompileError>,
}

fn err(pos: Pos, message: impl Into<String>) -> CompileError {
    CompileError { line: pos.line, column: pos.column, message: message.into() }
}

/// Positional arguments after the tags have been taken out.
struct Positional<'a> {
    command: &'a str,
    pos: Pos,
    args: Vec<&'a Argument>,
    at: usize,
}

impl<'a> Positional<'a> {
    fn expect_count(&self, n: usize, what: &str) -> Result<(), CompileError> {
        if self.args.len() == n {
            return Ok(());
        }
        let pos = self.args.get(n).map_or(self.pos, |a| a.pos());
        Err(err(
            pos,
            format!("`{}` expects {n} positional argument(s) ({what}), found {}", self.command, self.args.len()),
        ))
    }

    fn next(&mut self) -> &'a Argument {
        let arg = self.args[self.at];
        self.at += 1;
        arg
    }
}

impl Checker<'_> {
    fn require(&self, extension: &str, pos: Pos, what: &str) -> Result<(), CompileError> {
        if self.required.contains(extension) {
            Ok(())
        } else {
            Err(err(pos, format!("{what} requires `require \"{extension}\";`")))
        }
    }

    fn uses_variables(&self) -> bool {
        self.required.contains("variables")
    }

    fn to_str(&self, s: &str) -> Str {
        if self.uses_variables() { Str::parse_template(s) } else { Str::literal(s) }
    }

    fn string(&self, arg: &Argument, what: &str, command: &str) -> Result<Str, CompileError> {
        match arg {
            Argument::Strings { values, list: false, .. } => Ok(self.to_str(&values[0])),
            Argument::Strings { pos, .. } => {
                Err(err(*pos, format!("`{command}`: {what} must be a single string, not a string list")))
            }
            other => Err(err(other.pos(), format!("`{command}`: {what} must be a string"))),
        }
    }

    fn string_list(&self, arg: &Argument, what: &str, command: &str) -> Result<Vec<Str>, CompileError> {
        match arg {
            Argument::Strings { values, .. } => Ok(values.iter().map(|v| self.to_str(v)).collect()),
            other => Err(err(other.pos(), format!("`{command}`: {what} must be a string or string list"))),
        }
    }

    fn block(&mut self, commands: &[Command], top_level: bool) -> Vec<Cmd> {
        let mut out = Vec::new();
        let mut requires_allowed = top_level;
        let mut i = 0;
        while i < commands.len() {
            let command = &commands[i];
            let name = command.name.to_ascii_lowercase();
            if name == "require" {
                if !requires_allowed {
                    self.errors.push(err(command.pos, "`require` must come before any other command"));
                } else if let Err(e) = self.require_command(command) {
                    self.errors.push(e);
                }
                i += 1;
                continue;
            }
            requires_allowed = false;
            if name == "if" {
                let mut branches = Vec::new();
                let mut otherwise = Vec::new();
                match self.if_branch(command) {
                    Ok(branch) => branches.push(branch),
                    Err(e) => self.errors.push(e),
                }
                i += 1;
                while let Some(next) = commands.get(i) {
                    match next.name.to_ascii_lowercase().as_str() {
                        "elsif" => {
                            match self.if_branch(next) {
                                Ok(branch) => branches.push(branch),
                                Err(e) => self.errors.push(e),
                            }
                            i += 1;
                        }
                        "else" => {
                            match self.bare_block(next) {
                                Ok(block) => otherwise = block,
                                Err(e) => self.errors.push(e),
                            }
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                }
                out.push(Cmd::If { branches, otherwise });
                continue;
            }
            match self.command(command, &name) {
                Ok(cmd) => out.push(cmd),
                Err(e) => self.errors.push(e),
            }
            i += 1;
        }
        out
    }

    fn require_command(&mut self, command: &Command) -> Result<(), CompileError> {
        self.no_block_no_test(command, "require")?;
        let [arg] = command.args.as_slice() else {
            return Err(err(command.pos, "`require` expects one string list of extension names"));
        };
        let Argument::Strings { values, .. } = arg else {
            return Err(err(arg.pos(), "`require` expects a string list of extension names"));
        };
        for value in values {
            let ext = value.to_ascii_lowercase();
            if !KNOWN_EXTENSIONS.contains(&ext.as_str()) {
                return Err(err(arg.pos(), format!("unsupported extension \"{value}\"")));
            }
            if ext == "vacation" && !self.caps.vacation {
                return Err(err(
                    arg.pos(),
                    "vacation needs an outbound relay ([relay] in the configuration)",
                ));
            }
            self.required.insert(ext);
        }
        Ok(())
    }

    fn if_branch(&mut self, command: &Command) -> Result<(Test, Vec<Cmd>), CompileError> {
        let name = command.name.to_ascii_lowercase();
        if !command.args.is_empty() {
            return Err(err(command.args[0].pos(), format!("`{name}` takes a test, not arguments")));
        }
        if command.tests.len() != 1 || command.test_list {
            return Err(err(command.pos, format!("`{name}` needs exactly one test")));
        }
        let test = self.test(&command.tests[0])?;
        let Some(block) = &command.block else {
            return Err(err(command.pos, format!("`{name}` needs a block `{{ ... }}`")));
        };
        Ok((test, self.block(block, false)))
    }

    fn bare_block(&mut self, command: &Command) -> Result<Vec<Cmd>, CompileError> {
        if !command.args.is_empty() || !command.tests.is_empty() {
            return Err(err(command.pos, "`else` takes no arguments or test"));
        }
        let Some(block) = &command.block else {
            return Err(err(command.pos, "`else` needs a block `{ ... }`"));
        };
        Ok(self.block(block, false))
    }

    fn no_block_no_test(&self, command: &Command, name: &str) -> Result<(), CompileError> {
        if let Some(test) = command.tests.first() {
            // `keep\ndiscard;` parses as `keep` with the test `discard`.
            return Err(err(
                test.pos,
                format!("missing `;` after `{name}` (`{name}` takes no test, found `{}`)", test.name),
            ));
        }
        if command.block.is_some() {
            return Err(err(command.pos, format!("`{name}` takes no block (missing `;`?)")));
        }
        Ok(())
    }

    /// Splits arguments into tags (handed to `on_tag`, which may take the
    /// tag's parameter) and positional arguments.
    fn split_args<'a>(
        &self,
        command: &'a str,
        pos: Pos,
        args: &'a [Argument],
        mut on_tag: impl FnMut(&str, Pos, &mut dyn FnMut() -> Option<&'a Argument>) -> Result<bool, CompileError>,
    ) -> Result<Positional<'a>, CompileError> {
        let mut positional = Vec::new();
        let mut i = 0;
        while i < args.len() {
            match &args[i] {
                Argument::Tag(tag, tag_pos) => {
                    let mut next_index = i + 1;
                    let mut take = || {
                        let arg = args.get(next_index).filter(|a| !matches!(a, Argument::Tag(..)));
                        if arg.is_some() {
                            next_index += 1;
                        }
                        arg
                    };
                    if !on_tag(tag, *tag_pos, &mut take)? {
                        return Err(err(*tag_pos, format!("`{command}` does not accept the tag `:{tag}`")));
                    }
                    i = next_index;
                }
                other => {
                    positional.push(other);
                    i += 1;
                }
            }
        }
        Ok(Positional { command, pos, args: positional, at: 0 })
    }

    fn command(&mut self, command: &Command, name: &str) -> Result<Cmd, CompileError> {
        let pos = command.pos;
        match name {
            "elsif" | "else" => Err(err(pos, format!("`{name}` without a preceding `if`"))),
            "stop" | "discard" => {
                self.no_block_no_test(command, name)?;
                if let Some(arg) = command.args.first() {
                    return Err(err(arg.pos(), format!("`{name}` takes no arguments")));
                }
                Ok(if name == "stop" { Cmd::Stop } else { Cmd::Discard })
            }
            "keep" => {
                self.no_block_no_test(command, name)?;
                let mut flags = None;
                let p = self.split_args(name, pos, &command.args, |tag, tag_pos, take| {
                    self.flags_tag(tag, tag_pos, take, &mut flags, "keep")
                })?;
                p.expect_count(0, "none")?;
                Ok(Cmd::Keep { flags })
            }
            "fileinto" => {
                self.require("fileinto", pos, "`fileinto`")?;
                self.no_block_no_test(command, name)?;
                let mut flags = None;
                let mut copy = false;
                let mut p = self.split_args(name, pos, &command.args, |tag, tag_pos, take| {
                    if tag == "copy" {
                        self.require("copy", tag_pos, "`:copy`")?;
                        copy = true;
                        return Ok(true);
                    }
                    self.flags_tag(tag, tag_pos, take, &mut flags, "fileinto")
                })?;
                p.expect_count(1, "mailbox")?;
                let mailbox = self.string(p.next(), "the mailbox", name)?;
                if mailbox.as_literal().is_some_and(|m| m.is_empty()) {
                    return Err(err(pos, "`fileinto`: the mailbox name is empty"));
                }
                Ok(Cmd::FileInto { mailbox, copy, flags })
            }
            "redirect" => {
                self.no_block_no_test(command, name)?;
                if !self.caps.redirect {
                    return Err(err(pos, "redirect needs an outbound relay ([relay] in the configuration)"));
                }
                let mut copy = false;
                let mut p = self.split_args(name, pos, &command.args, |tag, tag_pos, _| {
                    if tag == "copy" {
                        self.require("copy", tag_pos, "`:copy`")?;
                        copy = true;
                        return Ok(true);
                    }
                    Ok(false)
                })?;
                p.expect_count(1, "address")?;
                let arg = p.next();
                let address = self.string(arg, "the address", name)?;
                if let Some(literal) = address.as_literal()
                    && !valid_redirect_address(literal) {
                        return Err(err(arg.pos(), format!("`redirect`: \"{literal}\" is not a valid address")));
                    }
                Ok(Cmd::Redirect { address, copy })
            }
            "reject" | "ereject" => {
                self.require(name, pos, &format!("`{name}`"))?;
                self.no_block_no_test(command, name)?;
                let mut p = self.split_args(name, pos, &command.args, |_, _, _| Ok(false))?;
                p.expect_count(1, "reason")?;
                let reason = self.string(p.next(), "the reason", name)?;
                Ok(Cmd::Reject { reason, extended: name == "ereject" })
            }
            "vacation" => {
                if !self.caps.vacation {
                    return Err(err(pos, "vacation needs an outbound relay ([relay] in the configuration)"));
                }
                self.require("vacation", pos, "`vacation`")?;
                self.no_block_no_test(command, name)?;
                self.vacation(command)
            }
            "set" => {
                self.require("variables", pos, "`set`")?;
                self.no_block_no_test(command, name)?;
                let mut modifiers: Vec<Modifier> = Vec::new();
                let mut p = self.split_args(name, pos, &command.args, |tag, tag_pos, _| {
                    let modifier = match tag {
                        "lower" => Modifier::Lower,
                        "upper" => Modifier::Upper,
                        "lowerfirst" => Modifier::LowerFirst,
                        "upperfirst" => Modifier::UpperFirst,
                        "quotewildcard" => Modifier::QuoteWildcard,
                        "length" => Modifier::Length,
                        _ => return Ok(false),
                    };
                    // RFC 5229 §4.1: two modifiers of equal precedence are an error.
                    if modifiers.iter().any(|m| m.precedence() == modifier.precedence()) {
                        return Err(err(tag_pos, format!("`set`: `:{tag}` conflicts with another modifier of the same precedence")));
                    }
                    modifiers.push(modifier);
                    Ok(true)
                })?;
                modifiers.sort();
                p.expect_count(2, "name, value")?;
                let name_arg = p.next();
                let Argument::Strings { values, list: false, .. } = name_arg else {
                    return Err(err(name_arg.pos(), "`set`: the variable name must be a string"));
                };
                if !is_identifier(&values[0]) {
                    return Err(err(name_arg.pos(), format!("`set`: \"{}\" is not a valid variable name", values[0])));
                }
                let value = self.string(p.next(), "the value", "set")?;
                Ok(Cmd::Set { name: values[0].to_ascii_lowercase(), value, modifiers })
            }
            "setflag" | "addflag" | "removeflag" => {
                self.require("imap4flags", pos, &format!("`{name}`"))?;
                self.no_block_no_test(command, name)?;
                let op = match name {
                    "setflag" => FlagOp::Set,
                    "addflag" => FlagOp::Add,
                    _ => FlagOp::Remove,
                };
                let mut p = self.split_args(name, pos, &command.args, |_, _, _| Ok(false))?;
                let variable = match p.args.len() {
                    1 => None,
                    2 => Some(self.variable_name(p.next(), name)?),
                    _ => return Err(err(pos, format!("`{name}` expects [variable name] and a list of flags"))),
                };
                let flags = self.string_list(p.next(), "the flags", name)?;
                Ok(Cmd::Flags { op, variable, flags })
            }
            "if" | "require" => unreachable_command(pos, name),
            _ => Err(err(pos, format!("unknown command `{}`", command.name))),
        }
    }

    fn variable_name(&self, arg: &Argument, command: &str) -> Result<String, CompileError> {
        self.require("variables", arg.pos(), "a variable name argument")?;
        match arg {
            Argument::Strings { values, list: false, pos } => {
                if is_identifier(&values[0]) {
                    Ok(values[0].to_ascii_lowercase())
                } else {
                    Err(err(*pos, format!("`{command}`: \"{}\" is not a valid variable name", values[0])))
                }
            }
            other => Err(err(other.pos(), format!("`{command}`: the variable name must be a single string"))),
        }
    }

    fn flags_tag<'a>(
        &self,
        tag: &str,
        tag_pos: Pos,
        take: &mut dyn FnMut() -> Option<&'a Argument>,
        flags: &mut Option<Vec<Str>>,
        command: &str,
    ) -> Result<bool, CompileError> {
        if tag != "flags" {
            return Ok(false);
        }
        self.require("imap4flags", tag_pos, "`:flags`")?;
        let arg = take().ok_or_else(|| err(tag_pos, format!("`{command}`: `:flags` needs a string list")))?;
        *flags = Some(self.string_list(arg, "`:flags`", command)?);
        Ok(true)
    }

    fn vacation(&mut self, command: &Command) -> Result<Cmd, CompileError> {
        let name = "vacation";
        let mut days = 7;
        let mut subject = None;
        let mut from = None;
        let mut addresses = Vec::new();
        let mut mime = false;
        let mut handle = None;
        let mut p = self.split_args(name, command.pos, &command.args, |tag, tag_pos, take| {
            let missing = || err(tag_pos, format!("`vacation`: `:{tag}` needs a value"));
            match tag {
                "days" => match take() {
                    Some(Argument::Number(n, _)) => days = (*n).clamp(1, 365),
                    _ => return Err(err(tag_pos, "`vacation`: `:days` needs a number")),
                },
                "subject" => subject = Some(self.string(take().ok_or_else(missing)?, "`:subject`", name)?),
                "from" => from = Some(self.string(take().ok_or_else(missing)?, "`:from`", name)?),
                "addresses" => addresses = self.string_list(take().ok_or_else(missing)?, "`:addresses`", name)?,
                "mime" => mime = true,
                "handle" => handle = Some(self.string(take().ok_or_else(missing)?, "`:handle`", name)?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        p.expect_count(1, "reason")?;
        let reason = self.string(p.next(), "the reason", name)?;
        Ok(Cmd::Vacation(Box::new(VacationCmd { days, subject, from, addresses, mime, handle, reason })))
    }

    /// Handles the tags shared by the match tests: `:comparator`, match types
    /// and (when `address_part` is given) address parts.
    #[allow(clippy::too_many_arguments)]
    fn match_tag<'a>(
        &self,
        test: &str,
        tag: &str,
        tag_pos: Pos,
        take: &mut dyn FnMut() -> Option<&'a Argument>,
        m: &mut Match,
        seen: &mut (bool, bool, bool),
        address_part: Option<&mut AddressPart>,
    ) -> Result<bool, CompileError> {
        let match_type = match tag {
            "is" => Some(MatchType::Is),
            "contains" => Some(MatchType::Contains),
            "matches" => Some(MatchType::Matches),
            _ => None,
        };
        if let Some(match_type) = match_type {
            if seen.0 {
                return Err(err(tag_pos, format!("`{test}`: more than one match type")));
            }
            seen.0 = true;
            m.match_type = match_type;
            return Ok(true);
        }
        if tag == "comparator" {
            if seen.1 {
                return Err(err(tag_pos, format!("`{test}`: more than one comparator")));
            }
            seen.1 = true;
            let Some(Argument::Strings { values, list: false, .. }) = take() else {
                return Err(err(tag_pos, format!("`{test}`: `:comparator` needs a string")));
            };
            m.comparator = Comparator::from_name(&values[0])
                .ok_or_else(|| err(tag_pos, format!("comparator \"{}\" is not supported", values[0])))?;
            return Ok(true);
        }
        if let Some(address_part) = address_part {
            let part = match tag {
                "all" => AddressPart::All,
                "localpart" => AddressPart::LocalPart,
                "domain" => AddressPart::Domain,
                "user" | "detail" => {
                    self.require("subaddress", tag_pos, &format!("`:{tag}`"))?;
                    if tag == "user" { AddressPart::User } else { AddressPart::Detail }
                }
                _ => return Ok(false),
            };
            if seen.2 {
                return Err(err(tag_pos, format!("`{test}`: more than one address part")));
            }
            seen.2 = true;
            *address_part = part;
            return Ok(true);
        }
        Ok(false)
    }

    fn test(&mut self, test: &SyntaxTest) -> Result<Test, CompileError> {
        let name = test.name.to_ascii_lowercase();
        let pos = test.pos;
        let takes_tests = matches!(name.as_str(), "allof" | "anyof" | "not");
        if !takes_tests && !test.tests.is_empty() {
            return Err(err(
                test.tests[0].pos,
                format!("`{name}` takes no nested test (found `{}`; missing `,` or `{{`?)", test.tests[0].name),
            ));
        }
        match name.as_str() {
            "true" | "false" => {
                if let Some(arg) = test.args.first() {
                    return Err(err(arg.pos(), format!("`{name}` takes no arguments")));
                }
                Ok(if name == "true" { Test::True } else { Test::False })
            }
            "allof" | "anyof" => {
                if let Some(arg) = test.args.first() {
                    return Err(err(arg.pos(), format!("`{name}` takes only a test list")));
                }
                if !test.test_list {
                    return Err(err(pos, format!("`{name}` needs a test list `( ... )`")));
                }
                let tests = test.tests.iter().map(|t| self.test(t)).collect::<Result<Vec<_>, _>>()?;
                Ok(if name == "allof" { Test::AllOf(tests) } else { Test::AnyOf(tests) })
            }
            "not" => {
                if !test.args.is_empty() || test.tests.len() != 1 || test.test_list {
                    return Err(err(pos, "`not` takes exactly one test"));
                }
                Ok(Test::Not(Box::new(self.test(&test.tests[0])?)))
            }
            "exists" => {
                let mut p = self.split_args("exists", pos, &test.args, |_, _, _| Ok(false))?;
                p.expect_count(1, "header names")?;
                let arg = p.next();
                let names = self.string_list(arg, "the header names", "exists")?;
                check_header_names(&names, arg.pos())?;
                Ok(Test::Exists(names))
            }
            "size" => {
                let mut over = None;
                let p = self.split_args("size", pos, &test.args, |tag, tag_pos, _| {
                    if tag != "over" && tag != "under" {
                        return Ok(false);
                    }
                    if over.is_some() {
                        return Err(err(tag_pos, "`size` takes only one of `:over` and `:under`"));
                    }
                    over = Some(tag == "over");
                    Ok(true)
                })?;
                let over = over.ok_or_else(|| err(pos, "`size` needs `:over` or `:under`"))?;
                p.expect_count(1, "limit")?;
                match p.args[0] {
                    Argument::Number(limit, _) => Ok(Test::Size { over, limit: *limit }),
                    other => Err(err(other.pos(), "`size`: the limit must be a number")),
                }
            }
            "header" | "address" | "envelope" | "string" | "body" | "hasflag" => self.match_test(test, &name),
            "elsif" | "else" | "if" => Err(err(pos, format!("`{name}` is a command, not a test"))),
            _ => Err(err(pos, format!("unknown test `{}`", test.name))),
        }
    }

    fn match_test(&mut self, test: &SyntaxTest, name: &str) -> Result<Test, CompileError> {
        let pos = test.pos;
        match name {
            "envelope" => self.require("envelope", pos, "the `envelope` test")?,
            "string" => self.require("variables", pos, "the `string` test")?,
            "body" => self.require("body", pos, "the `body` test")?,
            "hasflag" => self.require("imap4flags", pos, "the `hasflag` test")?,
            _ => {}
        }
        let mut m = Match::default();
        let mut seen = (false, false, false);
        let mut part = AddressPart::All;
        let mut transform = None;
        let wants_part = matches!(name, "address" | "envelope");
        let mut p = self.split_args(name, pos, &test.args, |tag, tag_pos, take| {
            if name == "body" && matches!(tag, "raw" | "content" | "text") {
                if transform.is_some() {
                    return Err(err(tag_pos, "`body`: more than one body transform"));
                }
                transform = Some(match tag {
                    "raw" => BodyTransform::Raw,
                    "text" => BodyTransform::Text,
                    _ => {
                        let arg = take().ok_or_else(|| err(tag_pos, "`body`: `:content` needs a string list"))?;
                        BodyTransform::Content(self.string_list(arg, "`:content`", "body")?)
                    }
                });
                return Ok(true);
            }
            let part = if wants_part { Some(&mut part) } else { None };
            self.match_tag(name, tag, tag_pos, take, &mut m, &mut seen, part)
        })?;
        match name {
            "body" => {
                p.expect_count(1, "keys")?;
                let keys = self.string_list(p.next(), "the keys", name)?;
                Ok(Test::Body { m, transform: transform.unwrap_or(BodyTransform::Text), keys })
            }
            "hasflag" => {
                let variables = match p.args.len() {
                    1 => Vec::new(),
                    2 => {
                        let arg = p.next();
                        self.require("variables", arg.pos(), "a variable list")?;
                        let Argument::Strings { values, pos, .. } = arg else {
                            return Err(err(arg.pos(), "`hasflag`: the variable list must be strings"));
                        };
                        for v in values {
                            if !is_identifier(v) {
                                return Err(err(*pos, format!("`hasflag`: \"{v}\" is not a valid variable name")));
                            }
                        }
                        values.iter().map(|v| v.to_ascii_lowercase()).collect()
                    }
                    _ => return Err(err(pos, "`hasflag` expects [variable list] and a list of flags")),
                };
                let keys = self.string_list(p.next(), "the flags", name)?;
                Ok(Test::HasFlag { m, variables, keys })
            }
            _ => {
                let what = match name {
                    "string" => "source, keys",
                    "envelope" => "envelope parts, keys",
                    _ => "header names, keys",
                };
                p.expect_count(2, what)?;
                let first = p.next();
                let first_list = self.string_list(first, "the first argument", name)?;
                let keys = self.string_list(p.next(), "the keys", name)?;
                match name {
                    "header" => {
                        check_header_names(&first_list, first.pos())?;
                        Ok(Test::Header { m, names: first_list, keys })
                    }
                    "address" => {
                        check_header_names(&first_list, first.pos())?;
                        for h in first_list.iter().filter_map(Str::as_literal) {
                            if !ADDRESS_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
                                return Err(err(first.pos(), format!("`address`: \"{h}\" is not a header that holds addresses")));
                            }
                        }
                        Ok(Test::Address { part, m, headers: first_list, keys })
                    }
                    "envelope" => {
                        for e in first_list.iter().filter_map(Str::as_literal) {
                            if !matches!(e.to_ascii_lowercase().as_str(), "from" | "to" | "auth") {
                                return Err(err(first.pos(), format!("`envelope`: unknown envelope part \"{e}\" (use \"from\", \"to\" or \"auth\")")));
                            }
                        }
                        Ok(Test::Envelope { part, m, parts: first_list, keys })
                    }
                    _ => Ok(Test::String { m, sources: first_list, keys }),
                }
            }
        }
    }
}

fn unreachable_command(pos: Pos, name: &str) -> Result<Cmd, CompileError> {
    // `if` and `require` are dispatched by `Checker::block`; reaching here
    // means a misplaced one, which we report rather than panic on.
    Err(err(pos, format!("misplaced `{name}`")))
}

/// RFC 5322 §2.2 field names: printable ASCII except `:`.
fn check_header_names(names: &[Str], pos: Pos) -> Result<(), CompileError> {
    for name in names.iter().filter_map(Str::as_literal) {
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err(err(pos, format!("\"{name}\" is not a valid header field name")));
        }
    }
    Ok(())
}

/// A redirect target must be one plain `local@domain` (RFC 5228 §4.2).
pub(crate) fn valid_redirect_address(address: &str) -> bool {
    let address = address.trim();
    let Some((local, domain)) = address.rsplit_once('@') else { return false };
    !local.is_empty()
        && !domain.is_empty()
        && address.len() <= 320
        && !address.chars().any(|c| c.is_whitespace() || c.is_control() || "<>,;()[]".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(
            Str::parse_template("a${Foo}b${1}${bad-name}${${x}}$"),
            Str {
                parts: vec![
                    StrPart::Literal("a".into()),
                    StrPart::Variable("foo".into()),
                    StrPart::Literal("b".into()),
                    StrPart::Match(1),
                    StrPart::Literal("${bad-name}${".into()),
                    StrPart::Variable("x".into()),
                    StrPart::Literal("}$".into()),
                ]
            }
        );
        assert_eq!(Str::parse_template("${00}").parts, [StrPart::Match(0)]);
        assert_eq!(Str::parse_template("${99999999999999999999999}").parts, [StrPart::Match(usize::MAX)]);
    }

    #[test]
    fn redirect_addresses() {
        assert!(valid_redirect_address("bart@example.com"));
        assert!(!valid_redirect_address("bart"));
        assert!(!valid_redirect_address("a b@example.com"));
        assert!(!valid_redirect_address("<a@b>"));
        assert!(!valid_redirect_address("a@b\r\nRCPT TO:<x@y>"));
    }
}
