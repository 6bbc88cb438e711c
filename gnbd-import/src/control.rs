//! A device process's control socket, `STATE_DIR/imports/NAME.sock` for an import, the
//! configured path for [`run_block_device`](crate::run_block_device) (mode 0600: root
//! only): the suite's local control protocol (`daemon::control`: JSON lines, requests
//! tagged `op`, replies `{"ok":VALUE}` or `{"error":{"kind":..,"message":..}}`).
//! `gnbd_import -l` asks for the status, `gnbd_import -r` for the stop.
//!
//! | request | ok value | errors |
//! |---|---|---|
//! | `{"op":"status"}` | [`Status`]: `{"state":"connected","reconnects":N,...}` | |
//! | `{"op":"stop","force":BOOL}` | `{"message":"stopping 'NAME'"}`, then the device is removed | `busy` while the device is mounted or open and `force` is false |
//!
//! `force` may be left out (false).

use crate::backend::Backend;
use crate::fs::IoStats;
use crate::loopdev::is_busy;
use daemon::control::{CallError, Conn, ControlError};
use daemon::Signals;
use serde::{Deserialize, Serialize};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A request to a device process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Connection state and I/O counters.
    Status,
    /// Remove the device (loop device, name, FUSE mount, record) and exit. Refused while the
    /// device is in use unless `force` (its users then get EIO).
    Stop {
        #[serde(default)]
        force: bool,
    },
}

/// Live status from a device process (the `ok` value of `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `connected`, `reconnecting`, `failed: ...`, `closed` (a gnbd import); `active` (a
    /// local device).
    pub state: String,
    pub reconnects: u64,
    pub resubmitted: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub trims: u64,
    pub errors: u64,
}

/// The `ok` value of `stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub message: String,
}

/// What a device process serves its socket with.
pub(crate) struct Served<B> {
    pub name: String,
    /// Weak: the main thread closes the backend on the way out.
    pub backend: Weak<B>,
    pub stats: Arc<IoStats>,
    pub loop_device: PathBuf,
    pub link: PathBuf,
    pub signals: Signals,
    /// Set by the teardown before it connects once to end [`Served::run`].
    pub closing: Arc<AtomicBool>,
}

impl<B: Backend> Served<B> {
    fn status(&self) -> Result<Status, ControlError> {
        let backend = self.backend.upgrade().ok_or_else(|| ControlError::unavailable("the device is being removed"))?;
        let health = backend.health();
        drop(backend);
        let s = &self.stats;
        Ok(Status {
            state: health.state,
            reconnects: health.reconnects,
            resubmitted: health.resubmitted,
            reads: s.reads.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            flushes: s.flushes.load(Ordering::Relaxed),
            trims: s.trims.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
        })
    }

    /// Answers requests on one connection until the client closes it (or is silent too
    /// long). A granted stop is replied to first, then requested from the main thread,
    /// which tears the device down.
    fn serve(&self, conn: std::os::unix::net::UnixStream) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut conn = Conn::new(conn)?;
        while let Some(req) = conn.next_request::<Request>()? {
            match req {
                Request::Status => conn.reply(self.status())?,
                Request::Stop { force: false } if is_busy(&self.loop_device) => conn.reply::<Stopping>(Err(
                    ControlError::busy(format!("{} is in use (mounted or held open)", self.link.display())),
                ))?,
                Request::Stop { force } => {
                    tracing::info!(force, "stop requested on the control socket");
                    let reply = conn.reply(Ok(Stopping { message: format!("stopping '{}'", self.name) }));
                    self.signals.request_stop();
                    return reply;
                }
            }
        }
        Ok(())
    }

    /// Serves `listener`, one connection at a time, until [`close`] ends it.
    pub fn run(self, listener: UnixListener) {
        for conn in listener.incoming().flatten() {
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.serve(conn) {
                tracing::debug!(error = %e, "control connection ended");
            }
        }
    }
}

/// Ends the [`Served::run`] loop serving `socket` (before the socket file is removed).
pub(crate) fn close(socket: &Path, closing: &AtomicBool) {
    closing.store(true, Ordering::SeqCst);
    let _ = std::os::unix::net::UnixStream::connect(socket);
}

/// How the device process is named in messages about its socket.
fn who(socket: &Path) -> String {
    let name = socket.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!("the device process of '{name}'")
}

/// Asks the device process at `socket` for its status.
pub fn status(socket: &Path, timeout: Duration) -> Result<Status, CallError> {
    daemon::control::call(&who(socket), socket, &Request::Status, Some(timeout))
}

/// Asks the device process at `socket` to remove its device and exit.
pub fn stop(socket: &Path, force: bool, timeout: Duration) -> Result<Stopping, CallError> {
    daemon::control::call(&who(socket), socket, &Request::Stop { force }, Some(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let line = |r: &Request| serde_json::to_string(r).unwrap();
        assert_eq!(line(&Request::Status), r#"{"op":"status"}"#);
        assert_eq!(line(&Request::Stop { force: true }), r#"{"op":"stop","force":true}"#);
        let r: Request = daemon::control::decode_request(br#"{"op":"stop"}"#).unwrap();
        assert_eq!(r, Request::Stop { force: false });
        let e = daemon::control::decode_request::<Request>(br#"{"op":"stop","now":1}"#).unwrap_err();
        assert_eq!(e.kind, daemon::control::ErrorKind::BadRequest);
        // The old plain-text requests are bad requests now.
        assert!(daemon::control::decode_request::<Request>(b"stop force").is_err());
    }
}
