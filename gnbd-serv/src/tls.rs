//! TLS for `gnbd_serv`: STARTTLS with rustls (ring provider) and X.509 certificates, and the
//! userspace data path of TLS connections. PEM loading and the node identity a client
//! certificate carries ([`cert_node_name`]) come from `gnbd_net::tls`, shared with the
//! clients.
//!
//! The kernel has no kTLS here, so a TLS connection cannot be handed to an io_uring worker as
//! a plain socket. Instead each TLS connection gets one relay thread that owns the rustls
//! session and the TCP socket, and the worker gets one end of a Unix socket pair carrying the
//! decrypted NBD stream. The worker parses, validates, executes and answers requests exactly
//! as for plain connections (same code, same errno mapping, same fencing: a fence cuts the
//! worker's end, which ends the relay and closes the TCP connection).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use gnbd_net::tls::{cert_node_name, load_certs, load_key, load_roots, TlsError};
use nbd_proto::TlsPolicy;
use rustls::crypto::ring::default_provider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use tracing::debug;

use crate::sys;

/// What `gnbd_serv --tls-*` configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `Selective` or `Required` (`Off` means no TLS settings at all).
    pub policy: TlsPolicy,
    /// Server certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key of the certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign client certificates. With a CA, every TLS client must
    /// present a certificate it signed, which names the client's node; without, TLS clients
    /// are not authenticated.
    pub ca: Option<PathBuf>,
}

/// A loaded TLS configuration, shared by every handshake thread.
#[derive(Debug, Clone)]
pub struct TlsServer {
    pub policy: TlsPolicy,
    /// Client certificates are required and verified against the CA.
    pub client_auth: bool,
    config: Arc<ServerConfig>,
}

impl TlsServer {
    /// Loads certificate, key and CA and checks that they fit together.
    pub fn load(s: &TlsSettings) -> Result<TlsServer, TlsError> {
        let provider = Arc::new(default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match &s.ca {
            Some(ca) => {
                let roots = Arc::new(load_roots(ca)?);
                let v = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let certs = load_certs("certificate", &s.cert)?;
        let key = load_key(&s.key)?;
        let config = builder.with_single_cert(certs, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::Bad {
                what: "private key",
                path: s.key.clone(),
                why: format!("it does not belong to the certificate {}", s.cert.display()),
            },
            e => e.into(),
        })?;
        Ok(TlsServer { policy: s.policy, client_auth: s.ca.is_some(), config: Arc::new(config) })
    }

    /// Runs the TLS handshake on `sock` (blocking, bounded by the socket's timeouts). Returns
    /// the session and the node name of the client's certificate, if it sent one.
    pub fn accept<S: Read + Write>(
        &self,
        mut sock: S,
    ) -> Result<(StreamOwned<ServerConnection, S>, Option<String>), TlsError> {
        let mut conn = ServerConnection::new(self.config.clone())?;
        while conn.is_handshaking() {
            match conn.complete_io(&mut sock) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Tell the client why (an alert), best effort.
                    let _ = conn.write_tls(&mut sock);
                    return Err(TlsError::Handshake(e));
                }
            }
        }
        // A verified certificate without a usable name yields "", which no node is called.
        let name =
            conn.peer_certificates().and_then(|c| c.first()).map(|leaf| cert_node_name(leaf).unwrap_or_default());
        Ok((StreamOwned::new(conn, sock), name))
    }
}

/// Largest amount of decrypted data held for the worker, or of plain data taken from the
/// worker before it is encrypted: the relay's back-pressure in each direction.
const RELAY_BUFFER: usize = 4 << 20;
/// How often the relay looks around while nothing happens (it is woken by the sockets).
const RELAY_IDLE: Duration = Duration::from_secs(60);

