//! Protocol abuse: malformed handshakes and requests, lies about lengths, clients that
//! vanish mid-request. After every case the server process must still be alive and a
//! separate, well-behaved client must still read correct data from it.
//!
//! Every byte is crafted by hand (see `gnbd_tests::rawclient`).

use gnbd_tests::rawclient::{
    self, read_option_reply, read_simple_reply, read_until_close, send_client_flags, send_option, send_option_header,
    send_request, start_handshake, Ending, RawClient, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_EINVAL,
    NBD_ENOSPC, NBD_EOVERFLOW, NBD_EPERM, NBD_FLAG_READ_ONLY, NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP,
    NBD_REP_FLAG_ERROR,
};
use gnbd_tests::{pattern, write_pattern_file, Server};
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 4 * MIB;
const SEED: u64 = 0xAB05E;
const RO_SEED: u64 = 0xAB05F;
/// How long the server gets to close a connection it must close (a hang bound, not a
/// performance expectation).
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Peak RSS the server must stay under after being offered absurd lengths.
const MAX_RSS_KIB: u64 = 768 * 1024;

/// A server with `disk` (rw, 4 MiB pattern) and `ro` (read-only, 4 MiB pattern).
fn setup() -> Server {
    let server = Server::start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, SIZE, SEED);
    server.export("disk", &disk, &[]);
    let ro = server.path("ro.img");
    write_pattern_file(&ro, SIZE, RO_SEED);
    server.export("ro", &ro, &["-o"]);
    server
}

/// The server is alive and a fresh client reads correct data from it.
fn healthy(server: &mut Server) {
    server.assert_alive();
    let mut c = RawClient::connect(server.addr(), "disk")
        .unwrap_or_else(|e| panic!("a well-behaved client cannot connect: {e}"));
    assert_eq!(c.size(), SIZE, "export size");
    for off in [0, MIB + 4096, SIZE - 65536] {
        assert!(c.read_ok(off, 65536) == pattern(SEED, off, 65536), "healthy client got wrong data at {off}");
    }
    c.disconnect();
    server.assert_alive();
}

fn expect_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let (bytes, ending) = read_until_close(s, CLOSE_WAIT);
    assert_ne!(
        ending,
        Ending::StillOpen,
        "{what}: the server did not close the connection within {CLOSE_WAIT:?} \
         (received {} bytes: {:02x?})",
        bytes.len(),
        &bytes[..bytes.len().min(64)]
    );
    bytes
}

fn negotiated(server: &Server, export: &str) -> RawClient {
    RawClient::connect(server.addr(), export).unwrap_or_else(|e| panic!("handshake with {export}: {e}"))
}

fn check_rss(server: &Server) {
    if let Some(kib) = server.peak_rss_kib() {
        println!("server peak RSS: {kib} KiB");
        assert!(kib < MAX_RSS_KIB, "server peak RSS {kib} KiB: it allocated what a client claimed");
    }
}

#[test]
fn unknown_client_flags_close_the_connection() {
    let mut server = setup();
    let mut s = rawclient::connect(server.addr()).expect("connect");
    rawclient::read_greeting(&mut s).expect("greeting");
    send_client_flags(&mut s, 0xffff_ffff).expect("send flags");
    expect_closed(&mut s, "client flags 0xffffffff");
    healthy(&mut server);
}

#[test]
fn garbage_instead_of_ihaveopt_closes_the_connection() {
    let mut server = setup();
    let mut s = rawclient::connect(server.addr()).expect("connect");
    start_handshake(&mut s).expect("handshake start");
    s.write_all(b"GARBAGE!\x00\x00\x00\x07\x00\x00\x00\x00").expect("send garbage");
    expect_closed(&mut s, "garbage option magic");
    healthy(&mut server);
}

