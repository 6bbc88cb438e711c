//! The control socket, `STATE_DIR/gnbd_serv.sock` (mode 0600: root only): the suite's local
//! control protocol (`daemon::control`: JSON lines, requests tagged `op`, replies
//! `{"ok":VALUE}` or `{"error":{"kind":..,"message":..}}`). `gnbd_export` speaks it, and
//! local fence orders (`fence`, `unfence`, `bans`) arrive the same way; fence orders from
//! other nodes come over the network channel ([`crate::netctl`]) and are carried out by the
//! same handler.
//!
//! | request | ok value |
//! |---|---|
//! | `{"op":"export","spec":{..}}` | `{"message":"created export 'NAME' (PATH, SIZE bytes)"}` |
//! | `{"op":"remove","name":NAME,"force":BOOL}` | `{"message":..}` |
//! | `{"op":"list"}` | `{"exports":[..]}` ([`ExportStatus`]) |
//! | `{"op":"status"}` | `{"pid":N,"version":V,"listening":[..]}` |
//! | `{"op":"fence","node":NODE}` | after the node's I/O has stopped: `{"message":..}` |
//! | `{"op":"unfence","node":NODE}` | `{"message":..}` |
//! | `{"op":"bans"}` | `{"nodes":[..]}` |

use std::path::{Path, PathBuf};
use std::time::Duration;

use daemon::control::CallError;
pub use daemon::control::{ControlError, ErrorKind};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::export::ExportSpec;

/// File name of the control socket inside the state directory.
pub const CONTROL_SOCKET: &str = "gnbd_serv.sock";

/// A request to the running server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Create an export and persist it.
    Export { spec: ExportSpec },
    /// Remove an export; `force` disconnects its clients first.
    Remove { name: String, force: bool },
    /// List exports with their clients.
    List,
    /// Server identity and listening addresses.
    Status,
    /// Fence a node: persist the ban, cut its connections, wait until its I/O has stopped.
    Fence { node: String },
    /// Lift a node's ban.
    Unfence { node: String },
    /// List fenced nodes.
    Bans,
}

/// One export as `gnbd_export -l` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStatus {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub cached: bool,
    pub readonly: bool,
    /// False when the backing store could not be opened at start-up.
    pub online: bool,
    /// True when aligned I/O really bypasses the page cache.
    pub direct_io: bool,
    /// Why the export is offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Peer addresses of connected clients.
    pub clients: Vec<String>,
    /// Served only over TLS.
    #[serde(default)]
    pub tls: bool,
    /// The connected clients: peer, cluster node, TLS.
    #[serde(default)]
    pub sessions: Vec<SessionStatus>,
}

/// One connection of an export, as `gnbd_export -l --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub peer: String,
    /// The cluster node it belongs to (by address, or by its certificate over TLS).
    pub node: Option<String>,
    pub tls: bool,
}

/// The value of a successful reply (told apart by its fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ControlReply {
    Exports { exports: Vec<ExportStatus> },
    Status { pid: u32, version: String, listening: Vec<String> },
    Bans { nodes: Vec<String> },
    Done { message: String },
}

/// Failure to get an answer from the server.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("gnbd_serv is not running for state directory {dir} (no server at {socket}); start it with `gnbd_serv --state-dir {dir}`")]
    NotRunning { dir: PathBuf, socket: PathBuf },
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Sends one request to the server of `state_dir` and waits (bounded) for its reply.
pub fn call(state_dir: &Path, req: &ControlRequest) -> Result<ControlReply, ClientError> {
    let socket = state_dir.join(CONTROL_SOCKET);
    match daemon::control::call("gnbd_serv", &socket, req, Some(Duration::from_secs(60))) {
        Err(CallError::Connect { source, .. })
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            Err(ClientError::NotRunning { dir: state_dir.to_path_buf(), socket })
        }
        r => Ok(r?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_the_toolkit_protocol() {
        let req = ControlRequest::Remove { name: "disk0".into(), force: true };
        let line = daemon::control::encode(&req).unwrap();
        assert_eq!(line, b"{\"op\":\"remove\",\"name\":\"disk0\",\"force\":true}\n");
        assert_eq!(daemon::control::decode_request::<ControlRequest>(&line).unwrap(), req);
        assert!(daemon::control::decode_request::<ControlRequest>(br#"{"op":"explode"}"#).is_err());
        let replies = [
            ControlReply::Done { message: "m".into() },
            ControlReply::Bans { nodes: vec!["a".into()] },
            ControlReply::Status { pid: 1, version: "v".into(), listening: vec!["x".into()] },
            ControlReply::Exports { exports: vec![] },
        ];
        for r in replies {
            let line = daemon::control::encode(&daemon::control::Reply::Ok(r.clone())).unwrap();
            assert_eq!(daemon::control::decode_reply::<ControlReply>(&line).unwrap(), daemon::control::Reply::Ok(r));
        }
    }
}
