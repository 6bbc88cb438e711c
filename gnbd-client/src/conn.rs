//! Sans-IO transmission-phase client: cookies, request encoding and incremental reply decoding.
//!
//! A [`Conn`] lives for one connection. [`Conn::submit`] assigns a cookie, records the request
//! as in flight and encodes its header (the caller sends a write's payload right after it);
//! [`Conn::feed`] takes whatever bytes arrived from the server, in pieces of any size, and
//! reports finished requests as [`Completion`]s. Each request carries a caller-chosen tag `T`
//! (the driver keeps the caller's reply channel and the data needed to resubmit there);
//! [`Conn::into_tags`] hands back the tags of every request that had no reply when the
//! connection is lost.
//!
//! Read data is copied straight from the input into the request's buffer (`OFFSET_DATA`
//! payloads and simple-reply data are never buffered whole); `OFFSET_HOLE` ranges are zero;
//! `BLOCK_STATUS` extents are collected; `ERROR` chunks and simple errors fail the request.
//! Anything that shows the stream is out of sync or the server misbehaves (bad magic, unknown
//! cookie, a chunk outside the request's range, a read not fully covered) is a [`ConnError`]:
//! the connection must be dropped.

use std::collections::HashMap;

use nbd_proto::consts::*;
use nbd_proto::{
    decode_chunk, decode_reply_header, encode_request, wire_error_name, Chunk, Command, Decode, Extent, ReplyError,
    ReplyHeader, ReplyMode, Request,
};
use thiserror::Error;

/// Largest chunk payload (other than read data, which is streamed) accepted from a server.
pub const MAX_CHUNK_PAYLOAD: u64 = 16 << 20;

/// What to ask of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub command: Command,
    /// `NBD_CMD_FLAG_*`.
    pub flags: u16,
    pub offset: u64,
    pub length: u64,
}

/// The successful outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The command succeeded and carries no data.
    Done,
    /// The data of a `READ`, exactly the requested length.
    Data(Vec<u8>),
    /// The extents of a `BLOCK_STATUS`, in order from the request's offset.
    Extents(Vec<Extent>),
}

/// The server failed one request (the connection stays usable).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the server failed the request: {} {message}", wire_error_name(*errno))]
pub struct RequestFailed {
    /// NBD error value (`NBD_EIO`, `NBD_ENOSPC`, ...).
    pub errno: u32,
    /// The server's message, if it sent one.
    pub message: String,
}

/// One finished request.
#[derive(Debug)]
pub struct Completion<T> {
    pub tag: T,
    pub cookie: u64,
    pub result: Result<Reply, RequestFailed>,
}

/// The server broke the protocol; the connection cannot be used any more.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnError {
    #[error(transparent)]
    Reply(#[from] ReplyError),
    #[error("reply for cookie {cookie:#x}, which has no request in flight")]
    UnknownCookie { cookie: u64 },
    #[error("chunk for cookie {cookie:#x} covers {offset}+{length}, outside the request's {req_offset}+{req_length}")]
    OutOfRange { cookie: u64, offset: u64, length: u64, req_offset: u64, req_length: u64 },
    #[error("unexpected {what} in the reply to a {command:?} request (cookie {cookie:#x})")]
    Unexpected { cookie: u64, command: Command, what: &'static str },
    #[error("chunk payload of {length} bytes exceeds the limit of {MAX_CHUNK_PAYLOAD} bytes")]
    TooLarge { length: u64 },
    #[error("read reply for cookie {cookie:#x} covered {covered} of {length} bytes")]
    IncompleteRead { cookie: u64, covered: u64, length: u64 },
    #[error("the connection already failed and must be dropped")]
    Dead,
}

/// A request that cannot be encoded in this session.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubmitError {
    #[error("length {length} does not fit a compact request header; split the request")]
    TooLong { length: u64 },
    #[error("write payload of {payload} bytes does not match the request length {length}")]
    PayloadMismatch { payload: usize, length: u64 },
}

