//! The daemon toolkit: what every long-running binary (and every command-line tool) of the
//! suite shares, so no crate re-does its plumbing.
//!
//! | module | contract |
//! |---|---|
//! | [`log`] | `tracing` to stderr, a file (reopened on SIGHUP, no colour codes) or the journal (priorities, no own timestamps); one variable `RUST_LOG` and `--log-level` ([`log::LogArgs`]) |
//! | [`ready`] | readiness: the `NAME: ready ...` line on stdout and `sd_notify(READY=1)`; reloading/stopping notifications |
//! | [`background`] | daemonising: the command re-executes itself in a new session, waits for the ready line (or the error) and exits 0 (or 1) |
//! | [`lock`] | pid files that are locks: one instance per state directory; stale files never block |
//! | [`fs`] | [`fs::write_atomic`]: temporary file, fsync, rename, fsync of the directory |
//! | [`signals`] | SIGTERM/SIGINT stop, SIGHUP reopens logs and reloads (never exits), SIGUSR1/2 counted; waitable from threads and tasks |
//! | [`control`] | the local control protocol: JSON lines, one request enum per daemon tagged `op`, `{"ok":..}` / `{"error":{"kind","message"}}` replies, one size limit, server and client helpers |
//! | [`exit`] | exit codes (0, 1, 2 usage, documented tool codes through [`exit::Failure`]) and one-line error chains with each cause once |
//!
//! A daemon's `main`, in order:
//!
//! ```no_run
//! use std::process::ExitCode;
//! fn main() -> ExitCode {
//!     // (flags parsed with clap; `foreground` and the log flags among them)
//!     let foreground = false;
//!     let bg = daemon::background::Background::new("exampled", Some("/var/log/exampled.log".into()));
//!     if let Some(code) = daemon::background::daemonize(foreground, &bg) {
//!         return code; // the parent: the child is ready, or failed and said why
//!     }
//!     daemon::exit::finish("exampled", run())
//! }
//! fn run() -> anyhow::Result<()> {
//!     let signals = daemon::signals::install()?;
//!     daemon::log::init(&daemon::log::LogConfig::new("info", &Default::default()))?;
//!     let _pid = daemon::lock::PidFile::lock("/run/exampled/exampled.pid".as_ref(), "exampled")?;
//!     // ... bind sockets, start serving ...
//!     daemon::ready::ready("exampled: ready socket=/run/exampled/exampled.sock");
//!     signals.wait_stop();
//!     daemon::ready::stopping();
//!     Ok(())
//! }
//! ```
//!
//! All `unsafe` code is in the private `sys` module.
#![deny(unsafe_code)]

pub mod background;
pub mod control;
pub mod exit;
pub mod fs;
pub mod lock;
pub mod log;
pub mod ready;
pub mod signals;
#[allow(unsafe_code)]
mod sys;

pub use exit::{finish, Failure};
pub use fs::write_atomic;
pub use signals::Signals;