/// The contract: an option claiming 1 GiB must neither be allocated blindly nor hang the
/// client; the server answers with an error or closes, even if the data never comes.
#[test]
fn option_claiming_one_gib_then_silence_is_answered_or_closed() {
    let mut server = setup();
    let mut s = rawclient::connect(server.addr()).expect("connect");
    start_handshake(&mut s).expect("handshake start");
    send_option_header(&mut s, NBD_OPT_GO, 1 << 30).expect("send option header");
    s.write_all(&[0, 0, 0, 4]).expect("send a few data bytes");
    // While that connection is pending, others are served.
    healthy(&mut server);
    let (bytes, ending) = read_until_close(&mut s, CLOSE_WAIT);
    println!("1 GiB option: {ending:?}, {} bytes: {:02x?}", bytes.len(), &bytes[..bytes.len().min(32)]);
    if ending == Ending::StillOpen {
        // Acceptable only if the server answered with an error reply.
        assert!(
            bytes.len() >= 20,
            "the server neither replied nor closed within {CLOSE_WAIT:?} after an option \
             claiming 1 GiB of data (is it waiting for the data?)"
        );
    }
    if bytes.len() >= 20 {
        let r =
            read_option_reply(&mut &bytes[..]).unwrap_or_else(|e| panic!("malformed option reply {bytes:02x?}: {e}"));
        assert!(r.reply_type & NBD_REP_FLAG_ERROR != 0, "non-error reply: {r:?}");
    } else if !bytes.is_empty() {
        panic!("partial reply before close: {bytes:02x?}");
    }
    check_rss(&server);
    healthy(&mut server);
}

/// The spec's way out for a server that does not disconnect: consume the whole claimed
/// length without buffering it, then refuse the option; the session goes on.
#[test]
fn option_with_one_gib_of_data_is_skipped_without_buffering() {
    let mut server = setup();
    let mut s = rawclient::connect(server.addr()).expect("connect");
    start_handshake(&mut s).expect("handshake start");
    send_option_header(&mut s, NBD_OPT_GO, 1 << 30).expect("send option header");
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    let mut send_error = None;
    while sent < 1 << 30 {
        match s.write_all(&chunk) {
            Ok(()) => sent += chunk.len() as u64,
            Err(e) => {
                send_error = Some(e);
                break;
            }
        }
    }
    println!("sent {sent} bytes of option data (error: {send_error:?})");
    let reply = read_option_reply(&mut s);
    println!("reply: {reply:?}");
    check_rss(&server);
    match reply {
        Ok(r) => {
            assert_eq!(r.option, NBD_OPT_GO, "{r:?}");
            assert!(r.is_error(), "1 GiB option accepted: {r:?}");
            if send_error.is_none() {
                let (size, flags) = rawclient::opt_go(&mut s, "disk").expect("NBD_OPT_GO after the refused option");
                let mut c = RawClient::from_stream(s, size, flags);
                assert!(c.read_ok(0, 4096) == pattern(SEED, 0, 4096), "wrong data");
                c.disconnect();
            }
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("no reply and no disconnect after 1 GiB of option data: {e}")
        }
        Err(e) => println!("server disconnected: {e}"),
    }
    healthy(&mut server);
}

#[test]
fn unknown_option_gets_err_unsup_and_the_session_continues() {
    let mut server = setup();
    let mut s = rawclient::connect(server.addr()).expect("connect");
    start_handshake(&mut s).expect("handshake start");
    send_option(&mut s, 0x1234, b"some option data").expect("send option");
    let r = read_option_reply(&mut s).expect("reply to option 0x1234");
    assert_eq!(r.option, 0x1234, "{r:?}");
    assert_eq!(r.reply_type, NBD_REP_ERR_UNSUP, "{r:?}");
    let (size, flags) = rawclient::opt_go(&mut s, "disk").expect("NBD_OPT_GO after the error");
    assert_eq!(size, SIZE);
    let mut c = RawClient::from_stream(s, size, flags);
    assert!(c.read_ok(4096, 4096) == pattern(SEED, 4096, 4096), "wrong data");
    c.disconnect();
    healthy(&mut server);
}

