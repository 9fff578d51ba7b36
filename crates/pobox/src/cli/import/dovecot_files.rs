//! Dovecot's files and templates, read without touching anything: the
//! `dovecot-uidlist` of a Maildir, the passwd-file, and the `%` templates
//! of `pop3_uidl_format` and `mail_location`/`mail_path`. Pure functions,
//! unit-tested here; `dovecot.rs` does the I/O.
//!
//! Templates come in two syntaxes, and both are read by one parser:
//!
//! - Dovecot 2.3: `%[-][0][width][.width][modifiers]<char>` or
//!   `%[...]{long_name}`; modifiers `X` (decimal → lowercase hex), `L`,
//!   `U`, `R`; a `0` flag pads on the left with zeros (never truncates), a
//!   plain width truncates. `%08Xu%08Xv` is the 2.3 default UIDL.
//! - Dovecot 2.4: `%{name | filter | filter(arg)}` with `hex(N)` (lowercase
//!   hex, left-padded with zeros to N and cut to the last N digits; a
//!   negative N pads and cuts on the right), `lower`, `upper`, `username`,
//!   `domain`. `%{uid | hex(8)}%{uidvalidity | hex(8)}` is the 2.4 default.

use std::fmt;

/// A problem in an input file, at a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

// ---------------------------------------------------------------------------
// dovecot-uidlist

/// A parsed `dovecot-uidlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uidlist {
    /// The IMAP UIDVALIDITY (`V` in version 3).
    pub uid_validity: u32,
    /// The UID the next message gets (`N`), if given.
    pub next_uid: Option<u32>,
    /// The mailbox GUID (`G`), if given.
    pub guid: Option<String>,
    /// One entry per message Dovecot has given a UID.
    pub entries: Vec<UidlistEntry>,
}

/// One message line of a `dovecot-uidlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidlistEntry {
    /// 1-based line in the file, for messages.
    pub line: usize,
    /// The IMAP UID.
    pub uid: u32,
    /// The UIDL Dovecot saved for POP3 (`P`, `pop3_save_uidl`).
    pub pop3_uidl: Option<String>,
    /// The message GUID (`G`).
    pub guid: Option<String>,
    /// The file name as Dovecot last saw it (no `:2,` flags, usually).
    pub filename: Vec<u8>,
}

