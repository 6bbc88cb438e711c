//! Client side of STARTTLS: which certificates to use ([`TlsOptions`]); the rustls
//! configuration is built from them by `gnbd_net::tls` (ring provider, TLS 1.2 and 1.3, the
//! server verified against the given CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gnbd_net::CertDir;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

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
    /// `DIR/client-cert.pem` + `DIR/client-key.pem` when present ([`CertDir`]).
    pub fn from_dir(dir: &Path) -> TlsOptions {
        let d = CertDir::optional_identity(dir);
        let (cert, key) = d.identity.map_or((None, None), |(c, k)| (Some(c), Some(k)));
        TlsOptions { ca: d.ca, cert, key, server_name: None }
    }

    /// Loads the files into a rustls configuration.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, ClientError> {
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => {
                return Err(ClientError::Tls {
                    message: "a client certificate needs its key, and a key its certificate".into(),
                })
            }
        };
        gnbd_net::tls::client_config(&self.ca, identity).map_err(|e| ClientError::Tls { message: e.to_string() })
    }

    /// The name the server's certificate must carry, for a server at `addr` (`host:port`).
    pub(crate) fn server_name(&self, addr: &str) -> Result<ServerName<'static>, ClientError> {
        let host = match &self.server_name {
            Some(n) => n.clone(),
            None => gnbd_net::addr::host_of(addr).to_string(),
        };
        ServerName::try_from(host.clone())
            .map_err(|e| ClientError::Tls { message: format!("'{host}' cannot name a TLS server: {e}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_the_host_part() {
        let t = TlsOptions::from_dir(Path::new("/nonexistent-gnbd-tls"));
        assert_eq!(t.server_name("[::1]:10809").unwrap(), ServerName::try_from("::1").unwrap());
        assert_eq!(t.server_name("server.example:1").unwrap(), ServerName::try_from("server.example").unwrap());
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
