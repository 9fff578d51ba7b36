//! BDAT (CHUNKING, RFC 3030) on SMTP and LMTP over real sockets (issue 18,
//! item 5): the chunk boundary at every split point of a message, octets
//! taken as they are (dots, NULs, `<CRLF>.<CRLF>` are content), pipelined
//! chunks, `BDAT 0 LAST`, a chunk past the size limit refused at its end
//! with the stream kept in step, refused BDATs whose octets are dropped
//! and not run as commands, DATA or RCPT after BDAT, RSET between, big
//! messages through the spool, and the bare-line-end rule per protocol.
//! A real BDAT client (Dovecot's LMTP proxy; Postfix's LMTP client never
//! sends BDAT) is in `tests/dovecot_bdat.rs`.

mod support;

use pobox_server::Config;
use support::{Client, TestServer, config, start};

/// A message whose bytes would mean something under DATA: a leading dot,
/// an end-of-data marker, a NUL and 8-bit octets.
const MESSAGE: &[u8] = b"From: a@sender.test\r\nSubject: chunks\r\n\r\n.leading dot\r\n\
    ..two dots\r\n.\r\nnot the end\r\n\x00\xff\xfe\r\nlast line\r\n";

/// What the Maildir holds for `m`: CRLF stored as LF, nothing else changed.
fn stored(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    let mut i = 0;
    while i < m.len() {
        if m[i] == b'\r' && m.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(m[i]);
        i += 1;
    }
    out
}

fn bdat(size: usize, last: bool, data: &[u8]) -> Vec<u8> {
    let mut out = format!("BDAT {size}{}\r\n", if last { " LAST" } else { "" }).into_bytes();
    out.extend_from_slice(data);
    out
}

fn assert_one_message(s: &TestServer, user: &str, expect: &[u8], what: &str) {
    let got = s.messages(user);
    assert_eq!(got.len(), 1, "{what}: {user} has {} messages", got.len());
    let want = stored(expect);
    assert!(
        got[0].ends_with(&want) && got[0].starts_with(b"Return-Path:"),
        "{what}: stored {:?}, expected to end with {:?}",
        String::from_utf8_lossy(&got[0]),
        String::from_utf8_lossy(&want)
    );
    // The trace fields are ours; what follows them is the message exactly.
    let trace_end = got[0].len() - want.len();
    assert!(got[0][..trace_end].ends_with(b"\n"), "{what}: the message starts on a line of its own");
}

#[test]
fn chunking_is_advertised() {
    let s = start(config());
    let mut c = Client::connect(&s.smtp);
    c.reply();
    assert!(c.cmd("EHLO x.test").contains("250-CHUNKING\r\n"));
    let mut c = Client::connect(&s.lmtp);
    c.reply();
    assert!(c.cmd("LHLO x.test").contains("250-CHUNKING\r\n"));
}

#[test]
fn lmtp_chunk_boundary_at_every_split_point() {
    let s = start(config());
    let mut c = Client::lmtp(&s.lmtp);
    for k in 0..=MESSAGE.len() {
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<bob+tag@example.org>").starts_with("250"));
        // Command and octets in separate segments, then the second chunk
        // split at its command line.
        c.send(format!("BDAT {k}\r\n").as_bytes());
        c.send(&MESSAGE[..k]);
        assert_eq!(c.reply(), format!("250 2.0.0 {k} octets received\r\n"), "split {k}");
        c.send(&bdat(MESSAGE.len() - k, true, &MESSAGE[k..]));
        // One reply per recipient, after LAST.
        for who in ["alice@example.org", "bob+tag@example.org"] {
            let r = c.reply();
            assert!(r.starts_with(&format!("250 2.0.0 <{who}> delivered as ")), "split {k}: {r}");
        }
        assert_one_message(&s, "alice", MESSAGE, &format!("split {k}"));
        assert_one_message(&s, "bob", MESSAGE, &format!("split {k}"));
        s.clear();
    }
}

