//! Child processes with bounded waits and guaranteed cleanup.
//!
//! Every process the bench starts lives in a guard whose `Drop` sends SIGTERM, waits a
//! bounded time, sends SIGKILL and reaps it, so an error, a panic or a SIGINT never leaves a
//! server behind. Every wait polls the stop-signal flag and has a deadline.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sys;

pub use crate::net::free_port;

/// Poll interval of every wait loop.
const TICK: Duration = Duration::from_millis(5);

/// Fail with a clear error if a terminating signal arrived.
pub fn check_stop() -> Result<()> {
    match sys::stop_signal() {
        Some(sig) => bail!("interrupted by signal {sig}"),
        None => Ok(()),
    }
}

/// Sleep `d`, returning early with an error on a stop signal.
pub fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_stop()?;
        thread::sleep(TICK.max(Duration::from_millis(20)).min(end - Instant::now()));
    }
    Ok(())
}

/// Render a command line for logs and reports.
pub fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.is_empty() || a.contains([' ', '\'', '"', '[', ']']) {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// How a stopped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It had already exited before we asked it to stop.
    Early(ExitStatus),
    /// It exited after SIGTERM.
    OnTerm(ExitStatus),
    /// It ignored SIGTERM and had to be killed.
    Killed,
}

/// A child process that is terminated and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    /// How it exited, once reaped.
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawn `cmd` (stdin from /dev/null); the caller sets stdout and stderr.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        cmd.stdin(Stdio::null());
        sys::kill_with_parent(cmd);
        let child = cmd.spawn().with_context(|| format!("cannot start {name}: `{}`", cmdline(cmd)))?;
        Ok(Self { name: name.to_owned(), child: Some(child), exited: None })
    }

    /// The child's pid, 0 once reaped.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// `Some(status)` once the child has exited (it is then reaped).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(self.exited);
        };
        let st = child.try_wait().with_context(|| format!("waitpid({})", self.name))?;
        if st.is_some() {
            self.child = None;
            self.exited = st;
        }
        Ok(st)
    }

    /// Wait at most `timeout` for the child to exit by itself; `None` on timeout.
    pub fn wait_for(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            check_stop()?;
            thread::sleep(TICK);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
    pub fn stop(&mut self, grace: Duration) -> Ended {
        let Some(child) = self.child.as_mut() else {
            return self.exited.map_or(Ended::Killed, Ended::Early);
        };
        if let Ok(Some(st)) = child.try_wait() {
            self.child = None;
            self.exited = Some(st);
            return Ended::Early(st);
        }
        let _ = sys::kill(child.id() as i32, libc::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Ended::OnTerm(st);
            }
            thread::sleep(TICK);
        }
        let _ = child.kill();
        // SIGKILL cannot be ignored; a process stuck in uninterruptible I/O may still take a
        // while, so this wait is bounded too.
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return Ended::Killed;
            }
            thread::sleep(TICK);
        }
        eprintln!("nbd-bench: warning: {} (pid {}) did not die after SIGKILL", self.name, child.id());
        self.child = None;
        Ended::Killed
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop(Duration::from_secs(3));
        }
    }
}

/// Start a long-running process with stdout and stderr appended to `log`.
pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Result<ChildGuard> {
    spawn_split(name, cmd, log, log)
}

/// Start a long-running process with stdout appended to `out` and stderr to `err`.
pub fn spawn_split(name: &str, cmd: &mut Command, out: &Path, err: &Path) -> Result<ChildGuard> {
    let open = |p: &Path| {
        OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("cannot open log {}", p.display()))
    };
    let mut hdr = open(err)?;
    writeln!(hdr, "### {}", cmdline(cmd))?;
    cmd.stdout(open(out)?).stderr(hdr);
    ChildGuard::spawn(name, cmd)
}

/// The output of a finished short-lived command.
#[derive(Debug)]
pub struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Wall-clock time from spawn to exit.
    pub elapsed: Duration,
}

impl Captured {
    /// The last lines of stderr (or stdout if stderr is empty), for error messages.
    pub fn tail(&self) -> String {
        let src = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let lines: Vec<&str> = src.trim_end().lines().collect();
        lines[lines.len().saturating_sub(6)..].join("\n")
    }
}

