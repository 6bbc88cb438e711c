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
#![forbid(unsafe_code)]

pub mod admin;
pub mod control;
mod fs;
mod loopdev;

pub use control::{Request, Status, Stopping};
pub use fs::{DeviceFs, IoStats, DEVICE_FILE};
pub use loopdev::{attach, detach, is_busy, LoopError};

use daemon::control::{CallError, SocketAccess};
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

fn write_record(path: &Path, r: &Record) -> Result<(), ImportError> {
    let text = serde_json::to_string_pretty(r).expect("records serialise");
    daemon::write_atomic(path, text.as_bytes()).map_err(io_err("cannot write", path))
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
    match control::stop(&record.config.socket_path(), force, Duration::from_secs(60)) {
        Ok(_) => {
            wait_gone(record.pid, Duration::from_secs(30));
            // The process removes its own record; clean up whatever it could not.
            cleanup_dead(&record, true)
        }
        Err(CallError::Remote(e)) if e.kind == daemon::control::ErrorKind::Busy => {
            Err(ImportError::Busy { name: name.into(), device: record.config.link().display().to_string() })
        }
        Err(CallError::Remote(e)) => Err(ImportError::Device { name: name.into(), message: e.message }),
        Err(_) => {
            // The device process is gone: undo what it left behind.
            if !force && is_busy(&record.loop_device) {
                return Err(ImportError::Busy {
                    name: name.into(),
                    device: record.config.link().display().to_string(),
                });
            }
            cleanup_dead(&record, force)
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

/// Undoes a device's traces: loop device, link, FUSE mount, socket, record, mountpoint.
fn cleanup_dead(record: &Record, lazy: bool) -> Result<(), ImportError> {
    let cfg = &record.config;
    if loopdev::backing_file(&record.loop_device).is_some_and(|f| f == record.file) {
        detach(&record.loop_device)?;
    }
    remove_link(&cfg.link(), &record.loop_device);
    loopdev::unmount(&cfg.mountpoint(), lazy);
    let _ = std::fs::remove_file(cfg.socket_path());
    let _ = std::fs::remove_dir(cfg.mountpoint());
    let _ = std::fs::remove_file(cfg.record_path());
    Ok(())
}

/// Removes `link` if it still points at `target` (a newer import may own the name).
fn remove_link(link: &Path, target: &Path) {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        let _ = std::fs::remove_file(link);
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        // Replies to FUSE are blocking writes that copy up to 1 MiB each: more threads than
        // cores keep the sockets served while some of them copy.
        .worker_threads(4)
        .thread_name("gnbd-import-io")
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    let mut opts = cfg.connect.client_options(&cfg.addr, &cfg.export);
    opts.connections = cfg.connections.max(1);
    opts.io_timeout = (cfg.timeout_secs > 0).then(|| Duration::from_secs(cfg.timeout_secs));
    let client = Arc::new(
        rt.block_on(Client::connect(opts))
            .with_context(|| format!("cannot import '{}' from {}", cfg.export, cfg.server))?,
    );
    let size = client.size();
    let read_only = cfg.read_only || client.flags() & nbd_proto::consts::NBD_FLAG_READ_ONLY != 0;

    std::fs::create_dir_all(cfg.dir()).with_context(|| format!("cannot create {}", cfg.dir().display()))?;
    let mnt = cfg.mountpoint();
    loopdev::unmount(&mnt, true); // a stale mount left by a killed process
    std::fs::create_dir_all(&mnt).with_context(|| format!("cannot create {}", mnt.display()))?;
    let stats = Arc::new(IoStats::default());
    let fs = DeviceFs::new(client.clone(), rt.handle().clone(), read_only, stats.clone());
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = vec![
        fuser::MountOption::FSName(format!("gnbd:{}", cfg.name)),
        fuser::MountOption::Subtype("gnbd".into()),
        fuser::MountOption::NoExec,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    fuse_cfg.n_threads = Some(2);
    fuse_cfg.clone_fd = true;
    let session =
        fuser::spawn_mount(fs, &mnt, &fuse_cfg).with_context(|| format!("cannot mount FUSE at {}", mnt.display()))?;
    let file = mnt.join(DEVICE_FILE);
    let loop_device = match attach(&file, read_only) {
        Ok(d) => d,
        Err(e) => {
            drop(session);
            return Err(e).context("cannot attach a loop device");
        }
    };
    let link = cfg.link();
    let linked = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&cfg.dev_dir)?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&loop_device, &link)
    })();
    let record = Record { config: cfg.clone(), pid: std::process::id(), size, loop_device: loop_device.clone(), file };
    let setup = linked
        .with_context(|| format!("cannot create {}", link.display()))
        .and_then(|()| write_record(&cfg.record_path(), &record).map_err(Into::into));
    let listener = setup.and_then(|()| {
        daemon::control::bind(&cfg.socket_path(), SocketAccess::Owner)
            .with_context(|| format!("cannot bind {}", cfg.socket_path().display()))
    });
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            let _ = cleanup_dead(&record, true);
            drop(session);
            return Err(e);
        }
    };
    tracing::info!(name = %cfg.name, device = %loop_device.display(), size, "imported");
    ready(&record);

    let served = control::Served {
        name: cfg.name.clone(),
        client: Arc::downgrade(&client),
        stats,
        loop_device: loop_device.clone(),
        link: link.clone(),
        signals: signals.clone(),
    };
    std::thread::Builder::new()
        .name("gnbd-import-ctl".into())
        .spawn(move || served.run(listener))
        .context("cannot start the control thread")?;
    let sig = signals.wait_stop();
    tracing::info!(name = %cfg.name, signal = sig, "stopping");
    daemon::ready::stopping();

    // Orderly teardown: loop device, name, FUSE mount, client, record.
    if let Err(e) = detach(&loop_device) {
        tracing::warn!(error = %e, "cannot detach the loop device");
    }
    remove_link(&link, &loop_device);
    let _ = std::fs::remove_file(cfg.record_path());
    let _ = std::fs::remove_file(cfg.socket_path());
    if loopdev::unmount(&mnt, false) {
        let _ = session.join();
    } else {
        // Still held (a forced stop of a busy device): detach lazily; the kernel aborts the
        // FUSE connection when this process exits, failing what is left with EIO.
        loopdev::unmount(&mnt, true);
        std::mem::forget(session);
    }
    let _ = std::fs::remove_dir(&mnt);
    if let Ok(c) = Arc::try_unwrap(client) {
        rt.block_on(c.close());
    }
    tracing::info!(name = %cfg.name, "removed");
    Ok(())
}
