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
//! The codec ([`encode`], [`decode_request`], [`decode_reply`], [`reply_line`]) is sans-IO,
//! [`read_line`] is the one framing;
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

/// What reading one line from a stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line, newline included (the last line of a stream may lack it).
    Complete(Vec<u8>),
    /// The line exceeds [`MAX_MESSAGE`]: the stream cannot be resynchronised.
    TooLong,
    /// The other side closed the stream.
    Closed,
}

fn line_of(buf: Vec<u8>) -> Line {
    if buf.is_empty() {
        Line::Closed
    } else if !buf.ends_with(b"\n") && buf.len() >= MAX_MESSAGE {
        Line::TooLong
    } else {
        Line::Complete(buf)
    }
}

/// Reads one line of at most [`MAX_MESSAGE`] bytes: the one framing both ends use.
pub fn read_line(r: &mut impl std::io::BufRead) -> std::io::Result<Line> {
    use std::io::{BufRead, Read};
    let mut buf = Vec::new();
    r.take(MAX_MESSAGE as u64).read_until(b'\n', &mut buf)?;
    Ok(line_of(buf))
}

/// [`read_line`] on a tokio stream.
pub async fn read_line_async(r: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> std::io::Result<Line> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut buf = Vec::new();
    r.take(MAX_MESSAGE as u64).read_until(b'\n', &mut buf).await?;
    Ok(line_of(buf))
}

/// The reply line for `result`; a value that cannot be encoded becomes an error reply.
pub fn reply_line<T: Serialize>(result: Result<T, ControlError>) -> Vec<u8> {
    let reply: Reply<T> = result.into();
    match encode(&reply) {
        Ok(l) => l,
        Err(e) => encode(&Reply::<()>::Error(e)).expect("an error reply always encodes"),
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
        fn lines_come_out_whatever_the_buffering(lines in proptest::collection::vec("[^\n]{0,40}", 0..8), cap in 1usize..17) {
            let mut stream = Vec::new();
            for l in &lines {
                stream.extend_from_slice(l.as_bytes());
                stream.push(b'\n');
            }
            let mut r = std::io::BufReader::with_capacity(cap, &stream[..]);
            let mut got = Vec::new();
            while let Line::Complete(l) = read_line(&mut r).unwrap() {
                got.push(String::from_utf8(l).unwrap().trim_end_matches('\n').to_owned());
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
    fn too_long_line_is_reported_and_a_last_line_needs_no_newline() {
        let long = vec![b'x'; MAX_MESSAGE + 1];
        assert_eq!(read_line(&mut &long[..]).unwrap(), Line::TooLong);
        let mut r = &b"0123\n45"[..];
        assert_eq!(read_line(&mut r).unwrap(), Line::Complete(b"0123\n".to_vec()));
        assert_eq!(read_line(&mut r).unwrap(), Line::Complete(b"45".to_vec()));
        assert_eq!(read_line(&mut r).unwrap(), Line::Closed);
    }
}
