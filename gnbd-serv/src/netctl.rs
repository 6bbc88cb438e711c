//! The server's end of the network control channel: fence, unfence and ban-list orders from
//! other cluster nodes (the `fence_gnbd` agent runs on whichever node the fence daemon
//! picks). The wire protocol (challenge, orders signed with the cluster key, or orders over
//! TLS from a member's certificate) is `gnbd_fence::proto`; this module drives it on an
//! accepted connection and hands the order to the server as a [`ControlRequest`].

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use gnbd_fence::proto::{self, line, new_challenge, read_line, Hello, Opening};
pub use gnbd_fence::{ClusterKey, KeyError, DEFAULT_CONTROL_PORT};
use tracing::warn;

use crate::control::{ControlRequest, ControlResponse};
use crate::tls::TlsServer;

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
    line(reply)
}

/// Serves one network control connection: challenge, then one signed order and its reply, or
/// a switch to TLS followed by one order from a member's certificate and its reply.
pub fn serve(stream: TcpStream, auth: &Authenticators<'_>, handle: impl FnOnce(ControlRequest) -> ControlResponse) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(challenge) = new_challenge() else { return };
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let hello = line(&Hello { server: proto::SERVER_NAME.into(), challenge: challenge.clone() });
    if w.write_all(hello.as_bytes()).is_err() {
        return;
    }
    let mut r = BufReader::new(stream);
    let line = match read_line(&mut r) {
        Ok(l) => l,
        Err(_) => return,
    };
    let signed = match Opening::decode(&line) {
        Ok(Opening::StartTls) => return start_tls(w, r, auth, &peer, handle),
        Ok(Opening::Signed(signed)) => Ok(signed),
        Err(e) => Err(e),
    };
    let reply = match signed {
        Ok(signed) => match auth.key {
            Some(key) if signed.verify(key, &challenge) => {
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

/// The client asked for TLS: agree when client certificates are verified, then take the
/// order inside TLS.
fn start_tls(
    mut w: TcpStream,
    r: BufReader<TcpStream>,
    auth: &Authenticators<'_>,
    peer: &str,
    handle: impl FnOnce(ControlRequest) -> ControlResponse,
) {
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
    serve_tls(r.into_inner(), tls, auth, peer, handle);
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

#[cfg(test)]
mod tests {
    use super::*;
    use gnbd_fence::{Order, Reply};

    /// The fence channel's orders and replies are the control socket's verbs and replies.
    #[test]
    fn orders_and_replies_match_the_control_protocol() {
        let pairs = [
            (Order::Fence { node: "n".into() }, ControlRequest::Fence { node: "n".into() }),
            (Order::Unfence { node: "n".into() }, ControlRequest::Unfence { node: "n".into() }),
            (Order::Bans, ControlRequest::Bans),
            (Order::Status, ControlRequest::Status),
        ];
        for (order, req) in pairs {
            let wire = serde_json::to_string(&order).unwrap();
            assert_eq!(wire, serde_json::to_string(&req).unwrap());
            assert!(network_verb(serde_json::from_str(&wire).unwrap()).is_ok());
        }
        let replies = [
            ControlResponse::Ok { message: "m".into() },
            ControlResponse::Error { message: "e".into() },
            ControlResponse::Bans { nodes: vec!["a".into()] },
            ControlResponse::Status { pid: 1, version: "v".into(), listening: vec!["x".into()] },
        ];
        for r in replies {
            let reply: Reply = serde_json::from_str(&reply_line(&r)).unwrap();
            assert_eq!(serde_json::to_string(&reply).unwrap(), serde_json::to_string(&r).unwrap());
        }
    }
}
