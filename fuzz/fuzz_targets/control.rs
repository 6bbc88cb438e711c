//! The local control protocol every daemon speaks (`daemon::control`): any byte stream, read
//! through the one framing (`read_line`) with however small a buffer, gives lines, and every
//! line decodes into each daemon's request type or a `bad_request` error, never a panic; a
//! request that decodes encodes back to an equal one. Replies decode to a value or a
//! protocol error.
#![no_main]
use daemon::control::{decode_reply, decode_request, encode, read_line, ErrorKind, Line};
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
    // The first byte picks the read buffer's size, so the framing sees every way of splitting.
    let Some((&cap, rest)) = data.split_first() else { return };
    let mut r = std::io::BufReader::with_capacity(usize::from(cap).max(1), rest);
    while let Ok(Line::Complete(line)) = read_line(&mut r) {
        assert!(!line[..line.len() - 1].contains(&b'\n'));
        check::<gnbd_serv::control::ControlRequest>(&line);
        check::<lvs::control::Request>(&line);
        let _ = decode_reply::<serde_json::Value>(&line);
        let _ = decode_reply::<gnbd_serv::control::ControlReply>(&line);
    }
});
