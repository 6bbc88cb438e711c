//! [`DlmDaemon`]: one `dlm_controld` for a test (loopback peers or alone), or a mesh of
//! them ([`DlmDaemon::start_mesh`]); [`free_addr`]/[`free_port`] to give daemons free TCP
//! ports; [`ClusterDlms`]: `dlm_controld` in cluster mode on every member of a namespace
//! cluster ([`Nodes`]).

use crate::corosync::Nodes;
use crate::{bin_dir, run_timeout};
use std::io::{BufRead, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// How long a daemon may take to print its readiness line.
const DLM_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one `dlm_tool` command may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP address on `ip` (the port is released again, so a daemon can take it).
pub fn free_addr(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0)).expect("bind a free port").local_addr().expect("bound address")
}

/// A free TCP port on `ip`.
pub fn free_port(ip: &str) -> u16 {
    free_addr(ip).port()
}

/// One `dlm_controld` (node `id`, socket and log in `dir`), killed and reaped on drop; its
/// log is printed if the test fails.
#[derive(Debug)]
pub struct DlmDaemon {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
}

impl DlmDaemon {
    /// Starts it, listening on `listen` with `peers` (none: a single node), and waits for
    /// its readiness line.
    pub fn start(dir: &Path, id: u32, listen: Option<SocketAddr>, peers: &[(u32, SocketAddr)]) -> DlmDaemon {
        let socket = dir.join(format!("dlm{id}.sock"));
        let log = dir.join(format!("dlm{id}.log"));
        let mut cmd = Command::new(bin_dir().join("dlm_controld"));
        cmd.arg("--node-id").arg(id.to_string()).arg("--socket").arg(&socket);
        if let Some(l) = listen {
            cmd.arg("--listen").arg(l.to_string());
        }
        for (p, a) in peers {
            cmd.arg("--peer").arg(format!("{p}={a}"));
        }
        cmd.env("RUST_LOG", "debug");
        cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = cmd.spawn().expect("dlm_controld runs (build it with `cargo build --workspace --bins`)");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut d = DlmDaemon { child, socket, log };
        match rx.recv_timeout(DLM_READY_TIMEOUT) {
            Ok(line) if line.contains("ready") => d,
            other => {
                d.dump();
                panic!("dlm_controld {id} did not get ready: {other:?}");
            }
        }
    }

    /// Starts nodes `1..=n`, node i listening on a free port of 127.0.0.i with every other
    /// node as a peer, sockets and logs in `dir`; returns them in node order once each is
    /// ready.
    pub fn start_mesh(dir: &Path, n: u32) -> Vec<DlmDaemon> {
        let addrs: Vec<(u32, SocketAddr)> = (1..=n).map(|i| (i, free_addr(&format!("127.0.0.{i}")))).collect();
        addrs
            .iter()
            .map(|&(id, addr)| {
                let peers: Vec<(u32, SocketAddr)> = addrs.iter().copied().filter(|p| p.0 != id).collect();
                DlmDaemon::start(dir, id, Some(addr), &peers)
            })
            .collect()
    }

    /// Prints its log.
    pub fn dump(&mut self) {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        eprintln!("--- {} ---\n{s}", self.log.display());
    }

    /// Cut power: SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `dlm_tool ARGS` against this daemon.
    pub fn tool(&self, args: &[&str]) -> Output {
        run_timeout(Command::new(bin_dir().join("dlm_tool")).arg("--socket").arg(&self.socket).args(args), TOOL_TIMEOUT)
    }
}

impl Drop for DlmDaemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            self.dump();
        }
    }
}

/// `dlm_controld` (no flags: cluster mode) on every member of a namespace cluster, its
/// output in the node's `log/dlm.log`; killed and reaped on drop (keep it bound after the
/// [`Nodes`] so that it goes first), the logs printed if the test is failing.
#[derive(Debug)]
pub struct ClusterDlms {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
    sockets: Vec<PathBuf>,
}

impl ClusterDlms {
    /// Starts the daemons (it does not wait for them: see [`ClusterDlms::socket`]).
    pub fn start(nodes: &Nodes) -> ClusterDlms {
        let mut dlms = ClusterDlms { children: Vec::new(), logs: Vec::new(), sockets: Vec::new() };
        for i in 0..nodes.members() {
            dlms.children.push(nodes.spawn(i, "dlm_controld", &[], "dlm.log"));
            dlms.logs.push(nodes.path(i, "log/dlm.log"));
            dlms.sockets.push(nodes.path(i, "run/dlm/dlm.sock"));
        }
        dlms
    }

    /// Node `i`'s daemon socket, in its private /run (a Unix socket is reachable by path
    /// from any network namespace).
    pub fn socket(&self, i: usize) -> &Path {
        &self.sockets[i]
    }

    /// Kills node `i`'s daemon (SIGKILL, reaped) and starts it again with its output in the
    /// node's `log/<log>` (also printed if the test fails, after the others).
    pub fn restart(&mut self, nodes: &Nodes, i: usize, log: &str) {
        let old = &mut self.children[i];
        old.kill().expect("kill dlm_controld");
        old.wait().expect("reap dlm_controld");
        self.children[i] = nodes.spawn(i, "dlm_controld", &[], log);
        self.logs.push(nodes.path(i, &format!("log/{log}")));
    }

    /// Node `i`'s daemon log so far (the first log: see [`ClusterDlms::restart`]).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.logs[i]).unwrap_or_default()
    }
}

impl Drop for ClusterDlms {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.logs.len() {
                eprintln!("--- node{} dlm.log\n{}", i + 1, self.log(i));
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
