//! The SMTP/LMTP DATA receiver (`pobox_proto::data`), which both listeners
//! feed raw DATA bytes (issue 17: SMTP smuggling).
//!
//! Properties:
//! 1. No panic on any input.
//! 2. Chunking does not matter: the input in one piece and in pieces (sizes
//!    from the input) gives the same message, end point and flags.
//! 3. The end is exactly the first `<CRLF>.<CRLF>` (the data counting as
//!    preceded by a CRLF), checked against an independent reading of RFC
//!    5321 §4.1.1.4/§4.5.2: lines end at CR LF only, a leading dot is
//!    removed when more follows it on the line, a CR not before LF and an
//!    LF not after CR are reported as bare.
//! 4. Round trip: any message, sent as a client must (CRLF lines, dots
//!    stuffed, final dot), comes out unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pobox_proto::data::DataReceiver;

#[derive(Debug, PartialEq)]
struct Run {
    message: Vec<u8>,
    consumed: usize,
    done: bool,
    bare_cr: bool,
    bare_lf: bool,
}

fn run(chunks: &[&[u8]]) -> Run {
    let mut r = DataReceiver::new();
    let mut message = Vec::new();
    let mut consumed = 0;
    let mut done = false;
    for chunk in chunks {
        let (n, d) = r.ingest(chunk, &mut message);
        consumed += n;
        if d {
            done = true;
            break;
        }
        assert_eq!(n, chunk.len(), "all input is consumed until the end");
    }
    Run { message, consumed, done, bare_cr: r.saw_bare_cr(), bare_lf: r.saw_bare_lf() }
}

/// The reference: where the data ends and what the message is.
fn reference(input: &[u8]) -> Option<Run> {
    let mut v = b"\r\n".to_vec();
    v.extend_from_slice(input);
    let p = v.windows(5).position(|w| w == b"\r\n.\r\n")?;
    // The message is everything before the dot line (with its CRLF).
    let part = &input[..p];
    let mut message = Vec::new();
    let mut rest = part;
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\r\n").expect("lines end in CRLF before the dot");
        let line = &rest[..end];
        let line = if line.len() > 1 && line[0] == b'.' { &line[1..] } else { line };
        message.extend_from_slice(line);
        message.extend_from_slice(b"\r\n");
        rest = &rest[end + 2..];
    }
    let bare_cr = part.iter().enumerate().any(|(i, &b)| b == b'\r' && part.get(i + 1) != Some(&b'\n'));
    let bare_lf = part.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || part[i - 1] != b'\r'));
    Some(Run { message, consumed: p + 3, done: true, bare_cr, bare_lf })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let whole = run(&[rest]);
        // 2: chunked as TCP may deliver it.
        let mut chunks = Vec::new();
        let mut r = rest;
        let mut k = mode as usize;
        while !r.is_empty() {
            k = k.wrapping_mul(31).wrapping_add(7);
            let n = (k % 13 + 1).min(r.len());
            chunks.push(&r[..n]);
            r = &r[n..];
        }
        assert_eq!(run(&chunks), whole, "chunking changed the result");
        // 3: the end and the message, against the reference.
        match reference(rest) {
            Some(want) => assert_eq!(whole, want, "end of data or message differs from RFC 5321"),
            None => {
                assert!(!whole.done, "ended without <CRLF>.<CRLF>: {whole:?}");
                assert_eq!(whole.consumed, rest.len());
            }
        }
    } else {
        // 4: round trip of a well-formed client's DATA.
        let lines: Vec<&[u8]> = rest
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.contains(&b'\r'))
            .collect();
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for l in &lines {
            if l.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(l);
            wire.extend_from_slice(b"\r\n");
            want.extend_from_slice(l);
            want.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        let got = run(&[&wire]);
        assert!(got.done && got.consumed == wire.len() && !got.bare_cr && !got.bare_lf, "{got:?}");
        assert_eq!(got.message, want, "DATA round trip changed the message");
    }
});
