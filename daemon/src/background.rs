//! Daemonising the one way every daemon does it: the command started by the operator starts
//! itself again (same executable, same arguments) in a new session with its log as stderr,
//! waits for the child's ready line, prints it and exits 0, or prints the child's error and
//! exits 1. No fork of a running process (threads and io_uring stay out of it), no double
//! fork dance: the child is a fresh `exec`.
//!
//! The child knows it is one by the environment variable [`CHILD_ENV`] (holding its log file
//! path, or empty), which [`daemonize`] clears once it has read it, so programs the daemon
//! starts do not inherit it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;

/// Set by the waiting parent in the child's environment: the log file (empty: none).
pub const CHILD_ENV: &str = "GNBD_SUITE_DAEMON_CHILD";

#[derive(Debug)]
struct ChildState {
    log: Option<PathBuf>,
}

static CHILD: OnceLock<Option<ChildState>> = OnceLock::new();

fn child_state() -> &'static Option<ChildState> {
    CHILD.get_or_init(|| {
        let v = std::env::var_os(CHILD_ENV)?;
        let log = if v.is_empty() { None } else { Some(PathBuf::from(v)) };
        Some(ChildState { log })
    })
}

/// True in a daemon started by [`daemonize`] in the background.
pub fn is_child() -> bool {
    child_state().is_some()
}

/// The log file the waiting parent gave this background child.
pub fn child_log_file() -> Option<PathBuf> {
    child_state().as_ref().and_then(|c| c.log.clone())
}

/// How a daemon starts in the background.
#[derive(Debug, Clone)]
pub struct Background {
    /// The program's name, for messages.
    pub name: String,
    /// The daemon's log file (its stderr and `tracing` output); `None`: discard.
    pub log: Option<PathBuf>,
    /// Print the child's ready line on the parent's stdout (a mount helper stays quiet).
    pub echo_ready: bool,
    /// Arguments added to the child's command line (the rest is the parent's own).
    pub extra_args: Vec<OsString>,
}

impl Background {
    /// Background start for `name`, logging to `log`, echoing the ready line.
    pub fn new(name: &str, log: Option<PathBuf>) -> Background {
        Background { name: name.to_owned(), log, echo_ready: true, extra_args: Vec::new() }
    }
}

/// Called at the top of a daemon's `main`, after parsing flags. With `foreground`, or in
/// the background child itself, returns `None`: go on and run. Otherwise starts the child,
/// waits until it is ready (or failed) and returns the exit code `main` must return.
pub fn daemonize(foreground: bool, bg: &Background) -> Option<ExitCode> {
    if is_child() {
        // Read once above (child_state); programs the daemon starts must not inherit it.
        std::env::remove_var(CHILD_ENV);
        let _ = crate::sys::setsid();
        if let Ok(null) = std::fs::File::open("/dev/null") {
            let _ = crate::sys::redirect(&null, 0);
        }
        return None;
    }
    if foreground {
        return None;
    }
    Some(spawn_and_wait(bg))
}

fn spawn_and_wait(bg: &Background) -> ExitCode {
    let name = &bg.name;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{name}: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stderr = match &bg.log {
        Some(path) => match crate::log::open_append(path) {
            Ok(f) => Stdio::from(f),
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Stdio::null(),
    };
    let log_env: OsString = bg.log.as_ref().map(|p| absolute(p).into_os_string()).unwrap_or_default();
    let child = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .args(&bg.extra_args)
        .env(CHILD_ENV, log_env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: cannot start {}: {e}", exe.display());
            return ExitCode::FAILURE;
        }
    };
    let out = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    let line = line.trim_end();
    if let Some(msg) = line.strip_prefix(crate::exit::CHILD_ERROR_PREFIX) {
        let _ = child.wait();
        eprintln!("{name}: {msg}");
        return ExitCode::FAILURE;
    }
    if !line.is_empty() {
        if bg.echo_ready {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
        return ExitCode::SUCCESS;
    }
    let status = match child.wait() {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    match &bg.log {
        Some(p) => eprintln!("{name}: the daemon stopped before it was ready ({status}); see {}", p.display()),
        None => eprintln!("{name}: the daemon stopped before it was ready ({status})"),
    }
    ExitCode::FAILURE
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}
