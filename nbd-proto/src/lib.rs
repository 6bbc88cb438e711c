//! Sans-IO implementation of the NBD protocol (fixed-newstyle handshake and transmission),
//! shared by the export server (`gnbd-serv`) and the client (`gnbd-client`).
//!
//! Nothing here touches a socket or a file. Decoders take the bytes received so far and
//! answer [`Decode::NeedMore`] or a value; encoders append to a `Vec<u8>`; the handshakes are
//! state machines fed with bytes that produce bytes to send and a status telling the driver
//! what to do next.
//!
//! - [`consts`]: the spec's constants, and [`wire_error_from_errno`], the one mapping from
//!   local errors to the error values allowed on the wire;
//! - [`ServerHandshake`] / [`ClientHandshake`]: option haggling for either side;
//! - [`decode_request`], [`encode_read_reply_header`], [`encode_error`], [`encode_block_status`]
//!   and friends: the transmission phase.
//!
//! The byte-by-byte layout of every message is in `docs/wire.md`.
//!
//! ```
//! use nbd_proto::{ClientConfig, ClientHandshake, ClientStatus};
//! let mut client = ClientHandshake::new(ClientConfig::open("disk0"));
//! // Feed it the server's greeting: NBDMAGIC, IHAVEOPT, flags FIXED_NEWSTYLE|NO_ZEROES.
//! let mut greeting = b"NBDMAGICIHAVEOPT".to_vec();
//! greeting.extend_from_slice(&3u16.to_be_bytes());
//! let (used, status) = client.feed(&greeting).unwrap();
//! assert_eq!((used, status), (18, ClientStatus::Continue));
//! // The client flags and its first option are now ready to send.
//! assert!(client.take_output().len() > 4);
//! ```
#![forbid(unsafe_code)]

pub mod consts;
mod handshake;
mod option;
mod transmission;
mod wire;

pub use consts::{wire_error_from_errno, wire_error_name};
pub use handshake::client::{reply_name, ClientConfig, ClientError, ClientHandshake, ClientNegotiated, ClientStatus};
pub use handshake::server::{
    ExportCatalog, ExportInfo, HandshakeError, Negotiated, Refusal, ServerConfig, ServerHandshake, ServerStatus,
    TlsPolicy, BASE_ALLOCATION_ID,
};
pub use option::{
    decode_option_header, decode_option_reply_header, encode_option, encode_option_error, encode_option_reply, Info,
    InfoRequest, MetaContext, MetaContextRequest, OptionError, OptionHeader, OptionReplyHeader, ServerEntry,
    OPTION_HEADER_SIZE, OPTION_REPLY_HEADER_SIZE,
};
pub use transmission::{
    decode_chunk, decode_reply_header, decode_request, encode_block_status, encode_chunk_header, encode_done,
    encode_error, encode_read_reply_header, encode_request, encode_simple_reply, Chunk, Command, Extent, ReplyError,
    ReplyHeader, ReplyMode, Request, RequestError,
};
pub use wire::Decode;
