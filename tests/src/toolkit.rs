//! The daemon toolkit's shared paths, checked on any daemon: readiness told both ways (the
//! `NAME: ready ...` line on stdout and `READY=1` over `$NOTIFY_SOCKET`), SIGHUP leaving the
//! daemon running with its log file reopened, SIGTERM stopping it cleanly.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a daemon may take to become ready in these tests.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A stand-in for systemd's notification socket.
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
    /// Its path, for `NOTIFY_SOCKET`.
    pub path: PathBuf,
}

impl NotifySocket {
    /// Binds `dir/notify.sock`.
    pub fn new(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket { sock, path }
    }

    /// Waits for a notification containing `READY=1` and returns it (panics after `timeout`,
    /// listing what did arrive).
    pub fn wait_ready(&self, timeout: Duration) -> String {
        self.wait_ready_status("", timeout)
    }

    /// Like [`NotifySocket::wait_ready`], for the notification whose `STATUS=` starts with
    /// `status` (when several processes share the socket, e.g. corosync and fenced).
    pub fn wait_ready_status(&self, status: &str, timeout: Duration) -> String {
        let want = format!("STATUS={status}");
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
            self.sock.set_read_timeout(Some(left)).expect("timeout");
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if m.lines().any(|l| l == "READY=1") && m.lines().any(|l| l.starts_with(&want)) {
                        return m;
                    }
                    seen.push(m);
                }
                Err(_) => break,
            }
        }
        panic!("no READY=1 on the notify socket within {timeout:?}; got {seen:?}");
    }
}

/// Starts `cmd` (stdout piped, stdin and stderr /dev/null unless the caller set them) and
/// waits for a stdout line containing `ready`; returns the child and that line. Panics
/// (killing the child) after `timeout` or when stdout closes first.
pub fn spawn_until_ready(cmd: &mut Command, timeout: Duration) -> (Child, String) {
    let desc = format!("{cmd:?}");
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("ready") => return (child, line),
            Ok(line) => got.push(line),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("{desc} did not print a ready line within {timeout:?} ({status:?}); stdout: {got:?}");
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// Moves `log` aside, sends SIGHUP to `pid`, and checks that the daemon is still running and
/// wrote to a new file at `log` (the toolkit logs "SIGHUP" there once it reopened it).
pub fn assert_hup_reopens_log(pid: u32, log: &Path) {
    assert!(alive(pid), "pid {pid} is not running before SIGHUP");
    let rotated = log.with_extension("rotated");
    std::fs::rename(log, &rotated).unwrap_or_else(|e| panic!("cannot rotate {}: {e}", log.display()));
    crate::process::send_signal("HUP", &pid.to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("SIGHUP") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no SIGHUP line in a reopened {} within 10 s (alive: {}); old log:\n{}",
            log.display(),
            alive(pid),
            std::fs::read_to_string(&rotated).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second HUP, and time for a default action to have killed it.
    crate::process::send_signal("HUP", &pid.to_string());
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pid), "pid {pid} died after SIGHUP; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// SIGTERM, then waits up to `timeout` for the exit status (SIGKILL and panic after it).
pub fn stop(child: &mut Child, timeout: Duration) -> ExitStatus {
    crate::process::send_signal("TERM", &child.id().to_string());
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pid {} did not stop within {timeout:?} of SIGTERM", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
