//! Helpers for tests with several cluster nodes on one machine: clients bound to a node's
//! loopback address, the server's control socket, and a pipelined writer.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::rawclient::{opt_go, start_handshake, RawClient};

/// Loopback addresses playing two cluster nodes.
pub const NODE1: &str = "127.0.0.2";
pub const NODE2: &str = "127.0.0.3";
/// Each node writes its own half of a `2 * HALF` export, in `BLOCK`s.
pub const HALF: u64 = 8 << 20;
pub const BLOCK: usize = 4096;

/// Writes a cluster key file (`byte` repeated, 64 bytes, mode 0600) as `dir/name`.
pub fn key_file(dir: &Path, name: &str, byte: u8) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, vec![byte; 64]).expect("key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// One request to the server's control socket; returns the JSON reply.
pub fn control(state_dir: &Path, request: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(state_dir.join("gnbd_serv.sock")).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    s.write_all(format!("{request}\n").as_bytes()).expect("send control request");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("control reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad control reply {line:?}: {e}"))
}

/// A TCP connection to the server from a chosen loopback address.
pub fn connect_from(src: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src.parse().expect("address"), 0).into())?;
    s.connect_timeout(&server.into(), Duration::from_secs(10))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Opens the export from `src`: Ok(client), or Err(the handshake's error).
pub fn open_from(src: &str, server: SocketAddr) -> std::io::Result<RawClient> {
    let mut s = connect_from(src, server)?;
    start_handshake(&mut s)?;
    let (size, flags) = opt_go(&mut s, "disk")?;
    Ok(RawClient::from_stream(s, size, flags))
}

/// Writes `fill` blocks over `[base, base + HALF)` round and round with 16 writes in flight
/// until the connection fails or `stop` is set. Counts acknowledged writes.
pub fn writer(mut c: RawClient, base: u64, fill: u8, acked: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let data = vec![fill; BLOCK];
    let blocks = HALF / BLOCK as u64;
    let mut next = 0u64;
    let mut in_flight = 0;
    loop {
        while in_flight < 16 && !stop.load(Ordering::SeqCst) {
            let off = base + (next % blocks) * BLOCK as u64;
            next += 1;
            if c.send_write(off, &data, 0).is_err() {
                return;
            }
            in_flight += 1;
        }
        if in_flight == 0 {
            return;
        }
        match c.recv_reply() {
            Ok(r) if r.error == 0 => {
                acked.fetch_add(1, Ordering::SeqCst);
                in_flight -= 1;
            }
            _ => return,
        }
    }
}

/// node1 writing `0xaa` over `[0, HALF)` and node2 writing `0xbb` over `[HALF, 2*HALF)`,
/// each 16 deep, from their own addresses.
#[derive(Debug)]
pub struct TwoWriters {
    acked: [Arc<AtomicU64>; 2],
    stop: Arc<AtomicBool>,
    threads: [Option<std::thread::JoinHandle<()>>; 2],
}

impl TwoWriters {
    /// Opens the export `disk` from both nodes, starts writing, and returns once each node
    /// has had `warmup` writes acknowledged.
    pub fn start(server: SocketAddr, warmup: u64) -> TwoWriters {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let mut threads = [None, None];
        for (i, (src, fill)) in [(NODE1, 0xaa), (NODE2, 0xbb)].into_iter().enumerate() {
            let c = open_from(src, server).unwrap_or_else(|e| panic!("node{} opens the export: {e}", i + 1));
            let (n, s) = (acked[i].clone(), stop.clone());
            threads[i] = Some(std::thread::spawn(move || writer(c, i as u64 * HALF, fill, n, s)));
        }
        let w = TwoWriters { acked, stop, threads };
        w.wait_more(0, warmup, "node1 writes");
        w.wait_more(1, warmup, "node2 writes");
        w
    }

    /// Writes of node `i` (0 or 1) acknowledged so far.
    pub fn acked(&self, i: usize) -> u64 {
        self.acked[i].load(Ordering::SeqCst)
    }

    /// Waits (at most 20 s) until node `i` has `n` more writes acknowledged.
    pub fn wait_more(&self, i: usize, n: u64, what: &str) {
        let target = self.acked(i) + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.acked(i) < target {
            assert!(std::time::Instant::now() < deadline, "{what}: no progress within 20 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for node `i`'s writer to end (it ends when its connection is cut).
    pub fn join(&mut self, i: usize) {
        if let Some(t) = self.threads[i].take() {
            t.join().expect("writer thread");
        }
    }

    /// Stops both writers and waits for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.join(0);
        self.join(1);
    }
}
