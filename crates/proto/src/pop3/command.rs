//! POP3 client commands (RFC 1939 §§4–7, RFC 2449 CAPA, RFC 2595 STLS,
//! RFC 5034 AUTH, RFC 6856 UTF8) and their parser.
//!
//! Commands own their (small) data rather than borrowing from the read
//! buffer: a POP3 command is at most a few hundred bytes, and an owned value
//! lets the session keep a pending USER name across lines without lifetimes
//! leaking into the driver.

pub use crate::secret::Secret;

/// A parsed POP3 command, in the order RFC 1939 introduces them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `USER name` (§7).
    User(String),
    /// `PASS string` (§7): the rest of the line, spaces included.
    Pass(Secret),
    /// `QUIT` (§§4, 6).
    Quit,
    /// `STAT` (§5).
    Stat,
    /// `LIST [msg]` (§5).
    List(Option<u32>),
    /// `RETR msg` (§5).
    Retr(u32),
    /// `DELE msg` (§5).
    Dele(u32),
    /// `NOOP` (§5).
    Noop,
    /// `RSET` (§5).
    Rset,
    /// `TOP msg n` (§7).
    Top(u32, u64),
    /// `UIDL [msg]` (§7).
    Uidl(Option<u32>),
    /// `APOP name digest` (§7).
    Apop(String, String),
    /// `CAPA` (RFC 2449 §5).
    Capa,
    /// `STLS` (RFC 2595 §4).
    Stls,
    /// `AUTH [mechanism [initial-response]]` (RFC 5034 §4; bare `AUTH` is the
    /// RFC 1734-era mechanism listing some clients still send).
    Auth(Option<String>, Option<Secret>),
    /// `UTF8` (RFC 6856 §2).
    Utf8,
}

/// Why a line is not a valid command. Each maps to one `-ERR` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The line was empty.
    #[error("empty command")]
    Empty,
    /// The keyword is not a command we know.
    #[error("unknown command")]
    Unknown,
    /// A required argument is missing.
    #[error("missing argument")]
    MissingArgument,
    /// More arguments than the command takes.
    #[error("too many arguments")]
    TooManyArguments,
    /// A message number or line count is not a valid decimal number.
    #[error("invalid number")]
    BadNumber,
    /// An argument is longer than the protocol allows or contains bytes it forbids.
    #[error("invalid argument")]
    BadArgument,
}

/// RFC 2449 §4 raised RFC 1939's 40-character argument limit; we accept up
/// to this many octets for a name or mechanism.
pub const MAX_ARG_LEN: usize = 255;

impl Command {
    /// Parses one command line (without its CRLF).
    ///
    /// Keywords are case-insensitive (RFC 1939 §3). Arguments are separated by
    /// spaces; we tolerate several spaces between arguments, but PASS takes
    /// the rest of the line verbatim because a password may contain spaces
    /// (RFC 1939 §7: "the server may treat spaces in the argument as part of
    /// the password").
    ///
    /// # Errors
    /// A [`CommandError`] naming what is wrong.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
            Some(pos) => (&line[..pos], &line[pos + 1..]),
            None => (line, &b""[..]),
        };
        if keyword.is_empty() {
            return Err(CommandError::Empty);
        }
        if keyword.len() > 4 {
            return Err(CommandError::Unknown);
        }
        let mut kw = [0u8; 4];
        for (d, s) in kw.iter_mut().zip(keyword) {
            *d = s.to_ascii_uppercase();
        }
        let kw = &kw[..keyword.len()];
        if kw == b"PASS" {
            // Exactly one argument: everything after the first space.
            if rest.is_empty() {
                return Err(CommandError::MissingArgument);
            }
            return Ok(Command::Pass(Secret::new(rest.to_vec())));
        }
        let args = Args::split(rest)?;
        let cmd = match kw {
            b"USER" => Command::User(args.exactly_one_text()?),
            b"QUIT" => args.none(Command::Quit)?,
            b"STAT" => args.none(Command::Stat)?,
            b"LIST" => Command::List(args.optional_number()?),
            b"RETR" => Command::Retr(args.one_number()?),
            b"DELE" => Command::Dele(args.one_number()?),
            b"NOOP" => args.none(Command::Noop)?,
            b"RSET" => args.none(Command::Rset)?,
            b"TOP" => {
                let [msg, lines] = args.exactly::<2>()?;
                Command::Top(parse_msg_number(msg)?, parse_count(lines)?)
            }
            b"UIDL" => Command::Uidl(args.optional_number()?),
            b"APOP" => {
                let [name, digest] = args.exactly::<2>()?;
                Command::Apop(text(name)?, text(digest)?)
            }
            b"CAPA" => args.none(Command::Capa)?,
            b"STLS" => args.none(Command::Stls)?,
            b"AUTH" => match args.0.as_slice() {
                [] => Command::Auth(None, None),
                [mech] => Command::Auth(Some(text(mech)?.to_ascii_uppercase()), None),
                [mech, initial] => Command::Auth(
                    Some(text(mech)?.to_ascii_uppercase()),
                    Some(Secret::new(initial.to_vec())),
                ),
                _ => return Err(CommandError::TooManyArguments),
            },
            b"UTF8" => args.none(Command::Utf8)?,
            _ => return Err(CommandError::Unknown),
        };
        Ok(cmd)
    }

    /// The keyword, for logs (never the arguments: they may be secrets).
    pub fn keyword(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Quit => "QUIT",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Top(..) => "TOP",
            Command::Uidl(_) => "UIDL",
            Command::Apop(..) => "APOP",
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
            Command::Auth(..) => "AUTH",
            Command::Utf8 => "UTF8",
        }
    }
}

