//! A hand-built NBD client over `std::net::TcpStream`.
//!
//! Every byte is written here from the NBD protocol specification
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>), independently of
//! `nbd-proto`, so that the tests check the server against the spec rather than against
//! its own codec. All integers are big-endian.
//!
//! Two levels:
//! - free functions that send or receive exactly one protocol element
//!   ([`read_greeting`], [`send_option`], [`read_option_reply`], [`send_request`],
//!   [`read_simple_reply`], ...), for abuse tests that go off the rails on purpose;
//! - [`RawClient`], a well-behaved client: fixed newstyle handshake, `NBD_OPT_GO`, then
//!   simple requests and simple replies (no structured replies are negotiated).
//!
//! Every stream gets read and write timeouts ([`IO_TIMEOUT`]) so a silent server fails a
//! test instead of hanging it.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// `NBDMAGIC`, first 8 bytes of the server greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second 8 bytes of the newstyle greeting, and the magic of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const NBD_REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every request.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag (server) / client flag: fixed newstyle.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag (server) / client flag: no zeroes after `NBD_OPT_EXPORT_NAME`.
pub const NBD_FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 2;

/// Option: export name (old style, no reply on error).
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
/// Option: abort the handshake.
pub const NBD_OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const NBD_OPT_LIST: u32 = 3;
/// Option: select an export and enter transmission.
pub const NBD_OPT_GO: u32 = 7;

/// Option reply: acknowledged / end of list.
pub const NBD_REP_ACK: u32 = 1;
/// Option reply: one export in a list.
pub const NBD_REP_SERVER: u32 = 2;
/// Option reply: information about an export.
pub const NBD_REP_INFO: u32 = 3;
/// Bit set in every error reply type.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
/// Error reply: option not supported.
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
/// Error reply: refused by policy.
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
/// Error reply: syntactically or semantically invalid.
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
/// Error reply: unknown export.
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
/// Error reply: request or reply too large.
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;

/// `NBD_REP_INFO` type: export size and transmission flags.
pub const NBD_INFO_EXPORT: u16 = 0;

/// Transmission flag: flags are valid.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: read-only export.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: flush supported.
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: FUA supported.
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: trim supported.
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: write zeroes supported.
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: multiple connections are coherent.
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Command: read.
pub const NBD_CMD_READ: u16 = 0;
/// Command: write.
pub const NBD_CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const NBD_CMD_DISC: u16 = 2;
/// Command: flush.
pub const NBD_CMD_FLUSH: u16 = 3;
/// Command: trim.
pub const NBD_CMD_TRIM: u16 = 4;
/// Command flag: force unit access.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;

/// NBD error: operation not permitted.
pub const NBD_EPERM: u32 = 1;
/// NBD error: I/O error.
pub const NBD_EIO: u32 = 5;
/// NBD error: invalid argument.
pub const NBD_EINVAL: u32 = 22;
/// NBD error: no space left.
pub const NBD_ENOSPC: u32 = 28;
/// NBD error: value too large.
pub const NBD_EOVERFLOW: u32 = 75;
/// NBD error: server shutting down.
pub const NBD_ESHUTDOWN: u32 = 108;

/// Read and write timeout applied to every stream made here.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest option reply payload this client accepts (it must not allocate blindly either).
const MAX_OPTION_REPLY: u32 = 1 << 20;

fn invalid(msg: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg)
}

/// Connects to `addr` with [`IO_TIMEOUT`] on connect, reads and writes, and `TCP_NODELAY`.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn read_array<const N: usize>(s: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b)?;
    Ok(b)
}

fn read_u16(s: &mut impl Read) -> io::Result<u16> {
    Ok(u16::from_be_bytes(read_array(s)?))
}

fn read_u32(s: &mut impl Read) -> io::Result<u32> {
    Ok(u32::from_be_bytes(read_array(s)?))
}

fn read_u64(s: &mut impl Read) -> io::Result<u64> {
    Ok(u64::from_be_bytes(read_array(s)?))
}

/// Reads the 18-byte newstyle greeting; checks both magics; returns the handshake flags.
pub fn read_greeting(s: &mut impl Read) -> io::Result<u16> {
    let magic = read_u64(s)?;
    if magic != NBDMAGIC {
        return Err(invalid(format!("greeting magic {magic:#018x}, want NBDMAGIC")));
    }
    let opt = read_u64(s)?;
    if opt != IHAVEOPT {
        return Err(invalid(format!("greeting second magic {opt:#018x}, want IHAVEOPT (newstyle)")));
    }
    read_u16(s)
}

