//! The tools' end: connect to a daemon's socket, send a request, read its reply (or a stream
//! of them).

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{decode_reply, encode, read_line, ControlError, Line, Reply, MAX_MESSAGE};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens on the socket (the daemon is not running, or another socket path).
    #[error("cannot reach {daemon} at {path}: {source}")]
    Connect {
        daemon: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or timed out.
    #[error("connection to {daemon} failed: {source}")]
    Io {
        daemon: String,
        #[source]
        source: std::io::Error,
    },
    /// The daemon closed the connection without replying.
    #[error("{daemon} closed the connection without a reply")]
    Closed { daemon: String },
    /// The reply was not what this tool understands (a different version of the daemon?).
    #[error("unexpected reply from {daemon}: {detail}")]
    Protocol { daemon: String, detail: String },
    /// The daemon answered with an error.
    #[error(transparent)]
    Remote(ControlError),
}

impl CallError {
    /// The daemon's error reply, if that is what this is.
    pub fn remote(&self) -> Option<&ControlError> {
        match self {
            CallError::Remote(e) => Some(e),
            _ => None,
        }
    }
}

/// A connection to a daemon's control socket.
#[derive(Debug)]
pub struct Client {
    daemon: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to `daemon` (its name, for messages) at `path`.
    pub fn connect(daemon: &str, path: &Path) -> Result<Client, CallError> {
        let s = UnixStream::connect(path).map_err(|source| CallError::Connect {
            daemon: daemon.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        let writer = s.try_clone().map_err(|source| CallError::Io { daemon: daemon.to_owned(), source })?;
        Ok(Client { daemon: daemon.to_owned(), reader: BufReader::new(s), writer })
    }

    /// Read timeout for replies (`None`: wait for ever, for requests that wait on purpose).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), CallError> {
        self.writer.set_read_timeout(t).map_err(|source| self.io(source))
    }

    fn io(&self, source: std::io::Error) -> CallError {
        CallError::Io { daemon: self.daemon.clone(), source }
    }

    /// Sends a request without waiting for its reply.
    pub fn send<R: Serialize>(&mut self, req: &R) -> Result<(), CallError> {
        let line = encode(req).map_err(CallError::Remote)?;
        self.writer.write_all(&line).map_err(|source| self.io(source))
    }

    /// Sends raw bytes (tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), CallError> {
        self.writer.write_all(bytes).map_err(|source| self.io(source))
    }

    /// Reads the next reply line (a call's reply, or the next event of a stream).
    pub fn receive<T: DeserializeOwned>(&mut self) -> Result<T, CallError> {
        let daemon = || self.daemon.clone();
        let line = read_line(&mut self.reader).map_err(|source| CallError::Io { daemon: daemon(), source })?;
        let buf = match line {
            Line::Complete(buf) => buf,
            Line::Closed => return Err(CallError::Closed { daemon: daemon() }),
            Line::TooLong => {
                return Err(CallError::Protocol {
                    daemon: daemon(),
                    detail: format!("reply exceeds {MAX_MESSAGE} bytes"),
                })
            }
        };
        match decode_reply::<T>(&buf) {
            Ok(Reply::Ok(v)) => Ok(v),
            Ok(Reply::Error(e)) => Err(CallError::Remote(e)),
            Err(detail) => Err(CallError::Protocol { daemon: daemon(), detail }),
        }
    }

    /// Sends `req` and returns the daemon's answer.
    pub fn call<R: Serialize, T: DeserializeOwned>(&mut self, req: &R) -> Result<T, CallError> {
        self.send(req)?;
        self.receive()
    }
}

/// One request on a fresh connection, with `timeout` for the reply (`None`: no limit).
pub fn call<R: Serialize, T: DeserializeOwned>(
    daemon: &str,
    path: &Path,
    req: &R,
    timeout: Option<Duration>,
) -> Result<T, CallError> {
    let mut c = Client::connect(daemon, path)?;
    c.set_timeout(timeout)?;
    c.call(req)
}
