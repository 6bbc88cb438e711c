//! Request headers in every framing: decoding never panics, and what decodes re-encodes to
//! the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nbd_proto::{decode_request, encode_request, Decode, ReplyMode};

fuzz_target!(|data: &[u8]| {
    for mode in [ReplyMode::Simple, ReplyMode::Structured, ReplyMode::Extended] {
        if let Ok(Decode::Done { value, consumed }) = decode_request(data, mode) {
            let mut out = Vec::new();
            encode_request(&mut out, &value, mode);
            assert_eq!(&out[..], &data[..consumed]);
        }
    }
});
