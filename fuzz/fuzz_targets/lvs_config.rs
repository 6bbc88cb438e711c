//! lvs.cf parser: any text gives a config or a line-numbered error, never a panic; a
//! config that parses can be loaded into a director table.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match lvs::LvsConfig::parse(text) {
        Ok(cfg) => {
            let mut d = lvs::Director::new();
            let _ = cfg.apply(&mut d);
        }
        Err(e) => assert!(e.line >= 1 && e.line <= text.lines().count().max(1)),
    }
    let _ = lvs::unescape(text);
});
