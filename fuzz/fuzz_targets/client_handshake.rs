//! A hostile server against the client handshake.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nbd_proto::{ClientConfig, ClientHandshake, ClientStatus};

fuzz_target!(|data: &[u8]| {
    let mut input = b"NBDMAGICIHAVEOPT\x00\x03".to_vec();
    input.extend_from_slice(data);
    let tls = ClientConfig { starttls: true, ..ClientConfig::open("disk") };
    for cfg in [ClientConfig::open("disk"), ClientConfig::listing(), tls] {
        let mut hs = ClientHandshake::new(cfg);
        let mut at = 0;
        while at < input.len() {
            match hs.feed(&input[at..]) {
                Ok((used, ClientStatus::Continue)) if used > 0 => at += used,
                Ok((used, ClientStatus::StartTls)) => {
                    at += used;
                    hs.tls_started();
                }
                _ => break,
            }
            hs.take_output();
        }
    }
});
