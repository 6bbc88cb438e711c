//! The local control protocol every daemon of the suite speaks on its Unix socket, and the
//! helpers both ends use.
//!
//! **Framing**: one JSON object per line (`\n`), at most [`MAX_MESSAGE`] bytes including the
//! newline, in both directions. A longer line is answered with a `too_large` error and the
//! connection is closed; a line that is not a request of the daemon is answered with a
//! `bad_request` error and the connection stays usable.
//!
//! **Requests**: each daemon has one request type, an enum tagged by `op`
//! (`{"op":"fence","node":"n2"}`); unknown fields are refused.
//!
//! **Replies**: one line per request, in order: `{"ok":VALUE}` with the daemon's value for
//! that request, or `{"error":{"kind":KIND,"message":TEXT}}` where KIND is one of
//! [`ErrorKind`] (`bad_request`, `not_found`, `exists`, `busy`, `refused`, `unavailable`,
//! `failed`, `too_large`; clients treat kinds they do not know as `failed`). A request that
//! opens a stream (fenced's `subscribe`) gets its `ok` reply and then one `{"ok":EVENT}` line
//! per event until either side closes.
//!
//! **Access**: sockets are created mode 0600, owned by the daemon's user (root): only root
//! can send orders. [`bind`] can open them to a group instead.
//!
//! The codec ([`encode`], [`decode_request`], [`decode_reply`], [`LineDecoder`]) is sans-IO;
//! [`server`] and [`client`] drive it over blocking or tokio sockets.

pub mod client;
pub mod server;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use client::{call, CallError, Client};
pub use server::{bind, serve_blocking, AsyncConn, Conn, SocketAccess};

/// The largest message (request or reply line, newline included) either side accepts.
pub const MAX_MESSAGE: usize = 16 << 20;

/// What went wrong, for programs; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request could not be parsed or is not valid for this daemon.
    BadRequest,
    /// The named object (export, node, service, lockspace) does not exist.
    NotFound,
    /// The name is taken.
    Exists,
    /// In use (clients connected, a transition in progress); retry later or force.
    Busy,
    /// Not allowed in this state (inquorate, fenced, read-only).
    Refused,
    /// Something the daemon depends on is not there (corosync down, peer unreachable).
    Unavailable,
    /// The operation was tried and failed.
    Failed,
    /// The message exceeded [`MAX_MESSAGE`].
    TooLarge,
    /// A kind this side does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ControlError {
        ControlError { kind, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> ControlError {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> ControlError {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn exists(message: impl Into<String>) -> ControlError {
        Self::new(ErrorKind::Exists, message)
    }
    pub fn busy(message: impl Into<String>) -> ControlError {
        Self::new(ErrorKind::Busy, message)
    }
    pub fn refused(message: impl Into<String>) -> ControlError {
        Self::new(ErrorKind::Refused, message)
    }
    pub fn unavailable(message: impl Into<String>) -> ControlError {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn failed(message: impl Into<String>) -> ControlError {
        Self::new(ErrorKind::Failed, message)
    }
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Error(ControlError),
}

impl<T> From<Result<T, ControlError>> for Reply<T> {
    fn from(r: Result<T, ControlError>) -> Reply<T> {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(e),
        }
    }
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, ControlError> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(e),
        }
    }
}

/// Serialises `msg` as one line (newline included). Fails only for values serde_json cannot
/// represent (maps with non-string keys), which is a programming error on the sending side.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ControlError> {
    let mut v = serde_json::to_vec(msg).map_err(|e| ControlError::failed(format!("cannot encode message: {e}")))?;
    if v.len() + 1 > MAX_MESSAGE {
        return Err(ControlError::new(
            ErrorKind::TooLarge,
            format!("message of {} bytes exceeds {MAX_MESSAGE}", v.len()),
        ));
    }
    v.push(b'\n');
    Ok(v)
}

/// Parses one request line (with or without its newline) into the daemon's request type.
pub fn decode_request<R: DeserializeOwned>(line: &[u8]) -> Result<R, ControlError> {
    let line = trim_newline(line);
    if line.len() >= MAX_MESSAGE {
        return Err(ControlError::new(ErrorKind::TooLarge, format!("request exceeds {MAX_MESSAGE} bytes")));
    }
    serde_json::from_slice(line).map_err(|e| ControlError::bad_request(format!("invalid request: {e}")))
}

