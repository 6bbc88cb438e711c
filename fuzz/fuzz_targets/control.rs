//! The local control protocol every daemon speaks (`daemon::control`): any byte stream,
//! split into lines however it arrives, gives lines or "too long", and every line decodes
//! into each daemon's request type or a `bad_request` error, never a panic; a request that
//! decodes encodes back to an equal one. Replies decode to a value or a protocol error.
#![no_main]
use daemon::control::{decode_reply, decode_request, encode, ErrorKind, Line, LineDecoder};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn check<R: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(line: &[u8]) {
    match decode_request::<R>(line) {
        Ok(req) => {
            let again = encode(&req).expect("a decoded request encodes");
            assert_eq!(decode_request::<R>(&again).expect("re-decodes"), req);
        }
        Err(e) => assert!(matches!(e.kind, ErrorKind::BadRequest | ErrorKind::TooLarge), "{e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so the decoder sees every way of splitting.
    let Some((&cut, rest)) = data.split_first() else { return };
    let mut dec = LineDecoder::new(4096);
    for chunk in rest.chunks(usize::from(cut).max(1)) {
        dec.push(chunk);
        loop {
            match dec.next_line() {
                Line::Complete(line) => {
                    assert!(!line.contains(&b'\n'));
                    check::<gnbd_serv::control::ControlRequest>(&line);
                    check::<lvs::control::Request>(&line);
                    let _ = decode_reply::<serde_json::Value>(&line);
                    let _ = decode_reply::<gnbd_serv::control::ControlReply>(&line);
                }
                Line::NeedMore => break,
                Line::TooLong => return,
            }
        }
    }
});
