//! End of DATA over real sockets (issue 17, findings 2, 4 and 5): only
//! `<CRLF>.<CRLF>` ends a message on SMTP and LMTP, whatever CR/LF/dot
//! combinations the peer sends and however TCP splits them; big messages
//! go through the spool intact, within the budgets; unknown recipients
//! count toward the SMTP hard error limit.
//!
//! The receiver itself is unit-tested at every split point in
//! `src/intake.rs`; here the same sequences go through the listeners, the
//! delivery pipeline and the Maildir, and every stored file is counted.

mod support;

use std::io::{BufRead, Write};
use std::time::Duration;

use pobox_server::Config;
use pobox_server::config::MailAuthConfig;
use support::{Client, TestServer, config, start, start_with};

/// The reproduction of finding 2: a second transaction hidden after
/// `<CR><LF>.<CR><CR><LF>` inside the first message's DATA.
const SMUGGLE: &[u8] = b"From: a@sender.test\r\nSubject: first\r\n\r\nfirst body\r\n.\r\r\n\
    MAIL FROM:<ceo@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n\
    From: ceo@example.org\r\nSubject: smuggled\r\n\r\nforged\r\n.\r\n";

#[test]
fn smtp_smuggled_second_message_is_never_delivered() {
    let s = start(config());
    let mut c = Client::smtp(&s.smtp);
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(SMUGGLE);
    // Exactly one reply for the whole thing: the bytes are one message.
    let r = c.reply();
    let noop = c.cmd("NOOP");
    assert!(noop.starts_with("250"), "one reply only, then the session goes on: {r:?} then {noop:?}");
    assert!(s.messages("bob").is_empty(), "the smuggled message reached bob: {:?}", s.messages("bob"));
    // SMTP refuses a message with a bare CR (see intake.rs): nothing stored.
    assert!(r.starts_with("550 5.6.0"), "{r}");
    assert!(s.messages("alice").is_empty());
}

#[test]
fn lmtp_smuggled_second_message_stays_inside_the_first() {
    let s = start(config());
    let mut c = Client::lmtp(&s.lmtp);
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(SMUGGLE);
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("NOOP").starts_with("250"), "one reply only");
    assert!(s.messages("bob").is_empty(), "the smuggled message reached bob");
    let alice = s.messages("alice");
    assert_eq!(alice.len(), 1);
    let m = String::from_utf8_lossy(&alice[0]);
    assert!(m.contains("first body") && m.contains("RCPT TO:<bob@example.org>") && m.contains("forged"), "{m}");
}

/// The sequences of the issue, each placed between two body lines.
const SEQUENCES: &[&[u8]] =
    &[b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r\n.\r\r\n", b"\r.\r", b"\r\n.\r", b"\n.\r\r\n", b"\r.\r\n", b"\n..\n"];

fn payload(seq: &[u8]) -> Vec<u8> {
    let mut p = b"Subject: m\r\n\r\nbefore".to_vec();
    p.extend_from_slice(seq);
    p.extend_from_slice(b"after\r\n.\r\n");
    p
}

/// Sends DATA's payload in two writes cut at `split`, with a pause so the
/// server reads them separately.
fn send_split(c: &mut Client, p: &[u8], split: usize) {
    c.send(&p[..split]);
    std::thread::sleep(Duration::from_millis(3));
    c.send(&p[split..]);
}

#[test]
fn smtp_end_of_data_matrix_at_every_split_point() {
    let s = start(config());
    let mut c = Client::smtp(&s.smtp);
    for seq in SEQUENCES {
        let p = payload(seq);
        for split in 0..=p.len() {
            assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
            assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
            assert!(c.cmd("DATA").starts_with("354"));
            send_split(&mut c, &p, split);
            let r = c.reply();
            assert!(r.starts_with("550 5.6.0"), "{seq:?} split {split}: {r}");
            assert!(c.cmd("NOOP").starts_with("250"), "{seq:?} split {split}: one reply only");
            assert!(s.messages("alice").is_empty(), "{seq:?} split {split}: refused means nothing stored");
        }
    }
    // The control: plain CRLF content is delivered, once, at every split.
    let p = b"Subject: m\r\n\r\nbefore\r\n..dot\r\nafter\r\n.\r\n".to_vec();
    for split in 0..=p.len() {
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        send_split(&mut c, &p, split);
        let r = c.reply();
        assert!(r.starts_with("250"), "split {split}: {r}");
        let m = s.messages("alice");
        assert_eq!(m.len(), 1, "split {split}");
        let text = String::from_utf8_lossy(&m[0]);
        assert!(text.ends_with("Subject: m\n\nbefore\n.dot\nafter\n"), "split {split}: {text}");
        s.clear();
    }
}

/// What a message's body must be once stored (LF line ends), from an
/// independent reading of RFC 5321 §4.5.2: lines end at CRLF only, a
/// leading dot is removed when the line has more after it.
fn expected_body(seq: &[u8]) -> Vec<u8> {
    let mut data = b"before".to_vec();
    data.extend_from_slice(seq);
    data.extend_from_slice(b"after\r\n");
    let mut out = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let line = &rest[..end];
        let line = if line.len() > 1 && line[0] == b'.' { &line[1..] } else { line };
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        rest = &rest[end + 2..];
    }
    // The store keeps LF line ends: CRLF → LF, bare CR and LF kept.
    let mut stored = Vec::new();
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'\r' && out.get(i + 1) == Some(&b'\n') {
            stored.push(b'\n');
            i += 2;
        } else {
            stored.push(out[i]);
            i += 1;
        }
    }
    stored
}

