//! Transmission phase: request headers (compact and extended), simple replies, structured and
//! extended reply chunks, and the chunk payloads (data, hole, block status, errors).
//!
//! Decoders take the bytes received so far and return [`Decode::NeedMore`] until a whole
//! header is present; they never look at a write payload (the caller moves those bytes
//! wherever they belong, which lets a server receive them straight into an I/O buffer).

use thiserror::Error;

use crate::consts::*;
use crate::wire::{be_u16, be_u32, be_u64, put_u16, put_u32, put_u64, Decode, Reader};

/// A transmission-phase command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Resize,
    /// A type this implementation does not know; a server answers it with `EINVAL`.
    Other(u16),
}

impl From<u16> for Command {
    fn from(v: u16) -> Self {
        match v {
            NBD_CMD_READ => Command::Read,
            NBD_CMD_WRITE => Command::Write,
            NBD_CMD_DISC => Command::Disc,
            NBD_CMD_FLUSH => Command::Flush,
            NBD_CMD_TRIM => Command::Trim,
            NBD_CMD_CACHE => Command::Cache,
            NBD_CMD_WRITE_ZEROES => Command::WriteZeroes,
            NBD_CMD_BLOCK_STATUS => Command::BlockStatus,
            NBD_CMD_RESIZE => Command::Resize,
            other => Command::Other(other),
        }
    }
}

impl From<Command> for u16 {
    fn from(c: Command) -> u16 {
        match c {
            Command::Read => NBD_CMD_READ,
            Command::Write => NBD_CMD_WRITE,
            Command::Disc => NBD_CMD_DISC,
            Command::Flush => NBD_CMD_FLUSH,
            Command::Trim => NBD_CMD_TRIM,
            Command::Cache => NBD_CMD_CACHE,
            Command::WriteZeroes => NBD_CMD_WRITE_ZEROES,
            Command::BlockStatus => NBD_CMD_BLOCK_STATUS,
            Command::Resize => NBD_CMD_RESIZE,
            Command::Other(v) => v,
        }
    }
}

/// A request header. For `Write` (and, with `NBD_CMD_FLAG_PAYLOAD_LEN`, other commands in
/// extended mode) `length` payload bytes follow the header on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    /// The client's handle (the spec's newer name for it is "cookie").
    pub cookie: u64,
    pub offset: u64,
    /// Compact headers carry 32 bits; extended headers 64.
    pub length: u64,
}

impl Request {
    /// Number of payload bytes that follow this header on the wire.
    pub fn payload_len(&self) -> u64 {
        if self.command == Command::Write || self.flags & NBD_CMD_FLAG_PAYLOAD_LEN != 0 {
            self.length
        } else {
            0
        }
    }
}

/// Which reply framing the session negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyMode {
    /// Neither structured replies nor extended headers: simple replies only.
    Simple,
    /// `NBD_OPT_STRUCTURED_REPLY`: 20-byte chunk headers (simple replies allowed without payload).
    Structured,
    /// `NBD_OPT_EXTENDED_HEADERS`: 32-byte request and reply headers, 64-bit lengths.
    Extended,
}

impl ReplyMode {
    /// Whether requests use the 32-byte extended header.
    pub fn extended(self) -> bool {
        self == ReplyMode::Extended
    }
    /// Size of a request header in this mode.
    pub fn request_size(self) -> usize {
        if self.extended() {
            EXTENDED_REQUEST_SIZE
        } else {
            REQUEST_SIZE
        }
    }
}

/// A request header that cannot be processed: the only safe answer is to disconnect.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("bad request magic {found:#010x} (expected {expected:#010x}); the stream is out of sync")]
    BadMagic { found: u32, expected: u32 },
}

