//! The server's end of the network control channel: fence, unfence and ban-list orders from
//! other cluster nodes (the `fence_gnbd` agent runs on whichever node the fence daemon
//! picks). The wire protocol (challenge, orders signed with the cluster key, or orders over
//! TLS from a member's certificate) is `gnbd_fence::proto`; this module drives it on an
//! accepted connection and hands the order ([`Order`]) to the server, which carries it out
//! with the same handler as its control socket's requests.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use gnbd_fence::proto::{self, line, new_challenge, read_line, Hello, Opening};
pub use gnbd_fence::{ClusterKey, KeyError, DEFAULT_CONTROL_PORT};
use tracing::warn;

use crate::tls::TlsServer;
use gnbd_fence::{Order, Reply};

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

fn reply_line(reply: &Reply) -> String {
    line(reply)
}

/// Serves one network control connection: challenge, then one signed order and its reply, or
/// a switch to TLS followed by one order from a member's certificate and its reply.
pub fn serve(stream: TcpStream, auth: &Authenticators<'_>, handle: impl FnOnce(Order) -> Reply) {
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
            Some(key) if signed.verify(key, &challenge) => match serde_json::from_str::<Order>(&signed.request) {
                Ok(order) => handle(order),
                Err(e) => Reply::Error { message: format!("malformed order: {e}") },
            },
            Some(_) => {
                warn!(peer = %peer, "refused a control order with a wrong signature (not a cluster member, or a replay)");
                Reply::Error { message: "authentication failed: the order is not signed with the cluster key".into() }
            }
            None => {
                warn!(peer = %peer, "refused a signed control order: this server has no cluster key");
                Reply::Error {
                    message: "authentication failed: this server takes orders only over TLS from a member's \
                              certificate"
                        .into(),
                }
            }
        },
        Err(e) => {
            warn!(peer = %peer, error = %e, "refused a malformed control message");
            Reply::Error { message: format!("malformed control message: {e}") }
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
    handle: impl FnOnce(Order) -> Reply,
) {
    let Some(tls) = auth.tls.filter(|t| t.client_auth) else {
        warn!(peer = %peer, "refused a TLS control connection: no CA for client certificates (--tls-ca)");
        let msg = "this server does not take orders over TLS (it has no --tls-ca)";
        let _ = w.write_all(reply_line(&Reply::Error { message: msg.into() }).as_bytes());
        return;
    };
    if !r.buffer().is_empty() {
        warn!(peer = %peer, "refused a control connection that sent data before the TLS handshake");
        return;
    }
    let ok = Reply::Ok { message: "starting TLS".into() };
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
    handle: impl FnOnce(Order) -> Reply,
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
            Reply::Error { message: format!("authentication failed: {why}") }
        }
        Ok(()) => match read_line(&mut r) {
            Ok(line) => match serde_json::from_str::<Order>(&line) {
                Ok(order) => {
                    tracing::info!(peer = %peer, node = %name, order = ?order, "control order over TLS");
                    handle(order)
                }
                Err(e) => Reply::Error { message: format!("malformed order: {e}") },
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

    /// Only the fence channel's orders parse; export management stays on the local socket.
    #[test]
    fn only_fence_orders_parse() {
        for ok in [r#"{"verb":"fence","node":"n"}"#, r#"{"verb":"unfence","node":"n"}"#, r#"{"verb":"bans"}"#] {
            assert!(serde_json::from_str::<Order>(ok).is_ok(), "{ok}");
        }
        for refused in [r#"{"verb":"remove","name":"d","force":true}"#, r#"{"verb":"list"}"#, r#"{"op":"bans"}"#] {
            assert!(serde_json::from_str::<Order>(refused).is_err(), "{refused}");
        }
        let line = reply_line(&Reply::Bans { nodes: vec!["a".into()] });
        assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), Reply::Bans { nodes: vec!["a".into()] });
    }
}
