//! `mount.gfs`: mount a filesystem over FUSE (lock_nolock or lock_dlm).

use crate::device::open_device;
use crate::format::LockProto;
use crate::fs::Fs;
use crate::fs::LockKey;
use crate::fuse::GfsFuse;
use crate::glock::{Glocks, HeldLocks, Want};
use anyhow::{bail, Context};
use std::path::Path;
use std::sync::Arc;

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
    /// dlm_controld's socket (lock_dlm).
    pub dlm_socket: Option<String>,
    /// Glocks kept before idle ones go back to the DLM (lock_dlm).
    pub glock_limit: Option<usize>,
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
                "dlm_socket" => o.dlm_socket = Some(v.to_string()),
                "glock_limit" => o.glock_limit = Some(v.parse().context("glock_limit=N needs a number")?),
                "lockproto" => {
                    o.lockproto_override = Some(LockProto::parse(v).context("lockproto=lock_nolock|lock_dlm")?)
                }
                other => bail!("unknown mount option {other:?}"),
            }
        }
        Ok(o)
    }
}

/// Mounts `device` at `mountpoint` and serves it until it is unmounted, or until `signals`
/// asks to stop (then it unmounts: normally, or lazily when the filesystem is busy). `ready`
/// is called once the mount is in place.
pub fn run(
    device: &str,
    mountpoint: &Path,
    opts: &MountOptions,
    signals: daemon::Signals,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    if opts.read_only {
        bail!("read-only mounts are not supported yet");
    }
    let dev = open_device(device).with_context(|| format!("cannot open {device}"))?;
    let sb = crate::mkfs::read_superblock(&*dev).with_context(|| format!("{device} holds no gfs filesystem"))?;
    let proto = opts.lockproto_override.unwrap_or(sb.lockproto);
    let (mut fs, glocks) = match proto {
        LockProto::Nolock => (Fs::mount(dev, opts.journal).with_context(|| format!("cannot mount {device}"))?, None),
        LockProto::Dlm => {
            let fsname = sb.locktable.split_once(':').map(|(_, f)| f).unwrap_or(&sb.locktable);
            let socket = opts.dlm_socket.as_deref().unwrap_or("/run/dlm/dlm.sock");
            let glocks = Glocks::start(socket, fsname, opts.journal, sb.journal_count).with_context(|| {
                format!("cannot take journal {} of {} through {socket}", opts.journal, sb.locktable)
            })?;
            if let Some(n) = opts.glock_limit {
                glocks.set_glock_limit(n);
            }
            // Mounting replays this slot's journal and folds its statfs changes: under the
            // recovery lock and the statfs glock (kept until the engine is in place).
            let mut held = HeldLocks::default();
            glocks
                .acquire(&mut held, &[(LockKey::Layout, Want::Sh), (LockKey::Statfs, Want::Ex)])
                .context("cannot take the statfs glock")?;
            let mut fs = glocks
                .with_recovery_lock(|| Fs::mount_with(dev, opts.journal, true))
                .context("cannot take the recovery lock")?
                .with_context(|| format!("cannot mount {device}"))?;
            fs.set_clustered().context("cannot write back after mounting")?;
            let rgs = fs.rgrp_count();
            fs.set_rgrp_hint((opts.journal as u64 * rgs as u64 / sb.journal_count.max(1) as u64) as u32);
            (fs, Some((Arc::new(glocks), held)))
        }
    };
    if fs.replayed() > 0 {
        tracing::info!(transactions = fs.replayed(), "journal replayed");
    }
    let (glocks, mount_held) = match glocks {
        Some((g, h)) => {
            // An inode whose last link goes stays while another node has it open.
            let g2 = g.clone();
            fs.set_open_check(Box::new(move |ino| g2.open_elsewhere(ino)));
            (Some(g), Some(h))
        }
        None => (None, None),
    };
    let (fuse, shared) = GfsFuse::new(fs, glocks);
    // The engine is in place: other nodes may have the statfs glock now.
    drop(mount_held);
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
    if proto == LockProto::Dlm {
        // A request waiting for another node's glock must not hold up the others.
        cfg.n_threads = Some(8);
        cfg.clone_fd = true;
    }
    let mut session = fuser::Session::new(fuse, mountpoint, &cfg)
        .with_context(|| format!("cannot mount FUSE at {}", mountpoint.display()))?;
    shared.start_invalidator(session.notifier());
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("stop".into())
        .spawn(move || {
            signals.wait_stop();
            tracing::info!(mountpoint = %mp.display(), "stop requested: unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::warn!(error = %e, "unmount failed (busy?): detaching lazily");
                if let Err(e) = crate::sys::lazy_unmount(&mp) {
                    tracing::error!(error = %e, "lazy unmount failed: still mounted");
                }
            }
        })
        .context("cannot start the signal thread")?;
    ready();
    let r = session.run();
    // destroy() normally did this; if the session ended otherwise, still leave it clean.
    shared.shutdown().context("unmount")?;
    r.context("FUSE session")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}
