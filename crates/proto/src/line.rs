//! A bounded line splitter for line-based protocols (POP3 commands, SASL
//! continuations, the fetcher's status lines).
//!
//! Lines end in LF; a CR before it is stripped. RFC 1939 says CRLF, but a
//! client that sends a bare LF means the same thing and refusing it helps
//! nobody (Dovecot accepts it too). A line longer than the limit is reported
//! once as [`Split::TooLong`] and then discarded up to its end, so an attacker
//! cannot make the server buffer an unbounded line.

/// What [`LineSplitter::split`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Split<'a> {
    /// No complete line yet. The caller drops `consumed` bytes (non-zero only
    /// while the tail of an overlong line is being discarded) and reads more.
    NeedMoreData {
        /// Bytes the caller must remove from the front of its buffer.
        consumed: usize,
    },
    /// A complete line, without its CRLF/LF.
    Line {
        /// The line's content.
        line: &'a [u8],
        /// Bytes the caller must remove from the front of its buffer.
        consumed: usize,
    },
    /// The line at the front exceeds the limit. Reported once when it is
    /// found (`continued: false`), then again for every further `max`
    /// octets without a line end (`continued: true`), so that a peer
    /// streaming endless garbage can be counted and cut off.
    TooLong {
        /// Bytes the caller must remove from the front of its buffer.
        consumed: usize,
        /// True for the reports after the first, for the same line.
        continued: bool,
    },
}

/// Splits a byte stream into bounded lines. Holds only the "discarding the
/// rest of an overlong line" flag; the caller owns the buffer.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    max: usize,
    discarding: bool,
    /// Octets discarded since the last report.
    discarded: usize,
}

impl LineSplitter {
    /// A splitter accepting lines of at most `max` octets, line ending included.
    ///
    /// # Panics
    /// If `max` is smaller than 3 (no room for a character and CRLF).
    pub fn new(max: usize) -> LineSplitter {
        assert!(max >= 3, "a line limit must leave room for CRLF");
        LineSplitter { max, discarding: false, discarded: 0 }
    }

    /// Looks for the next line at the front of `buf`.
    pub fn split<'a>(&mut self, buf: &'a [u8]) -> Split<'a> {
        if self.discarding {
            return match memchr_lf(buf) {
                Some(pos) => {
                    self.discarding = false;
                    self.discarded = 0;
                    // The overlong line was already reported; drop its tail
                    // and look at what follows on the next call.
                    Split::NeedMoreData { consumed: pos + 1 }
                }
                None => {
                    self.discarded += buf.len();
                    if self.discarded >= self.max {
                        self.discarded -= self.max;
                        Split::TooLong { consumed: buf.len(), continued: true }
                    } else {
                        Split::NeedMoreData { consumed: buf.len() }
                    }
                }
            };
        }
        let window = &buf[..buf.len().min(self.max)];
        match memchr_lf(window) {
            Some(pos) => {
                let mut line = &buf[..pos];
                if let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                Split::Line { line, consumed: pos + 1 }
            }
            None if buf.len() >= self.max => match memchr_lf(&buf[self.max..]) {
                // The whole overlong line is already here: drop exactly it.
                Some(pos) => Split::TooLong { consumed: self.max + pos + 1, continued: false },
                None => {
                    self.discarding = true;
                    self.discarded = buf.len() - self.max;
                    Split::TooLong { consumed: buf.len(), continued: false }
                }
            },
            None => Split::NeedMoreData { consumed: 0 },
        }
    }
}

fn memchr_lf(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes and collects what comes out.
    fn run(input: &[u8], chunk: usize, max: usize) -> Vec<Result<Vec<u8>, ()>> {
        let mut s = LineSplitter::new(max);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match s.split(&buf) {
                    Split::NeedMoreData { consumed } => {
                        buf.drain(..consumed);
                        if consumed == 0 || buf.is_empty() {
                            break;
                        }
                    }
                    Split::Line { line, consumed } => {
                        out.push(Ok(line.to_vec()));
                        buf.drain(..consumed);
                    }
                    Split::TooLong { consumed, continued } => {
                        if !continued {
                            out.push(Err(()));
                        }
                        buf.drain(..consumed);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn splits_crlf_and_bare_lf_at_every_chunk_size() {
        let input = b"USER mrose\r\nPASS secret\nSTAT\r\n\r\npartial";
        for chunk in 1..=input.len() {
            assert_eq!(
                run(input, chunk, 64),
                vec![
                    Ok(b"USER mrose".to_vec()),
                    Ok(b"PASS secret".to_vec()),
                    Ok(b"STAT".to_vec()),
                    Ok(b"".to_vec()),
                ],
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn overlong_line_is_reported_once_and_skipped() {
        let mut input = vec![b'A'; 1000];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        for chunk in [1, 7, 16, 100, 1000, 2000] {
            assert_eq!(
                run(&input, chunk, 255),
                vec![Err(()), Ok(b"NOOP".to_vec())],
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn endless_garbage_keeps_being_reported() {
        let mut s = LineSplitter::new(100);
        let mut buf: Vec<u8> = Vec::new();
        let (mut first, mut continued) = (0, 0);
        for _ in 0..100 {
            buf.extend_from_slice(&[b'x'; 30]);
            let consumed = match s.split(&buf) {
                Split::TooLong { consumed, continued: false } => {
                    first += 1;
                    consumed
                }
                Split::TooLong { consumed, continued: true } => {
                    continued += 1;
                    consumed
                }
                Split::NeedMoreData { consumed } => consumed,
                Split::Line { .. } => panic!("no line end was sent"),
            };
            buf.drain(..consumed);
        }
        // 3,000 octets: one report at the limit, then one per further 100.
        assert_eq!(first, 1);
        assert!((28..=29).contains(&continued), "{continued}");
        buf.extend_from_slice(b"\nNOOP\n");
        assert_eq!(s.split(&buf), Split::NeedMoreData { consumed: 1 });
        assert_eq!(s.split(b"NOOP\n"), Split::Line { line: b"NOOP", consumed: 5 });
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted() {
        let mut input = vec![b'A'; 253];
        input.extend_from_slice(b"\r\n");
        assert_eq!(run(&input, 10, 255), vec![Ok(vec![b'A'; 253])]);
        let mut input = vec![b'A'; 254];
        input.extend_from_slice(b"\r\n");
        assert_eq!(run(&input, 10, 255), vec![Err(())]);
    }
}