/// Moves bytes between a TLS client and the worker's end of a socket pair until either side
/// is done. Runs on its own thread; closes both sockets when it returns.
pub fn relay<S: Read + Write + AsRawFd>(tls: StreamOwned<ServerConnection, S>, mut local: UnixStream, peer: &str) {
    let StreamOwned { mut conn, mut sock } = tls;
    conn.set_buffer_limit(Some(RELAY_BUFFER));
    let (sock_fd, local_fd) = (sock.as_raw_fd(), local.as_raw_fd());
    if let Err(e) = sys::set_nonblocking(sock_fd).and_then(|()| local.set_nonblocking(true)) {
        debug!(peer, error = %e, "cannot make the TLS relay non-blocking");
        return;
    }
    // Decrypted requests not yet taken by the worker; replies not yet taken by rustls.
    let mut to_local: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut from_local: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 256 * 1024];
    // The client has finished sending (close_notify or EOF); the worker has finished replying.
    let (mut peer_done, mut local_done, mut shut_local, mut close_sent) = (false, false, false, false);
    let why = loop {
        // Whether this pass moved bytes or changed state; only a pass without progress waits
        // in poll(2), so every wait is for an event that poll reports (no lost wake-ups).
        let mut progress = false;
        // Client -> worker: what rustls has decrypted.
        while !peer_done && to_local.len() < RELAY_BUFFER {
            match conn.reader().read(&mut chunk) {
                Ok(0) => peer_done = true,
                Ok(n) => {
                    progress = true;
                    to_local.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // EOF without close_notify: the client is gone.
                Err(_) => peer_done = true,
            }
        }
        while !to_local.is_empty() {
            match local.write(&to_local) {
                Ok(n) => {
                    progress = true;
                    to_local.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The worker is gone (fenced, export removed, protocol error).
                    to_local.clear();
                    local_done = true;
                }
            }
        }
        if peer_done && to_local.is_empty() && !shut_local {
            // The worker sees EOF, finishes and answers what it has, then closes its end.
            let _ = local.shutdown(std::net::Shutdown::Write);
            shut_local = true;
        }
        // Worker -> client: replies, encrypted while rustls has room.
        loop {
            while !from_local.is_empty() {
                match conn.writer().write(&from_local) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        progress = true;
                        from_local.drain(..n);
                    }
                }
            }
            if !from_local.is_empty() || local_done {
                break;
            }
            match local.read(&mut chunk) {
                Ok(0) => local_done = true,
                Ok(n) => {
                    progress = true;
                    from_local.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => local_done = true,
            }
        }
        if local_done && from_local.is_empty() && !close_sent {
            conn.send_close_notify();
            close_sent = true;
        }
        let mut sock_failed = false;
        while conn.wants_write() {
            match conn.write_tls(&mut sock) {
                Ok(_) => progress = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    sock_failed = true;
                    break;
                }
            }
        }
        if sock_failed {
            break "the client connection failed";
        }
        if close_sent && !conn.wants_write() {
            break "the worker finished the connection";
        }
        if progress {
            continue;
        }
        // Wait for something to do.
        let want_peer = !peer_done && to_local.len() < RELAY_BUFFER && conn.wants_read();
        let mut fds = [
            sys::PollFd::new(sock_fd, want_peer, conn.wants_write()),
            sys::PollFd::new(local_fd, !local_done && from_local.is_empty(), !to_local.is_empty()),
        ];
        if let Err(e) = sys::poll(&mut fds, RELAY_IDLE) {
            debug!(peer, error = %e, "poll failed in the TLS relay");
            break "poll failed";
        }
        if fds[0].readable() {
            match conn.read_tls(&mut sock) {
                Ok(0) => peer_done = true,
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        debug!(peer, error = %e, "TLS error from the client");
                        let _ = conn.write_tls(&mut sock);
                        break "TLS error from the client";
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => peer_done = true,
            }
        } else if fds[0].failed() {
            break "the client connection failed";
        }
        if fds[1].failed() && !fds[1].readable() {
            // Nothing more can come from (or go to) the worker.
            local_done = true;
            to_local.clear();
        }
    };
    debug!(peer, why, "TLS relay ends");
    sys::shutdown(sock_fd, libc::SHUT_RDWR);
}