#[test]
fn smtp_chunk_boundary_at_every_split_point_all_pipelined() {
    let s = start(config());
    let mut c = Client::smtp(&s.smtp);
    for k in 0..=MESSAGE.len() {
        // The whole transaction in one write (PIPELINING).
        let mut all = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<alice@example.org>\r\n".to_vec();
        all.extend_from_slice(&bdat(k, false, &MESSAGE[..k]));
        all.extend_from_slice(&bdat(MESSAGE.len() - k, true, &MESSAGE[k..]));
        all.extend_from_slice(b"NOOP\r\n");
        c.send(&all);
        assert!(c.reply().starts_with("250 2.1.0"));
        assert!(c.reply().starts_with("250 2.1.5"));
        assert_eq!(c.reply(), format!("250 2.0.0 {k} octets received\r\n"), "split {k}");
        assert_eq!(c.reply(), "250 2.0.0 message accepted for delivery\r\n", "split {k}");
        assert!(c.reply().starts_with("250 2.0.0 ok"), "split {k}: NOOP answered once, in order");
        assert_one_message(&s, "alice", MESSAGE, &format!("split {k}"));
        s.clear();
    }
}

#[test]
fn bdat_zero_last_ends_the_message_and_many_small_chunks_add_up() {
    let s = start(config());
    for lmtp in [false, true] {
        let mut c = if lmtp { Client::lmtp(&s.lmtp) } else { Client::smtp(&s.smtp) };
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        // One octet per chunk, then an empty LAST.
        for b in MESSAGE {
            c.send(&bdat(1, false, &[*b]));
            assert_eq!(c.reply(), "250 2.0.0 1 octets received\r\n");
        }
        c.send(b"BDAT 0 LAST\r\n");
        assert!(c.reply().starts_with("250 2.0.0"), "lmtp={lmtp}");
        assert_one_message(&s, "alice", MESSAGE, &format!("lmtp={lmtp}"));
        s.clear();
    }
}

#[test]
fn a_chunk_past_the_size_limit_is_refused_at_its_end_and_the_stream_stays_in_step() {
    let s = start(Config { smtp_max_message_size: 100, lmtp_max_message_size: 100, ..config() });
    // The refused octets look like commands: none may run.
    let junk: Vec<u8> = b"RSET\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n".repeat(3);
    assert!(junk.len() > 100);
    for lmtp in [false, true] {
        let mut c = if lmtp { Client::lmtp(&s.lmtp) } else { Client::smtp(&s.smtp) };
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        c.send(&bdat(junk.len(), false, &junk));
        assert!(c.reply().starts_with("552 5.3.4"), "lmtp={lmtp}");
        // A pipelined LAST after the failure: read, and refused too (LMTP:
        // once per recipient).
        c.send(&bdat(4, true, b"x\r\n."));
        assert!(c.reply().starts_with("552 5.3.4"), "lmtp={lmtp}");
        assert!(c.cmd("NOOP").starts_with("250 2.0.0 ok"), "in step after the refused chunks");
        // The session goes on: a message within the limit is delivered.
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        c.send(&bdat(MESSAGE.len(), true, MESSAGE));
        assert!(c.reply().starts_with("250 2.0.0"), "lmtp={lmtp}");
        assert_one_message(&s, "alice", MESSAGE, &format!("lmtp={lmtp}"));
        assert!(s.messages("bob").is_empty());
        s.clear();
    }
}

#[test]
fn refused_bdat_octets_are_dropped_not_run_as_commands() {
    let s = start(config());
    let hidden = b"MAIL FROM:<x@y.test>\r\nRCPT TO:<bob@example.org>\r\nBDAT 3 LAST\r\nhi\n";
    for lmtp in [false, true] {
        let mut c = if lmtp { Client::lmtp(&s.lmtp) } else { Client::smtp(&s.smtp) };
        // No MAIL.
        c.send(&bdat(hidden.len(), true, hidden));
        assert!(c.reply().starts_with("503 5.5.1"), "lmtp={lmtp}");
        // MAIL, but no accepted recipient: SMTP 554 (as its DATA), LMTP 503.
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<nobody@example.org>").starts_with("550"));
        c.send(&bdat(hidden.len(), false, hidden));
        let r = c.reply();
        assert!(r.starts_with(if lmtp { "503 5.5.1" } else { "554 5.5.1" }), "lmtp={lmtp}: {r}");
        assert!(c.cmd("NOOP").starts_with("250 2.0.0 ok"), "exactly one reply each: in step");
        assert!(s.messages("bob").is_empty(), "the hidden transaction ran");
    }
}

