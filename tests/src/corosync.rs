//! Multi-node cluster harness: N nodes on one machine, each in its own network namespace
//! (a veth into a bridge that lives in a separate "switch" namespace, address 198.18.0.N/24)
//! and its own persistent mount namespace in which `/run`, `/etc/cluster`,
//! `/var/lib/corosync` and `/var/log/cluster` are the node's private directories. Commands
//! for node i run through `nsenter` into both namespaces, so `cman_tool join` there starts
//! corosync and fenced for that node only.
//!
//! Faults: [`Nodes::cut`] / [`Nodes::heal`] take a node's link down and up,
//! [`Nodes::partition`] moves nodes' links onto a second bridge, [`Nodes::kill`] SIGKILLs
//! every process in a node's network namespace. [`Drop`] kills every node's processes,
//! removes the namespaces and mounts, and prints each node's logs if the test is failing.
//!
//! Also here: [`fenced_by`] reads a node's last fence out of [`Nodes::fence_status`], and
//! [`StorageHost`] runs a `gnbd_serv` on a plain host of the cluster network with a cluster
//! key and a node table of the members (the storage `fence_gnbd` fences through).
//!
//! ```no_run
//! use gnbd_tests::corosync::Nodes;
//! let nodes = Nodes::new(3);
//! nodes.write_conf(&nodes.simple_conf("alpha", 1, 1000, ""));
//! nodes.join_all();
//! nodes.wait_status(0, |s| s.contains("Quorate: Yes"));
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::cluster::control;
use crate::{bin_dir, run_timeout, TempDir};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Bound on any single harness command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(90);

/// The address of node `i` (0-based).
pub fn node_addr(i: usize) -> String {
    format!("198.18.0.{}", i + 1)
}

/// Node `i`'s name in generated configs (1-based like node ids).
pub fn node_name(i: usize) -> String {
    format!("node{}", i + 1)
}

/// The last fence of node `name` in a [`Nodes::fence_status`] document, if it has been
/// fenced (None also when the node is not listed).
pub fn fenced_by(status: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    let n = status["nodes"].as_array()?.iter().find(|n| n["name"] == name)?;
    (!n["last_fence"].is_null()).then(|| n["last_fence"].clone())
}

/// Runs a host command (bounded), returning its output.
fn sh(cmd: &str, args: &[&str]) -> Output {
    run_timeout(Command::new(cmd).args(args), CMD_TIMEOUT)
}

