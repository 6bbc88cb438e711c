//! Fencing on the server: two cluster nodes (two loopback addresses from the node table)
//! write to one export; a fence order for one of them is acknowledged only when not one more
//! byte of its I/O can reach the export; the other keeps working; the ban refuses the fenced
//! node's new connections, survives a restart, and an unfence lets it back.

use gnbd_tests::cluster::{control, open_from, TwoWriters, BLOCK, HALF, NODE1, NODE2};
use gnbd_tests::Server;

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

    let mut writers = TwoWriters::start(addr, 200);

    let reply = control(server.state_dir(), r#"{"op":"fence","node":"node1"}"#);
    assert!(reply["ok"].is_object(), "fence order: {reply}");
    // From the acknowledgement on, node1's half of the export must not change.
    let at_ack = std::fs::read(&disk).expect("read backing file");
    writers.join(0);
    writers.wait_more(1, 200, "node2 after node1 was fenced");
    let later = std::fs::read(&disk).expect("read backing file");
    assert!(
        at_ack[..HALF as usize] == later[..HALF as usize],
        "node1's region changed after the fence was acknowledged"
    );
    assert!(at_ack[..HALF as usize].contains(&0xaa), "node1's acknowledged writes are missing");

    let bans = control(server.state_dir(), r#"{"op":"bans"}"#);
    assert_eq!(bans["ok"]["nodes"], serde_json::json!(["node1"]), "{bans}");
    let Err(refused) = open_from(NODE1, addr) else { panic!("a fenced node must be refused") };
    println!("fenced node's new connection: {refused}");
    assert!(
        refused.to_string().contains("0x80000002") || refused.to_string().to_lowercase().contains("policy"),
        "{refused}"
    );

    writers.stop();

    // The ban survives a crash of the server.
    server.restart();
    let addr = server.addr();
    assert!(open_from(NODE1, addr).is_err(), "the ban must survive a restart");
    let mut b = open_from(NODE2, addr).expect("node2 reconnects after the restart");
    assert_eq!(b.read_ok(HALF, BLOCK as u32), vec![0xbb; BLOCK]);

    let reply = control(server.state_dir(), r#"{"op":"unfence","node":"node1"}"#);
    assert!(reply["ok"].is_object(), "unfence order: {reply}");
    let mut a = open_from(NODE1, addr).expect("node1 is let back in after unfencing");
    a.write_ok(0, &[0x11; BLOCK], 0);
    assert_eq!(control(server.state_dir(), r#"{"op":"bans"}"#)["ok"]["nodes"], serde_json::json!([]));
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
    let bad = control(server.state_dir(), r#"{"op":"fence","node":"no/such"}"#);
    assert_eq!(bad["error"]["kind"], "bad_request", "{bad}");
}
