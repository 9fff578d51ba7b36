//! The fetcher's side of POP3: encoding commands, reading status lines, and a
//! streaming decoder for multi-line responses.
//!
//! The server we talk to is untrusted input. Everything here is bounded:
//! status lines by [`MAX_REPLY_LINE`], lines inside a multi-line response by a
//! per-decoder limit (default [`MAX_DATA_LINE`]), and the decoder itself holds
//! a handful of bytes of state no matter how large the message is, so a
//! 100 MiB `RETR` costs the caller one read buffer, not 100 MiB.
//!
//! A multi-line response (RFC 1939 §3) ends with `CRLF.CRLF`; lines that begin
//! with `.` were byte-stuffed by the server and lose that first dot here.
//! Running out of input before the terminator is *not* the end of the message:
//! the driver must call [`MultiLineDecoder::finish`] when the connection closes
//! and treat its error as "this message is incomplete, deliver nothing".
//!
//! Like the rest of this crate this module performs no I/O: the driver reads
//! bytes from its socket and hands them in, and writes out the bytes that
//! [`Request::encode`] produced.

use std::fmt;

use crate::pop3::response::{Status, StatusError};

/// Longest status line (first line of a reply, or a SASL `+ ` challenge) we
/// accept, LF included. RFC 2449 §4 caps status lines at 512 octets, but SASL
/// challenges (RFC 5034 §4) and some servers' greetings run longer; 8 KiB is
/// generous and still bounded.
pub const MAX_REPLY_LINE: usize = 8192;

/// Default longest line inside a multi-line response, line ending included.
/// RFC 5322 allows 998 octets, but real mail breaks that rule (long base64
/// without folding, HTML on one line). Python's poplib failed at 2048 and
/// forced getmail to patch it; 1 MiB is far past any sane message and still
/// stops a server that never sends a line end. The decoder streams, so this
/// limit does not cost memory.
pub const MAX_DATA_LINE: usize = 1 << 20;

/// A command the fetcher sends (RFC 1939 §4–§7, RFC 2449 CAPA, RFC 2595 STLS,
/// RFC 5034 AUTH). Arguments borrow from the caller.
#[derive(Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `USER name` (RFC 1939 §7).
    User(&'a str),
    /// `PASS secret` (RFC 1939 §7). Never shown by [`fmt::Debug`].
    Pass(&'a str),
    /// `QUIT`: in TRANSACTION it commits the deletions (RFC 1939 §6).
    Quit,
    /// `STAT`.
    Stat,
    /// `LIST` (all, multi-line) or `LIST n` (one, single line).
    List(Option<u32>),
    /// `RETR n` (multi-line).
    Retr(u32),
    /// `DELE n`.
    Dele(u32),
    /// `NOOP`.
    Noop,
    /// `RSET`.
    Rset,
    /// `TOP n lines` (multi-line).
    Top(u32, u32),
    /// `UIDL` (all, multi-line) or `UIDL n` (one, single line).
    Uidl(Option<u32>),
    /// `CAPA` (RFC 2449, multi-line).
    Capa,
    /// `STLS` (RFC 2595).
    Stls,
    /// `AUTH mechanism [initial-response]` (RFC 5034). The initial response is
    /// already base64 (or `=` for an empty one); it is a secret for PLAIN.
    Auth {
        /// SASL mechanism name, e.g. `PLAIN`.
        mechanism: &'a str,
        /// Base64 initial response, if the mechanism sends one.
        initial: Option<&'a str>,
    },
    /// A base64 line answering a `+ ` challenge during AUTH, or `*` to cancel.
    /// May carry a secret.
    SaslResponse(&'a str),
}

/// Why a command could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// An argument contains CR, LF or NUL, which would split or corrupt the
    /// command line (command injection).
    #[error("command argument contains a line break or NUL")]
    BadArgument,
    /// An argument is empty where RFC 1939 requires one, or contains a space
    /// where the command takes a single word.
    #[error("command argument is empty or contains a space")]
    BadWord,
    /// The encoded line exceeds what a server must accept.
    #[error("command line is {0} octets, over the limit")]
    TooLong(usize),
}

impl Request<'_> {
    /// Appends the command line, CRLF included, to `out`. On error `out` is
    /// left as it was.
    ///
    /// # Errors
    /// [`EncodeError`] if an argument would break the line structure or the
    /// line would be longer than [`crate::MAX_COMMAND_LINE`].
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = self.encode_inner(out);
        if result.is_err() {
            out.truncate(start);
            return result;
        }
        let len = out.len() - start;
        // RFC 2449 §4 makes 255 the floor every server must accept; AUTH
        // lines carrying OAuth tokens are longer by nature (RFC 5034 §4), so
        // the shared limit is the project's command-line limit.
        if len > crate::MAX_COMMAND_LINE {
            out.truncate(start);
            return Err(EncodeError::TooLong(len));
        }
        Ok(())
    }

    fn encode_inner(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Request::User(name) => {
                out.extend_from_slice(b"USER ");
                push_arg(out, name, false)?;
            }
            // RFC 1939 §7: the PASS argument is the rest of the line, spaces
            // included, so passwords with spaces are legal.
            Request::Pass(secret) => {
                out.extend_from_slice(b"PASS ");
                push_arg(out, secret, true)?;
            }
            Request::Quit => out.extend_from_slice(b"QUIT"),
            Request::Stat => out.extend_from_slice(b"STAT"),
            Request::List(n) => push_opt_num(out, b"LIST", *n),
            Request::Retr(n) => push_num(out, b"RETR ", *n),
            Request::Dele(n) => push_num(out, b"DELE ", *n),
            Request::Noop => out.extend_from_slice(b"NOOP"),
            Request::Rset => out.extend_from_slice(b"RSET"),
            Request::Top(n, lines) => {
                push_num(out, b"TOP ", *n);
                out.push(b' ');
                out.extend_from_slice(lines.to_string().as_bytes());
            }
            Request::Uidl(n) => push_opt_num(out, b"UIDL", *n),
            Request::Capa => out.extend_from_slice(b"CAPA"),
            Request::Stls => out.extend_from_slice(b"STLS"),
            Request::Auth { mechanism, initial } => {
                out.extend_from_slice(b"AUTH ");
                push_arg(out, mechanism, false)?;
                if let Some(initial) = initial {
                    out.push(b' ');
                    push_arg(out, initial, false)?;
                }
            }
            Request::SaslResponse(line) => {
                if line.is_empty() {
                    // An empty response is an empty line (RFC 5034 §4).
                } else {
                    push_arg(out, line, false)?;
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// True when the `+OK` reply to this command is followed by a multi-line
    /// body ending in `.CRLF` (RFC 1939 §3, RFC 2449 §5).
    pub fn expects_multiline(&self) -> bool {
        matches!(
            self,
            Request::List(None)
                | Request::Uidl(None)
                | Request::Retr(_)
                | Request::Top(..)
                | Request::Capa
        )
    }
}

/// Shows the command with secrets replaced, so logs never carry passwords or
/// tokens.
impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Pass(_) => f.write_str("PASS [redacted]"),
            Request::Auth { mechanism, initial: Some(_) } => {
                write!(f, "AUTH {mechanism} [redacted]")
            }
            Request::Auth { mechanism, initial: None } => write!(f, "AUTH {mechanism}"),
            Request::SaslResponse(_) => f.write_str("[sasl response redacted]"),
            other => {
                let mut v = Vec::new();
                match other.encode(&mut v) {
                    Ok(()) => f.write_str(String::from_utf8_lossy(&v).trim_end()),
                    Err(e) => write!(f, "<unencodable: {e}>"),
                }
            }
        }
    }
}

