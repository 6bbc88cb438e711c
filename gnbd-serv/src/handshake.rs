//! Blocking driver for the server handshake: runs on its own short-lived thread per new
//! connection, with a time limit, so a slow or hostile client never stalls the data path.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use nbd_proto::{Negotiated, Refusal, ServerConfig, ServerHandshake, ServerStatus};
use thiserror::Error;

use crate::export::Session;
use crate::tls::TlsServer;

/// Time a client has to finish option haggling.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection never reached the transmission phase.
#[derive(Debug, Error)]
pub enum HandshakeFailure {
    #[error("client ended the session during the handshake")]
    Aborted,
    #[error("client disconnected during the handshake")]
    Vanished,
    #[error("handshake not finished within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Refused(String),
    #[error("protocol violation: {0}")]
    Protocol(#[from] nbd_proto::HandshakeError),
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(crate::tls::TlsError),
}

/// The connection during and after the handshake: plain, or upgraded by STARTTLS.
#[derive(Debug)]
pub enum Transport<S: Read + Write> {
    Plain(S),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, S>>),
}

impl<S: Read + Write> Transport<S> {
    /// The socket underneath.
    pub fn sock(&self) -> &S {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => t.get_ref(),
        }
    }
}

impl<S: Read + Write> Read for Transport<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }
}

impl<S: Read + Write> Write for Transport<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => t.flush(),
        }
    }
}

/// Runs the handshake on `stream`. On `NBD_OPT_STARTTLS` (when `tls` is given) the stream is
/// upgraded and the client's identity is taken from its certificate (see
/// [`Registry::node_of_certificate`](crate::Registry::node_of_certificate)). On success
/// returns what was negotiated, any bytes the client already sent for the transmission
/// phase, and the (possibly upgraded) stream.
pub fn negotiate<S: Read + Write>(
    stream: S,
    session: &mut Session<'_>,
    cfg: ServerConfig,
    tls: Option<&TlsServer>,
) -> Result<(Negotiated, Vec<u8>, Transport<S>), HandshakeFailure> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut stream = Transport::Plain(stream);
    let mut hs = ServerHandshake::new(cfg);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let out = hs.take_output();
        if !out.is_empty() {
            stream.write_all(&out)?;
            stream.flush()?;
        }
        if Instant::now() > deadline {
            return Err(HandshakeFailure::TimedOut(HANDSHAKE_TIMEOUT));
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(HandshakeFailure::Vanished),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(HandshakeFailure::TimedOut(HANDSHAKE_TIMEOUT))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(HandshakeFailure::Vanished),
            Err(e) => return Err(e.into()),
        };
        buf.extend_from_slice(&chunk[..n]);
        let (used, status) = hs.feed(&buf, session)?;
        buf.drain(..used);
        match status {
            ServerStatus::Continue => {}
            ServerStatus::Done(neg) => {
                stream.write_all(&hs.take_output())?;
                stream.flush()?;
                return Ok((neg, buf, stream));
            }
            ServerStatus::Abort => {
                let _ = stream.write_all(&hs.take_output());
                let _ = stream.flush();
                return Err(HandshakeFailure::Aborted);
            }
            ServerStatus::Close(why) => return Err(HandshakeFailure::Refused(why)),
            ServerStatus::StartTls => {
                let (Some(tls), Transport::Plain(mut sock)) = (tls, stream) else {
                    return Err(HandshakeFailure::Refused("STARTTLS without TLS configured".into()));
                };
                sock.write_all(&hs.take_output())?;
                if !buf.is_empty() {
                    // Plain text sent after STARTTLS could be injected by anyone on the path.
                    return Err(HandshakeFailure::Refused("client sent plain text right after STARTTLS".into()));
                }
                let (t, cert_node) = tls.accept(sock).map_err(HandshakeFailure::Tls)?;
                if let Some(name) = cert_node {
                    match session.registry.node_of_certificate(&name, session.node.as_deref()) {
                        Ok(node) => session.node = Some(node),
                        Err(Refusal::Policy(why)) => session.refused = Some(why),
                        Err(other) => session.refused = Some(format!("{other:?}")),
                    }
                }
                stream = Transport::Tls(Box::new(t));
                hs.tls_started();
            }
        }
    }
}
