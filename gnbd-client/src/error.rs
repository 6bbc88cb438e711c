//! The client's error type.

use std::sync::Arc;
use std::time::Duration;

use nbd_proto::consts::*;
use nbd_proto::{reply_name, wire_error_name};
use thiserror::Error;

/// Why a connection or a request failed.
///
/// Cloneable: one failure (a fence, a timeout) is often reported to many waiting requests.
#[derive(Debug, Clone, Error)]
pub enum ClientError {
    /// The server refused the handshake (other than by fencing or an unknown export).
    #[error("the server refused to open the export: {reason} ({message})", reason = reply_name(*kind))]
    Refused {
        /// The `NBD_REP_ERR_*` value.
        kind: u32,
        /// The server's message.
        message: String,
    },
    /// The server refused this node by policy (`NBD_REP_ERR_POLICY`): it has most likely been
    /// fenced. I/O will not succeed until the node is unfenced.
    #[error("fenced: the server refused this node by policy ({message}); unfence it before retrying")]
    Fenced { message: String },
    /// The export does not exist (any more) on the server (`NBD_REP_ERR_UNKNOWN`).
    #[error("export gone: the server has no export by that name ({message})")]
    ExportGone { message: String },
    /// No reply within the configured I/O timeout, with the server unreachable.
    #[error("timed out: no answer from the server within the I/O timeout of {0:?}")]
    TimedOut(Duration),
    /// The server broke the NBD protocol (during the handshake or in a reply).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// A socket error.
    #[error("I/O error talking to the server: {0}")]
    Io(#[source] Arc<std::io::Error>),
    /// The server failed this request.
    #[error("the server failed the request: {} ({message})", wire_error_name(*errno))]
    Server {
        /// The NBD error value (`NBD_EIO`, `NBD_ENOSPC`, ...).
        errno: u32,
        message: String,
    },
    /// The export does not offer what was asked (trim, FUA, block status, ...).
    #[error("the export does not support {0}")]
    Unsupported(&'static str),
    /// The request lies (partly) beyond the end of the export, or is otherwise invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The client was closed or dropped while the request waited.
    #[error("the client is closed")]
    Closed,
    /// TLS failed: certificates that cannot be loaded, a server certificate that does not
    /// verify, or a server that rejected this client's certificate.
    #[error("TLS: {message}")]
    Tls { message: String },
}

impl ClientError {
    /// Maps a handshake error from `nbd_proto` to the client's error.
    pub(crate) fn from_handshake(e: nbd_proto::ClientError) -> Self {
        match e {
            nbd_proto::ClientError::Refused { kind: NBD_REP_ERR_POLICY, message, .. } => {
                ClientError::Fenced { message }
            }
            nbd_proto::ClientError::Refused { kind: NBD_REP_ERR_UNKNOWN, message, .. } => {
                ClientError::ExportGone { message }
            }
            nbd_proto::ClientError::Refused { kind, message, .. } => ClientError::Refused { kind, message },
            other => ClientError::Protocol(other.to_string()),
        }
    }

    /// Whether reconnecting cannot help: the server answered, and said no. A server that is
    /// shutting down (`NBD_REP_ERR_SHUTDOWN`) is expected back, so that refusal is not final.
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Refused { kind, .. } => *kind != NBD_REP_ERR_SHUTDOWN,
            ClientError::Fenced { .. } | ClientError::ExportGone { .. } | ClientError::Tls { .. } => true,
            _ => false,
        }
    }

    /// The Linux errno a block device would report for this error (`EIO` for most).
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Server { errno, .. } => match *errno {
                NBD_EPERM => 1,
                NBD_ENOMEM => 12,
                NBD_EINVAL => 22,
                NBD_ENOSPC => 28,
                NBD_EOVERFLOW => 75,
                NBD_ENOTSUP => 95,
                NBD_ESHUTDOWN => 108,
                _ => 5,
            },
            ClientError::Unsupported(_) => 95,
            ClientError::Invalid(_) => 22,
            ClientError::Fenced { .. } => 1,
            _ => 5,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        // tokio-rustls reports TLS failures (bad certificates, alerts) as I/O errors.
        if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            return ClientError::Tls { message: tls.to_string() };
        }
        ClientError::Io(Arc::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_refusals_map_to_distinct_errors() {
        let refused = |kind| nbd_proto::ClientError::Refused { option: NBD_OPT_GO, kind, message: "why".into() };
        let fenced = ClientError::from_handshake(refused(NBD_REP_ERR_POLICY));
        assert!(matches!(&fenced, ClientError::Fenced { message } if message == "why"));
        assert!(fenced.is_permanent());
        assert!(matches!(ClientError::from_handshake(refused(NBD_REP_ERR_UNKNOWN)), ClientError::ExportGone { .. }));
        let tls = ClientError::from_handshake(refused(NBD_REP_ERR_TLS_REQD));
        assert!(matches!(tls, ClientError::Refused { kind: NBD_REP_ERR_TLS_REQD, .. }));
        assert!(tls.is_permanent());
        assert!(!ClientError::from_handshake(refused(NBD_REP_ERR_SHUTDOWN)).is_permanent());
        let bad = ClientError::from_handshake(nbd_proto::ClientError::BadGreeting);
        assert!(matches!(bad, ClientError::Protocol(_)));
        assert!(!bad.is_permanent());
        assert!(!ClientError::TimedOut(Duration::from_secs(1)).is_permanent());
    }

    #[test]
    fn errnos_for_a_block_device() {
        assert_eq!(ClientError::Server { errno: NBD_ENOSPC, message: String::new() }.errno(), 28);
        assert_eq!(ClientError::TimedOut(Duration::from_secs(1)).errno(), 5);
        assert_eq!(ClientError::Fenced { message: String::new() }.errno(), 1);
    }
}