/// Parses a `dovecot-uidlist` (format version 3 as written since Dovecot
/// 1.1; version 1, Courier-compatible, too):
///
/// ```text
/// 3 V<uidvalidity> N<nextuid> G<guid> [other fields]
/// <uid> [<key><value> ...] :<filename>
/// ```
///
/// Unknown header and entry fields are ignored, as Dovecot does.
///
/// # Errors
///
/// The first malformed line: a missing or unknown version, a header
/// without UIDVALIDITY, an entry without a number or without `:filename`,
/// UIDs not strictly increasing (Dovecot writes them in order, so anything
/// else means a damaged file).
pub fn parse_uidlist(text: &[u8]) -> Result<Uidlist, LineError> {
    let mut lines = text
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)));
    let err = |line: usize, reason: &str| LineError {
        line,
        reason: reason.to_owned(),
    };
    let Some((_, header)) = lines.next().filter(|(_, h)| !h.is_empty()) else {
        return Err(err(1, "empty file: no header line"));
    };
    let header = std::str::from_utf8(header).map_err(|_| err(1, "header is not UTF-8"))?;
    let mut fields = header.split(' ').filter(|f| !f.is_empty());
    let version = fields.next().unwrap_or_default();
    let (mut uid_validity, mut next_uid, mut guid) = (None, None, None);
    match version {
        "3" => {
            for f in fields {
                let (key, value) = f.split_at(1);
                match key {
                    "V" => {
                        uid_validity = Some(
                            value
                                .parse::<u32>()
                                .map_err(|_| err(1, "UIDVALIDITY (V) is not a number"))?,
                        )
                    }
                    "N" => {
                        next_uid = Some(
                            value
                                .parse::<u32>()
                                .map_err(|_| err(1, "next UID (N) is not a number"))?,
                        )
                    }
                    "G" => guid = Some(value.to_owned()),
                    _ => {}
                }
            }
        }
        "1" => {
            let v = fields.next().and_then(|v| v.parse::<u32>().ok());
            uid_validity = Some(v.ok_or_else(|| err(1, "version 1 header without a UIDVALIDITY"))?);
            next_uid = fields.next().and_then(|n| n.parse::<u32>().ok());
        }
        other => {
            return Err(err(
                1,
                &format!("unsupported dovecot-uidlist version {other:?} (1 and 3 are known)"),
            ));
        }
    }
    let Some(uid_validity) = uid_validity.filter(|&v| v != 0) else {
        return Err(err(1, "header has no UIDVALIDITY (V<number>)"));
    };
    let mut entries: Vec<UidlistEntry> = Vec::new();
    for (line, raw) in lines {
        if raw.is_empty() {
            continue;
        }
        let space = raw
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| err(line, "no space after the UID"))?;
        let uid = std::str::from_utf8(&raw[..space])
            .ok()
            .and_then(|u| u.parse::<u32>().ok())
            .filter(|&u| u != 0)
            .ok_or_else(|| err(line, "the UID is not a positive number"))?;
        if entries.last().is_some_and(|prev| prev.uid >= uid) {
            return Err(err(line, "UIDs are not increasing: the file is damaged"));
        }
        let rest = &raw[space + 1..];
        let (pop3_uidl, guid, filename) = if version == "1" {
            (None, None, rest.to_vec())
        } else {
            let colon = rest
                .iter()
                .position(|&b| b == b':')
                .ok_or_else(|| err(line, "no ':' before the file name"))?;
            let ext = std::str::from_utf8(&rest[..colon])
                .map_err(|_| err(line, "fields are not UTF-8"))?;
            let (mut p, mut g) = (None, None);
            for f in ext.split(' ').filter(|f| !f.is_empty()) {
                let (key, value) = f.split_at(1);
                match key {
                    "P" => p = Some(value.to_owned()),
                    "G" => g = Some(value.to_owned()),
                    _ => {}
                }
            }
            (p, g, rest[colon + 1..].to_vec())
        };
        if filename.is_empty() {
            return Err(err(line, "empty file name"));
        }
        entries.push(UidlistEntry {
            line,
            uid,
            pop3_uidl,
            guid,
            filename,
        });
    }
    Ok(Uidlist {
        uid_validity,
        next_uid,
        guid,
        entries,
    })
}

// ---------------------------------------------------------------------------
// Templates

/// A parsed `%` template (either syntax, see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var { name: String, ops: Vec<Op> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// 2.3 `X`, 2.4 `hex` without width.
    Hex,
    /// 2.4 `hex(N)`.
    HexWidth(i64),
    Lower,
    Upper,
    Reverse,
    Username,
    Domain,
    /// 2.3 `[offset.]`: characters skipped (negative: from the end).
    Offset(i64),
    /// 2.3 `0width`: left-pad with zeros, never truncate.
    ZeroPad(usize),
    /// 2.3 plain width: at most that many characters (negative: all but
    /// that many).
    Truncate(i64),
}