fn push_arg(out: &mut Vec<u8>, arg: &str, spaces_ok: bool) -> Result<(), EncodeError> {
    if arg.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(EncodeError::BadArgument);
    }
    if arg.is_empty() || (!spaces_ok && arg.contains(' ')) {
        return Err(EncodeError::BadWord);
    }
    out.extend_from_slice(arg.as_bytes());
    Ok(())
}

fn push_num(out: &mut Vec<u8>, verb: &[u8], n: u32) {
    out.extend_from_slice(verb);
    out.extend_from_slice(n.to_string().as_bytes());
}

fn push_opt_num(out: &mut Vec<u8>, verb: &[u8], n: Option<u32>) {
    out.extend_from_slice(verb);
    if let Some(n) = n {
        out.push(b' ');
        out.extend_from_slice(n.to_string().as_bytes());
    }
}

/// Why a reply from the server was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A status line longer than [`MAX_REPLY_LINE`].
    #[error("server status line longer than {MAX_REPLY_LINE} octets")]
    StatusTooLong,
    /// A line inside a multi-line response longer than the decoder's limit.
    #[error("line in multi-line response longer than {0} octets")]
    DataLineTooLong(usize),
    /// The first line is neither `+OK` nor `-ERR` (nor `+ ` where a SASL
    /// challenge is allowed).
    #[error(transparent)]
    NotAStatus(#[from] StatusError),
    /// The connection closed before the multi-line terminator `.CRLF`: the
    /// data received so far is a truncated message and must be discarded.
    #[error("connection closed in the middle of a multi-line response after {0} octets")]
    Truncated(u64),
    /// A line of a listing (STAT, LIST, UIDL) does not have the RFC 1939 shape.
    #[error("malformed listing line: {0:?}")]
    BadListing(String),
}

/// Finds the end of one status line at the front of `buf`.
///
/// Returns `Ok(Some(n))` when the first `n` bytes are a whole line (LF
/// included), `Ok(None)` when more input is needed.
///
/// # Errors
/// [`ReplyError::StatusTooLong`] when no LF appears within
/// [`MAX_REPLY_LINE`] bytes.
pub fn status_line_len(buf: &[u8]) -> Result<Option<usize>, ReplyError> {
    let window = &buf[..buf.len().min(MAX_REPLY_LINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(pos) => Ok(Some(pos + 1)),
        None if buf.len() >= MAX_REPLY_LINE => Err(ReplyError::StatusTooLong),
        None => Ok(None),
    }
}

/// One parsed first line of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` / `-ERR`.
    Status(Status),
    /// `+ challenge`: a SASL continuation (RFC 5034 §4); the text is the
    /// base64 challenge, possibly empty.
    Continue(String),
}

