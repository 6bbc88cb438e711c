//! A 16-node cluster in network namespaces forms, loses a node, fences it and stays quorate.
//! Prints how long forming and fencing took (MEASURE lines; run with --nocapture).
//!
//! Needs root (namespaces, mounts) and corosync (scripts/deps.sh installs it).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gnbd_tests::corosync::{node_name, Nodes};

const N: usize = 16;
const TOKEN_MS: u32 = 3000;

#[test]
fn sixteen_nodes_form_and_survive_a_node_loss() {
    let nodes = Nodes::new(N);
    let fence = |i: usize| {
        format!(r#"<fence><method name="ok"><device name="true" nodename="{}"/></method></fence>"#, node_name(i))
    };
    let extra = r#"<fence_daemon post_join_delay="300"/><fencedevices><fencedevice name="true" agent="/bin/true"/></fencedevices>"#;
    nodes.write_conf(&nodes.conf_with("big", 1, TOKEN_MS, fence, extra));
    let start = Instant::now();
    nodes.join_all();
    for i in 0..N {
        nodes.wait_status(i, |s| s.contains(&format!("Nodes: {N}\n")) && s.contains("Quorate: Yes"));
    }
    eprintln!("MEASURE {N} nodes joined and quorate everywhere in {} ms", start.elapsed().as_millis());
    let s = nodes.status(0);
    assert!(s.contains(&format!("Total votes: {N}\n")) && s.contains(&format!("Quorum: {}\n", N / 2 + 1)), "{s}");

    let killed_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    nodes.kill(N - 1);
    let victim = node_name(N - 1);
    let st = nodes.wait_fence(0, "the lost node fenced", |s| {
        s["nodes"].as_array().unwrap().iter().any(|n| n["name"] == victim.as_str() && !n["last_fence"].is_null())
    });
    let rec =
        st["nodes"].as_array().unwrap().iter().find(|n| n["name"] == victim.as_str()).unwrap()["last_fence"].clone();
    assert_eq!(rec["by"], "node1");
    let at = rec["at_unix_ms"].as_u64().unwrap();
    eprintln!(
        "MEASURE {N} nodes: kill -> fence acknowledged {} ms (token {TOKEN_MS} ms)",
        at.saturating_sub(killed_at)
    );
    for i in 0..N - 1 {
        let s = nodes.wait_status(i, |s| s.contains(&format!("Nodes: {}\n", N - 1)));
        assert!(s.contains("Quorate: Yes"), "node{}: {s}", i + 1);
    }
}