#[derive(Debug)]
struct Entry<T> {
    tag: T,
    op: Op,
    data: Vec<u8>,
    covered: u64,
    extents: Vec<Extent>,
    error: Option<RequestFailed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// Waiting for a reply header.
    Header,
    /// Simple-reply READ data: `remaining` bytes go to `pos` of the request's buffer.
    SimpleData { cookie: u64, pos: usize, remaining: u64 },
    /// The 8-byte offset field of an `OFFSET_DATA` chunk with `length` payload bytes.
    DataOffset { cookie: u64, flags: u16, length: u64 },
    /// `OFFSET_DATA` bytes streamed to `pos` of the request's buffer.
    Data { cookie: u64, flags: u16, pos: usize, remaining: u64 },
    /// A whole chunk payload being buffered.
    Payload { cookie: u64, flags: u16, kind: u16, length: usize },
}

/// A read buffer lent to the driver by [`Conn::take_direct`].
#[derive(Debug)]
pub struct DirectRead {
    cookie: u64,
    /// How many bytes the driver may append.
    pub remaining: usize,
    /// The request's buffer: append the received bytes.
    pub buf: Vec<u8>,
}

/// Stores `bytes` at `pos` of a buffer filled so far up to its length (zeroes fill a gap).
fn put(data: &mut Vec<u8>, pos: usize, bytes: &[u8]) {
    if pos > data.len() {
        data.resize(pos, 0);
    }
    let overlap = (data.len() - pos).min(bytes.len());
    data[pos..pos + overlap].copy_from_slice(&bytes[..overlap]);
    data.extend_from_slice(&bytes[overlap..]);
}

/// Zeroes `len` bytes at `pos` (a hole), growing the buffer as needed.
fn zero(data: &mut Vec<u8>, pos: usize, len: usize) {
    let end = pos + len;
    if data.len() < end {
        data.resize(end, 0);
    }
    data[pos..end].fill(0);
}

/// Transmission-phase client state for one connection.
#[derive(Debug)]
pub struct Conn<T> {
    mode: ReplyMode,
    next_cookie: u64,
    inflight: HashMap<u64, Entry<T>>,
    rx: Rx,
    /// Partial header or chunk payload.
    buf: Vec<u8>,
    dead: bool,
    /// Read buffers handed back by the caller ([`Conn::recycle`]), reused so large reads
    /// neither allocate nor fault in fresh pages.
    spare: Vec<Vec<u8>>,
}

/// Buffers smaller than this are not worth keeping.
const SPARE_MIN: usize = 64 << 10;
/// At most this many spare buffers are kept per connection.
const SPARE_MAX: usize = 64;

impl<T> Conn<T> {
    /// A connection whose handshake negotiated `mode`.
    pub fn new(mode: ReplyMode) -> Self {
        Self {
            mode,
            next_cookie: 1,
            inflight: HashMap::new(),
            rx: Rx::Header,
            buf: Vec::new(),
            dead: false,
            spare: Vec::new(),
        }
    }

    /// The negotiated reply framing.
    pub fn mode(&self) -> ReplyMode {
        self.mode
    }