#[test]
fn lmtp_end_of_data_matrix_at_every_split_point() {
    let s = start(config());
    let mut c = Client::lmtp(&s.lmtp);
    for seq in SEQUENCES {
        let p = payload(seq);
        let body = expected_body(seq);
        for split in 0..=p.len() {
            assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
            assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
            assert!(c.cmd("DATA").starts_with("354"));
            send_split(&mut c, &p, split);
            let r = c.reply();
            assert!(r.starts_with("250"), "{seq:?} split {split}: {r}");
            assert!(c.cmd("NOOP").starts_with("250"), "{seq:?} split {split}: one reply only");
            let m = s.messages("alice");
            assert_eq!(m.len(), 1, "{seq:?} split {split}: exactly one message");
            let stored = &m[0];
            assert!(
                stored.ends_with(&[&b"Subject: m\n\n"[..], &body].concat()),
                "{seq:?} split {split}: {:?}",
                String::from_utf8_lossy(stored)
            );
            s.clear();
        }
    }
}

#[test]
fn dot_on_the_first_line_ends_an_empty_message_and_stuffed_first_line_is_unstuffed() {
    let s = start(config());
    let mut c = Client::lmtp(&s.lmtp);
    for (data, body) in [(&b".\r\n"[..], &b""[..]), (b"..x\r\n.\r\n", b".x\n"), (b".\r\r\n.\r\n", b"\r\n")] {
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(data);
        let r = c.reply();
        assert!(r.starts_with("250"), "{data:?}: {r}");
        let m = s.messages("alice");
        assert_eq!(m.len(), 1, "{data:?}");
        // The trace headers come first; the message follows the line
        // that ends them (`\tfor <rcpt>; date`).
        let text = &m[0];
        let marker = b"\tfor <alice@example.org>; ";
        let at = text.windows(marker.len()).position(|w| w == marker).unwrap();
        let end_of_trace = at + text[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(&text[end_of_trace..], body, "{data:?}: {:?}", String::from_utf8_lossy(text));
        s.clear();
    }
}

#[test]
fn unknown_recipients_hit_the_smtp_hard_error_limit() {
    let s = start(config());
    let mut c = Client::smtp(&s.smtp);
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    let mut replies = Vec::new();
    for i in 0..20 {
        c.send(format!("RCPT TO:<nobody{i}@example.org>\r\n").as_bytes());
        replies.push(c.line());
    }
    // As Postfix: the 20th error gets its own reply, then 421 and close,
    // without waiting for another command (sending one could meet the
    // closed socket, and its reset could discard the 421 unread).
    replies.push(c.line());
    assert_eq!(replies.len(), 21, "{replies:?}");
    assert!(replies[..20].iter().all(|r| r.starts_with("550 5.1.1")), "{replies:?}");
    assert!(replies[20].starts_with("421 4.7.0"), "{replies:?}");
    assert_eq!(c.line(), "", "closed after the 421");
}

#[test]
fn a_delivery_resets_the_error_count() {
    let s = start(config());
    let mut c = Client::smtp(&s.smtp);
    for round in 0..3 {
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        for i in 0..15 {
            assert!(c.cmd(&format!("RCPT TO:<nobody{i}@example.org>")).starts_with("550"), "{round}");
        }
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n");
        assert!(c.reply().starts_with("250"), "{round}");
    }
    assert_eq!(s.messages("alice").len(), 3);
}

#[test]
fn good_recipients_and_commands_do_not_count_toward_the_limit() {
    let s = start(config());
    let mut c = Client::smtp(&s.smtp);
    for _ in 0..10 {
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<nobody@example.org>").starts_with("550"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("RSET").starts_with("250"));
    }
    // 10 errors so far; 9 more are still answered normally.
    for _ in 0..9 {
        assert!(c.cmd("FOO").starts_with("500"));
    }
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(c.cmd("BAR").starts_with("500"), "the 20th error is answered");
    assert!(c.line().starts_with("421 4.7.0"), "then the connection closes");
    assert_eq!(c.line(), "");
}

#[test]
fn lmtp_bad_commands_hit_a_limit_but_unknown_recipients_do_not() {
    let s = start(config());
    let mut c = Client::lmtp(&s.lmtp);
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    // An MTA hands over long lists: unknown users are its business.
    for i in 0..50 {
        assert!(c.cmd(&format!("RCPT TO:<nobody{i}@example.org>")).starts_with("550"), "{i}");
    }
    assert!(c.cmd("RSET").starts_with("250"));
    for i in 0..20 {
        assert!(c.cmd("FOO").starts_with("500"), "{i}");
    }
    let last = c.line();
    assert!(last.starts_with("421 4.7.0"), "{last}");
    assert_eq!(c.line(), "", "closed after the 421");
}

// ---------------------------------------------------------------------------
// Big messages: spool, budgets, streaming (finding 4)
// ---------------------------------------------------------------------------

/// A message of about `size` bytes in CRLF lines, some starting with a dot.
fn big_message(size: usize, headers: &str) -> (Vec<u8>, Vec<u8>) {
    let mut content = headers.as_bytes().to_vec();
    content.extend_from_slice(b"\r\n");
    let mut i = 0u64;
    while content.len() < size {
        i += 1;
        let line = if i.is_multiple_of(7) { format!(".dot line {i}\r\n") } else { format!("line {i} {}\r\n", "x".repeat((i % 90) as usize)) };
        content.extend_from_slice(line.as_bytes());
    }
    // As sent: dots stuffed, final dot.
    let mut wire = Vec::new();
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    // As stored: LF line ends.
    let stored = String::from_utf8(content).unwrap().replace("\r\n", "\n").into_bytes();
    (wire, stored)
}

fn spool_files(s: &TestServer) -> usize {
    std::fs::read_dir(s.dir.path().join("spool")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn big_smtp_message_is_spooled_stored_whole_for_every_recipient_and_forged_results_removed() {
    let s = start(config());
    let (wire, stored) = big_message(
        3 * 1024 * 1024,
        "Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=ceo@example.org\r\n\
         \tdkim=pass\r\nFrom: a@sender.test\r\nAuthentication-Results: other.example; none\r\nSubject: big",
    );
    let mut c = Client::smtp(&s.smtp);
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    // Sent in uneven pieces.
    for piece in wire.chunks(77_777) {
        c.send(piece);
    }
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    for user in ["alice", "bob"] {
        let m = s.messages(user);
        assert_eq!(m.len(), 1, "{user}");
        let m = &m[0];
        let body_start = m.windows(9).position(|w| w == b"From: a@s").expect("message follows the trace fields");
        let mut want = stored.clone();
        // The forged field (with its continuation) is gone, the other kept.
        let forged = b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=ceo@example.org\n\tdkim=pass\n";
        assert!(want.starts_with(forged));
        want.drain(..forged.len());
        assert!(m[body_start..] == want[..], "{user}: stored message differs ({} vs {} bytes)", m.len() - body_start, want.len());
    }
    assert_eq!(spool_files(&s), 0, "the spool file has no name, nothing left");
}

#[test]
fn big_lmtp_message_meets_sieve_with_its_real_size() {
    // With the default memory budget Sieve reads the first MiB; with none
    // left, only 64 KiB (the header section): the decision is the same.
    for memory in [32 * 1024 * 1024, 10] {
        let s = start_with(Config { data_memory_max: memory, ..config() }, |dir| {
            std::fs::create_dir_all(dir.join("sieve")).unwrap();
            std::fs::write(
                dir.join("sieve/alice.sieve"),
                "require \"fileinto\";\nif allof (size :over 1M, header :contains \"subject\" \"big\") { fileinto \"Big\"; }\n",
            )
            .unwrap();
        });
        let (wire, stored) = big_message(2 * 1024 * 1024, "From: a@sender.test\r\nSubject: a big one");
        let mut c = Client::lmtp(&s.lmtp);
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(&wire);
        let r = c.reply();
        assert!(r.starts_with("250"), "{r}");
        assert!(s.messages("alice").is_empty(), "{memory}: filed, not in the inbox");
        let folder = s.dir.path().join("mail/alice/.Big/new");
        let files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{memory}");
        assert!(std::fs::read(&files[0]).unwrap().ends_with(&stored), "{memory}");
    }
}

#[test]
fn in_flight_budget_answers_452_and_the_next_small_message_goes_through() {
    let config = Config { data_in_flight_max: 1024 * 1024, ..config() };
    let s = start(config);
    let (wire, _) = big_message(2 * 1024 * 1024, "Subject: too much");
    for (mut c, name) in [(Client::smtp(&s.smtp), "smtp"), (Client::lmtp(&s.lmtp), "lmtp")] {
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(&wire);
        let r = c.reply();
        assert!(r.starts_with("452 4.3.1"), "{name}: {r}");
        assert!(s.messages("alice").is_empty(), "{name}");
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(b"Subject: small\r\n\r\nfits\r\n.\r\n");
        assert!(c.reply().starts_with("250"), "{name}: the budget was given back");
        s.clear();
    }
}

#[test]
fn tiny_memory_budget_spills_small_messages_and_an_unusable_spool_refuses_only_big_ones() {
    // Memory budget smaller than one message: it goes to the spool.
    let s = start(Config { data_memory_max: 10, ..config() });
    let mut c = Client::smtp(&s.smtp);
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: small\r\n\r\nspilled\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(s.messages("alice")[0].ends_with(b"Subject: small\n\nspilled\n"));
    drop(c);
    drop(s);
    // The spool "directory" is a file: small mail still flows, big gets 452.
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let s = start(Config { spool_dir: Some(blocker.path().to_path_buf()), ..config() });
    let mut c = Client::smtp(&s.smtp);
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: small\r\n\r\nin memory\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let (wire, _) = big_message(300 * 1024, "Subject: big");
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&wire);
    let r = c.reply();
    assert!(r.starts_with("452 4.3.1"), "{r}");
    assert_eq!(s.messages("alice").len(), 1);
}

#[test]
fn lmtp_data_deadline_cuts_off_a_trickle() {
    let s = start(Config { data_timeout: Duration::from_secs(2), ..config() });
    let mut c = Client::lmtp(&s.lmtp);
    assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let started = std::time::Instant::now();
    c.writer.set_nonblocking(false).unwrap();
    c.reader.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut reply = String::new();
    // One byte every 100 ms, at most 100 of them (10 s).
    for _ in 0..100 {
        if c.writer.write_all(b"x").is_err() {
            break;
        }
        let mut l = Vec::new();
        if c.reader.read_until(b'\n', &mut l).is_ok() && !l.is_empty() {
            reply = String::from_utf8_lossy(&l).into_owned();
            break;
        }
    }
    assert!(reply.starts_with("421 4.4.2"), "{reply:?} after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(s.messages("alice").is_empty());
}

#[test]
fn spooled_message_is_checked_whole_within_the_memory_budget_else_spf_only() {
    let checks = MailAuthConfig {
        enabled: true,
        // Nothing listens there: only the static record answers.
        resolver: pobox_server::config::DnsResolver::Servers(vec!["127.0.0.1:9".parse().unwrap()]),
        static_txt: vec![("sender.test".into(), "v=spf1 ip4:127.0.0.1 -all".into())],
        timeout: Duration::from_secs(10),
    };
    for (memory, whole) in [(32 * 1024 * 1024, true), (10, false)] {
        let s = start(Config { mail_auth: checks.clone(), data_memory_max: memory, ..config() });
        let (wire, _) = big_message(400 * 1024, "From: a@sender.test\r\nSubject: checked");
        let mut c = Client::smtp(&s.smtp);
        assert!(c.cmd("MAIL FROM:<a@sender.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(&wire);
        assert!(c.reply().starts_with("250"));
        let m = s.messages("alice");
        let text = String::from_utf8_lossy(&m[0]);
        let ar = text.lines().find(|l| l.starts_with("Authentication-Results: mx.example.org")).expect("our header");
        assert!(ar.contains("spf=pass") || text.contains("spf=pass"), "{ar}");
        // A DMARC result (which needs the DKIM check of the whole message)
        // appears only when the message was loaded; else SPF alone.
        let head: String = text.lines().take(12).collect::<Vec<_>>().join("\n");
        assert_eq!(text.contains("dmarc="), whole, "memory budget {memory}: {head}");
    }
}
