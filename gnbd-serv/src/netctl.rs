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
//!
//! Alternatively, on a server with TLS and a CA for client certificates (`--tls-ca`), the
//! client asks for TLS and gives its order inside it, authenticated by its certificate: the
//! certificate must name a node of the cluster that is not fenced itself.
//!
//! ```text
//! S: {"server":"gnbd_serv","challenge":"<64 hex digits>"}
//! C: {"starttls":true}
//! S: {"reply":"ok","message":"starting TLS"}
//!    (TLS handshake; the client presents its certificate)
//! C: {"verb":"fence","node":"node2"}
//! S: {"reply":"ok","message":"fenced node 'node2' (1 connection(s) cut)"}
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use tracing::warn;

use crate::control::{ControlError, ControlRequest, ControlResponse};
use crate::tls::TlsServer;

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

/// Asks the server to switch the connection to TLS (instead of a signed order).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartTls {
    starttls: bool,
}

/// How a server authenticates the orders it receives.
pub struct Authenticators<'a> {
    /// Orders signed with the cluster key.
    pub key: Option<&'a ClusterKey>,
    /// Orders over TLS from a client certificate the CA signed (`server.client_auth`).
    pub tls: Option<&'a TlsServer>,
    /// Whether the node a verified certificate names may give orders.
    pub member: &'a (dyn Fn(&str) -> Result<(), String> + Sync),
}

impl std::fmt::Debug for Authenticators<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticators").field("key", &self.key.is_some()).field("tls", &self.tls.is_some()).finish()
    }
}

/// Only these verbs are accepted over the network.
fn network_verb(req: ControlRequest) -> Result<ControlRequest, ControlResponse> {
    match req {
        ControlRequest::Fence { .. }
        | ControlRequest::Unfence { .. }
        | ControlRequest::Bans
        | ControlRequest::Status => Ok(req),
        _ => Err(ControlResponse::Error {
            message: "only fence, unfence, bans and status are accepted over the network".into(),
        }),
    }
}

fn reply_line(reply: &ControlResponse) -> String {
    format!("{}\n", serde_json::to_string(reply).expect("replies serialise"))
}

/// Serves one network control connection: challenge, then one signed order and its reply, or
/// a switch to TLS followed by one order from a member's certificate and its reply.
pub fn serve(stream: TcpStream, auth: &Authenticators<'_>, handle: impl FnOnce(ControlRequest) -> ControlResponse) {
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
    let line = match read_line(&mut r) {
        Ok(l) => l,
        Err(_) => return,
    };
    if let Ok(StartTls { starttls: true }) = serde_json::from_str::<StartTls>(&line) {
        let Some(tls) = auth.tls.filter(|t| t.client_auth) else {
            warn!(peer = %peer, "refused a TLS control connection: no CA for client certificates (--tls-ca)");
            let msg = "this server does not take orders over TLS (it has no --tls-ca)";
            let _ = w.write_all(reply_line(&ControlResponse::Error { message: msg.into() }).as_bytes());
            return;
        };
        if !r.buffer().is_empty() {
            warn!(peer = %peer, "refused a control connection that sent data before the TLS handshake");
            return;
        }
        let ok = ControlResponse::Ok { message: "starting TLS".into() };
        if w.write_all(reply_line(&ok).as_bytes()).is_err() {
            return;
        }
        serve_tls(r.into_inner(), tls, auth, &peer, handle);
        return;
    }
    let reply = match serde_json::from_str::<Signed>(&line) {
        Ok(signed) => match auth.key {
            Some(key) if key.verify(&challenge, &signed.request, &signed.mac) => {
                match serde_json::from_str::<ControlRequest>(&signed.request) {
                    Ok(req) => network_verb(req).map_or_else(|refusal| refusal, handle),
                    Err(e) => ControlResponse::Error { message: format!("malformed order: {e}") },
                }
            }
            Some(_) => {
                warn!(peer = %peer, "refused a control order with a wrong signature (not a cluster member, or a replay)");
                ControlResponse::Error {
                    message: "authentication failed: the order is not signed with the cluster key".into(),
                }
            }
            None => {
                warn!(peer = %peer, "refused a signed control order: this server has no cluster key");
                ControlResponse::Error {
                    message: "authentication failed: this server takes orders only over TLS from a member's \
                              certificate"
                        .into(),
                }
            }
        },
        Err(e) => {
            warn!(peer = %peer, error = %e, "refused a malformed control message");
            ControlResponse::Error { message: format!("malformed control message: {e}") }
        }
    };
    let _ = w.write_all(reply_line(&reply).as_bytes());
}

