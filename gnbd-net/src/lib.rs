//! Addresses and TLS identities shared by the gnbd server (`gnbd-serv`), the client library
//! (`gnbd-client`) and the fence-order channel (`gnbd-fence`).
//!
//! - [`addr`]: the one `HOST[:PORT]` parser ([`HostPort`]): host names, IPv4, IPv6 in
//!   brackets (`[::1]:99`) or bare (`::1`, the default port), with the default port added
//!   when none is given;
//! - [`tls`]: PEM loading (certificates, keys, CA roots), the certificate-directory layout
//!   libnbd and qemu use ([`CertDir`]: `ca-cert.pem`, `client-cert.pem`, `client-key.pem`),
//!   the rustls client configuration built from it, and the node name a certificate carries
//!   ([`cert_node_name`]).
//!
//! ```
//! use gnbd_net::HostPort;
//! assert_eq!(HostPort::parse("[::1]").unwrap().with_default_port(10810), "[::1]:10810");
//! assert_eq!(HostPort::parse("srv:7").unwrap().with_default_port(10810), "srv:7");
//! ```
#![forbid(unsafe_code)]

pub mod addr;
pub mod tls;

pub use addr::{AddrError, HostPort};
pub use tls::{cert_node_name, CertDir, TlsError};