/// Parses the first line of a reply. `allow_continue` says whether a SASL
/// `+ ` continuation is legal here (only while an AUTH exchange is running;
/// anywhere else a `+ ` line is a protocol error).
///
/// # Errors
/// [`ReplyError::NotAStatus`] for anything else.
pub fn parse_reply(line: &[u8], allow_continue: bool) -> Result<Reply, ReplyError> {
    if allow_continue {
        let l = trim_eol(line);
        if l == b"+" || l.starts_with(b"+ ") {
            let text = String::from_utf8_lossy(l.get(2..).unwrap_or_default());
            return Ok(Reply::Continue(text.trim().to_string()));
        }
    }
    Ok(Reply::Status(Status::parse(line)?))
}

/// Line endings the decoder writes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// Keep CRLF as received (what the wire and `TOP`/`RETR` sizes count).
    Crlf,
    /// Turn CRLF into LF (what Maildir and mbox files hold on Unix). Bare CRs
    /// in the middle of a line are kept.
    Lf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first byte of a line: a `.` here is special.
    LineStart,
    /// Saw a `.` at the start of a line.
    Dot,
    /// Saw `.CR` at the start of a line: LF next ends the response.
    DotCr,
    /// Inside a line.
    InLine,
    /// Saw a CR inside a line; LF next ends the line.
    Cr,
    /// Saw the terminator; nothing more belongs to this response.
    Done,
}

/// What [`MultiLineDecoder::decode`] reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The input was used up; feed more.
    NeedMoreData,
    /// The terminating `.CRLF` was seen. Bytes after it (pipelined replies)
    /// were not consumed.
    Done,
}

/// Incremental decoder for the body of a multi-line response, after its
/// `+OK` line: removes the byte-stuffing, finds `CRLF.CRLF`, optionally
/// converts CRLF to LF, and bounds line length.
///
/// Calling order: [`decode`](Self::decode) with each chunk read from the
/// connection until it returns [`Progress::Done`]; if the connection ends
/// first, call [`finish`](Self::finish), which fails. Output is produced as
/// input arrives (except for at most two held-back bytes: a CR or a
/// line-initial `.`), so memory use does not depend on message size.
#[derive(Debug, Clone)]
pub struct MultiLineDecoder {
    state: State,
    ending: LineEnding,
    max_line: usize,
    line_len: usize,
    produced: u64,
}

impl Default for MultiLineDecoder {
    fn default() -> Self {
        MultiLineDecoder::new(LineEnding::Crlf)
    }
}

impl MultiLineDecoder {
    /// A decoder writing the given line endings, with the [`MAX_DATA_LINE`]
    /// limit.
    pub fn new(ending: LineEnding) -> MultiLineDecoder {
        MultiLineDecoder {
            state: State::LineStart,
            ending,
            max_line: MAX_DATA_LINE,
            line_len: 0,
            produced: 0,
        }
    }

    /// Sets the longest accepted line, line ending included.
    ///
    /// # Panics
    /// If `max` is smaller than 3.
    pub fn with_max_line(mut self, max: usize) -> MultiLineDecoder {
        assert!(max >= 3, "a line limit must leave room for a character and CRLF");
        self.max_line = max;
        self
    }