/// Decodes one request header from the start of `buf`.
pub fn decode_request(buf: &[u8], mode: ReplyMode) -> Result<Decode<Request>, RequestError> {
    let (size, expected) = if mode.extended() {
        (EXTENDED_REQUEST_SIZE, NBD_EXTENDED_REQUEST_MAGIC)
    } else {
        (REQUEST_SIZE, NBD_REQUEST_MAGIC)
    };
    // Check the magic as soon as it is complete so garbage is refused without waiting.
    if buf.len() >= 4 {
        let found = be_u32(buf, 0);
        if found != expected {
            return Err(RequestError::BadMagic { found, expected });
        }
    }
    if buf.len() < size {
        return Ok(Decode::NeedMore { needed: size - buf.len() });
    }
    let length = if mode.extended() { be_u64(buf, 24) } else { u64::from(be_u32(buf, 24)) };
    Ok(Decode::Done {
        value: Request {
            flags: be_u16(buf, 4),
            command: Command::from(be_u16(buf, 6)),
            cookie: be_u64(buf, 8),
            offset: be_u64(buf, 16),
            length,
        },
        consumed: size,
    })
}

/// Encodes a request header (not its payload). In compact mode `length` must fit 32 bits.
pub fn encode_request(out: &mut Vec<u8>, req: &Request, mode: ReplyMode) {
    if mode.extended() {
        put_u32(out, NBD_EXTENDED_REQUEST_MAGIC);
    } else {
        put_u32(out, NBD_REQUEST_MAGIC);
    }
    put_u16(out, req.flags);
    put_u16(out, req.command.into());
    put_u64(out, req.cookie);
    put_u64(out, req.offset);
    if mode.extended() {
        put_u64(out, req.length);
    } else {
        debug_assert!(req.length <= u64::from(u32::MAX), "compact request length over 32 bits");
        put_u32(out, req.length as u32);
    }
}

/// Encodes a simple reply header (16 bytes). For a successful simple-mode READ the data follows.
pub fn encode_simple_reply(out: &mut Vec<u8>, cookie: u64, error: u32) {
    put_u32(out, NBD_SIMPLE_REPLY_MAGIC);
    put_u32(out, error);
    put_u64(out, cookie);
}

/// Encodes a structured (20-byte) or extended (32-byte) chunk header.
///
/// In `Structured` mode `payload_len` must fit 32 bits and `offset` is not sent.
pub fn encode_chunk_header(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    payload_len: u64,
) {
    if mode.extended() {
        put_u32(out, NBD_EXTENDED_REPLY_MAGIC);
        put_u16(out, flags);
        put_u16(out, kind);
        put_u64(out, cookie);
        put_u64(out, offset);
        put_u64(out, payload_len);
    } else {
        debug_assert!(payload_len <= u64::from(u32::MAX));
        put_u32(out, NBD_STRUCTURED_REPLY_MAGIC);
        put_u16(out, flags);
        put_u16(out, kind);
        put_u64(out, cookie);
        put_u32(out, payload_len as u32);
    }
}

/// Encodes everything that precedes `len` bytes of read data in a successful READ reply:
/// a simple reply header, or one final `OFFSET_DATA` chunk header plus its offset field.
pub fn encode_read_reply_header(out: &mut Vec<u8>, mode: ReplyMode, cookie: u64, offset: u64, len: u64) {
    match mode {
        ReplyMode::Simple => encode_simple_reply(out, cookie, 0),
        ReplyMode::Structured | ReplyMode::Extended => {
            encode_chunk_header(out, mode, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie, offset, len + 8);
            put_u64(out, offset);
        }
    }
}

/// Encodes the successful completion of a request that carries no data.
pub fn encode_done(out: &mut Vec<u8>, mode: ReplyMode, cookie: u64, offset: u64) {
    match mode {
        ReplyMode::Simple | ReplyMode::Structured => encode_simple_reply(out, cookie, 0),
        ReplyMode::Extended => {
            encode_chunk_header(out, mode, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, offset, 0)
        }
    }
}

