//! The node's end of the control channel: one order to one server's control port, signed
//! with the cluster key ([`call`]) or over TLS with the node's certificate ([`call_tls`]).

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::key::ClusterKey;
use crate::proto::{line, read_line, Hello, Order, Reply, Signed, StartTls};

/// How long the client waits for the server (a fence order waits until the node's I/O
/// has stopped).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Failure to get an answer from a server's control channel.
#[derive(Debug, Error)]
pub enum CallError {
    #[error("cannot talk to gnbd_serv at {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("gnbd_serv sent a reply this client does not understand: {0}")]
    Protocol(String),
}

fn connect(addr: &str) -> Result<(TcpStream, BufReader<TcpStream>, Hello), CallError> {
    let io = |source| CallError::Io { addr: addr.to_string(), source };
    let s = TcpStream::connect(addr).map_err(io)?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let w = s.try_clone().map_err(io)?;
    let mut r = BufReader::new(s);
    let hello: Hello = serde_json::from_str(&read_line(&mut r).map_err(io)?)
        .map_err(|e| CallError::Protocol(format!("{addr} is not a gnbd_serv control channel: {e}")))?;
    Ok((w, r, hello))
}

fn decode_reply(addr: &str, reply: &str) -> Result<Reply, CallError> {
    if reply.is_empty() {
        return Err(CallError::Protocol(format!("{addr} closed the connection without replying")));
    }
    serde_json::from_str(reply).map_err(|e| CallError::Protocol(format!("{e}: {}", reply.trim_end())))
}

/// Sends one signed order to the network control channel at `addr` (`host:port`).
pub fn call(addr: &str, key: &ClusterKey, order: &Order) -> Result<Reply, CallError> {
    let io = |source| CallError::Io { addr: addr.to_string(), source };
    let (mut w, mut r, hello) = connect(addr)?;
    w.write_all(line(&Signed::new(key, &hello.challenge, order)).as_bytes()).map_err(io)?;
    decode_reply(addr, &read_line(&mut r).map_err(io)?)
}

/// Sends one order to the network control channel at `addr` (`host:port`) over TLS,
/// authenticated by the client certificate of `config`; the server's certificate must name
/// the host of `addr`.
pub fn call_tls(addr: &str, config: Arc<rustls::ClientConfig>, order: &Order) -> Result<Reply, CallError> {
    let io = |source| CallError::Io { addr: addr.to_string(), source };
    let (mut w, mut r, _hello) = connect(addr)?;
    w.write_all(line(&StartTls { starttls: true }).as_bytes()).map_err(io)?;
    match decode_reply(addr, &read_line(&mut r).map_err(io)?) {
        Ok(Reply::Ok { .. }) => {}
        Ok(refusal) => return Ok(refusal),
        Err(e) => return Err(e),
    }
    let host = gnbd_net::addr::host_of(addr);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| CallError::Protocol(format!("'{host}' cannot name a TLS server: {e}")))?;
    let conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| CallError::Protocol(format!("TLS setup failed: {e}")))?;
    let mut t = rustls::StreamOwned::new(conn, r.into_inner());
    let tls_err = |e: std::io::Error| CallError::Protocol(format!("TLS with {addr} failed: {e}"));
    t.write_all(line(order).as_bytes()).map_err(tls_err)?;
    t.flush().map_err(tls_err)?;
    let reply = read_line(&mut BufReader::new(&mut t)).map_err(tls_err)?;
    decode_reply(addr, &reply)
}
