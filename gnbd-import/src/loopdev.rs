//! Loop devices and mounts, through util-linux (`losetup`, `umount`) and sysfs.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("cannot run {tool}: {source} (is util-linux installed?)")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("losetup failed for {path}: {message}")]
    Losetup { path: PathBuf, message: String },
}

fn losetup(args: &[&std::ffi::OsStr], path: &Path) -> Result<String, LoopError> {
    let out =
        Command::new("losetup").args(args).output().map_err(|source| LoopError::Spawn { tool: "losetup", source })?;
    if !out.status.success() {
        return Err(LoopError::Losetup {
            path: path.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Attaches `file` to a free loop device in direct-I/O mode (no second page cache between
/// the loop device and the export) and returns the device path.
pub fn attach(file: &Path, read_only: bool) -> Result<PathBuf, LoopError> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["--find".as_ref(), "--show".as_ref(), "--direct-io=on".as_ref()];
    if read_only {
        args.push("--read-only".as_ref());
    }
    args.push(file.as_os_str());
    losetup(&args, file).map(PathBuf::from)
}

/// Detaches a loop device. The kernel defers the detach while the device is open
/// (autoclear), so check [`is_busy`] first when that matters.
pub fn detach(device: &Path) -> Result<(), LoopError> {
    losetup(&["--detach".as_ref(), device.as_os_str()], device).map(|_| ())
}

/// The file a loop device is attached to, if any.
pub fn backing_file(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// Whether anyone holds `device` exclusively (a mounted filesystem, a device-mapper or md
/// holder, another `O_EXCL` opener), in any mount namespace: the kernel refuses an
/// exclusive open of a block device that is claimed.
pub fn is_busy(device: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(device) {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(libc::EBUSY),
    }
}

/// Whether `path` is a mount point in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let want = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| unescape_mount(m) == want))
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `path` (lazily with `lazy`), retrying briefly while the kernel finishes closing
/// files. Returns whether `path` is no longer mounted.
pub fn unmount(path: &Path, lazy: bool) -> bool {
    for _ in 0..50 {
        if !is_mounted(path) {
            return true;
        }
        let mut cmd = Command::new("umount");
        if lazy {
            cmd.arg("--lazy");
        }
        let ok = cmd.arg(path).output().is_ok_and(|o| o.status.success());
        if ok || lazy {
            return !is_mounted(path);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    !is_mounted(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mount(r"/end\04"), r"/end\04");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
