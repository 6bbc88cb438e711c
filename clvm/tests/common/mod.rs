//! What the lvm2 interop tests share: unique names, installing lvm2 when it is missing, loop
//! devices over sparse files.
#![allow(dead_code)] // each test file uses its own part of it

use anyhow::{bail, Context, Result};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Activation off (no device-mapper here); no backup or archive files under /etc/lvm.
pub const LVM_CONFIG: &str = "global/activation=0 backup/backup=0 backup/archive=0";
/// Seconds any one lvm2 or losetup command may take.
pub const CMD_TIMEOUT_S: &str = "60";
/// The default loop device size.
pub const DEV_SIZE: u64 = 64 << 20;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test of this run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Installs lvm2 when `pvcreate` is missing (as scripts/deps.sh does); fails clearly if it cannot.
pub fn require_lvm2() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let have = || Command::new("sh").args(["-c", "command -v pvcreate"]).output().is_ok_and(|o| o.status.success());
        if !have() {
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends", "lvm2"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
        }
        assert!(have(), "lvm2 is required for these tests and could not be installed: run scripts/deps.sh as root");
    });
}

/// A loop device over a sparse file; detached and deleted on drop.
#[derive(Debug)]
pub struct LoopDev {
    pub dev: String,
    pub file: PathBuf,
    pub size: u64,
}

impl LoopDev {
    /// A [`DEV_SIZE`] device.
    pub fn new() -> Result<LoopDev> {
        LoopDev::with_size(DEV_SIZE)
    }

    /// A device of `size` bytes.
    pub fn with_size(size: u64) -> Result<LoopDev> {
        let file = std::env::temp_dir().join(unique("clvm-test-") + ".img");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(size))
            .with_context(|| format!("creating {}", file.display()))?;
        let out = Command::new("timeout")
            .args([CMD_TIMEOUT_S, "losetup", "-f", "--show"])
            .arg(&file)
            .output()
            .context("running losetup")?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&file);
            bail!("losetup -f --show failed (root and loop devices needed): {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(LoopDev { dev: String::from_utf8_lossy(&out.stdout).trim().to_owned(), file, size })
    }

    /// `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let f = std::fs::File::open(&self.dev).with_context(|| format!("opening {}", self.dev))?;
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, offset).with_context(|| format!("reading {} at {offset}", self.dev))?;
        Ok(b)
    }

    /// Writes `bytes` at `offset` and syncs.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let f =
            std::fs::OpenOptions::new().write(true).open(&self.dev).with_context(|| format!("opening {}", self.dev))?;
        f.write_all_at(bytes, offset).with_context(|| format!("writing {} at {offset}", self.dev))?;
        f.sync_all()?;
        Ok(())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("timeout").args([CMD_TIMEOUT_S, "losetup", "-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}
