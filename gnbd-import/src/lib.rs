//! `gnbd_import`: exports made visible as local block devices, and fence orders from the
//! command line (`-s`, `-u`, `-c`, through the fence agent's logic in `gnbd_fence::agent`).
//!
//! Each imported export is served by its own long-lived *device process* (the
//! `gnbd_import` binary re-run with a hidden flag), which owns:
//!
//! - a [`Client`](gnbd_client::Client) to the export (reconnecting, resubmitting, optional I/O timeout);
//! - a FUSE mount at `STATE_DIR/imports/NAME.mnt` holding one file, `device`, that is the
//!   export ([`fs`]);
//! - a loop device attached to that file (direct I/O), and the stable name
//!   `DEV_DIR/NAME` (`/dev/gnbd/NAME`) pointing at it;
//! - a record `STATE_DIR/imports/NAME.json` (written with `daemon::write_atomic`) and a
//!   control socket `STATE_DIR/imports/NAME.sock` answering `status` and `stop` in the
//!   suite's control protocol ([`control`]).
//!
//! The device process is a daemon of the suite (`daemon` toolkit): `gnbd_import -i` runs
//! `gnbd_import --run-device CONFIG`, which starts itself again in the background
//! (`daemon::background`, log `STATE_DIR/imports/NAME.log`) and returns once the device is
//! ready, or with the device process's error. SIGTERM and SIGINT remove the device as a
//! forced `stop` does; SIGHUP only reopens the log (there is no configuration to reload).
//!
//! The kernel NBD driver is not used: this kernel has none. Where `/dev/nbd*` exists, the
//! socket could be handed to it instead; the interface would stay the same.
//!
//! The CLI side ([`start_device`], [`list`], [`remove`]) only talks to those processes and
//! reads their records, so it can run at any time, as often as wanted.
//!
//! The device process does not depend on the export: its FUSE file is served from a
//! [`Backend`], the gnbd client for an import, or any [`blockdev::Device`] through
//! [`DeviceBackend`]. [`run_block_device`] runs the same process (mount, loop device, link,
//! record, control socket, teardown) for a `blockdev::Device` under names the caller
//! chooses, as the volume manager does to activate a logical volume as `/dev/VG/LV`:
//!
//! ```no_run
//! use gnbd_import::{run_block_device, BlockDeviceConfig};
//! use std::path::Path;
//! use std::sync::Arc;
//!
//! let signals = daemon::signals::install()?;
//! let dev = Arc::new(blockdev::FileDevice::open("/srv/lv0.img")?);
//! let cfg = BlockDeviceConfig::in_dir(Path::new("/run/clvm"), "vg0-lv0", "vg0/lv0", Path::new("/dev/vg0/lv0"), "clvm");
//! run_block_device(dev, cfg, signals, |record| println!("{}", record.loop_device.display()))?;
//! # Ok::<(), anyhow::Error>(())
//! ```
#![forbid(unsafe_code)]

pub mod admin;
mod backend;
pub mod control;
mod device;
mod fs;
mod loopdev;

pub use backend::{Backend, BackendError, DeviceBackend, Health};
pub use control::{Request, Status, Stopping};
pub use device::{
    read_block_record, remove_block_device, run_backend_device, run_block_device, start_block_device,
    BlockDeviceConfig, BlockDeviceError, BlockRecord,
};
pub use fs::{DeviceFs, IoStats, DEVICE_FILE};
pub use loopdev::{attach, detach, is_busy, LoopError};

use daemon::control::CallError;
use daemon::Signals;
use gnbd_client::{Client, ClientOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gnbd";
/// Default `--dev-dir`: where the stable device names live.
pub const DEFAULT_DEV_DIR: &str = "/dev/gnbd";

/// Errors of the import verbs.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("'{name}' cannot name a device: use letters, digits, '.', '-' and '_' (not starting with '.')")]
    BadName { name: String },
    #[error(
        "'{name}' is already imported (from {server}, device {device}); remove it first with `gnbd_import -r {name}`"
    )]
    AlreadyImported { name: String, server: String, device: String },
    #[error("no import named '{name}' (see `gnbd_import -l`)")]
    NotImported { name: String },
    #[error("{device} ('{name}') is in use (mounted or held open): unmount it first, or force with -f")]
    Busy { name: String, device: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the device process for '{name}' failed: {message}")]
    Device { name: String, message: String },
    #[error(transparent)]
    Loop(#[from] LoopError),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImportError + 'a {
    move |source| ImportError::Io { what, path: path.to_path_buf(), source }
}

/// Whether `name` can be used as a device name (a file name under `/dev/gnbd`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// How to reach servers: TLS certificates and the source address (node identity).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectOptions {
    /// CA the server's certificate must be signed by; set: connect with STARTTLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate and key (servers with a CA require them).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Local address to connect from (the node's cluster address).
    #[serde(default)]
    pub source: Option<std::net::IpAddr>,
}