impl Template {
    /// Parses `text`; `short` maps 2.3 one-letter variables to names.
    ///
    /// # Errors
    ///
    /// A description of the first thing not understood.
    pub fn parse(text: &str, short: &[(char, &str)]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            if chars.peek() == Some(&'%') {
                chars.next();
                lit.push('%');
                continue;
            }
            // [-][0]width[.[0][-]width]
            let number = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
                let mut n: Option<i64> = None;
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                    chars.next();
                    n = Some(n.unwrap_or(0) * 10 + i64::from(d));
                }
                n
            };
            let mut neg = false;
            if chars.peek() == Some(&'-') {
                chars.next();
                neg = true;
            }
            let mut zero = false;
            if chars.peek() == Some(&'0') {
                chars.next();
                zero = true;
            }
            let mut width = number(&mut chars).map(|w| if neg { -w } else { w });
            let mut offset = None;
            if chars.peek() == Some(&'.') {
                chars.next();
                offset = Some(if zero && width.is_none() {
                    0
                } else {
                    width.unwrap_or(0)
                });
                zero = false;
                if chars.peek() == Some(&'0') {
                    chars.next();
                    zero = true;
                }
                let mut neg = false;
                if chars.peek() == Some(&'-') {
                    chars.next();
                    neg = true;
                }
                width = number(&mut chars).map(|w| if neg { -w } else { w });
            } else if zero && width.is_none() {
                // "%0u": a zero width, not a flag.
                zero = false;
            }
            let mut ops = Vec::new();
            while let Some(&m) = chars.peek() {
                let op = match m {
                    'X' => Op::Hex,
                    'L' => Op::Lower,
                    'U' => Op::Upper,
                    'R' => Op::Reverse,
                    _ => break,
                };
                chars.next();
                ops.push(op);
            }
            let name = match chars.next() {
                None => return Err(format!("{text:?} ends with an unfinished %")),
                Some('{') => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            None => return Err(format!("{text:?}: %{{ without }}")),
                            Some('}') => break,
                            Some(c) => inner.push(c),
                        }
                    }
                    let mut parts = inner.split('|').map(str::trim);
                    let name = parts.next().unwrap_or_default().to_owned();
                    let old_style = !ops.is_empty() || width.is_some() || offset.is_some();
                    for filter in parts {
                        if old_style {
                            return Err(format!(
                                "{text:?}: 2.3 modifiers and 2.4 filters mixed in %{{{inner}}}"
                            ));
                        }
                        ops.push(parse_filter(filter).map_err(|e| format!("{text:?}: {e}"))?);
                    }
                    // 2.3 modifiers apply after the filters of 2.4; both
                    // never occur together (refused above).
                    name
                }
                Some(c) => match short.iter().find(|(k, _)| *k == c) {
                    Some((_, long)) => (*long).to_owned(),
                    None => return Err(format!("{text:?}: unknown variable %{c}")),
                },
            };
            if name.is_empty() {
                return Err(format!("{text:?}: empty variable name"));
            }
            if let Some(off) = offset {
                ops.push(Op::Offset(off));
            }
            match (width, zero) {
                (Some(w), true) => ops.push(Op::ZeroPad(usize::try_from(w).unwrap_or(0))),
                (Some(w), false) if w != 0 => ops.push(Op::Truncate(w)),
                _ => {}
            }
            if !lit.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Var { name, ops });
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(Template(pieces))
    }

    /// The variable names used, for checking them before any expansion.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Var { name, .. } => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// Expands with `lookup` giving each variable's value.
    ///
    /// # Errors
    ///
    /// An unknown variable, or a `hex` of something that is not a number.
    pub fn expand(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var { name, ops } => {
                    let mut v = lookup(name).ok_or_else(|| format!("unknown variable {name:?}"))?;
                    for op in ops {
                        v = apply(op, v)?;
                    }
                    out.push_str(&v);
                }
            }
        }
        Ok(out)
    }
}

fn parse_filter(filter: &str) -> Result<Op, String> {
    let (name, arg) = match filter.split_once('(') {
        Some((n, rest)) => {
            let arg = rest
                .strip_suffix(')')
                .ok_or_else(|| format!("filter {filter:?} lacks ')'"))?;
            (n.trim(), Some(arg.trim()))
        }
        None => (filter, None),
    };
    Ok(match (name, arg) {
        ("hex", None) => Op::Hex,
        ("hex", Some(n)) => Op::HexWidth(n.parse().map_err(|_| format!("hex({n}): not a number"))?),
        ("lower", None) => Op::Lower,
        ("upper", None) => Op::Upper,
        ("reverse", None) => Op::Reverse,
        ("username", None) => Op::Username,
        ("domain", None) => Op::Domain,
        _ => return Err(format!("filter {filter:?} is not supported here")),
    })
}