struct Args<'a>(Vec<&'a [u8]>);

impl<'a> Args<'a> {
    fn split(rest: &'a [u8]) -> Result<Args<'a>, CommandError> {
        let args: Vec<&[u8]> = rest.split(|&b| b == b' ').filter(|a| !a.is_empty()).collect();
        if args.len() > 3 {
            return Err(CommandError::TooManyArguments);
        }
        if args.iter().any(|a| a.len() > crate::MAX_COMMAND_LINE) {
            return Err(CommandError::BadArgument);
        }
        Ok(Args(args))
    }

    fn none(self, cmd: Command) -> Result<Command, CommandError> {
        if self.0.is_empty() { Ok(cmd) } else { Err(CommandError::TooManyArguments) }
    }

    fn exactly<const N: usize>(self) -> Result<[&'a [u8]; N], CommandError> {
        match self.0.len() {
            n if n < N => Err(CommandError::MissingArgument),
            n if n > N => Err(CommandError::TooManyArguments),
            _ => Ok(std::array::from_fn(|i| self.0[i])),
        }
    }

    fn exactly_one_text(self) -> Result<String, CommandError> {
        let [a] = self.exactly::<1>()?;
        text(a)
    }

    fn one_number(self) -> Result<u32, CommandError> {
        let [a] = self.exactly::<1>()?;
        parse_msg_number(a)
    }

    fn optional_number(self) -> Result<Option<u32>, CommandError> {
        match self.0.as_slice() {
            [] => Ok(None),
            [a] => parse_msg_number(a).map(Some),
            _ => Err(CommandError::TooManyArguments),
        }
    }
}

/// A name-like argument: printable, at most [`MAX_ARG_LEN`] octets, valid UTF-8
/// (RFC 6856 allows UTF-8 user names).
fn text(arg: &[u8]) -> Result<String, CommandError> {
    if arg.len() > MAX_ARG_LEN || arg.iter().any(|&b| b < 0x21 || b == 0x7f) {
        return Err(CommandError::BadArgument);
    }
    String::from_utf8(arg.to_vec()).map_err(|_| CommandError::BadArgument)
}

/// A message number: decimal digits only, 1..=u32::MAX (RFC 1939 §3 numbers
/// start at 1; `0`, signs and spaces are errors, not "message 0").
fn parse_msg_number(arg: &[u8]) -> Result<u32, CommandError> {
    match parse_count(arg)? {
        0 => Err(CommandError::BadNumber),
        n => u32::try_from(n).map_err(|_| CommandError::BadNumber),
    }
}

/// A non-negative decimal count (TOP's line count), saturating at u64::MAX.
fn parse_count(arg: &[u8]) -> Result<u64, CommandError> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return Err(CommandError::BadNumber);
    }
    Ok(arg
        .iter()
        .fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, CommandError> {
        Command::parse(s.as_bytes())
    }

    #[test]
    fn rfc_1939_examples_parse() {
        assert_eq!(p("USER mrose"), Ok(Command::User("mrose".into())));
        assert_eq!(p("PASS secret"), Ok(Command::Pass(Secret::from(&b"secret"[..]))));
        assert_eq!(p("STAT"), Ok(Command::Stat));
        assert_eq!(p("LIST"), Ok(Command::List(None)));
        assert_eq!(p("LIST 2"), Ok(Command::List(Some(2))));
        assert_eq!(p("RETR 1"), Ok(Command::Retr(1)));
        assert_eq!(p("DELE 1"), Ok(Command::Dele(1)));
        assert_eq!(p("NOOP"), Ok(Command::Noop));
        assert_eq!(p("RSET"), Ok(Command::Rset));
        assert_eq!(p("QUIT"), Ok(Command::Quit));
        assert_eq!(p("TOP 1 10"), Ok(Command::Top(1, 10)));
        assert_eq!(p("UIDL"), Ok(Command::Uidl(None)));
        assert_eq!(p("UIDL 2"), Ok(Command::Uidl(Some(2))));
        assert_eq!(
            p("APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
            Ok(Command::Apop("mrose".into(), "c4c9334bac560ecc979e58001b3e22fb".into()))
        );
    }

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(p("stat"), Ok(Command::Stat));
        assert_eq!(p("Retr 3"), Ok(Command::Retr(3)));
        assert_eq!(p("capa"), Ok(Command::Capa));
        assert_eq!(p("stls"), Ok(Command::Stls));
        assert_eq!(p("utf8"), Ok(Command::Utf8));
    }

    #[test]
    fn pass_keeps_spaces() {
        assert_eq!(
            p("PASS my secret  phrase "),
            Ok(Command::Pass(Secret::from(&b"my secret  phrase "[..])))
        );
        assert_eq!(p("PASS"), Err(CommandError::MissingArgument));
    }

    #[test]
    fn auth_forms_of_rfc_5034() {
        assert_eq!(p("AUTH"), Ok(Command::Auth(None, None)));
        assert_eq!(p("AUTH plain"), Ok(Command::Auth(Some("PLAIN".into()), None)));
        assert_eq!(
            p("AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q="),
            Ok(Command::Auth(Some("PLAIN".into()), Some(Secret::from(&b"dGVzdAB0ZXN0AHRlc3Q="[..]))))
        );
        assert_eq!(p("AUTH PLAIN ="), Ok(Command::Auth(Some("PLAIN".into()), Some(Secret::from(&b"="[..])))));
    }

    #[test]
    fn numbers_are_strict() {
        for bad in ["RETR 0", "RETR -1", "RETR +1", "RETR 1a", "RETR 4294967296", "LIST x", "TOP 1 -2"] {
            assert_eq!(p(bad), Err(CommandError::BadNumber), "{bad}");
        }
        assert_eq!(p("RETR 4294967295"), Ok(Command::Retr(u32::MAX)));
        assert_eq!(p("TOP 1 99999999999999999999999"), Ok(Command::Top(1, u64::MAX)));
        assert_eq!(p("TOP 1 0"), Ok(Command::Top(1, 0)));
    }

    #[test]
    fn arity_errors() {
        assert_eq!(p("RETR"), Err(CommandError::MissingArgument));
        assert_eq!(p("STAT 1"), Err(CommandError::TooManyArguments));
        assert_eq!(p("TOP 1"), Err(CommandError::MissingArgument));
        assert_eq!(p("LIST 1 2"), Err(CommandError::TooManyArguments));
        assert_eq!(p("USER"), Err(CommandError::MissingArgument));
        assert_eq!(p("USER a b"), Err(CommandError::TooManyArguments));
    }

    #[test]
    fn garbage_is_rejected_not_panicked_on() {
        assert_eq!(p(""), Err(CommandError::Empty));
        assert_eq!(p(" STAT"), Err(CommandError::Empty));
        assert_eq!(p("XTND XLST"), Err(CommandError::Unknown));
        assert_eq!(p("STATUS"), Err(CommandError::Unknown));
        assert_eq!(p("\u{0}\u{ff}"), Err(CommandError::Unknown));
        assert_eq!(Command::parse(b"USER \xff\xfe"), Err(CommandError::BadArgument));
        assert_eq!(Command::parse(b"USER a\x01b"), Err(CommandError::BadArgument));
    }

    #[test]
    fn pass_is_redacted_in_debug() {
        let cmd = p("PASS hunter2").unwrap();
        assert!(!format!("{cmd:?}").contains("hunter2"));
    }
}
