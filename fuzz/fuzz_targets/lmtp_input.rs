//! LMTP (and SMTP) intake as `crates/server/src/mta_loop.rs` drives it for
//! both protocols: commands are cut
//! into whole lines by pobox's `LineSplitter` and each line is parsed with
//! smtp-proto's `Request::parse`; after `DATA`, pobox-proto's `DataReceiver`
//! takes raw bytes until the final dot (the receiver alone has its own
//! target, `data_receiver`).
//!
//! Properties:
//! 1. No panic on any input.
//! 2. Chunking does not matter: the input fed in one piece and in pieces
//!    (sizes from the input itself) yields the same requests and messages,
//!    since TCP may split anywhere. (This target found the bug that made
//!    lmtp.rs switch from smtp-proto's `RequestReceiver` to whole lines.)
//! 3. Round trip: any message, CRLF-normalised and dot-stuffed as an SMTP
//!    client sends it, comes out of the DATA receiver unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pobox_proto::line::{LineSplitter, Split};
use smtp_proto::Request;
use pobox_proto::data::DataReceiver;
use smtp_proto::request::receiver::MAX_LINE_LENGTH;

#[derive(Debug, PartialEq)]
enum Event {
    Request(String),
    Error(String),
    TooLong,
    Message(Vec<u8>),
}

/// The mta_loop.rs loop, minus I/O and delivery.
fn drive(chunks: &[&[u8]]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut lines = LineSplitter::new(MAX_LINE_LENGTH);
    let mut inbuf: Vec<u8> = Vec::new();
    let mut data: Option<DataReceiver> = None;
    let mut message = Vec::new();
    for chunk in chunks {
        inbuf.extend_from_slice(chunk);
        let mut pos = 0;
        while pos < inbuf.len() {
            if let Some(d) = data.as_mut() {
                let (consumed, done) = d.ingest(&inbuf[pos..], &mut message);
                pos += consumed;
                if !done {
                    break;
                }
                events.push(Event::Message(std::mem::take(&mut message)));
                data = None;
                continue;
            }
            match lines.split(&inbuf[pos..]) {
                Split::Line { line, consumed } => {
                    let mut command = line.to_vec();
                    command.extend_from_slice(b"\r\n");
                    pos += consumed;
                    match Request::parse(&mut command.iter()) {
                        Ok(request) => {
                            let request = request.into_owned();
                            if matches!(request, Request::Data) {
                                data = Some(DataReceiver::new());
                                message.clear();
                            }
                            events.push(Event::Request(format!("{request:?}")));
                        }
                        Err(e) => events.push(Event::Error(format!("{e:?}"))),
                    }
                }
                Split::TooLong { consumed, continued } => {
                    pos += consumed;
                    if !continued {
                        events.push(Event::TooLong);
                    }
                }
                Split::NeedMoreData { consumed } => {
                    pos += consumed;
                    if consumed == 0 {
                        break;
                    }
                }
            }
        }
        inbuf.drain(..pos);
    }
    events
}

fn stuff_crlf(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at_start = true;
    let mut prev = 0u8;
    for &b in m {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        if at_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_start = b == b'\n';
        prev = b;
    }
    out
}

fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at_start = true;
    for &b in wire {
        if at_start && b == b'.' {
            at_start = false;
            continue;
        }
        at_start = b == b'\n';
        out.push(b);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        // 2: whole vs. chunked.
        let whole = drive(&[rest]);
        let mut chunks = Vec::new();
        let mut r = rest;
        let mut k = mode as usize;
        while !r.is_empty() {
            k = k.wrapping_mul(31).wrapping_add(7);
            let n = (k % 17 + 1).min(r.len());
            chunks.push(&r[..n]);
            r = &r[n..];
        }
        let split = drive(&chunks);
        assert_eq!(whole, split, "chunking changed the result");
    } else {
        // 3: round trip through DATA. No bare CR in the message (SMTP
        // cannot carry one and lmtp.rs's clients never send one).
        let msg: Vec<u8> = rest.iter().copied().filter(|&b| b != b'\r').collect();
        let mut wire = b"DATA\r\n".to_vec();
        let mut body = stuff_crlf(&msg);
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(&body);
        wire.extend_from_slice(b".\r\n");
        let events = drive(&[&wire]);
        let got = events.iter().find_map(|e| match e {
            Event::Message(m) => Some(m.clone()),
            _ => None,
        });
        // What lmtp.rs stores: the CRLF message, un-stuffed, with the final
        // line end the client had to add.
        let mut want: Vec<u8> = stuff_crlf(&msg).into_iter().collect();
        want = unstuff(&want);
        if !want.is_empty() && !want.ends_with(b"\r\n") {
            want.extend_from_slice(b"\r\n");
        }
        assert_eq!(got.as_deref(), Some(&want[..]), "DATA round trip changed the message; events {events:?}");
    }
});