fn apply(op: &Op, v: String) -> Result<String, String> {
    let hex = |v: &str| {
        v.parse::<u64>()
            .map(|n| format!("{n:x}"))
            .map_err(|_| format!("{v:?} is not a number"))
    };
    Ok(match op {
        Op::Hex => hex(&v)?,
        Op::HexWidth(w) => {
            let h = hex(&v)?;
            let n = usize::try_from(w.unsigned_abs()).unwrap_or(usize::MAX);
            if *w >= 0 {
                let padded = format!("{h:0>n$}");
                padded[padded.len() - n.min(padded.len())..].to_owned()
            } else {
                let mut padded = format!("{h:0<n$}");
                padded.truncate(n);
                padded
            }
        }
        Op::Lower => v.to_lowercase(),
        Op::Upper => v.to_uppercase(),
        Op::Reverse => v.chars().rev().collect(),
        Op::Username => v.split('@').next().unwrap_or_default().to_owned(),
        Op::Domain => v
            .split_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default(),
        Op::Offset(off) => {
            let chars: Vec<char> = v.chars().collect();
            let n = usize::try_from(off.unsigned_abs()).unwrap_or(usize::MAX);
            if *off < 0 {
                chars[chars.len().saturating_sub(n)..].iter().collect()
            } else {
                chars.iter().skip(n).collect()
            }
        }
        Op::ZeroPad(w) => format!("{v:0>w$}"),
        Op::Truncate(w) => {
            let len = v.chars().count();
            let keep = if *w > 0 {
                usize::try_from(*w).unwrap_or(usize::MAX)
            } else {
                len.saturating_sub(usize::try_from(w.unsigned_abs()).unwrap_or(usize::MAX))
            };
            v.chars().take(keep).collect()
        }
    })
}

/// The variables of `pop3_uidl_format` (2.3 letters and long names).
pub const UIDL_VARS: &[(char, &str)] = &[
    ('u', "uid"),
    ('v', "uidvalidity"),
    ('m', "md5"),
    ('f', "filename"),
    ('g', "guid"),
];

/// Parses a `pop3_uidl_format`, refusing variables a Maildir import
/// cannot know (`md5` is mbox-only).
///
/// # Errors
///
/// A description of what is not understood.
pub fn uidl_format(text: &str) -> Result<Template, String> {
    let t = Template::parse(text, UIDL_VARS)?;
    for name in t.names() {
        match name {
            "uid" | "uidvalidity" | "filename" | "guid" => {}
            "md5" => {
                return Err("%m / %{md5} exists for mbox only; a Maildir has no such UIDL".into());
            }
            other => {
                return Err(format!(
                    "unknown UIDL variable {other:?} (uid, uidvalidity, filename, guid)"
                ));
            }
        }
    }
    if t.names().next().is_none() {
        return Err(format!(
            "{text:?} has no variable: every message would get the same UIDL"
        ));
    }
    Ok(t)
}

/// What a UIDL is made of for one message.
#[derive(Debug, Clone, Copy)]
pub struct UidlVars<'a> {
    /// IMAP UID.
    pub uid: u32,
    /// IMAP UIDVALIDITY.
    pub uid_validity: u32,
    /// The GUID Dovecot reports: the uidlist's `G`, else the base name.
    pub guid: &'a str,
    /// The file name without the `:2,` flags.
    pub filename: &'a str,
}

/// Expands a UIDL format for one message.
///
/// # Errors
///
/// As [`Template::expand`].
pub fn expand_uidl(format: &Template, vars: UidlVars<'_>) -> Result<String, String> {
    format.expand(&|name| {
        Some(match name {
            "uid" => vars.uid.to_string(),
            "uidvalidity" => vars.uid_validity.to_string(),
            "guid" => vars.guid.to_owned(),
            "filename" => vars.filename.to_owned(),
            _ => return None,
        })
    })
}