impl ConnectOptions {
    /// Client options for `export` at `addr` with these settings.
    pub fn client_options(&self, addr: &str, export: &str) -> ClientOptions {
        let mut opts = ClientOptions::new(addr, export);
        opts.tls = self.tls_ca.as_ref().map(|ca| gnbd_client::TlsOptions {
            ca: ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: None,
        });
        opts.local_addr = self.source;
        opts
    }
}

/// What a device process is told to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device name (`/dev/gnbd/NAME`), normally the export name.
    pub name: String,
    /// Server as the operator gave it (`host`, `host:port`, `unix:PATH`).
    pub server: String,
    /// `host:port` or Unix socket path the client connects to.
    pub addr: String,
    pub export: String,
    /// I/O timeout in seconds; 0 waits for the server forever.
    pub timeout_secs: u64,
    /// Connections when the server offers multi-conn.
    pub connections: usize,
    pub read_only: bool,
    pub state_dir: PathBuf,
    pub dev_dir: PathBuf,
    #[serde(default)]
    pub connect: ConnectOptions,
}

impl DeviceConfig {
    fn dir(&self) -> PathBuf {
        imports_dir(&self.state_dir)
    }
    pub fn record_path(&self) -> PathBuf {
        self.dir().join(format!("{}.json", self.name))
    }
    pub fn socket_path(&self) -> PathBuf {
        self.dir().join(format!("{}.sock", self.name))
    }
    pub fn mountpoint(&self) -> PathBuf {
        self.dir().join(format!("{}.mnt", self.name))
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir().join(format!("{}.log", self.name))
    }
    pub fn link(&self) -> PathBuf {
        self.dev_dir.join(&self.name)
    }
    fn layout(&self) -> device::Layout {
        device::Layout {
            name: self.name.clone(),
            mountpoint: self.mountpoint(),
            link: self.link(),
            record_path: self.record_path(),
            socket_path: self.socket_path(),
            fsname: format!("gnbd:{}", self.name),
            subtype: "gnbd".into(),
            read_only: self.read_only,
        }
    }
}

fn imports_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("imports")
}

/// The persisted description of one import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub config: DeviceConfig,
    pub pid: u32,
    pub size: u64,
    /// The loop device (`/dev/loopN`).
    pub loop_device: PathBuf,
    /// The file inside the FUSE mount the loop device is attached to.
    pub file: PathBuf,
}

/// One line of `gnbd_import -l`.
#[derive(Debug, Clone)]
pub struct Listed {
    pub record: Record,
    /// `None` when the device process does not answer (it died: `gnbd_import -r` cleans up).
    pub status: Option<Status>,
}

impl Listed {
    pub fn state(&self) -> String {
        match &self.status {
            Some(s) => s.state.clone(),
            None => "dead".into(),
        }
    }
}

fn read_record(path: &Path) -> Result<Record, ImportError> {
    let text = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
    serde_json::from_str(&text).map_err(|e| ImportError::Io {
        what: "corrupt import record",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// Every import recorded under `state_dir`, with live status where the process answers.
pub fn list(state_dir: &Path) -> Result<Vec<Listed>, ImportError> {
    let dir = imports_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err("cannot read", &dir)(e)),
    };
    let mut out = vec![];
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let record = read_record(&path)?;
        let status = control::status(&record.config.socket_path(), Duration::from_secs(5)).ok();
        out.push(Listed { record, status });
    }
    out.sort_by(|a, b| a.record.config.name.cmp(&b.record.config.name));
    Ok(out)
}

