//! cluster.conf propagation (`cman_tool version -r`) and fenced's local API, with nodes in
//! network namespaces running corosync and fenced.
//!
//! Needs root (namespaces, mounts) and corosync (scripts/deps.sh installs it).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use gnbd_tests::corosync::{node_name, Nodes};

fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} in status:\n{status}"))
}

#[test]
fn newer_config_reaches_every_member_and_stale_ones_are_refused() {
    let nodes = Nodes::new(3);
    nodes.write_conf(&nodes.simple_conf("alpha", 1, 1000, "<fence_daemon post_join_delay=\"120\"/>"));
    nodes.join_all();
    nodes.wait_formed();
    // The operator edits cluster.conf on node2 and propagates it.
    let v2 = nodes.simple_conf("alpha", 2, 1000, "<fence_daemon post_fail_delay=\"5\" post_join_delay=\"120\"/>");
    nodes.write_conf_on(1, &v2);
    let out = nodes.must(1, "cman_tool", &["version", "-r"]);
    assert!(out.contains("config_version 2 is in force"), "{out}");
    for i in 0..3 {
        // Written on every member (the sender's own file included), byte for byte.
        nodes.wait_output(i, "cman_tool", &["version"], |o| o.trim() == "2");
        assert_eq!(nodes.read_conf(i), v2, "node{}", i + 1);
        assert_eq!(field(&nodes.status(i), "Config Version"), "2");
        assert_eq!(nodes.fence_status(i)["config_version"], 2);
    }
    // No temporary files are left next to cluster.conf.
    let leftovers: Vec<_> = std::fs::read_dir(nodes.path(0, "etc")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // Votes follow cluster.conf: node1 gets 3 votes, so 5 are expected and 3 make quorum.
    let v3 = nodes
        .simple_conf("alpha", 3, 1000, "<fence_daemon post_join_delay=\"120\"/>")
        .replace(r#"nodeid="1""#, r#"nodeid="1" votes="3""#);
    nodes.write_conf_on(0, &v3);
    nodes.must(0, "cman_tool", &["version", "-r"]);
    for i in 0..3 {
        let s = nodes.wait_status(i, |s| s.contains("Total votes: 5\n"));
        assert_eq!(field(&s, "Expected votes"), "5", "{s}");
        assert_eq!(field(&s, "Quorum"), "3", "{s}");
        assert_eq!(field(&s, "Config Version"), "3", "{s}");
    }
    let v2 = v3;

    // A stale version (equal or older) is refused and changes nothing.
    for stale in [3, 1] {
        let old = nodes.simple_conf("alpha", stale, 1000, "<fence_daemon post_fail_delay=\"9\"/>");
        nodes.write_conf_on(0, &old);
        let out = nodes.run(0, "cman_tool", &["version", "-r"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("config_version {stale} is not newer than 3 in force; refused")), "{err}");
        for i in 1..3 {
            assert_eq!(nodes.read_conf(i), v2);
        }
    }
    // An invalid file is refused with its errors.
    nodes.write_conf_on(0, r#"<cluster name="alpha" config_version="9"><clusternodes/></cluster>"#);
    let out = nodes.run(0, "cman_tool", &["version", "-r"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no <clusternode>"));
    assert_eq!(nodes.read_conf(2), v2);
}

/// One connection to node `i`'s fenced socket (the control protocol: JSON lines, requests
/// tagged `op`, replies `{"ok":..}` or `{"error":{"kind","message"}}`), from the host side
/// of its private /run.
fn api(nodes: &Nodes, i: usize) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(nodes.path(i, "run/cluster/fenced.sock")).expect("fenced socket");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn line(r: &mut BufReader<UnixStream>) -> serde_json::Value {
    let mut l = String::new();
    r.read_line(&mut l).expect("a line from fenced within the timeout");
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
}

/// The next event of a subscription: `{"ok":EVENT}`.
fn event(r: &mut BufReader<UnixStream>) -> serde_json::Value {
    let l = line(r);
    l.get("ok").cloned().unwrap_or_else(|| panic!("not an event line: {l}"))
}

#[test]
fn local_api_reports_membership_and_fences_and_waits_for_them() {
    let nodes = Nodes::new(3);
    let fence = |i: usize| {
        format!(r#"<fence><method name="ok"><device name="true" nodename="{}"/></method></fence>"#, node_name(i))
    };
    let extra = r#"<fence_daemon post_join_delay="120"/><fencedevices><fencedevice name="true" agent="/bin/true"/></fencedevices>"#;
    nodes.write_conf(&nodes.conf_with("alpha", 1, 1000, fence, extra));
    nodes.join_all();
    nodes.wait_formed();
    let (mut events, mut w) = api(&nodes, 1);
    w.write_all(b"{\"op\":\"subscribe\"}\n").unwrap();
    let subscribed = line(&mut events);
    assert!(subscribed.get("ok").is_some_and(|v| v.is_null()), "{subscribed}");
    let first = event(&mut events);
    assert_eq!(first["event"], "membership");

    // A bad request gets an error, not a dropped connection.
    let (mut r, mut w2) = api(&nodes, 0);
    w2.write_all(b"{\"op\":\"explode\"}\n").unwrap();
    let e = line(&mut r);
    assert_eq!(e["error"]["kind"], "bad_request", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("explode"), "{e}");

    nodes.kill(2);
    // Like a lock manager: on the membership change, wait until the lost node is fenced.
    let mut saw_fenced = false;
    loop {
        let ev = event(&mut events);
        match ev["event"].as_str() {
            Some("membership") if ev["members"] == serde_json::json!([1, 2]) => {
                assert_eq!(ev["quorate"], true);
                break;
            }
            Some("fenced") => saw_fenced = true,
            _ => {}
        }
    }
    let (mut r3, mut w3) = api(&nodes, 1);
    w3.write_all(b"{\"op\":\"wait_fenced\",\"nodeid\":3}\n").unwrap();
    let done = line(&mut r3);
    assert!(done.get("ok").is_some_and(|v| v.is_null()), "{done}");
    // wait_fenced returned, so the fence is already recorded.
    let s = nodes.fence_entry(1, "node3");
    assert_eq!(s["pending"], false, "{s}");
    assert_eq!(s["last_fence"]["method"], "ok", "{s}");
    assert_eq!(s["last_fence"]["by"], "node1", "{s}");
    while !saw_fenced {
        let ev = event(&mut events);
        if ev["event"] == "fenced" {
            assert_eq!(ev["nodeid"], 3);
            assert_eq!(ev["name"], "node3");
            assert_eq!(ev["method"], "ok");
            saw_fenced = true;
        }
    }
    // A member is safe: wait_fenced on it answers at once.
    w2.write_all(b"{\"op\":\"wait_fenced\",\"nodeid\":2}\n").unwrap();
    let done = line(&mut r);
    assert!(done.get("ok").is_some_and(|v| v.is_null()), "{done}");
}

#[test]
fn node_starting_with_an_older_config_catches_up() {
    let nodes = Nodes::new(3);
    let v1 = nodes.simple_conf("alpha", 1, 1000, "<fence_daemon post_join_delay=\"120\"/>");
    let v4 = nodes.simple_conf("alpha", 4, 1000, "<fence_daemon post_fail_delay=\"1\" post_join_delay=\"120\"/>");
    nodes.write_conf(&v4);
    nodes.write_conf_on(2, &v1);
    nodes.join(0);
    nodes.join(1);
    nodes.join(2);
    nodes.wait_output(2, "cman_tool", &["version"], |o| o.trim() == "4");
    assert_eq!(nodes.read_conf(2), v4);
    for i in 0..3 {
        nodes.wait_status(i, |s| s.contains("Nodes: 3\n") && s.contains("Config Version: 4\n"));
    }
}

/// The pid fenced wrote on node `i` (the host sees every namespace's processes).
fn fenced_pid(nodes: &Nodes, i: usize) -> String {
    let text = std::fs::read_to_string(nodes.path(i, "run/cluster/fenced.pid")).expect("fenced.pid");
    text.trim().to_owned()
}

#[test]
fn sighup_rereads_cluster_conf_and_propagates_a_newer_version() {
    let nodes = Nodes::new(2);
    nodes.write_conf(&nodes.simple_conf("alpha", 1, 1000, "<fence_daemon post_join_delay=\"120\"/>"));
    nodes.join_all();
    nodes.wait_formed();
    let pid = fenced_pid(&nodes, 0);
    let hup = || {
        let st = std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill");
        assert!(st.success());
    };
    let log = || std::fs::read_to_string(nodes.path(0, "log/fenced.log")).unwrap_or_default();
    // The same version: nothing changes, and fenced stays up.
    hup();
    nodes.wait_output(0, "cman_tool", &["version"], |_| log().contains("nothing changed"));
    assert_eq!(fenced_pid(&nodes, 0), pid);
    // A newer file on node1 reaches node2 as with cman_tool version -r.
    let v2 = nodes.simple_conf("alpha", 2, 1000, "<fence_daemon post_fail_delay=\"5\" post_join_delay=\"120\"/>");
    nodes.write_conf_on(0, &v2);
    hup();
    for i in 0..2 {
        nodes.wait_output(i, "cman_tool", &["version"], |o| o.trim() == "2");
        assert_eq!(nodes.read_conf(i), v2, "node{}", i + 1);
    }
    // An invalid file is logged and changes nothing.
    nodes.write_conf_on(0, "<cluster name=\"alpha\" config_version=\"3\"></cluster>");
    hup();
    nodes.wait_output(0, "cman_tool", &["version"], |_| log().contains("not applied"));
    assert_eq!(nodes.fence_status(0)["config_version"], 2);
    assert_eq!(nodes.read_conf(1), v2);
}
