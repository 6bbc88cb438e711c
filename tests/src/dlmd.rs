//! [`DlmDaemon`]: one `dlm_controld` for a test (loopback peers or alone), and
//! [`free_addr`]/[`free_port`] to give daemons free TCP ports.

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
        cmd.env("DLM_LOG", "debug");
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
