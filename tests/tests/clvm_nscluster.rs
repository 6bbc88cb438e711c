//! clvm on the real cluster stack: three nodes in network and mount namespaces (corosync and
//! fenced through `cman_tool join`, `dlm_controld` and `clvmd --cluster` on each), a fourth
//! host running `gnbd_serv` with two exports, and one clustered VG on them that every node
//! changes through `gnbd://`. Fencing goes through `fence_gnbd` against the storage host.
//!
//! - a node SIGKILLed in the middle of its changes is fenced; the others go on changing the
//!   VG (their locks wait for the fence, not forever), and the VG stays consistent: one
//!   listing on every survivor, every metadata area brought to the same seqno, our vgck clean;
//! - a node cut off from the others (inquorate) refuses metadata changes with one line.
//!
//! Needs root (namespaces) and corosync (scripts/deps.sh installs them).

use std::process::Child;
use std::time::{Duration, Instant};

use gnbd_tests::corosync::{fenced_by, Nodes, StorageHost};
use gnbd_tests::{bin_dir, gnbd_export_cmd, require_tool, run_timeout, OutputExt};

const TOKEN_MS: u32 = 1000;
const MEMBERS: usize = 3;
const STORAGE: usize = 3;

fn wait_until(secs: u64, mut pred: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out after {secs} s: {}", what());
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Cluster {
    daemons: Vec<Child>,
    devices: String,
    storage: StorageHost,
    nodes: Nodes,
}

impl Cluster {
    fn start() -> Cluster {
        require_tool("corosync");
        let nodes = Nodes::with_hosts(MEMBERS, 1);
        let dir = nodes.dir().join("storage");
        let storage = StorageHost::start(&nodes, STORAGE);
        let mut uris = Vec::new();
        for k in 0..2 {
            let img = dir.join(format!("pv{k}.img"));
            std::fs::File::create(&img).unwrap().set_len(256 << 20).unwrap();
            run_timeout(
                gnbd_export_cmd(&storage.state).args(["-e", &format!("pv{k}"), "-d"]).arg(&img),
                Duration::from_secs(60),
            )
            .assert_success("gnbd_export");
            uris.push(format!("gnbd://{}/pv{k}", storage.addr));
        }
        let mut c = Cluster { daemons: Vec::new(), devices: uris.join(","), storage, nodes };
        c.nodes.form_fenced_by("clvmc", TOKEN_MS, &c.storage);
        for i in 0..MEMBERS {
            c.daemons.push(c.nodes.spawn(i, "dlm_controld", &[], "dlm.log"));
        }
        for i in 0..MEMBERS {
            let sock = c.nodes.path(i, "run/dlm/dlm.sock");
            wait_until(30, || sock.exists(), || format!("node{}: dlm_controld never listened", i + 1));
            c.daemons.push(c.nodes.spawn(i, "clvmd", &["--cluster", "--log-level", "debug"], "clvmd.log"));
        }
        for i in 0..MEMBERS {
            let log = c.nodes.path(i, "log/clvmd.log");
            wait_until(
                30,
                || std::fs::read_to_string(&log).unwrap_or_default().contains("clvmd: ready mode cluster"),
                || format!("node{}: clvmd not ready:\n{}", i + 1, std::fs::read_to_string(&log).unwrap_or_default()),
            );
        }
        c
    }

    /// `clvm ARGS` on node `i` with the VG's devices and the node's own backup directories.
    fn clvm(&self, i: usize, args: &[&str]) -> std::process::Output {
        let mut full: Vec<&str> = args.to_vec();
        full.extend([
            "--devices",
            &self.devices,
            "--config",
            "backup/backup_dir=\"/run/lvm/backup\" backup/archive_dir=\"/run/lvm/archive\"",
        ]);
        self.nodes.run(i, "clvm", &full)
    }

    fn must(&self, i: usize, args: &[&str]) -> String {
        let out = self.clvm(i, args);
        assert!(out.status.success(), "node{}: clvm {args:?}: {}", i + 1, out.describe());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The VG as node `i` lists it (vgcfgbackup, VG section only).
    fn listed(&self, i: usize, vg: &str) -> clvm::vg::VolumeGroup {
        self.must(i, &["vgcfgbackup", "-f", "/run/listed.vg", vg]);
        let text = std::fs::read(self.nodes.path(i, "run/listed.vg")).expect("backup file");
        let root = clvm::text::parse(&text).expect("backup parses");
        clvm::vg::VolumeGroup::from_root(&root).expect("VG in backup")
    }

    fn logs(&self, i: usize) -> String {
        format!(
            "--- node{n} clvmd.log\n{}\n--- node{n} dlm.log\n{}",
            std::fs::read_to_string(self.nodes.path(i, "log/clvmd.log")).unwrap_or_default(),
            std::fs::read_to_string(self.nodes.path(i, "log/dlm.log")).unwrap_or_default(),
            n = i + 1
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..MEMBERS {
                eprintln!("{}", self.logs(i));
            }
        }
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

#[test]
fn a_node_killed_during_changes_is_fenced_and_the_vg_stays_consistent() {
    let c = Cluster::start();
    let devs: Vec<String> = c.devices.split(',').map(str::to_owned).collect();
    c.must(0, &["vgcreate", "cvg", &devs[0], &devs[1]]);
    // Node 3 changes the VG in a loop; nodes 1 and 2 too.
    let loop3 = format!(
        "i=0; while true; do i=$((i+1)); {clvm} lvcreate -L 4M -n n3x$i cvg --devices {d} || exit 1; \
         {clvm} lvremove -f cvg/n3x$i --devices {d} || exit 1; echo $i > /run/n3.count; done",
        d = c.devices,
        clvm = bin_dir().join("clvm").display()
    );
    let mut job = c.nodes.spawn(2, "sh", &["-c", &loop3], "loop3.out");
    wait_until(
        60,
        || {
            std::fs::read_to_string(c.nodes.path(2, "run/n3.count"))
                .is_ok_and(|s| s.trim().parse::<u32>().unwrap_or(0) >= 3)
        },
        || {
            format!(
                "node 3's loop is too slow:\n{}",
                std::fs::read_to_string(c.nodes.path(2, "log/loop3.out")).unwrap_or_default()
            )
        },
    );
    std::thread::scope(|s| {
        for n in 0..2 {
            let c = &c;
            s.spawn(move || {
                for k in 0..3 {
                    c.must(n, &["lvcreate", "-L", "4M", "-n", &format!("n{}k{k}", n + 1), "cvg"]);
                }
            });
        }
    });
    // Power cut on node 3 in the middle of its loop.
    c.nodes.kill(2);
    let _ = job.wait();
    let killed = Instant::now();
    // The survivors change the VG again: their locks wait for node 3's fence, then proceed.
    c.must(0, &["lvcreate", "-L", "4M", "-n", "after1", "cvg"]);
    let took = killed.elapsed();
    c.must(1, &["lvcreate", "-L", "4M", "-n", "after2", "cvg"]);
    let s = c.nodes.wait_fence(0, "node3 fenced", |s| fenced_by(s, "node3").is_some());
    assert!(fenced_by(&s, "node3").is_some(), "{s:#}");
    eprintln!("MEASURE SIGKILL of node3 -> a change on node1 completes: {took:?}");

    // One listing everywhere, with every survivor's change and at most node 3's last LV.
    let v1 = c.listed(0, "cvg");
    let v2 = c.listed(1, "cvg");
    assert_eq!(v1, v2, "the survivors list different metadata");
    for name in ["n1k0", "n1k1", "n1k2", "n2k0", "n2k1", "n2k2", "after1", "after2"] {
        assert!(
            v1.lv(name).is_some(),
            "{name} is missing: {:?}",
            v1.logical_volumes.iter().map(|l| &l.name).collect::<Vec<_>>()
        );
    }
    let node3: Vec<&str> =
        v1.logical_volumes.iter().map(|l| l.name.as_str()).filter(|n| n.starts_with("n3x")).collect();
    assert!(node3.len() <= 1, "node 3 had at most one LV between its lvcreate and lvremove: {node3:?}");
    // Every metadata area holds the same text (the last change rewrote them all), and our
    // consistency check agrees.
    c.must(0, &["vgck", "cvg"]);
    assert!(clvm::cli::vg_check(&v1).is_empty(), "{:?}", clvm::cli::vg_check(&v1));
}

#[test]
fn an_inquorate_node_refuses_metadata_changes() {
    let c = Cluster::start();
    let devs: Vec<String> = c.devices.split(',').map(str::to_owned).collect();
    c.must(0, &["vgcreate", "qvg", &devs[0], &devs[1]]);
    c.nodes.cut(2);
    // Node 3 alone: one vote of three.
    wait_until(
        60,
        || c.nodes.status(2).contains("Quorate: No") || !c.nodes.status(2).contains("Quorate: Yes"),
        || format!("node 3 still quorate:\n{}", c.nodes.status(2)),
    );
    let out = c.clvm(2, &["lvcreate", "-L", "4M", "-n", "lost", "qvg"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{}", out.describe());
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() == 1 && lines[0].contains("inquorate"), "one line saying why: {lines:?}");
    // The quorate side goes on (once node 3 is fenced).
    c.must(0, &["lvcreate", "-L", "4M", "-n", "kept", "qvg"]);
    let v = c.listed(1, "qvg");
    assert!(v.lv("kept").is_some() && v.lv("lost").is_none(), "{:?}", v.logical_volumes);
}