/// Run a client to completion with captured output, killing it after `timeout`.
pub fn run_bounded(name: &str, cmd: &mut Command, timeout: Duration) -> Result<Captured> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut guard = ChildGuard::spawn(name, cmd)?;
    let child = guard.child.as_mut().expect("just spawned");
    let mut so = child.stdout.take().expect("stdout is piped");
    let mut se = child.stderr.take().expect("stderr is piped");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = guard.try_wait()? {
            break st;
        }
        if start.elapsed() >= timeout {
            guard.stop(Duration::from_millis(500));
            bail!("{name} did not finish within {} s and was killed: `{}`", timeout.as_secs(), cmdline(cmd));
        }
        if let Err(e) = check_stop() {
            guard.stop(Duration::from_millis(500));
            return Err(e);
        }
        thread::sleep(TICK);
    };
    let elapsed = start.elapsed();
    // The pipes close when the child exits (none of our clients leave a daemon behind holding
    // them), so these joins end.
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Ok(Captured { status, stdout, stderr, elapsed })
}

/// Like [`run_bounded`], but a non-zero exit is an error carrying the output's tail.
pub fn run_ok(name: &str, cmd: &mut Command, timeout: Duration) -> Result<Captured> {
    let out = run_bounded(name, cmd, timeout)?;
    if !out.status.success() {
        bail!("{name} failed ({}): `{}`\n{}", out.status, cmdline(cmd), out.tail());
    }
    Ok(out)
}

/// Whether some socket listens on 127.0.0.1:`port` (from /proc/net/tcp, so no probe
/// connection is made: a probe would use up iperf3's one-off server).
pub fn is_listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

