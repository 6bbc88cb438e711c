//! A hostile client against the server handshake, with the input split at arbitrary points,
//! under each TLS policy (STARTTLS accepted, the "TLS" then starting at once).
#![no_main]
use libfuzzer_sys::fuzz_target;
use nbd_proto::{
    ExportCatalog, ExportInfo, Refusal, ServerConfig, ServerEntry, ServerHandshake, ServerStatus, TlsPolicy,
};

struct One;
impl ExportCatalog for One {
    fn lookup(&self, name: &str, _tls: bool) -> Result<ExportInfo, Refusal> {
        if name.is_empty() || name == "disk" {
            Ok(ExportInfo {
                name: "disk".into(),
                description: String::new(),
                size: 1 << 20,
                flags: 1,
                min_block: 1,
                preferred_block: 4096,
                max_block: 1 << 26,
            })
        } else {
            Err(Refusal::Unknown)
        }
    }
    fn list(&self, _tls: bool) -> Vec<ServerEntry> {
        vec![ServerEntry { name: "disk".into(), description: String::new() }]
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let tls = match split % 3 {
        0 => TlsPolicy::Off,
        1 => TlsPolicy::Selective,
        _ => TlsPolicy::Required,
    };
    let mut hs = ServerHandshake::new(ServerConfig { max_option_len: 512, tls });
    let mut buf = Vec::new();
    for chunk in data.chunks(usize::from(split).max(1)) {
        buf.extend_from_slice(chunk);
        match hs.feed(&buf, &One) {
            Ok((used, ServerStatus::Continue)) => {
                assert!(used <= buf.len());
                buf.drain(..used);
            }
            Ok((used, ServerStatus::StartTls)) => {
                assert!(tls != TlsPolicy::Off, "STARTTLS accepted with TLS off");
                buf.drain(..used);
                hs.tls_started();
            }
            _ => return,
        }
        hs.take_output();
    }
});
