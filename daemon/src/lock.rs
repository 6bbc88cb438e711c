//! Pid files that are also locks: one running instance per state directory (or per socket),
//! found by `flock`, so a stale file left by a killed daemon never blocks a restart.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why an instance lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error("another {name} (pid {pid}) is already running with {path}; stop it first or use another state directory")]
    Held { name: String, pid: String, path: PathBuf },
    /// The file or its directory could not be created or locked.
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A held pid file: the lock lasts as long as this value (and the process) lives. The file
/// is removed on drop.
#[derive(Debug)]
pub struct PidFile {
    file: File,
    path: PathBuf,
}

impl PidFile {
    /// Locks `path` (creating its directory) for program `name` and writes this process's
    /// pid into it. Fails with [`LockError::Held`] naming the holder's pid when another
    /// process has it.
    pub fn lock(path: &Path, name: &str) -> Result<PidFile, LockError> {
        let io = |source| LockError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let pid = if pid.is_empty() { "unknown".to_owned() } else { pid.to_owned() };
                return Err(LockError::Held { name: name.to_owned(), pid, path: path.to_owned() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(PidFile { file, path: path.to_owned() })
    }

    /// Where the pid file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so a starting instance never sees our pid.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder_and_release_allows_a_new_one() {
        let dir = std::env::temp_dir().join(format!("daemon-lock-{}", std::process::id()));
        let p = dir.join("sub/x.pid");
        let held = PidFile::lock(&p, "x").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap().trim(), std::process::id().to_string());
        match PidFile::lock(&p, "x") {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("{other:?}"),
        }
        drop(held);
        assert!(!p.exists());
        let again = PidFile::lock(&p, "x").unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_file_from_a_dead_process_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("daemon-lock-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.pid");
        std::fs::write(&p, "999999\n").unwrap();
        let held = PidFile::lock(&p, "x").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap().trim(), std::process::id().to_string());
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
