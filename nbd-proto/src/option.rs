//! Handshake messages: client options, server option replies, and the bodies of the options
//! and replies this implementation understands (INFO/GO, LIST, meta contexts).

use thiserror::Error;

use crate::consts::*;
use crate::transmission::truncate_str;
use crate::wire::{be_u32, be_u64, put_u16, put_u32, put_u64, Decode, Reader};

/// Size of an option header: magic, option, length.
pub const OPTION_HEADER_SIZE: usize = 16;
/// Size of an option reply header: magic, option, type, length.
pub const OPTION_REPLY_HEADER_SIZE: usize = 20;

/// A malformed handshake message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionError {
    #[error("bad option magic {found:#018x} (expected IHAVEOPT)")]
    BadMagic { found: u64 },
    #[error("bad option reply magic {found:#018x}")]
    BadReplyMagic { found: u64 },
    #[error("{what} is truncated or has a wrong length")]
    BadLength { what: &'static str },
    #[error("{what} is not valid UTF-8 without NUL bytes")]
    BadString { what: &'static str },
}

/// The fixed part of a client option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

pub fn decode_option_header(buf: &[u8]) -> Result<Decode<OptionHeader>, OptionError> {
    if buf.len() >= 8 {
        let found = be_u64(buf, 0);
        if found != NBD_IHAVEOPT {
            return Err(OptionError::BadMagic { found });
        }
    }
    if buf.len() < OPTION_HEADER_SIZE {
        return Ok(Decode::NeedMore { needed: OPTION_HEADER_SIZE - buf.len() });
    }
    Ok(Decode::Done {
        value: OptionHeader { option: be_u32(buf, 8), length: be_u32(buf, 12) },
        consumed: OPTION_HEADER_SIZE,
    })
}

/// Encodes a whole client option.
pub fn encode_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    put_u64(out, NBD_IHAVEOPT);
    put_u32(out, option);
    put_u32(out, data.len() as u32);
    out.extend_from_slice(data);
}

/// The fixed part of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub kind: u32,
    pub length: u32,
}

pub fn decode_option_reply_header(buf: &[u8]) -> Result<Decode<OptionReplyHeader>, OptionError> {
    if buf.len() >= 8 {
        let found = be_u64(buf, 0);
        if found != NBD_REP_MAGIC {
            return Err(OptionError::BadReplyMagic { found });
        }
    }
    if buf.len() < OPTION_REPLY_HEADER_SIZE {
        return Ok(Decode::NeedMore { needed: OPTION_REPLY_HEADER_SIZE - buf.len() });
    }
    Ok(Decode::Done {
        value: OptionReplyHeader { option: be_u32(buf, 8), kind: be_u32(buf, 12), length: be_u32(buf, 16) },
        consumed: OPTION_REPLY_HEADER_SIZE,
    })
}

/// Encodes a whole option reply.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, kind: u32, data: &[u8]) {
    put_u64(out, NBD_REP_MAGIC);
    put_u32(out, option);
    put_u32(out, kind);
    put_u32(out, data.len() as u32);
    out.extend_from_slice(data);
}

/// Encodes an error reply whose payload is a human-readable message.
pub fn encode_option_error(out: &mut Vec<u8>, option: u32, kind: u32, message: &str) {
    encode_option_reply(out, option, kind, truncate_str(message, NBD_MAX_STRING).as_bytes());
}

fn string(bytes: &[u8], what: &'static str) -> Result<String, OptionError> {
    if bytes.len() > NBD_MAX_STRING || bytes.contains(&0) {
        return Err(OptionError::BadString { what });
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| OptionError::BadString { what })
}

/// Body of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

impl InfoRequest {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.name.len() as u32);
        out.extend_from_slice(self.name.as_bytes());
        put_u16(out, self.infos.len() as u16);
        for &i in &self.infos {
            put_u16(out, i);
        }
    }
    pub fn decode(data: &[u8]) -> Result<Self, OptionError> {
        let what = "NBD_OPT_INFO/GO data";
        let mut r = Reader::new(data);
        let name = string(r.string32().ok_or(OptionError::BadLength { what })?, "export name")?;
        let n = r.u16().ok_or(OptionError::BadLength { what })? as usize;
        if r.remaining() != n * 2 {
            return Err(OptionError::BadLength { what });
        }
        let infos = (0..n).map(|_| r.u16().expect("length checked above")).collect();
        Ok(InfoRequest { name, infos })
    }
}

/// Body of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

impl MetaContextRequest {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.export.len() as u32);
        out.extend_from_slice(self.export.as_bytes());
        put_u32(out, self.queries.len() as u32);
        for q in &self.queries {
            put_u32(out, q.len() as u32);
            out.extend_from_slice(q.as_bytes());
        }
    }
    pub fn decode(data: &[u8]) -> Result<Self, OptionError> {
        let what = "meta context request";
        let mut r = Reader::new(data);
        let export = string(r.string32().ok_or(OptionError::BadLength { what })?, "export name")?;
        let n = r.u32().ok_or(OptionError::BadLength { what })?;
        // Each query takes at least 4 bytes: refuse counts the data cannot hold before allocating.
        if n as usize > r.remaining() / 4 {
            return Err(OptionError::BadLength { what });
        }
        let mut queries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            queries.push(string(r.string32().ok_or(OptionError::BadLength { what })?, "meta context query")?);
        }
        if r.remaining() != 0 {
            return Err(OptionError::BadLength { what });
        }
        Ok(MetaContextRequest { export, queries })
    }
}

/// One `NBD_REP_INFO` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export { size: u64, flags: u16 },
    Name(String),
    Description(String),
    BlockSize { minimum: u32, preferred: u32, maximum: u32 },
    Unknown { kind: u16 },
}

