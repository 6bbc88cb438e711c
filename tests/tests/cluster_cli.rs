//! The cluster tools' command lines: man-page style `--help`, clean failures (exit status 1
//! and a message) when corosync or fenced is not running, and the fence_manual agent's
//! non-fencing actions.

use std::process::Command;

use gnbd_tests::bin_dir;
use gnbd_tests::corosync::Nodes;

const TOOLS: [&str; 7] =
    ["cman_tool", "clustat", "fenced", "fence_node", "fence_tool", "fence_ack_manual", "fence_manual"];

#[test]
fn help_reads_like_a_man_page() {
    for tool in TOOLS {
        let out = Command::new(bin_dir().join(tool)).arg("--help").output().expect("run --help");
        assert!(out.status.success(), "{tool} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        for section in ["DESCRIPTION", "EXAMPLES", "FILES", "EXIT STATUS"] {
            assert!(text.contains(section), "{tool} --help lacks {section}:\n{text}");
        }
    }
}

#[test]
fn tools_fail_cleanly_without_a_cluster() {
    // A fresh node namespace: no corosync, no fenced.
    let nodes = Nodes::new(1);
    nodes.write_conf(&nodes.simple_conf("solo", 1, 1000, ""));
    for (tool, args, msg) in [
        ("cman_tool", &["status"][..], "cannot connect to corosync"),
        ("cman_tool", &["nodes"][..], "cannot connect to corosync"),
        ("clustat", &[][..], "cannot connect to corosync"),
        ("cman_tool", &["version", "-r"][..], "cannot reach fenced"),
        ("fence_tool", &["ls"][..], "cannot reach fenced"),
        ("fence_node", &["node1"][..], "cannot reach fenced"),
        ("fence_ack_manual", &["node1"][..], "cannot reach fenced"),
        ("fenced", &[][..], "cannot connect to corosync"),
    ] {
        let out = nodes.run(0, tool, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tool} {args:?}: {err}");
        assert!(err.contains(msg), "{tool} {args:?}: {err}");
    }
    // cman_tool version without fenced falls back to the file.
    assert_eq!(nodes.must(0, "cman_tool", &["version"]).trim(), "1");
    // A missing cluster.conf is named.
    let out = nodes.run(0, "cman_tool", &["join", "--dry-run", "-c", "/nonexistent/cluster.conf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/cluster.conf"));
}

#[test]
fn fence_manual_answers_status_and_metadata_and_refuses_bad_input() {
    let agent = bin_dir().join("fence_manual");
    let run = |input: &str| {
        let mut c = Command::new(&agent)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("fence_manual");
        std::io::Write::write_all(&mut c.stdin.take().unwrap(), input.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let out = run("action=metadata\n");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("resource-agent name=\"fence_manual\""));
    assert!(run("action=status\nnodename=n1\n").status.success());
    let out = run("action=off\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no valid nodename="));
    let out = run("action=off\nnodename=../../etc/passwd\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(run("action=on\nnodename=n1\n").status.code(), Some(1));
}
