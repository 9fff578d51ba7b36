//! The POP3 protocol for pobox, without any I/O.
//!
//! This crate turns bytes into typed commands and typed replies into bytes, and
//! holds the POP3 server session as a pure state machine. The same codec serves
//! the server (`pobox serve`) and the fetcher (`pobox fetch`).
//!
//! What it does **not** do: it opens no socket or file, reads no clock, spawns
//! nothing and does not depend on tokio. Time enters as arguments; storage and
//! authentication enter as results the driver hands back. That keeps every
//! protocol rule testable byte by byte, at any chunk size, and fuzzable.
//!
//! # Layout
//! - [`line`]: the bounded CRLF line splitter every parser sits on.
//! - [`dot`]: RFC 1939 §3 byte-stuffing, LF→CRLF normalisation, the TOP cut.
//! - [`data`]: the SMTP/LMTP DATA receiver (end of data, dot removal).
//! - [`pop3::command`]: client commands and their parser.
//! - [`pop3::response`]: `+OK`/`-ERR` status lines and RFC 2449/3206 codes.
//! - [`pop3::server`]: the server session (AUTHORIZATION → TRANSACTION → UPDATE).
//! - [`pop3::maildrop`]: the session's snapshot of the maildrop.
//! - [`pop3::client`]: the fetcher's side: command encoding, reply parsing.
//! - [`secret`]: [`Secret`], the one credential type of the workspace
//!   (wiped on drop, never printed).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod data;
pub mod dot;
pub mod line;
pub mod pop3;
pub mod secret;

pub use secret::Secret;

/// RFC 2449 §4: a server MUST accept commands of at least 255 octets (CRLF
/// included). We accept longer lines so that SASL initial responses (RFC 5034
/// §4) carrying long OAuth tokens fit; anything past this is `TooLong`.
pub const MAX_COMMAND_LINE: usize = 8192;

/// RFC 2449 §4: a response's first line is at most 512 octets, CRLF included.
pub const MAX_RESPONSE_LINE: usize = 512;
