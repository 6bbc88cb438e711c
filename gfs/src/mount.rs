//! `mount.gfs`: mount a filesystem over FUSE (lock_nolock).

use crate::device::open_device;
use crate::format::LockProto;
use crate::fs::Fs;
use crate::fuse::GfsFuse;
use anyhow::{bail, Context};
use std::path::Path;

/// Parsed `-o` options.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Journal (node slot) to use; lock_nolock uses 0.
    pub journal: u32,
    pub read_only: bool,
    /// Log file for the background server.
    pub log: Option<String>,
    /// Allow a lock_dlm filesystem to be mounted with local locking (one node only!).
    pub lockproto_override: Option<LockProto>,
}

impl MountOptions {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let mut o = MountOptions::default();
        for opt in s.split(',').filter(|x| !x.is_empty()) {
            let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
            match k {
                "rw" | "defaults" | "noatime" | "relatime" | "nodev" | "nosuid" | "exec" | "dev" | "suid" => {}
                "ro" => o.read_only = true,
                "journal" | "jid" => o.journal = v.parse().context("journal=N needs a number")?,
                "log" => o.log = Some(v.to_string()),
                "lockproto" => {
                    o.lockproto_override = Some(LockProto::parse(v).context("lockproto=lock_nolock|lock_dlm")?)
                }
                other => bail!("unknown mount option {other:?}"),
            }
        }
        Ok(o)
    }
}

/// Mounts `device` at `mountpoint` and serves it until it is unmounted. `ready` is called
/// once the mount is in place.
pub fn run(device: &str, mountpoint: &Path, opts: &MountOptions, ready: impl FnOnce()) -> anyhow::Result<()> {
    if opts.read_only {
        bail!("read-only mounts are not supported yet");
    }
    let dev = open_device(device).with_context(|| format!("cannot open {device}"))?;
    let fs = Fs::mount(dev, opts.journal).with_context(|| format!("cannot mount {device}"))?;
    let proto = opts.lockproto_override.unwrap_or(fs.superblock().lockproto);
    if proto != LockProto::Nolock {
        bail!(
            "{device} uses {}; cluster locking is not available in this version \
             (mount with -o lockproto=lock_nolock on ONE node only)",
            fs.superblock().lockproto
        );
    }
    if fs.replayed() > 0 {
        tracing::info!(transactions = fs.replayed(), "journal replayed");
    }
    let (fuse, shared) = GfsFuse::new(fs);
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName(device.to_string()),
        fuser::MountOption::Subtype("gfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::Dev,
        fuser::MountOption::Suid,
    ];
    if is_root() {
        cfg.acl = fuser::SessionACL::All;
    }
    let session = fuser::Session::new(fuse, mountpoint, &cfg)
        .with_context(|| format!("cannot mount FUSE at {}", mountpoint.display()))?;
    ready();
    let r = session.run();
    // destroy() normally did this; if the session ended otherwise, still leave it clean.
    shared.shutdown().context("unmount")?;
    r.context("FUSE session")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}