/// The variables of a mail location (2.3 letters and long names).
pub const LOCATION_VARS: &[(char, &str)] = &[
    ('u', "user"),
    ('n', "username"),
    ('d', "domain"),
    ('h', "home"),
];

/// Expands a Dovecot mail location for one user: `maildir:` and any
/// `:KEY=value` options are dropped, a leading `~` is the home directory.
///
/// # Errors
///
/// A template not understood, a variable without value (`~` or `%h`
/// for a user without home), or a result that is not an absolute path.
pub fn expand_location(template: &str, user: &str, home: Option<&str>) -> Result<String, String> {
    let rest = template.strip_prefix("maildir:").unwrap_or(template);
    if template.contains(':') && !template.starts_with("maildir:") {
        return Err(format!(
            "{template:?}: only maildir locations can be imported"
        ));
    }
    let path = rest.split(':').next().unwrap_or_default();
    let (username, domain) = match user.split_once('@') {
        Some((n, d)) => (n, d),
        None => (user, ""),
    };
    let lookup = |name: &str| -> Option<String> {
        Some(match name {
            "user" => user.to_owned(),
            "username" => username.to_owned(),
            "domain" => domain.to_owned(),
            "home" => home?.to_owned(),
            _ => return None,
        })
    };
    let expanded = Template::parse(path, LOCATION_VARS)?.expand(&lookup)?;
    let expanded = match expanded.strip_prefix('~') {
        Some(after) if after.is_empty() || after.starts_with('/') => {
            let Some(home) = home.filter(|h| !h.is_empty()) else {
                return Err(format!(
                    "{template:?} uses ~ but {user} has no home directory in the passwd-file"
                ));
            };
            format!("{home}{after}")
        }
        _ => expanded,
    };
    if !expanded.starts_with('/') {
        return Err(format!(
            "{template:?} gives {expanded:?} for {user}, which is not an absolute path"
        ));
    }
    Ok(expanded)
}

// ---------------------------------------------------------------------------
// passwd-file

/// One user line of a Dovecot passwd-file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DovecotUser {
    /// 1-based line number.
    pub line: usize,
    /// The user name (with domain, if the file has one).
    pub name: String,
    /// The password field as written (`{SCHEME}value`, a bare crypt
    /// string, or empty).
    pub password: String,
    /// The home directory (6th field), if any.
    pub home: Option<String>,
    /// Extra fields (8th field on), `key=value` (a bare key has an empty
    /// value).
    pub extra: Vec<(String, String)>,
}

