//! Regression tests for bugs the fuzz targets found in code this binary does
//! not own. Both are fixed and run in the test command; a new one is
//! written failing, fixed by its owner, and its input then joins
//! `fuzz/seeds/<target>/` (not before: the CI fuzz smoke would stop on it).

/// Fuzz target `pop3_response` (FUZZING.md): `Status::parse` slices the
/// lossily decoded line at byte 3 (`text[..3]`), which panics when a
/// multi-byte character (a U+FFFD standing for an invalid byte) straddles
/// it. A hostile or broken POP3 server sending `+O\xff` as its greeting or
/// any status line makes the fetcher panic instead of failing the account
/// with a protocol error.
#[test]
fn status_parse_does_not_panic_on_a_non_utf8_byte_at_offset_2() {
    for line in [&b"+O\xff\r\n"[..], b"OK\x8c \r\n", b"-E\xc3\xa9RR\r\n", b"+\xe2\x82\xac\r\n"] {
        let r = std::panic::catch_unwind(|| pobox_proto::pop3::client::parse_reply(line, false).is_ok());
        assert!(r.is_ok(), "parse_reply panicked on {line:?}");
        let r = std::panic::catch_unwind(|| pobox_proto::pop3::Status::parse(line).is_ok());
        assert!(r.is_ok(), "Status::parse panicked on {line:?}");
    }
}

/// Fuzz target `lmtp_input` (FUZZING.md), confirmed on the real server:
/// after `MAIL FROM` without a colon, smtp-proto's `RequestReceiver` (as
/// `crates/server/src/lmtp.rs` drives it) answers nothing until the next
/// line arrives, then answers `501` for both: the next command gets no reply
/// of its own. RFC 5321 §4.1.1 / RFC 2033 §4.2: one reply per command; a
/// pipelining MTA pairs replies with commands by position and desyncs.
#[test]
fn lmtp_answers_every_command_once_even_after_a_syntax_error() {
    let dir = crate::util::Dir::new();
    let srv = dir.server().start();
    let mut l = srv.lmtp();
    l.send(b"MAIL FROM\r\nNOOP\r\nNOOP\r\n");
    let first = l.reply();
    assert!(first.starts_with("501"), "MAIL FROM: {first}");
    assert!(l.reply().starts_with("250"), "first NOOP");
    assert!(l.reply().starts_with("250"), "second NOOP");
}

/// Same root cause: the reply to the same bytes depends on how TCP split
/// them (`501 5.5.4 syntax` in one segment, `500 5.5.2 unknown command` in
/// two-byte segments, and nothing at all when the malformed line is last).
#[test]
fn lmtp_reply_does_not_depend_on_tcp_segmentation() {
    use std::io::Write as _;
    let dir = crate::util::Dir::new();
    let srv = dir.server().start();
    let mut replies = Vec::new();
    for chunk in [64usize, 2] {
        let mut l = srv.lmtp();
        l.stream.set_nodelay(true).unwrap();
        for piece in b"MAIL FROM\r\nNOOP\r\n".chunks(chunk) {
            l.stream.write_all(piece).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        replies.push(l.reply());
    }
    assert_eq!(replies[0], replies[1], "whole vs. 2-byte segments");
}