    /// True once the terminator has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Octets written to the output so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Decodes as much of `input` as belongs to this response, appending the
    /// message octets to `out`. Returns how many input bytes were consumed
    /// and whether the terminator was reached. After `Done` it consumes
    /// nothing.
    ///
    /// # Errors
    /// [`ReplyError::DataLineTooLong`] when a line exceeds the limit. The
    /// decoder is then unusable: the connection's framing cannot be trusted.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, Progress), ReplyError> {
        let before = out.len();
        let result = self.decode_inner(input, out);
        self.produced += (out.len() - before) as u64;
        result
    }

    fn decode_inner(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, Progress), ReplyError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok((i, Progress::Done)),
                State::LineStart => {
                    self.line_len = 0;
                    if input[i] == b'.' {
                        self.state = State::Dot;
                        self.count(1)?;
                        i += 1;
                    } else {
                        self.state = State::InLine;
                    }
                }
                State::Dot => match input[i] {
                    b'\r' => {
                        self.state = State::DotCr;
                        self.count(1)?;
                        i += 1;
                    }
                    // RFC 1939 §3: a line starting with "." that is not the
                    // terminator had its first dot added by the server; drop
                    // it. A lone "." followed by bare LF is the same as an
                    // empty line, not the terminator: only ".CRLF" ends.
                    _ => self.state = State::InLine,
                },
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::Done;
                        return Ok((i + 1, Progress::Done));
                    }
                    // ".CR" followed by something else: the dot was stuffing,
                    // the CR is a bare CR inside the line.
                    self.state = State::Cr;
                }
                State::InLine => {
                    // Copy the run of ordinary bytes in one go.
                    let rest = &input[i..];
                    let run = rest
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n')
                        .unwrap_or(rest.len());
                    self.count(run)?;
                    out.extend_from_slice(&rest[..run]);
                    i += run;
                    if i < input.len() {
                        self.count(1)?;
                        if input[i] == b'\n' {
                            // A bare LF still ends a line: a dot after it is
                            // at the start of a line for stuffing purposes.
                            out.push(b'\n');
                            self.state = State::LineStart;
                        } else {
                            self.state = State::Cr;
                        }
                        i += 1;
                    }
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        self.count(1)?;
                        if self.ending == LineEnding::Crlf {
                            out.push(b'\r');
                        }
                        out.push(b'\n');
                        self.state = State::LineStart;
                        i += 1;
                    } else {
                        // A bare CR is data; keep it.
                        out.push(b'\r');
                        self.state = State::InLine;
                    }
                }
            }
        }
        Ok((i, if self.state == State::Done { Progress::Done } else { Progress::NeedMoreData }))
    }

    fn count(&mut self, n: usize) -> Result<(), ReplyError> {
        self.line_len += n;
        if self.line_len > self.max_line {
            return Err(ReplyError::DataLineTooLong(self.max_line));
        }
        Ok(())
    }

    /// Declares that the input has ended (the connection closed).
    ///
    /// # Errors
    /// [`ReplyError::Truncated`] unless the terminator was seen: whatever was
    /// decoded is a partial message and must not be delivered.
    pub fn finish(&self) -> Result<(), ReplyError> {
        if self.is_done() { Ok(()) } else { Err(ReplyError::Truncated(self.produced)) }
    }
}

/// Server capabilities from a `CAPA` listing (RFC 2449 §6, RFC 2595 §4,
/// RFC 5034 §5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `TOP`.
    pub top: bool,
    /// `USER`: USER/PASS is allowed.
    pub user: bool,
    /// `UIDL`.
    pub uidl: bool,
    /// `PIPELINING`: commands may be sent without waiting for replies.
    pub pipelining: bool,
    /// `STLS`.
    pub stls: bool,
    /// `SASL` mechanisms, upper-cased.
    pub sasl: Vec<String>,
    /// `RESP-CODES`.
    pub resp_codes: bool,
    /// `EXPIRE` argument: `NEVER`, days, or `0` (server deletes on its own).
    pub expire: Option<String>,
    /// `LOGIN-DELAY` seconds.
    pub login_delay: Option<u64>,
    /// `IMPLEMENTATION` text, for logs.
    pub implementation: Option<String>,
}

impl Capabilities {
    /// Parses the lines of a `CAPA` body (each without its line ending, or
    /// with it; both work). Unknown capabilities are ignored (RFC 2449 §6).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Capabilities {
        let mut caps = Capabilities::default();
        for raw in lines {
            let line = String::from_utf8_lossy(trim_eol(raw));
            let mut words = line.split_ascii_whitespace();
            let Some(tag) = words.next() else { continue };
            match tag.to_ascii_uppercase().as_str() {
                "TOP" => caps.top = true,
                "USER" => caps.user = true,
                "UIDL" => caps.uidl = true,
                "PIPELINING" => caps.pipelining = true,
                "STLS" => caps.stls = true,
                "RESP-CODES" => caps.resp_codes = true,
                "SASL" => caps.sasl.extend(words.map(|w| w.to_ascii_uppercase())),
                "EXPIRE" => caps.expire = words.next().map(str::to_string),
                "LOGIN-DELAY" => caps.login_delay = words.next().and_then(|w| w.parse().ok()),
                "IMPLEMENTATION" => {
                    let rest: Vec<&str> = words.collect();
                    caps.implementation = Some(rest.join(" "));
                }
                _ => {}
            }
        }
        caps
    }

    /// True when the server lists this SASL mechanism (case-insensitive).
    pub fn has_sasl(&self, mechanism: &str) -> bool {
        self.sasl.iter().any(|m| m.eq_ignore_ascii_case(mechanism))
    }
}

/// Splits the body of a multi-line response into lines without their line
/// endings (for CAPA, LIST and UIDL bodies, which are small and buffered).
pub fn body_lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == b'\n').map(trim_eol).filter(|l| !l.is_empty())
}

/// Parses the text of a `STAT` `+OK` reply: `nn mm` (RFC 1939 §5).
///
/// # Errors
/// [`ReplyError::BadListing`] if it does not start with two numbers.
pub fn parse_stat(text: &str) -> Result<(u32, u64), ReplyError> {
    let mut it = text.split_ascii_whitespace();
    let bad = || ReplyError::BadListing(text.to_string());
    let count = it.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let size = it.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    Ok((count, size))
}

