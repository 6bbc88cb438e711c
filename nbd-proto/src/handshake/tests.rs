use proptest::prelude::*;

use super::client::*;
use super::server::*;
use crate::consts::*;
use crate::option::*;
use crate::transmission::ReplyMode;
use crate::wire::Decode;

struct Catalog;

impl ExportCatalog for Catalog {
    fn lookup(&self, name: &str, _tls: bool) -> Result<ExportInfo, Refusal> {
        let name = if name.is_empty() { "disk" } else { name };
        match name {
            "disk" | "ro" => Ok(ExportInfo {
                name: name.into(),
                description: format!("{name} export"),
                size: 1 << 30,
                flags: NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | if name == "ro" { NBD_FLAG_READ_ONLY } else { 0 },
                min_block: 1,
                preferred_block: 4096,
                max_block: 64 << 20,
            }),
            "fenced" => Err(Refusal::Policy("node is fenced".into())),
            _ => Err(Refusal::Unknown),
        }
    }
    fn list(&self, _tls: bool) -> Vec<ServerEntry> {
        vec![
            ServerEntry { name: "disk".into(), description: "disk export".into() },
            ServerEntry { name: "ro".into(), description: String::new() },
        ]
    }
}

/// Runs both machines against each other, delivering `chunk` bytes at a time.
fn converse(cfg: ClientConfig, chunk: usize) -> (Result<ClientStatus, ClientError>, Option<ServerStatus>) {
    let mut server = ServerHandshake::new(ServerConfig::default());
    let mut client = ClientHandshake::new(cfg);
    let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
    let mut server_done = None;
    // Bytes "delivered" so far in each direction grow by `chunk` per round.
    let (mut avail_c, mut avail_s) = (0usize, 0usize);
    for _ in 0..100_000 {
        to_client.extend(server.take_output());
        avail_c += chunk;
        let n = avail_c.min(to_client.len());
        let (used, status) = match client.feed(&to_client[..n]) {
            Ok(x) => x,
            Err(e) => return (Err(e), server_done),
        };
        to_client.drain(..used);
        avail_c -= used.min(avail_c);
        to_server.extend(client.take_output());
        if status != ClientStatus::Continue {
            // Let the server see the final bytes (e.g. the ABORT after a listing).
            if server_done.is_none() && !to_server.is_empty() {
                if let Ok((_, s)) = server.feed(&to_server, &Catalog) {
                    server_done = Some(s);
                }
            }
            return (Ok(status), server_done);
        }
        if server_done.is_none() {
            avail_s += chunk;
            let n = avail_s.min(to_server.len());
            let (used, s) = server.feed(&to_server[..n], &Catalog).expect("server accepts a well-behaved client");
            to_server.drain(..used);
            avail_s -= used.min(avail_s);
            if s != ServerStatus::Continue {
                server_done = Some(s);
            }
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn full_featured_client_gets_extended_headers_and_base_allocation() {
    for chunk in [1, 7, 4096] {
        let (client, server) = converse(ClientConfig::open("disk"), chunk);
        let ClientStatus::Done(n) = client.unwrap() else { panic!("not done") };
        assert_eq!(n.mode, ReplyMode::Extended);
        assert_eq!(n.size, 1 << 30);
        assert_eq!(n.base_allocation, Some(BASE_ALLOCATION_ID));
        assert_eq!(n.block_size, Some((1, 4096, 64 << 20)));
        assert_eq!(n.name.as_deref(), Some("disk"));
        assert_eq!(n.description.as_deref(), Some("disk export"));
        assert_ne!(n.flags & NBD_FLAG_SEND_DF, 0);
        let Some(ServerStatus::Done(s)) = server else { panic!("server not done: {server:?}") };
        assert_eq!(s.flags, n.flags);
        assert_eq!(s.mode, ReplyMode::Extended);
        assert_eq!(s.base_allocation, Some(BASE_ALLOCATION_ID));
    }
}

#[test]
fn structured_only_and_simple_clients() {
    let cfg = ClientConfig { extended: false, ..ClientConfig::open("ro") };
    let ClientStatus::Done(n) = converse(cfg, 64).0.unwrap() else { panic!() };
    assert_eq!(n.mode, ReplyMode::Structured);
    assert_ne!(n.flags & NBD_FLAG_READ_ONLY, 0);
    let cfg = ClientConfig { extended: false, structured: false, base_allocation: false, ..ClientConfig::open("") };
    let ClientStatus::Done(n) = converse(cfg, 64).0.unwrap() else { panic!() };
    assert_eq!(n.mode, ReplyMode::Simple);
    assert_eq!(n.name.as_deref(), Some("disk"), "the empty name resolves to the default export");
    assert_eq!(n.flags & NBD_FLAG_SEND_DF, 0, "DF only with structured replies");
}

#[test]
fn listing() {
    let (client, server) = converse(ClientConfig::listing(), 5);
    let ClientStatus::Listed(list) = client.unwrap() else { panic!() };
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].name, "disk");
    assert_eq!(list[0].description, "disk export");
    assert_eq!(server, Some(ServerStatus::Abort));
}

#[test]
fn refusals_reach_the_client() {
    let err = converse(ClientConfig::open("nope"), 64).0.unwrap_err();
    assert!(matches!(err, ClientError::Refused { kind: NBD_REP_ERR_UNKNOWN, .. }), "{err:?}");
    let err = converse(ClientConfig::open("fenced"), 64).0.unwrap_err();
    match err {
        ClientError::Refused { kind: NBD_REP_ERR_POLICY, message, .. } => assert_eq!(message, "node is fenced"),
        other => panic!("{other:?}"),
    }
}

/// Feeds raw client bytes to a server and returns the option replies it produced.
fn replies(bytes: &[u8]) -> (Vec<(u32, u32, Vec<u8>)>, ServerStatus) {
    let mut server = ServerHandshake::new(ServerConfig { tls: TlsPolicy::Off, max_option_len: 1024 });
    server.take_output();
    let (used, status) = server.feed(bytes, &Catalog).unwrap();
    assert!(used <= bytes.len());
    let out = server.take_output();
    let mut res = Vec::new();
    let mut at = 0;
    while at < out.len() {
        match decode_option_reply_header(&out[at..]).unwrap() {
            Decode::Done { value, consumed } => {
                let data = out[at + consumed..at + consumed + value.length as usize].to_vec();
                res.push((value.option, value.kind, data));
                at += consumed + value.length as usize;
            }
            Decode::NeedMore { .. } => break, // EXPORT_NAME reply is not an option reply
        }
    }
    (res, status)
}

fn flags_then(opts: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes().to_vec();
    for (o, d) in opts {
        encode_option(&mut b, *o, d);
    }
    b
}

#[test]
fn unknown_options_get_unsup_and_the_session_goes_on() {
    let mut go = Vec::new();
    InfoRequest { name: "disk".into(), infos: vec![] }.encode(&mut go);
    let (r, status) = replies(&flags_then(&[(0x1234, vec![1, 2, 3]), (NBD_OPT_PEEK_EXPORT, vec![]), (NBD_OPT_GO, go)]));
    assert_eq!(r[0].1, NBD_REP_ERR_UNSUP);
    assert_eq!(r[1].1, NBD_REP_ERR_UNSUP);
    assert!(matches!(status, ServerStatus::Done(_)));
}

#[test]
fn info_matches_go() {
    let mut go = Vec::new();
    InfoRequest { name: "disk".into(), infos: vec![NBD_INFO_BLOCK_SIZE] }.encode(&mut go);
    let (r, _) =
        replies(&flags_then(&[(NBD_OPT_STRUCTURED_REPLY, vec![]), (NBD_OPT_INFO, go.clone()), (NBD_OPT_GO, go)]));
    let infos: Vec<_> = r.iter().filter(|x| x.1 == NBD_REP_INFO).map(|x| x.2.clone()).collect();
    assert_eq!(infos.len(), 4);
    assert_eq!(infos[0..2], infos[2..4]);
}

#[test]
fn oversized_option_is_skipped_and_refused() {
    let mut bytes = flags_then(&[]);
    bytes.extend_from_slice(&NBD_IHAVEOPT.to_be_bytes());
    bytes.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    bytes.extend_from_slice(&5000u32.to_be_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 5000));
    encode_option(&mut bytes, NBD_OPT_LIST, &[]);
    let (r, status) = replies(&bytes);
    assert_eq!(status, ServerStatus::Continue);
    assert_eq!(r[0].1, NBD_REP_ERR_TOO_BIG);
    assert_eq!(r.last().unwrap().1, NBD_REP_ACK);
}

