//! Running peer tools with a deadline, and finding them.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Deadline used by [`run`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd` to completion with [`DEFAULT_TIMEOUT`]; see [`run_timeout`].
pub fn run(cmd: &mut Command) -> Output {
    run_timeout(cmd, DEFAULT_TIMEOUT)
}

/// Sends `signal` (a name such as `TERM` or `KILL`) to `target`, a pid or `-pgid`.
/// Uses the `kill` utility so that this crate needs no `unsafe`.
pub(crate) fn send_signal(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn capture(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) in its own process group.
///
/// If it is still running after `timeout`, the whole process group is killed and the
/// test panics, showing what the command printed so far. Output of children that outlive
/// the command and keep its pipes open is collected for at most 10 more seconds, then
/// the group is killed.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let pgid = format!("-{}", child.id());
    let out_rx = capture(child.stdout.take());
    let err_rx = capture(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot wait for {desc}: {e}"),
        }
    };
    let Some(status) = status else {
        send_signal("KILL", &pgid);
        let _ = child.kill();
        let _ = child.wait();
        let stdout = out_rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
        let stderr = err_rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
        panic!(
            "{desc} did not finish within {timeout:?}; killed its process group.\n\
             --- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    let collect = |rx: &mpsc::Receiver<Vec<u8>>| -> Option<Vec<u8>> { rx.recv_timeout(Duration::from_secs(10)).ok() };
    let stdout = collect(&out_rx);
    let stderr = collect(&err_rx);
    let (stdout, stderr) = match (stdout, stderr) {
        (Some(o), Some(e)) => (o, e),
        (o, e) => {
            // Leftover children keep the pipes open: kill them and take what we have.
            eprintln!("warning: children of {desc} outlived it; killing its process group");
            send_signal("KILL", &pgid);
            let o = o.or_else(|| out_rx.recv_timeout(Duration::from_secs(5)).ok());
            let e = e.or_else(|| err_rx.recv_timeout(Duration::from_secs(5)).ok());
            (o.unwrap_or_default(), e.unwrap_or_default())
        }
    };
    Output { status, stdout, stderr }
}

fn is_executable(path: &Path) -> bool {
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Finds `name` in `$PATH`, `/usr/sbin` or `/sbin`, or fails the test saying how to
/// install it. Tests never skip silently because a tool is missing.
pub fn require_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]);
    dirs.extend([PathBuf::from("/usr/bin"), PathBuf::from("/bin")]);
    for dir in dirs {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return candidate;
        }
    }
    panic!(
        "required tool `{name}` is not installed (looked in $PATH, /usr/sbin, /sbin). \
         Install the test dependencies with ./scripts/deps.sh (the test command \
         ./scripts/test.sh does this)"
    );
}

/// Conveniences for [`Output`].
pub trait OutputExt {
    /// stdout, lossily decoded.
    fn stdout_str(&self) -> String;
    /// stderr, lossily decoded.
    fn stderr_str(&self) -> String;
    /// Exit status, stdout and stderr, for failure messages.
    fn describe(&self) -> String;
    /// Panics (showing everything) unless the command exited with status 0.
    fn assert_success(&self, what: &str) -> &Self;
    /// Panics (showing everything) unless the command exited with status `code`.
    fn assert_code(&self, code: i32, what: &str) -> &Self;
}

impl OutputExt for Output {
    fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn describe(&self) -> String {
        let status = match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => format!("{:?}", self.status),
        };
        format!("{status}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout_str(), self.stderr_str())
    }

    #[track_caller]
    fn assert_success(&self, what: &str) -> &Self {
        assert!(self.status.success(), "{what} failed: {}", self.describe());
        self
    }

    #[track_caller]
    fn assert_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(self.status.code(), Some(code), "{what}: expected exit status {code}, got {}", self.describe());
        self
    }
}

/// Stops `child`: SIGTERM, up to `grace` to exit, then SIGKILL; always reaps it.
/// Returns the exit status and whether SIGKILL was needed.
pub(crate) fn terminate(child: &mut Child, grace: Duration) -> (std::process::ExitStatus, bool) {
    if let Ok(Some(status)) = child.try_wait() {
        return (status, false);
    }
    send_signal("TERM", &child.id().to_string());
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return (status, false),
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let status = child.wait().expect("waiting for a child we own");
    (status, true)
}
