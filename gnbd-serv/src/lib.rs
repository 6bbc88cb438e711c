//! GNBD export server: serves files and block devices over the NBD protocol with an io_uring
//! data path, and manages exports at run time through a control socket.
//!
//! - [`server::run`] is the daemon (`gnbd_serv`): listeners, handshake threads (driving
//!   `nbd_proto::ServerHandshake`), worker threads that own one io_uring each, the control
//!   socket, and orderly shutdown on SIGTERM;
//! - [`Registry`] / [`Export`]: the exports and their open backing stores;
//! - [`control`]: the JSON-lines control protocol of the local socket (`gnbd_export`);
//! - [`netctl`]: the network control channel: fence orders from cluster nodes (`fence_gnbd`,
//!   `gnbd_import -s/-u/-c`), with the wire protocol of `gnbd_fence::proto`;
//! - [`admin`]: the `gnbd_export` verbs;
//! - [`state`]: the persisted export list;
//! - [`tls`]: STARTTLS (rustls), node names from client certificates, and the relay that
//!   gives TLS connections the same io_uring data path as plain ones.
//!
//! All `unsafe` code lives in the private `sys` module (io_uring, aligned buffers, a few
//! syscalls).
//!
//! ```no_run
//! use gnbd_serv::server::{run, ServeConfig};
//! let cfg = ServeConfig {
//!     state_dir: "/var/lib/gnbd".into(),
//!     bind: "127.0.0.1".parse().unwrap(),
//!     port: 10809,
//!     unix: None,
//!     threads: 0,
//!     default_export: None,
//!     nodes: None,
//!     cluster: false,
//!     cluster_key: None,
//!     control_port: 10810,
//!     tls: None,
//! };
//! run(cfg, |line| println!("{line}")).unwrap();
//! ```

// Only `sys` may use unsafe code (io_uring, aligned buffers, raw syscalls).
#![deny(unsafe_code)]

pub mod admin;
pub mod control;
mod export;
pub mod fence;
mod handshake;
pub mod netctl;
mod request;
pub mod server;
pub mod state;
#[allow(unsafe_code)]
mod sys;
pub mod tls;
mod worker;

pub use export::{Export, ExportError, ExportSpec, Registry, Session, DIRECT_ALIGN, MAX_PAYLOAD, PREFERRED_BLOCK};
pub use handshake::{negotiate, HandshakeFailure, Transport, HANDSHAKE_TIMEOUT};
pub use request::{validate, Limits, Refused};
