//! TLS for `gnbd_serv`: STARTTLS with rustls (ring provider) and X.509 certificates, the
//! node identity a client certificate carries, and the userspace data path of TLS
//! connections.
//!
//! The kernel has no kTLS here, so a TLS connection cannot be handed to an io_uring worker as
//! a plain socket. Instead each TLS connection gets one relay thread that owns the rustls
//! session and the TCP socket, and the worker gets one end of a Unix socket pair carrying the
//! decrypted NBD stream. The worker parses, validates, executes and answers requests exactly
//! as for plain connections (same code, same errno mapping, same fencing: a fence cuts the
//! worker's end, which ends the relay and closes the TCP connection).

use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nbd_proto::TlsPolicy;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use thiserror::Error;
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

/// Why TLS could not be set up or a TLS session failed.
#[derive(Debug, Error)]
pub enum TlsError {
    // Fields named `error`, not `source`: the message already says it all (no repetition
    // when printed with its chain).
    #[error("cannot read {what} {path}: {error}")]
    Read { what: &'static str, path: PathBuf, error: io::Error },
    #[error("{path} holds no {what} in PEM form (-----BEGIN ...)")]
    NoPem { what: &'static str, path: PathBuf },
    #[error("bad {what} in {path}: {why}")]
    Bad { what: &'static str, path: PathBuf, why: String },
    #[error("TLS setup failed: {0}")]
    Config(rustls::Error),
    #[error("cannot verify client certificates with this CA: {0}")]
    Verifier(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Config(e)
    }
}

/// A loaded TLS configuration, shared by every handshake thread.
#[derive(Debug, Clone)]
pub struct TlsServer {
    pub policy: TlsPolicy,
    /// Client certificates are required and verified against the CA.
    pub client_auth: bool,
    config: Arc<ServerConfig>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|error| TlsError::Read { what, path: path.to_path_buf(), error })
}

/// Every certificate in a PEM file.
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Bad {
        what,
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::NoPem { what: "private key", path: path.to_path_buf() }
        }
        e => TlsError::Bad { what: "private key", path: path.to_path_buf(), why: e.to_string() },
    })
}

