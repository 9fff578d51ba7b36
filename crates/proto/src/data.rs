//! The SMTP/LMTP `DATA` receiver (RFC 5321 §4.1.1.4, §4.5.2): finds the end
//! of a message and removes the transparency dots, without I/O.
//!
//! # Only `<CRLF>.<CRLF>` ends the data
//! A message ends at a line holding a single dot, and a line ends at CR LF:
//! nothing else. `<LF>.<LF>`, `<CR><LF>.<LF>`, `<LF>.<CR><LF>`,
//! `<CR><LF>.<CR><CR><LF>`, `<CR>.<CR>` and the like are message content.
//! Receivers that accepted any of them (smtp-proto's receiver, which pobox
//! used before, kept looking for the marker across a CR and ended at
//! `<CR><LF>.<CR><CR><LF>`) let a peer hide a second transaction inside a
//! message that an upstream server relayed as one: "SMTP smuggling". The
//! very first line counts as following a line end, so `.<CRLF>` right after
//! the `354` is an empty message.
//!
//! # Dots
//! A line (after a CR LF) that starts with a dot and holds more than that
//! dot loses the dot (§4.5.2). A lone CR or LF does not start a line here,
//! so a dot after one is content and is kept.
//!
//! # Bare CR and bare LF
//! A CR not followed by LF, or an LF not preceded by CR, is passed through
//! unchanged and recorded ([`DataReceiver::saw_bare_cr`],
//! [`DataReceiver::saw_bare_lf`]); the caller decides what a message that
//! holds one deserves (`pobox-server`'s `intake.rs` documents the policy).
//! Deciding it here, after the end of data is known, means no bare line
//! end can move a message boundary whatever the policy.

/// Where the receiver is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CR LF, or at the start of the data).
    LineStart,
    /// A dot at the start of a line was read (not yet emitted).
    Dot,
    /// `.` and CR at the start of a line were read (not yet emitted).
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, a CR was read (not yet emitted).
    Cr,
    /// The final `.<CRLF>` was read.
    Done,
}

/// Incremental DATA receiver; feed it bytes as they arrive, in any pieces.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    state: State,
    bare_cr: bool,
    bare_lf: bool,
}

impl Default for DataReceiver {
    fn default() -> DataReceiver {
        DataReceiver::new()
    }
}

impl DataReceiver {
    /// A receiver at the start of the data (just after the `354`).
    pub fn new() -> DataReceiver {
        DataReceiver { state: State::LineStart, bare_cr: false, bare_lf: false }
    }

