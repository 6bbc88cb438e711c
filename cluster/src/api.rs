//! The local API of the node daemon (fenced): the suite's control protocol
//! ([`daemon::control`]: JSON lines, requests tagged `op`, replies `{"ok":VALUE}` or
//! `{"error":{"kind":KIND,"message":TEXT}}`) on the Unix socket [`SOCKET`]. Through it the
//! DLM, the filesystem and the service manager learn membership, quorum and "node N is
//! fenced", and wait for it; the command-line tools use it too.
//!
//! | request ([`Request`]) | `ok` value |
//! |---|---|
//! | `{"op":"status"}` | [`DomainStatus`] |
//! | `{"op":"fence","node":"NAME"}` | after the fence: [`FenceDone`] `{"method":"..."}` |
//! | `{"op":"ack_manual","node":"NAME"}` | `null`: the operator vouches the node is off |
//! | `{"op":"wait_fenced","nodeid":N}` | `null`, when N is safe (member, left cleanly, or fenced) |
//! | `{"op":"subscribe"}` | `null`, then one `{"ok":EVENT}` line per [`Event`] until the client closes (membership events carry corosync's ring sequence number, `ring_seq`) |
//! | `{"op":"config_update","xml":"..."}` | after propagation: [`ConfigVersion`] `{"version":V}` |
//! | `{"op":"shutdown"}` | `null`; fenced leaves the group cleanly and exits |
//!
//! Error kinds: `not_found` (no such node), `refused` (fencing this node itself, a
//! configuration that is not newer or names another cluster), `bad_request` (an invalid
//! cluster.conf, a malformed request), `failed` (every fence method failed, a configuration
//! that was not installed).

use std::path::Path;
use std::time::Duration;

use daemon::control::{self, CallError, ControlError};
use serde::{Deserialize, Serialize};

use crate::fence::{FenceRecord, PendingVictim};

/// The socket path.
pub const SOCKET: &str = "/run/cluster/fenced.sock";

/// The daemon's name in messages.
const FENCED: &str = "fenced";

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Current state.
    Status,
    /// Fence a node now (fence_node).
    Fence { node: String },
    /// The operator confirms a node is off (fence_ack_manual).
    AckManual { node: String },
    /// Wait until the node is safe: a member, gone cleanly, or fenced.
    WaitFenced { nodeid: u32 },
    /// Stream events.
    Subscribe,
    /// Propagate a new cluster.conf (cman_tool version -r).
    ConfigUpdate { xml: String },
    /// Leave the fence group and exit.
    Shutdown,
}

/// The reply to [`Request::Fence`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceDone {
    /// The method that succeeded.
    pub method: String,
}

/// The reply to [`Request::ConfigUpdate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersion {
    /// The config_version now in force.
    pub version: u64,
}

/// One node in [`DomainStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Node id.
    pub nodeid: u32,
    /// Name.
    pub name: String,
    /// Cluster member.
    pub member: bool,
    /// Fence group member.
    pub in_domain: bool,
    /// Not safe yet: gone from the membership uncleanly and not fenced.
    pub pending: bool,
    /// Failed attempts on the pending fence.
    pub failures: u32,
    /// The last completed fence.
    pub last_fence: Option<LastFence>,
}

/// A completed fence, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastFence {
    /// Name of the node that fenced.
    pub by: String,
    /// Method that succeeded.
    pub method: String,
    /// When (ms since the epoch).
    pub at_unix_ms: u64,
}

/// The daemon's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStatus {
    /// Cluster name.
    pub cluster: String,
    /// Config version in force.
    pub config_version: u64,
    /// This node's id.
    pub local_nodeid: u32,
    /// Quorate.
    pub quorate: bool,
    /// The node that fences now (lowest id in the domain), if any.
    pub master: Option<u32>,
    /// Every configured node.
    pub nodes: Vec<NodeEntry>,
    /// Sequence number of corosync's current ring (membership generation), once known.
    /// Every member of a ring reports the same number, and it grows with every new ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_seq: Option<u64>,
}

/// An event on a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Membership or quorum changed. `ring_seq` is the sequence number of corosync's ring
    /// the list belongs to (the same on every member, growing with every new ring); absent
    /// before corosync reported one (and from older daemons).
    Membership {
        quorate: bool,
        members: Vec<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ring_seq: Option<u64>,
    },
    /// A node was fenced.
    Fenced { nodeid: u32, name: String, method: String },
    /// A new configuration is in force.
    Config { version: u64 },
}

/// A failure of the local API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Nothing answers on the socket.
    #[error("cannot reach fenced at {path}: {source}; is the node joined (cman_tool join)?")]
    NotRunning {
        /// The socket.
        path: String,
        /// Why the connection failed.
        #[source]
        source: std::io::Error,
    },
    /// The call failed after connecting, or fenced answered with an error
    /// ([`CallError::Remote`]).
    #[error(transparent)]
    Call(#[from] CallError),
}

