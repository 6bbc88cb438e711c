//! cluster.conf parser against arbitrary bytes: never panics; what it accepts, it writes back
//! to XML that parses to the same model.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(conf) = cluster::conf::parse(text) {
        let again = cluster::conf::parse(&conf.to_xml()).expect("written conf parses");
        assert_eq!(again, conf);
    }
});
