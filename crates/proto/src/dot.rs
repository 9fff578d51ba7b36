//! RFC 1939 §3 multi-line encoding of a stored message: LF→CRLF, byte-stuffing
//! of lines that begin with `.`, the TOP cut, and the terminating `.CRLF`.
//!
//! The encoder is streaming: the server feeds the stored file chunk by chunk
//! and never holds a whole message, so a 100 MiB message costs one buffer.
//!
//! Size rule (RFC 1939 §5, LIST/STAT): the octet count a server announces is
//! the message as sent *before* byte-stuffing, CRLF counted. [`wire_size`]
//! computes exactly that, with the same rules the encoder applies, and a
//! test proves the two agree on arbitrary input.

/// Streaming encoder from stored message bytes to the POP3 wire form.
#[derive(Debug, Clone)]
pub struct WireEncoder {
    at_line_start: bool,
    prev_cr: bool,
    top: Option<TopCut>,
    done: bool,
    /// Octets emitted, not counting stuffing dots or the terminator.
    unstuffed_octets: u64,
}

/// The TOP cut: headers, the blank line, then `body_lines` body lines.
#[derive(Debug, Clone)]
struct TopCut {
    in_headers: bool,
    /// True while the current header line is still empty (so far).
    line_empty: bool,
    body_lines_left: u64,
}

impl WireEncoder {
    /// An encoder for RETR: the whole message.
    pub fn new() -> WireEncoder {
        WireEncoder {
            at_line_start: true,
            prev_cr: false,
            top: None,
            done: false,
            unstuffed_octets: 0,
        }
    }

    /// An encoder for `TOP msg n`: the header, the blank line that ends it,
    /// and the first `body_lines` lines of the body (RFC 1939 §7). `n = 0`
    /// gives the header only; `n` past the end gives the whole body.
    pub fn top(body_lines: u64) -> WireEncoder {
        WireEncoder {
            top: Some(TopCut { in_headers: true, line_empty: true, body_lines_left: body_lines }),
            ..WireEncoder::new()
        }
    }

    /// True once the TOP cut is complete: the caller may stop reading.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Octets sent so far, before byte-stuffing (what LIST announces for RETR).
    pub fn unstuffed_octets(&self) -> u64 {
        self.unstuffed_octets
    }

    /// Encodes the next chunk of the stored message, appending to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 8);
        if self.top.is_none() {
            self.encode_lines(input, out);
            return;
        }
        self.encode_bytes(input, out);
    }

    /// RETR's fast path: copies whole lines found with `memchr`, touching
    /// single bytes only at line starts and ends. Byte-for-byte equal to
    /// [`encode_bytes`](Self::encode_bytes) (a test compares them).
    fn encode_lines(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        while !rest.is_empty() {
            if self.at_line_start && rest[0] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let line = &rest[..i];
                    out.extend_from_slice(line);
                    let cr_before = match line.last() {
                        Some(&b) => b == b'\r',
                        None => self.prev_cr,
                    };
                    if !cr_before {
                        out.push(b'\r');
                        self.unstuffed_octets += 1;
                    }
                    out.push(b'\n');
                    self.unstuffed_octets += i as u64 + 1;
                    self.at_line_start = true;
                    self.prev_cr = false;
                    rest = &rest[i + 1..];
                }
                None => {
                    out.extend_from_slice(rest);
                    self.unstuffed_octets += rest.len() as u64;
                    self.at_line_start = false;
                    self.prev_cr = rest.last() == Some(&b'\r');
                    rest = &[];
                }
            }
        }
    }

    /// The general path, one byte at a time: needed for the TOP cut.
    fn encode_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.done {
                return;
            }
            if let Some(top) = &mut self.top {
                // A body line about to start with nothing left to send ends TOP.
                if !top.in_headers && self.at_line_start && top.body_lines_left == 0 {
                    self.done = true;
                    return;
                }
            }
            if self.at_line_start && b == b'.' {
                out.push(b'.');
            }
            if b == b'\n' {
                if !self.prev_cr {
                    out.push(b'\r');
                    self.unstuffed_octets += 1;
                }
                out.push(b'\n');
                self.unstuffed_octets += 1;
                self.end_of_line();
                self.at_line_start = true;
                self.prev_cr = false;
                continue;
            }
            out.push(b);
            self.unstuffed_octets += 1;
            if let Some(top) = &mut self.top
                && top.in_headers && b != b'\r' {
                    top.line_empty = false;
                }
            self.at_line_start = false;
            self.prev_cr = b == b'\r';
        }
    }

    fn end_of_line(&mut self) {
        if let Some(top) = &mut self.top {
            if top.in_headers {
                if top.line_empty {
                    // The blank line ending the header (RFC 5322 §2.1).
                    top.in_headers = false;
                }
                top.line_empty = true;
            } else {
                top.body_lines_left = top.body_lines_left.saturating_sub(1);
            }
        }
    }

    /// Ends the message: a final CRLF if the stored bytes did not end with a
    /// line break, then the `.CRLF` terminator.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start && !self.done {
            out.extend_from_slice(b"\r\n");
            self.unstuffed_octets += 2;
        }
        out.extend_from_slice(b".\r\n");
        self.done = true;
    }
}

impl Default for WireEncoder {
    fn default() -> Self {
        WireEncoder::new()
    }
}

/// The octets RETR sends for `stored`, before byte-stuffing: every LF not
/// preceded by CR becomes CRLF, and a missing final line break is added.
///
/// This is the number STAT and LIST must report.
pub fn wire_size(stored: &[u8]) -> u64 {
    let mut size = stored.len() as u64;
    let mut prev = 0u8;
    for &b in stored {
        if b == b'\n' && prev != b'\r' {
            size += 1;
        }
        prev = b;
    }
    if !stored.is_empty() && prev != b'\n' {
        size += 2;
    }
    size
}