/// Encodes a final error reply: a simple reply in simple mode, otherwise an `ERROR` chunk
/// carrying `message` (cut to the spec's string limit at a character boundary).
pub fn encode_error(out: &mut Vec<u8>, mode: ReplyMode, cookie: u64, offset: u64, error: u32, message: &str) {
    match mode {
        ReplyMode::Simple => encode_simple_reply(out, cookie, error),
        ReplyMode::Structured | ReplyMode::Extended => {
            let msg = truncate_str(message, NBD_MAX_STRING);
            encode_chunk_header(
                out,
                mode,
                NBD_REPLY_FLAG_DONE,
                NBD_REPLY_TYPE_ERROR,
                cookie,
                offset,
                6 + msg.len() as u64,
            );
            put_u32(out, error);
            put_u16(out, msg.len() as u16);
            out.extend_from_slice(msg.as_bytes());
        }
    }
}

pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One extent of a block-status reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    /// `NBD_STATE_*` bits for `base:allocation`.
    pub flags: u64,
}

/// Encodes a final block-status chunk for one metadata context: `BLOCK_STATUS` (32-bit
/// extents) in structured mode, `BLOCK_STATUS_EXT` in extended mode. In structured mode every
/// extent length and flag word must fit 32 bits (the caller splits longer extents).
/// Block status needs a chunked mode; in simple mode nothing is written.
pub fn encode_block_status(
    out: &mut Vec<u8>,
    mode: ReplyMode,
    cookie: u64,
    offset: u64,
    context_id: u32,
    extents: &[Extent],
) {
    match mode {
        ReplyMode::Simple => debug_assert!(false, "block status needs structured replies"),
        ReplyMode::Structured => {
            let len = 4 + 8 * extents.len() as u64;
            encode_chunk_header(out, mode, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, offset, len);
            put_u32(out, context_id);
            for e in extents {
                debug_assert!(e.length <= u64::from(u32::MAX) && e.flags <= u64::from(u32::MAX));
                put_u32(out, e.length as u32);
                put_u32(out, e.flags as u32);
            }
        }
        ReplyMode::Extended => {
            let len = 8 + 16 * extents.len() as u64;
            encode_chunk_header(out, mode, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, cookie, offset, len);
            put_u32(out, context_id);
            put_u32(out, extents.len() as u32);
            for e in extents {
                put_u64(out, e.length);
                put_u64(out, e.flags);
            }
        }
    }
}

/// A reply header as a client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// Simple reply; for a successful READ the request's length of data follows.
    Simple { cookie: u64, error: u32 },
    /// Structured or extended chunk; `length` payload bytes follow. `offset` is 0 for
    /// structured chunks (their header has no offset field).
    Chunk { flags: u16, kind: u16, cookie: u64, offset: u64, length: u64 },
}

/// A reply that a client cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("bad reply magic {found:#010x} for a {mode:?} session")]
    BadMagic { found: u32, mode: ReplyMode },
    #[error("malformed {what} chunk: {why}")]
    Malformed { what: &'static str, why: &'static str },
}

/// Decodes one reply header from the start of `buf`.
pub fn decode_reply_header(buf: &[u8], mode: ReplyMode) -> Result<Decode<ReplyHeader>, ReplyError> {
    if buf.len() < 4 {
        return Ok(Decode::NeedMore { needed: 4 - buf.len() });
    }
    let magic = be_u32(buf, 0);
    let need = |n: usize| Decode::NeedMore { needed: n - buf.len() };
    match (magic, mode) {
        (NBD_SIMPLE_REPLY_MAGIC, ReplyMode::Simple | ReplyMode::Structured) => {
            if buf.len() < SIMPLE_REPLY_SIZE {
                return Ok(need(SIMPLE_REPLY_SIZE));
            }
            Ok(Decode::Done {
                value: ReplyHeader::Simple { error: be_u32(buf, 4), cookie: be_u64(buf, 8) },
                consumed: SIMPLE_REPLY_SIZE,
            })
        }
        (NBD_STRUCTURED_REPLY_MAGIC, ReplyMode::Structured) => {
            if buf.len() < STRUCTURED_REPLY_SIZE {
                return Ok(need(STRUCTURED_REPLY_SIZE));
            }
            Ok(Decode::Done {
                value: ReplyHeader::Chunk {
                    flags: be_u16(buf, 4),
                    kind: be_u16(buf, 6),
                    cookie: be_u64(buf, 8),
                    offset: 0,
                    length: u64::from(be_u32(buf, 16)),
                },
                consumed: STRUCTURED_REPLY_SIZE,
            })
        }
        (NBD_EXTENDED_REPLY_MAGIC, ReplyMode::Extended) => {
            if buf.len() < EXTENDED_REPLY_SIZE {
                return Ok(need(EXTENDED_REPLY_SIZE));
            }
            Ok(Decode::Done {
                value: ReplyHeader::Chunk {
                    flags: be_u16(buf, 4),
                    kind: be_u16(buf, 6),
                    cookie: be_u64(buf, 8),
                    offset: be_u64(buf, 16),
                    length: be_u64(buf, 24),
                },
                consumed: EXTENDED_REPLY_SIZE,
            })
        }
        (found, mode) => Err(ReplyError::BadMagic { found, mode }),
    }
}

