//! `fence_gnbd`, the fence agent, against a server with a cluster key: the standard agent
//! interface on stdin fences a node over the network (and the node's writes stop before the
//! agent returns), `status` reports it, `on` unfences; orders signed with another key, or not
//! signed at all, are refused and change nothing.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gnbd_tests::cluster::{control, key_file, open_from, TwoWriters, HALF, NODE1, NODE2};
use gnbd_tests::{fence_gnbd_bin, OutputExt, Server, TempDir};

/// Runs the agent with `input` on stdin (bounded in time).
fn agent(input: &str) -> Output {
    let mut child = Command::new(fence_gnbd_bin())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fence_gnbd");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("agent input");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fence_gnbd did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("agent output")
}

#[test]
fn fence_gnbd_fences_over_the_network_and_refuses_forged_orders() {
    let dir = TempDir::new();
    let nodes = dir.path().join("nodes");
    std::fs::write(&nodes, format!("node1 {NODE1}\nnode2 {NODE2}\n")).expect("node table");
    let key = key_file(dir.path(), "cluster.key", 0x5a);
    let wrong = key_file(dir.path(), "wrong.key", 0x33);
    let server = Server::builder()
        .arg("--nodes")
        .arg(&nodes)
        .arg("--cluster-key")
        .arg(&key)
        .arg("--control-port")
        .arg("0")
        .start();
    let ctl = server.control_addr().expect("ready line names the control channel");
    let disk = server.path("disk.img");
    std::fs::write(&disk, vec![0u8; 2 * HALF as usize]).expect("backing file");
    server.export("disk", &disk, &[]);
    let addr = server.addr();
    let servers = format!("servers=127.0.0.1:{}", ctl.port());

    // Metadata needs no server.
    let meta = agent("action=metadata\n");
    meta.assert_success("fence_gnbd metadata");
    assert!(meta.stdout_str().contains(r#"<resource-agent name="fence_gnbd""#));

    // Forged orders: another key through the agent, and a raw unsigned one.
    let forged = agent(&format!("action=off\nnodename=node1\n{servers}\ncluster_key={}\n", wrong.display()));
    assert_eq!(forged.status.code(), Some(1), "{}", forged.describe());
    assert!(forged.stderr_str().contains("authentication failed"), "{}", forged.describe());
    let mut raw = TcpStream::connect(ctl).expect("control channel");
    raw.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut r = BufReader::new(raw.try_clone().expect("clone"));
    let mut hello = String::new();
    r.read_line(&mut hello).expect("challenge");
    assert!(hello.contains("challenge"), "{hello}");
    raw.write_all(b"{\"request\":\"{\\\"verb\\\":\\\"fence\\\",\\\"node\\\":\\\"node1\\\"}\",\"mac\":\"00\"}\n")
        .expect("send");
    let mut reply = String::new();
    r.read_line(&mut reply).expect("reply");
    assert!(reply.contains("authentication failed"), "{reply}");
    assert_eq!(control(server.state_dir(), r#"{"op":"bans"}"#)["ok"]["nodes"], serde_json::json!([]));

    // Two nodes write; fence node1 with the agent while they do.
    let mut writers = TwoWriters::start(addr, 100);
    let off =
        agent(&format!("agent=fence_gnbd\naction=off\nnodename=node1\n{servers}\ncluster_key={}\n", key.display()));
    off.assert_success("fence_gnbd action=off");
    let at_return = std::fs::read(&disk).expect("backing file");
    writers.join(0);
    writers.wait_more(1, 100, "node2 after node1 was fenced");
    writers.stop();
    let later = std::fs::read(&disk).expect("backing file");
    assert!(at_return[..HALF as usize] == later[..HALF as usize], "node1's writes landed after fence_gnbd returned");
    assert!(open_from(NODE1, addr).is_err(), "fenced node1 must be refused");

    let status = agent(&format!("action=status\nnodename=node1\n{servers}\ncluster_key={}\n", key.display()));
    assert_eq!(status.status.code(), Some(2), "status of a fenced node: {}", status.describe());
    let on = agent(&format!("action=on\nnodename=node1\n{servers}\ncluster_key={}\n", key.display()));
    on.assert_success("fence_gnbd action=on");
    let status = agent(&format!("action=status\nnodename=node1\n{servers}\ncluster_key={}\n", key.display()));
    assert_eq!(status.status.code(), Some(0), "status after unfencing: {}", status.describe());
    assert!(open_from(NODE1, addr).is_ok(), "node1 is back after action=on");
}