/// The TLS half of [`serve`]: the certificate names the node giving the order.
fn serve_tls(
    stream: TcpStream,
    tls: &TlsServer,
    auth: &Authenticators<'_>,
    peer: &str,
    handle: impl FnOnce(ControlRequest) -> ControlResponse,
) {
    let (t, name) = match tls.accept(stream) {
        Ok(x) => x,
        Err(e) => {
            warn!(peer = %peer, error = %e, "refused a control connection: TLS handshake failed (no valid certificate?)");
            return;
        }
    };
    let mut r = BufReader::new(t);
    let name = name.unwrap_or_default();
    let reply = match (auth.member)(&name) {
        Err(why) => {
            warn!(peer = %peer, certificate = %name, why = %why, "refused a control order from a certificate");
            ControlResponse::Error { message: format!("authentication failed: {why}") }
        }
        Ok(()) => match read_line(&mut r) {
            Ok(line) => match serde_json::from_str::<ControlRequest>(&line) {
                Ok(req) => {
                    tracing::info!(peer = %peer, node = %name, order = ?req, "control order over TLS");
                    network_verb(req).map_or_else(|refusal| refusal, handle)
                }
                Err(e) => ControlResponse::Error { message: format!("malformed order: {e}") },
            },
            Err(_) => return,
        },
    };
    let t = r.get_mut();
    let _ = t.write_all(reply_line(&reply).as_bytes());
    t.conn.send_close_notify();
    let _ = t.flush();
}

/// Sends one order to the network control channel at `addr` (`host:port`) over TLS,
/// authenticated by the client certificate of `config`; the server's certificate must name
/// the host of `addr`.
pub fn call_tls(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    req: &ControlRequest,
) -> Result<ControlResponse, ControlError> {
    let socket = PathBuf::from(addr);
    let io = |source| ControlError::Io { socket: socket.clone(), source };
    let s = TcpStream::connect(addr).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(60))).map_err(io)?;
    let mut w = s.try_clone().map_err(io)?;
    let mut r = BufReader::new(s);
    let _: Hello = serde_json::from_str(&read_line(&mut r).map_err(io)?)
        .map_err(|e| ControlError::Protocol(format!("{addr} is not a gnbd_serv control channel: {e}")))?;
    let line = serde_json::to_string(&StartTls { starttls: true }).expect("serialises");
    writeln!(w, "{line}").map_err(io)?;
    let reply = read_line(&mut r).map_err(io)?;
    match serde_json::from_str::<ControlResponse>(&reply) {
        Ok(ControlResponse::Ok { .. }) => {}
        Ok(refusal) => return Ok(refusal),
        Err(e) => return Err(ControlError::Protocol(format!("{e}: {}", reply.trim_end()))),
    }
    let host = host_of(addr);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ControlError::Protocol(format!("'{host}' cannot name a TLS server: {e}")))?;
    let conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| ControlError::Protocol(format!("TLS setup failed: {e}")))?;
    let mut t = rustls::StreamOwned::new(conn, r.into_inner());
    let tls_err = |e: std::io::Error| ControlError::Protocol(format!("TLS with {addr} failed: {e}"));
    let request = serde_json::to_string(req).expect("requests serialise");
    t.write_all(format!("{request}\n").as_bytes()).map_err(tls_err)?;
    t.flush().map_err(tls_err)?;
    let reply = read_line(&mut BufReader::new(&mut t)).map_err(tls_err)?;
    if reply.is_empty() {
        return Err(ControlError::Protocol(format!("{addr} closed the connection without replying")));
    }
    serde_json::from_str(&reply).map_err(|e| ControlError::Protocol(format!("{e}: {}", reply.trim_end())))
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
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
