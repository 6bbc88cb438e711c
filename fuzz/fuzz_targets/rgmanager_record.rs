//! rgmanager's service record (a DLM value block) against arbitrary bytes: decoding never
//! panics, and what decodes encodes back to bytes that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rgmanager::record::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(r)) = Record::decode(data) {
        assert_eq!(Record::decode(&r.encode()), Ok(Some(r)));
    }
});
