//! Blocking driver for the server handshake: runs on its own short-lived thread per new
//! connection, with a time limit, so a slow or hostile client never stalls the data path.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use nbd_proto::{ExportCatalog, Negotiated, ServerConfig, ServerHandshake, ServerStatus};
use thiserror::Error;

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
}

/// Runs the handshake on `stream`. On success returns what was negotiated and any bytes the
/// client already sent for the transmission phase.
pub fn negotiate<S: Read + Write>(
    stream: &mut S,
    catalog: &dyn ExportCatalog,
    cfg: ServerConfig,
) -> Result<(Negotiated, Vec<u8>), HandshakeFailure> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut hs = ServerHandshake::new(cfg);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let out = hs.take_output();
        if !out.is_empty() {
            stream.write_all(&out)?;
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
            Err(e) => return Err(e.into()),
        };
        buf.extend_from_slice(&chunk[..n]);
        let (used, status) = hs.feed(&buf, catalog)?;
        buf.drain(..used);
        match status {
            ServerStatus::Continue => {}
            ServerStatus::Done(neg) => {
                stream.write_all(&hs.take_output())?;
                return Ok((neg, buf));
            }
            ServerStatus::Abort => {
                let _ = stream.write_all(&hs.take_output());
                return Err(HandshakeFailure::Aborted);
            }
            ServerStatus::Close(why) => return Err(HandshakeFailure::Refused(why)),
            ServerStatus::StartTls => return Err(HandshakeFailure::Refused("TLS is not available".into())),
        }
    }
}
