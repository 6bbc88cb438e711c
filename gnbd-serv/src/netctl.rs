//! The network control channel: fence, unfence and ban-list orders from other cluster nodes
//! (the `fence_gnbd` agent runs on whichever node the fence daemon picks).
//!
//! Orders are accepted only from holders of the cluster key, a secret shared by the nodes in
//! a root-only file. Each connection carries one order: the server opens with a fresh random
//! challenge, the client answers with the order and HMAC-SHA256(key, challenge "\n" order);
//! a forged, replayed or unsigned order is refused and logged. JSON lines, like the local
//! control socket:
//!
//! ```text
//! S: {"server":"gnbd_serv","challenge":"<64 hex digits>"}
//! C: {"request":"{\"verb\":\"fence\",\"node\":\"node2\"}","mac":"<64 hex digits>"}
//! S: {"reply":"ok","message":"fenced node 'node2' (1 connection(s) cut)"}
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use tracing::warn;

use crate::control::{ControlError, ControlRequest, ControlResponse};

/// Default TCP port of the network control channel.
pub const DEFAULT_CONTROL_PORT: u16 = 10810;
/// Shortest acceptable key.
const MIN_KEY: usize = 32;

/// The cluster's shared secret.
pub struct ClusterKey(Vec<u8>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read cluster key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cluster key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cluster key {path} is too short ({len} bytes); use at least {MIN_KEY} random bytes, e.g. `head -c 64 /dev/urandom > {path}`")]
    TooShort { path: PathBuf, len: usize },
}

impl ClusterKey {
    /// Reads a key file, refusing one that other users could read.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let read = |source| KeyError::Read { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: path.to_path_buf(), mode });
        }
        let key = std::fs::read(path).map_err(read)?;
        if key.len() < MIN_KEY {
            return Err(KeyError::TooShort { path: path.to_path_buf(), len: key.len() });
        }
        Ok(ClusterKey(key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// Hex HMAC of an order under a challenge.
    pub fn sign(&self, challenge: &str, request: &str) -> String {
        let mut m = self.mac();
        m.update(challenge.as_bytes());
        m.update(b"\n");
        m.update(request.as_bytes());
        hex(&m.finalize().into_bytes())
    }

    /// Constant-time check of a hex HMAC.
    pub fn verify(&self, challenge: &str, request: &str, mac_hex: &str) -> bool {
        let Some(mac) = unhex(mac_hex) else { return false };
        let mut m = self.mac();
        m.update(challenge.as_bytes());
        m.update(b"\n");
        m.update(request.as_bytes());
        m.verify_slice(&mac).is_ok()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hello {
    server: String,
    challenge: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signed {
    /// The order, serialised as JSON (signed as these exact bytes).
    request: String,
    mac: String,
}

fn challenge() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex(&b))
}

/// Reads one line of at most 64 KiB.
fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    r.take(64 * 1024).read_line(&mut line)?;
    Ok(line)
}

/// Serves one network control connection: challenge, one signed order, one reply.
pub fn serve(stream: TcpStream, key: &ClusterKey, handle: impl FnOnce(ControlRequest) -> ControlResponse) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(challenge) = challenge() else { return };
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let hello = serde_json::to_string(&Hello { server: "gnbd_serv".into(), challenge: challenge.clone() })
        .expect("hello serialises");
    if writeln!(w, "{hello}").is_err() {
        return;
    }
    let mut r = BufReader::new(stream);
    let reply = match read_line(&mut r).map(|l| serde_json::from_str::<Signed>(&l)) {
        Ok(Ok(signed)) if key.verify(&challenge, &signed.request, &signed.mac) => {
            match serde_json::from_str::<ControlRequest>(&signed.request) {
                Ok(req @ (ControlRequest::Fence { .. } | ControlRequest::Unfence { .. } | ControlRequest::Bans)) => {
                    handle(req)
                }
                Ok(ControlRequest::Status) => handle(ControlRequest::Status),
                Ok(_) => ControlResponse::Error {
                    message: "only fence, unfence, bans and status are accepted over the network".into(),
                },
                Err(e) => ControlResponse::Error { message: format!("malformed order: {e}") },
            }
        }
        Ok(Ok(_)) => {
            warn!(peer = %peer, "refused a control order with a wrong signature (not a cluster member, or a replay)");
            ControlResponse::Error {
                message: "authentication failed: the order is not signed with the cluster key".into(),
            }
        }
        Ok(Err(e)) => {
            warn!(peer = %peer, error = %e, "refused a malformed control message");
            ControlResponse::Error { message: format!("malformed control message: {e}") }
        }
        Err(_) => return,
    };
    let _ = writeln!(w, "{}", serde_json::to_string(&reply).expect("replies serialise"));
}

/// Sends one signed order to the network control channel at `addr` (`host:port`).
pub fn call(addr: &str, key: &ClusterKey, req: &ControlRequest) -> Result<ControlResponse, ControlError> {
    let socket = PathBuf::from(addr);
    let io = |source| ControlError::Io { socket: socket.clone(), source };
    let s = TcpStream::connect(addr).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(io)?;
    let mut w = s.try_clone().map_err(io)?;
    let mut r = BufReader::new(s);
    let hello: Hello = serde_json::from_str(&read_line(&mut r).map_err(io)?)
        .map_err(|e| ControlError::Protocol(format!("{addr} is not a gnbd_serv control channel: {e}")))?;
    let request = serde_json::to_string(req).expect("requests serialise");
    let mac = key.sign(&hello.challenge, &request);
    let line = serde_json::to_string(&Signed { request, mac }).expect("orders serialise");
    writeln!(w, "{line}").map_err(io)?;
    let reply = read_line(&mut r).map_err(io)?;
    if reply.is_empty() {
        return Err(ControlError::Protocol(format!("{addr} closed the connection without replying")));
    }
    serde_json::from_str(&reply).map_err(|e| ControlError::Protocol(format!("{e}: {}", reply.trim_end())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_key_challenge_and_order() {
        let k = ClusterKey(vec![7; 32]);
        let other = ClusterKey(vec![8; 32]);
        let mac = k.sign("c1", r#"{"verb":"bans"}"#);
        assert!(k.verify("c1", r#"{"verb":"bans"}"#, &mac));
        assert!(!k.verify("c2", r#"{"verb":"bans"}"#, &mac), "a replay under a new challenge fails");
        assert!(!k.verify("c1", r#"{"verb":"fence","node":"x"}"#, &mac), "a changed order fails");
        assert!(!other.verify("c1", r#"{"verb":"bans"}"#, &mac), "another key fails");
        assert!(!k.verify("c1", r#"{"verb":"bans"}"#, "zz"));
        assert!(!k.verify("c1", r#"{"verb":"bans"}"#, ""));
    }

    #[test]
    fn exposed_or_short_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("gnbd-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("key");
        std::fs::write(&p, [1u8; 64]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(ClusterKey::load(&p), Err(KeyError::Exposed { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ClusterKey::load(&p).is_ok());
        std::fs::write(&p, [1u8; 8]).unwrap();
        assert!(matches!(ClusterKey::load(&p), Err(KeyError::TooShort { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