/// Sends the 4-byte client flags.
pub fn send_client_flags(s: &mut impl Write, flags: u32) -> io::Result<()> {
    s.write_all(&flags.to_be_bytes())
}

/// Sends an option header claiming `len` bytes of data, without the data.
pub fn send_option_header(s: &mut impl Write, option: u32, len: u32) -> io::Result<()> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    s.write_all(&b)
}

/// Sends a complete option (header and data).
pub fn send_option(s: &mut impl Write, option: u32, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len()).expect("option data fits in u32");
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b)
}

/// The data of an `NBD_OPT_GO` (or `NBD_OPT_INFO`) option: name and info requests.
pub fn go_data(name: &str, info_requests: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    let len = u32::try_from(name.len()).expect("export name fits in u32");
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    let n = u16::try_from(info_requests.len()).expect("few info requests");
    d.extend_from_slice(&n.to_be_bytes());
    for i in info_requests {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// One option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    /// The option this replies to.
    pub option: u32,
    /// `NBD_REP_*`.
    pub reply_type: u32,
    /// Reply data.
    pub data: Vec<u8>,
}

impl OptionReply {
    /// Whether the reply type has the error bit set.
    pub fn is_error(&self) -> bool {
        self.reply_type & NBD_REP_FLAG_ERROR != 0
    }
}

/// Reads one option reply (20-byte header plus data); checks the magic.
pub fn read_option_reply(s: &mut impl Read) -> io::Result<OptionReply> {
    let magic = read_u64(s)?;
    if magic != NBD_REP_MAGIC {
        return Err(invalid(format!("option reply magic {magic:#018x}, want {NBD_REP_MAGIC:#018x}")));
    }
    let option = read_u32(s)?;
    let reply_type = read_u32(s)?;
    let len = read_u32(s)?;
    if len > MAX_OPTION_REPLY {
        return Err(invalid(format!("option reply (option {option}, type {reply_type:#x}) claims {len} bytes")));
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data)?;
    Ok(OptionReply { option, reply_type, data })
}

/// Reads the greeting and answers with `FIXED_NEWSTYLE` (plus `NO_ZEROES` when the
/// server offers it). Returns the server's handshake flags.
pub fn start_handshake(s: &mut TcpStream) -> io::Result<u16> {
    let flags = read_greeting(s)?;
    if flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(invalid(format!("server handshake flags {flags:#x} lack FIXED_NEWSTYLE")));
    }
    let mut client = NBD_FLAG_C_FIXED_NEWSTYLE;
    if flags & NBD_FLAG_NO_ZEROES != 0 {
        client |= NBD_FLAG_C_NO_ZEROES;
    }
    send_client_flags(s, client)?;
    Ok(flags)
}

/// Sends `NBD_OPT_GO` for `name` with no info requests and reads replies up to
/// `NBD_REP_ACK`. Returns (export size, transmission flags) from `NBD_INFO_EXPORT`.
/// An error reply becomes an `io::Error` of kind `Other` naming the reply type.
pub fn opt_go(s: &mut TcpStream, name: &str) -> io::Result<(u64, u16)> {
    send_option(s, NBD_OPT_GO, &go_data(name, &[]))?;
    let mut export = None;
    loop {
        let r = read_option_reply(s)?;
        if r.option != NBD_OPT_GO {
            return Err(invalid(format!("reply to NBD_OPT_GO names option {}", r.option)));
        }
        if r.is_error() {
            return Err(io::Error::other(format!(
                "NBD_OPT_GO {name:?} refused: reply type {:#x}, message {:?}",
                r.reply_type,
                String::from_utf8_lossy(&r.data)
            )));
        }
        match r.reply_type {
            NBD_REP_ACK => break,
            NBD_REP_INFO => {
                if r.data.len() >= 2 && u16::from_be_bytes([r.data[0], r.data[1]]) == NBD_INFO_EXPORT {
                    if r.data.len() != 12 {
                        return Err(invalid(format!("NBD_INFO_EXPORT with {} bytes, want 12", r.data.len())));
                    }
                    let size = u64::from_be_bytes(r.data[2..10].try_into().expect("8 bytes"));
                    let flags = u16::from_be_bytes([r.data[10], r.data[11]]);
                    export = Some((size, flags));
                }
            }
            other => return Err(invalid(format!("unexpected reply type {other:#x} to NBD_OPT_GO"))),
        }
    }
    export.ok_or_else(|| invalid("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT".into()))
}

