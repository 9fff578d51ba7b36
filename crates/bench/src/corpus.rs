//! The generated messages: a fixed-seed corpus with a realistic size mix,
//! the Maildir files both servers read, and the correctness check every
//! RETR goes through.
//!
//! Every message starts with `X-Bench-Id: <n>`. Servers may prepend trace
//! headers at delivery (Dovecot's LMTP adds `Return-Path`/`Delivered-To`/
//! `Received`), so the content digest covers the wire form from that line
//! to the end of the message.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};

/// SplitMix64: tiny, deterministic forever (no dependency on a crate's
/// generator staying the same across versions).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// One generated message.
#[derive(Debug)]
pub(crate) struct Msg {
    /// As stored in a Maildir: LF line ends.
    pub(crate) stored: Vec<u8>,
    /// As sent on the wire (RETR body, LMTP DATA): CRLF, dot-stuffed, no terminator.
    pub(crate) wire: Vec<u8>,
    /// POP3 size: CRLF octets before stuffing (Dovecot's `W=`).
    pub(crate) pop3_size: u64,
    /// SHA-256 of `wire`.
    pub(crate) digest: [u8; 32],
}

/// The size classes of issue 7: 70% ~4 KiB, 25% ~50 KiB, 5% ~1 MiB.
fn target_size(rng: &mut Rng) -> usize {
    let class = rng.below(100);
    let (centre, spread) = match class {
        0..70 => (4 * 1024, 1024),
        70..95 => (50 * 1024, 12 * 1024),
        _ => (1024 * 1024, 64 * 1024),
    };
    centre - spread + rng.below(2 * spread as u64) as usize
}

const WORDS: &[&str] = &[
    "the", "mail", "server", "pop", "message", "delivery", "of", "and", "to", "in", "queue",
    "maildrop", "retrieve", "octets", "benchmark", "rust", "async", "loopback", "core", "a",
    "fast", "careful", "header", "body", "line", "Dovecot", "pobox", "test", "data", "is",
];

fn generate_one(id: u32, seed: u64, rng: &mut Rng) -> Msg {
    let target = target_size(rng);
    let mut s = Vec::with_capacity(target + 128);
    write!(
        s,
        "X-Bench-Id: {id}\nFrom: Sender {a} <sender{a}@example.org>\nTo: <rcpt@bench.invalid>\n\
         Subject: bench message {id} seed {seed}\nDate: Mon, 01 Jan 2024 00:00:00 +0000\n\
         Message-ID: <{id}.{seed}@bench.invalid>\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=us-ascii\n\n",
        a = rng.below(1000)
    )
    .expect("write to Vec");
    while s.len() < target {
        // One line in 40 starts with a dot, so byte-stuffing is exercised.
        if rng.below(40) == 0 {
            s.push(b'.');
        }
        let words = 4 + rng.below(10);
        for w in 0..words {
            if w > 0 {
                s.push(b' ');
            }
            s.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        }
        s.push(b'\n');
    }
    let wire = to_wire(&s);
    let pop3_size = s.len() as u64 + memchr::memchr_iter(b'\n', &s).count() as u64;
    let digest = Sha256::digest(&wire).into();
    Msg { stored: s, wire, pop3_size, digest }
}

/// LF → CRLF and RFC 1939 §3 byte-stuffing, as a server sends it.
/// `stored` must end with LF (generated messages always do).
pub(crate) fn to_wire(stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len() + stored.len() / 16 + 8);
    encode_lines(stored, &mut out);
    out
}

