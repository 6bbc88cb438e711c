//! Server side of the fixed-newstyle handshake, as a sans-IO state machine.
//!
//! The driver writes [`ServerHandshake::take_output`] to the socket, feeds every byte it
//! receives to [`ServerHandshake::feed`], and acts on the returned [`ServerStatus`]. Export
//! lookups go through the [`ExportCatalog`] the driver passes in, so the handshake never
//! touches files or sockets itself.

use thiserror::Error;

use crate::consts::*;
use crate::option::*;
use crate::transmission::ReplyMode;
use crate::wire::{put_u16, put_u64, Decode};

/// What the server tells a client about one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Canonical name (the one the default export resolves to for an empty request).
    pub name: String,
    pub description: String,
    pub size: u64,
    /// Transmission flags, `NBD_FLAG_HAS_FLAGS` included. `NBD_FLAG_SEND_DF` is added by the
    /// handshake when structured replies are negotiated.
    pub flags: u16,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
}

/// Why the catalog will not hand out an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such export (`NBD_REP_ERR_UNKNOWN`).
    Unknown,
    /// Refused by policy, e.g. a fenced node (`NBD_REP_ERR_POLICY`), with a reason for the client.
    Policy(String),
    /// The export is only served over TLS (`NBD_REP_ERR_TLS_REQD`).
    TlsRequired,
    /// The server is shutting down (`NBD_REP_ERR_SHUTDOWN`).
    Shutdown,
}

/// The driver's view of its exports, consulted during option haggling.
pub trait ExportCatalog {
    /// Resolves `name` (empty for the default export). `tls` tells whether TLS is active.
    fn lookup(&self, name: &str, tls: bool) -> Result<ExportInfo, Refusal>;
    /// Exports to announce in reply to `NBD_OPT_LIST`.
    fn list(&self, tls: bool) -> Vec<ServerEntry>;
}

/// How this server treats `NBD_OPT_STARTTLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// No TLS: STARTTLS gets `NBD_REP_ERR_POLICY`.
    #[default]
    Off,
    /// TLS available; exports decide whether they need it (SELECTIVETLS).
    Selective,
    /// Every option but STARTTLS and ABORT is refused until TLS is up (FORCEDTLS).
    Required,
}

/// Handshake limits and policy.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    pub tls: TlsPolicy,
    /// Options with longer data get `NBD_REP_ERR_TOO_BIG` at once; their data is then
    /// discarded as it arrives, without being buffered.
    pub max_option_len: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { tls: TlsPolicy::Off, max_option_len: 64 * 1024 }
    }
}

/// The outcome of a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub export: ExportInfo,
    /// Transmission flags as sent to the client.
    pub flags: u16,
    pub mode: ReplyMode,
    /// Context id of `base:allocation` when the client selected it for this export.
    pub base_allocation: Option<u32>,
    pub tls: bool,
}

/// What the driver must do next (after writing any pending output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    /// Waiting for more bytes from the client.
    Continue,
    /// Option haggling finished; the transmission phase starts with the next byte.
    Done(Negotiated),
    /// Start TLS on the socket, call [`ServerHandshake::tls_started`], then keep feeding.
    StartTls,
    /// The client asked to end the session (soft disconnect); close after writing the output.
    Abort,
    /// Hard disconnect: the client broke the protocol or chose an export it cannot have.
    Close(String),
}

/// A handshake that must end at once; the reason is for the log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("client flags {0:#x} include bits this server does not know")]
    UnknownClientFlags(u32),
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("the handshake is already over")]
    Finished,
}

/// Context id this server gives `base:allocation`.
pub const BASE_ALLOCATION_ID: u32 = 1;

#[derive(Debug, Clone, Copy)]
enum State {
    ClientFlags,
    Option,
    /// Discarding the data of an oversized option (already refused).
    Skipping {
        remaining: u32,
    },
    Finished,
}

/// Server-side handshake state machine.
#[derive(Debug)]
pub struct ServerHandshake {
    cfg: ServerConfig,
    state: State,
    out: Vec<u8>,
    no_zeroes: bool,
    mode: ReplyMode,
    tls: bool,
    /// `base:allocation` selected by SET_META_CONTEXT, for the export named here.
    meta: Option<String>,
}

