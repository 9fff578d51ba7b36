//! The fetcher parses replies from servers it does not trust: status
//! lines, capability lists and multi-line bodies, at any chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pobox_proto::pop3::client::fuzz_reply(data);
});
