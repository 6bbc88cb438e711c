//! A guard around `gnbd_import` with its own state and device-name directories.
//!
//! [`Imports`] runs `gnbd_import` with `--state-dir` and `--dev-dir` inside its own
//! [`TempDir`], so tests never touch `/var/lib/gnbd` or each other's devices. On `Drop` it
//! removes every import by force and kills any device process that is left, so a failing
//! test leaves no loop device, FUSE mount or process behind.

use crate::{bin, run_timeout, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Path of the `gnbd_import` binary; panics with a hint when it has not been built.
pub fn import_bin() -> PathBuf {
    bin("gnbd_import")
}

/// `gnbd_import` runs that share a state directory.
#[derive(Debug)]
pub struct Imports {
    dir: TempDir,
    dev_dir: PathBuf,
}

impl Imports {
    /// A fresh state directory, and device names under it (`<tmp>/dev/NAME`).
    pub fn new() -> Imports {
        let dir = TempDir::new();
        let dev_dir = dir.path().join("dev");
        Imports { dir, dev_dir }
    }

    /// Like [`Imports::new`], with device names in `dev_dir` (e.g. `/dev/gnbd`).
    pub fn with_dev_dir(dev_dir: &Path) -> Imports {
        Imports { dir: TempDir::new(), dev_dir: dev_dir.to_path_buf() }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The stable name of import `name`.
    pub fn device(&self, name: &str) -> PathBuf {
        self.dev_dir.join(name)
    }

    /// A `gnbd_import` command with `--state-dir` and `--dev-dir` set.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(import_bin());
        c.arg("--state-dir").arg(self.state_dir()).arg("--dev-dir").arg(&self.dev_dir);
        c
    }

    /// Runs `gnbd_import ARGS` (bounded to two minutes).
    pub fn run(&self, args: &[&str]) -> Output {
        run_timeout(self.cmd().args(args), Duration::from_secs(120))
    }

    /// The device log of import `name` (for failure messages).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state_dir().join("imports").join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `gnbd_import -l --json`, parsed.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["-l", "--json"]);
        assert!(out.status.success(), "gnbd_import -l failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("gnbd_import -l --json prints JSON")
    }

    /// The `state` of import `name` in `gnbd_import -l`.
    pub fn state(&self, name: &str) -> Option<String> {
        self.list().into_iter().find(|d| d["name"] == name).and_then(|d| d["state"].as_str().map(String::from))
    }

    fn pids(&self) -> Vec<u32> {
        let dir = self.state_dir().join("imports");
        let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .filter_map(|v| v["pid"].as_u64().map(|p| p as u32))
            .collect()
    }
}

impl Default for Imports {
    fn default() -> Self {
        Imports::new()
    }
}

impl Drop for Imports {
    fn drop(&mut self) {
        let pids = self.pids();
        let out = run_timeout(self.cmd().args(["-R", "-f"]), Duration::from_secs(60));
        if !out.status.success() {
            eprintln!("cleanup: gnbd_import -R -f: {}", String::from_utf8_lossy(&out.stderr));
        }
        for pid in pids {
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        // Whatever a killed process left: its FUSE mounts.
        if let Ok(entries) = std::fs::read_dir(self.state_dir().join("imports")) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "mnt") {
                    let _ = Command::new("umount").arg("-l").arg(e.path()).output();
                }
            }
        }
    }
}
