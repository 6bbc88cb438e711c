//! DLM local client frames (what dlm_controld reads from programs): decoding never panics,
//! and what decodes re-encodes to the same bytes.
#![no_main]
use dlm::{decode_request, decode_response, encode_request, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Frame::Done(req, seq, used)) = decode_request(data) {
        let mut out = Vec::new();
        encode_request(&req, seq, &mut out);
        assert_eq!(&out[..], &data[..used]);
    }
    let _ = decode_response(data);
});