/// Wait until 127.0.0.1:`port` listens, failing early if `alive` says the server died.
pub fn wait_listening(what: &str, port: u16, timeout: Duration, mut alive: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        if is_listening(port) {
            return Ok(());
        }
        if !alive()? {
            bail!("{what} exited before listening on 127.0.0.1:{port}");
        }
        if Instant::now() >= end {
            bail!("{what} did not listen on 127.0.0.1:{port} within {} s", timeout.as_secs());
        }
        check_stop()?;
        thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for a line starting with `needle` to appear in `log`; returns that line.
pub fn wait_log_line(
    what: &str,
    log: &Path,
    needle: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<bool>,
) -> Result<String> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(text) = fs::read_to_string(log) {
            if let Some(l) = text.lines().find(|l| l.starts_with(needle)) {
                return Ok(l.to_owned());
            }
        }
        if !alive()? {
            bail!("{what} exited before printing `{needle}`; log:\n{}", log_tail(log));
        }
        if Instant::now() >= end {
            bail!("{what} did not print `{needle}` within {} s; log:\n{}", timeout.as_secs(), log_tail(log));
        }
        check_stop()?;
        thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log file, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// A process that daemonized (nbd-server without `-d`): we know it only by the pid in its
/// pid file. As the bench is a subreaper, the daemon and its per-connection children are
/// re-parented to us, so they can be stopped and reaped like direct children.
#[derive(Debug)]
pub struct DaemonGuard {
    name: String,
    pid: i32,
    /// How it exited, if it was reaped before being stopped.
    exited: Option<ExitStatus>,
}

impl DaemonGuard {
    /// Wait for `pidfile` to name a process that is our (re-parented) child.
    pub fn from_pidfile(name: &str, pidfile: &Path, timeout: Duration) -> Result<Self> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(s) = fs::read_to_string(pidfile) {
                if let Ok(pid) = s.trim().parse::<i32>() {
                    if pid > 0 && parent_of(pid) == Some(std::process::id() as i32) {
                        return Ok(Self { name: name.to_owned(), pid, exited: None });
                    }
                }
            }
            if Instant::now() >= end {
                bail!("{name} wrote no usable pid file at {} within {} s", pidfile.display(), timeout.as_secs());
            }
            check_stop()?;
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's pid, 0 once stopped.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the daemon is still running (reaps it if it exited).
    pub fn alive(&mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        if self.pid <= 0 || self.exited.is_some() {
            return false;
        }
        match sys::try_reap(self.pid) {
            Ok(None) => true,
            Ok(Some(raw)) => {
                self.exited = Some(ExitStatus::from_raw(raw));
                false
            }
            Err(_) => false,
        }
    }

    /// How it exited, if it died before being stopped.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.exited
    }

    /// Stop the daemon and its children: SIGTERM, bounded wait, SIGKILL; reaps all of them.
    pub fn stop(&mut self, grace: Duration) -> Ended {
        if self.pid <= 0 {
            return Ended::Killed;
        }
        if let Some(st) = self.exited {
            // Already reaped; its orphaned children are ours now and go with reap_strays().
            self.pid = 0;
            return Ended::Early(st);
        }
        let kids = children_of(self.pid);
        let ended = stop_pid(self.pid, grace);
        // The per-connection children are ours now (subreaper) or already gone.
        for k in kids {
            if parent_of(k) == Some(std::process::id() as i32) {
                stop_pid(k, Duration::from_secs(2));
            }
        }
        self.pid = 0;
        if ended == Ended::Killed {
            eprintln!("nbd-bench: {} ignored SIGTERM and was killed", self.name);
        }
        ended
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// SIGTERM `pid` (our child), wait `grace`, SIGKILL; reap.
fn stop_pid(pid: i32, grace: Duration) -> Ended {
    use std::os::unix::process::ExitStatusExt;
    if let Ok(Some(raw)) = sys::try_reap(pid) {
        return Ended::Early(ExitStatus::from_raw(raw));
    }
    let _ = sys::kill(pid, libc::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        match sys::try_reap(pid) {
            Ok(Some(raw)) => return Ended::OnTerm(ExitStatus::from_raw(raw)),
            Ok(None) => {}
            Err(_) => return Ended::Killed, // not our child any more
        }
        thread::sleep(TICK);
    }
    let _ = sys::kill(pid, libc::SIGKILL);
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if !matches!(sys::try_reap(pid), Ok(None)) {
            break;
        }
        thread::sleep(TICK);
    }
    Ended::Killed
}

/// Stop and reap every remaining child of the bench: descendants orphaned by a server (the
/// bench is their subreaper). Call only while no [`ChildGuard`] is alive, since it reaps any
/// child. Returns how many there were.
pub fn reap_strays() -> usize {
    let me = std::process::id() as i32;
    let kids = children_of(me);
    for &k in &kids {
        stop_pid(k, Duration::from_secs(2));
    }
    kids.len()
}

/// How the processes of the tree rooted at `root` (the process and its children) have
/// `file` open: `(any fd with O_DIRECT, any fd without)`, from /proc/PID/fdinfo.
pub fn open_modes(root: i32, file: &Path) -> (bool, bool) {
    let (mut direct, mut buffered) = (false, false);
    if root <= 0 {
        return (false, false);
    }
    let mut pids = vec![root];
    pids.extend(children_of(root));
    for pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).ok().as_deref() != Some(file) {
                continue;
            }
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()));
            let flags = info.ok().and_then(|t| {
                let l = t.lines().find(|l| l.starts_with("flags:"))?;
                i64::from_str_radix(l["flags:".len()..].trim(), 8).ok()
            });
            match flags {
                Some(f) if f & i64::from(libc::O_DIRECT) != 0 => direct = true,
                Some(_) => buffered = true,
                None => {}
            }
        }
    }
    (direct, buffered)
}

/// The parent pid of `pid`, from /proc/PID/stat.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The pids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

/// A directory removed (recursively) when dropped; declare it before any process guard so
/// that it outlives them.
#[derive(Debug)]
pub struct TempDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl TempDir {
    pub fn create(parent: &Path) -> Result<Self> {
        let path = parent.join(format!("nbd-bench.{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("cannot clear {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path, keep: false })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            // Keep the logs, configs and state for a post-mortem, not the big data files.
            for f in ["backing.img", "source.img"] {
                let _ = fs::remove_file(self.path.join(f));
            }
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Search `PATH` for an executable named `name`.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// First line of `prog ARGS` output (stdout, else stderr) that contains a digit: a version.
pub fn version_of(prog: &Path, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    let out = run_bounded("version probe", &mut cmd, Duration::from_secs(10)).ok()?;
    out.stdout
        .lines()
        .chain(out.stderr.lines())
        .map(str::trim)
        .find(|l| l.chars().any(|c| c.is_ascii_digit()))
        .map(str::to_owned)
}

/// Create (or truncate) `path` and write `text` to it.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
