//! pulse heartbeats from the network: decode never panics, and what decodes re-encodes
//! to the same bytes; the state machine takes any heartbeat.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lvs::pulse::{Heartbeat, Pulse, Role};

fuzz_target!(|data: &[u8]| {
    if let Ok(hb) = Heartbeat::decode(data) {
        assert_eq!(&hb.encode()[..], data);
        let mut p = Pulse::new(Role::Backup, 100, 300, 1, 0);
        let _ = p.on_heartbeat(&hb, 1);
        let _ = p.tick(1000);
        let _ = p.on_heartbeat(&hb, 1001);
    }
});