/// A root store from a CA file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs("CA certificate", path)? {
        roots.add(c).map_err(|e| TlsError::Bad {
            what: "CA certificate",
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    Ok(roots)
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

/// A client configuration from a certificate directory in the libnbd layout: trusts
/// `DIR/ca-cert.pem` and presents `DIR/client-cert.pem` with `DIR/client-key.pem` (used by
/// `fence_gnbd` for orders authenticated by certificate).
pub fn client_config_from_dir(dir: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = load_roots(&dir.join("ca-cert.pem"))?;
    let certs = load_certs("certificate", &dir.join("client-cert.pem"))?;
    let key = load_key(&dir.join("client-key.pem"))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// The node a certificate names: its subject common name, else its first DNS name
/// (subjectAltName). `None` when it has neither or cannot be parsed.
pub fn cert_node_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::{Decode, Tag, Tagged};
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;

    const CN: x509_cert::der::oid::ObjectIdentifier = x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    const SAN: x509_cert::der::oid::ObjectIdentifier = x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.29.17");

    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = &cert.tbs_certificate;
    for rdn in tbs.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid != CN {
                continue;
            }
            let v = &atv.value;
            let s = match v.tag() {
                Tag::Utf8String => v.decode_as::<Utf8StringRef<'_>>().ok().map(|s| s.as_str().to_string()),
                Tag::PrintableString => v.decode_as::<PrintableStringRef<'_>>().ok().map(|s| s.as_str().to_string()),
                Tag::Ia5String => v.decode_as::<Ia5StringRef<'_>>().ok().map(|s| s.as_str().to_string()),
                _ => None,
            };
            if let Some(s) = s.filter(|s| !s.is_empty()) {
                return Some(s);
            }
        }
    }
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id != SAN {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).ok()?;
        return san.0.into_iter().find_map(|n| match n {
            GeneralName::DnsName(d) => Some(d.as_str().to_string()),
            _ => None,
        });
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Subject `O=gnbd-tests` (no CN), subjectAltName `DNS:node7.cluster, DNS:other`.
    const SAN_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBkzCCATqgAwIBAgIUMu2k8ekPFkdREbXHBaavKzc6p50wCgYIKoZIzj0EAwIw\nDTELMAkGA1UEAwwCY2EwIBcNMjYxMTIyMDQ1MDQwWhgPMjEyNjEwMjkwNDUwNDBa\nMBUxEzARBgNVBAoMCmduYmQtdGVzdHMwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC\nAARE3qBLMSxZQkozTzZqm8SFcoYWHtlrgzceiYOogyf3zehAt5TlIpapoQUPMb2h\nA6LuuOJh5s0fDEdLUBmlba5Zo24wbDAfBgNVHREEGDAWgg1ub2RlNy5jbHVzdGVy\nggVvdGhlcjAJBgNVHRMEAjAAMB0GA1UdDgQWBBTGUdNLOkS5a2ZBXsv7Xij5i/yC\ndjAfBgNVHSMEGDAWgBTu9I0OlckdfkHwGfglERyxUetNADAKBggqhkjOPQQDAgNH\nADBEAiBrvS8NSbSgoKt2iGDA5Zt1/keZogGAdBZ8zi3hxhLQYwIgYTOgwbIHRD14\nV2djgFU1PDHexkOKcMunZ0HhNOzszCU=\n-----END CERTIFICATE-----";
    /// Subject `O=gnbd-tests, CN=node3`, subjectAltName `DNS:alias3`.
    const CN_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBljCCATygAwIBAgIUMu2k8ekPFkdREbXHBaavKzc6p54wCgYIKoZIzj0EAwIw\nDTELMAkGA1UEAwwCY2EwIBcNMjYxMTIyMDQ1MDQwWhgPMjEyNjEwMjkwNDUwNDBa\nMCUxEzARBgNVBAoMCmduYmQtdGVzdHMxDjAMBgNVBAMMBW5vZGUzMFkwEwYHKoZI\nzj0CAQYIKoZIzj0DAQcDQgAEEfdXjewTB0g3EWVJ3iuj3DwZMAZBzdVFlD1Gwc3+\nYHOhyhR1KwpNHSEVbsslc0G+r2qzuD1qG8PKNB6eCkKokaNgMF4wEQYDVR0RBAow\nCIIGYWxpYXMzMAkGA1UdEwQCMAAwHQYDVR0OBBYEFMCOF51OxAxJnzan2jCm1FnX\nUKs7MB8GA1UdIwQYMBaAFO70jQ6VyR1+QfAZ+CURHLFR600AMAoGCCqGSM49BAMC\nA0gAMEUCICh8vRNfUdbMS02BGhyGPVhpy8g9IbxGZDmxdh3EEwTJAiEA4ouYAOZ3\nmfLac4VTYf1mYFczHE38Gy/FT6KgR0s4wUA=\n-----END CERTIFICATE-----";

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("test certificate").to_vec()
    }

    #[test]
    fn node_name_is_the_common_name_else_the_first_dns_name() {
        assert_eq!(cert_node_name(&der(CN_CERT)).as_deref(), Some("node3"));
        assert_eq!(cert_node_name(&der(SAN_CERT)).as_deref(), Some("node7.cluster"));
    }

    #[test]
    fn node_name_of_garbage_is_none() {
        assert_eq!(cert_node_name(b""), None);
        assert_eq!(cert_node_name(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
        let mut cut = der(CN_CERT);
        cut.truncate(cut.len() / 2);
        assert_eq!(cert_node_name(&cut), None);
    }

    proptest! {
        /// Arbitrary bytes, and certificates with bytes flipped, never panic the name parser.
        #[test]
        fn node_name_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = cert_node_name(&bytes);
        }

        #[test]
        fn corrupted_certificates_never_panic(at in 0usize..2048, xor in 1u8..=255) {
            let mut d = der(SAN_CERT);
            let i = at % d.len();
            d[i] ^= xor;
            let _ = cert_node_name(&d);
        }
    }
}
