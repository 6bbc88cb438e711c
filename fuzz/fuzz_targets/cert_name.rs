//! The node name of a client certificate (`gnbd_serv::tls::cert_node_name`): arbitrary DER
//! must give a name or `None`, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = gnbd_serv::tls::cert_node_name(data) {
        assert!(!name.is_empty());
    }
});
