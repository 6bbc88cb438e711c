//! End-to-end tests of the `gnbd-client` library against a real `gnbd_serv`: data round
//! trips checked against the backing file, deep pipelining, request splitting, multi-conn,
//! reconnection with resubmission across a SIGKILL of the server, and the I/O timeout.

use gnbd_client::{Client, ClientError, ClientOptions, ConnectionState, ReplyMode};
use gnbd_tests::{fill_pattern, pattern, write_pattern_file, Server};
use nbd_proto::consts::{NBD_FLAG_CAN_MULTI_CONN, NBD_STATE_HOLE};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const SEED: u64 = 0xC11E;

/// Every test body runs under this bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// Runs `body` on a fresh runtime, bounded by [`TEST_TIMEOUT`].
fn bounded<F: Future<Output = ()>>(body: F) {
    rt().block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, body).await.expect("test body timed out");
    });
}

fn opts(server: &Server, export: &str) -> ClientOptions {
    ClientOptions::new(server.addr().to_string(), export)
}

/// A server with one export `disk` of `size` bytes of pattern `SEED`.
fn server_with_disk(size: u64, builder: gnbd_tests::ServerBuilder) -> (Server, std::path::PathBuf) {
    let server = builder.start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, size, SEED);
    server.export("disk", &disk, &[]);
    (server, disk)
}

fn read_file_range(path: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).expect("open backing file");
    f.seek(SeekFrom::Start(offset)).expect("seek backing file");
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).expect("read backing file");
    buf
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: byte {i} is {:#04x}, want {:#04x}", got[i], want[i]);
    }
}

#[test]
fn round_trips_with_extended_headers() {
    round_trips(ReplyMode::Extended);
}

#[test]
fn round_trips_with_structured_replies() {
    round_trips(ReplyMode::Structured);
}

#[test]
fn round_trips_with_simple_replies() {
    round_trips(ReplyMode::Simple);
}

/// Every command, checked against the backing file, in one reply mode.
fn round_trips(mode: ReplyMode) {
    let size = 16 * MIB;
    let (server, disk) = server_with_disk(size, Server::builder());
    bounded(async {
        let mut o = opts(&server, "disk");
        o.extended_headers = mode == ReplyMode::Extended;
        o.structured_replies = mode != ReplyMode::Simple;
        let c = Client::connect(o).await.expect("connect");
        assert_eq!(c.size(), size);
        assert_eq!(c.info().mode, mode, "negotiated reply mode");

        // Read: aligned and unaligned, checked against the pattern.
        for (off, len) in [(0u64, 4096usize), (12345, 100_000), (size - 1, 1), (3 * MIB, MIB as usize)] {
            let got = c.read(off, len).await.expect("read");
            assert_same(&got, &pattern(SEED, off, len), &format!("read {off}+{len}"));
        }

        // Write (plain and FUA), then flush: the backing file has the data.
        let data = pattern(1, 0, 70_000);
        c.write(MIB + 7, &data, false).await.expect("write");
        let data2 = pattern(2, 0, 8192);
        c.write(5 * MIB, &data2, true).await.expect("FUA write");
        c.flush().await.expect("flush");
        assert_same(&read_file_range(&disk, MIB + 7, data.len()), &data, "backing file after write");
        assert_same(&read_file_range(&disk, 5 * MIB, data2.len()), &data2, "backing file after FUA write");
        assert_same(&c.read(MIB + 7, data.len()).await.expect("read back"), &data, "read back");

        // Write zeroes.
        c.write_zeroes(6 * MIB + 100, 50_000).await.expect("write_zeroes");
        c.flush().await.expect("flush");
        assert!(read_file_range(&disk, 6 * MIB + 100, 50_000).iter().all(|&b| b == 0), "zeroes in the backing file");
        assert!(c.read(6 * MIB + 100, 50_000).await.expect("read zeroes").iter().all(|&b| b == 0));
        assert_same(&c.read(6 * MIB + 50_100, 10).await.expect("read"), &pattern(SEED, 6 * MIB + 50_100, 10), "after");

        // Trim an aligned range: it reads as zeroes and block status reports a hole.
        c.trim(8 * MIB, 2 * MIB).await.expect("trim");
        c.flush().await.expect("flush");
        assert!(read_file_range(&disk, 8 * MIB, 2 * MIB as usize).iter().all(|&b| b == 0), "trimmed range");
        if mode == ReplyMode::Simple {
            let r = c.block_status(0, size).await;
            assert!(matches!(r, Err(ClientError::Unsupported(_))), "block status without structured replies: {r:?}");
        } else {
            let extents = c.block_status(0, size).await.expect("block status");
            assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), size, "extents cover the export: {extents:?}");
            assert_eq!(extents[0].flags & u64::from(NBD_STATE_HOLE), 0, "data at 0 is not a hole: {extents:?}");
            let mut at = 0;
            for e in &extents {
                let (s, end) = (at, at + e.length);
                if s < 10 * MIB && end > 8 * MIB {
                    assert_ne!(
                        e.flags & u64::from(NBD_STATE_HOLE),
                        0,
                        "extent {s}..{end} in the trimmed range: {extents:?}"
                    );
                }
                at = end;
            }
            // A block-status query inside the export is clipped to the asked range.
            let part = c.block_status(8 * MIB + 4096, 4096).await.expect("block status");
            assert_eq!(part.iter().map(|e| e.length).sum::<u64>(), 4096);
        }

        // Past the end: refused locally with a clear error.
        assert!(matches!(c.read(size - 10, 20).await, Err(ClientError::Invalid(_))));
        c.close().await;
    });
}

