//! Fencing on the server: two cluster nodes (two loopback addresses from the node table)
//! write to one export; a fence order for one of them is acknowledged only when not one more
//! byte of its I/O can reach the export; the other keeps working; the ban refuses the fenced
//! node's new connections, survives a restart, and an unfence lets it back.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gnbd_tests::rawclient::{opt_go, start_handshake, RawClient};
use gnbd_tests::Server;
use socket2::{Domain, Socket, Type};

const NODE1: &str = "127.0.0.2";
const NODE2: &str = "127.0.0.3";
const HALF: u64 = 8 << 20;
const BLOCK: usize = 4096;

/// One request to the server's control socket; returns the JSON reply.
fn control(state_dir: &Path, request: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(state_dir.join("gnbd_serv.sock")).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    s.write_all(format!("{request}\n").as_bytes()).expect("send control request");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("control reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad control reply {line:?}: {e}"))
}

/// A TCP connection to the server from a chosen loopback address.
fn connect_from(src: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src.parse().expect("address"), 0).into())?;
    s.connect_timeout(&server.into(), Duration::from_secs(10))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Opens the export from `src`: Ok(client), or Err(the handshake's error).
fn open_from(src: &str, server: SocketAddr) -> std::io::Result<RawClient> {
    let mut s = connect_from(src, server)?;
    start_handshake(&mut s)?;
    let (size, flags) = opt_go(&mut s, "disk")?;
    Ok(RawClient::from_stream(s, size, flags))
}

/// Writes `fill` blocks over `[base, base + HALF)` round and round with 16 writes in flight
/// until the connection fails or `stop` is set. Counts acknowledged writes.
fn writer(mut c: RawClient, base: u64, fill: u8, acked: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
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

#[test]
fn fenced_node_is_cut_off_before_the_order_is_acknowledged() {
    let dir = gnbd_tests::TempDir::new();
    let nodes = dir.path().join("nodes");
    std::fs::write(&nodes, format!("# test cluster\nnode1 {NODE1}\nnode2 {NODE2}\n")).expect("node table");
    let mut server = Server::builder().arg("--nodes").arg(&nodes).start();
    let disk = server.path("disk.img");
    std::fs::write(&disk, vec![0u8; 2 * HALF as usize]).expect("backing file");
    server.export("disk", &disk, &[]);
    let addr = server.addr();

    let a = open_from(NODE1, addr).expect("node1 opens the export");
    let b = open_from(NODE2, addr).expect("node2 opens the export");
    let (acked_a, acked_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let ta = {
        let (n, s) = (acked_a.clone(), stop.clone());
        std::thread::spawn(move || writer(a, 0, 0xaa, n, s))
    };
    let tb = {
        let (n, s) = (acked_b.clone(), stop.clone());
        std::thread::spawn(move || writer(b, HALF, 0xbb, n, s))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked_a.load(Ordering::SeqCst) < 200 || acked_b.load(Ordering::SeqCst) < 200 {
        assert!(Instant::now() < deadline, "writers made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }

    let reply = control(server.state_dir(), r#"{"verb":"fence","node":"node1"}"#);
    assert_eq!(reply["reply"], "ok", "fence order: {reply}");
    // From the acknowledgement on, node1's half of the export must not change.
    let at_ack = std::fs::read(&disk).expect("read backing file");
    let b_at_fence = acked_b.load(Ordering::SeqCst);
    ta.join().expect("node1 writer");
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked_b.load(Ordering::SeqCst) < b_at_fence + 200 {
        assert!(Instant::now() < deadline, "node2 stopped making progress after node1 was fenced");
        std::thread::sleep(Duration::from_millis(5));
    }
    let later = std::fs::read(&disk).expect("read backing file");
    assert!(
        at_ack[..HALF as usize] == later[..HALF as usize],
        "node1's region changed after the fence was acknowledged"
    );
    assert!(at_ack[..HALF as usize].contains(&0xaa), "node1's acknowledged writes are missing");

    let bans = control(server.state_dir(), r#"{"verb":"bans"}"#);
    assert_eq!(bans["nodes"], serde_json::json!(["node1"]), "{bans}");
    let Err(refused) = open_from(NODE1, addr) else { panic!("a fenced node must be refused") };
    println!("fenced node's new connection: {refused}");
    assert!(
        refused.to_string().contains("0x80000002") || refused.to_string().to_lowercase().contains("policy"),
        "{refused}"
    );

    stop.store(true, Ordering::SeqCst);
    tb.join().expect("node2 writer");

    // The ban survives a crash of the server.
    server.restart();
    let addr = server.addr();
    assert!(open_from(NODE1, addr).is_err(), "the ban must survive a restart");
    let mut b = open_from(NODE2, addr).expect("node2 reconnects after the restart");
    assert_eq!(b.read_ok(HALF, BLOCK as u32), vec![0xbb; BLOCK]);

    let reply = control(server.state_dir(), r#"{"verb":"unfence","node":"node1"}"#);
    assert_eq!(reply["reply"], "ok", "unfence order: {reply}");
    let mut a = open_from(NODE1, addr).expect("node1 is let back in after unfencing");
    a.write_ok(0, &[0x11; BLOCK], 0);
    assert_eq!(control(server.state_dir(), r#"{"verb":"bans"}"#)["nodes"], serde_json::json!([]));
}

#[test]
fn cluster_mode_refuses_clients_outside_the_node_table() {
    let dir = gnbd_tests::TempDir::new();
    let nodes = dir.path().join("nodes");
    std::fs::write(&nodes, format!("node1 {NODE1}\n")).expect("node table");
    let server = Server::builder().arg("--nodes").arg(&nodes).arg("--cluster").start();
    let disk = server.path("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("backing file");
    server.export("disk", &disk, &[]);
    assert!(open_from(NODE1, server.addr()).is_ok(), "a listed node is served");
    let Err(refused) = open_from(NODE2, server.addr()) else { panic!("an unlisted address must be refused") };
    assert!(
        refused.to_string().contains("0x80000002") || refused.to_string().to_lowercase().contains("policy"),
        "{refused}"
    );
    let bad = control(server.state_dir(), r#"{"verb":"fence","node":"no/such"}"#);
    assert_eq!(bad["reply"], "error", "{bad}");
}
