//! The persisted server state: `STATE_DIR/exports.json`, rewritten atomically (temporary
//! file, fsync, rename, fsync of the directory) after every change, so that a restarted
//! server serves the same exports and a crash never leaves a torn file.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::export::ExportSpec;

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "exports.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    /// Format version of this file.
    version: u32,
    exports: Vec<ExportSpec>,
}

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt ({source}); move it aside to start with no exports")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("{path} has format version {version}, which this gnbd_serv does not know")]
    Version { path: PathBuf, version: u32 },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Loads the exports of a state directory (none when there is no state file yet).
pub fn load(dir: &Path) -> Result<Vec<ExportSpec>, StateError> {
    Ok(read_json::<StateFile>(dir, STATE_FILE, |f| f.version)?.map_or_else(Vec::new, |f| f.exports))
}

/// Reads a versioned JSON file of the state directory: `None` when it does not exist yet,
/// an error naming the file when it is unreadable, corrupt or of an unknown version.
pub fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
    version: impl Fn(&T) -> u32,
) -> Result<Option<T>, StateError> {
    let path = dir.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    let value: T = serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path: path.clone(), source })?;
    match version(&value) {
        1 => Ok(Some(value)),
        v => Err(StateError::Version { path, version: v }),
    }
}

/// Replaces the state file atomically and durably.
pub fn save(dir: &Path, exports: &[ExportSpec]) -> Result<(), StateError> {
    let text = serde_json::to_string_pretty(&StateFile { version: 1, exports: exports.to_vec() })
        .expect("export specs always serialise");
    write_atomically(dir, STATE_FILE, text.as_bytes())
}

/// Writes `dir/name` durably and atomically ([`daemon::write_atomic`]).
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let path = dir.join(name);
    let mut data = bytes.to_vec();
    data.push(b'\n');
    daemon::write_atomic(&path, &data).map_err(|source| StateError::Write { path: path.clone(), source })
}

/// Makes a state directory path absolute (the daemon changes nothing, but logs and the
/// control protocol carry absolute paths).
pub fn absolute_dir(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("gnbd-state-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().is_empty());
        let spec = ExportSpec {
            name: "disk0".into(),
            path: "/dev/null".into(),
            cached: true,
            readonly: false,
            description: "test".into(),
            tls: true,
        };
        save(&dir, std::slice::from_ref(&spec)).unwrap();
        assert_eq!(load(&dir).unwrap(), vec![spec]);
        fs::write(dir.join(STATE_FILE), "{ not json").unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