impl DovecotUser {
    /// The Maildir this user's extra fields name, if any: 2.3's
    /// `userdb_mail=maildir:...` or 2.4's `userdb_mail_path=...`.
    #[must_use]
    pub fn mail_override(&self) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == "userdb_mail" || k == "userdb_mail_path")
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a Dovecot passwd-file (2.3 and 2.4 use the same line format:
/// `user:password:uid:gid:gecos:home:shell:extra fields`). Comments and
/// blank lines are skipped.
///
/// # Errors
///
/// Lines that cannot be used, each with its line number; the other users
/// are still returned.
#[must_use]
pub fn parse_passwd(text: &str) -> (Vec<DovecotUser>, Vec<LineError>) {
    let mut users = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = raw.splitn(8, ':').collect();
        let name = fields[0].trim();
        if name.is_empty() || fields.len() < 2 {
            errors.push(LineError {
                line,
                reason: "no user name and password (user:password:...)".into(),
            });
            continue;
        }
        let home = fields
            .get(5)
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .map(str::to_owned);
        let extra = fields
            .get(7)
            .map(|x| {
                x.split_whitespace()
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        None => (kv.to_owned(), String::new()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        users.push(DovecotUser {
            line,
            name: name.to_owned(),
            password: fields[1].to_owned(),
            home,
            extra,
        });
    }
    (users, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uidl(format: &str, uid: u32, uidv: u32) -> String {
        let t = uidl_format(format).unwrap();
        expand_uidl(
            &t,
            UidlVars {
                uid,
                uid_validity: uidv,
                guid: "g-1",
                filename: "1.M2P3.host,S=10",
            },
        )
        .unwrap()
    }

    #[test]
    fn dovecot_23_default_uidl_is_zero_padded_lowercase_hex() {
        assert_eq!(uidl("%08Xu%08Xv", 1, 1_700_000_000), "000000016553f100");
        assert_eq!(
            uidl("%08Xu%08Xv", 0x1_0000_0000_u64 as u32 + 255, 10),
            "000000ff0000000a"
        );
        // 0-padding never truncates.
        assert_eq!(uidl("%02Xu", 0xabcde, 1), "abcde");
        assert_eq!(uidl("%u.%v", 7, 9), "7.9");
        // Modifiers apply in the order written.
        assert_eq!(uidl("%XUu-%{uidvalidity}", 255, 9), "FF-9");
        assert_eq!(uidl("%UXu", 255, 9), "ff");
        assert_eq!(uidl("%f", 1, 1), "1.M2P3.host,S=10");
        assert_eq!(uidl("%g", 1, 1), "g-1");
        assert_eq!(uidl("%3f", 1, 1), "1.M", "a plain width truncates");
        assert_eq!(uidl("%%%u", 5, 1), "%5");
    }

    #[test]
    fn dovecot_24_filters() {
        assert_eq!(
            uidl("%{uid | hex(8)}%{uidvalidity | hex(8)}", 1, 1_700_000_000),
            "000000016553f100"
        );
        assert_eq!(
            uidl("%{uid|hex(2)}", 0xabc, 1),
            "bc",
            "keeps the last N digits"
        );
        assert_eq!(uidl("%{uid | hex(-4)}", 0xa, 1), "a000");
        assert_eq!(uidl("%{uid | hex}", 255, 1), "ff");
        assert_eq!(uidl("%{guid}", 1, 1), "g-1");
        assert_eq!(uidl("%{filename}", 1, 1), "1.M2P3.host,S=10");
        assert_eq!(uidl("%{uid | hex(8) | upper}", 255, 1), "000000FF");
    }

    #[test]
    fn bad_uidl_formats_are_refused() {
        for bad in [
            "%m",
            "%{md5}",
            "plain",
            "%q",
            "%{uid | hex(x)}",
            "%{uid | sha1}",
            "%{uid",
            "%",
            "%X{uid | hex}",
        ] {
            assert!(uidl_format(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uidlist_v3_with_saved_uidls_and_guids() {
        let text = b"3 V1700000000 N5 G3085f01b7f11094c501100008c4a11c1\n\
            1 :1700000001.M1P1.host,S=100,W=102\n\
            2 P000000016553f100 G0f00ba :1700000002.M1P1.host,S=200\n\
            4 W250 O2 :1700000004.M1P1.host,S=240:2,S\n";
        let u = parse_uidlist(text).unwrap();
        assert_eq!(u.uid_validity, 1_700_000_000);
        assert_eq!(u.next_uid, Some(5));
        assert_eq!(u.guid.as_deref(), Some("3085f01b7f11094c501100008c4a11c1"));
        assert_eq!(u.entries.len(), 3);
        assert_eq!(u.entries[0].uid, 1);
        assert_eq!(u.entries[0].filename, b"1700000001.M1P1.host,S=100,W=102");
        assert_eq!(u.entries[1].pop3_uidl.as_deref(), Some("000000016553f100"));
        assert_eq!(u.entries[1].guid.as_deref(), Some("0f00ba"));
        assert_eq!(u.entries[2].uid, 4);
        assert_eq!(u.entries[2].line, 4);
        assert_eq!(u.entries[2].pop3_uidl, None);
    }

    #[test]
    fn uidlist_v1_is_read_too() {
        let u = parse_uidlist(b"1 1234 3\n1 a.host\n2 b.host:2,S\n").unwrap();
        assert_eq!(u.uid_validity, 1234);
        assert_eq!(u.entries[1].filename, b"b.host:2,S");
    }

    #[test]
    fn damaged_uidlists_name_the_line() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"", 1, "no header"),
            (b"2 V1\n", 1, "version"),
            (b"3 N5\n", 1, "UIDVALIDITY"),
            (b"3 Vx\n", 1, "not a number"),
            (b"3 V1\n1 :a\nx :b\n", 3, "positive number"),
            (b"3 V1\n1 :a\n2 no-colon\n", 3, "':'"),
            (b"3 V1\n2 :a\n2 :b\n", 3, "increasing"),
            (b"3 V1\n1 :\n", 2, "empty file name"),
        ];
        for (text, line, words) in cases {
            let e = parse_uidlist(text).unwrap_err();
            assert_eq!(e.line, *line, "{e}");
            assert!(e.reason.contains(words), "{e}");
        }
    }

    #[test]
    fn mail_locations_of_both_versions() {
        let home = Some("/home/alice");
        assert_eq!(
            expand_location("maildir:~/Maildir", "alice", home).unwrap(),
            "/home/alice/Maildir"
        );
        assert_eq!(
            expand_location("maildir:~/Maildir:LAYOUT=fs", "alice", home).unwrap(),
            "/home/alice/Maildir"
        );
        assert_eq!(
            expand_location("/var/vmail/%d/%n", "alice@example.org", None).unwrap(),
            "/var/vmail/example.org/alice"
        );
        assert_eq!(
            expand_location(
                "/var/vmail/%{user | domain}/%{user | username}/Maildir",
                "bob@ex.org",
                None
            )
            .unwrap(),
            "/var/vmail/ex.org/bob/Maildir"
        );
        assert_eq!(
            expand_location("%{home}/Maildir", "alice", home).unwrap(),
            "/home/alice/Maildir"
        );
        assert_eq!(
            expand_location("/m/%Lu", "Alice", None).unwrap(),
            "/m/alice"
        );
        assert!(
            expand_location("~/Maildir", "alice", None)
                .unwrap_err()
                .contains("no home")
        );
        assert!(expand_location("mbox:~/mail", "alice", home).is_err());
        assert!(
            expand_location("Maildir", "alice", home).is_err(),
            "relative"
        );
    }

    #[test]
    fn passwd_files_of_both_versions() {
        // 2.3: schemes, quota rule; 2.4: a bare crypt string (CRYPT) and
        // 2.4 field names; comments, blank lines, a broken line.
        let text = "# users\n\
            alice@example.org:{SHA512-CRYPT}$6$salt$hash:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G\n\
            \n\
            bob:$2y$05$abcdefghijklmnopqrstuu5Y2Vs1gT1hHq5S1vQ0yq0pZQm5aXeS:::::: userdb_mail_path=/srv/bob userdb_quota_storage_size=1G\n\
            :nopass\n\
            carol:{PLAIN}secret\n";
        let (users, errors) = parse_passwd(text);
        assert_eq!(users.len(), 3);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 5);
        let alice = &users[0];
        assert_eq!((alice.line, alice.name.as_str()), (2, "alice@example.org"));
        assert_eq!(alice.password, "{SHA512-CRYPT}$6$salt$hash");
        assert_eq!(alice.home.as_deref(), Some("/home/alice"));
        assert_eq!(
            alice.extra,
            [("userdb_quota_rule".to_owned(), "*:storage=1G".to_owned())]
        );
        let bob = &users[1];
        assert!(bob.password.starts_with("$2y$"));
        assert_eq!(bob.mail_override(), Some("/srv/bob"));
        assert_eq!(users[2].password, "{PLAIN}secret");
        assert_eq!(users[2].home, None);
    }
}