/// Parses one reply line. `Err` is a protocol violation (not an error reply, which is
/// `Ok(Reply::Error(..))`).
pub fn decode_reply<T: DeserializeOwned>(line: &[u8]) -> Result<Reply<T>, String> {
    serde_json::from_slice(trim_newline(line)).map_err(|e| {
        let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        format!("{e} in {shown:?}")
    })
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits a byte stream into lines of at most `max` bytes, for drivers that read into their
/// own buffers (and for the fuzz target).
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max: usize,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
}

/// What [`LineDecoder::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its newline.
    Complete(Vec<u8>),
    /// No complete line yet.
    NeedMore,
    /// The current line exceeds the limit: the stream cannot be resynchronised.
    TooLong,
}

impl LineDecoder {
    pub fn new(max: usize) -> LineDecoder {
        LineDecoder { buf: Vec::new(), max, scanned: 0 }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line, if any.
    pub fn next_line(&mut self) -> Line {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                if end + 1 > self.max {
                    return Line::TooLong;
                }
                let line = self.buf[..end].to_vec();
                self.buf.drain(..=end);
                self.scanned = 0;
                Line::Complete(line)
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() >= self.max {
                    Line::TooLong
                } else {
                    Line::NeedMore
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
    enum Req {
        Status,
        Fence { node: String },
        Add { name: String, size: u64, tags: Vec<String> },
    }

    fn req_strategy() -> impl Strategy<Value = Req> {
        prop_oneof![
            Just(Req::Status),
            ".*".prop_map(|node| Req::Fence { node }),
            (".*", any::<u64>(), proptest::collection::vec(".*", 0..4)).prop_map(|(name, size, tags)| Req::Add {
                name,
                size,
                tags
            }),
        ]
    }

    proptest! {
        #[test]
        fn request_round_trips(r in req_strategy()) {
            let line = encode(&r).unwrap();
            prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            prop_assert_eq!(decode_request::<Req>(&line).unwrap(), r);
        }

        #[test]
        fn reply_round_trips(v in proptest::option::of(".*"), err in ".*") {
            let ok: Reply<Option<String>> = Reply::Ok(v);
            prop_assert_eq!(decode_reply::<Option<String>>(&encode(&ok).unwrap()).unwrap(), ok);
            let e: Reply<Option<String>> = Reply::Error(ControlError::busy(err));
            prop_assert_eq!(decode_reply::<Option<String>>(&encode(&e).unwrap()).unwrap(), e);
        }

        #[test]
        fn decoder_yields_the_lines_whatever_the_chunking(lines in proptest::collection::vec("[^\n]{0,40}", 0..8), cut in 1usize..17) {
            let mut stream = Vec::new();
            for l in &lines {
                stream.extend_from_slice(l.as_bytes());
                stream.push(b'\n');
            }
            let mut d = LineDecoder::new(1024);
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                d.push(chunk);
                while let Line::Complete(l) = d.next_line() {
                    got.push(String::from_utf8(l).unwrap());
                }
            }
            prop_assert_eq!(got, lines);
        }

        #[test]
        fn garbage_is_a_bad_request_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Err(e) = decode_request::<Req>(&bytes) {
                prop_assert_eq!(e.kind, ErrorKind::BadRequest);
            }
            let _ = decode_reply::<Req>(&bytes);
        }
    }

    #[test]
    fn wire_shapes() {
        assert_eq!(encode(&Req::Fence { node: "n2".into() }).unwrap(), b"{\"op\":\"fence\",\"node\":\"n2\"}\n");
        let ok: Reply<u32> = Reply::Ok(7);
        assert_eq!(encode(&ok).unwrap(), b"{\"ok\":7}\n");
        let e: Reply<u32> = Reply::Error(ControlError::not_found("no export x"));
        assert_eq!(encode(&e).unwrap(), b"{\"error\":{\"kind\":\"not_found\",\"message\":\"no export x\"}}\n");
        let unknown: Reply<u32> = decode_reply(br#"{"error":{"kind":"from_the_future","message":"m"}}"#).unwrap();
        assert_eq!(unknown, Reply::Error(ControlError::new(ErrorKind::Unknown, "m")));
        let e = decode_request::<Req>(br#"{"op":"fence","node":"n","extra":1}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let e = decode_request::<Req>(br#"{"op":"dance"}"#).unwrap_err();
        assert!(e.message.contains("dance"), "{e}");
    }

    #[test]
    fn too_long_line_is_reported() {
        let mut d = LineDecoder::new(8);
        d.push(b"0123456789");
        assert_eq!(d.next_line(), Line::TooLong);
        let mut d = LineDecoder::new(8);
        d.push(b"0123\n45");
        assert_eq!(d.next_line(), Line::Complete(b"0123".to_vec()));
        assert_eq!(d.next_line(), Line::NeedMore);
    }
}