#[test]
fn unknown_export_is_export_gone() {
    let (server, _disk) = server_with_disk(MIB, Server::builder());
    bounded(async {
        match Client::connect(opts(&server, "nope")).await {
            Err(ClientError::ExportGone { .. }) => {}
            other => panic!("expected ExportGone, got {other:?}"),
        }
    });
}

#[test]
fn sixty_four_requests_in_flight() {
    let size = 16 * MIB;
    let (server, disk) = server_with_disk(size, Server::builder());
    bounded(async {
        let c = Client::connect(opts(&server, "disk")).await.expect("connect");
        let block = 64 * 1024usize;
        // 64 concurrent writes of distinct blocks, then 64 concurrent reads of them.
        let writes = (0..64u64).map(|i| {
            let c = c.clone();
            async move {
                let off = i * block as u64 * 2 + i;
                c.write(off, &pattern(100 + i, off, block), false).await.map(|()| off)
            }
        });
        let offs: Vec<u64> = futures_join(writes).await.into_iter().map(|r| r.expect("write")).collect();
        c.flush().await.expect("flush");
        let reads = offs.iter().map(|&off| {
            let c = c.clone();
            async move { (off, c.read(off, block).await) }
        });
        for (i, (off, r)) in futures_join(reads).await.into_iter().enumerate() {
            let want = pattern(100 + i as u64, off, block);
            assert_same(&r.expect("read"), &want, &format!("read {i}"));
            assert_same(&read_file_range(&disk, off, block), &want, &format!("backing file {i}"));
        }
        c.close().await;
    });
}

/// Polls all futures concurrently on this task (no extra dependency) and returns their
/// outputs in order.
async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let set: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(set.len());
    for h in set {
        out.push(h.await.expect("task panicked"));
    }
    out
}

#[test]
fn requests_above_64_mib_are_split() {
    let size = 160 * MIB;
    let (server, disk) = server_with_disk(size, Server::builder());
    bounded(async {
        let c = Client::connect(opts(&server, "disk")).await.expect("connect");
        assert!(c.max_request() <= 64 * MIB, "max request {}", c.max_request());
        let len = 80 * MIB as usize + 4097;
        let off = 3 * MIB + 5;
        let mut data = vec![0u8; len];
        fill_pattern(&mut data, 77, off);
        c.write(off, &data, false).await.expect("80 MiB write");
        c.flush().await.expect("flush");
        let got = c.read(off, len).await.expect("80 MiB read");
        assert_same(&got, &data, "80 MiB read back");
        drop(got);
        assert_same(&read_file_range(&disk, off, len), &data, "backing file after 80 MiB write");
        c.close().await;
    });
}

#[test]
fn multi_conn_spreads_requests() {
    let size = 16 * MIB;
    let (server, disk) = server_with_disk(size, Server::builder());
    bounded(async {
        let mut o = opts(&server, "disk");
        o.connections = 4;
        let c = Client::connect(o).await.expect("connect");
        assert_ne!(c.flags() & NBD_FLAG_CAN_MULTI_CONN, 0, "export advertises multi-conn");
        assert_eq!(c.connections(), 4);
        let writes = (0..32u64).map(|i| {
            let c = c.clone();
            async move {
                let off = i * 256 * 1024;
                c.write(off, &pattern(500 + i, off, 100_000), false).await.expect("write");
            }
        });
        futures_join(writes).await;
        // One flush covers the writes completed on every connection.
        c.flush().await.expect("flush");
        for i in 0..32u64 {
            let off = i * 256 * 1024;
            let want = pattern(500 + i, off, 100_000);
            assert_same(&read_file_range(&disk, off, 100_000), &want, &format!("backing file {i}"));
            assert_same(&c.read(off, 100_000).await.expect("read"), &want, &format!("read {i}"));
        }
        c.close().await;
    });
}

