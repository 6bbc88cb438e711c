//! Pipelined async client for NBD exports (`gnbd_serv` and any fixed-newstyle NBD server).
//!
//! What this crate owns:
//!
//! - [`conn`]: the sans-IO transmission-phase client ([`Conn`]): cookies, compact or
//!   extended request headers, incremental decoding of simple, structured and extended
//!   replies (read data assembled from `OFFSET_DATA` / `OFFSET_HOLE` chunks, block-status
//!   extents, per-request errors), protocol violations as connection errors. No sockets.
//! - [`Client`]: the tokio driver. The handshake asks for extended headers, else structured
//!   replies, and `base:allocation`; each connection has a writer and a reader task so many
//!   requests are in flight at once; with [`ClientOptions::connections`] > 1 and a server
//!   that advertises `NBD_FLAG_CAN_MULTI_CONN`, requests go round-robin over several
//!   connections; reads and writes above the server's maximum block size are split.
//! - Reconnection: a lost connection is re-established with back-off (100 ms doubling to
//!   5 s) and every request that had no reply is sent again. With an
//!   [`ClientOptions::io_timeout`], requests fail with [`ClientError::TimedOut`] once the
//!   server has been unreachable that long (GNBD's timeout mode); without one they wait.
//! - [`ClientError`]: refused, fenced (`NBD_REP_ERR_POLICY`), export gone, timed out,
//!   protocol violation, I/O, and per-request server errors.
//!
//! - TLS: with [`ClientOptions::tls`] ([`TlsOptions`]) every connection sends
//!   `NBD_OPT_STARTTLS` first and runs the rest of the handshake and all I/O inside TLS
//!   (rustls); reconnects do the same. The server is verified against the given CA; a client
//!   certificate names this node to servers that identify nodes by certificate.
//!
//! Not yet done (see issue 3): honouring a minimum block size above 1 by
//! read-modify-write, `NBD_CMD_RESIZE` and size changes across reconnects (they are logged,
//! and requests keep the limits of the first handshake), `NBD_CMD_CACHE`. A fenced client
//! (or one whose export is gone) fails every request from then on; re-connect to resume.
//!
//! # Example
//!
//! ```no_run
//! use gnbd_client::{Client, ClientOptions};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), gnbd_client::ClientError> {
//! let mut opts = ClientOptions::new("127.0.0.1:10809", "disk0");
//! opts.connections = 4;
//! opts.io_timeout = Some(Duration::from_secs(30));
//! let client = Client::connect(opts).await?;
//! client.write(0, b"hello", false).await?;
//! client.flush().await?;
//! assert_eq!(client.read(0, 5).await?, b"hello");
//! for extent in client.block_status(0, client.size()).await? {
//!     println!("{} bytes, flags {:#x}", extent.length, extent.flags);
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod client;
pub mod conn;
mod error;
mod tls;

pub use client::{list_exports, list_exports_with, Client, ClientOptions, ConnectionState, ExportInfo};
pub use conn::{Conn, ConnError, Op, Reply, RequestFailed};
pub use error::ClientError;
pub use nbd_proto::{Extent, ReplyMode, ServerEntry};
pub use tls::TlsOptions;