#[test]
fn malformed_options_get_invalid() {
    let (r, _) = replies(&flags_then(&[
        (NBD_OPT_GO, vec![0, 0, 0, 9, b'x']),
        (NBD_OPT_LIST, vec![1]),
        (NBD_OPT_STRUCTURED_REPLY, vec![1]),
        (NBD_OPT_SET_META_CONTEXT, vec![]),
    ]));
    assert!(r.iter().all(|x| x.1 == NBD_REP_ERR_INVALID), "{r:?}");
    assert_eq!(r.len(), 4);
}

#[test]
fn set_meta_for_another_export_does_not_carry_over() {
    let mut meta = Vec::new();
    MetaContextRequest { export: "ro".into(), queries: vec![BASE_ALLOCATION.into()] }.encode(&mut meta);
    let mut go = Vec::new();
    InfoRequest { name: "disk".into(), infos: vec![] }.encode(&mut go);
    let (r, status) =
        replies(&flags_then(&[(NBD_OPT_STRUCTURED_REPLY, vec![]), (NBD_OPT_SET_META_CONTEXT, meta), (NBD_OPT_GO, go)]));
    assert!(r.iter().any(|x| x.1 == NBD_REP_META_CONTEXT));
    let ServerStatus::Done(n) = status else { panic!() };
    assert_eq!(n.base_allocation, None);
}

