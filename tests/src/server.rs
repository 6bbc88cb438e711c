//! A `gnbd_serv` child process guarded by `Drop`.

use crate::bins::{export_bin, serv_bin};
use crate::process::{run_timeout, terminate, OutputExt};
use crate::tempdir::TempDir;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long a server may take to print its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a server gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long one `gnbd_export` invocation may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// A `gnbd_export` command with `--state-dir DIR` already given, for a state directory
/// that may have no server (error-path tests).
pub fn gnbd_export_cmd(state_dir: &Path) -> Command {
    let mut cmd = Command::new(export_bin());
    cmd.arg("--state-dir").arg(state_dir);
    cmd
}

/// Options for starting a [`Server`].
#[derive(Debug, Default)]
pub struct ServerBuilder {
    args: Vec<OsString>,
    unix: bool,
    port: u16,
}

impl ServerBuilder {
    /// Passes one more argument to `gnbd_serv`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Listen on this TCP port (kept across [`Server::restart`]) instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Also listen on a Unix socket (`--unix <tempdir>/nbd.sock`).
    pub fn unix_socket(mut self) -> Self {
        self.unix = true;
        self
    }

    /// Starts the server and waits for its readiness line.
    pub fn start(self) -> Server {
        let dir = TempDir::new();
        let state_dir = dir.join("state");
        std::fs::create_dir(&state_dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", state_dir.display()));
        let log_path = dir.join("gnbd_serv.log");
        let mut args = self.args;
        let unix = self.unix.then(|| dir.join("nbd.sock"));
        if let Some(path) = &unix {
            args.push("--unix".into());
            args.push(path.into());
        }
        let mut server =
            Server { child: None, port: 0, fixed_port: self.port, unix, control: None, args, state_dir, log_path, dir };
        server.spawn();
        server
    }
}

/// One running `gnbd_serv --foreground` on `127.0.0.1:0`, with its own temporary
/// directory (state dir `state/`, log `gnbd_serv.log`, and room for backing files).
///
/// Dropping it stops the server (SIGTERM, SIGKILL after a grace period), reaps it,
/// prints its log if the thread is panicking, and removes the directory.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    port: u16,
    /// The port asked for (0: any free one).
    fixed_port: u16,
    unix: Option<PathBuf>,
    /// The network control channel (`--cluster-key`), from ` control=ADDR` in the ready line.
    control: Option<SocketAddr>,
    args: Vec<OsString>,
    state_dir: PathBuf,
    log_path: PathBuf,
    // Declared last: dropped after `Drop::drop` has stopped the child.
    dir: TempDir,
}

impl Server {
    /// Starts a server with default options.
    pub fn start() -> Server {
        ServerBuilder::default().start()
    }

