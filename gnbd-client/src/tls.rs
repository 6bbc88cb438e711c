//! Client side of STARTTLS: which certificates to use, and the rustls configuration built
//! from them (ring provider, TLS 1.2 and 1.3, the server verified against the given CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::error::ClientError;

/// Certificates for a TLS connection (`NBD_OPT_STARTTLS`), all PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// CA certificate(s) the server's certificate must be signed by.
    pub ca: PathBuf,
    /// This client's certificate (names its cluster node) and key; servers started with
    /// `--tls-ca` require them.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify the server's certificate against (default: the host part of the
    /// address, a DNS name or an IP address).
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// The layout libnbd and qemu use (`tls-certificates=DIR`): `DIR/ca-cert.pem`, and
    /// `DIR/client-cert.pem` + `DIR/client-key.pem` when present.
    pub fn from_dir(dir: &Path) -> TlsOptions {
        let cert = dir.join("client-cert.pem");
        let key = dir.join("client-key.pem");
        let present = cert.exists() && key.exists();
        TlsOptions {
            ca: dir.join("ca-cert.pem"),
            cert: present.then_some(cert),
            key: present.then_some(key),
            server_name: None,
        }
    }

    /// Loads the files into a rustls configuration.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, ClientError> {
        let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| ClientError::Tls {
            message: format!("cannot use {what} {}: {e}", path.display()),
        };
        let mut roots = RootCertStore::empty();
        let ca = std::fs::read(&self.ca).map_err(|e| bad("CA file", &self.ca, &e))?;
        for c in CertificateDer::pem_slice_iter(&ca) {
            let c = c.map_err(|e| bad("CA file", &self.ca, &e))?;
            roots.add(c).map_err(|e| bad("CA certificate in", &self.ca, &e))?;
        }
        if roots.is_empty() {
            return Err(bad("CA file", &self.ca, &"no certificate in it"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls { message: e.to_string() })?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let pem = std::fs::read(cert).map_err(|e| bad("certificate", cert, &e))?;
                let chain = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("certificate", cert, &e))?;
                let pem = std::fs::read(key).map_err(|e| bad("key", key, &e))?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad("key", key, &e))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| bad("certificate", cert, &e))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(ClientError::Tls {
                    message: "a client certificate needs its key, and a key its certificate".into(),
                })
            }
        };
        Ok(Arc::new(config))
    }

    /// The name the server's certificate must carry, for a server at `addr` (`host:port`).
    pub(crate) fn server_name(&self, addr: &str) -> Result<ServerName<'static>, ClientError> {
        let host = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_string(),
        };
        ServerName::try_from(host.clone())
            .map_err(|e| ClientError::Tls { message: format!("'{host}' cannot name a TLS server: {e}") })
    }
}

/// `host` of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_part_of_addresses() {
        assert_eq!(host_of("127.0.0.1:10809"), "127.0.0.1");
        assert_eq!(host_of("server.example:1"), "server.example");
        assert_eq!(host_of("[::1]:10809"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn missing_files_are_tls_errors() {
        let t = TlsOptions::from_dir(Path::new("/nonexistent-gnbd-tls"));
        assert_eq!(t.cert, None);
        let e = t.client_config().unwrap_err();
        assert!(matches!(&e, ClientError::Tls { message } if message.contains("ca-cert.pem")), "{e}");
        assert!(e.is_permanent());
    }
}