#[test]
fn bad_client_flags_and_magic_end_the_session() {
    let mut server = ServerHandshake::new(ServerConfig::default());
    assert!(server.feed(&0xffu32.to_be_bytes(), &Catalog).is_err());
    let mut server = ServerHandshake::new(ServerConfig::default());
    let mut bytes = 1u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(b"GARBAGE!GARBAGE!");
    assert!(server.feed(&bytes, &Catalog).is_err());
}

#[test]
fn export_name_with_and_without_zeroes() {
    for (cflags, len) in [(NBD_FLAG_C_FIXED_NEWSTYLE, 134), (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, 10)] {
        let mut server = ServerHandshake::new(ServerConfig::default());
        server.take_output();
        let mut bytes = cflags.to_be_bytes().to_vec();
        encode_option(&mut bytes, NBD_OPT_EXPORT_NAME, b"disk");
        let (_, status) = server.feed(&bytes, &Catalog).unwrap();
        assert!(matches!(status, ServerStatus::Done(_)));
        assert_eq!(server.take_output().len(), len);
    }
    let mut server = ServerHandshake::new(ServerConfig::default());
    let mut bytes = 1u32.to_be_bytes().to_vec();
    encode_option(&mut bytes, NBD_OPT_EXPORT_NAME, b"missing");
    assert!(matches!(server.feed(&bytes, &Catalog).unwrap().1, ServerStatus::Close(_)));
}

proptest! {
    #[test]
    fn server_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256), prefix: bool) {
        let mut input = if prefix { flags_then(&[]) } else { Vec::new() };
        input.extend(bytes);
        let mut server = ServerHandshake::new(ServerConfig::default());
        let _ = server.feed(&input, &Catalog);
    }

    #[test]
    fn client_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut greeting = Vec::new();
        greeting.extend_from_slice(&NBD_MAGIC.to_be_bytes());
        greeting.extend_from_slice(&NBD_IHAVEOPT.to_be_bytes());
        greeting.extend_from_slice(&3u16.to_be_bytes());
        greeting.extend(bytes);
        let mut client = ClientHandshake::new(ClientConfig::open("disk"));
        let _ = client.feed(&greeting);
    }
}