    /// Consumes bytes from the front of `input` and appends the message
    /// bytes they carry to `out` (dots removed, CR LF kept). Returns how
    /// many bytes were consumed and whether the end of data was reached;
    /// bytes after the end are not consumed (they are the next command).
    ///
    /// Bytes that may still turn out to be part of the end marker (a CR,
    /// a dot at a line start) are held in the state, not in `out`, until
    /// the next byte decides: the output never has to be taken back.
    pub fn ingest(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Mid {
                // The common case: copy the run up to the next CR or LF.
                let rest = &input[i..];
                let run = rest.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(rest.len());
                out.extend_from_slice(&rest[..run]);
                i += run;
                if i == input.len() {
                    break;
                }
            }
            let b = input[i];
            i += 1;
            self.state = match self.state {
                State::LineStart => match b {
                    b'.' => State::Dot,
                    b'\r' => State::Cr,
                    _ => self.content(b, out),
                },
                State::Dot => match b {
                    b'\r' => State::DotCr,
                    // The dot starts a longer line: it was stuffing.
                    _ => self.content(b, out),
                },
                State::DotCr => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return (i, true);
                    }
                    // `.` CR x: the dot was stuffing, the CR is bare.
                    b'\r' => {
                        self.bare_cr = true;
                        out.push(b'\r');
                        State::Cr
                    }
                    _ => {
                        self.bare_cr = true;
                        out.push(b'\r');
                        self.content(b, out)
                    }
                },
                State::Mid => match b {
                    b'\r' => State::Cr,
                    _ => self.content(b, out),
                },
                State::Cr => match b {
                    b'\n' => {
                        out.extend_from_slice(b"\r\n");
                        State::LineStart
                    }
                    b'\r' => {
                        self.bare_cr = true;
                        out.push(b'\r');
                        State::Cr
                    }
                    _ => {
                        self.bare_cr = true;
                        out.push(b'\r');
                        self.content(b, out)
                    }
                },
                State::Done => return (i - 1, true),
            };
        }
        (i, self.state == State::Done)
    }

    /// One content byte (not CR) inside a line.
    fn content(&mut self, b: u8, out: &mut Vec<u8>) -> State {
        if b == b'\n' {
            self.bare_lf = true;
        }
        out.push(b);
        State::Mid
    }

    /// True once the final `.<CRLF>` has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// A CR not followed by LF was part of the message.
    pub fn saw_bare_cr(&self) -> bool {
        self.bare_cr
    }

    /// An LF not preceded by CR was part of the message.
    pub fn saw_bare_lf(&self) -> bool {
        self.bare_lf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in two pieces cut at `split`; returns (message,
    /// consumed, done, bare CR, bare LF).
    fn run_split(input: &[u8], split: usize) -> (Vec<u8>, usize, bool, bool, bool) {
        let mut r = DataReceiver::new();
        let mut out = Vec::new();
        let (a, done) = r.ingest(&input[..split], &mut out);
        assert!(done || a == split, "consumes all input until the end");
        let (consumed, done) = if done {
            (a, true)
        } else {
            let (b, done) = r.ingest(&input[split..], &mut out);
            (a + b, done)
        };
        (out, consumed, done, r.saw_bare_cr(), r.saw_bare_lf())
    }

    /// Every split point, and byte by byte, must agree with one piece.
    fn check(input: &[u8]) -> (Vec<u8>, usize, bool, bool, bool) {
        let whole = run_split(input, input.len());
        for split in 0..=input.len() {
            assert_eq!(run_split(input, split), whole, "{input:?} split at {split}");
        }
        let mut r = DataReceiver::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        for b in input {
            let (n, done) = r.ingest(std::slice::from_ref(b), &mut out);
            consumed += n;
            if done {
                break;
            }
        }
        assert_eq!((out, consumed, r.is_done(), r.saw_bare_cr(), r.saw_bare_lf()), whole, "{input:?} byte by byte");
        whole
    }

    #[test]
    fn crlf_dot_crlf_ends_and_the_rest_is_left() {
        let input = b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (msg, consumed, done, cr, lf) = check(input);
        assert!(done);
        assert_eq!(msg, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(&input[consumed..], b"QUIT\r\n");
        assert!(!cr && !lf);
    }

    #[test]
    fn a_dot_on_the_first_line_is_an_empty_message() {
        let (msg, consumed, done, ..) = check(b".\r\nNOOP\r\n");
        assert!(done);
        assert_eq!(msg, b"");
        assert_eq!(consumed, 3);
    }

    #[test]
    fn stuffed_dots_are_removed_only_at_a_crlf_line_start() {
        let (msg, _, done, _, lf) = check(b"..first\r\nx\r\n..\r\n...\r\nmid.dle\r\n.\r\n");
        assert!(done && !lf);
        assert_eq!(msg, b".first\r\nx\r\n.\r\n..\r\nmid.dle\r\n");
        // After a bare LF the dot is content.
        let (msg, _, done, _, lf) = check(b"a\n..b\r\n.\r\n");
        assert!(done && lf);
        assert_eq!(msg, b"a\n..b\r\n");
    }

    /// The sequences of issue 17, and more: none of them ends the data;
    /// each is content, and only the real `<CRLF>.<CRLF>` after it ends.
    #[test]
    fn smuggling_sequences_are_content() {
        let cases: &[(&[u8], &[u8], bool, bool)] = &[
            (b"\n.\n", b"\n.\n", false, true),
            (b"\r\n.\n", b"\r\n\n", false, true),
            (b"\n.\r\n", b"\n.\r\n", false, true),
            (b"\r\n.\r\r\n", b"\r\n\r\r\n", true, false),
            (b"\r.\r", b"\r.\r", true, false),
            (b"\r\n.\r", b"\r\n\r", true, false),
            (b"\n.\r\r\n", b"\n.\r\r\n", true, true),
            (b"\r.\r\n", b"\r.\r\n", true, false),
            (b"\r\n.\r.\r\n", b"\r\n\r.\r\n", true, false),
            (b"\r\n\r\n.\n\r\n", b"\r\n\r\n\n\r\n", false, true),
        ];
        for &(seq, content, bare_cr, bare_lf) in cases {
            let mut input = b"before".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"after\r\n.\r\nMAIL FROM:<x@y>\r\n");
            let (msg, consumed, done, cr, lf) = check(&input);
            assert!(done, "{seq:?}");
            let mut expect = b"before".to_vec();
            expect.extend_from_slice(content);
            expect.extend_from_slice(b"after\r\n");
            assert_eq!(msg, expect, "{seq:?}");
            assert_eq!(&input[consumed..], b"MAIL FROM:<x@y>\r\n", "{seq:?}");
            assert_eq!((cr, lf), (bare_cr, bare_lf), "{seq:?}");
        }
    }

    #[test]
    fn without_the_marker_it_never_ends() {
        for input in [&b"abc\r\n."[..], b"abc\r\n.\r", b"\r\n.\n", b".\n", b"x\r\n.\r\r\n", b"\r.\r"] {
            let (_, consumed, done, ..) = check(input);
            assert!(!done, "{input:?}");
            assert_eq!(consumed, input.len());
        }
    }

    #[test]
    fn after_the_end_nothing_more_is_consumed() {
        let mut r = DataReceiver::new();
        let mut out = Vec::new();
        assert_eq!(r.ingest(b".\r\n", &mut out), (3, true));
        assert_eq!(r.ingest(b"more", &mut out), (0, true));
        assert!(out.is_empty());
    }

    /// Round trip: any content, sent as a client must (CRLF lines,
    /// stuffed), comes out unchanged, at every split point.
    #[test]
    fn stuffed_crlf_content_round_trips() {
        let mut seed = 0x2545f4914f6cdd1du64;
        let alphabet = b".\r\nab";
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let raw: Vec<u8> = (0..len).map(|i| alphabet[((seed >> (i % 50)) as usize + i) % alphabet.len()]).collect();
            // As a client: bare CR/LF → CRLF lines, ensure a final CRLF.
            let text = String::from_utf8(raw).unwrap().replace("\r\n", "\n").replace('\r', "\n");
            let mut lines: Vec<&str> = text.split('\n').collect();
            if lines.last() == Some(&"") {
                lines.pop();
            }
            let mut content = Vec::new();
            let mut wire = Vec::new();
            for l in &lines {
                content.extend_from_slice(l.as_bytes());
                content.extend_from_slice(b"\r\n");
                if l.starts_with('.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(l.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\n");
            let (msg, consumed, done, cr, lf) = check(&wire);
            assert!(done && consumed == wire.len() && !cr && !lf, "{wire:?}");
            assert_eq!(msg, content, "{wire:?}");
        }
    }
}