#[test]
fn sigkill_during_writes_reconnects_and_resubmits() {
    let size = 64 * MIB;
    // A Unix socket keeps its path across restarts (the TCP port changes).
    let (mut server, disk) = server_with_disk(size, Server::builder().unix_socket());
    let sock = server.unix_socket().expect("unix socket").display().to_string();
    bounded(async move {
        let c = Client::connect(ClientOptions::new(sock, "disk")).await.expect("connect");
        let block = 256 * 1024usize;
        let blocks = 64u64;
        let restarted = Arc::new(AtomicBool::new(false));
        let writer = {
            let c = c.clone();
            let restarted = restarted.clone();
            tokio::spawn(async move {
                // Batches of eight writes in flight, cycling over the blocks with fresh content
                // each time, until eight batches after the restart; records the seed of the
                // last acknowledged write of every block.
                let mut last = HashMap::new();
                let mut after = 0;
                let mut seed = 9000u64;
                let mut next = 0u64;
                while after < 8 {
                    if restarted.load(Ordering::SeqCst) {
                        after += 1;
                    }
                    let futs: Vec<_> = (0..8)
                        .map(|_| {
                            let (i, s) = (next % blocks, seed);
                            next += 1;
                            seed += 1;
                            let c = c.clone();
                            tokio::spawn(async move {
                                let off = i * block as u64;
                                c.write(off, &pattern(s, off, block), false).await.map(|()| (i, s))
                            })
                        })
                        .collect();
                    for f in futs {
                        let (i, s) = f.await.expect("task").expect("write failed across the server crash");
                        last.insert(i, s);
                    }
                }
                last
            })
        };
        // Let the writer get going, then cut the server's power and bring it back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut server = tokio::task::spawn_blocking(move || {
            server.restart();
            server
        })
        .await
        .expect("restart");
        restarted.store(true, Ordering::SeqCst);
        let last = writer.await.expect("writer task");
        assert_eq!(last.len() as u64, blocks, "every block was written");
        c.flush().await.expect("flush after reconnect");
        assert!(c.reconnects() >= 1, "the client reconnected after the SIGKILL");
        eprintln!("reconnects: {}, requests resubmitted: {}", c.reconnects(), c.resubmitted());
        assert!(matches!(c.state(), ConnectionState::Connected), "{:?}", c.state());
        for (&i, &s) in &last {
            let off = i * block as u64;
            assert_same(&read_file_range(&disk, off, block), &pattern(s, off, block), &format!("block {i}"));
            assert_same(&c.read(off, block).await.expect("read"), &pattern(s, off, block), &format!("read {i}"));
        }
        // The rest of the export is untouched.
        let tail = blocks * block as u64;
        assert_same(&read_file_range(&disk, tail, MIB as usize), &pattern(SEED, tail, MIB as usize), "untouched tail");
        c.close().await;
        server.assert_alive();
    });
}

#[test]
fn io_timeout_fails_requests_when_the_server_stays_away() {
    let (server, _disk) = server_with_disk(4 * MIB, Server::builder());
    bounded(async move {
        let mut o = opts(&server, "disk");
        o.io_timeout = Some(Duration::from_secs(2));
        let c = Client::connect(o).await.expect("connect");
        c.write(0, &[1u8; 4096], false).await.expect("write while the server is up");
        let _server = tokio::task::spawn_blocking(move || {
            let mut server = server;
            server.stop();
            server
        })
        .await
        .expect("stop");
        let r = tokio::time::timeout(Duration::from_secs(60), c.read(0, 4096)).await.expect("read must not hang");
        match r {
            Err(ClientError::TimedOut(_)) => {}
            other => panic!("expected TimedOut, got {other:?}"),
        }
        assert!(matches!(c.state(), ConnectionState::Reconnecting), "{:?}", c.state());
        // Later requests time out too (the server is still away).
        let r = tokio::time::timeout(Duration::from_secs(60), c.flush()).await.expect("flush must not hang");
        assert!(matches!(r, Err(ClientError::TimedOut(_))), "{r:?}");
    });
}

#[test]
fn requests_wait_through_a_graceful_restart() {
    let (mut server, disk) = server_with_disk(4 * MIB, Server::builder().unix_socket());
    let sock = server.unix_socket().expect("unix socket").display().to_string();
    bounded(async move {
        let c = Client::connect(ClientOptions::new(sock, "disk")).await.expect("connect");
        c.write(0, &pattern(3, 0, 4096), false).await.expect("write before the stop");
        let mut server = tokio::task::spawn_blocking(move || {
            server.stop();
            server
        })
        .await
        .expect("stop");
        // Issued while the server is down (no I/O timeout: it waits).
        let pending = {
            let c = c.clone();
            tokio::spawn(async move { c.write(8192, &pattern(4, 8192, 4096), true).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!pending.is_finished(), "the write cannot finish while the server is down");
        let server = tokio::task::spawn_blocking(move || {
            server.restart();
            server
        })
        .await
        .expect("restart");
        pending.await.expect("task").expect("write after the restart");
        assert_same(&read_file_range(&disk, 8192, 4096), &pattern(4, 8192, 4096), "FUA write after restart");
        assert_same(&c.read(0, 4096).await.expect("read"), &pattern(3, 0, 4096), "write before the stop");
        c.close().await;
        drop(server);
    });
}
