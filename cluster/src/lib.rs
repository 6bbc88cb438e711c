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
//! - [`daemon`]: fenced, the node daemon; [`api`]: its local API (the suite's control
//!   protocol, [`::daemon::control`]), used by the tools and by the DLM, the filesystem and
//!   the service manager to learn membership, quorum and fences.
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
