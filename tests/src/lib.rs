//! End-to-end test harness for `gnbd_serv` and `gnbd_export`.
//!
//! The tests under `tests/tests/` drive the real binaries (built beforehand with
//! `cargo build --workspace --bins`) and real peers (nbdinfo, qemu-img, qemu-io,
//! nbdcopy, nbd-client, fio, nbdfuse) over `127.0.0.1` only. This crate holds what they
//! share:
//!
//! - [`Server`]: a guard around one `gnbd_serv --foreground` on `127.0.0.1:0` with its
//!   own state directory inside its own [`TempDir`]. It waits (bounded) for the readiness
//!   line, parses the port, captures the server's stderr into a log file, and on `Drop`
//!   stops the server (SIGTERM, then SIGKILL after a grace period), reaps it and prints
//!   the log when the test is failing. [`Server::restart`] cuts power (SIGKILL) and starts
//!   a new server on the same state directory, for durability tests.
//! - [`run`] / [`run_timeout`]: run a command with a deadline; the command runs in its
//!   own process group, and the whole group is killed when the deadline passes.
//! - [`require_tool`]: find a peer tool or fail the test with a clear message (tests never
//!   skip silently; `scripts/deps.sh` installs the tools).
//! - [`fill_pattern`], [`write_pattern_file`], [`Hasher64`], [`file_checksum`]:
//!   deterministic, position-addressable pseudo-random content and a fast checksum.
//! - [`gfs_harness`]: `mkfs_gfs`, scripts in a private mount namespace, a two-node DLM prelude.
//! - [`pki`]: a throw-away CA, server and client certificates (openssl) for TLS tests.
//! - [`rgmanager`]: rgmanager on a namespace cluster (start, stop, services through clustat).
//! - [`rawclient`]: a hand-written NBD client over `std::net::TcpStream` that builds every
//!   byte itself, for protocol abuse and crash tests.
//!
//! Binaries are looked up in `$GNBD_BIN_DIR` if set, else in `<workspace>/target/debug`;
//! [`bin`] gives the path of one by name (and fails the test when it has not been built).
//!
//! # Example
//!
//! ```no_run
//! use gnbd_tests::{require_tool, run, write_pattern_file, OutputExt, Server};
//! use std::process::Command;
//!
//! let server = Server::start();
//! let disk = server.path("disk.img");
//! write_pattern_file(&disk, 4 << 20, 1);
//! server.export("disk", &disk, &[]);
//! let nbdinfo = require_tool("nbdinfo");
//! let out = run(Command::new(nbdinfo).arg(server.uri("disk")));
//! out.assert_success("nbdinfo");
//! ```

#![forbid(unsafe_code)]

mod bins;
pub mod cluster;
pub mod corosync;
mod data;
pub mod dlmd;
pub mod gfs_harness;
pub mod import;
pub mod pki;
mod process;
pub mod rawclient;
pub mod rgmanager;
mod server;
mod tempdir;
pub mod toolkit;

pub use bins::{bin, bin_dir, export_bin, fence_gnbd_bin, serv_bin};
pub use data::{checksum, file_checksum, fill_pattern, pattern, write_pattern_file, Hasher64};
pub use dlmd::{free_addr, free_port, DlmDaemon};
pub use process::{require_tool, run, run_timeout, OutputExt, DEFAULT_TIMEOUT};
pub use server::{gnbd_export_cmd, Server, ServerBuilder, READY_TIMEOUT};
pub use tempdir::TempDir;