/// Runs a host command that must succeed.
fn must(cmd: &str, args: &[&str]) {
    let out = sh(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One node's namespaces and directories.
#[derive(Debug)]
pub struct Node {
    /// Network namespace name (under /run/netns).
    pub netns: String,
    /// Bind-mounted mount namespace file.
    pub mntns: PathBuf,
    /// The node's private directories (run, etc, lib, log).
    pub dir: PathBuf,
}

/// N nodes in namespaces; see the module documentation.
#[derive(Debug)]
pub struct Nodes {
    /// The nodes, index 0 is node1.
    pub nodes: Vec<Node>,
    /// How many of the nodes are cluster members (the rest are plain hosts, e.g. storage).
    members: usize,
    switch: String,
    nsdir: PathBuf,
    nsdir_mounted: bool,
    tmp: TempDir,
}

impl Nodes {
    /// Builds `n` nodes (namespaces, links, private directories); nothing is started.
    pub fn new(n: usize) -> Nodes {
        Self::with_hosts(n, 0)
    }

    /// Builds `n` cluster nodes plus `hosts` plain hosts on the same bridge (node indexes
    /// `n..n + hosts`, addresses continuing after the nodes'), e.g. a storage server.
    pub fn with_hosts(members: usize, hosts: usize) -> Nodes {
        let n = members + hosts;
        assert!((1..=200).contains(&n));
        let tmp = TempDir::new();
        let tag = format!("cl{}x{}", std::process::id() % 100_000, COUNTER.fetch_add(1, Ordering::Relaxed));
        let switch = format!("{tag}sw");
        let nsdir = tmp.join("ns");
        std::fs::create_dir_all(&nsdir).expect("ns dir");
        let mut me = Nodes {
            nodes: Vec::new(),
            members,
            switch: switch.clone(),
            nsdir: nsdir.clone(),
            nsdir_mounted: false,
            tmp,
        };
        for d in ["/etc/cluster", "/var/log/cluster", "/var/lib/corosync"] {
            std::fs::create_dir_all(d).expect("host mount point");
        }
        // A private mount of the ns directory so mount namespaces can be pinned to files in it.
        let ns = nsdir.to_str().expect("utf-8 path");
        must("mount", &["--bind", ns, ns]);
        me.nsdir_mounted = true;
        must("mount", &["--make-private", ns]);
        must("ip", &["netns", "add", &switch]);
        must("ip", &["-n", &switch, "link", "set", "lo", "up"]);
        for br in ["br0", "br1"] {
            must("ip", &["-n", &switch, "link", "add", br, "type", "bridge"]);
            must("ip", &["-n", &switch, "link", "set", br, "up"]);
        }
        for i in 0..n {
            let netns = format!("{tag}n{}", i + 1);
            let dir = me.tmp.join(node_name(i));
            for sub in ["run", "etc", "lib", "log"] {
                std::fs::create_dir_all(dir.join(sub)).expect("node dir");
            }
            let mntns = nsdir.join(node_name(i));
            std::fs::write(&mntns, b"").expect("mount ns file");
            me.nodes.push(Node { netns: netns.clone(), mntns: mntns.clone(), dir: dir.clone() });
            must("ip", &["netns", "add", &netns]);
            must("ip", &["-n", &netns, "link", "set", "lo", "up"]);
            let veth = format!("v{}", i + 1);
            must("ip", &["-n", &switch, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns]);
            must("ip", &["-n", &switch, "link", "set", &veth, "master", "br0", "up"]);
            must("ip", &["-n", &netns, "addr", "add", &format!("{}/24", node_addr(i)), "dev", "eth0"]);
            must("ip", &["-n", &netns, "link", "set", "eth0", "up"]);
            let d = dir.to_str().expect("utf-8 path");
            let script = format!(
                "mount --bind {d}/run /run && mount --bind {d}/etc /etc/cluster && \
                 mount --bind {d}/lib /var/lib/corosync && mount --bind {d}/log /var/log/cluster"
            );
            let m = format!("--mount={}", mntns.display());
            must("unshare", &[&m, "--propagation", "private", "sh", "-c", &script]);
        }
        me
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false (a cluster has nodes).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A command that runs `program` inside node `i`'s namespaces. A bare name is looked up
    /// in the build directory first.
    pub fn cmd(&self, i: usize, program: &str) -> Command {
        let node = &self.nodes[i];
        let built = bin_dir().join(program);
        let prog = if !program.contains('/') && built.is_file() { built } else { PathBuf::from(program) };
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", node.netns)).arg(format!("--mount={}", node.mntns.display())).arg("--");
        c.arg(prog);
        c
    }

    /// Runs `program args` on node `i` (bounded by [`CMD_TIMEOUT`]).
    pub fn run(&self, i: usize, program: &str, args: &[&str]) -> Output {
        run_timeout(self.cmd(i, program).args(args), CMD_TIMEOUT)
    }

    /// Runs `program args` on node `i`; panics with its output unless it succeeds.
    pub fn must(&self, i: usize, program: &str, args: &[&str]) -> String {
        let out = self.run(i, program, args);
        assert!(
            out.status.success(),
            "node{}: {program} {args:?} failed ({}):\n{}{}",
            i + 1,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Number of cluster members (nodes `0..members()`).
    pub fn members(&self) -> usize {
        self.members
    }

    /// Writes cluster.conf on every cluster node.
    pub fn write_conf(&self, xml: &str) {
        for i in 0..self.members {
            self.write_conf_on(i, xml);
        }
    }

    /// Writes cluster.conf on node `i` only.
    pub fn write_conf_on(&self, i: usize, xml: &str) {
        std::fs::write(self.nodes[i].dir.join("etc/cluster.conf"), xml).expect("write cluster.conf");
    }

    /// Node `i`'s cluster.conf as it is now.
    pub fn read_conf(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("etc/cluster.conf")).unwrap_or_default()
    }

    /// A path inside node `i`'s private directories (`run/...`, `etc/...`, `log/...`).
    pub fn path(&self, i: usize, rel: &str) -> PathBuf {
        self.nodes[i].dir.join(rel)
    }

    /// A cluster.conf for all nodes: one vote each, addresses from [`node_addr`], the given
    /// token timeout, `<fence>` XML per node produced by `fence(i)`, and `extra` XML
    /// (fencedevices, cman, fence_daemon) inside `<cluster>`.
    pub fn conf_with(
        &self,
        name: &str,
        version: u64,
        token_ms: u32,
        fence: impl Fn(usize) -> String,
        extra: &str,
    ) -> String {
        let mut x = format!("<?xml version=\"1.0\"?>\n<cluster name=\"{name}\" config_version=\"{version}\">\n");
        x.push_str(&format!("  <totem token=\"{token_ms}\"/>\n  <clusternodes>\n"));
        for i in 0..self.members {
            x.push_str(&format!(
                "    <clusternode name=\"{}\" nodeid=\"{}\" addr=\"{}\">{}</clusternode>\n",
                node_name(i),
                i + 1,
                node_addr(i),
                fence(i)
            ));
        }
        x.push_str("  </clusternodes>\n");
        x.push_str(extra);
        x.push_str("\n</cluster>\n");
        x
    }

    /// [`Nodes::conf_with`] without fence methods.
    pub fn simple_conf(&self, name: &str, version: u64, token_ms: u32, extra: &str) -> String {
        self.conf_with(name, version, token_ms, |_| String::new(), extra)
    }

    /// [`Nodes::conf_with`] in which every member is fenced by hand: method "human" with
    /// the `fence_manual` device "manual", and a post_join_delay of 120 s.
    pub fn manual_fence_conf(&self, name: &str, version: u64, token_ms: u32) -> String {
        let fence = |i: usize| {
            format!(
                r#"<fence><method name="human"><device name="manual" nodename="{}"/></method></fence>"#,
                node_name(i)
            )
        };
        let extra = r#"<fence_daemon post_join_delay="120"/><fencedevices><fencedevice name="manual" agent="fence_manual"/></fencedevices>"#;
        self.conf_with(name, version, token_ms, fence, extra)
    }

    /// `cman_tool join` on node `i`.
    pub fn join(&self, i: usize) {
        self.must(i, "cman_tool", &["join", "-t", "60"]);
    }

    /// `cman_tool join` on every cluster node, all at once.
    pub fn join_all(&self) {
        std::thread::scope(|s| {
            for i in 0..self.members {
                s.spawn(move || self.join(i));
            }
        });
    }

    /// Writes a cluster.conf named `cluster` whose members are fenced through fence_gnbd
    /// against `storage` (method `storage`, no post-fail delay), joins every member, and waits
    /// until the cluster is formed and every member is in the fence domain.
    pub fn form_fenced_by(&self, cluster: &str, token_ms: u32, storage: &StorageHost) {
        let fence = |i: usize| {
            format!(
                r#"<fence><method name="storage"><device name="gnbd" nodename="{}"/></method></fence>"#,
                node_name(i)
            )
        };
        let extra = format!(
            r#"<fence_daemon post_fail_delay="0" post_join_delay="120"/><fencedevices>{}</fencedevices>"#,
            storage.fence_device()
        );
        self.write_conf(&self.conf_with(cluster, 1, token_ms, fence, &extra));
        self.join_all();
        self.wait_formed();
        let members = self.members();
        for i in 0..members {
            self.wait_fence(i, &format!("{members} domain members"), |s| {
                s["nodes"].as_array().is_some_and(|n| n.iter().filter(|n| n["in_domain"] == true).count() == members)
            });
        }
    }

    /// Waits until every cluster node reports all members and quorum (panics after 90 s
    /// per node).
    pub fn wait_formed(&self) {
        let want = format!("Nodes: {}\n", self.members);
        for i in 0..self.members {
            self.wait_status(i, |s| s.contains(&want) && s.contains("Quorate: Yes"));
        }
    }

    /// `cman_tool status` on node `i` (stdout, or the error text).
    pub fn status(&self, i: usize) -> String {
        let out = self.run(i, "cman_tool", &["status"]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// Polls `cman_tool status` on node `i` until `pred` holds (panics after 90 s).
    pub fn wait_status(&self, i: usize, pred: impl Fn(&str) -> bool) -> String {
        self.wait_output(i, "cman_tool", &["status"], pred)
    }

    /// Polls `program args` on node `i` until `pred` holds on its stdout+stderr (panics
    /// after 90 s with the last output).
    pub fn wait_output(&self, i: usize, program: &str, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.run(i, program, args);
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if pred(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "node{}: {program} {args:?} never matched; last output:\n{text}", i + 1);
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Takes node `i`'s link down (the node is cut off from every other node).
    pub fn cut(&self, i: usize) {
        must("ip", &["-n", &self.switch, "link", "set", &format!("v{}", i + 1), "down"]);
    }

    /// Brings node `i`'s link back up, on the main bridge.
    pub fn heal(&self, i: usize) {
        let v = format!("v{}", i + 1);
        must("ip", &["-n", &self.switch, "link", "set", &v, "master", "br0"]);
        must("ip", &["-n", &self.switch, "link", "set", &v, "up"]);
    }

    /// Splits the bridge: `side` nodes move to a second bridge, the rest stay.
    pub fn partition(&self, side: &[usize]) {
        for i in side {
            must("ip", &["-n", &self.switch, "link", "set", &format!("v{}", i + 1), "master", "br1"]);
        }
    }

    /// Puts every link back on the main bridge.
    pub fn heal_all(&self) {
        for i in 0..self.len() {
            self.heal(i);
        }
    }

    /// Pids of every process in node `i`'s network namespace.
    pub fn pids(&self, i: usize) -> Vec<String> {
        let out = sh("ip", &["netns", "pids", &self.nodes[i].netns]);
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
    }

    /// SIGKILLs every process of node `i` (power cut) and waits until they are gone.
    pub fn kill(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pids = self.pids(i);
            if pids.is_empty() {
                return;
            }
            let mut args = vec!["-KILL"];
            args.extend(pids.iter().map(String::as_str));
            let _ = sh("kill", &args);
            assert!(Instant::now() < deadline, "node{}: processes {pids:?} survive SIGKILL", i + 1);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `program args` on node `i` in the background, its output in the node's
    /// `log/<log>` file. The process dies with the node ([`Nodes::kill`], [`Drop`]).
    pub fn spawn(&self, i: usize, program: &str, args: &[&str], log: &str) -> std::process::Child {
        let path = self.nodes[i].dir.join("log").join(log);
        let out = std::fs::File::create(&path).expect("log file");
        let err = out.try_clone().expect("log file");
        self.cmd(i, program).args(args).stdout(out).stderr(err).spawn().expect("spawn in node")
    }

    /// `fence_tool ls --json` on node `i`, parsed.
    pub fn fence_status(&self, i: usize) -> serde_json::Value {
        let out = self.must(i, "fence_tool", &["ls", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("fence_tool ls --json: {e}: {out}"))
    }

    /// The entry for node `name` in [`Nodes::fence_status`] of node `i`.
    pub fn fence_entry(&self, i: usize, name: &str) -> serde_json::Value {
        let s = self.fence_status(i);
        s["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} in fence status {s}"))
    }

    /// Polls node `i`'s fence status until `pred` holds (panics after 90 s).
    pub fn wait_fence(&self, i: usize, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let s = self.fence_status(i);
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "node{}: never saw {what}; fence status:\n{s:#}", i + 1);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node `i`'s logs (corosync, fenced) for diagnostics.
    pub fn logs(&self, i: usize) -> String {
        let mut s = String::new();
        for f in ["corosync.stderr", "fenced.log", "corosync.log"] {
            let p = self.nodes[i].dir.join("log").join(f);
            if let Ok(t) = std::fs::read_to_string(&p) {
                let tail: Vec<&str> = t.lines().rev().take(150).collect();
                s.push_str(&format!("--- node{} {f} (last {} lines)\n", i + 1, tail.len()));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// The temporary directory holding every node's files.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.len() {
                eprintln!("{}", self.logs(i));
            }
        }
        for i in 0..self.len() {
            // Bounded: gives up after 30 s rather than hanging the test run.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !self.pids(i).is_empty() && Instant::now() < deadline {
                let pids = self.pids(i);
                let mut args = vec!["-KILL"];
                args.extend(pids.iter().map(String::as_str));
                let _ = sh("kill", &args);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for n in &self.nodes {
            let _ = sh("umount", &[n.mntns.to_str().unwrap_or("")]);
            let _ = sh("ip", &["netns", "del", &n.netns]);
        }
        let _ = sh("ip", &["netns", "del", &self.switch]);
        if self.nsdir_mounted {
            let _ = sh("umount", &[self.nsdir.to_str().unwrap_or("")]);
        }
    }
}

/// A `gnbd_serv --foreground` on host `host` of [`Nodes`] (usually a plain host, see
/// [`Nodes::with_hosts`]) with a cluster key (0x5a repeated, mode 0600) and a node table
/// naming every member at its address; its files live in `<nodes dir>/storage`, its log in
/// the host's `log/gnbd_serv.log`. Killed and reaped on drop.
#[derive(Debug)]
pub struct StorageHost {
    child: std::process::Child,
    /// The server's state directory (its control socket is there).
    pub state: PathBuf,
    /// The cluster key file.
    pub key: PathBuf,
    /// The host's address.
    pub addr: String,
}

impl StorageHost {
    /// Starts the server and waits (at most 60 s) for its readiness line.
    pub fn start(nodes: &Nodes, host: usize) -> StorageHost {
        let dir = nodes.dir().join("storage");
        let state = dir.join("state");
        std::fs::create_dir_all(&state).expect("storage state dir");
        let key = dir.join("cluster.key");
        std::fs::write(&key, [0x5au8; 64]).expect("cluster key");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod cluster key");
        }
        let table = dir.join("nodes");
        let lines: String = (0..nodes.members()).map(|i| format!("{} {}\n", node_name(i), node_addr(i))).collect();
        std::fs::write(&table, lines).expect("node table");
        let args = [
            "--foreground",
            "--state-dir",
            state.to_str().expect("utf-8 path"),
            "--nodes",
            table.to_str().expect("utf-8 path"),
            "--cluster-key",
            key.to_str().expect("utf-8 path"),
        ];
        let child = nodes.spawn(host, "gnbd_serv", &args, "gnbd_serv.log");
        let log = nodes.path(host, "log/gnbd_serv.log");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("ready") {
            assert!(
                Instant::now() < deadline,
                "gnbd_serv not ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        StorageHost { child, state, key, addr: node_addr(host) }
    }

    /// The nodes the server bans (its `bans` control verb), sorted.
    pub fn bans(&self) -> Vec<String> {
        let v = control(&self.state, r#"{"op":"bans"}"#);
        let mut b: Vec<String> = v["ok"]["nodes"]
            .as_array()
            .expect("bans reply lists nodes")
            .iter()
            .map(|n| n.as_str().unwrap_or(&n.to_string()).to_owned())
            .collect();
        b.sort();
        b
    }

    /// `<fencedevice name="gnbd">` XML for fence_gnbd against this server.
    pub fn fence_device(&self) -> String {
        format!(
            r#"<fencedevice name="gnbd" agent="fence_gnbd" servers="{}" cluster_key="{}"/>"#,
            self.addr,
            self.key.display()
        )
    }
}

impl Drop for StorageHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
