//! Cluster infrastructure: the `cluster.conf` model, corosync glue (membership, quorum, group
//! messaging) and the fence daemon.
//!
//! - [`conf`]: the cluster.conf schema (RHCS subset), its validating parser ([`conf::parse`])
//!   reporting every problem with element, line and attribute, and a writer.
//! - [`corosync_conf`]: corosync.conf generated from cluster.conf.
//! - [`corosync`]: membership and quorum queries through the corosync libraries.
//! - [`cman`]: `cman_tool join/leave/status/nodes/version`.
//! - [`fence`]: the fence domain's decisions, a sans-IO state machine.
//! - [`agent`]: running fence agents (key=value on stdin).
//! - [`daemon`]: fenced, the node daemon; [`api`]: its local API, used by the tools and by
//!   the DLM, the filesystem and the service manager to learn membership, quorum and fences.
//! - [`msg`]: the messages fenced daemons exchange over corosync CPG.
//!
//! ```no_run
//! // Wait until node 3 has been fenced before recovering its locks.
//! let mut api = cluster::api::Client::connect_default()?;
//! api.wait_fenced(3)?;
//! # Ok::<(), cluster::api::ApiError>(())
//! ```
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cman;
pub mod conf;
pub mod corosync;
pub mod corosync_conf;
pub mod daemon;
pub mod fence;
pub mod msg;

pub use conf::{parse as parse_conf, ClusterConf, ConfError, ConfErrors};

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory.
pub fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Starts tracing to stderr at `default_level` (overridden by `RUST_LOG`).
pub fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