/// Encodes a whole message in one call (for tests and small messages).
pub fn encode_message(stored: &[u8], top: Option<u64>) -> Vec<u8> {
    let mut enc = match top {
        Some(n) => WireEncoder::top(n),
        None => WireEncoder::new(),
    };
    let mut out = Vec::new();
    enc.encode(stored, &mut out);
    enc.finish(&mut out);
    out
}

/// Removes byte-stuffing from a complete multi-line body (without its
/// terminator): the inverse of [`WireEncoder`] for CRLF input. Used by tests
/// and the dot round-trip fuzz target; the fetcher has its own streaming
/// decoder in [`crate::pop3::client`].
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    let mut at_line_start = true;
    let mut i = 0;
    while i < wire.len() {
        let b = wire[i];
        if at_line_start && b == b'.' && wire.get(i + 1) == Some(&b'.') {
            i += 1;
        }
        out.push(wire[i]);
        at_line_start = wire[i] == b'\n';
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_chunked(stored: &[u8], top: Option<u64>, chunk: usize) -> Vec<u8> {
        let mut enc = match top {
            Some(n) => WireEncoder::top(n),
            None => WireEncoder::new(),
        };
        let mut out = Vec::new();
        for piece in stored.chunks(chunk.max(1)) {
            enc.encode(piece, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    #[test]
    fn lf_becomes_crlf_and_crlf_stays() {
        assert_eq!(encode_message(b"a\nb\r\nc\n", None), b"a\r\nb\r\nc\r\n.\r\n");
    }

    #[test]
    fn dots_are_stuffed_including_the_first_byte() {
        // Stalwart misses the very first byte; Mailpit misses line 1 (survey §2.9).
        assert_eq!(
            encode_message(b".first\n..two\nmid.dle\n.\n", None),
            b"..first\r\n...two\r\nmid.dle\r\n..\r\n.\r\n"
        );
    }

    #[test]
    fn missing_final_newline_is_added() {
        assert_eq!(encode_message(b"a\nb", None), b"a\r\nb\r\n.\r\n");
        assert_eq!(wire_size(b"a\nb"), 6);
    }

    #[test]
    fn bare_cr_is_data_not_a_line_break() {
        assert_eq!(encode_message(b"a\rb\n.x\n", None), b"a\rb\r\n..x\r\n.\r\n");
    }

    #[test]
    fn top_zero_is_headers_only() {
        let msg = b"From: a\nSubject: b\n\nline1\nline2\n";
        assert_eq!(encode_message(msg, Some(0)), b"From: a\r\nSubject: b\r\n\r\n.\r\n");
    }

    #[test]
    fn top_counts_body_lines_not_header_lines() {
        let msg = b"From: a\r\nSubject: b\r\n\r\nline1\r\n.line2\r\nline3\r\n";
        assert_eq!(
            encode_message(msg, Some(2)),
            b"From: a\r\nSubject: b\r\n\r\nline1\r\n..line2\r\n.\r\n"
        );
        // More lines than the body has: the whole body.
        assert_eq!(encode_message(msg, Some(99)), encode_message(msg, None));
    }

    #[test]
    fn top_on_a_message_without_body() {
        assert_eq!(encode_message(b"From: a\n", Some(5)), b"From: a\r\n.\r\n");
    }

    #[test]
    fn every_chunk_size_gives_the_same_bytes() {
        let msg = b"From: x\r\n\r\n.a\n\r\n..b\rc\r\n.\nend";
        for top in [None, Some(0), Some(1), Some(3)] {
            let whole = encode_message(msg, top);
            for chunk in 1..=msg.len() + 1 {
                assert_eq!(encode_chunked(msg, top, chunk), whole, "chunk {chunk} top {top:?}");
            }
        }
    }

    #[test]
    fn the_line_fast_path_equals_the_byte_path() {
        let mut seed = 0x2545f4914f6cdd1du64;
        let alphabet = b".\r\nab";
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 50) as usize;
            let msg: Vec<u8> = (0..len).map(|i| alphabet[((seed >> (i % 61)) as usize + i) % 5]).collect();
            let split = (seed as usize >> 3) % (len + 1);
            let (mut fast, mut slow) = (WireEncoder::new(), WireEncoder::new());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for part in [&msg[..split], &msg[split..]] {
                fast.encode_lines(part, &mut a);
                slow.encode_bytes(part, &mut b);
            }
            fast.finish(&mut a);
            slow.finish(&mut b);
            assert_eq!(a, b, "{msg:?} split at {split}");
            assert_eq!(fast.unstuffed_octets(), slow.unstuffed_octets());
        }
    }

    #[test]
    fn wire_size_equals_octets_sent_before_stuffing() {
        // A small deterministic generator: no rand dependency in a sans-IO crate.
        let mut seed = 0x9e3779b97f4a7c15u64;
        let alphabet = b".\r\nab ";
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let msg: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i % 60)) as usize + i) % alphabet.len()])
                .collect();
            let mut enc = WireEncoder::new();
            let mut out = Vec::new();
            enc.encode(&msg, &mut out);
            enc.finish(&mut out);
            assert_eq!(enc.unstuffed_octets(), wire_size(&msg), "{msg:?}");
            let body = &out[..out.len() - 3];
            assert_eq!(unstuff(body).len() as u64, wire_size(&msg), "{msg:?}");
        }
    }
}