/// Drives a client and a server byte-exactly, both sides "starting TLS" (no cipher here) when
/// told to, until the client finishes.
fn converse_tls(cfg: ClientConfig, policy: TlsPolicy) -> (Result<ClientStatus, ClientError>, Vec<ServerStatus>) {
    let mut server = ServerHandshake::new(ServerConfig { tls: policy, ..ServerConfig::default() });
    let mut client = ClientHandshake::new(cfg);
    let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
    let mut seen = Vec::new();
    for _ in 0..1000 {
        to_client.extend(server.take_output());
        let (used, status) = match client.feed(&to_client) {
            Ok(x) => x,
            Err(e) => return (Err(e), seen),
        };
        to_client.drain(..used);
        to_server.extend(client.take_output());
        match status {
            ClientStatus::Continue => {}
            ClientStatus::StartTls => {
                client.tls_started();
                to_server.extend(client.take_output());
            }
            done => return (Ok(done), seen),
        }
        let (used, s) = server.feed(&to_server, &Catalog).expect("server accepts the client");
        to_server.drain(..used);
        match s {
            ServerStatus::Continue => {}
            ServerStatus::StartTls => {
                assert!(to_server.is_empty(), "the client sent plain text after STARTTLS");
                server.tls_started();
                seen.push(s);
            }
            other => seen.push(other),
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn starttls_then_full_negotiation() {
    for policy in [TlsPolicy::Selective, TlsPolicy::Required] {
        let cfg = ClientConfig { starttls: true, ..ClientConfig::open("disk") };
        let (client, server) = converse_tls(cfg, policy);
        let ClientStatus::Done(n) = client.unwrap() else { panic!("not done") };
        assert_eq!(n.mode, ReplyMode::Extended);
        assert_eq!(n.base_allocation, Some(BASE_ALLOCATION_ID));
        assert_eq!(server[0], ServerStatus::StartTls);
        let Some(ServerStatus::Done(s)) = server.get(1) else { panic!("server not done: {server:?}") };
        assert!(s.tls, "the server must know the session runs over TLS");
    }
}

#[test]
fn starttls_refused_by_a_plain_server_and_plain_client_refused_by_a_tls_server() {
    let cfg = ClientConfig { starttls: true, ..ClientConfig::open("disk") };
    let (client, _) = converse_tls(cfg, TlsPolicy::Off);
    assert!(
        matches!(client, Err(ClientError::Refused { option: NBD_OPT_STARTTLS, kind: NBD_REP_ERR_POLICY, .. })),
        "{client:?}"
    );
    let (client, _) = converse_tls(ClientConfig::open("disk"), TlsPolicy::Required);
    // The client's first option (extended headers) is refused with TLS_REQD, then GO too.
    assert!(matches!(client, Err(ClientError::Refused { kind: NBD_REP_ERR_TLS_REQD, .. })), "{client:?}");
}

#[test]
fn plain_text_options_are_forgotten_after_starttls() {
    let mut server = ServerHandshake::new(ServerConfig { tls: TlsPolicy::Selective, ..ServerConfig::default() });
    let mut input = Vec::new();
    input.extend_from_slice(&NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
    encode_option(&mut input, NBD_OPT_STRUCTURED_REPLY, &[]);
    encode_option(&mut input, NBD_OPT_STARTTLS, &[]);
    let (used, s) = server.feed(&input, &Catalog).unwrap();
    assert_eq!((used, s), (input.len(), ServerStatus::StartTls));
    server.tls_started();
    let mut go = Vec::new();
    InfoRequest { name: "disk".into(), infos: vec![] }.encode(&mut go);
    let mut input = Vec::new();
    encode_option(&mut input, NBD_OPT_GO, &go);
    let (_, s) = server.feed(&input, &Catalog).unwrap();
    let ServerStatus::Done(n) = s else { panic!("{s:?}") };
    assert_eq!(n.mode, ReplyMode::Simple, "structured replies chosen before STARTTLS must not survive it");
    assert!(n.tls);
}
