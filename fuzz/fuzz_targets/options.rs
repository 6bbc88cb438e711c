//! Handshake message bodies, both directions.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nbd_proto::{
    decode_option_header, decode_option_reply_header, Info, InfoRequest, MetaContext, MetaContextRequest, ServerEntry,
};

fuzz_target!(|data: &[u8]| {
    let _ = decode_option_header(data);
    let _ = decode_option_reply_header(data);
    if let Ok(r) = InfoRequest::decode(data) {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(InfoRequest::decode(&out).unwrap(), r);
    }
    if let Ok(r) = MetaContextRequest::decode(data) {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(MetaContextRequest::decode(&out).unwrap(), r);
    }
    let _ = Info::decode(data);
    let _ = ServerEntry::decode(data);
    let _ = MetaContext::decode(data);
});
