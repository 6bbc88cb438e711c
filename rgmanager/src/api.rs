//! rgmanager's control socket ([`SOCKET`], the suite's JSON-lines protocol,
//! [`daemon::control`]); `clusvcadm` and `clustat` use it.
//!
//! | request ([`Request`]) | `ok` value |
//! |---|---|
//! | `{"op":"status"}` | [`Status`]: nodes, quorum and every service's record |
//! | `{"op":"service","action":"enable","service":"www","node":"n2"}` | [`OpReply`]: rgmanager's return code and message, and the service after the change |
//! | `{"op":"lock"}` / `{"op":"unlock"}` | `null`: this node starts no more services / starts them again |
//!
//! A request on a service is written into its record under the service's DLM lock and
//! answered at once; the owner carries it out when it next evaluates the service, and
//! `clusvcadm` follows the record ([`Status`]) until the state settles.

use std::path::Path;
use std::time::Duration;

use daemon::control::{self, CallError};
use serde::{Deserialize, Serialize};

use crate::record::{State, Want};
use crate::request::Op;

/// The default socket.
pub const SOCKET: &str = "/run/cluster/rgmanager.sock";

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Everything clustat shows.
    Status,
    /// An operator request on one service.
    Service {
        /// What to do.
        action: Op,
        /// The service.
        service: String,
        /// Target node name (`-m`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// This node starts no more services (`clusvcadm -l`).
    Lock,
    /// Undo `lock` (`clusvcadm -u`).
    Unlock,
}

/// One node in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Cluster member.
    pub member: bool,
    /// Runs rgmanager (takes services).
    pub rgmanager: bool,
    /// This node.
    pub local: bool,
}

/// One service in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// State.
    pub state: State,
    /// Owner's name (running, starting, stopping or failed there).
    pub owner: Option<String>,
    /// Last owner's name.
    pub last_owner: Option<String>,
    /// Frozen (`-Z`).
    pub frozen: bool,
    /// Held stopped (`-s`).
    pub held: bool,
    /// Pending operator request.
    pub want: Want,
    /// Restarts in place since it last moved.
    pub restarts: u32,
    /// Record generation (grows with every change).
    pub generation: u32,
    /// Autostart from cluster.conf.
    pub autostart: bool,
    /// Failover domain.
    pub domain: Option<String>,
}

/// The reply to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Cluster name.
    pub cluster: String,
    /// This node's id.
    pub local_nodeid: u32,
    /// Quorate partition.
    pub quorate: bool,
    /// Every configured node.
    pub nodes: Vec<NodeStatus>,
    /// Every service.
    pub services: Vec<ServiceStatus>,
    /// `clusvcadm -l` in force here.
    pub locked: bool,
}

impl Status {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The reply to [`Request::Service`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpReply {
    /// 0 or an RG_E* code.
    pub code: i32,
    /// rgmanager's message for it.
    pub message: String,
    /// The service after the change.
    pub service: Option<ServiceStatus>,
}

/// A client of the control socket.
#[derive(Debug)]
pub struct Client {
    inner: control::Client,
}

impl Client {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> Result<Client, CallError> {
        Ok(Client { inner: control::Client::connect("rgmanager", path)? })
    }

    /// Bounds every read.
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), CallError> {
        self.inner.set_timeout(t)
    }

    /// Everything clustat shows.
    pub fn status(&mut self) -> Result<Status, CallError> {
        self.inner.call(&Request::Status)
    }

    /// An operator request.
    pub fn service(&mut self, action: Op, service: &str, node: Option<&str>) -> Result<OpReply, CallError> {
        self.inner.call(&Request::Service { action, service: service.to_owned(), node: node.map(str::to_owned) })
    }

    /// `lock` or `unlock`.
    pub fn set_locked(&mut self, locked: bool) -> Result<(), CallError> {
        self.inner.call(if locked { &Request::Lock } else { &Request::Unlock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_the_wire() {
        let r: Request =
            serde_json::from_str(r#"{"op":"service","action":"relocate","service":"www","node":"n2"}"#).unwrap();
        assert_eq!(r, Request::Service { action: Op::Relocate, service: "www".into(), node: Some("n2".into()) });
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"op":"status"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
    }
}
