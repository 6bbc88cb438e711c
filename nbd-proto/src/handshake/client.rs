//! Client side of the fixed-newstyle handshake, as a sans-IO state machine.
//!
//! The client asks for the best the server offers and falls back step by step: extended
//! headers, else structured replies, else simple replies; `base:allocation` when wanted and
//! possible; `NBD_OPT_GO`, else `NBD_OPT_EXPORT_NAME` for servers that predate it. A listing
//! session sends `NBD_OPT_LIST` and then `NBD_OPT_ABORT`.

use thiserror::Error;

use crate::consts::*;
use crate::option::*;
use crate::transmission::ReplyMode;
use crate::wire::{be_u16, be_u64, put_u32, Decode};

/// What the client wants from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Export to open (empty: the server's default export).
    pub export: String,
    pub structured: bool,
    pub extended: bool,
    /// Select `base:allocation` for block status (needs structured replies).
    pub base_allocation: bool,
    /// List the exports instead of opening one.
    pub list: bool,
    /// Send `NBD_OPT_STARTTLS` first: the driver upgrades the socket when the handshake
    /// returns [`ClientStatus::StartTls`], then calls [`ClientHandshake::tls_started`].
    pub starttls: bool,
}

impl ClientConfig {
    /// Opens `export` with every feature this implementation knows.
    pub fn open(export: impl Into<String>) -> Self {
        Self {
            export: export.into(),
            structured: true,
            extended: true,
            base_allocation: true,
            list: false,
            starttls: false,
        }
    }
    /// Lists the server's exports.
    pub fn listing() -> Self {
        Self {
            export: String::new(),
            structured: false,
            extended: false,
            base_allocation: false,
            list: true,
            starttls: false,
        }
    }
}

/// What the client learned about the export it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientNegotiated {
    pub size: u64,
    pub flags: u16,
    pub mode: ReplyMode,
    pub base_allocation: Option<u32>,
    /// (minimum, preferred, maximum) when the server sent them.
    pub block_size: Option<(u32, u32, u32)>,
    pub name: Option<String>,
    pub description: Option<String>,
}

/// What the driver must do next (after writing any pending output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStatus {
    Continue,
    /// The transmission phase starts with the next byte.
    Done(ClientNegotiated),
    /// The listing is complete (an `NBD_OPT_ABORT` is in the output; close after sending it).
    Listed(Vec<ServerEntry>),
    /// The server accepted `NBD_OPT_STARTTLS`: run the TLS handshake on the socket (nothing
    /// else may be sent or read in plain text), then call [`ClientHandshake::tls_started`]
    /// and keep feeding the decrypted bytes.
    StartTls,
}

/// The handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    #[error("not an NBD server: bad greeting magic")]
    BadGreeting,
    #[error("the server does not speak fixed-newstyle negotiation")]
    NotFixedNewstyle,
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("the server refused option {option}: {reason} ({message})", reason = reply_name(*kind))]
    Refused { option: u32, kind: u32, message: String },
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
}

/// Name of an option reply type, for messages.
pub fn reply_name(kind: u32) -> &'static str {
    match kind {
        NBD_REP_ERR_UNSUP => "unsupported",
        NBD_REP_ERR_POLICY => "refused by policy",
        NBD_REP_ERR_INVALID => "invalid",
        NBD_REP_ERR_PLATFORM => "not available on this platform",
        NBD_REP_ERR_TLS_REQD => "TLS required",
        NBD_REP_ERR_UNKNOWN => "no such export",
        NBD_REP_ERR_SHUTDOWN => "server shutting down",
        NBD_REP_ERR_BLOCK_SIZE_REQD => "block size negotiation required",
        NBD_REP_ERR_TOO_BIG => "too big",
        NBD_REP_ERR_EXT_HEADER_REQD => "extended headers required",
        _ => "error",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    StartTls,
    Extended,
    Structured,
    SetMeta,
    Go,
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Reply(Step),
    ExportNameReply,
    /// STARTTLS was accepted; waiting for the driver to bring TLS up.
    TlsPending,
    Finished,
}

/// Client-side handshake state machine.
#[derive(Debug)]
pub struct ClientHandshake {
    cfg: ClientConfig,
    state: State,
    out: Vec<u8>,
    no_zeroes: bool,
    result: ClientNegotiated,
    listed: Vec<ServerEntry>,
}