/// Parses one line of a `LIST` listing, `msg-number size` (RFC 1939 §5).
/// Also accepts the text of a single-message `LIST n` `+OK`.
///
/// # Errors
/// [`ReplyError::BadListing`] for anything else.
pub fn parse_list_line(line: &[u8]) -> Result<(u32, u64), ReplyError> {
    let text = String::from_utf8_lossy(trim_eol(line));
    parse_stat(&text)
}

/// Longest unique-id RFC 1939 §7 allows.
pub const MAX_UIDL_LEN: usize = 70;

/// Parses one line of a `UIDL` listing, `msg-number unique-id`. The unique
/// id must be 1 to 70 octets in 0x21..=0x7E (RFC 1939 §7); ids that break the
/// rule are refused so the caller can fall back to content digests instead of
/// trusting an id that could collide or inject into file names.
///
/// # Errors
/// [`ReplyError::BadListing`] if the line does not have that shape.
pub fn parse_uidl_line(line: &[u8]) -> Result<(u32, &str), ReplyError> {
    let line = trim_eol(line);
    let bad = || ReplyError::BadListing(String::from_utf8_lossy(line).into_owned());
    let sp = line.iter().position(|&b| b == b' ').ok_or_else(bad)?;
    let num = std::str::from_utf8(&line[..sp]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let id = &line[sp + 1..];
    // Some servers pad with more than one space; RFC 1939 says one, but the
    // id itself can never contain a space, so skipping extra ones is safe.
    let start = id.iter().position(|&b| b != b' ').ok_or_else(bad)?;
    let id = &id[start..];
    if id.is_empty() || id.len() > MAX_UIDL_LEN || !id.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(bad());
    }
    // All bytes are printable ASCII, so this cannot fail.
    let id = std::str::from_utf8(id).map_err(|_| bad())?;
    Ok((num, id))
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Fuzzing entry point (for a `cargo fuzz` target in `fuzz/`): treats
/// `data` as a server reply stream, decodes it whole and in chunks whose size
/// comes from the first byte, and checks that chunking changes nothing and
/// that nothing panics. Also runs the status and listing parsers on it.
///
/// # Panics
/// When the decoder behaves differently depending on how input was split,
/// which is the bug this hunts for.
pub fn fuzz_reply(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else { return };
    let _ = status_line_len(data);
    let _ = parse_reply(data, first & 1 == 1);
    let _ = parse_list_line(data);
    let _ = parse_uidl_line(data);
    let _ = Capabilities::parse(body_lines(data));
    let ending = if first & 2 == 2 { LineEnding::Lf } else { LineEnding::Crlf };
    // On an error the partial output and position depend on where the chunk
    // boundaries fell; only the error itself must not, so run_decoder drops
    // them.
    let whole = run_decoder(data, data.len().max(1), ending);
    let chunk = usize::from(first >> 2).max(1);
    let pieces = run_decoder(data, chunk, ending);
    assert_eq!(whole, pieces, "decoder output depends on chunk size {chunk}");
}

/// Feeds `data` in `chunk`-sized pieces; returns output, bytes consumed and
/// the outcome, for comparing runs.
fn run_decoder(
    data: &[u8],
    chunk: usize,
    ending: LineEnding,
) -> (Vec<u8>, usize, Result<Progress, ReplyError>) {
    let mut dec = MultiLineDecoder::new(ending).with_max_line(64);
    let mut out = Vec::new();
    let mut consumed = 0;
    for piece in data.chunks(chunk) {
        match dec.decode(piece, &mut out) {
            Ok((n, Progress::Done)) => return (out, consumed + n, Ok(Progress::Done)),
            Ok((n, Progress::NeedMoreData)) => {
                assert_eq!(n, piece.len(), "NeedMoreData must consume all input");
                consumed += n;
            }
            Err(e) => return (Vec::new(), 0, Err(e)),
        }
    }
    (out, consumed, dec.finish().map(|()| Progress::Done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::response::RespCode;

    fn enc(r: Request<'_>) -> Result<String, EncodeError> {
        let mut v = b"keep".to_vec();
        r.encode(&mut v)?;
        Ok(String::from_utf8(v[4..].to_vec()).unwrap())
    }

    #[test]
    fn encodes_rfc_1939_commands() {
        assert_eq!(enc(Request::User("mrose")).unwrap(), "USER mrose\r\n");
        assert_eq!(enc(Request::Pass("tan ners")).unwrap(), "PASS tan ners\r\n");
        assert_eq!(enc(Request::Stat).unwrap(), "STAT\r\n");
        assert_eq!(enc(Request::List(None)).unwrap(), "LIST\r\n");
        assert_eq!(enc(Request::List(Some(2))).unwrap(), "LIST 2\r\n");
        assert_eq!(enc(Request::Retr(1)).unwrap(), "RETR 1\r\n");
        assert_eq!(enc(Request::Dele(1)).unwrap(), "DELE 1\r\n");
        assert_eq!(enc(Request::Top(10, 0)).unwrap(), "TOP 10 0\r\n");
        assert_eq!(enc(Request::Uidl(None)).unwrap(), "UIDL\r\n");
        assert_eq!(enc(Request::Uidl(Some(7))).unwrap(), "UIDL 7\r\n");
        assert_eq!(enc(Request::Noop).unwrap(), "NOOP\r\n");
        assert_eq!(enc(Request::Rset).unwrap(), "RSET\r\n");
        assert_eq!(enc(Request::Quit).unwrap(), "QUIT\r\n");
        assert_eq!(enc(Request::Capa).unwrap(), "CAPA\r\n");
        assert_eq!(enc(Request::Stls).unwrap(), "STLS\r\n");
        assert_eq!(
            enc(Request::Auth { mechanism: "PLAIN", initial: Some("AGEAYg==") }).unwrap(),
            "AUTH PLAIN AGEAYg==\r\n"
        );
        assert_eq!(enc(Request::Auth { mechanism: "LOGIN", initial: None }).unwrap(), "AUTH LOGIN\r\n");
        assert_eq!(enc(Request::SaslResponse("*")).unwrap(), "*\r\n");
        assert_eq!(enc(Request::SaslResponse("")).unwrap(), "\r\n");
    }

    #[test]
    fn refuses_injection_and_leaves_buffer_untouched() {
        let mut v = b"x".to_vec();
        assert_eq!(Request::User("a\r\nDELE 1").encode(&mut v), Err(EncodeError::BadArgument));
        assert_eq!(Request::Pass("p\nq").encode(&mut v), Err(EncodeError::BadArgument));
        assert_eq!(Request::Pass("nul\0").encode(&mut v), Err(EncodeError::BadArgument));
        assert_eq!(Request::User("two words").encode(&mut v), Err(EncodeError::BadWord));
        assert_eq!(Request::User("").encode(&mut v), Err(EncodeError::BadWord));
        let long = "a".repeat(crate::MAX_COMMAND_LINE);
        assert!(matches!(
            Request::Auth { mechanism: "XOAUTH2", initial: Some(&long) }.encode(&mut v),
            Err(EncodeError::TooLong(_))
        ));
        assert_eq!(v, b"x");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = format!(
            "{:?} {:?} {:?}",
            Request::Pass("hunter2"),
            Request::Auth { mechanism: "PLAIN", initial: Some("c2VjcmV0") },
            Request::SaslResponse("c2VjcmV0")
        );
        assert!(!s.contains("hunter2") && !s.contains("c2VjcmV0"), "{s}");
        assert_eq!(format!("{:?}", Request::Retr(3)), "RETR 3");
    }

    #[test]
    fn multiline_commands_are_known() {
        assert!(Request::Retr(1).expects_multiline());
        assert!(Request::Capa.expects_multiline());
        assert!(Request::Uidl(None).expects_multiline());
        assert!(!Request::Uidl(Some(1)).expects_multiline());
        assert!(!Request::List(Some(1)).expects_multiline());
        assert!(!Request::Dele(1).expects_multiline());
        assert!(!Request::Stat.expects_multiline());
    }

    #[test]
    fn status_lines_are_bounded() {
        assert_eq!(status_line_len(b"+OK hi\r\nrest").unwrap(), Some(8));
        assert_eq!(status_line_len(b"+OK hi").unwrap(), None);
        assert_eq!(status_line_len(&vec![b'a'; MAX_REPLY_LINE]), Err(ReplyError::StatusTooLong));
        let mut ok = vec![b'a'; MAX_REPLY_LINE - 1];
        ok.push(b'\n');
        assert_eq!(status_line_len(&ok).unwrap(), Some(MAX_REPLY_LINE));
    }

    #[test]
    fn parses_replies_and_sasl_continuations() {
        assert_eq!(
            parse_reply(b"+OK 2 messages\r\n", false).unwrap(),
            Reply::Status(Status::ok("2 messages"))
        );
        assert_eq!(
            parse_reply(b"-ERR [AUTH] bad\r\n", true).unwrap(),
            Reply::Status(Status::err_code(RespCode::Auth, "bad"))
        );
        assert_eq!(parse_reply(b"+ \r\n", true).unwrap(), Reply::Continue(String::new()));
        assert_eq!(parse_reply(b"+\r\n", true).unwrap(), Reply::Continue(String::new()));
        assert_eq!(
            parse_reply(b"+ VXNlcm5hbWU6\r\n", true).unwrap(),
            Reply::Continue("VXNlcm5hbWU6".into())
        );
        // Outside AUTH a "+ " line is not a status.
        assert!(parse_reply(b"+ VXNlcm5hbWU6\r\n", false).is_err());
        assert!(parse_reply(b"* OK IMAP\r\n", true).is_err());
    }

    /// Decodes `input` fed in `chunk`-sized pieces.
    fn decode_chunked(
        input: &[u8],
        chunk: usize,
        ending: LineEnding,
    ) -> (Vec<u8>, usize, Result<Progress, ReplyError>) {
        run_decoder_with(MultiLineDecoder::new(ending), input, chunk)
    }

    fn run_decoder_with(
        mut dec: MultiLineDecoder,
        input: &[u8],
        chunk: usize,
    ) -> (Vec<u8>, usize, Result<Progress, ReplyError>) {
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in input.chunks(chunk) {
            match dec.decode(piece, &mut out) {
                Ok((n, Progress::Done)) => return (out, consumed + n, Ok(Progress::Done)),
                Ok((n, Progress::NeedMoreData)) => {
                    assert_eq!(n, piece.len());
                    consumed += n;
                }
                Err(e) => return (out, consumed, Err(e)),
            }
        }
        (out, consumed, dec.finish().map(|()| Progress::Done))
    }

    /// RFC 1939 §7 RETR example body plus stuffed lines, a bare CR, 8-bit
    /// and NUL bytes, and a pipelined reply after the terminator.
    const WIRE: &[u8] = b"From: a@b\r\nSubject: x\r\n\r\n..leading dot\r\n..\r\n\xff\x00bin\rary\r\n...\r\nend\r\n.\r\n+OK next\r\n";
    const BODY_CRLF: &[u8] = b"From: a@b\r\nSubject: x\r\n\r\n.leading dot\r\n.\r\n\xff\x00bin\rary\r\n..\r\nend\r\n";
    /// The same with CRLF turned into LF; the bare CR inside a line stays.
    const BODY_LF: &[u8] = b"From: a@b\nSubject: x\n\n.leading dot\n.\n\xff\x00bin\rary\n..\nend\n";

    #[test]
    fn decodes_at_every_chunk_size_1_to_512() {
        let terminator_end = WIRE.len() - b"+OK next\r\n".len();
        for chunk in 1..=512 {
            for (ending, want) in [(LineEnding::Crlf, BODY_CRLF), (LineEnding::Lf, BODY_LF)] {
                let (out, consumed, res) = decode_chunked(WIRE, chunk, ending);
                assert_eq!(res, Ok(Progress::Done), "chunk {chunk}");
                assert_eq!(out, want, "chunk {chunk} {ending:?}");
                assert_eq!(consumed, terminator_end, "chunk {chunk}: pipelined bytes must stay");
            }
        }
    }

    #[test]
    fn empty_body_and_lone_terminator() {
        for chunk in 1..=4 {
            let (out, consumed, res) = decode_chunked(b".\r\n", chunk, LineEnding::Crlf);
            assert_eq!((out.as_slice(), consumed, res), (&b""[..], 3, Ok(Progress::Done)));
        }
    }

    #[test]
    fn connection_closed_mid_message_is_an_error_at_every_cut() {
        let end = WIRE.len() - b"+OK next\r\n".len();
        for cut in 0..end {
            for chunk in [1, 3, 7, 512] {
                let (_, _, res) = decode_chunked(&WIRE[..cut], chunk, LineEnding::Lf);
                assert!(
                    matches!(res, Err(ReplyError::Truncated(_))),
                    "cut at {cut} chunk {chunk} gave {res:?}"
                );
            }
        }
        // ".\r" without the LF is not the end either.
        let (_, _, res) = decode_chunked(b"abc\r\n.\r", 1, LineEnding::Crlf);
        assert_eq!(res, Err(ReplyError::Truncated(5)));
    }

    #[test]
    fn dot_lines_that_are_not_terminators() {
        // ".\n" (bare LF) and ".x" are data, not the end; ". \r\n" neither.
        let (out, _, res) = decode_chunked(b".\nfoo\r\n.x\r\n. \r\n.\r\n", 1, LineEnding::Crlf);
        assert_eq!(res, Ok(Progress::Done));
        assert_eq!(out, b"\nfoo\r\nx\r\n \r\n");
        // ".\rX": the dot is stuffing, the CR is a bare CR.
        let (out, _, res) = decode_chunked(b".\rX\r\n.\r\n", 2, LineEnding::Lf);
        assert_eq!(res, Ok(Progress::Done));
        assert_eq!(out, b"\rX\n");
    }

    #[test]
    fn line_limit_counts_every_byte_and_resets_per_line() {
        let dec = || MultiLineDecoder::new(LineEnding::Crlf).with_max_line(6);
        // "abcd\r\n" is exactly 6: fine. "abcde\r\n" is 7: too long.
        for chunk in 1..=8 {
            let (out, _, res) = run_decoder_with(dec(), b"abcd\r\nabcd\r\n.\r\n", chunk);
            assert_eq!(res, Ok(Progress::Done));
            assert_eq!(out, b"abcd\r\nabcd\r\n");
            let (_, _, res) = run_decoder_with(dec(), b"abcd\r\nabcde\r\n.\r\n", chunk);
            assert_eq!(res, Err(ReplyError::DataLineTooLong(6)), "chunk {chunk}");
            // A server that never sends a line end is stopped too.
            let (_, _, res) = run_decoder_with(dec(), &[b'x'; 100], chunk);
            assert_eq!(res, Err(ReplyError::DataLineTooLong(6)));
        }
    }

    #[test]
    fn decoder_consumes_nothing_after_done() {
        let mut dec = MultiLineDecoder::default();
        let mut out = Vec::new();
        assert_eq!(dec.decode(b"a\r\n.\r\nb", &mut out).unwrap(), (6, Progress::Done));
        assert_eq!(dec.decode(b"more", &mut out).unwrap(), (0, Progress::Done));
        assert_eq!(out, b"a\r\n");
        assert_eq!(dec.produced(), 3);
        assert!(dec.finish().is_ok());
    }

    #[test]
    fn round_trips_what_a_server_stuffs() {
        // Independent stuffing, written from RFC 1939 §3, not from dot.rs.
        fn stuff(msg: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            for line in msg.split_inclusive(|&b| b == b'\n') {
                if line.first() == Some(&b'.') {
                    out.push(b'.');
                }
                out.extend_from_slice(line);
            }
            out.extend_from_slice(b".\r\n");
            out
        }
        let mut seed = 0x1234_5678u32;
        for _ in 0..300 {
            let mut msg = Vec::new();
            let lines = seed % 9;
            for _ in 0..lines {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let len = (seed >> 16) % 6;
                for k in 0..len {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    // Mostly dots, letters and bytes >= 0x80; no CR/LF.
                    let b = match (seed >> 20) % 4 {
                        0 => b'.',
                        1 => b'a' + (k as u8),
                        2 => 0x80 | (seed >> 8) as u8,
                        _ => b' ',
                    };
                    msg.push(b);
                }
                msg.extend_from_slice(b"\r\n");
            }
            seed = seed.wrapping_add(7);
            let wire = stuff(&msg);
            for chunk in [1, 2, 5, 64] {
                let (out, consumed, res) = decode_chunked(&wire, chunk, LineEnding::Crlf);
                assert_eq!(res, Ok(Progress::Done));
                assert_eq!(out, msg);
                assert_eq!(consumed, wire.len());
            }
        }
    }

    #[test]
    fn parses_capa_from_rfc_2449_example_and_dovecot() {
        let body = b"TOP\r\nUSER\r\nSASL CRAM-MD5 KERBEROS_V4\r\nRESP-CODES\r\nLOGIN-DELAY 900\r\nPIPELINING\r\nEXPIRE 60\r\nUIDL\r\nIMPLEMENTATION Shlemazle-Plotz-v302\r\n";
        let caps = Capabilities::parse(body_lines(body));
        assert!(caps.top && caps.user && caps.uidl && caps.pipelining && caps.resp_codes);
        assert!(!caps.stls);
        assert_eq!(caps.sasl, vec!["CRAM-MD5", "KERBEROS_V4"]);
        assert_eq!(caps.login_delay, Some(900));
        assert_eq!(caps.expire.as_deref(), Some("60"));
        assert_eq!(caps.implementation.as_deref(), Some("Shlemazle-Plotz-v302"));
        let dovecot = Capabilities::parse(body_lines(b"CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nUSER\r\nSASL PLAIN login\r\n"));
        assert!(dovecot.stls && dovecot.has_sasl("LOGIN") && dovecot.has_sasl("plain"));
        assert!(!dovecot.has_sasl("SCRAM-SHA-256"));
    }

    #[test]
    fn parses_listings() {
        assert_eq!(parse_stat("2 320").unwrap(), (2, 320));
        assert_eq!(parse_stat("2 320 extra words").unwrap(), (2, 320));
        assert!(parse_stat("two 320").is_err());
        assert_eq!(parse_list_line(b"1 120\r\n").unwrap(), (1, 120));
        assert!(parse_list_line(b"1\r\n").is_err());
        assert_eq!(parse_uidl_line(b"1 whqtswO00WBw418f9t5JxYwZ\r\n").unwrap(), (1, "whqtswO00WBw418f9t5JxYwZ"));
        assert_eq!(parse_uidl_line(b"2  QhdPYR:00WBw1Ph7x7").unwrap(), (2, "QhdPYR:00WBw1Ph7x7"));
        assert!(parse_uidl_line(b"3 ").is_err());
        assert!(parse_uidl_line(b"3 has space").is_err());
        assert!(parse_uidl_line(b"3 \xffbad").is_err());
        assert!(parse_uidl_line(format!("4 {}", "a".repeat(71)).as_bytes()).is_err());
        assert!(parse_uidl_line(format!("4 {}", "a".repeat(70)).as_bytes()).is_ok());
        assert!(parse_uidl_line(b"x abc").is_err());
    }

    #[test]
    fn fuzz_entry_survives_odd_inputs() {
        let inputs: [&[u8]; 6] = [
            b"",
            b"\x05",
            b"\x07.\r\n",
            b"\xff..\r\n.\r.\r\n.\r\n",
            b"\x00\r\n\r\n\r",
            b"\x10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n.\r\n",
        ];
        for data in inputs {
            fuzz_reply(data);
        }
        fuzz_reply(WIRE);
        let mut with_prefix = vec![9u8];
        with_prefix.extend_from_slice(WIRE);
        fuzz_reply(&with_prefix);
    }
}
