//! Cluster membership and quorum through corosync, with nodes in network namespaces.
//!
//! Needs root (namespaces, mounts) and corosync (scripts/deps.sh installs it).

use gnbd_tests::corosync::Nodes;

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in status:\n{status}"))
}

#[test]
fn three_nodes_form_lose_one_and_recompute_quorum() {
    let nodes = Nodes::new(3);
    nodes.write_conf(&nodes.simple_conf("alpha", 5, 1000, "<fence_daemon post_join_delay=\"60\"/>"));
    nodes.join_all();
    for i in 0..3 {
        let s = nodes.wait_status(i, |s| s.contains("Nodes: 3\n") && s.contains("Quorate: Yes"));
        assert_eq!(field(&s, "Cluster Name"), "alpha");
        assert_eq!(field(&s, "Config Version"), "5");
        assert_eq!(field(&s, "Expected votes"), "3");
        assert_eq!(field(&s, "Total votes"), "3");
        assert_eq!(field(&s, "Quorum"), "2");
        assert_eq!(field(&s, "Node ID"), (i + 1).to_string());
        assert_eq!(field(&s, "Members"), "node1 node2 node3");
    }
    let n = nodes.must(0, "cman_tool", &["nodes"]);
    assert!(n.contains("3      M   1     node3"), "{n}");

    // Cut node3 off: the pair stays quorate with 2 votes; node3 alone is not quorate.
    nodes.cut(2);
    for i in 0..2 {
        let s = nodes.wait_status(i, |s| s.contains("Nodes: 2\n"));
        assert_eq!(field(&s, "Quorate"), "Yes");
        assert_eq!(field(&s, "Total votes"), "2");
        assert_eq!(field(&s, "Members"), "node1 node2");
    }
    let s = nodes.wait_status(2, |s| s.contains("Nodes: 1\n"));
    assert_eq!(field(&s, "Quorate"), "No");
    assert_eq!(field(&s, "Total votes"), "1");
    let n = nodes.must(0, "cman_tool", &["nodes"]);
    assert!(n.contains("3      X"), "{n}");
    let c = nodes.must(1, "clustat", &[]);
    assert!(c.contains("Member Status: Quorate"), "{c}");
    assert!(c.contains(" node2                         2 Online, Local\n"), "{c}");
    assert!(c.contains(" node3                         3 Offline\n"), "{c}");
    let c = nodes.must(2, "clustat", &[]);
    assert!(c.contains("Member Status: Inquorate"), "{c}");

    // Heal: node3 rejoins and everyone is quorate again.
    nodes.heal(2);
    nodes.wait_formed();
    // fenced leaves the domain cleanly and comes back; nobody fences node3 for it.
    nodes.must(2, "fence_tool", &["leave"]);
    nodes.wait_fence(0, "node3 out of the domain", |s| {
        s["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "node3" && n["in_domain"] == false)
    });
    let out = nodes.run(2, "fence_tool", &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    nodes.must(2, "fence_tool", &["join"]);
    assert_eq!(nodes.run(2, "fence_tool", &["join"]).status.code(), Some(1), "a second fenced is refused");
    nodes.wait_fence(0, "node3 back in the domain", |s| {
        s["nodes"].as_array().unwrap().iter().all(|n| n["in_domain"] == true)
    });
    // node3 became a victim once, when it was cut (it has no fence methods here), was
    // dropped when it merged back unfenced, and leaving the domain cleanly did not make it
    // one again.
    let log = std::fs::read_to_string(nodes.path(0, "log/fenced.log")).unwrap();
    assert_eq!(log.matches("node3 is a fence victim").count(), 1, "{log}");
    assert!(log.contains("node3 rejoined the cluster before it could be fenced"), "{log}");
    assert_eq!(nodes.fence_entry(0, "node3")["pending"], false);

    // A clean leave: the others see two members, stay quorate, and do not fence node2.
    nodes.must(1, "cman_tool", &["leave"]);
    nodes.wait_status(0, |s| s.contains("Nodes: 2\n") && s.contains("Quorate: Yes"));
    assert!(nodes.run(1, "cman_tool", &["status"]).status.code() == Some(1));
    assert!(nodes.pids(1).is_empty(), "corosync and fenced are gone from node2");
    let e = nodes.fence_entry(0, "node2");
    assert_eq!(e["pending"], false, "{e}");
    assert_eq!(e["in_domain"], false, "{e}");
    let log = std::fs::read_to_string(nodes.path(0, "log/fenced.log")).unwrap();
    assert!(!log.contains("node2 is a fence victim"), "{log}");
}

#[test]
fn two_node_mode_either_node_alone_is_quorate() {
    let nodes = Nodes::new(2);
    nodes.write_conf(&nodes.simple_conf(
        "pair",
        1,
        1000,
        "<cman two_node=\"1\" expected_votes=\"1\"/><fence_daemon post_join_delay=\"60\"/>",
    ));
    nodes.join_all();
    for i in 0..2 {
        let s = nodes.wait_status(i, |s| s.contains("Nodes: 2\n") && s.contains("Quorate: Yes"));
        assert_eq!(field(&s, "Two node"), "Yes");
        assert_eq!(field(&s, "Quorum"), "1");
    }
    nodes.cut(1);
    for i in 0..2 {
        let s = nodes.wait_status(i, |s| s.contains("Nodes: 1\n"));
        assert_eq!(field(&s, "Quorate"), "Yes", "node{} alone:\n{s}", i + 1);
    }
}

#[test]
fn join_dry_run_prints_corosync_conf_or_every_error() {
    let nodes = Nodes::new(1);
    nodes.write_conf(&nodes.simple_conf("solo", 1, 1000, ""));
    let out = nodes.must(0, "cman_tool", &["join", "--dry-run"]);
    assert!(out.contains("cluster_name: solo\n") && out.contains("ring0_addr: 198.18.0.1\n"), "{out}");
    nodes.write_conf_on(
        0,
        r#"<cluster name="x" config_version="v2"><clusternodes>
        <clusternode name="a" nodeid="1"/><clusternode name="a" nodeid="2"/></clusternodes></cluster>"#,
    );
    let out = nodes.run(0, "cman_tool", &["join", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("attribute config_version: \"v2\" is not a non-negative integer"), "{err}");
    assert!(err.contains("<clusternode name=\"a\"> attribute name: duplicate node name \"a\""), "{err}");
}

#[test]
fn keyfile_encrypts_corosync_and_a_node_with_another_key_stays_out() {
    let nodes = Nodes::new(3);
    nodes.write_conf(&nodes.simple_conf(
        "sealed",
        1,
        1000,
        r#"<cman keyfile="/etc/cluster/corosync.key"/><fence_daemon post_join_delay="120"/>"#,
    ));
    // /etc/cluster is private to each node: node3 gets a different key.
    for (i, byte) in [(0, 0x11u8), (1, 0x11), (2, 0x77)] {
        std::fs::write(nodes.path(i, "etc/corosync.key"), [byte; 256]).unwrap();
    }
    let dry = nodes.must(0, "cman_tool", &["join", "--dry-run"]);
    assert!(dry.contains("crypto_cipher: aes256\n") && dry.contains("keyfile: /etc/cluster/corosync.key\n"), "{dry}");
    nodes.join_all();
    for i in 0..2 {
        let s = nodes.wait_status(i, |s| s.contains("Nodes: 2\n") && s.contains("Quorate: Yes"));
        assert_eq!(field(&s, "Members"), "node1 node2");
    }
    let s = nodes.wait_status(2, |s| s.contains("Nodes: 1\n"));
    assert_eq!(field(&s, "Quorate"), "No");
    // Give node3 a few token rounds: it still cannot get in.
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(nodes.status(0).contains("Nodes: 2\n"));
    assert!(nodes.status(2).contains("Nodes: 1\n"));
}