    /// Options for a server started with [`ServerBuilder::start`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn() with a server still running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path.display()));
        let _ = writeln!(log, "===== harness: starting gnbd_serv =====");
        let mut cmd = Command::new(serv_bin());
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .args(["-p", &self.fixed_port.to_string(), "--bind", "127.0.0.1", "--foreground"])
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            // Plain logs in the log file (tracing-subscriber honours NO_COLOR).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone().expect("cloning a log file handle")));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the server never blocks on (or dies of) a full pipe.
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(log, "[stdout] {line}");
            }
        });
        self.child = Some(child);
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(other) => {
                self.fail_start(&format!("gnbd_serv closed stdout before printing its ready line ({other:?})"))
            }
            Err(_) => self.fail_start(&format!("gnbd_serv printed no ready line within {READY_TIMEOUT:?}")),
        };
        match parse_ready(&line) {
            Some((port, unix)) => {
                if let (Some(want), Some(got)) = (&self.unix, &unix) {
                    if want != got {
                        self.fail_start(&format!(
                            "ready line `{line}` names unix socket {} but we passed {}",
                            got.display(),
                            want.display()
                        ));
                    }
                }
                if self.unix.is_some() && unix.is_none() {
                    self.fail_start(&format!("ready line `{line}` lacks ` unix=PATH` although --unix was given"));
                }
                self.port = port;
                self.control = parse_control(&line);
            }
            None => self.fail_start(&format!(
                "unexpected ready line `{line}`; expected \
                 `gnbd_serv: ready tcp=127.0.0.1:PORT[ unix=PATH]`"
            )),
        }
    }

    fn fail_start(&mut self, why: &str) -> ! {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("{why}\n--- gnbd_serv log ---\n{}", self.log());
    }

    /// The TCP port the server listens on (changes across [`Server::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `nbd://127.0.0.1:PORT/NAME`.
    pub fn uri(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{name}", self.port)
    }

    /// The network control channel's address, when started with `--cluster-key`.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control
    }

    /// The Unix socket path, when started with [`ServerBuilder::unix_socket`].
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix.as_deref()
    }

    /// The server's `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The server's own temporary directory (put backing files here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `self.dir().join(rel)`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    /// The server process id, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server wrote to stderr (and stdout after the ready line) so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_path.display()))
    }

    /// Panics (with the log) unless the server process is still running.
    pub fn assert_alive(&mut self) {
        let status = match self.child.as_mut() {
            None => None,
            Some(child) => match child.try_wait() {
                Ok(None) => return,
                Ok(Some(status)) => Some(status),
                Err(e) => panic!("cannot query the server process: {e}"),
            },
        };
        panic!("gnbd_serv is not running (exit: {status:?})\n--- gnbd_serv log ---\n{}", self.log());
    }

    /// Peak resident set size of the server in KiB (`VmHWM`), if readable.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Graceful stop: SIGTERM, wait (bounded), reap. Returns the exit status; panics if
    /// the server had to be SIGKILLed.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("stop() needs a running server");
        let (status, killed) = terminate(&mut child, STOP_GRACE);
        assert!(!killed, "gnbd_serv did not exit within {STOP_GRACE:?} of SIGTERM\n--- log ---\n{}", self.log());
        status
    }

    /// Cuts power: SIGKILL and reap, without any chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL the server (if running) and start a new one with the same state directory
    /// and arguments; waits for its ready line. The port usually changes (not when the
    /// server was built with [`ServerBuilder::port`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `gnbd_export --state-dir DIR ARGS...` (bounded) and returns its output.
    pub fn gnbd_export<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        run_timeout(gnbd_export_cmd(&self.state_dir).args(args), EXPORT_TIMEOUT)
    }

    /// `gnbd_export -e NAME -d PATH FLAGS...` (flags such as `-c`, `-o`); panics on failure.
    pub fn export(&self, name: &str, path: &Path, flags: &[&str]) {
        let mut args: Vec<OsString> = vec!["-e".into(), name.into(), "-d".into(), path.into()];
        args.extend(flags.iter().map(OsString::from));
        let out = self.gnbd_export(&args);
        if !out.status.success() {
            panic!("gnbd_export {args:?} failed: {}\n--- gnbd_serv log ---\n{}", out.describe(), self.log());
        }
    }

    /// `gnbd_export -l --json`, parsed; panics unless it succeeds and is a JSON array.
    pub fn list_json(&self) -> Vec<serde_json::Value> {
        let out = self.gnbd_export(["-l", "--json"]);
        out.assert_success("gnbd_export -l --json");
        match serde_json::from_slice(&out.stdout) {
            Ok(serde_json::Value::Array(v)) => v,
            other => panic!("gnbd_export -l --json did not print a JSON array ({other:?}): {}", out.describe()),
        }
    }
}

/// The ` control=ADDR` of a ready line, if any.
fn parse_control(line: &str) -> Option<SocketAddr> {
    line.split_whitespace().find_map(|t| t.strip_prefix("control=")?.parse().ok())
}

/// Parses `gnbd_serv: ready tcp=127.0.0.1:PORT[ unix=PATH][ control=ADDR]`.
fn parse_ready(line: &str) -> Option<(u16, Option<PathBuf>)> {
    let rest = line.trim_end().strip_prefix("gnbd_serv: ready ")?;
    let mut port = None;
    let mut unix = None;
    for token in rest.split(' ') {
        if let Some(addr) = token.strip_prefix("tcp=") {
            let addr: SocketAddr = addr.parse().ok()?;
            if addr.ip() != std::net::Ipv4Addr::LOCALHOST {
                return None;
            }
            port = Some(addr.port());
        } else if let Some(path) = token.strip_prefix("unix=") {
            unix = Some(PathBuf::from(path));
        } else if token.starts_with("control=") {
            // The network control channel; see `parse_control`.
        } else {
            return None;
        }
    }
    Some((port.filter(|&p| p != 0)?, unix))
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let (status, killed) = terminate(&mut child, STOP_GRACE);
            if killed {
                eprintln!("warning: gnbd_serv ignored SIGTERM for {STOP_GRACE:?}; SIGKILLed it");
            } else if !status.success() {
                eprintln!("warning: gnbd_serv exited with {status} after SIGTERM");
            }
        }
        if thread::panicking() {
            eprintln!(
                "===== gnbd_serv log ({}) =====\n{}\n===== end of gnbd_serv log =====",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ready;
    use std::path::PathBuf;

    #[test]
    fn ready_line() {
        assert_eq!(parse_ready("gnbd_serv: ready tcp=127.0.0.1:4242"), Some((4242, None)));
        assert_eq!(
            parse_ready("gnbd_serv: ready tcp=127.0.0.1:1 unix=/tmp/x.sock\n"),
            Some((1, Some(PathBuf::from("/tmp/x.sock"))))
        );
        assert_eq!(parse_ready("gnbd_serv: ready tcp=0.0.0.0:1"), None);
        assert_eq!(parse_ready("gnbd_serv: ready tcp=127.0.0.1:0"), None);
        assert_eq!(parse_ready("listening on 1"), None);
    }
}
