//! The device process's life, whatever its backend: FUSE mount, loop device, stable name,
//! record, control socket, then the orderly teardown on a stop. [`run_device`](crate::run_device)
//! (a gnbd import) and [`run_block_device`] (any `blockdev::Device`, e.g. a logical volume)
//! both come down to [`serve`].

use crate::backend::{Backend, DeviceBackend};
use crate::control;
use crate::fs::{DeviceFs, IoStats, DEVICE_FILE};
use crate::loopdev::{self, attach, detach, LoopError};
use anyhow::Context;
use daemon::control::SocketAccess;
use daemon::Signals;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Where a device process puts its pieces, and how its mount is named.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Name in logs and in the control socket's messages.
    pub name: String,
    pub mountpoint: PathBuf,
    pub link: PathBuf,
    pub record_path: PathBuf,
    pub socket_path: PathBuf,
    pub fsname: String,
    pub subtype: String,
    pub read_only: bool,
}

/// What [`serve`] set up, for the caller's record.
#[derive(Debug, Clone)]
pub(crate) struct Attached {
    pub size: u64,
    pub loop_device: PathBuf,
    pub file: PathBuf,
}

/// The multi-threaded runtime a device process serves FUSE requests on.
pub(crate) fn io_runtime(thread_name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        // Replies to FUSE are blocking writes that copy up to 1 MiB each: more threads than
        // cores keep the sockets served while some of them copy.
        .worker_threads(4)
        // Blocking backends (`DeviceBackend`): as many requests at once as the kernel queues.
        .max_blocking_threads(64)
        .thread_name(thread_name)
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")
}

pub(crate) fn write_json<R: Serialize>(path: &Path, r: &R) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(r).expect("records serialise");
    daemon::write_atomic(path, text.as_bytes())
}

/// Removes `link` if it still points at `target` (a newer device may own the name).
pub(crate) fn remove_link(link: &Path, target: &Path) {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        let _ = std::fs::remove_file(link);
    }
}

