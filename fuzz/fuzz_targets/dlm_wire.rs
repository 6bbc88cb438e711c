//! DLM node-to-node frames: decoding never panics, and what decodes re-encodes to the same
//! bytes.
#![no_main]
use dlm::{decode, encode, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Frame(msg, used)) = decode(data) {
        let mut out = Vec::new();
        encode(&msg, &mut out);
        assert_eq!(&out[..], &data[..used]);
    }
});