#[test]
fn data_and_rcpt_after_bdat_are_refused_and_rset_starts_over() {
    let s = start(config());
    for lmtp in [false, true] {
        let mut c = if lmtp { Client::lmtp(&s.lmtp) } else { Client::smtp(&s.smtp) };
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        c.send(&bdat(9, false, b"Subject: "));
        assert!(c.reply().starts_with("250 2.0.0 9 octets"));
        assert!(c.cmd("DATA").starts_with("503 5.5.1"), "lmtp={lmtp}");
        assert!(c.cmd("RCPT TO:<bob@example.org>").starts_with("503 5.5.1"), "lmtp={lmtp}");
        // The transaction still goes on after those refusals...
        c.send(&bdat(9, false, b"dropped\r\n"));
        assert!(c.reply().starts_with("250 2.0.0 9 octets"));
        // ...until RSET, which drops it.
        assert!(c.cmd("RSET").starts_with("250"));
        c.send(&bdat(5, true, b"x\r\n\r\n"));
        assert!(c.reply().starts_with("503 5.5.1"), "no transaction after RSET");
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        c.send(&bdat(MESSAGE.len(), true, MESSAGE));
        assert!(c.reply().starts_with("250 2.0.0"));
        assert_one_message(&s, "alice", MESSAGE, &format!("lmtp={lmtp}"));
        assert!(s.messages("bob").is_empty());
        s.clear();
        // A DATA transaction works on the same connection afterwards.
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(b"Subject: data\r\n\r\nbody\r\n.\r\n");
        assert!(c.reply().starts_with("250 2.0.0"));
        assert_one_message(&s, "alice", b"Subject: data\r\n\r\nbody\r\n", "DATA after a BDAT transaction");
        s.clear();
    }
}

#[test]
fn a_big_message_in_chunks_goes_through_the_spool_intact() {
    let s = start(config());
    // 600 KiB of lines: past the 128 KiB memory threshold.
    let mut m = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..12_000 {
        m.extend_from_slice(format!("line {i:05} {}\r\n", "x".repeat(38)).as_bytes());
    }
    for lmtp in [false, true] {
        let mut c = if lmtp { Client::lmtp(&s.lmtp) } else { Client::smtp(&s.smtp) };
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        let chunks: Vec<&[u8]> = m.chunks(100_000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            c.send(&bdat(chunk.len(), i + 1 == chunks.len(), chunk));
            let r = c.reply();
            assert!(r.starts_with("250 2.0.0"), "chunk {i}: {r}");
        }
        assert_one_message(&s, "alice", &m, &format!("lmtp={lmtp}"));
        s.clear();
    }
    let spool: Vec<_> = std::fs::read_dir(s.dir.path().join("spool")).unwrap().collect();
    assert!(spool.is_empty(), "no spool file left behind");
}

#[test]
fn bare_line_ends_in_bdat_smtp_refuses_lmtp_keeps() {
    let s = start(config());
    for (what, m) in [
        ("bare LF", &b"Subject: x\r\n\r\nbare\nLF\r\n"[..]),
        ("bare CR", &b"Subject: x\r\n\r\nbare\rCR\r\n"[..]),
        ("CR at the very end", &b"Subject: x\r\n\r\nend\r"[..]),
    ] {
        let mut c = Client::smtp(&s.smtp);
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        // The CR and LF of a CRLF in separate chunks is no bare line end.
        let split = m.len() - 1;
        c.send(&bdat(split, false, &m[..split]));
        assert!(c.reply().starts_with("250"));
        c.send(&bdat(1, true, &m[split..]));
        let r = c.reply();
        assert!(r.starts_with("550 5.6.0"), "SMTP {what}: {r}");
        assert!(s.messages("alice").is_empty(), "SMTP {what}: nothing stored");
        let mut c = Client::lmtp(&s.lmtp);
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        c.send(&bdat(m.len(), true, m));
        assert!(c.reply().starts_with("250 2.0.0"), "LMTP {what}");
        assert_eq!(s.messages("alice").len(), 1, "LMTP {what}: kept");
        s.clear();
    }
    // A CRLF split across two chunks is a line end like any other.
    let mut c = Client::smtp(&s.smtp);
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    let m = b"Subject: x\r\n\r\nsplit CRLF\r\n";
    c.send(&bdat(m.len() - 1, false, &m[..m.len() - 1]));
    assert!(c.reply().starts_with("250"));
    c.send(&bdat(1, true, b"\n"));
    assert!(c.reply().starts_with("250 2.0.0 message accepted"));
    assert_one_message(&s, "alice", m, "CRLF across chunks");
}