impl ServerHandshake {
    /// A new handshake; its output already holds the server greeting.
    pub fn new(cfg: ServerConfig) -> Self {
        let mut out = Vec::with_capacity(256);
        put_u64(&mut out, NBD_MAGIC);
        put_u64(&mut out, NBD_IHAVEOPT);
        put_u16(&mut out, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        Self { cfg, state: State::ClientFlags, out, no_zeroes: false, mode: ReplyMode::Simple, tls: false, meta: None }
    }

    /// Bytes to send to the client.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Takes the bytes to send, leaving the output empty.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Tells the handshake that the driver has upgraded the socket to TLS. What was
    /// negotiated in plain text (reply mode, meta contexts) is forgotten: the client starts
    /// over inside TLS, so an attacker cannot have chosen it.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.mode = ReplyMode::Simple;
        self.meta = None;
    }

    /// Consumes as much of `input` as forms whole messages. Returns how many bytes were
    /// used and what to do next; unused bytes must be fed again with more data appended.
    pub fn feed(&mut self, input: &[u8], catalog: &dyn ExportCatalog) -> Result<(usize, ServerStatus), HandshakeError> {
        let mut used = 0;
        loop {
            let buf = &input[used..];
            match self.state {
                State::Finished => return Err(HandshakeError::Finished),
                State::ClientFlags => {
                    if buf.len() < 4 {
                        return Ok((used, ServerStatus::Continue));
                    }
                    let flags = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    used += 4;
                    if flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0 {
                        self.state = State::Finished;
                        return Err(HandshakeError::UnknownClientFlags(flags));
                    }
                    self.no_zeroes = flags & NBD_FLAG_C_NO_ZEROES != 0;
                    self.state = State::Option;
                }
                State::Skipping { remaining } => {
                    let n = (remaining as usize).min(buf.len());
                    used += n;
                    let remaining = remaining - n as u32;
                    if remaining > 0 {
                        self.state = State::Skipping { remaining };
                        return Ok((used, ServerStatus::Continue));
                    }
                    self.state = State::Option;
                }
                State::Option => {
                    let hdr = match decode_option_header(buf) {
                        Ok(Decode::Done { value, .. }) => value,
                        Ok(Decode::NeedMore { .. }) => return Ok((used, ServerStatus::Continue)),
                        Err(e) => {
                            self.state = State::Finished;
                            return Err(e.into());
                        }
                    };
                    if hdr.length > self.cfg.max_option_len {
                        if hdr.option == NBD_OPT_EXPORT_NAME {
                            self.state = State::Finished;
                            return Ok((
                                used,
                                ServerStatus::Close("NBD_OPT_EXPORT_NAME with an oversized name".into()),
                            ));
                        }
                        // Refuse at once (a client that never sends the data still gets its
                        // answer), then discard the data as it arrives, without buffering it.
                        used += OPTION_HEADER_SIZE;
                        encode_option_error(&mut self.out, hdr.option, NBD_REP_ERR_TOO_BIG, "option data is too long");
                        self.state = State::Skipping { remaining: hdr.length };
                        continue;
                    }
                    let total = OPTION_HEADER_SIZE + hdr.length as usize;
                    if buf.len() < total {
                        return Ok((used, ServerStatus::Continue));
                    }
                    used += total;
                    let data = &buf[OPTION_HEADER_SIZE..total];
                    let status = self.option(hdr.option, data, catalog);
                    if status != ServerStatus::Continue {
                        if !matches!(status, ServerStatus::StartTls) {
                            self.state = State::Finished;
                        }
                        return Ok((used, status));
                    }
                }
            }
        }
    }

    fn error(&mut self, option: u32, kind: u32, message: &str) -> ServerStatus {
        encode_option_error(&mut self.out, option, kind, message);
        ServerStatus::Continue
    }