#[test]
fn go_for_unknown_export_fails_and_the_session_continues() {
    let mut server = setup();
    let mut s = rawclient::connect(server.addr()).expect("connect");
    start_handshake(&mut s).expect("handshake start");
    send_option(&mut s, NBD_OPT_GO, &rawclient::go_data("no-such-export", &[])).expect("send");
    let r = read_option_reply(&mut s).expect("reply to GO");
    assert_eq!(r.option, NBD_OPT_GO, "{r:?}");
    assert_eq!(r.reply_type, NBD_REP_ERR_UNKNOWN, "{r:?}");
    let (size, flags) = rawclient::opt_go(&mut s, "disk").expect("second NBD_OPT_GO");
    let mut c = RawClient::from_stream(s, size, flags);
    assert!(c.read_ok(0, 512) == pattern(SEED, 0, 512), "wrong data");
    c.disconnect();
    healthy(&mut server);
}

#[test]
fn truncated_option_then_disconnect() {
    let mut server = setup();
    let mut s = rawclient::connect(server.addr()).expect("connect");
    start_handshake(&mut s).expect("handshake start");
    s.write_all(&rawclient::IHAVEOPT.to_be_bytes()[..5]).expect("send");
    s.shutdown(Shutdown::Write).expect("shutdown");
    expect_closed(&mut s, "truncated option header");
    healthy(&mut server);
}

#[test]
fn truncated_request_header_then_disconnect() {
    let mut server = setup();
    let mut c = negotiated(&server, "disk");
    let header = rawclient::request_header(0, NBD_CMD_READ, 1, 0, 4096);
    c.stream().write_all(&header[..10]).expect("send");
    c.stream().shutdown(Shutdown::Write).expect("shutdown");
    expect_closed(c.stream(), "truncated request header");
    healthy(&mut server);
}

#[test]
fn bad_request_magic_disconnects() {
    let mut server = setup();
    let mut c = negotiated(&server, "disk");
    let mut header = rawclient::request_header(0, NBD_CMD_READ, 1, 0, 4096);
    header[..4].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
    c.stream().write_all(&header).expect("send");
    let bytes = expect_closed(c.stream(), "bad request magic");
    println!("before close: {bytes:02x?}");
    healthy(&mut server);
}

#[test]
fn read_of_four_gib_is_refused() {
    let mut server = setup();
    let mut c = negotiated(&server, "disk");
    send_request(c.stream(), 0, NBD_CMD_READ, 0x4242, 0, u32::MAX, &[]).expect("send");
    match read_simple_reply(c.stream()) {
        Ok(r) => {
            assert_eq!(r.handle, 0x4242, "{r:?}");
            assert!(
                r.error == NBD_EINVAL || r.error == NBD_EOVERFLOW,
                "READ of 4 GiB - 1: want EINVAL (or EOVERFLOW), got {r:?}"
            );
            // An error reply leaves the session usable.
            assert!(c.read_ok(0, 4096) == pattern(SEED, 0, 4096), "wrong data after error");
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("READ of 4 GiB - 1: no reply and no disconnect: {e}")
        }
        Err(e) => println!("READ of 4 GiB - 1: server disconnected ({e})"),
    }
    check_rss(&server);
    healthy(&mut server);
}

#[test]
fn write_of_four_gib_then_vanish() {
    let mut server = setup();
    let mut c = negotiated(&server, "disk");
    let payload = vec![0xee; 65536];
    send_request(c.stream(), 0, NBD_CMD_WRITE, 7, 0, u32::MAX, &payload).expect("send");
    healthy(&mut server);
    drop(c);
    check_rss(&server);
    healthy(&mut server);
}

