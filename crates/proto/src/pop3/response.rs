//! POP3 status lines: `+OK` / `-ERR`, with RFC 2449 §8 extended response codes.
//!
//! The server builds [`Status`] values and encodes them; the fetcher parses them
//! back with [`Status::parse`]. Both sides share [`RespCode`], so a code the
//! server sends is exactly a code the client understands.

use std::fmt;

/// An RFC 2449 §8 / RFC 3206 response code, the bracketed part of `-ERR [CODE] text`.
///
/// Variants follow the RFCs' order: RFC 2449 defines `IN-USE` and `LOGIN-DELAY`,
/// RFC 3206 adds `SYS/TEMP`, `SYS/PERM` and `AUTH`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RespCode {
    /// `[IN-USE]`: the maildrop is locked by another session (not a credential failure).
    InUse,
    /// `[LOGIN-DELAY]`: the user logged in too recently.
    LoginDelay,
    /// `[SYS/TEMP]`: a transient server problem; retry later without re-prompting.
    SysTemp,
    /// `[SYS/PERM]`: a permanent server problem; do not loop.
    SysPerm,
    /// `[AUTH]`: the credentials were wrong.
    Auth,
    /// `[UTF8]` (RFC 6856): the command needs UTF8 mode.
    Utf8,
    /// Any other code, kept verbatim (RFC 2449: clients ignore unknown codes).
    Other(String),
}

impl RespCode {
    /// The code as it appears between the brackets.
    pub fn as_str(&self) -> &str {
        match self {
            RespCode::InUse => "IN-USE",
            RespCode::LoginDelay => "LOGIN-DELAY",
            RespCode::SysTemp => "SYS/TEMP",
            RespCode::SysPerm => "SYS/PERM",
            RespCode::Auth => "AUTH",
            RespCode::Utf8 => "UTF8",
            RespCode::Other(s) => s,
        }
    }

    /// Parses a code (without brackets). Codes are case-insensitive (RFC 2449 §8).
    pub fn parse(code: &str) -> RespCode {
        match code.to_ascii_uppercase().as_str() {
            "IN-USE" => RespCode::InUse,
            "LOGIN-DELAY" => RespCode::LoginDelay,
            "SYS/TEMP" => RespCode::SysTemp,
            "SYS/PERM" => RespCode::SysPerm,
            "AUTH" => RespCode::Auth,
            "UTF8" => RespCode::Utf8,
            _ => RespCode::Other(code.to_string()),
        }
    }
}

impl fmt::Display for RespCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A POP3 status line: `+OK text` or `-ERR [code] text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// `+OK`, with optional text.
    Ok(String),
    /// `-ERR`, with an optional response code and text.
    Err(Option<RespCode>, String),
}

/// Why a status line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The line starts with neither `+OK` nor `-ERR`.
    #[error("reply is neither +OK nor -ERR: {0:?}")]
    NotAStatus(String),
}

impl Status {
    /// `+OK text`.
    pub fn ok(text: impl Into<String>) -> Status {
        Status::Ok(text.into())
    }

    /// `-ERR text` without a code.
    pub fn err(text: impl Into<String>) -> Status {
        Status::Err(None, text.into())
    }

    /// `-ERR [code] text`.
    pub fn err_code(code: RespCode, text: impl Into<String>) -> Status {
        Status::Err(Some(code), text.into())
    }

    /// True for `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Status::Ok(_))
    }

    /// Appends the encoded line, CRLF included, to `out`.
    ///
    /// CR and LF inside the text are replaced by spaces, so a status can never
    /// be turned into two lines by text that came from elsewhere, and the line
    /// is cut to RFC 2449's 512-octet limit.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Status::Ok(text) => {
                out.extend_from_slice(b"+OK");
                push_text(out, text);
            }
            Status::Err(code, text) => {
                out.extend_from_slice(b"-ERR");
                if let Some(code) = code {
                    out.extend_from_slice(b" [");
                    out.extend_from_slice(code.as_str().as_bytes());
                    out.push(b']');
                }
                push_text(out, text);
            }
        }
        // RFC 2449 §4: a status line is at most 512 octets including CRLF.
        if out.len() - start > crate::MAX_RESPONSE_LINE - 2 {
            out.truncate(start + crate::MAX_RESPONSE_LINE - 2);
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Parses a status line (with or without its CRLF), as the fetcher sees it.
    ///
    /// Accepts lowercase `+ok`/`-err` too: RFC 1939 says indicators are upper
    /// case, but some servers in the wild do not comply and there is nothing
    /// ambiguous about them.
    ///
    /// # Errors
    /// [`StatusError::NotAStatus`] when the line is neither.
    pub fn parse(line: &[u8]) -> Result<Status, StatusError> {
        let line = strip_crlf(line);
        // Decide on the raw bytes: a lossy UTF-8 view of a hostile reply
        // may put a multi-byte character where a slice would cut it.
        let after = |n: usize| String::from_utf8_lossy(&line[n..]).trim_start_matches(' ').to_string();
        if line.len() >= 3 && line[..3].eq_ignore_ascii_case(b"+OK") {
            return Ok(Status::Ok(after(3)));
        }
        if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"-ERR") {
            let rest = after(4);
            if let Some(inner) = rest.strip_prefix('[')
                && let Some(end) = inner.find(']')
            {
                let code = RespCode::parse(&inner[..end]);
                let text = inner[end + 1..].trim_start_matches(' ').to_string();
                return Ok(Status::Err(Some(code), text));
            }
            return Ok(Status::Err(None, rest));
        }
        Err(StatusError::NotAStatus(String::from_utf8_lossy(line).into_owned()))
    }
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    if text.is_empty() {
        return;
    }
    out.push(b' ');
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
}

