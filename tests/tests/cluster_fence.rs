//! fenced end to end: nodes in network namespaces running corosync and fenced, a gnbd_serv
//! on a storage host in the same network, fence_gnbd as the agent.
//!
//! Needs root (namespaces, mounts) and corosync (scripts/deps.sh installs it).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gnbd_tests::corosync::{fenced_by, node_name, Nodes, StorageHost};

const TOKEN_MS: u32 = 1000;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn gnbd_method(i: usize) -> String {
    format!(r#"<fence><method name="storage"><device name="gnbd" nodename="{}"/></method></fence>"#, node_name(i))
}

#[test]
fn killed_node_is_fenced_through_gnbd_after_a_failing_first_method() {
    let nodes = Nodes::with_hosts(3, 1);
    let storage = StorageHost::start(&nodes, 3);
    let fence = |i: usize| {
        format!(
            r#"<fence><method name="broken"><device name="fail"/></method>
               <method name="storage"><device name="gnbd" nodename="{}"/></method></fence>"#,
            node_name(i)
        )
    };
    let extra = format!(
        r#"<fence_daemon post_fail_delay="0" post_join_delay="120"/>
        <fencedevices><fencedevice name="fail" agent="/bin/false"/>{}</fencedevices>"#,
        storage.fence_device()
    );
    // CLUSTER_TOKEN_MS=N measures with another token timeout.
    let token = std::env::var("CLUSTER_TOKEN_MS").ok().and_then(|t| t.parse().ok()).unwrap_or(TOKEN_MS);
    nodes.write_conf(&nodes.conf_with("alpha", 1, token, fence, &extra));
    nodes.join_all();
    for i in 0..3 {
        nodes.wait_status(i, |s| s.contains("Nodes: 3\n") && s.contains("Quorate: Yes"));
        nodes.wait_fence(i, "3 domain members", |s| {
            s["nodes"].as_array().unwrap().iter().filter(|n| n["in_domain"] == true).count() == 3
        });
    }
    assert!(storage.bans().is_empty());

    let killed_at = unix_ms();
    nodes.kill(2);
    let s = nodes.wait_fence(0, "node3 fenced", |s| fenced_by(s, "node3").is_some());
    let rec = fenced_by(&s, "node3").unwrap();
    assert_eq!(rec["method"], "storage", "the failing method falls through to the second: {s:#}");
    assert_eq!(rec["by"], "node1", "the lowest node id fences: {s:#}");
    // Reported only after the agent succeeded: the server already holds the ban, and a
    // surviving node sees it with gnbd_import -c.
    assert_eq!(storage.bans(), vec!["node3".to_owned()]);
    let key = storage.key.to_str().unwrap().to_owned();
    let listed = nodes.must(1, "gnbd_import", &["-c", &storage.addr, "-k", &key]);
    assert!(listed.contains("node3") && !listed.contains("node1") && !listed.contains("node2"), "{listed}");
    let elapsed = rec["at_unix_ms"].as_u64().unwrap().saturating_sub(killed_at);
    eprintln!("MEASURE kill -> fence acknowledged: {elapsed} ms (token {token} ms, 3 nodes)");
    // Every survivor agrees, and stays quorate.
    let s2 = nodes.wait_fence(1, "node3 fenced", |s| fenced_by(s, "node3").is_some());
    assert_eq!(fenced_by(&s2, "node3"), Some(rec));
    for i in 0..2 {
        let s = nodes.status(i);
        assert!(s.contains("Quorate: Yes") && s.contains("Nodes: 2\n"), "{s}");
    }
    let log = std::fs::read_to_string(nodes.path(0, "log/fenced.log")).unwrap();
    assert!(log.contains("fencing node3 with method \"broken\" failed; trying the next method"), "{log}");
    let ls = nodes.must(1, "fence_tool", &["ls"]);
    assert!(ls.contains("by node1 with storage"), "{ls}");
}

#[test]
fn lone_partition_fences_no_one_and_the_pair_fences_it() {
    let nodes = Nodes::with_hosts(3, 1);
    let storage = StorageHost::start(&nodes, 3);
    let extra = format!(
        r#"<fence_daemon post_fail_delay="0" post_join_delay="120"/><fencedevices>{}</fencedevices>"#,
        storage.fence_device()
    );
    nodes.write_conf(&nodes.conf_with("alpha", 1, TOKEN_MS, gnbd_method, &extra));
    nodes.join_all();
    nodes.wait_formed();
    // node3 alone on one side (the storage host stays with the pair).
    nodes.partition(&[2]);
    nodes.wait_fence(0, "node3 fenced", |s| fenced_by(s, "node3").is_some());
    // The lone node lost quorum and sees node1 and node2 as pending victims, yet fences neither.
    let lone = nodes.wait_fence(2, "node3 inquorate with two pending victims", |s| {
        s["quorate"] == false && s["nodes"].as_array().unwrap().iter().filter(|n| n["pending"] == true).count() == 2
    });
    assert!(fenced_by(&lone, "node1").is_none() && fenced_by(&lone, "node2").is_none(), "{lone:#}");
    assert_eq!(storage.bans(), vec!["node3".to_owned()]);
    let log = std::fs::read_to_string(nodes.path(2, "log/fenced.log")).unwrap();
    assert!(!log.contains(" fencing "), "the inquorate node ran an agent:\n{log}");
}

#[test]
fn two_node_mode_survivor_fences_the_other() {
    let nodes = Nodes::with_hosts(2, 1);
    let storage = StorageHost::start(&nodes, 2);
    let extra = format!(
        r#"<cman two_node="1" expected_votes="1"/><fence_daemon post_join_delay="120"/>
        <fencedevices>{}</fencedevices>"#,
        storage.fence_device()
    );
    nodes.write_conf(&nodes.conf_with("pair", 1, TOKEN_MS, gnbd_method, &extra));
    nodes.join_all();
    nodes.wait_formed();
    nodes.kill(0);
    let s = nodes.wait_fence(1, "node1 fenced", |s| fenced_by(s, "node1").is_some());
    assert_eq!(fenced_by(&s, "node1").unwrap()["by"], "node2");
    assert_eq!(storage.bans(), vec!["node1".to_owned()]);
    let st = nodes.status(1);
    assert!(st.contains("Quorate: Yes") && st.contains("Nodes: 1\n"), "{st}");
}

#[test]
fn fence_node_with_fence_manual_waits_for_the_operator() {
    let nodes = Nodes::new(3);
    nodes.write_conf(&nodes.manual_fence_conf("alpha", 1, TOKEN_MS));
    nodes.join_all();
    nodes.wait_formed();
    // Unknown nodes are refused at once.
    let out = nodes.run(0, "fence_node", &["nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node named \"nosuch\""));

    let mut waiting = nodes.cmd(0, "fence_node");
    let mut child = waiting.arg("node3").stdout(std::process::Stdio::piped()).spawn().unwrap();
    // fence_manual waits; nothing is recorded until the operator acknowledges (on another node).
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = || std::fs::read_to_string(nodes.path(0, "log/fenced.log")).unwrap_or_default();
    while !log().contains("turn node3 off by hand") {
        assert!(Instant::now() < deadline, "fence_manual never ran:\n{}", nodes.logs(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.try_wait().unwrap().is_none(), "fence_node returned before the acknowledgement");
    assert!(fenced_by(&nodes.fence_status(1), "node3").is_none());
    nodes.must(1, "fence_ack_manual", &["node3"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "fence_node did not finish after the acknowledgement");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    let s = nodes.wait_fence(2, "node3's fence recorded", |s| fenced_by(s, "node3").is_some());
    assert_eq!(fenced_by(&s, "node3").unwrap()["method"], "human");
}

#[test]
fn node_that_never_joins_is_fenced_after_post_join_delay() {
    let nodes = Nodes::with_hosts(2, 1);
    let storage = StorageHost::start(&nodes, 2);
    let extra = format!(
        r#"<cman two_node="1" expected_votes="1"/><fence_daemon post_join_delay="2"/>
        <fencedevices>{}</fencedevices>"#,
        storage.fence_device()
    );
    nodes.write_conf(&nodes.conf_with("pair", 1, TOKEN_MS, gnbd_method, &extra));
    // Only node1 starts: it forms the fence domain alone and, post_join_delay later, fences
    // node2, which it has never seen (startup fencing).
    let started = Instant::now();
    nodes.join(0);
    let s = nodes.wait_fence(0, "node2 fenced at startup", |s| fenced_by(s, "node2").is_some());
    assert!(started.elapsed() >= Duration::from_secs(2), "fenced before post_join_delay");
    assert_eq!(fenced_by(&s, "node2").unwrap()["by"], "node1");
    assert_eq!(storage.bans(), vec!["node2".to_owned()]);
}