/// Undoes a device's traces: loop device, link, FUSE mount, socket, record, mountpoint.
pub(crate) fn undo(l: &Layout, loop_device: &Path, file: &Path, lazy: bool) -> Result<(), LoopError> {
    if loopdev::backing_file(loop_device).is_some_and(|f| f == file) {
        detach(loop_device)?;
    }
    remove_link(&l.link, loop_device);
    loopdev::unmount(&l.mountpoint, lazy);
    let _ = std::fs::remove_file(&l.socket_path);
    let _ = std::fs::remove_dir(&l.mountpoint);
    let _ = std::fs::remove_file(&l.record_path);
    Ok(())
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Serves `backend` as a device: mounts, attaches, links, records (`record` makes the
/// record from what was set up), then serves the control socket until a stop is requested
/// there or through `signals`, and removes the device in order: loop device, name, record,
/// socket, FUSE mount, backend. `ready` is called once with the record when the device is
/// usable. On a setup error, what was set up is undone.
pub(crate) fn serve<B: Backend + std::fmt::Debug, R: Serialize>(
    backend: Arc<B>,
    rt: tokio::runtime::Runtime,
    l: &Layout,
    signals: Signals,
    record: impl FnOnce(&Attached) -> R,
    ready: impl FnOnce(&R),
) -> anyhow::Result<()> {
    let size = backend.size();
    let read_only = l.read_only || backend.read_only();
    for p in [&l.mountpoint, &l.record_path, &l.socket_path, &l.link] {
        create_parent(p)?;
    }
    let mnt = &l.mountpoint;
    loopdev::unmount(mnt, true); // a stale mount left by a killed process
    std::fs::create_dir_all(mnt).with_context(|| format!("cannot create {}", mnt.display()))?;
    let stats = Arc::new(IoStats::default());
    let fs = DeviceFs::new(backend.clone(), rt.handle().clone(), read_only, stats.clone());
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = vec![
        fuser::MountOption::FSName(l.fsname.clone()),
        fuser::MountOption::Subtype(l.subtype.clone()),
        fuser::MountOption::NoExec,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    fuse_cfg.n_threads = Some(2);
    fuse_cfg.clone_fd = true;
    let session =
        fuser::spawn_mount(fs, mnt, &fuse_cfg).with_context(|| format!("cannot mount FUSE at {}", mnt.display()))?;
    let file = mnt.join(DEVICE_FILE);
    let loop_device = match attach(&file, read_only) {
        Ok(d) => d,
        Err(e) => {
            drop(session);
            let _ = std::fs::remove_dir(mnt);
            return Err(e).context("cannot attach a loop device");
        }
    };
    let link = &l.link;
    let _ = std::fs::remove_file(link);
    let linked = std::os::unix::fs::symlink(&loop_device, link);
    let attached = Attached { size, loop_device: loop_device.clone(), file: file.clone() };
    let rec = record(&attached);
    let setup = linked.with_context(|| format!("cannot create {}", link.display())).and_then(|()| {
        write_json(&l.record_path, &rec).with_context(|| format!("cannot write {}", l.record_path.display()))
    });
    let listener = setup.and_then(|()| {
        daemon::control::bind(&l.socket_path, SocketAccess::Owner)
            .with_context(|| format!("cannot bind {}", l.socket_path.display()))
    });
    let listener = match listener {
        Ok(listener) => listener,
        Err(e) => {
            let _ = undo(l, &loop_device, &file, true);
            drop(session);
            return Err(e);
        }
    };
    tracing::info!(name = %l.name, device = %loop_device.display(), size, "device ready");
    ready(&rec);

    let closing = Arc::new(AtomicBool::new(false));
    let served = control::Served {
        name: l.name.clone(),
        backend: Arc::downgrade(&backend),
        stats,
        loop_device: loop_device.clone(),
        link: link.clone(),
        signals: signals.clone(),
        closing: closing.clone(),
    };
    std::thread::Builder::new()
        .name("device-ctl".into())
        .spawn(move || served.run(listener))
        .context("cannot start the control thread")?;
    let sig = signals.wait_stop();
    tracing::info!(name = %l.name, signal = sig, "stopping");
    daemon::ready::stopping();

    // Orderly teardown: loop device, name, record, socket, FUSE mount, backend.
    if let Err(e) = detach(&loop_device) {
        tracing::warn!(error = %e, "cannot detach the loop device");
    }
    remove_link(link, &loop_device);
    let _ = std::fs::remove_file(&l.record_path);
    control::close(&l.socket_path, &closing);
    let _ = std::fs::remove_file(&l.socket_path);
    if loopdev::unmount(mnt, false) {
        let _ = session.join();
    } else {
        // Still held (a forced stop of a busy device): detach lazily; the kernel aborts the
        // FUSE connection when this process exits, failing what is left with EIO.
        loopdev::unmount(mnt, true);
        std::mem::forget(session);
    }
    let _ = std::fs::remove_dir(mnt);
    if let Ok(b) = Arc::try_unwrap(backend) {
        rt.block_on(b.close());
    }
    tracing::info!(name = %l.name, "removed");
    Ok(())
}

/// What a device process serving a `blockdev::Device` is told: names and paths, all given
/// by the caller (the volume manager names them after the volume group and volume).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceConfig {
    /// Name in logs and control replies (`vg0/lv0`).
    pub name: String,
    /// Directory the FUSE file is mounted on (created, removed at the end).
    pub mountpoint: PathBuf,
    /// The stable name made a symlink to the loop device (`/dev/vg0/lv0`); its directory
    /// is created when missing (and left in place at the end).
    pub link: PathBuf,
    /// Where the [`BlockRecord`] is written (JSON, atomically; removed at the end).
    pub record_path: PathBuf,
    /// The control socket (`status`, `stop`, as [`control`](crate::control) describes).
    pub socket_path: PathBuf,
    /// Attach read-only: writes fail with EROFS.
    pub read_only: bool,
    /// FUSE filesystem name, the mount's source in /proc/mounts (`clvm:vg0/lv0`).
    pub fsname: String,
    /// FUSE subtype: the mount's type is `fuse.SUBTYPE` (`clvm`).
    pub subtype: String,
}

impl BlockDeviceConfig {
    /// A device whose mountpoint, record and socket live in `dir` as `STEM.mnt`,
    /// `STEM.json` and `STEM.sock`, named `name`, linked at `link`, FUSE type
    /// `fuse.SUBTYPE` with source `SUBTYPE:NAME`.
    pub fn in_dir(dir: &Path, stem: &str, name: &str, link: &Path, subtype: &str) -> Self {
        Self {
            name: name.into(),
            mountpoint: dir.join(format!("{stem}.mnt")),
            link: link.to_path_buf(),
            record_path: dir.join(format!("{stem}.json")),
            socket_path: dir.join(format!("{stem}.sock")),
            read_only: false,
            fsname: format!("{subtype}:{name}"),
            subtype: subtype.into(),
        }
    }

    pub(crate) fn layout(&self) -> Layout {
        Layout {
            name: self.name.clone(),
            mountpoint: self.mountpoint.clone(),
            link: self.link.clone(),
            record_path: self.record_path.clone(),
            socket_path: self.socket_path.clone(),
            fsname: self.fsname.clone(),
            subtype: self.subtype.clone(),
            read_only: self.read_only,
        }
    }
}

/// The persisted description of a device served by [`run_block_device`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRecord {
    pub config: BlockDeviceConfig,
    pub pid: u32,
    pub size: u64,
    /// The loop device (`/dev/loopN`).
    pub loop_device: PathBuf,
    /// The file inside the FUSE mount the loop device is attached to.
    pub file: PathBuf,
}

/// Errors of [`read_block_record`], [`start_block_device`] and [`remove_block_device`].
#[derive(Debug, thiserror::Error)]
pub enum BlockDeviceError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{link} is in use (mounted or held open): unmount it first, or force")]
    Busy { link: PathBuf },
    #[error("the device process of {name} failed: {message}")]
    Device { name: String, message: String },
    #[error(transparent)]
    Loop(#[from] LoopError),
}

/// Reads the record a device process wrote at `path`.
pub fn read_block_record(path: &Path) -> Result<BlockRecord, BlockDeviceError> {
    let text = std::fs::read_to_string(path).map_err(|source| BlockDeviceError::Io {
        what: "cannot read",
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| BlockDeviceError::Io {
        what: "corrupt device record",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// Removes the device described by `record`: asks its process to stop (refused while the
/// device is in use unless `force`) and waits for it to exit, or cleans up after a process
/// that died (loop device, link, FUSE mount, socket, record).
pub fn remove_block_device(record: &BlockRecord, force: bool) -> Result<(), BlockDeviceError> {
    let l = record.config.layout();
    match crate::remove_served(&l, record.pid, &record.loop_device, &record.file, force) {
        Ok(()) => Ok(()),
        Err(crate::Removal::Busy) => Err(BlockDeviceError::Busy { link: l.link }),
        Err(crate::Removal::Device(message)) => Err(BlockDeviceError::Device { name: l.name, message }),
        Err(crate::Removal::Loop(e)) => Err(e.into()),
    }
}

/// Runs `cmd`, a program that daemonises into a device process (`daemon::background`: the
/// foreground exits 0 once the device is ready, or non-zero with `PROGRAM: why` on stderr),
/// and reads the record the device wrote to `record_path`. The error is one line for the
/// operator.
pub(crate) fn start_process<R: serde::de::DeserializeOwned>(
    cmd: &mut std::process::Command,
    program: &str,
    record_path: &Path,
    log_path: &Path,
) -> Result<R, String> {
    let done = cmd
        .stdin(std::process::Stdio::null())
        // A daemon must not pin the directory its starter was started from.
        .current_dir("/")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cmd.get_program().to_string_lossy()))?;
    if !done.status.success() {
        // One line, `PROGRAM: why` (daemon::exit), or the toolkit's note that the
        // process died before it was ready.
        let said = String::from_utf8_lossy(&done.stderr);
        let prefix = format!("{program}: ");
        let said = said.lines().map(|l| l.strip_prefix(&prefix).unwrap_or(l)).collect::<Vec<_>>().join("; ");
        return Err(if said.trim().is_empty() {
            format!("it exited ({}) without a message; see {}", done.status, log_path.display())
        } else {
            said
        });
    }
    let text = std::fs::read_to_string(record_path).map_err(|e| format!("no record after ready: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("corrupt record: {e}"))
}

/// Starts a device process the way `gnbd_import -i` does: runs `cmd` (the caller's own
/// program re-run with a hidden flag, which calls `daemon::background::daemonize`, then
/// [`run_block_device`] with a `ready` that calls `daemon::ready::ready`), waits for it to
/// report ready or fail, and returns the [`BlockRecord`] it wrote at `cfg.record_path`.
/// `program` is the name its error lines start with (`PROGRAM: why`); `log_path` is named
/// when it dies without a word.
pub fn start_block_device(
    cmd: &mut std::process::Command,
    program: &str,
    cfg: &BlockDeviceConfig,
    log_path: &Path,
) -> Result<BlockRecord, BlockDeviceError> {
    start_process(cmd, program, &cfg.record_path, log_path)
        .map_err(|message| BlockDeviceError::Device { name: cfg.name.clone(), message })
}

/// Runs a device process serving `dev`: mounts a one-file FUSE filesystem at
/// `cfg.mountpoint` whose file is `dev`, attaches a loop device to that file (direct I/O),
/// links `cfg.link` to the loop device, writes the [`BlockRecord`] to `cfg.record_path`,
/// then serves the control socket `cfg.socket_path` until a stop is requested there or by
/// SIGTERM/SIGINT through `signals` (or [`Signals::request_stop`]). Either way the device
/// is removed as a forced stop does: loop device detached, link, record and socket
/// removed, FUSE unmounted. `ready` is called once with the record when the device is
/// usable. Returns once everything is torn down; returns an error (after undoing what was
/// set up) when the device cannot be set up.
///
/// The device's blocking calls run on a tokio blocking pool (up to 64 at once); trims and
/// write-zeroes write zeros; every device error reaches the loop device as EIO.
pub fn run_block_device(
    dev: Arc<dyn blockdev::Device>,
    cfg: BlockDeviceConfig,
    signals: Signals,
    ready: impl FnOnce(&BlockRecord),
) -> anyhow::Result<()> {
    run_backend_device(Arc::new(DeviceBackend::new(dev)), cfg, signals, ready)
}

/// As [`run_block_device`], serving any [`Backend`] (one that keeps many requests in flight
/// without a thread each, say).
pub fn run_backend_device<B: Backend + std::fmt::Debug>(
    backend: Arc<B>,
    cfg: BlockDeviceConfig,
    signals: Signals,
    ready: impl FnOnce(&BlockRecord),
) -> anyhow::Result<()> {
    let rt = io_runtime("blockdev-io")?;
    let l = cfg.layout();
    serve(
        backend,
        rt,
        &l,
        signals,
        |a| BlockRecord {
            config: cfg.clone(),
            pid: std::process::id(),
            size: a.size,
            loop_device: a.loop_device.clone(),
            file: a.file.clone(),
        },
        ready,
    )
}