impl ApiError {
    /// fenced's error reply, if that is what this is.
    pub fn remote(&self) -> Option<&ControlError> {
        match self {
            ApiError::Call(e) => e.remote(),
            ApiError::NotRunning { .. } => None,
        }
    }
}

/// A client of the local API: typed calls over [`daemon::control::Client`].
#[derive(Debug)]
pub struct Client {
    inner: control::Client,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ApiError> {
        match control::Client::connect(FENCED, path) {
            Ok(inner) => Ok(Client { inner }),
            Err(CallError::Connect { path, source, .. }) => {
                Err(ApiError::NotRunning { path: path.display().to_string(), source })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Connects to [`SOCKET`].
    pub fn connect_default() -> Result<Client, ApiError> {
        Self::connect(Path::new(SOCKET))
    }

    /// Bounds every later read (None: wait forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ApiError> {
        Ok(self.inner.set_timeout(t)?)
    }

    /// Sends a request and reads its `ok` value (an error reply is [`ApiError::Call`] with
    /// [`CallError::Remote`]).
    pub fn call<T: serde::de::DeserializeOwned>(&mut self, req: &Request) -> Result<T, ApiError> {
        Ok(self.inner.call(req)?)
    }

    /// The daemon's view of the domain.
    pub fn status(&mut self) -> Result<DomainStatus, ApiError> {
        self.call(&Request::Status)
    }

    /// Fences `node` now; returns the method that worked.
    pub fn fence(&mut self, node: &str) -> Result<String, ApiError> {
        let done: FenceDone = self.call(&Request::Fence { node: node.to_owned() })?;
        Ok(done.method)
    }

    /// Confirms a manual fence.
    pub fn ack_manual(&mut self, node: &str) -> Result<(), ApiError> {
        self.call(&Request::AckManual { node: node.to_owned() })
    }

    /// Waits until `nodeid` is safe: a member, gone cleanly, or fenced. Lock and journal
    /// recovery call this for every node that left before touching what it held.
    pub fn wait_fenced(&mut self, nodeid: u32) -> Result<(), ApiError> {
        self.call(&Request::WaitFenced { nodeid })
    }

    /// Propagates a new cluster.conf; returns the version now in force.
    pub fn config_update(&mut self, xml: String) -> Result<u64, ApiError> {
        let v: ConfigVersion = self.call(&Request::ConfigUpdate { xml })?;
        Ok(v.version)
    }

    /// Asks fenced to leave the group and exit.
    pub fn shutdown(&mut self) -> Result<(), ApiError> {
        self.call(&Request::Shutdown)
    }

    /// Subscribes; then call [`Client::next_event`].
    pub fn subscribe(&mut self) -> Result<(), ApiError> {
        self.call(&Request::Subscribe)
    }

    /// The next event of a subscription.
    pub fn next_event(&mut self) -> Result<Event, ApiError> {
        Ok(self.inner.receive()?)
    }
}

/// Converts a record for display.
pub fn last_fence(rec: &FenceRecord, name_of: impl Fn(u32) -> String) -> LastFence {
    LastFence { by: name_of(rec.by), method: rec.method.clone(), at_unix_ms: rec.at_unix_ms }
}

/// Converts pending victims for display.
pub fn failures_of(pending: &[PendingVictim], nodeid: u32) -> Option<u32> {
    pending.iter().find(|p| p.nodeid == nodeid).map(|p| p.failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        fn line<T: Serialize>(v: &T) -> String {
            String::from_utf8(control::encode(v).unwrap()).unwrap()
        }
        assert_eq!(line(&Request::Status), "{\"op\":\"status\"}\n");
        assert_eq!(line(&Request::Fence { node: "n2".into() }), "{\"op\":\"fence\",\"node\":\"n2\"}\n");
        assert_eq!(line(&Request::WaitFenced { nodeid: 3 }), "{\"op\":\"wait_fenced\",\"nodeid\":3}\n");
        let ok: control::Reply<FenceDone> = control::Reply::Ok(FenceDone { method: "storage".into() });
        assert_eq!(line(&ok), "{\"ok\":{\"method\":\"storage\"}}\n");
        let ev: control::Reply<Event> =
            control::Reply::Ok(Event::Fenced { nodeid: 3, name: "node3".into(), method: "m".into() });
        assert_eq!(line(&ev), "{\"ok\":{\"event\":\"fenced\",\"nodeid\":3,\"name\":\"node3\",\"method\":\"m\"}}\n");
        let unit: control::Reply<()> = control::Reply::Ok(());
        assert_eq!(line(&unit), "{\"ok\":null}\n");
        assert!(control::decode_request::<Request>(br#"{"cmd":"status"}"#).is_err());
        assert!(control::decode_request::<Request>(br#"{"op":"fence","node":"n","x":1}"#).is_err());
    }
}