/// Removes the import `name`: detaches the loop device, removes the device name, unmounts
/// the FUSE file and stops the device process. Refuses while the device is in use unless
/// `force`. Cleans up after a device process that died.
pub fn remove(state_dir: &Path, name: &str, force: bool) -> Result<(), ImportError> {
    let path = imports_dir(state_dir).join(format!("{name}.json"));
    if !path.exists() {
        return Err(ImportError::NotImported { name: name.into() });
    }
    let record = read_record(&path)?;
    let layout = record.config.layout();
    match remove_served(&layout, record.pid, &record.loop_device, &record.file, force) {
        Ok(()) => Ok(()),
        Err(Removal::Busy) => {
            Err(ImportError::Busy { name: name.into(), device: record.config.link().display().to_string() })
        }
        Err(Removal::Device(message)) => Err(ImportError::Device { name: name.into(), message }),
        Err(Removal::Loop(e)) => Err(e.into()),
    }
}

/// Why [`remove_served`] did not remove a device.
pub(crate) enum Removal {
    Busy,
    /// The device process refused with this message.
    Device(String),
    Loop(LoopError),
}

/// Stops the device process serving `l` (pid `pid`) through its control socket and waits
/// for it to exit, then cleans up what it could not; or, when it does not answer, undoes
/// what it left behind.
pub(crate) fn remove_served(
    l: &device::Layout,
    pid: u32,
    loop_device: &Path,
    file: &Path,
    force: bool,
) -> Result<(), Removal> {
    match control::stop(&l.socket_path, force, Duration::from_secs(60)) {
        Ok(_) => {
            if pid == std::process::id() {
                // Served by this process (`run_block_device` on a thread): its teardown
                // removes the mountpoint last.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while l.mountpoint.exists() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            } else {
                wait_gone(pid, Duration::from_secs(30));
            }
            // The process removes its own record; clean up whatever it could not.
            device::undo(l, loop_device, file, true).map_err(Removal::Loop)
        }
        Err(CallError::Remote(e)) if e.kind == daemon::control::ErrorKind::Busy => Err(Removal::Busy),
        Err(CallError::Remote(e)) => Err(Removal::Device(e.message)),
        Err(_) => {
            // The device process is gone: undo what it left behind.
            if !force && is_busy(loop_device) {
                return Err(Removal::Busy);
            }
            device::undo(l, loop_device, file, force).map_err(Removal::Loop)
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
}

fn wait_gone(pid: u32, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while pid_alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Refuses to start a second import under a name already in use.
pub fn check_free(state_dir: &Path, name: &str) -> Result<(), ImportError> {
    if !valid_name(name) {
        return Err(ImportError::BadName { name: name.into() });
    }
    let path = imports_dir(state_dir).join(format!("{name}.json"));
    if path.exists() {
        let r = read_record(&path)?;
        return Err(ImportError::AlreadyImported {
            name: name.into(),
            server: r.config.server.clone(),
            device: r.config.link().display().to_string(),
        });
    }
    Ok(())
}

/// Runs a device process: connects, mounts, attaches, links, records, then serves its
/// control socket until a stop is requested, there or by SIGTERM/SIGINT through `signals`
/// (installed before this call: it starts threads). Either way the device is removed as a
/// forced stop does. `ready` is called once with the record when the device is usable.
pub fn run_device(cfg: DeviceConfig, signals: Signals, ready: impl FnOnce(&Record)) -> anyhow::Result<()> {
    use anyhow::Context;
    let rt = device::io_runtime("gnbd-import-io")?;
    let mut opts = cfg.connect.client_options(&cfg.addr, &cfg.export);
    opts.connections = cfg.connections.max(1);
    opts.io_timeout = (cfg.timeout_secs > 0).then(|| Duration::from_secs(cfg.timeout_secs));
    let client = Arc::new(
        rt.block_on(Client::connect(opts))
            .with_context(|| format!("cannot import '{}' from {}", cfg.export, cfg.server))?,
    );
    let layout = cfg.layout();
    device::serve(
        client,
        rt,
        &layout,
        signals,
        |a| Record {
            config: cfg.clone(),
            pid: std::process::id(),
            size: a.size,
            loop_device: a.loop_device.clone(),
            file: a.file.clone(),
        },
        ready,
    )
}
