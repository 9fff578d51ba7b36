//! Byte-stuffing round trip: for any stored message, the wire form
//! un-stuffs to the CRLF-normalised message, its length is what LIST
//! announces, and no line of the body is a lone "." (which would end the
//! response early).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pobox_proto::dot::{WireEncoder, unstuff, wire_size};

fuzz_target!(|data: &[u8]| {
    // Encode in two uneven pieces to cover chunk boundaries.
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut enc = WireEncoder::new();
    let mut out = Vec::new();
    enc.encode(&data[..split], &mut out);
    enc.encode(&data[split..], &mut out);
    enc.finish(&mut out);
    assert!(out.ends_with(b".\r\n"));
    let body = &out[..out.len() - 3];
    assert_eq!(enc.unstuffed_octets(), wire_size(data));
    assert_eq!(unstuff(body).len() as u64, wire_size(data));
    for line in body.split(|&b| b == b'\n') {
        assert_ne!(line, b".\r", "an unstuffed terminator inside the body");
    }
});
