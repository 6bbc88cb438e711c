//! TLS identities: PEM certificates, keys and CA roots, the certificate directory of a node
//! (the layout libnbd and qemu use), the rustls client configuration built from it (ring
//! provider, TLS 1.2 and 1.3, the server verified against the directory's CA), and the
//! node name a certificate carries.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;

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

/// A client configuration: trusts the CA certificates in `ca` and, with `identity`
/// (certificate chain, private key), presents that certificate to servers.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let certs = load_certs("certificate", cert)?;
            let key_der = load_key(key)?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError::Bad {
                    what: "private key",
                    path: key.to_path_buf(),
                    why: format!("it does not belong to the certificate {}", cert.display()),
                },
                e => e.into(),
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A node's certificate directory, in the layout libnbd and qemu use
/// (`tls-certificates=DIR`): the CA that signs servers' certificates, and this node's own
/// certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDir {
    /// `DIR/ca-cert.pem`.
    pub ca: PathBuf,
    /// `DIR/client-cert.pem` and `DIR/client-key.pem`.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl CertDir {
    /// File name of the CA certificate(s).
    pub const CA_CERT: &'static str = "ca-cert.pem";
    /// File name of this node's certificate.
    pub const CLIENT_CERT: &'static str = "client-cert.pem";
    /// File name of the key of [`Self::CLIENT_CERT`].
    pub const CLIENT_KEY: &'static str = "client-key.pem";

    /// The directory's CA, and its client certificate and key when both files are present
    /// (NBD connections to servers that do not ask for one).
    pub fn optional_identity(dir: &Path) -> CertDir {
        let cert = dir.join(Self::CLIENT_CERT);
        let key = dir.join(Self::CLIENT_KEY);
        let present = cert.exists() && key.exists();
        CertDir { ca: dir.join(Self::CA_CERT), identity: present.then_some((cert, key)) }
    }

    /// The directory's CA, client certificate and key, all required (orders authenticated by
    /// the node's certificate: a missing file is an error when loading).
    pub fn with_identity(dir: &Path) -> CertDir {
        CertDir {
            ca: dir.join(Self::CA_CERT),
            identity: Some((dir.join(Self::CLIENT_CERT), dir.join(Self::CLIENT_KEY))),
        }
    }

    /// Loads the files into a rustls client configuration.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        client_config(&self.ca, self.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))
    }
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
    fn missing_files_name_the_file() {
        let dir = CertDir::optional_identity(Path::new("/nonexistent-gnbd-tls"));
        assert_eq!(dir.identity, None);
        let e = dir.client_config().unwrap_err();
        assert!(matches!(&e, TlsError::Read { path, .. } if path.ends_with("ca-cert.pem")), "{e}");
        let dir = CertDir::with_identity(Path::new("/nonexistent-gnbd-tls"));
        assert!(dir.identity.is_some());
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