impl ClientHandshake {
    pub fn new(cfg: ClientConfig) -> Self {
        let result = ClientNegotiated {
            size: 0,
            flags: 0,
            mode: ReplyMode::Simple,
            base_allocation: None,
            block_size: None,
            name: None,
            description: None,
        };
        Self { cfg, state: State::Greeting, out: Vec::new(), no_zeroes: false, result, listed: Vec::new() }
    }

    /// Takes the bytes to send, leaving the output empty.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Consumes whole messages from `input`; see [`crate::ServerHandshake::feed`].
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, ClientStatus), ClientError> {
        let mut used = 0;
        loop {
            let buf = &input[used..];
            match self.state {
                State::Finished => return Err(ClientError::Protocol("data after the handshake ended".into())),
                State::TlsPending => {
                    if buf.is_empty() {
                        return Ok((used, ClientStatus::Continue));
                    }
                    return Err(ClientError::Protocol("plain-text data from the server after STARTTLS".into()));
                }
                State::Greeting => {
                    if buf.len() < 18 {
                        return Ok((used, ClientStatus::Continue));
                    }
                    if be_u64(buf, 0) != NBD_MAGIC || be_u64(buf, 8) != NBD_IHAVEOPT {
                        return Err(ClientError::BadGreeting);
                    }
                    let flags = be_u16(buf, 16);
                    used += 18;
                    if flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
                        return Err(ClientError::NotFixedNewstyle);
                    }
                    self.no_zeroes = flags & NBD_FLAG_NO_ZEROES != 0;
                    let mut cflags = NBD_FLAG_C_FIXED_NEWSTYLE;
                    if self.no_zeroes {
                        cflags |= NBD_FLAG_C_NO_ZEROES;
                    }
                    put_u32(&mut self.out, cflags);
                    if self.cfg.starttls {
                        self.send(Step::StartTls);
                        continue;
                    }
                    self.first_step();
                }
                State::ExportNameReply => {
                    let need = if self.no_zeroes { 10 } else { 134 };
                    if buf.len() < need {
                        return Ok((used, ClientStatus::Continue));
                    }
                    used += need;
                    self.result.size = be_u64(buf, 0);
                    self.result.flags = be_u16(buf, 8);
                    self.state = State::Finished;
                    return Ok((used, ClientStatus::Done(self.result.clone())));
                }
                State::Reply(step) => {
                    let hdr = match decode_option_reply_header(buf)? {
                        Decode::Done { value, .. } => value,
                        Decode::NeedMore { .. } => return Ok((used, ClientStatus::Continue)),
                    };
                    let total = OPTION_REPLY_HEADER_SIZE + hdr.length as usize;
                    if buf.len() < total {
                        return Ok((used, ClientStatus::Continue));
                    }
                    used += total;
                    let data = &buf[OPTION_REPLY_HEADER_SIZE..total];
                    if hdr.option != step_option(step) {
                        return Err(ClientError::Protocol(format!(
                            "reply for option {} while waiting for option {}",
                            hdr.option,
                            step_option(step)
                        )));
                    }
                    if let Some(status) = self.reply(step, hdr.kind, data)? {
                        return Ok((used, status));
                    }
                }
            }
        }
    }

    /// Tells the handshake that the socket now runs TLS: option haggling starts over.
    /// Does nothing unless the handshake returned [`ClientStatus::StartTls`].
    pub fn tls_started(&mut self) {
        if self.state == State::TlsPending {
            self.first_step();
        }
    }

    fn first_step(&mut self) {
        let first = if self.cfg.list {
            Step::List
        } else if self.cfg.extended {
            Step::Extended
        } else if self.cfg.structured {
            Step::Structured
        } else {
            Step::Go
        };
        self.send(first);
    }

    fn send(&mut self, step: Step) {
        let mut data = Vec::new();
        match step {
            Step::StartTls | Step::Extended | Step::Structured | Step::List => {}
            Step::SetMeta => {
                MetaContextRequest { export: self.cfg.export.clone(), queries: vec![BASE_ALLOCATION.into()] }
                    .encode(&mut data)
            }
            Step::Go => InfoRequest {
                name: self.cfg.export.clone(),
                infos: vec![NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE],
            }
            .encode(&mut data),
        }
        encode_option(&mut self.out, step_option(step), &data);
        self.state = State::Reply(step);
    }

    /// Handles one option reply; `Some` ends the handshake.
    fn reply(&mut self, step: Step, kind: u32, data: &[u8]) -> Result<Option<ClientStatus>, ClientError> {
        let is_err = kind & NBD_REP_FLAG_ERROR != 0;
        let message = || String::from_utf8_lossy(data).into_owned();
        match step {
            Step::StartTls => match kind {
                NBD_REP_ACK => {
                    // Nothing more until the driver has TLS up (tls_started sends the next step).
                    self.state = State::TlsPending;
                    return Ok(Some(ClientStatus::StartTls));
                }
                _ if is_err => {
                    return Err(ClientError::Refused { option: NBD_OPT_STARTTLS, kind, message: message() });
                }
                _ => return Err(ClientError::Protocol(format!("unexpected reply {kind:#x} to NBD_OPT_STARTTLS"))),
            },
            Step::Extended | Step::Structured => {
                if kind == NBD_REP_ACK {
                    self.result.mode = if step == Step::Extended { ReplyMode::Extended } else { ReplyMode::Structured };
                } else if !is_err {
                    return Err(ClientError::Protocol(format!("unexpected reply {kind:#x} to a header option")));
                }
                let next = if step == Step::Extended && is_err && self.cfg.structured {
                    Step::Structured
                } else if self.result.mode != ReplyMode::Simple && self.cfg.base_allocation {
                    Step::SetMeta
                } else {
                    Step::Go
                };
                self.send(next);
            }
            Step::SetMeta => match kind {
                NBD_REP_META_CONTEXT => {
                    let ctx = MetaContext::decode(data)?;
                    if ctx.name == BASE_ALLOCATION {
                        self.result.base_allocation = Some(ctx.id);
                    }
                }
                NBD_REP_ACK => self.send(Step::Go),
                _ if is_err => {
                    self.result.base_allocation = None;
                    self.send(Step::Go);
                }
                _ => return Err(ClientError::Protocol(format!("unexpected reply {kind:#x} to SET_META_CONTEXT"))),
            },
            Step::Go => match kind {
                NBD_REP_INFO => match Info::decode(data)? {
                    Info::Export { size, flags } => {
                        self.result.size = size;
                        self.result.flags = flags;
                    }
                    Info::Name(n) => self.result.name = Some(n),
                    Info::Description(d) => self.result.description = Some(d),
                    Info::BlockSize { minimum, preferred, maximum } => {
                        self.result.block_size = Some((minimum, preferred, maximum))
                    }
                    Info::Unknown { .. } => {}
                },
                NBD_REP_ACK => {
                    if self.result.flags & NBD_FLAG_HAS_FLAGS == 0 {
                        return Err(ClientError::Protocol("NBD_OPT_GO succeeded without NBD_INFO_EXPORT".into()));
                    }
                    self.state = State::Finished;
                    return Ok(Some(ClientStatus::Done(self.result.clone())));
                }
                NBD_REP_ERR_UNSUP => {
                    // An old server: fall back to NBD_OPT_EXPORT_NAME (no error path left).
                    encode_option(&mut self.out, NBD_OPT_EXPORT_NAME, self.cfg.export.as_bytes());
                    self.state = State::ExportNameReply;
                }
                _ if is_err => {
                    return Err(ClientError::Refused { option: NBD_OPT_GO, kind, message: message() });
                }
                _ => return Err(ClientError::Protocol(format!("unexpected reply {kind:#x} to NBD_OPT_GO"))),
            },
            Step::List => match kind {
                NBD_REP_SERVER => self.listed.push(ServerEntry::decode(data)?),
                NBD_REP_ACK => {
                    encode_option(&mut self.out, NBD_OPT_ABORT, &[]);
                    self.state = State::Finished;
                    return Ok(Some(ClientStatus::Listed(std::mem::take(&mut self.listed))));
                }
                _ if is_err => {
                    return Err(ClientError::Refused { option: NBD_OPT_LIST, kind, message: message() });
                }
                _ => return Err(ClientError::Protocol(format!("unexpected reply {kind:#x} to NBD_OPT_LIST"))),
            },
        }
        Ok(None)
    }
}

fn step_option(step: Step) -> u32 {
    match step {
        Step::StartTls => NBD_OPT_STARTTLS,
        Step::Extended => NBD_OPT_EXTENDED_HEADERS,
        Step::Structured => NBD_OPT_STRUCTURED_REPLY,
        Step::SetMeta => NBD_OPT_SET_META_CONTEXT,
        Step::Go => NBD_OPT_GO,
        Step::List => NBD_OPT_LIST,
    }
}
