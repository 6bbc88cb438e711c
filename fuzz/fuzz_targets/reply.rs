//! Reply headers and chunk payloads, as a client decodes them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nbd_proto::{decode_chunk, decode_reply_header, Decode, ReplyHeader, ReplyMode};

fuzz_target!(|data: &[u8]| {
    for mode in [ReplyMode::Simple, ReplyMode::Structured, ReplyMode::Extended] {
        if let Ok(Decode::Done { value: ReplyHeader::Chunk { kind, length, .. }, consumed }) =
            decode_reply_header(data, mode)
        {
            let rest = &data[consumed..];
            let n = (length as usize).min(rest.len());
            let _ = decode_chunk(kind, &rest[..n], mode);
        }
    }
});
