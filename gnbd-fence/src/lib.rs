//! The fence-order channel between cluster nodes and gnbd servers, shared by both sides.
//!
//! - [`key`]: the cluster key ([`ClusterKey`]), a secret shared by the nodes in a root-only
//!   file, and HMAC-SHA256 signing and verification of orders; [`DEFAULT_KEY`];
//! - [`proto`]: the sans-IO codec of the channel: the server's challenge, signed orders, the
//!   switch to TLS, [`Order`] and [`Reply`]. `gnbd_serv` drives it on its control port
//!   (`gnbd_serv::netctl`), [`client`] on the other end;
//! - [`client`]: sends one order to a server's control port, signed with the cluster key
//!   ([`client::call`]) or over TLS with a node certificate ([`client::call_tls`]);
//! - [`agent`]: the `fence_gnbd` agent (standard fence agent interface: `key=value` lines on
//!   stdin, actions `off`, `on`, `reboot`, `status`, `monitor`, `list`, `metadata`), also
//!   used by `gnbd_import -s/-u/-c`.
//!
//! ```no_run
//! use gnbd_fence::{client, ClusterKey, Order, DEFAULT_KEY};
//! let key = ClusterKey::load(DEFAULT_KEY.as_ref()).unwrap();
//! let reply = client::call("gnbd1:10810", &key, &Order::Fence { node: "node2".into() }).unwrap();
//! println!("{reply:?}");
//! ```
#![forbid(unsafe_code)]

pub mod agent;
pub mod client;
pub mod key;
pub mod proto;

pub use client::CallError;
pub use key::{ClusterKey, KeyError, DEFAULT_KEY};
pub use proto::{Order, Reply, DEFAULT_CONTROL_PORT};