    /// Number of requests waiting for their reply.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Records `op` as in flight under a fresh cookie and appends its header to `out`.
    /// For a `WRITE` the caller sends `op.length` payload bytes right after the header.
    pub fn submit(&mut self, op: Op, tag: T, out: &mut Vec<u8>) -> Result<u64, SubmitError> {
        if !self.mode.extended() && op.length > u64::from(u32::MAX) {
            return Err(SubmitError::TooLong { length: op.length });
        }
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1).max(1);
        let req = Request { flags: op.flags, command: op.command, cookie, offset: op.offset, length: op.length };
        encode_request(out, &req, self.mode);
        // Read data is appended as it arrives (no zeroing of a buffer about to be
        // overwritten); out-of-order chunks and holes fill gaps with zeroes first.
        let data = if op.command == Command::Read {
            let len = usize::try_from(op.length).expect("read lengths are bounded by the caller");
            match self.spare.iter().rposition(|b| b.capacity() >= len) {
                Some(i) if len >= SPARE_MIN => self.spare.swap_remove(i),
                _ => Vec::with_capacity(len),
            }
        } else {
            Vec::new()
        };
        self.inflight.insert(cookie, Entry { tag, op, data, covered: 0, extents: Vec::new(), error: None });
        Ok(cookie)
    }

    /// Like [`Conn::submit`], and appends the write payload too (for callers that send one
    /// buffer per request).
    pub fn submit_with_payload(
        &mut self,
        op: Op,
        payload: &[u8],
        tag: T,
        out: &mut Vec<u8>,
    ) -> Result<u64, SubmitError> {
        let expect = if op.command == Command::Write { op.length } else { 0 };
        if payload.len() as u64 != expect {
            return Err(SubmitError::PayloadMismatch { payload: payload.len(), length: op.length });
        }
        let cookie = self.submit(op, tag, out)?;
        out.extend_from_slice(payload);
        Ok(cookie)
    }

    /// Takes back a buffer a completed read returned, to hold the data of a later read.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() >= SPARE_MIN && self.spare.len() < SPARE_MAX {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Hands back the tags of every request still waiting for its reply, oldest first.
    pub fn into_tags(self) -> Vec<T> {
        let mut v: Vec<(u64, T)> = self.inflight.into_iter().map(|(c, e)| (c, e.tag)).collect();
        v.sort_by_key(|(c, _)| *c);
        v.into_iter().map(|(_, t)| t).collect()
    }

    /// Consumes all of `input` (bytes from the server, any amount); finished requests are
    /// appended to `done`. After an error the connection must be dropped.
    pub fn feed(&mut self, mut input: &[u8], done: &mut Vec<Completion<T>>) -> Result<(), ConnError> {
        if self.dead {
            return Err(ConnError::Dead);
        }
        let r = self.feed_inner(&mut input, done);
        if r.is_err() {
            self.dead = true;
        }
        r
    }

    fn feed_inner(&mut self, input: &mut &[u8], done: &mut Vec<Completion<T>>) -> Result<(), ConnError> {
        while !input.is_empty() {
            match self.rx {
                Rx::Header => {
                    // The magic decides the header size.
                    if !self.fill(input, 4) {
                        return Ok(());
                    }
                    let size = match decode_reply_header(&self.buf[..4], self.mode)? {
                        Decode::NeedMore { needed } => 4 + needed,
                        Decode::Done { consumed, .. } => consumed,
                    };
                    if !self.fill(input, size) {
                        return Ok(());
                    }
                    let hdr = match decode_reply_header(&self.buf, self.mode)? {
                        Decode::Done { value, .. } => value,
                        Decode::NeedMore { .. } => unreachable!("the whole header is buffered"),
                    };
                    self.buf.clear();
                    self.header(hdr, done)?;
                }
                Rx::SimpleData { cookie, pos, remaining } | Rx::Data { cookie, pos, remaining, .. } => {
                    let n = self.copy_data(cookie, pos, remaining, input)?;
                    self.advance(n, done)?;
                }
                Rx::DataOffset { cookie, flags, length } => {
                    if !self.fill(input, 8) {
                        return Ok(());
                    }
                    let offset = u64::from_be_bytes(self.buf[..8].try_into().expect("8 bytes buffered"));
                    self.buf.clear();
                    let data_len = length - 8;
                    if data_len == 0 {
                        return Err(ReplyError::Malformed { what: "OFFSET_DATA", why: "no data" }.into());
                    }
                    let pos = self.check_range(cookie, offset, data_len)?;
                    self.rx = Rx::Data { cookie, flags, pos, remaining: data_len };
                }
                Rx::Payload { cookie, flags, kind, length } => {
                    if !self.fill(input, length) {
                        return Ok(());
                    }
                    let payload = std::mem::take(&mut self.buf);
                    self.rx = Rx::Header;
                    let r = self.chunk(cookie, flags, kind, &payload, done);
                    self.buf = payload;
                    self.buf.clear();
                    r?;
                }
            }
        }
        // A zero-length payload is complete without more input.
        if let Rx::Payload { cookie, flags, kind, length: 0 } = self.rx {
            self.rx = Rx::Header;
            self.chunk(cookie, flags, kind, &[], done)?;
        }
        Ok(())
    }

    /// After `n` bytes of streamed read data were stored: the next state, and the request's
    /// completion when that was its last data.
    fn advance(&mut self, n: usize, done: &mut Vec<Completion<T>>) -> Result<(), ConnError> {
        match self.rx {
            Rx::SimpleData { cookie, pos, remaining } => {
                let remaining = remaining - n as u64;
                if remaining == 0 {
                    self.rx = Rx::Header;
                    self.finish(cookie, done)?;
                } else {
                    self.rx = Rx::SimpleData { cookie, pos: pos + n, remaining };
                }
            }
            Rx::Data { cookie, flags, pos, remaining } => {
                let remaining = remaining - n as u64;
                if remaining == 0 {
                    self.rx = Rx::Header;
                    if flags & NBD_REPLY_FLAG_DONE != 0 {
                        self.finish(cookie, done)?;
                    }
                } else {
                    self.rx = Rx::Data { cookie, flags, pos: pos + n, remaining };
                }
            }
            _ => unreachable!("advance() is called only while streaming read data"),
        }
        Ok(())
    }

    /// When the next bytes from the server are at least `min` bytes of read data that extend
    /// their request's buffer in order: that buffer, taken out of the connection, so the
    /// driver can receive the bytes straight into it (appending at most `remaining`) instead
    /// of through [`Conn::feed`]. Give it back with [`Conn::direct_done`] before feeding
    /// anything else.
    pub fn take_direct(&mut self, min: usize) -> Option<DirectRead> {
        let (cookie, pos, remaining) = match self.rx {
            Rx::SimpleData { cookie, pos, remaining } | Rx::Data { cookie, pos, remaining, .. } => {
                (cookie, pos, remaining)
            }
            _ => return None,
        };
        if self.dead || remaining < min as u64 {
            return None;
        }
        let e = self.inflight.get_mut(&cookie)?;
        if e.data.len() != pos {
            return None;
        }
        let remaining = usize::try_from(remaining).ok()?;
        Some(DirectRead { cookie, remaining, buf: std::mem::take(&mut e.data) })
    }

    /// Returns a buffer from [`Conn::take_direct`] after the driver appended `received`
    /// bytes (at most its `remaining`) to it; completes the request when that was its data.
    pub fn direct_done(
        &mut self,
        d: DirectRead,
        received: usize,
        done: &mut Vec<Completion<T>>,
    ) -> Result<(), ConnError> {
        let DirectRead { cookie, remaining, buf } = d;
        let e = self.entry(cookie)?;
        assert!(received <= remaining, "the driver received more than it was given room for");
        e.data = buf;
        e.covered += received as u64;
        if received > 0 {
            self.advance(received, done)?;
        }
        Ok(())
    }

    /// Moves bytes from `input` until `buf` holds `want`; whether it does.
    fn fill(&mut self, input: &mut &[u8], want: usize) -> bool {
        if self.buf.len() < want {
            let n = (want - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..n]);
            *input = &input[n..];
        }
        self.buf.len() >= want
    }

    fn entry(&mut self, cookie: u64) -> Result<&mut Entry<T>, ConnError> {
        self.inflight.get_mut(&cookie).ok_or(ConnError::UnknownCookie { cookie })
    }

    /// Copies the next read data bytes (at most `remaining`) from `input` into the buffer of
    /// `cookie` at `pos`, consuming them; returns how many were copied.
    fn copy_data(&mut self, cookie: u64, pos: usize, remaining: u64, input: &mut &[u8]) -> Result<usize, ConnError> {
        let n = input.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let e = self.entry(cookie)?;
        put(&mut e.data, pos, &input[..n]);
        e.covered += n as u64;
        *input = &input[n..];
        Ok(n)
    }

    /// Checks that `offset+length` lies inside the read `cookie`; returns the buffer position.
    fn check_range(&mut self, cookie: u64, offset: u64, length: u64) -> Result<usize, ConnError> {
        let e = self.entry(cookie)?;
        let (req_offset, req_length) = (e.op.offset, e.op.length);
        let inside = offset >= req_offset
            && offset.checked_add(length).is_some_and(|end| end <= req_offset.saturating_add(req_length));
        if !inside {
            return Err(ConnError::OutOfRange { cookie, offset, length, req_offset, req_length });
        }
        Ok(usize::try_from(offset - req_offset).expect("inside a buffer that exists"))
    }

    fn header(&mut self, hdr: ReplyHeader, done: &mut Vec<Completion<T>>) -> Result<(), ConnError> {
        match hdr {
            ReplyHeader::Simple { cookie, error } => {
                let mode = self.mode;
                let e = self.entry(cookie)?;
                if error != 0 {
                    e.error.get_or_insert(RequestFailed { errno: error, message: String::new() });
                    return self.finish(cookie, done);
                }
                let (command, length) = (e.op.command, e.op.length);
                match command {
                    Command::Read if mode != ReplyMode::Simple => Err(ConnError::Unexpected {
                        cookie,
                        command: Command::Read,
                        what: "successful simple reply in a structured session",
                    }),
                    Command::Read if length > 0 => {
                        self.rx = Rx::SimpleData { cookie, pos: 0, remaining: length };
                        Ok(())
                    }
                    _ => self.finish(cookie, done),
                }
            }
            ReplyHeader::Chunk { flags, kind, cookie, length, .. } => {
                let command = self.entry(cookie)?.op.command;
                if kind == NBD_REPLY_TYPE_OFFSET_DATA {
                    if command != Command::Read {
                        return Err(ConnError::Unexpected { cookie, command, what: "OFFSET_DATA chunk" });
                    }
                    if length < 8 {
                        return Err(
                            ReplyError::Malformed { what: "OFFSET_DATA", why: "shorter than its offset" }.into()
                        );
                    }
                    self.rx = Rx::DataOffset { cookie, flags, length };
                    return Ok(());
                }
                if length > MAX_CHUNK_PAYLOAD {
                    return Err(ConnError::TooLarge { length });
                }
                let length = usize::try_from(length).expect("bounded by MAX_CHUNK_PAYLOAD");
                self.rx = Rx::Payload { cookie, flags, kind, length };
                Ok(())
            }
        }
    }

    fn chunk(
        &mut self,
        cookie: u64,
        flags: u16,
        kind: u16,
        payload: &[u8],
        done: &mut Vec<Completion<T>>,
    ) -> Result<(), ConnError> {
        let chunk = decode_chunk(kind, payload, self.mode)?;
        let command = self.entry(cookie)?.op.command;
        match chunk {
            Chunk::None => {}
            Chunk::OffsetData { .. } => unreachable!("OFFSET_DATA is streamed"),
            Chunk::OffsetHole { offset, length } => {
                if command != Command::Read {
                    return Err(ConnError::Unexpected { cookie, command, what: "OFFSET_HOLE chunk" });
                }
                let pos = self.check_range(cookie, offset, u64::from(length))?;
                let e = self.entry(cookie)?;
                zero(&mut e.data, pos, length as usize);
                e.covered += u64::from(length);
            }
            Chunk::BlockStatus { extents, .. } => {
                if command != Command::BlockStatus {
                    return Err(ConnError::Unexpected { cookie, command, what: "BLOCK_STATUS chunk" });
                }
                self.entry(cookie)?.extents.extend(extents);
            }
            Chunk::Error { error, message, offset } => {
                if let Some(off) = offset {
                    self.check_range(cookie, off, 0).or_else(|e| {
                        // ERROR_OFFSET is only meaningful for reads and writes; elsewhere ignore it.
                        if matches!(command, Command::Read) {
                            Err(e)
                        } else {
                            Ok(0)
                        }
                    })?;
                }
                let message = String::from_utf8_lossy(message).into_owned();
                self.entry(cookie)?.error.get_or_insert(RequestFailed { errno: error, message });
            }
            Chunk::Unknown { kind } => {
                // Unknown error types still fail the request; other unknown types are ignored.
                if kind & (1 << 15) != 0 {
                    let message = format!("unknown error chunk type {kind:#06x}");
                    self.entry(cookie)?.error.get_or_insert(RequestFailed { errno: NBD_EIO, message });
                }
            }
        }
        if flags & NBD_REPLY_FLAG_DONE != 0 {
            self.finish(cookie, done)?;
        }
        Ok(())
    }

    fn finish(&mut self, cookie: u64, done: &mut Vec<Completion<T>>) -> Result<(), ConnError> {
        let e = self.inflight.remove(&cookie).ok_or(ConnError::UnknownCookie { cookie })?;
        let result = match e.error {
            Some(mut err) => {
                if err.message.is_empty() {
                    err.message = wire_error_name(err.errno).to_string();
                }
                Err(err)
            }
            None => match e.op.command {
                Command::Read => {
                    if e.covered != e.op.length {
                        return Err(ConnError::IncompleteRead { cookie, covered: e.covered, length: e.op.length });
                    }
                    let mut data = e.data;
                    // Overlapping chunks can cover the length without reaching the end.
                    data.resize(usize::try_from(e.op.length).expect("a buffer that exists"), 0);
                    Ok(Reply::Data(data))
                }
                Command::BlockStatus => Ok(Reply::Extents(e.extents)),
                _ => Ok(Reply::Done),
            },
        };
        done.push(Completion { tag: e.tag, cookie, result });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbd_proto::{encode_block_status, encode_chunk_header, encode_done, encode_error, encode_read_reply_header};
    use proptest::prelude::*;

    fn op(command: Command, offset: u64, length: u64) -> Op {
        Op { command, flags: 0, offset, length }
    }

    /// Feeds `bytes` in pieces of `step` and collects the completions.
    fn feed_all<T>(c: &mut Conn<T>, bytes: &[u8], step: usize) -> Result<Vec<Completion<T>>, ConnError> {
        let mut done = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            c.feed(piece, &mut done)?;
        }
        Ok(done)
    }

    /// Like a driver that receives read data straight into request buffers whenever the
    /// connection offers one, and feeds everything else, `step` bytes at a time.
    fn feed_direct<T>(c: &mut Conn<T>, mut bytes: &[u8], step: usize) -> Vec<Completion<T>> {
        let mut done = Vec::new();
        while !bytes.is_empty() {
            let n = step.min(bytes.len());
            match c.take_direct(1) {
                Some(mut d) => {
                    let n = n.min(d.remaining);
                    d.buf.extend_from_slice(&bytes[..n]);
                    c.direct_done(d, n, &mut done).unwrap();
                    bytes = &bytes[n..];
                }
                None => {
                    c.feed(&bytes[..n], &mut done).unwrap();
                    bytes = &bytes[n..];
                }
            }
        }
        done
    }

    fn modes() -> impl Strategy<Value = ReplyMode> {
        prop_oneof![Just(ReplyMode::Simple), Just(ReplyMode::Structured), Just(ReplyMode::Extended)]
    }

    #[test]
    fn requests_are_encoded_per_mode_with_fresh_cookies() {
        for mode in [ReplyMode::Simple, ReplyMode::Structured, ReplyMode::Extended] {
            let mut c = Conn::new(mode);
            let mut out = Vec::new();
            let a = c.submit(op(Command::Read, 0, 512), (), &mut out).unwrap();
            let b = c.submit_with_payload(op(Command::Write, 512, 3), b"abc", (), &mut out).unwrap();
            assert_ne!(a, b);
            assert_eq!(out.len(), 2 * mode.request_size() + 3);
            let (req, used) = nbd_proto::decode_request(&out, mode).unwrap().done().unwrap();
            assert_eq!((req.cookie, req.command, req.length), (a, Command::Read, 512));
            let (req, _) = nbd_proto::decode_request(&out[used..], mode).unwrap().done().unwrap();
            assert_eq!((req.cookie, req.command, req.offset), (b, Command::Write, 512));
            assert_eq!(&out[out.len() - 3..], b"abc");
            assert_eq!(c.in_flight(), 2);
        }
    }

    #[test]
    fn compact_headers_refuse_long_requests() {
        let mut c = Conn::<()>::new(ReplyMode::Structured);
        let err = c.submit(op(Command::Trim, 0, 1 << 33), (), &mut Vec::new()).unwrap_err();
        assert_eq!(err, SubmitError::TooLong { length: 1 << 33 });
        let mut c = Conn::<()>::new(ReplyMode::Extended);
        assert!(c.submit(op(Command::Trim, 0, 1 << 33), (), &mut Vec::new()).is_ok());
    }

    #[test]
    fn recycled_buffers_hold_later_reads() {
        let mut c = Conn::new(ReplyMode::Simple);
        let len = 128 << 10;
        let mut old = vec![9u8; len];
        old.reserve(4096);
        let ptr = old.as_ptr();
        c.recycle(old);
        let cookie = c.submit(op(Command::Read, 0, len as u64), 7, &mut Vec::new()).unwrap();
        let mut reply = Vec::new();
        encode_read_reply_header(&mut reply, ReplyMode::Simple, cookie, 0, len as u64);
        reply.resize(reply.len() + len, 5u8);
        let done = feed_all(&mut c, &reply, 1000).unwrap();
        let Ok(Reply::Data(d)) = &done[0].result else { panic!("{:?}", done[0].result) };
        assert_eq!(d.as_ptr(), ptr, "the recycled buffer was reused");
        assert!(d.len() == len && d.iter().all(|&b| b == 5), "and holds only the new data");
        c.recycle(vec![0u8; 10]);
        assert!(c.spare.is_empty(), "small buffers are not kept");
    }

    #[test]
    fn simple_read_data_is_streamed() {
        let mut c = Conn::new(ReplyMode::Simple);
        let cookie = c.submit(op(Command::Read, 4096, 10), 7u32, &mut Vec::new()).unwrap();
        let mut reply = Vec::new();
        nbd_proto::encode_simple_reply(&mut reply, cookie, 0);
        reply.extend_from_slice(b"0123456789");
        let done = feed_all(&mut c, &reply, 3).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].tag, 7);
        assert_eq!(done[0].result, Ok(Reply::Data(b"0123456789".to_vec())));
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn data_and_hole_chunks_assemble_the_buffer() {
        let mode = ReplyMode::Structured;
        let mut c = Conn::new(mode);
        let cookie = c.submit(op(Command::Read, 1000, 30), (), &mut Vec::new()).unwrap();
        let mut r = Vec::new();
        // Bytes 1010..1020 are a hole, the rest data, sent out of order.
        encode_chunk_header(&mut r, mode, 0, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 0, 8 + 10);
        r.extend_from_slice(&1020u64.to_be_bytes());
        r.extend_from_slice(&[2u8; 10]);
        encode_chunk_header(&mut r, mode, 0, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, 0, 12);
        r.extend_from_slice(&1010u64.to_be_bytes());
        r.extend_from_slice(&10u32.to_be_bytes());
        encode_chunk_header(&mut r, mode, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 0, 8 + 10);
        r.extend_from_slice(&1000u64.to_be_bytes());
        r.extend_from_slice(&[1u8; 10]);
        let done = feed_all(&mut c, &r, 1).unwrap();
        let mut want = vec![1u8; 10];
        want.extend_from_slice(&[0; 10]);
        want.extend_from_slice(&[2; 10]);
        assert_eq!(done[0].result, Ok(Reply::Data(want)));
    }

    #[test]
    fn chunk_outside_the_request_is_a_protocol_error() {
        let mode = ReplyMode::Extended;
        let mut c = Conn::new(mode);
        let cookie = c.submit(op(Command::Read, 0, 512), (), &mut Vec::new()).unwrap();
        let mut r = Vec::new();
        encode_read_reply_header(&mut r, mode, cookie, 256, 512);
        let err = feed_all(&mut c, &r, 64).unwrap_err();
        assert!(matches!(err, ConnError::OutOfRange { offset: 256, length: 512, .. }), "{err:?}");
        // The connection stays dead.
        assert_eq!(c.feed(&[0], &mut Vec::new()).unwrap_err(), ConnError::Dead);
    }

    #[test]
    fn unknown_cookie_and_bad_magic_are_protocol_errors() {
        let mut c = Conn::<()>::new(ReplyMode::Structured);
        let mut r = Vec::new();
        encode_done(&mut r, ReplyMode::Structured, 99, 0);
        assert_eq!(feed_all(&mut c, &r, 5).unwrap_err(), ConnError::UnknownCookie { cookie: 99 });
        let mut c = Conn::<()>::new(ReplyMode::Extended);
        let err = feed_all(&mut c, &[0xde, 0xad, 0xbe, 0xef, 0, 0], 2).unwrap_err();
        assert!(matches!(err, ConnError::Reply(ReplyError::BadMagic { .. })), "{err:?}");
    }

    #[test]
    fn short_read_reply_is_a_protocol_error() {
        let mode = ReplyMode::Structured;
        let mut c = Conn::new(mode);
        let cookie = c.submit(op(Command::Read, 0, 100), (), &mut Vec::new()).unwrap();
        let mut r = Vec::new();
        encode_read_reply_header(&mut r, mode, cookie, 0, 50);
        r.extend_from_slice(&[0u8; 50]);
        let err = feed_all(&mut c, &r, 7).unwrap_err();
        assert_eq!(err, ConnError::IncompleteRead { cookie, covered: 50, length: 100 });
    }

    #[test]
    fn into_tags_returns_unanswered_requests_in_order() {
        let mut c = Conn::new(ReplyMode::Extended);
        let mut out = Vec::new();
        let cookies: Vec<u64> = (0..5).map(|i| c.submit(op(Command::Flush, 0, 0), i, &mut out).unwrap()).collect();
        let mut r = Vec::new();
        encode_done(&mut r, ReplyMode::Extended, cookies[2], 0);
        let done = feed_all(&mut c, &r, 100).unwrap();
        assert_eq!(done[0].tag, 2);
        assert_eq!(c.into_tags(), vec![0, 1, 3, 4]);
    }

    #[test]
    fn error_chunk_fails_only_its_request() {
        let mode = ReplyMode::Structured;
        let mut c = Conn::new(mode);
        let a = c.submit(op(Command::Write, 0, 0), 'a', &mut Vec::new()).unwrap();
        let b = c.submit(op(Command::Flush, 0, 0), 'b', &mut Vec::new()).unwrap();
        let mut r = Vec::new();
        encode_error(&mut r, mode, a, 0, NBD_ENOSPC, "disk full");
        encode_done(&mut r, mode, b, 0);
        let done = feed_all(&mut c, &r, 9).unwrap();
        assert_eq!(done[0].result, Err(RequestFailed { errno: NBD_ENOSPC, message: "disk full".into() }));
        assert_eq!(done[1].result, Ok(Reply::Done));
    }

    proptest! {
        /// Replies from nbd-proto's server-side encoders, fed in arbitrary pieces, complete
        /// each request with the right data, extents or error.
        #[test]
        fn replies_from_server_encoders(
            mode in modes(),
            reqs in proptest::collection::vec((0u8..4, 0u64..1 << 40, 1usize..300, any::<u64>()), 1..12),
            step in 1usize..100,
            direct in any::<bool>(),
        ) {
            let mut c = Conn::new(mode);
            let mut replies = Vec::new();
            let mut want = Vec::new();
            for (i, &(kind, offset, len, seed)) in reqs.iter().enumerate() {
                let kind = if mode == ReplyMode::Simple && kind == 2 { 0 } else { kind };
                let command = match kind { 0 => Command::Read, 1 => Command::Flush, 2 => Command::BlockStatus, _ => Command::Trim };
                let cookie = c.submit(op(command, offset, len as u64), i, &mut Vec::new()).unwrap();
                let expected = match kind {
                    0 => {
                        let data: Vec<u8> = (0..len).map(|j| (seed as usize).wrapping_add(j) as u8).collect();
                        encode_read_reply_header(&mut replies, mode, cookie, offset, len as u64);
                        replies.extend_from_slice(&data);
                        Ok(Reply::Data(data))
                    }
                    1 => {
                        encode_done(&mut replies, mode, cookie, offset);
                        Ok(Reply::Done)
                    }
                    2 => {
                        let extents = vec![Extent { length: len as u64, flags: seed & 3 }];
                        encode_block_status(&mut replies, mode, cookie, offset, 1, &extents);
                        Ok(Reply::Extents(extents))
                    }
                    _ => {
                        encode_error(&mut replies, mode, cookie, offset, NBD_EINVAL, "nope");
                        let message = if mode == ReplyMode::Simple { wire_error_name(NBD_EINVAL).to_string() } else { "nope".into() };
                        Err(RequestFailed { errno: NBD_EINVAL, message })
                    }
                };
                want.push((i, expected));
            }
            let done = if direct { feed_direct(&mut c, &replies, step) } else { feed_all(&mut c, &replies, step).unwrap() };
            let got: Vec<_> = done.into_iter().map(|d| (d.tag, d.result)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(c.in_flight(), 0);
        }

        /// Garbage never panics; it is either a protocol error or an incomplete message.
        #[test]
        fn garbage_never_panics(mode in modes(), bytes in proptest::collection::vec(any::<u8>(), 0..200), step in 1usize..50) {
            let mut c = Conn::new(mode);
            let mut out = Vec::new();
            for i in 1..4u64 {
                c.submit(op(Command::Read, 0, 64 * i), (), &mut out).unwrap();
            }
            let _ = feed_all(&mut c, &bytes, step);
        }
    }
}
