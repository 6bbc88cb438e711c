//! rgmanager on a namespace cluster ([`crate::corosync::Nodes`] with dlm_controld):
//! [`RgCluster`] starts and stops rgmanager per node and reads services through `clustat -x`,
//! [`write_exec`] writes the LSB scripts and fence agents the tests use.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::corosync::Nodes;
use crate::dlmd::ClusterDlms;
use crate::OutputExt;

/// A fence agent for killed nodes: they are already off, so it only records the fence.
pub const FENCE_OK: &str = "#!/bin/sh\ncat >/dev/null\nexit 0\n";

/// Writes an executable script.
pub fn write_exec(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A namespace cluster running rgmanager: the nodes, their dlm_controld, and one rgmanager
/// per member (started with [`RgCluster::start_rgmanager`]). The first plain host after the
/// members, if any, is the client of [`RgCluster::get`]. Drop kills the daemons (rgmanager
/// first) and, when the test is failing, prints every rgmanager log and DLM lock dump.
#[derive(Debug)]
pub struct RgCluster {
    /// rgmanager of each member, while it runs.
    pub rgs: Vec<Option<Child>>,
    /// dlm_controld on every member.
    pub dlms: Option<ClusterDlms>,
    /// The nodes.
    pub nodes: Nodes,
}

impl Drop for RgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.nodes.members() {
                for f in ["rgmanager.log", "rgmanager2.log", "rgmanager3.log"] {
                    if let Ok(t) = std::fs::read_to_string(self.nodes.path(i, &format!("log/{f}"))) {
                        let tail: Vec<&str> = t.lines().rev().take(120).collect();
                        eprintln!("--- node{} {f}", i + 1);
                        for l in tail.into_iter().rev() {
                            eprintln!("{l}");
                        }
                    }
                }
                let out = self.nodes.run(i, "dlm_tool", &["lockdump", "rgmanager"]);
                eprintln!("--- node{} dlm_tool lockdump rgmanager\n{}", i + 1, out.describe());
            }
        }
        for c in self.rgs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.dlms.take();
    }
}

impl RgCluster {
    /// Wraps a formed cluster and its DLM daemons; no rgmanager runs yet.
    pub fn new(nodes: Nodes, dlms: ClusterDlms) -> RgCluster {
        RgCluster { rgs: (0..nodes.members()).map(|_| None).collect(), dlms: Some(dlms), nodes }
    }

    /// Starts rgmanager on member `i` (after its dlm_controld made its socket), its output in
    /// the node's `log/<log>`, and waits until clustat there shows it.
    pub fn start_rgmanager(&mut self, i: usize, log: &str) {
        let sock = self.nodes.path(i, "run/dlm/dlm.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "node{}: dlm_controld never made its socket", i + 1);
            std::thread::sleep(Duration::from_millis(100));
        }
        let c = self.nodes.spawn(i, "rgmanager", &["-f", "--tick-ms", "200", "--log-level", "info"], log);
        self.rgs[i] = Some(c);
        self.nodes.wait_output(i, "clustat", &[], |s| s.contains("Online, Local, rgmanager"));
    }

    /// `clustat -x` on node `i`: (owner, state) of `svc`.
    pub fn service(&self, i: usize, svc: &str) -> (String, String) {
        let out = self.nodes.run(i, "clustat", &["-x"]);
        let x = out.stdout_str();
        let line = x
            .lines()
            .find(|l| l.contains(&format!("name=\"service:{svc}\"")))
            .unwrap_or_else(|| panic!("no {svc} in clustat -x on node{}: {}", i + 1, out.describe()));
        let attr = |a: &str| {
            let k = format!(" {a}=\"");
            let s = &line[line.find(&k).expect("attribute") + k.len()..];
            s[..s.find('"').expect("quote")].to_owned()
        };
        (attr("owner"), attr("state_str"))
    }

    /// Waits until node `i` sees `svc` in `state` on `owner` ("none" for no owner).
    pub fn wait_service(&self, i: usize, svc: &str, owner: &str, state: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (o, s) = self.service(i, svc);
            if o == owner && s == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node{}: {svc} is {s} on {o}, expected {state} on {owner}:\n{}",
                i + 1,
                self.nodes.run(i, "clustat", &["-l"]).stdout_str()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the client gets from http://IP/ (None: no answer).
    pub fn get(&self, ip: &str) -> Option<String> {
        let client = self.nodes.members();
        assert!(client < self.nodes.len(), "no client host: build the nodes with Nodes::with_hosts");
        let out = self.nodes.run(client, "curl", &["-s", "--max-time", "1", &format!("http://{ip}/")]);
        out.status.success().then(|| out.stdout_str().trim().to_owned())
    }

    /// Waits until the client gets `want` from http://IP/; returns how long that took.
    pub fn wait_answer(&self, ip: &str, want: &str, secs: u64) -> Duration {
        let t = Instant::now();
        loop {
            if self.get(ip).as_deref() == Some(want) {
                return t.elapsed();
            }
            assert!(t.elapsed() < Duration::from_secs(secs), "{ip} never answered {want}; last: {:?}", self.get(ip));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Signals node `i`'s rgmanager (TERM or KILL) and reaps it.
    pub fn stop_rgmanager(&mut self, i: usize, signal: &str) {
        let mut c = self.rgs[i].take().expect("rgmanager running");
        let pid = c.id().to_string();
        let _ = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.try_wait().expect("wait rgmanager").is_none() {
            assert!(Instant::now() < deadline, "node{}: rgmanager did not exit on SIG{signal}", i + 1);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs clusvcadm on node `i`.
    pub fn clusvcadm(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.nodes.run(i, "clusvcadm", args)
    }
}
