//! fenced group messages (from other cluster nodes) against arbitrary bytes: never panics;
//! what decodes re-encodes to a message that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = cluster::msg::Msg::decode(data) {
        assert_eq!(cluster::msg::Msg::decode(&m.encode()).expect("re-encoded message decodes"), m);
    }
});