fn strip_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &Status) -> String {
        let mut v = Vec::new();
        s.encode(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn encodes_codes_per_rfc_2449_and_3206() {
        assert_eq!(enc(&Status::ok("2 320")), "+OK 2 320\r\n");
        assert_eq!(enc(&Status::ok("")), "+OK\r\n");
        assert_eq!(
            enc(&Status::err_code(RespCode::InUse, "maildrop locked")),
            "-ERR [IN-USE] maildrop locked\r\n"
        );
        assert_eq!(
            enc(&Status::err_code(RespCode::SysTemp, "try later")),
            "-ERR [SYS/TEMP] try later\r\n"
        );
        assert_eq!(enc(&Status::err("no such message")), "-ERR no such message\r\n");
    }

    #[test]
    fn text_cannot_inject_a_second_line() {
        assert_eq!(enc(&Status::err("a\r\n+OK b")), "-ERR a  +OK b\r\n");
    }

    #[test]
    fn long_text_is_cut_to_512_octets() {
        let s = enc(&Status::ok("x".repeat(1000)));
        assert_eq!(s.len(), 512);
        assert!(s.ends_with("\r\n"));
    }

    #[test]
    fn parses_what_it_encodes() {
        for s in [
            Status::ok("hello"),
            Status::ok(""),
            Status::err("bad"),
            Status::err_code(RespCode::Auth, "wrong password"),
            Status::err_code(RespCode::LoginDelay, "wait"),
            Status::err_code(RespCode::Other("FOO/BAR".into()), "x"),
        ] {
            assert_eq!(Status::parse(enc(&s).as_bytes()).unwrap(), s);
        }
    }

    #[test]
    fn parses_rfc_examples_and_sloppy_servers() {
        assert_eq!(
            Status::parse(b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n").unwrap(),
            Status::ok("POP3 server ready <1896.697170952@dbc.mtview.ca.us>")
        );
        assert_eq!(Status::parse(b"+ok\r\n").unwrap(), Status::ok(""));
        assert_eq!(
            Status::parse(b"-ERR [in-use] busy").unwrap(),
            Status::err_code(RespCode::InUse, "busy")
        );
        assert_eq!(
            Status::parse(b"-ERR [unterminated").unwrap(),
            Status::err("[unterminated")
        );
        assert!(Status::parse(b"* OK imap").is_err());
        // Regression (found by the pop3_response fuzz target): a non-UTF-8
        // byte inside the indicator must be an error, not a panic.
        assert!(Status::parse(b"+O\xff\r\n").is_err());
        assert!(Status::parse(b"-ER\xff").is_err());
        assert_eq!(Status::parse(b"+OK \xff").unwrap(), Status::ok("\u{fffd}"));
        assert!(Status::parse(b"").is_err());
    }
}