/// The payload of one reply chunk, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk<'a> {
    None,
    OffsetData {
        offset: u64,
        data: &'a [u8],
    },
    OffsetHole {
        offset: u64,
        length: u32,
    },
    BlockStatus {
        context_id: u32,
        extents: Vec<Extent>,
    },
    Error {
        error: u32,
        message: &'a [u8],
        offset: Option<u64>,
    },
    /// A type this implementation does not know (non-error types may be ignored by clients).
    Unknown {
        kind: u16,
    },
}

/// Decodes a complete chunk payload of the given type.
pub fn decode_chunk(kind: u16, payload: &[u8], mode: ReplyMode) -> Result<Chunk<'_>, ReplyError> {
    let bad = |what, why| ReplyError::Malformed { what, why };
    let mut r = Reader::new(payload);
    match kind {
        NBD_REPLY_TYPE_NONE => {
            if !payload.is_empty() {
                return Err(bad("NONE", "payload must be empty"));
            }
            Ok(Chunk::None)
        }
        NBD_REPLY_TYPE_OFFSET_DATA => {
            let offset = r.u64().ok_or(bad("OFFSET_DATA", "shorter than its offset field"))?;
            let data = r.rest();
            if data.is_empty() {
                return Err(bad("OFFSET_DATA", "no data"));
            }
            Ok(Chunk::OffsetData { offset, data })
        }
        NBD_REPLY_TYPE_OFFSET_HOLE => {
            let offset = r.u64().ok_or(bad("OFFSET_HOLE", "too short"))?;
            let length = r.u32().ok_or(bad("OFFSET_HOLE", "too short"))?;
            if r.remaining() != 0 || length == 0 {
                return Err(bad("OFFSET_HOLE", "wrong length or empty hole"));
            }
            Ok(Chunk::OffsetHole { offset, length })
        }
        NBD_REPLY_TYPE_BLOCK_STATUS if mode == ReplyMode::Structured => {
            let context_id = r.u32().ok_or(bad("BLOCK_STATUS", "too short"))?;
            if r.remaining() == 0 || !r.remaining().is_multiple_of(8) {
                return Err(bad("BLOCK_STATUS", "extents are not a non-empty multiple of 8 bytes"));
            }
            let mut extents = Vec::with_capacity(r.remaining() / 8);
            while r.remaining() > 0 {
                let length = u64::from(r.u32().ok_or(bad("BLOCK_STATUS", "truncated"))?);
                let flags = u64::from(r.u32().ok_or(bad("BLOCK_STATUS", "truncated"))?);
                extents.push(Extent { length, flags });
            }
            Ok(Chunk::BlockStatus { context_id, extents })
        }
        NBD_REPLY_TYPE_BLOCK_STATUS_EXT if mode == ReplyMode::Extended => {
            let context_id = r.u32().ok_or(bad("BLOCK_STATUS_EXT", "too short"))?;
            let count = r.u32().ok_or(bad("BLOCK_STATUS_EXT", "too short"))? as usize;
            if count == 0 || r.remaining() != count.saturating_mul(16) {
                return Err(bad("BLOCK_STATUS_EXT", "descriptor count does not match length"));
            }
            let mut extents = Vec::with_capacity(count);
            for _ in 0..count {
                let length = r.u64().ok_or(bad("BLOCK_STATUS_EXT", "truncated"))?;
                let flags = r.u64().ok_or(bad("BLOCK_STATUS_EXT", "truncated"))?;
                extents.push(Extent { length, flags });
            }
            Ok(Chunk::BlockStatus { context_id, extents })
        }
        NBD_REPLY_TYPE_BLOCK_STATUS | NBD_REPLY_TYPE_BLOCK_STATUS_EXT => {
            Err(bad("BLOCK_STATUS", "type does not match the negotiated header mode"))
        }
        NBD_REPLY_TYPE_ERROR | NBD_REPLY_TYPE_ERROR_OFFSET => {
            let error = r.u32().ok_or(bad("ERROR", "too short"))?;
            let len = r.u16().ok_or(bad("ERROR", "too short"))? as usize;
            let message = r.bytes(len).ok_or(bad("ERROR", "message longer than payload"))?;
            let offset = if kind == NBD_REPLY_TYPE_ERROR_OFFSET {
                Some(r.u64().ok_or(bad("ERROR_OFFSET", "missing offset"))?)
            } else {
                None
            };
            if r.remaining() != 0 {
                return Err(bad("ERROR", "trailing bytes"));
            }
            if error == 0 {
                return Err(bad("ERROR", "error value is zero"));
            }
            Ok(Chunk::Error { error, message, offset })
        }
        other => Ok(Chunk::Unknown { kind: other }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mode() -> impl Strategy<Value = ReplyMode> {
        prop_oneof![Just(ReplyMode::Simple), Just(ReplyMode::Structured), Just(ReplyMode::Extended)]
    }

    proptest! {
        #[test]
        fn request_round_trip(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u64, m in mode()) {
            let length = if m.extended() { len } else { len & 0xffff_ffff };
            let req = Request { flags, command: Command::from(cmd), cookie, offset, length };
            let mut out = Vec::new();
            encode_request(&mut out, &req, m);
            prop_assert_eq!(out.len(), m.request_size());
            let got = decode_request(&out, m).unwrap().done().unwrap();
            prop_assert_eq!(got, (req, out.len()));
            // Every strict prefix asks for more, never errors or panics.
            for cut in 4..out.len() {
                let more = matches!(decode_request(&out[..cut], m), Ok(Decode::NeedMore { .. }));
                prop_assert!(more);
            }
        }

        #[test]
        fn request_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), m in mode()) {
            let _ = decode_request(&bytes, m);
        }

        #[test]
        fn error_reply_round_trip(cookie: u64, offset: u64, err in 1u32.., msg in "\\PC{0,40}", m in mode()) {
            let mut out = Vec::new();
            encode_error(&mut out, m, cookie, offset, err, &msg);
            let (hdr, used) = decode_reply_header(&out, m).unwrap().done().unwrap();
            match hdr {
                ReplyHeader::Simple { cookie: c, error } => {
                    prop_assert_eq!(m, ReplyMode::Simple);
                    prop_assert_eq!((c, error), (cookie, err));
                }
                ReplyHeader::Chunk { flags, kind, cookie: c, length, .. } => {
                    prop_assert_eq!(c, cookie);
                    prop_assert_eq!(flags, NBD_REPLY_FLAG_DONE);
                    let payload = &out[used..];
                    prop_assert_eq!(payload.len() as u64, length);
                    let chunk = decode_chunk(kind, payload, m).unwrap();
                    prop_assert_eq!(chunk, Chunk::Error { error: err, message: msg.as_bytes(), offset: None });
                }
            }
        }

        #[test]
        fn read_reply_round_trip(cookie: u64, offset: u64, data in proptest::collection::vec(any::<u8>(), 1..64),
                                 m in prop_oneof![Just(ReplyMode::Structured), Just(ReplyMode::Extended)]) {
            let mut out = Vec::new();
            encode_read_reply_header(&mut out, m, cookie, offset, data.len() as u64);
            out.extend_from_slice(&data);
            let (hdr, used) = decode_reply_header(&out, m).unwrap().done().unwrap();
            let ReplyHeader::Chunk { kind, length, .. } = hdr else { panic!("expected a chunk") };
            prop_assert_eq!(length as usize, out.len() - used);
            let chunk = decode_chunk(kind, &out[used..], m).unwrap();
            prop_assert_eq!(chunk, Chunk::OffsetData { offset, data: &data[..] });
        }

        #[test]
        fn block_status_round_trip(cookie: u64, id: u32,
                                   ext in proptest::collection::vec((1u64..=u32::MAX as u64, 0u64..4), 1..20),
                                   m in prop_oneof![Just(ReplyMode::Structured), Just(ReplyMode::Extended)]) {
            let extents: Vec<Extent> = ext.iter().map(|&(length, flags)| Extent { length, flags }).collect();
            let mut out = Vec::new();
            encode_block_status(&mut out, m, cookie, 0, id, &extents);
            let (hdr, used) = decode_reply_header(&out, m).unwrap().done().unwrap();
            let ReplyHeader::Chunk { kind, .. } = hdr else { panic!("expected a chunk") };
            prop_assert_eq!(decode_chunk(kind, &out[used..], m).unwrap(), Chunk::BlockStatus { context_id: id, extents });
        }

        #[test]
        fn chunk_decoder_never_panics(kind: u16, bytes in proptest::collection::vec(any::<u8>(), 0..80), m in mode()) {
            let _ = decode_chunk(kind, &bytes, m);
            let _ = decode_reply_header(&bytes, m);
        }
    }

    #[test]
    fn bad_magic_is_refused_before_the_header_is_complete() {
        let err = decode_request(&[0xde, 0xad, 0xbe, 0xef], ReplyMode::Simple).unwrap_err();
        assert!(matches!(err, RequestError::BadMagic { found: 0xdead_beef, .. }));
        // A compact request in an extended session is out of sync too.
        let mut out = Vec::new();
        let req = Request { flags: 0, command: Command::Read, cookie: 1, offset: 0, length: 512 };
        encode_request(&mut out, &req, ReplyMode::Structured);
        assert!(decode_request(&out, ReplyMode::Extended).is_err());
    }

    #[test]
    fn done_in_extended_mode_is_a_none_chunk() {
        let mut out = Vec::new();
        encode_done(&mut out, ReplyMode::Extended, 7, 4096);
        assert_eq!(out.len(), EXTENDED_REPLY_SIZE);
        let (hdr, _) = decode_reply_header(&out, ReplyMode::Extended).unwrap().done().unwrap();
        assert_eq!(
            hdr,
            ReplyHeader::Chunk {
                flags: NBD_REPLY_FLAG_DONE,
                kind: NBD_REPLY_TYPE_NONE,
                cookie: 7,
                offset: 4096,
                length: 0
            }
        );
    }

    #[test]
    fn long_error_messages_are_cut_at_a_char_boundary() {
        let msg = "é".repeat(3000);
        let mut out = Vec::new();
        encode_error(&mut out, ReplyMode::Structured, 1, 0, NBD_EIO, &msg);
        let (hdr, used) = decode_reply_header(&out, ReplyMode::Structured).unwrap().done().unwrap();
        let ReplyHeader::Chunk { kind, .. } = hdr else { panic!() };
        let Chunk::Error { message, .. } = decode_chunk(kind, &out[used..], ReplyMode::Structured).unwrap() else {
            panic!()
        };
        assert!(message.len() <= NBD_MAX_STRING);
        assert!(std::str::from_utf8(message).is_ok());
    }
}