/// Encodes a 28-byte request header.
pub fn request_header(flags: u16, typ: u16, handle: u64, offset: u64, length: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&typ.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&length.to_be_bytes());
    b
}

/// Sends a request header followed by `payload` (which may be shorter or longer than
/// `length`: abuse tests lie on purpose).
pub fn send_request(
    s: &mut impl Write,
    flags: u16,
    typ: u16,
    handle: u64,
    offset: u64,
    length: u32,
    payload: &[u8],
) -> io::Result<()> {
    let mut b = Vec::with_capacity(28 + payload.len());
    b.extend_from_slice(&request_header(flags, typ, handle, offset, length));
    b.extend_from_slice(payload);
    s.write_all(&b)
}

/// A simple reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// NBD error code, 0 for success.
    pub error: u32,
    /// The request's handle.
    pub handle: u64,
}

/// Reads a 16-byte simple reply header; checks the magic.
pub fn read_simple_reply(s: &mut impl Read) -> io::Result<SimpleReply> {
    let magic = read_u32(s)?;
    if magic != NBD_SIMPLE_REPLY_MAGIC {
        return Err(invalid(format!("reply magic {magic:#010x}, want simple reply {NBD_SIMPLE_REPLY_MAGIC:#010x}")));
    }
    let error = read_u32(s)?;
    let handle = read_u64(s)?;
    Ok(SimpleReply { error, handle })
}

/// How a connection ended in [`read_until_close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Orderly close (read returned 0).
    Eof,
    /// Connection reset or similar error.
    Reset,
    /// Still open when the wait ended.
    StillOpen,
}

/// Reads (keeping at most 64 KiB) until the server closes the connection or `wait`
/// passes. Returns the bytes received and how it ended.
pub fn read_until_close(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, Ending) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, Ending::StillOpen);
        }
        if s.set_read_timeout(Some(left)).is_err() {
            return (got, Ending::Reset);
        }
        match s.read(&mut buf) {
            Ok(0) => return (got, Ending::Eof),
            Ok(n) => {
                if got.len() < 65536 {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, Ending::StillOpen)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return (got, Ending::Reset),
        }
    }
}

/// A well-behaved NBD client in transmission phase (simple replies).
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    size: u64,
    flags: u16,
    next_handle: u64,
}

impl RawClient {
    /// Connects, does the fixed newstyle handshake and `NBD_OPT_GO` for `export`.
    pub fn connect(addr: SocketAddr, export: &str) -> io::Result<RawClient> {
        let mut s = connect(addr)?;
        start_handshake(&mut s)?;
        let (size, flags) = opt_go(&mut s, export)?;
        Ok(RawClient::from_stream(s, size, flags))
    }

    /// Wraps a stream already in transmission phase.
    pub fn from_stream(stream: TcpStream, size: u64, flags: u16) -> RawClient {
        RawClient { stream, size, flags, next_handle: 0x1000 }
    }

