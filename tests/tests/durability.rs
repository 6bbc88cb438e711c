//! Crash tests: acknowledged writes survive SIGKILL of the server.
//!
//! A raw client writes patterned blocks (aligned and unaligned, pipelined), makes them
//! durable with FLUSH (or writes them with FUA), waits for the acknowledgements, sends a
//! few more writes it never waits for, and the server is SIGKILLed at once. Then the
//! backing file is checked directly, a new server is started on the same state directory,
//! and every byte is read back through it: acknowledged writes must be there, and nothing
//! outside the written ranges may have changed. Runs for uncached (O_DIRECT) and cached
//! (page cache) exports.

use gnbd_tests::rawclient::{RawClient, NBD_CMD_FLAG_FUA, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA};
use gnbd_tests::{fill_pattern, pattern, write_pattern_file, Server};
use std::collections::HashSet;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 32 * MIB;
/// Writes that are never waited for land here; this range is not checked.
const UNACKED_START: u64 = 28 * MIB;
const BASE_SEED: u64 = 0xD00D;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Durable {
    Flush,
    Fua,
}

/// Non-overlapping regions (offset, length) below `UNACKED_START`: sizes from 512 B to
/// 256 KiB, some offsets and lengths not multiples of 512.
fn regions() -> Vec<(u64, usize)> {
    const LENS: [usize; 8] = [4096, 65536, 1000, 131072, 3000, 262144, 512, 12345];
    const JITTER: [u64; 8] = [0, 4096, 1000, 0, 513, 8192, 7, 100];
    (0..48u64).map(|i| (i * 512 * 1024 + JITTER[i as usize % 8], LENS[i as usize % 8])).collect()
}

fn first_diff(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter().zip(want).position(|(a, b)| a != b)
}

fn assert_same(got: &[u8], want: &[u8], base: u64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = first_diff(got, want) {
        let at = base + i as u64;
        let touched = regions().into_iter().find(|(o, l)| (*o..o + *l as u64).contains(&at));
        panic!("{what}: byte {at} is {:#04x}, want {:#04x} (written region: {touched:?})", got[i], want[i]);
    }
}

fn crash_test(durable: Durable, cached: bool) {
    let mut server = Server::start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, SIZE, BASE_SEED);
    let flags: &[&str] = if cached { &["-c"] } else { &[] };
    server.export("disk", &disk, flags);

    let mut expected = pattern(BASE_SEED, 0, SIZE as usize);
    let mut client = RawClient::connect(server.addr(), "disk").expect("handshake");
    assert_eq!(client.size(), SIZE, "export size");
    let tflags = client.flags();
    assert!(
        tflags & NBD_FLAG_SEND_FLUSH != 0 && tflags & NBD_FLAG_SEND_FUA != 0,
        "export must advertise FLUSH and FUA, transmission flags {tflags:#06x}"
    );

    let cmd_flags = if durable == Durable::Fua { NBD_CMD_FLAG_FUA } else { 0 };
    for batch in regions().chunks(8) {
        let mut pending = HashSet::new();
        for (i, &(off, len)) in batch.iter().enumerate() {
            let seed = off ^ ((i as u64) << 40);
            let range = off as usize..off as usize + len;
            fill_pattern(&mut expected[range.clone()], seed, off);
            let h = client.send_write(off, &expected[range], cmd_flags).expect("send write");
            pending.insert(h);
        }
        while !pending.is_empty() {
            let r = client.recv_reply().expect("write reply");
            assert!(pending.remove(&r.handle), "reply for unknown handle {:#x}", r.handle);
            assert_eq!(r.error, 0, "write (handle {:#x}) failed", r.handle);
        }
    }
    if durable == Durable::Flush {
        assert_eq!(client.flush().expect("flush reply"), 0, "FLUSH failed");
    }
    // In flight at the moment of the crash: never acknowledged, never checked.
    for i in 0..4 {
        let off = UNACKED_START + i * MIB;
        let _ = client.send_write(off, &pattern(0xBAD, off, MIB as usize), 0);
    }
    server.kill();
    drop(client);

    let on_disk = std::fs::read(&disk).expect("read backing file");
    assert_eq!(on_disk.len() as u64, SIZE, "backing file size changed");
    let acked = UNACKED_START as usize;
    assert_same(&on_disk[..acked], &expected[..acked], 0, "backing file after SIGKILL");

    server.restart();
    let mut client = RawClient::connect(server.addr(), "disk").expect("handshake after restart");
    assert_eq!(client.size(), SIZE, "export size after restart");
    for off in (0..SIZE).step_by(MIB as usize) {
        let got = client.read_ok(off, MIB as u32);
        if off < UNACKED_START {
            let r = off as usize..(off + MIB) as usize;
            assert_same(&got, &expected[r], off, "read back after restart");
        }
    }
    // The restarted server takes writes again.
    let data = pattern(77, 5 * MIB + 3, 10_000);
    client.write_ok(5 * MIB + 3, &data, 0);
    assert_eq!(client.read_ok(5 * MIB + 3, 10_000), data, "write after restart");
    client.disconnect();
    server.assert_alive();
}

#[test]
fn flush_then_sigkill_uncached() {
    crash_test(Durable::Flush, false);
}

#[test]
fn flush_then_sigkill_cached() {
    crash_test(Durable::Flush, true);
}

#[test]
fn fua_then_sigkill_uncached() {
    crash_test(Durable::Fua, false);
}

#[test]
fn fua_then_sigkill_cached() {
    crash_test(Durable::Fua, true);
}
