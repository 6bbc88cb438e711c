//! Running agent commands with a time limit. Output goes to a temporary file, not a pipe:
//! an init script that starts a daemon leaves it holding the script's stdout, and waiting
//! for the end of a pipe would wait for the daemon.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::AgentError;

/// A finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// What it printed (stdout and stderr, at most 64 KiB).
    pub output: String,
}

impl Outcome {
    /// The last non-empty line printed.
    pub fn last_line(&self) -> String {
        self.output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn out_file() -> PathBuf {
    std::env::temp_dir().join(format!("rgmanager-{}-{}.out", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)))
}

/// Where a program is: a path as given; a bare name on PATH, else beside this executable
/// (the suite's own tools, such as `gnbd_export` and `mount_gfs`, when not installed).
pub fn resolve(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|c| c.is_file()));
    on_path.or_else(|| {
        let exe = std::env::current_exe().ok()?;
        let c = exe.parent()?.join(program);
        c.is_file().then_some(c)
    })
}

/// Runs `program args`, killing it after `timeout`.
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Result<Outcome, AgentError> {
    let resolved = resolve(program).unwrap_or_else(|| PathBuf::from(program));
    let path = out_file();
    let spawn_err = |e: std::io::Error| AgentError::Spawn { program: program.to_owned(), reason: e.to_string() };
    let file = std::fs::File::create(&path).map_err(spawn_err)?;
    let file2 = file.try_clone().map_err(spawn_err)?;
    let child = Command::new(&resolved)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(file2))
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(spawn_err(e));
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(spawn_err(e));
            }
        }
    };
    let mut output = String::new();
    if let Ok(f) = std::fs::File::open(&path) {
        let _ = f.take(64 * 1024).read_to_string(&mut output);
    }
    let _ = std::fs::remove_file(&path);
    match status {
        Some(s) => Ok(Outcome { code: s.code().unwrap_or(-1), output }),
        None => Err(AgentError::Timeout {
            program: program.to_owned(),
            action: args.first().map(|s| s.to_string()).unwrap_or_default(),
            secs: timeout.as_secs(),
        }),
    }
}

/// Runs a command that must exit 0.
pub fn must(program: &str, args: &[&str], timeout: Duration) -> Result<Outcome, AgentError> {
    let o = run(program, args, timeout)?;
    if o.code == 0 {
        Ok(o)
    } else {
        Err(AgentError::Failed {
            command: format!("{program} {}", args.join(" ")),
            code: o.code,
            output: o.last_line(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_output_and_timeouts() {
        let o = run("sh", &["-c", "echo one; echo two >&2; exit 3"], Duration::from_secs(10)).unwrap();
        assert_eq!(o.code, 3);
        assert_eq!(o.last_line(), "two");
        // A daemon left behind holding the output does not make us wait.
        let o = run("sh", &["-c", "sleep 30 & echo $!"], Duration::from_secs(20)).unwrap();
        assert_eq!(o.code, 0);
        let pid = o.last_line();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "returned only after the child {pid} ended");
        let _ = run("kill", &[&pid], Duration::from_secs(5));
        assert!(matches!(run("sleep", &["10"], Duration::from_millis(200)), Err(AgentError::Timeout { .. })));
        assert!(matches!(run("/nonexistent/prog", &[], Duration::from_secs(1)), Err(AgentError::Spawn { .. })));
        let e = must("sh", &["-c", "echo bad; exit 1"], Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.to_string(), "sh -c echo bad; exit 1 exited with 1: bad");
    }
}
