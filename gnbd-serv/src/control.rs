//! The control socket, `STATE_DIR/gnbd_serv.sock`: one JSON request per line, one JSON reply
//! per line. `gnbd_export` speaks it, and local fence orders (`fence`, `unfence`, `bans`)
//! arrive the same way; fence orders from other nodes come over the network channel
//! ([`crate::netctl`]) as the same verbs. Every request is a tagged verb and new verbs
//! extend [`ControlRequest`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::export::ExportSpec;

/// File name of the control socket inside the state directory.
pub const CONTROL_SOCKET: &str = "gnbd_serv.sock";

/// A request to the running server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case", deny_unknown_fields)]
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

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ControlResponse {
    Ok { message: String },
    Error { message: String },
    Exports { exports: Vec<ExportStatus> },
    Status { pid: u32, version: String, listening: Vec<String> },
    Bans { nodes: Vec<String> },
}

/// Failure to talk to the server.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("gnbd_serv is not running for state directory {dir} (no server at {socket}); start it with `gnbd_serv --state-dir {dir}`")]
    NotRunning { dir: PathBuf, socket: PathBuf },
    #[error("cannot talk to gnbd_serv at {socket}: {source}")]
    Io { socket: PathBuf, source: std::io::Error },
    #[error("gnbd_serv sent a reply this gnbd_export does not understand: {0}")]
    Protocol(String),
}

/// Sends one request to the server of `state_dir` and waits (bounded) for its reply.
pub fn call(state_dir: &Path, req: &ControlRequest) -> Result<ControlResponse, ControlError> {
    let socket = state_dir.join(CONTROL_SOCKET);
    let io = |source| ControlError::Io { socket: socket.clone(), source };
    let mut stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED)) => {
            return Err(ControlError::NotRunning { dir: state_dir.to_path_buf(), socket });
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(io)?;
    let mut line = serde_json::to_string(req).expect("requests always serialise");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    if reply.is_empty() {
        return Err(ControlError::Protocol("the server closed the connection without replying".into()));
    }
    serde_json::from_str(&reply).map_err(|e| ControlError::Protocol(format!("{e}: {}", reply.trim_end())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable_json_lines() {
        let req = ControlRequest::Remove { name: "disk0".into(), force: true };
        let s = serde_json::to_string(&req).unwrap();
        assert_eq!(s, r#"{"verb":"remove","name":"disk0","force":true}"#);
        assert_eq!(serde_json::from_str::<ControlRequest>(&s).unwrap(), req);
        assert!(serde_json::from_str::<ControlRequest>(r#"{"verb":"explode"}"#).is_err());
    }
}