    /// Export size from `NBD_INFO_EXPORT`.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Transmission flags from `NBD_INFO_EXPORT`.
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// Our end of the connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// The underlying stream, to send anything at all.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// A fresh handle.
    pub fn next_handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }

    fn expect_reply(&mut self, handle: u64) -> io::Result<SimpleReply> {
        let r = read_simple_reply(&mut self.stream)?;
        if r.handle != handle {
            return Err(invalid(format!("reply for handle {:#x}, want {handle:#x}", r.handle)));
        }
        Ok(r)
    }

    /// Sends any request and reads its reply header (no data). Returns the NBD error.
    pub fn command(&mut self, typ: u16, flags: u16, offset: u64, length: u32, payload: &[u8]) -> io::Result<u32> {
        let h = self.next_handle();
        send_request(&mut self.stream, flags, typ, h, offset, length, payload)?;
        Ok(self.expect_reply(h)?.error)
    }

    /// `NBD_CMD_READ`: `Ok(Ok(data))`, or `Ok(Err(nbd_error))` for an error reply.
    pub fn read(&mut self, offset: u64, length: u32) -> io::Result<Result<Vec<u8>, u32>> {
        let h = self.next_handle();
        send_request(&mut self.stream, 0, NBD_CMD_READ, h, offset, length, &[])?;
        let r = self.expect_reply(h)?;
        if r.error != 0 {
            return Ok(Err(r.error));
        }
        let mut data = vec![0u8; length as usize];
        self.stream.read_exact(&mut data)?;
        Ok(Ok(data))
    }

    /// `NBD_CMD_READ` that must succeed; panics with context otherwise.
    pub fn read_ok(&mut self, offset: u64, length: u32) -> Vec<u8> {
        match self.read(offset, length) {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => panic!("READ {offset}+{length}: NBD error {e}"),
            Err(e) => panic!("READ {offset}+{length}: {e}"),
        }
    }

    /// `NBD_CMD_WRITE` with command `flags` (e.g. [`NBD_CMD_FLAG_FUA`]); returns the NBD error.
    pub fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> io::Result<u32> {
        let len = u32::try_from(data.len()).expect("write fits in u32");
        self.command(NBD_CMD_WRITE, flags, offset, len, data)
    }

    /// `NBD_CMD_WRITE` that must succeed; panics with context otherwise.
    pub fn write_ok(&mut self, offset: u64, data: &[u8], flags: u16) {
        match self.write(offset, data, flags) {
            Ok(0) => {}
            Ok(e) => panic!("WRITE {offset}+{}: NBD error {e}", data.len()),
            Err(e) => panic!("WRITE {offset}+{}: {e}", data.len()),
        }
    }

    /// Sends a write without waiting for its reply; returns its handle.
    pub fn send_write(&mut self, offset: u64, data: &[u8], flags: u16) -> io::Result<u64> {
        let len = u32::try_from(data.len()).expect("write fits in u32");
        let h = self.next_handle();
        send_request(&mut self.stream, flags, NBD_CMD_WRITE, h, offset, len, data)?;
        Ok(h)
    }

    /// Reads the next reply header, whatever its handle (for replies to [`Self::send_write`]).
    pub fn recv_reply(&mut self) -> io::Result<SimpleReply> {
        read_simple_reply(&mut self.stream)
    }

    /// `NBD_CMD_FLUSH`; returns the NBD error.
    pub fn flush(&mut self) -> io::Result<u32> {
        self.command(NBD_CMD_FLUSH, 0, 0, 0, &[])
    }

    /// `NBD_CMD_TRIM`; returns the NBD error.
    pub fn trim(&mut self, offset: u64, length: u32) -> io::Result<u32> {
        self.command(NBD_CMD_TRIM, 0, offset, length, &[])
    }

    /// Sends `NBD_CMD_DISC` and closes our side.
    pub fn disconnect(mut self) {
        let h = self.next_handle();
        let _ = send_request(&mut self.stream, 0, NBD_CMD_DISC, h, 0, 0, &[]);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_layout() {
        let h = request_header(NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 0x0102_0304_0506_0708, 4096, 512);
        assert_eq!(
            h,
            [
                0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0, 0,
                0, 0, 0, 0, 0x10, 0x00, 0, 0, 0x02, 0x00
            ]
        );
    }

    #[test]
    fn go_data_layout() {
        assert_eq!(go_data("ab", &[]), [0, 0, 0, 2, b'a', b'b', 0, 0]);
        assert_eq!(go_data("", &[3]), [0, 0, 0, 0, 0, 1, 0, 3]);
    }

    #[test]
    fn option_reply_parsing() {
        let mut bytes = NBD_REP_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&0x1234u32.to_be_bytes());
        bytes.extend_from_slice(&NBD_REP_ERR_UNSUP.to_be_bytes());
        bytes.extend_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(b"why");
        let r = read_option_reply(&mut &bytes[..]).expect("valid reply");
        assert_eq!(r.option, 0x1234);
        assert!(r.is_error());
        assert_eq!(r.data, b"why");
        bytes[0] ^= 1;
        assert!(read_option_reply(&mut &bytes[..]).is_err(), "bad magic accepted");
        // A reply claiming a huge payload is refused before allocating it.
        let mut huge = NBD_REP_MAGIC.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert!(read_option_reply(&mut &huge[..]).is_err());
    }

    #[test]
    fn greeting_parsing() {
        let mut g = NBDMAGIC.to_be_bytes().to_vec();
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(read_greeting(&mut &g[..]).expect("valid greeting"), 3);
        g[9] ^= 1;
        assert!(read_greeting(&mut &g[..]).is_err());
    }
}
