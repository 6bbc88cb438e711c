//! The wire protocol of the network control channel (sans-IO: messages and their encoding;
//! the drivers are `gnbd_serv::netctl` on the server and [`crate::client`] here).
//!
//! Orders are accepted only from holders of the cluster key. Each connection carries one
//! order: the server opens with a fresh random challenge, the client answers with the order
//! and HMAC-SHA256(key, challenge "\n" order); a forged, replayed or unsigned order is
//! refused. JSON lines, like the server's local control socket:
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

use std::io::{BufRead, Read};

use serde::{Deserialize, Serialize};

use crate::key::{hex, ClusterKey};

/// Default TCP port of the network control channel.
pub const DEFAULT_CONTROL_PORT: u16 = 10810;
/// Longest line either side reads.
pub const MAX_LINE: u64 = 64 * 1024;
/// What the server calls itself in its [`Hello`].
pub const SERVER_NAME: &str = "gnbd_serv";

/// An order a node may give a server over the network (the same JSON as the matching verbs
/// of the server's local control socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case", deny_unknown_fields)]
pub enum Order {
    /// Fence a node: persist the ban, cut its connections, wait until its I/O has stopped.
    Fence { node: String },
    /// Lift a node's ban.
    Unfence { node: String },
    /// List fenced nodes.
    Bans,
    /// Server identity and listening addresses.
    Status,
}

/// The server's answer to an [`Order`] (the matching replies of the local control socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Ok { message: String },
    Error { message: String },
    Status { pid: u32, version: String, listening: Vec<String> },
    Bans { nodes: Vec<String> },
}

/// The server's opening line: who it is and the challenge to sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub server: String,
    pub challenge: String,
}

/// An order signed with the cluster key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The order, serialised as JSON (signed as these exact bytes).
    pub request: String,
    pub mac: String,
}

impl Signed {
    /// Signs `order` under `challenge`.
    pub fn new(key: &ClusterKey, challenge: &str, order: &Order) -> Signed {
        let request = serde_json::to_string(order).expect("orders serialise");
        let mac = key.sign(challenge, &request);
        Signed { request, mac }
    }

    /// Whether the order was signed with `key` under `challenge`.
    pub fn verify(&self, key: &ClusterKey, challenge: &str) -> bool {
        key.verify(challenge, &self.request, &self.mac)
    }
}

/// Asks the server to switch the connection to TLS (instead of a signed order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartTls {
    pub starttls: bool,
}

/// The client's first line, as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// `{"starttls":true}`: the order follows inside TLS.
    StartTls,
    /// A signed order.
    Signed(Signed),
}

impl Opening {
    /// Decodes the client's first line.
    pub fn decode(line: &str) -> Result<Opening, serde_json::Error> {
        if let Ok(StartTls { starttls: true }) = serde_json::from_str::<StartTls>(line) {
            return Ok(Opening::StartTls);
        }
        serde_json::from_str::<Signed>(line).map(Opening::Signed)
    }
}

/// A fresh random challenge (64 hex digits).
pub fn new_challenge() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex(&b))
}

/// One message as a JSON line (with its newline).
pub fn line<T: Serialize>(msg: &T) -> String {
    format!("{}\n", serde_json::to_string(msg).expect("channel messages serialise"))
}

/// Reads one line of at most [`MAX_LINE`] bytes ("" at end of stream).
pub fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    r.take(MAX_LINE).read_line(&mut line)?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable_json_lines() {
        assert_eq!(line(&Order::Fence { node: "n2".into() }), "{\"verb\":\"fence\",\"node\":\"n2\"}\n");
        assert_eq!(line(&Order::Bans), "{\"verb\":\"bans\"}\n");
        assert_eq!(line(&StartTls { starttls: true }), "{\"starttls\":true}\n");
        let r: Reply = serde_json::from_str(r#"{"reply":"bans","nodes":["a"]}"#).unwrap();
        assert_eq!(r, Reply::Bans { nodes: vec!["a".into()] });
        assert!(serde_json::from_str::<Order>(r#"{"verb":"list"}"#).is_err());
    }

    #[test]
    fn openings_decode() {
        assert_eq!(Opening::decode("{\"starttls\":true}\n").unwrap(), Opening::StartTls);
        assert!(Opening::decode("{\"starttls\":false}").is_err());
        assert!(Opening::decode("garbage").is_err());
        let key = ClusterKey::from_secret(vec![3; 32]);
        let s = Signed::new(&key, "c", &Order::Status);
        match Opening::decode(&line(&s)).unwrap() {
            Opening::Signed(got) => {
                assert!(got.verify(&key, "c"));
                assert!(!got.verify(&key, "d"));
            }
            other => panic!("{other:?}"),
        }
    }
}