    fn refusal(&mut self, option: u32, name: &str, refusal: Refusal) -> ServerStatus {
        match refusal {
            Refusal::Unknown => self.error(option, NBD_REP_ERR_UNKNOWN, &format!("export '{name}' is not served here")),
            Refusal::Policy(why) => self.error(option, NBD_REP_ERR_POLICY, &why),
            Refusal::TlsRequired => {
                self.error(option, NBD_REP_ERR_TLS_REQD, &format!("export '{name}' is only served over TLS"))
            }
            Refusal::Shutdown => self.error(option, NBD_REP_ERR_SHUTDOWN, "the server is shutting down"),
        }
    }

    fn option(&mut self, option: u32, data: &[u8], catalog: &dyn ExportCatalog) -> ServerStatus {
        let tls_missing = self.cfg.tls == TlsPolicy::Required && !self.tls;
        match option {
            NBD_OPT_ABORT => {
                encode_option_reply(&mut self.out, option, NBD_REP_ACK, &[]);
                ServerStatus::Abort
            }
            NBD_OPT_STARTTLS => {
                if !data.is_empty() {
                    self.error(option, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data")
                } else if self.tls {
                    self.error(option, NBD_REP_ERR_INVALID, "TLS is already active")
                } else if self.cfg.tls == TlsPolicy::Off {
                    self.error(option, NBD_REP_ERR_POLICY, "TLS is not configured on this server")
                } else {
                    encode_option_reply(&mut self.out, option, NBD_REP_ACK, &[]);
                    ServerStatus::StartTls
                }
            }
            NBD_OPT_EXPORT_NAME => {
                if tls_missing {
                    return ServerStatus::Close("NBD_OPT_EXPORT_NAME before STARTTLS on a TLS-only server".into());
                }
                let Ok(name) = std::str::from_utf8(data) else {
                    return ServerStatus::Close("export name is not UTF-8".into());
                };
                match catalog.lookup(name, self.tls) {
                    Ok(export) => {
                        let flags = self.flags_for(&export);
                        put_u64(&mut self.out, export.size);
                        put_u16(&mut self.out, flags);
                        if !self.no_zeroes {
                            self.out.extend_from_slice(&[0u8; 124]);
                        }
                        let base_allocation = self.base_allocation_for(&export.name, name);
                        ServerStatus::Done(Negotiated {
                            export,
                            flags,
                            mode: self.mode,
                            base_allocation,
                            tls: self.tls,
                        })
                    }
                    Err(r) => ServerStatus::Close(format!("NBD_OPT_EXPORT_NAME '{name}' refused: {r:?}")),
                }
            }
            _ if tls_missing => {
                self.error(option, NBD_REP_ERR_TLS_REQD, "this server requires TLS: send NBD_OPT_STARTTLS first")
            }
            NBD_OPT_LIST => {
                if !data.is_empty() {
                    return self.error(option, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                }
                for entry in catalog.list(self.tls) {
                    let mut body = Vec::with_capacity(entry.name.len() + entry.description.len() + 4);
                    entry.encode(&mut body);
                    encode_option_reply(&mut self.out, option, NBD_REP_SERVER, &body);
                }
                encode_option_reply(&mut self.out, option, NBD_REP_ACK, &[]);
                ServerStatus::Continue
            }
            NBD_OPT_INFO | NBD_OPT_GO => {
                let req = match InfoRequest::decode(data) {
                    Ok(r) => r,
                    Err(e) => return self.error(option, NBD_REP_ERR_INVALID, &e.to_string()),
                };
                let export = match catalog.lookup(&req.name, self.tls) {
                    Ok(e) => e,
                    Err(r) => return self.refusal(option, &req.name, r),
                };
                let flags = self.flags_for(&export);
                let mut infos = vec![
                    Info::Export { size: export.size, flags },
                    Info::BlockSize {
                        minimum: export.min_block,
                        preferred: export.preferred_block,
                        maximum: export.max_block,
                    },
                ];
                if req.infos.contains(&NBD_INFO_NAME) {
                    infos.push(Info::Name(export.name.clone()));
                }
                if req.infos.contains(&NBD_INFO_DESCRIPTION) && !export.description.is_empty() {
                    infos.push(Info::Description(export.description.clone()));
                }
                let mut body = Vec::with_capacity(64);
                for info in &infos {
                    body.clear();
                    info.encode(&mut body);
                    encode_option_reply(&mut self.out, option, NBD_REP_INFO, &body);
                }
                encode_option_reply(&mut self.out, option, NBD_REP_ACK, &[]);
                if option == NBD_OPT_INFO {
                    return ServerStatus::Continue;
                }
                let base_allocation = self.base_allocation_for(&export.name, &req.name);
                ServerStatus::Done(Negotiated { export, flags, mode: self.mode, base_allocation, tls: self.tls })
            }
            NBD_OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    self.error(option, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data")
                } else if self.mode == ReplyMode::Extended {
                    self.error(option, NBD_REP_ERR_EXT_HEADER_REQD, "extended headers are already negotiated")
                } else if self.mode == ReplyMode::Structured {
                    self.error(option, NBD_REP_ERR_INVALID, "structured replies are already negotiated")
                } else {
                    self.mode = ReplyMode::Structured;
                    encode_option_reply(&mut self.out, option, NBD_REP_ACK, &[]);
                    ServerStatus::Continue
                }
            }
            NBD_OPT_EXTENDED_HEADERS => {
                if !data.is_empty() {
                    self.error(option, NBD_REP_ERR_INVALID, "NBD_OPT_EXTENDED_HEADERS takes no data")
                } else if self.mode == ReplyMode::Extended {
                    self.error(option, NBD_REP_ERR_INVALID, "extended headers are already negotiated")
                } else {
                    self.mode = ReplyMode::Extended;
                    encode_option_reply(&mut self.out, option, NBD_REP_ACK, &[]);
                    ServerStatus::Continue
                }
            }
            NBD_OPT_LIST_META_CONTEXT | NBD_OPT_SET_META_CONTEXT => self.meta_context(option, data, catalog),
            _ => self.error(option, NBD_REP_ERR_UNSUP, &format!("option {option} is not supported by this server")),
        }
    }

    fn meta_context(&mut self, option: u32, data: &[u8], catalog: &dyn ExportCatalog) -> ServerStatus {
        let set = option == NBD_OPT_SET_META_CONTEXT;
        if set && self.mode == ReplyMode::Simple {
            return self.error(
                option,
                NBD_REP_ERR_INVALID,
                "negotiate structured replies before NBD_OPT_SET_META_CONTEXT",
            );
        }
        let req = match MetaContextRequest::decode(data) {
            Ok(r) => r,
            Err(e) => return self.error(option, NBD_REP_ERR_INVALID, &e.to_string()),
        };
        let export = match catalog.lookup(&req.export, self.tls) {
            Ok(e) => e,
            Err(r) => return self.refusal(option, &req.export, r),
        };
        let matches = if req.queries.is_empty() {
            !set // LIST with no queries lists everything; SET with none selects nothing
        } else {
            req.queries.iter().any(|q| q == BASE_ALLOCATION || (!set && q == "base:"))
        };
        if set {
            self.meta = matches.then(|| export.name.clone());
        }
        if matches {
            let mut body = Vec::new();
            MetaContext { id: BASE_ALLOCATION_ID, name: BASE_ALLOCATION.into() }.encode(&mut body);
            encode_option_reply(&mut self.out, option, NBD_REP_META_CONTEXT, &body);
        }
        encode_option_reply(&mut self.out, option, NBD_REP_ACK, &[]);
        ServerStatus::Continue
    }

    fn flags_for(&self, export: &ExportInfo) -> u16 {
        let mut flags = export.flags | NBD_FLAG_HAS_FLAGS;
        if self.mode != ReplyMode::Simple {
            flags |= NBD_FLAG_SEND_DF;
        }
        flags
    }

    /// Meta contexts selected for another export do not carry over (the spec says so).
    fn base_allocation_for(&self, canonical: &str, requested: &str) -> Option<u32> {
        if self.mode == ReplyMode::Simple {
            return None;
        }
        match &self.meta {
            Some(n) if n == canonical || n == requested => Some(BASE_ALLOCATION_ID),
            _ => None,
        }
    }
}