impl Info {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Info::Export { size, flags } => {
                put_u16(out, NBD_INFO_EXPORT);
                put_u64(out, *size);
                put_u16(out, *flags);
            }
            Info::Name(s) => {
                put_u16(out, NBD_INFO_NAME);
                out.extend_from_slice(s.as_bytes());
            }
            Info::Description(s) => {
                put_u16(out, NBD_INFO_DESCRIPTION);
                out.extend_from_slice(s.as_bytes());
            }
            Info::BlockSize { minimum, preferred, maximum } => {
                put_u16(out, NBD_INFO_BLOCK_SIZE);
                put_u32(out, *minimum);
                put_u32(out, *preferred);
                put_u32(out, *maximum);
            }
            Info::Unknown { kind } => put_u16(out, *kind),
        }
    }
    pub fn decode(data: &[u8]) -> Result<Self, OptionError> {
        let what = "NBD_REP_INFO";
        let mut r = Reader::new(data);
        let kind = r.u16().ok_or(OptionError::BadLength { what })?;
        let info = match kind {
            NBD_INFO_EXPORT => {
                let size = r.u64().ok_or(OptionError::BadLength { what })?;
                let flags = r.u16().ok_or(OptionError::BadLength { what })?;
                Info::Export { size, flags }
            }
            NBD_INFO_NAME => Info::Name(string(r.rest(), "export name")?),
            NBD_INFO_DESCRIPTION => Info::Description(string(r.rest(), "export description")?),
            NBD_INFO_BLOCK_SIZE => {
                let minimum = r.u32().ok_or(OptionError::BadLength { what })?;
                let preferred = r.u32().ok_or(OptionError::BadLength { what })?;
                let maximum = r.u32().ok_or(OptionError::BadLength { what })?;
                Info::BlockSize { minimum, preferred, maximum }
            }
            kind => {
                r.rest();
                Info::Unknown { kind }
            }
        };
        if r.remaining() != 0 {
            return Err(OptionError::BadLength { what });
        }
        Ok(info)
    }
}

/// `NBD_REP_SERVER` payload: one export of a LIST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    pub name: String,
    pub description: String,
}

impl ServerEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.name.len() as u32);
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(self.description.as_bytes());
    }
    pub fn decode(data: &[u8]) -> Result<Self, OptionError> {
        let mut r = Reader::new(data);
        let name = string(r.string32().ok_or(OptionError::BadLength { what: "NBD_REP_SERVER" })?, "export name")?;
        let description = string(r.rest(), "export description")?;
        Ok(ServerEntry { name, description })
    }
}

/// `NBD_REP_META_CONTEXT` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContext {
    pub id: u32,
    pub name: String,
}

impl MetaContext {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.id);
        out.extend_from_slice(self.name.as_bytes());
    }
    pub fn decode(data: &[u8]) -> Result<Self, OptionError> {
        let mut r = Reader::new(data);
        let id = r.u32().ok_or(OptionError::BadLength { what: "NBD_REP_META_CONTEXT" })?;
        let name = string(r.rest(), "meta context name")?;
        Ok(MetaContext { id, name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn info_request_round_trip(name in "[^\\x00]{0,64}", infos in proptest::collection::vec(any::<u16>(), 0..8)) {
            let req = InfoRequest { name, infos };
            let mut out = Vec::new();
            req.encode(&mut out);
            prop_assert_eq!(InfoRequest::decode(&out).unwrap(), req);
        }

        #[test]
        fn meta_request_round_trip(export in "[^\\x00]{0,32}", queries in proptest::collection::vec("[^\\x00]{0,20}", 0..6)) {
            let req = MetaContextRequest { export, queries };
            let mut out = Vec::new();
            req.encode(&mut out);
            prop_assert_eq!(MetaContextRequest::decode(&out).unwrap(), req);
        }

        #[test]
        fn info_round_trip(size: u64, flags: u16, a: u32, b: u32, c: u32, s in "[^\\x00]{0,32}", pick in 0..4u8) {
            let info = match pick {
                0 => Info::Export { size, flags },
                1 => Info::Name(s),
                2 => Info::Description(s),
                _ => Info::BlockSize { minimum: a, preferred: b, maximum: c },
            };
            let mut out = Vec::new();
            info.encode(&mut out);
            prop_assert_eq!(Info::decode(&out).unwrap(), info);
        }

        #[test]
        fn replies_round_trip(option: u32, kind: u32, data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            encode_option_reply(&mut out, option, kind, &data);
            let (h, used) = decode_option_reply_header(&out).unwrap().done().unwrap();
            prop_assert_eq!(h, OptionReplyHeader { option, kind, length: data.len() as u32 });
            prop_assert_eq!(&out[used..], &data[..]);
            let mut opt = Vec::new();
            encode_option(&mut opt, option, &data);
            let (h, used) = decode_option_header(&opt).unwrap().done().unwrap();
            prop_assert_eq!(h, OptionHeader { option, length: data.len() as u32 });
            prop_assert_eq!(&opt[used..], &data[..]);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = InfoRequest::decode(&bytes);
            let _ = MetaContextRequest::decode(&bytes);
            let _ = Info::decode(&bytes);
            let _ = ServerEntry::decode(&bytes);
            let _ = MetaContext::decode(&bytes);
            let _ = decode_option_header(&bytes);
            let _ = decode_option_reply_header(&bytes);
        }
    }

    #[test]
    fn meta_request_with_absurd_count_is_refused_without_allocating() {
        let mut out = Vec::new();
        put_u32(&mut out, 0);
        put_u32(&mut out, u32::MAX);
        assert!(MetaContextRequest::decode(&out).is_err());
    }
}