#[test]
fn reads_past_the_end_get_einval() {
    let mut server = setup();
    let mut c = negotiated(&server, "disk");
    for (off, len) in [(SIZE, 4096), (SIZE - 512, 1024), (SIZE + (1 << 40), 512), (u64::MAX - 4095, 8192)] {
        match c.read(off, len) {
            Ok(Err(e)) => assert_eq!(e, NBD_EINVAL, "READ {off}+{len}"),
            Ok(Ok(_)) => panic!("READ {off}+{len} past the end succeeded"),
            Err(e) => panic!("READ {off}+{len}: {e}"),
        }
    }
    assert!(c.read_ok(SIZE - 512, 512) == pattern(SEED, SIZE - 512, 512), "tail data");
    c.disconnect();
    healthy(&mut server);
}

#[test]
fn writes_past_the_end_get_enospc() {
    let mut server = setup();
    let mut c = negotiated(&server, "disk");
    let data = vec![0x99; 8192];
    for (off, len) in [(SIZE, 4096usize), (SIZE - 512, 1024), (SIZE + (1 << 40), 512)] {
        match c.write(off, &data[..len], 0) {
            Ok(e) => assert_eq!(e, NBD_ENOSPC, "WRITE {off}+{len}"),
            Err(e) => panic!("WRITE {off}+{len}: {e}"),
        }
    }
    // offset + length overflows u64: ENOSPC or EINVAL, never success.
    let e = c.write(u64::MAX - 4095, &data, 0).expect("WRITE with overflowing range");
    assert!(e == NBD_ENOSPC || e == NBD_EINVAL, "overflowing WRITE: error {e}");
    // The part of the straddling write inside the export was not applied.
    assert!(c.read_ok(SIZE - 4096, 4096) == pattern(SEED, SIZE - 4096, 4096), "tail changed");
    c.disconnect();
    healthy(&mut server);
}

#[test]
fn writes_to_a_read_only_export_get_eperm() {
    let mut server = setup();
    let mut c = negotiated(&server, "ro");
    assert!(c.flags() & NBD_FLAG_READ_ONLY != 0, "flags {:#06x} lack READ_ONLY", c.flags());
    let e = c.write(0, &[0x42; 4096], 0).expect("WRITE to read-only export");
    assert_eq!(e, NBD_EPERM, "WRITE to read-only export");
    let e = c.command(NBD_CMD_TRIM, 0, 0, 4096, &[]).expect("TRIM to read-only export");
    assert_eq!(e, NBD_EPERM, "TRIM to read-only export");
    assert!(c.read_ok(0, 8192) == pattern(RO_SEED, 0, 8192), "read-only export changed");
    c.disconnect();
    healthy(&mut server);
}

#[test]
fn unknown_command_type_gets_einval() {
    let mut server = setup();
    let mut c = negotiated(&server, "disk");
    let e = c.command(0x55, 0, 0, 0, &[]).expect("reply to command type 0x55");
    assert_eq!(e, NBD_EINVAL, "unknown command type 0x55");
    assert!(c.read_ok(0, 4096) == pattern(SEED, 0, 4096), "session after EINVAL");
    c.disconnect();
    healthy(&mut server);
}

#[test]
fn write_with_short_payload_then_vanish() {
    let mut server = setup();
    let mut c = negotiated(&server, "disk");
    send_request(c.stream(), 0, NBD_CMD_WRITE, 9, MIB, MIB as u32, &[0x66; 100]).expect("send");
    // The server waits for the rest of the payload on that connection only.
    healthy(&mut server);
    drop(c);
    healthy(&mut server);
    let mut check = negotiated(&server, "disk");
    let got = check.read_ok(MIB, MIB as u32);
    assert!(got == pattern(SEED, MIB, MIB as usize), "a write whose payload never fully arrived changed the export");
    check.disconnect();
}

#[test]
fn idle_connections_do_not_block_others() {
    let mut server = setup();
    let mut idle = Vec::new();
    for i in 0..32 {
        let mut s = rawclient::connect(server.addr()).expect("connect");
        if i % 2 == 0 {
            // Half stop right after the greeting, half never read anything.
            rawclient::read_greeting(&mut s).expect("greeting");
        }
        idle.push(s);
    }
    healthy(&mut server);
    drop(idle);
    healthy(&mut server);
}
