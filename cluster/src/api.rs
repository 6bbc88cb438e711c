//! The local API of the node daemon (fenced): a Unix stream socket at [`SOCKET`] speaking
//! one JSON object per line. Through it the DLM, the filesystem and the service manager learn
//! membership, quorum and "node N is fenced", and wait for it; the command-line tools use it
//! too.
//!
//! Requests (one line each) and replies:
//!
//! | request | reply |
//! |---|---|
//! | `{"cmd":"status"}` | `{"ok":true,"status":{...}}` ([`DomainStatus`]) |
//! | `{"cmd":"fence","node":"NAME"}` | after the fence: `{"ok":true,"method":"..."}` |
//! | `{"cmd":"ack_manual","node":"NAME"}` | `{"ok":true}`: the operator vouches the node is off |
//! | `{"cmd":"wait_fenced","nodeid":N}` | when N is safe (member, left cleanly, or fenced): `{"ok":true}` |
//! | `{"cmd":"subscribe"}` | a stream of [`Event`] lines until the client closes (membership events carry corosync's ring sequence number, `ring_seq`) |
//! | `{"cmd":"config_update","xml":"..."}` | after propagation: `{"ok":true,"version":V}` |
//! | `{"cmd":"shutdown"}` | `{"ok":true}`; fenced leaves the group cleanly and exits |
//!
//! Errors are `{"ok":false,"error":"..."}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fence::{FenceRecord, PendingVictim};

/// The socket path.
pub const SOCKET: &str = "/run/cluster/fenced.sock";

/// Largest request or reply line accepted.
pub const MAX_LINE: usize = 8 << 20;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
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
    /// Cannot reach fenced.
    #[error("cannot reach fenced at {path}: {error}; is the node joined (cman_tool join)?")]
    Connect { path: String, error: std::io::Error },
    /// Socket trouble after connecting.
    #[error("fenced connection: {0}")]
    Io(#[from] std::io::Error),
    /// fenced answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The reply is not what the protocol says.
    #[error("unexpected reply from fenced: {0}")]
    Protocol(String),
}

/// Helpers shared with the daemon: builds `{"ok":false,"error":...}`.
pub fn error_reply(msg: &str) -> String {
    serde_json::json!({"ok": false, "error": msg}).to_string()
}

/// A client of the local API.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ApiError> {
        let s =
            UnixStream::connect(path).map_err(|error| ApiError::Connect { path: path.display().to_string(), error })?;
        let writer = s.try_clone()?;
        Ok(Client { reader: BufReader::new(s), writer })
    }

    /// Connects to [`SOCKET`].
    pub fn connect_default() -> Result<Client, ApiError> {
        Self::connect(Path::new(SOCKET))
    }

    /// Bounds every later read (None: wait forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ApiError> {
        self.reader.get_ref().set_read_timeout(t)?;
        Ok(())
    }

    fn send(&mut self, req: &Request) -> Result<(), ApiError> {
        let mut line = serde_json::to_string(req).expect("requests serialize");
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        Ok(())
    }

    fn read_value(&mut self) -> Result<serde_json::Value, ApiError> {
        let mut line = String::new();
        let n = std::io::Read::take(&mut self.reader, MAX_LINE as u64).read_line(&mut line)?;
        if n == 0 {
            return Err(ApiError::Protocol("connection closed".into()));
        }
        serde_json::from_str(&line).map_err(|e| ApiError::Protocol(format!("{e}: {line:?}")))
    }

    /// Sends a request and reads one reply, mapping `ok:false` to [`ApiError::Refused`].
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value, ApiError> {
        self.send(req)?;
        let v = self.read_value()?;
        if v.get("ok").and_then(|o| o.as_bool()) == Some(true) {
            Ok(v)
        } else {
            let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or("unknown error").to_owned();
            Err(ApiError::Refused(msg))
        }
    }

    /// The daemon's view of the domain.
    pub fn status(&mut self) -> Result<DomainStatus, ApiError> {
        let v = self.call(&Request::Status)?;
        serde_json::from_value(v["status"].clone()).map_err(|e| ApiError::Protocol(e.to_string()))
    }

    /// Fences `node` now; returns the method that worked.
    pub fn fence(&mut self, node: &str) -> Result<String, ApiError> {
        let v = self.call(&Request::Fence { node: node.to_owned() })?;
        Ok(v["method"].as_str().unwrap_or("").to_owned())
    }

    /// Confirms a manual fence.
    pub fn ack_manual(&mut self, node: &str) -> Result<(), ApiError> {
        self.call(&Request::AckManual { node: node.to_owned() }).map(|_| ())
    }

    /// Waits until `nodeid` is safe: a member, gone cleanly, or fenced. Lock and journal
    /// recovery call this for every node that left before touching what it held.
    pub fn wait_fenced(&mut self, nodeid: u32) -> Result<(), ApiError> {
        self.call(&Request::WaitFenced { nodeid }).map(|_| ())
    }

    /// Propagates a new cluster.conf; returns the version now in force.
    pub fn config_update(&mut self, xml: String) -> Result<u64, ApiError> {
        let v = self.call(&Request::ConfigUpdate { xml })?;
        Ok(v["version"].as_u64().unwrap_or(0))
    }

    /// Asks fenced to leave the group and exit.
    pub fn shutdown(&mut self) -> Result<(), ApiError> {
        self.call(&Request::Shutdown).map(|_| ())
    }

    /// Subscribes; then call [`Client::next_event`].
    pub fn subscribe(&mut self) -> Result<(), ApiError> {
        self.call(&Request::Subscribe).map(|_| ())
    }

    /// The next event of a subscription.
    pub fn next_event(&mut self) -> Result<Event, ApiError> {
        let v = self.read_value()?;
        serde_json::from_value(v).map_err(|e| ApiError::Protocol(e.to_string()))
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