/// Appends the wire form of `stored` to `out` (the raw sender uses this too).
pub(crate) fn encode_lines(stored: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', stored) {
        let line = &stored[start..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        start = nl + 1;
    }
    if start < stored.len() {
        let line = &stored[start..];
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
}

/// The fixed-seed corpus.
#[derive(Debug)]
pub(crate) struct Corpus {
    pub(crate) seed: u64,
    pub(crate) msgs: Vec<Msg>,
}

impl Corpus {
    /// `n` messages from `seed`; the same arguments always give the same bytes.
    pub(crate) fn generate(seed: u64, n: usize) -> Corpus {
        let mut rng = Rng::new(seed);
        let msgs = (0..n as u32).map(|id| generate_one(id, seed, &mut rng)).collect();
        Corpus { seed, msgs }
    }

    /// Corpus indices for a maildrop of `count` messages of user number `user`.
    pub(crate) fn maildrop(&self, user: usize, count: usize) -> Vec<usize> {
        let mut rng = Rng::new(self.seed ^ (0xD1B5_4A32_D192_ED03u64.wrapping_mul(user as u64 + 1)));
        (0..count).map(|_| rng.below(self.msgs.len() as u64) as usize).collect()
    }

    /// Checks one RETR body (wire form, no terminator) against LIST's size
    /// and the corpus digest. Returns the message's POP3 size.
    ///
    /// # Errors
    /// Any mismatch, with the details: the caller counts it as a
    /// correctness failure.
    pub(crate) fn check_retr(&self, body: &[u8], list_size: u64) -> anyhow::Result<u64> {
        // Octets before byte-stuffing: one stuffed dot per line starting with '.'.
        let stuffed = memchr::memmem::find_iter(body, b"\n.").count() as u64
            + u64::from(body.first() == Some(&b'.'));
        let octets = body.len() as u64 - stuffed;
        ensure!(octets == list_size, "RETR sent {octets} octets but LIST said {list_size}");
        let tail = bench_tail(body).context("message has no X-Bench-Id header")?;
        let id = parse_id(tail).context("unparsable X-Bench-Id")?;
        let msg = self.msgs.get(id).with_context(|| format!("X-Bench-Id {id} not in corpus"))?;
        let digest: [u8; 32] = Sha256::digest(tail).into();
        if digest != msg.digest {
            bail!("content digest mismatch for message {id} ({} octets received from X-Bench-Id on, {} expected)", tail.len(), msg.wire.len());
        }
        Ok(octets)
    }
}

/// The part of a wire-form message from the `X-Bench-Id:` line on.
fn bench_tail(body: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"X-Bench-Id: ";
    if body.starts_with(KEY) {
        return Some(body);
    }
    let head = &body[..body.len().min(64 * 1024)];
    let at = memchr::memmem::find(head, b"\nX-Bench-Id: ")?;
    Some(&body[at + 1..])
}

fn parse_id(tail: &[u8]) -> Option<usize> {
    let rest = &tail[b"X-Bench-Id: ".len()..];
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Writes a Maildir with Dovecot-style names (`,S=<stored>,W=<pop3 size>`)
/// directly into `cur/` (flags `:2,`), so neither server renames anything
/// on first access. Removes whatever was there.
///
/// # Errors
/// File-system errors.
pub(crate) fn write_maildir<'a>(dir: &Path, msgs: impl Iterator<Item = &'a [u8]>) -> anyhow::Result<usize> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let mut n = 0;
    for (seq, stored) in msgs.enumerate() {
        let pop3 = stored.len() + memchr::memchr_iter(b'\n', stored).count();
        let name = format!(
            "{}.M{}P4242.benchhost,S={},W={}:2,",
            1_700_000_000 + seq,
            seq % 1_000_000,
            stored.len(),
            pop3
        );
        fs::write(dir.join("cur").join(name), stored)?;
        n += 1;
    }
    Ok(n)
}

/// An empty Maildir (for idle and deliver users).
///
/// # Errors
/// File-system errors.
pub(crate) fn empty_maildir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_and_checks_itself() {
        let a = Corpus::generate(7, 30);
        let b = Corpus::generate(7, 30);
        for (x, y) in a.msgs.iter().zip(&b.msgs) {
            assert_eq!(x.digest, y.digest);
        }
        for m in &a.msgs {
            assert_eq!(a.check_retr(&m.wire, m.pop3_size).unwrap(), m.pop3_size);
        }
        let mut bad = a.msgs[0].wire.clone();
        let last = bad.len() - 3;
        bad[last] ^= 1;
        assert!(a.check_retr(&bad, a.msgs[0].pop3_size).is_err());
        assert!(a.check_retr(&a.msgs[0].wire, a.msgs[0].pop3_size + 1).is_err());
    }

    #[test]
    fn stuffing() {
        assert_eq!(to_wire(b".a\nb\n..\n"), b"..a\r\nb\r\n...\r\n");
    }
}
