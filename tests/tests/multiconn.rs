//! Several raw clients at once: pipelined writes and reads on disjoint regions from
//! concurrent threads, with one and with several server worker threads, and cross-
//! connection visibility after FLUSH (the multi-conn promise).

use gnbd_tests::rawclient::{RawClient, NBD_FLAG_CAN_MULTI_CONN};
use gnbd_tests::{fill_pattern, pattern, write_pattern_file, Server};
use std::collections::HashSet;
use std::thread;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;
const SEED: u64 = 0x3C;
const CLIENTS: u64 = 6;
const REGION: u64 = 2 * MIB;

/// xorshift64*: deterministic offsets and sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One client's workload on its own region; returns the region's final content.
fn workload(server: std::net::SocketAddr, k: u64) -> Vec<u8> {
    let mut c = RawClient::connect(server, "disk").expect("handshake");
    assert!(c.flags() & NBD_FLAG_CAN_MULTI_CONN != 0, "export does not advertise multi-conn: {:#06x}", c.flags());
    let base = k * REGION;
    let mut expected = pattern(SEED, base, REGION as usize);
    let mut rng = Rng(0x9E37_79B9 ^ (k + 1));
    for round in 0..6u64 {
        let mut pending = HashSet::new();
        for i in 0..8u64 {
            let len = 1 + (rng.next() % (128 * 1024)) as usize;
            let off = rng.next() % (REGION - len as u64);
            let seed = (k << 32) | (round << 8) | i;
            let range = off as usize..off as usize + len;
            fill_pattern(&mut expected[range.clone()], seed, base + off);
            let h = c.send_write(base + off, &expected[range], 0).expect("send write");
            pending.insert(h);
        }
        while !pending.is_empty() {
            let r = c.recv_reply().expect("write reply");
            assert!(pending.remove(&r.handle), "unknown handle {:#x}", r.handle);
            assert_eq!(r.error, 0, "write failed on client {k}");
        }
        let got = c.read_ok(base, REGION as u32);
        if got != expected {
            let at = got.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(0);
            panic!("client {k} round {round}: byte {} differs", base + at as u64);
        }
    }
    assert_eq!(c.flush().expect("flush"), 0, "FLUSH failed on client {k}");
    c.disconnect();
    expected
}

fn concurrent_clients(threads: &str) {
    let mut server = Server::builder().arg("--threads").arg(threads).start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, SIZE, SEED);
    server.export("disk", &disk, &[]);
    let addr = server.addr();
    let workers: Vec<_> = (0..CLIENTS).map(|k| thread::spawn(move || workload(addr, k))).collect();
    let mut expected = Vec::new();
    for w in workers {
        match w.join() {
            Ok(region) => expected.extend_from_slice(&region),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    expected.extend_from_slice(&pattern(SEED, CLIENTS * REGION, (SIZE - CLIENTS * REGION) as usize));
    let mut c = RawClient::connect(addr, "disk").expect("handshake");
    for off in (0..SIZE).step_by(MIB as usize) {
        let got = c.read_ok(off, MIB as u32);
        let want = &expected[off as usize..(off + MIB) as usize];
        if got != want {
            let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!("final check: byte {} differs", off + at as u64);
        }
    }
    c.disconnect();
    server.assert_alive();
}

#[test]
fn six_concurrent_clients_one_worker_thread() {
    concurrent_clients("1");
}

#[test]
fn six_concurrent_clients_three_worker_threads() {
    concurrent_clients("3");
}

#[test]
fn flushed_write_is_visible_on_other_connections() {
    let server = Server::builder().arg("--threads").arg("2").start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, SIZE, SEED);
    server.export("disk", &disk, &["-c"]);
    let mut clients: Vec<RawClient> =
        (0..4).map(|_| RawClient::connect(server.addr(), "disk").expect("handshake")).collect();
    for round in 0..8u64 {
        let writer = (round % 4) as usize;
        let off = round * 3 * MIB / 2 + 513;
        let data = pattern(round + 100, off, 70_000);
        clients[writer].write_ok(off, &data, 0);
        assert_eq!(clients[writer].flush().expect("flush"), 0, "FLUSH failed");
        for (i, c) in clients.iter_mut().enumerate() {
            assert!(
                c.read_ok(off, 70_000) == data,
                "round {round}: connection {i} does not see the flushed write of connection {writer}"
            );
        }
    }
    for c in clients {
        c.disconnect();
    }
}
