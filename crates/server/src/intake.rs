//! What LMTP and SMTP intake share: the DATA body receiver and the
//! sanitising of peer text. One copy, so a fix to either reaches both.

use std::slice::Iter;

use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};

/// Keeps peer-supplied text from breaking a header or reply line.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(256).collect()
}

/// A message being received after `DATA`: un-dot-stuffed by smtp-proto,
/// bounded by the configured size.
pub(crate) struct Body {
    sink: Sink,
    message: Vec<u8>,
}

enum Sink {
    Collect(DataReceiver),
    /// The message exceeded SIZE: swallow the rest and refuse it.
    Discard(DummyDataReceiver),
}

impl Body {
    /// A receiver for a new message.
    pub(crate) fn new() -> Body {
        let mut data = DataReceiver::new();
        // smtp-proto's receiver starts as if mid-line; prime it with a line
        // end so a dot on the very first line (an empty message, or a
        // stuffed "..") is seen as such.
        let mut scratch = Vec::new();
        data.ingest(&mut b"\r\n".iter(), &mut scratch);
        Body { sink: Sink::Collect(data), message: Vec::new() }
    }

    /// Feeds DATA bytes; true when the final dot was seen. Past `max`
    /// octets it stops storing and only looks for the end.
    pub(crate) fn ingest(&mut self, bytes: &mut Iter<'_, u8>, max: u64) -> bool {
        match &mut self.sink {
            Sink::Collect(receiver) => {
                let done = receiver.ingest(bytes, &mut self.message);
                if !done && self.message.len() as u64 > max {
                    self.sink = Sink::Discard(DummyDataReceiver::new_data(receiver));
                    self.message = Vec::new();
                }
                done
            }
            Sink::Discard(receiver) => receiver.ingest(bytes),
        }
    }

    /// The complete message, or `None` if it was larger than `max`.
    pub(crate) fn finish(self, max: u64) -> Option<Vec<u8>> {
        match self.sink {
            Sink::Collect(_) if self.message.len() as u64 <= max => Some(self.message),
            _ => None,
        }
    }
}
