//! The async driver: connections, the writer and reader task of each, reconnection with
//! resubmission, the I/O timeout, and the public [`Client`] API.
//!
//! Each connection ("slot") has a manager task. While connected it runs a writer task
//! (takes requests from the slot's queue, records them in the sans-IO [`Conn`] and writes
//! them) and a reader task (feeds the socket's bytes to the `Conn` and answers the callers'
//! oneshot channels). When either ends, the manager puts every request that had no reply
//! back at the front of the queue and reconnects with exponential back-off; while the slot
//! is down, requests older than the I/O timeout fail with [`ClientError::TimedOut`].

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nbd_proto::consts::*;
use nbd_proto::{
    encode_request, ClientConfig, ClientHandshake, ClientNegotiated, ClientStatus, Command, Extent, ReplyMode, Request,
    ServerEntry,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, error, info, warn};

use crate::conn::{Conn, Op, Reply};
use crate::error::ClientError;
use crate::tls::TlsOptions;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Largest length of one TRIM / WRITE_ZEROES / BLOCK_STATUS request: fits a compact header
/// and stays 4 KiB aligned.
const MAX_RANGE: u64 = 0xFFFF_F000;
/// The spec's default maximum block size when the server sends none.
const DEFAULT_MAX_BLOCK: u64 = 32 << 20;
/// How long a closing connection waits for the replies of requests still in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How to reach an export, and how hard to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// `host:port` for TCP, or the path of a Unix socket (anything containing a `/`, or
    /// prefixed with `unix:`).
    pub addr: String,
    /// Export name (empty: the server's default export).
    pub export: String,
    /// Connections to open when the server advertises `NBD_FLAG_CAN_MULTI_CONN` (otherwise
    /// one); requests are spread over them round-robin. 0 counts as 1.
    pub connections: usize,
    /// GNBD's timeout mode: a request that cannot be answered because the server is
    /// unreachable fails with [`ClientError::TimedOut`] after this long. `None` (or zero):
    /// wait for the server forever, resubmitting after every reconnect.
    pub io_timeout: Option<Duration>,
    /// Bound on one connect-and-handshake attempt.
    pub connect_timeout: Duration,
    /// First delay between reconnection attempts; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Ask for structured replies (needed for block status and sparse reads). Default on.
    pub structured_replies: bool,
    /// Ask for extended headers (64-bit lengths) before structured replies. Default on.
    pub extended_headers: bool,
    /// STARTTLS with these certificates before anything else (`None`: plain text).
    pub tls: Option<TlsOptions>,
    /// Source address for TCP connections (a node's cluster address, which servers use to
    /// tell nodes apart). `None`: chosen by the kernel.
    pub local_addr: Option<std::net::IpAddr>,
}

impl ClientOptions {
    /// One connection, no I/O timeout, back-off from 100 ms to 5 s.
    pub fn new(addr: impl Into<String>, export: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            export: export.into(),
            connections: 1,
            io_timeout: None,
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            structured_replies: true,
            extended_headers: true,
            tls: None,
            local_addr: None,
        }
    }

    fn timeout(&self) -> Option<Duration> {
        self.io_timeout.filter(|d| !d.is_zero())
    }
}

type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// A connected, negotiated socket.
struct Session {
    r: ReadHalf,
    w: WriteHalf,
    neg: ClientNegotiated,
}

fn unix_path(addr: &str) -> Option<&Path> {
    if let Some(p) = addr.strip_prefix("unix:") {
        Some(Path::new(p))
    } else if addr.contains('/') {
        Some(Path::new(addr))
    } else {
        None
    }
}

/// Runs `hs` on `s` until it needs the driver (done, listed, or STARTTLS accepted).
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    hs: &mut ClientHandshake,
    buf: &mut Vec<u8>,
) -> Result<ClientStatus, ClientError> {
    let mut tmp = [0u8; 4096];
    loop {
        let (used, status) = hs.feed(buf).map_err(ClientError::from_handshake)?;
        buf.drain(..used);
        // Output queued before this call (after STARTTLS) or by this feed.
        let out = hs.take_output();
        if !out.is_empty() {
            s.write_all(&out).await?;
            s.flush().await?;
        }
        if status != ClientStatus::Continue {
            if !buf.is_empty() {
                return Err(ClientError::Protocol(match status {
                    ClientStatus::StartTls => "the server sent plain text right after accepting STARTTLS".into(),
                    _ => "the server sent data right after the handshake".into(),
                }));
            }
            return Ok(status);
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection during the handshake",
            )
            .into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// A socket after the handshake: still plain, or upgraded to TLS.
enum Negotiated<S> {
    Plain(S, ClientStatus),
    Tls(Box<TlsStream<S>>, ClientStatus),
}

/// Runs the handshake with `cfg` on a fresh stream, upgrading it to TLS first when `tls`
/// says so.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mut cfg: ClientConfig,
    addr: &str,
    tls: Option<&TlsOptions>,
) -> Result<Negotiated<S>, ClientError> {
    // Certificates are loaded before connecting further: a bad file is a clear error.
    let tls = match tls {
        Some(t) => Some((TlsConnector::from(t.client_config()?), t.server_name(addr)?)),
        None => None,
    };
    cfg.starttls = tls.is_some();
    let mut hs = ClientHandshake::new(cfg);
    let mut buf = Vec::with_capacity(4096);
    match drive(&mut s, &mut hs, &mut buf).await? {
        ClientStatus::StartTls => {
            let (connector, name) = tls.expect("STARTTLS is only sent with TLS options");
            let mut t = connector.connect(name, s).await?;
            hs.tls_started();
            let status = drive(&mut t, &mut hs, &mut buf).await?;
            Ok(Negotiated::Tls(Box::new(t), status))
        }
        status => Ok(Negotiated::Plain(s, status)),
    }
}

fn open_config(opts: &ClientOptions) -> ClientConfig {
    ClientConfig {
        structured: opts.structured_replies,
        extended: opts.extended_headers,
        base_allocation: opts.structured_replies || opts.extended_headers,
        ..ClientConfig::open(opts.export.clone())
    }
}

fn done(status: ClientStatus) -> Result<ClientNegotiated, ClientError> {
    match status {
        ClientStatus::Done(neg) => Ok(neg),
        other => Err(ClientError::Protocol(format!("unexpected end of the handshake: {other:?}"))),
    }
}

/// Negotiates on `s` and splits the result into the reader's and the writer's halves.
async fn negotiate<S>(s: S, opts: &ClientOptions, split: fn(S) -> (ReadHalf, WriteHalf)) -> Result<Session, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match handshake(s, open_config(opts), &opts.addr, opts.tls.as_ref()).await? {
        Negotiated::Plain(s, status) => {
            let neg = done(status)?;
            let (r, w) = split(s);
            Ok(Session { r, w, neg })
        }
        Negotiated::Tls(t, status) => {
            let neg = done(status)?;
            let (r, w) = tokio::io::split(*t);
            Ok(Session { r: Box::new(r), w: Box::new(w), neg })
        }
    }
}

/// A TCP connection to `addr`, from `local` when given.
async fn connect_tcp(addr: &str, local: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    let Some(local) = local else { return TcpStream::connect(addr).await };
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
    for target in tokio::net::lookup_host(addr).await? {
        let sock = if target.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        sock.bind(std::net::SocketAddr::new(local, 0))?;
        match sock.connect(target).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects and negotiates once, bounded by `connect_timeout`.
async fn open(opts: &ClientOptions) -> Result<Session, ClientError> {
    let attempt = async {
        if let Some(path) = unix_path(&opts.addr) {
            let split = |s: UnixStream| -> (ReadHalf, WriteHalf) {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            };
            negotiate(UnixStream::connect(path).await?, opts, split).await
        } else {
            let s = connect_tcp(&opts.addr, opts.local_addr).await?;
            s.set_nodelay(true)?;
            let split = |s: TcpStream| -> (ReadHalf, WriteHalf) {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            };
            negotiate(s, opts, split).await
        }
    };
    match timeout(opts.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {} and negotiating took longer than {:?}", opts.addr, opts.connect_timeout),
        )
        .into()),
    }
}

/// Lists the exports a server offers (`NBD_OPT_LIST`).
pub async fn list_exports(addr: &str, connect_timeout: Duration) -> Result<Vec<ServerEntry>, ClientError> {
    let mut opts = ClientOptions::new(addr, "");
    opts.connect_timeout = connect_timeout;
    list_exports_with(&opts).await
}

/// Lists the exports of the server at `opts.addr` (over TLS when `opts.tls` is set), bounded
/// by `opts.connect_timeout`.
pub async fn list_exports_with(opts: &ClientOptions) -> Result<Vec<ServerEntry>, ClientError> {
    async fn list<S: AsyncRead + AsyncWrite + Unpin>(
        s: S,
        opts: &ClientOptions,
    ) -> Result<Vec<ServerEntry>, ClientError> {
        let (status, _) = match handshake(s, ClientConfig::listing(), &opts.addr, opts.tls.as_ref()).await? {
            Negotiated::Plain(mut s, status) => (status, s.shutdown().await),
            Negotiated::Tls(mut t, status) => (status, t.shutdown().await),
        };
        match status {
            ClientStatus::Listed(v) => Ok(v),
            other => Err(ClientError::Protocol(format!("unexpected end of the listing: {other:?}"))),
        }
    }
    let addr = &opts.addr;
    let attempt = async {
        match unix_path(addr) {
            Some(path) => list(UnixStream::connect(path).await?, opts).await,
            None => list(connect_tcp(addr, opts.local_addr).await?, opts).await,
        }
    };
    timeout(opts.connect_timeout, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("listing the exports of {addr} timed out")))?
}

/// Where a caller waits for its request's outcome.
type ReplyRx = oneshot::Receiver<Result<Reply, ClientError>>;

/// A request waiting in a slot's queue or in flight on its connection.
#[derive(Debug)]
struct Pending {
    op: Op,
    payload: Option<Arc<[u8]>>,
    tx: oneshot::Sender<Result<Reply, ClientError>>,
    /// Since when the request has been waiting for a connection (for the I/O timeout).
    since: Instant,
}

#[derive(Debug)]
struct SlotState {
    queue: VecDeque<Pending>,
    /// Present while connected.
    conn: Option<Conn<Pending>>,
    /// Set when reconnecting cannot help (fenced, export gone): every request fails with it.
    terminal: Option<ClientError>,
    closing: bool,
    /// Connections re-established after a loss.
    reconnects: u64,
    /// Requests sent again after a connection was lost before their reply.
    resubmitted: u64,
}

/// One connection's shared state.
#[derive(Debug)]
struct Slot {
    id: usize,
    /// Export size and flags from the first handshake; a reconnect that finds others warns.
    size: u64,
    flags: u16,
    state: Mutex<SlotState>,
    wake_writer: Notify,
    wake_manager: Notify,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().expect("a slot lock holder panicked")
    }

    fn submit(&self, op: Op, payload: Option<Arc<[u8]>>) -> Result<ReplyRx, ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.lock();
            if let Some(e) = &st.terminal {
                return Err(e.clone());
            }
            if st.closing {
                return Err(ClientError::Closed);
            }
            st.queue.push_back(Pending { op, payload, tx, since: Instant::now() });
        }
        self.wake_writer.notify_one();
        self.wake_manager.notify_one();
        Ok(rx)
    }

    fn fail_queue(&self, err: &ClientError) {
        let queued: Vec<Pending> = self.lock().queue.drain(..).collect();
        for p in queued {
            let _ = p.tx.send(Err(err.clone()));
        }
    }

    /// Fails queued requests older than the timeout; returns the next deadline.
    fn expire(&self, io_timeout: Option<Duration>) -> Option<Instant> {
        let t = io_timeout?;
        let now = Instant::now();
        let mut expired = Vec::new();
        let next = {
            let mut st = self.lock();
            let mut keep = VecDeque::with_capacity(st.queue.len());
            for p in st.queue.drain(..) {
                if p.since + t <= now {
                    expired.push(p);
                } else {
                    keep.push_back(p);
                }
            }
            st.queue = keep;
            st.queue.iter().map(|p| p.since + t).min()
        };
        if !expired.is_empty() {
            warn!(slot = self.id, count = expired.len(), timeout = ?t, "server unreachable; failing requests");
        }
        for p in expired {
            let _ = p.tx.send(Err(ClientError::TimedOut(t)));
        }
        next
    }

    /// While the slot is down: keeps failing overdue requests; returns once closing.
    async fn expire_loop(&self, io_timeout: Option<Duration>) {
        loop {
            let next = self.expire(io_timeout);
            if self.lock().closing {
                return;
            }
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = sleep_until(next.unwrap_or(far)) => {}
                _ = self.wake_manager.notified() => {}
            }
        }
    }
}

/// Why a connection's session ended.
#[derive(Debug)]
enum End {
    /// Socket error or EOF: reconnect and resubmit.
    Lost(ClientError),
    /// Requests in flight and nothing heard for the I/O timeout: reconnect and resubmit.
    Stalled,
    /// The server broke the protocol: fail what was in flight, then reconnect.
    Protocol(String),
    /// We sent `NBD_CMD_DISC`.
    Disconnected,
}

/// Payloads at least this large go to the socket straight from the caller's buffer, after
/// the buffered headers, in one vectored write (no copy into the output buffer).
const VECTORED_MIN: usize = 64 << 10;
/// Buffered headers and small payloads are written out once this much has gathered (and
/// whenever the queue runs empty).
const OUT_FLUSH: usize = 256 << 10;

/// Writes all of `a` then all of `b`, with as few system calls as the socket allows.
async fn write_both(w: &mut WriteHalf, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = if a.is_empty() {
            w.write(b).await?
        } else {
            w.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    Ok(())
}

async fn writer(slot: Arc<Slot>, mut w: WriteHalf) -> End {
    let mut out: Vec<u8> = Vec::with_capacity(OUT_FLUSH + (64 << 10));
    let mut hdr = Vec::with_capacity(64);
    loop {
        enum Next {
            Send(Option<Arc<[u8]>>),
            Idle,
            Disc,
        }
        let next = {
            let mut st = slot.lock();
            let st = &mut *st;
            let conn = st.conn.as_mut().expect("the writer runs only while connected");
            hdr.clear();
            match st.queue.pop_front() {
                Some(p) => {
                    let payload = p.payload.clone();
                    match conn.submit(p.op, p, &mut hdr) {
                        Ok(_) => Next::Send(payload),
                        Err(e) => {
                            // Cannot happen: the client splits requests to fit any header.
                            error!(slot = slot.id, error = %e, "dropping a request that does not fit");
                            continue;
                        }
                    }
                }
                None if st.closing => {
                    let disc = Request { flags: 0, command: Command::Disc, cookie: 0, offset: 0, length: 0 };
                    encode_request(&mut hdr, &disc, conn.mode());
                    Next::Disc
                }
                None => Next::Idle,
            }
        };
        let r = match next {
            Next::Send(payload) => {
                out.extend_from_slice(&hdr);
                match payload {
                    Some(p) if p.len() >= VECTORED_MIN => {
                        let r = write_both(&mut w, &out, &p).await;
                        out.clear();
                        r
                    }
                    small => {
                        if let Some(p) = small {
                            out.extend_from_slice(&p);
                        }
                        if out.len() >= OUT_FLUSH {
                            let r = w.write_all(&out).await;
                            out.clear();
                            r
                        } else {
                            Ok(())
                        }
                    }
                }
            }
            Next::Idle => {
                let r = async {
                    if !out.is_empty() {
                        w.write_all(&out).await?;
                        out.clear();
                    }
                    w.flush().await
                }
                .await;
                if let Err(e) = r {
                    return End::Lost(e.into());
                }
                slot.wake_writer.notified().await;
                Ok(())
            }
            Next::Disc => {
                out.extend_from_slice(&hdr);
                let r = async {
                    w.write_all(&out).await?;
                    w.flush().await
                }
                .await;
                return match r {
                    Ok(()) => End::Disconnected,
                    Err(e) => End::Lost(e.into()),
                };
            }
        };
        if let Err(e) = r {
            return End::Lost(e.into());
        }
    }
}

/// Read data of at least this size is received straight into the request's buffer.
const DIRECT_MIN: usize = 16 << 10;

/// Where the reader puts the next bytes from the socket.
enum Target<'a> {
    /// The reader's own buffer, fed to the decoder.
    Buffer(&'a mut [u8]),
    /// A read request's buffer, appended to (at most `usize` bytes).
    Direct(&'a mut Vec<u8>, usize),
}

async fn receive(r: &mut ReadHalf, target: &mut Target<'_>) -> io::Result<usize> {
    match target {
        Target::Buffer(b) => r.read(b).await,
        Target::Direct(v, limit) => (&mut *r).take(*limit as u64).read_buf(*v).await,
    }
}

async fn reader(slot: Arc<Slot>, mut r: ReadHalf, io_timeout: Option<Duration>) -> End {
    let mut buf = vec![0u8; 256 << 10];
    let mut done = Vec::new();
    let mut quiet = 0u32;
    loop {
        // Large read data goes from the socket to its request's buffer with no copy between.
        let mut direct = slot.lock().conn.as_mut().and_then(|c| c.take_direct(DIRECT_MIN));
        let mut target = match &mut direct {
            Some(d) => Target::Direct(&mut d.buf, d.remaining),
            None => Target::Buffer(&mut buf),
        };
        let n = match io_timeout {
            Some(t) => match timeout(t, receive(&mut r, &mut target)).await {
                Ok(r) => r,
                Err(_) => {
                    let mut st = slot.lock();
                    let conn = st.conn.as_mut().expect("the reader runs only while connected");
                    if let Some(d) = direct.take() {
                        if let Err(e) = conn.direct_done(d, 0, &mut done) {
                            return End::Protocol(e.to_string());
                        }
                    }
                    let busy = conn.in_flight() > 0;
                    quiet = if busy { quiet + 1 } else { 0 };
                    // Between one and two timeouts of silence with requests waiting.
                    if quiet >= 2 {
                        return End::Stalled;
                    }
                    continue;
                }
            },
            None => receive(&mut r, &mut target).await,
        };
        quiet = 0;
        let n = match n {
            Ok(0) => {
                return End::Lost(
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection").into(),
                )
            }
            Ok(n) => n,
            Err(e) => return End::Lost(e.into()),
        };
        let res = {
            let mut st = slot.lock();
            let conn = st.conn.as_mut().expect("the reader runs only while connected");
            match direct.take() {
                Some(d) => conn.direct_done(d, n, &mut done),
                None => conn.feed(&buf[..n], &mut done),
            }
        };
        for c in done.drain(..) {
            let result = c.result.map_err(|e| ClientError::Server { errno: e.errno, message: e.message });
            let _ = c.tag.tx.send(result);
        }
        if let Err(e) = res {
            return End::Protocol(e.to_string());
        }
    }
}

async fn join(h: &mut JoinHandle<End>) -> End {
    match h.await {
        Ok(end) => end,
        Err(e) => End::Lost(io::Error::other(format!("connection task failed: {e}")).into()),
    }
}

/// Runs one slot: the given session, then reconnect after reconnect until closed.
async fn manage(slot: Arc<Slot>, opts: Arc<ClientOptions>, first: Session) {
    let io_timeout = opts.timeout();
    let mut session = Some(first);
    let mut backoff = opts.reconnect_min;
    loop {
        let s = match session.take() {
            Some(s) => s,
            None => match reconnect(&slot, &opts, &mut backoff).await {
                Some(s) => s,
                None => return,
            },
        };
        if s.neg.size != slot.size || s.neg.flags != slot.flags {
            warn!(
                slot = slot.id,
                size = s.neg.size,
                was = slot.size,
                flags = s.neg.flags,
                was_flags = slot.flags,
                "the export changed size or flags across a reconnect; requests keep the first limits"
            );
        }
        slot.lock().conn = Some(Conn::new(s.neg.mode));
        let mut wt = tokio::spawn(writer(slot.clone(), s.w));
        let mut rt = tokio::spawn(reader(slot.clone(), s.r, io_timeout));
        // A JoinHandle must not be polled again once it has returned.
        let (end, mut wt_done, mut rt_done) = tokio::select! {
            e = join(&mut wt) => (e, true, false),
            e = join(&mut rt) => (e, false, true),
        };
        if matches!(end, End::Disconnected) && !rt_done {
            // Let the replies of requests still in flight arrive until the server closes.
            if let Ok(e) = timeout(CLOSE_GRACE, join(&mut rt)).await {
                debug!(slot = slot.id, end = ?e, "connection closed after NBD_CMD_DISC");
                rt_done = true;
            }
        }
        for (h, done) in [(&mut wt, &mut wt_done), (&mut rt, &mut rt_done)] {
            if !*done {
                h.abort();
                let _ = h.await;
                *done = true;
            }
        }
        let tags = slot.lock().conn.take().map(Conn::into_tags).unwrap_or_default();
        let closing = slot.lock().closing;
        match &end {
            End::Protocol(msg) => {
                error!(slot = slot.id, error = %msg, in_flight = tags.len(), "protocol violation; dropping the connection");
                for p in tags {
                    let _ = p.tx.send(Err(ClientError::Protocol(msg.clone())));
                }
            }
            _ if closing => {
                for p in tags {
                    let _ = p.tx.send(Err(ClientError::Closed));
                }
            }
            _ => {
                let reason = match &end {
                    End::Lost(e) => e.to_string(),
                    End::Stalled => "no reply within the I/O timeout".to_string(),
                    _ => format!("{end:?}"),
                };
                warn!(slot = slot.id, %reason, resubmit = tags.len(), "connection lost; reconnecting");
                // A lost connection gives the server a whole timeout to come back. After a
                // stall, requests keep their age: those that waited a whole timeout fail before
                // the next connection attempt, younger ones are resubmitted.
                let stalled = matches!(end, End::Stalled);
                let now = Instant::now();
                let mut st = slot.lock();
                st.resubmitted += tags.len() as u64;
                for mut p in tags.into_iter().rev() {
                    if !stalled {
                        p.since = now;
                    }
                    st.queue.push_front(p);
                }
            }
        }
        if closing {
            slot.fail_queue(&ClientError::Closed);
            return;
        }
    }
}

/// Reconnects with back-off; `None` when the slot is closing or the server said no for good.
async fn reconnect(slot: &Slot, opts: &ClientOptions, backoff: &mut Duration) -> Option<Session> {
    let io_timeout = opts.timeout();
    loop {
        if slot.lock().closing {
            slot.fail_queue(&ClientError::Closed);
            return None;
        }
        slot.expire(io_timeout);
        let attempt = tokio::select! {
            r = open(opts) => Some(r),
            _ = slot.expire_loop(io_timeout) => None,
        };
        match attempt {
            None => continue,
            Some(Ok(s)) => {
                info!(slot = slot.id, addr = %opts.addr, export = %opts.export, "reconnected");
                slot.lock().reconnects += 1;
                *backoff = opts.reconnect_min;
                return Some(s);
            }
            Some(Err(e)) if e.is_permanent() => {
                error!(slot = slot.id, error = %e, "the server refuses this client; failing all requests");
                slot.lock().terminal = Some(e.clone());
                slot.fail_queue(&e);
                return None;
            }
            Some(Err(e)) => {
                debug!(slot = slot.id, error = %e, retry_in = ?*backoff, "reconnect failed");
                let wait = *backoff;
                *backoff = (*backoff * 2).min(opts.reconnect_max);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = slot.expire_loop(io_timeout) => {}
                }
            }
        }
    }
}

/// The health of a client's connections (for `gnbd_import -l`).
#[derive(Debug, Clone)]
pub enum ConnectionState {
    Connected,
    /// At least one connection is down and being re-established.
    Reconnecting,
    /// The server refused this client for good (fenced, export gone); I/O fails.
    Failed(ClientError),
    Closed,
}

/// What the handshake of the first connection established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    /// `NBD_FLAG_*` transmission flags.
    pub flags: u16,
    pub mode: ReplyMode,
    /// (minimum, preferred, maximum) block sizes, when the server sent them.
    pub block_size: Option<(u32, u32, u32)>,
    /// Whether `base:allocation` was negotiated (block status works).
    pub block_status: bool,
}

#[derive(Debug)]
struct Inner {
    opts: Arc<ClientOptions>,
    info: ExportInfo,
    slots: Vec<Arc<Slot>>,
    next: AtomicUsize,
    max_io: u64,
    managers: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    fn shut(&self) {
        for s in &self.slots {
            s.lock().closing = true;
            s.wake_writer.notify_one();
            s.wake_manager.notify_one();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shut();
    }
}

/// A connected NBD client; cheap to clone (clones share the connections).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects, negotiates (extended headers when offered, else structured replies) and
    /// opens the export; with `connections > 1` and a multi-conn export, opens the others.
    /// Must be called inside a tokio runtime.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        let opts = Arc::new(opts);
        let first = open(&opts).await?;
        let neg = first.neg.clone();
        let want = opts.connections.max(1);
        let count = if neg.flags & NBD_FLAG_CAN_MULTI_CONN != 0 { want } else { 1 };
        if count < want {
            info!(export = %opts.export, "the export does not advertise multi-conn; using one connection");
        }
        let mut sessions = vec![first];
        for _ in 1..count {
            let s = open(&opts).await?;
            if s.neg.mode != neg.mode || s.neg.size != neg.size {
                return Err(ClientError::Protocol("connections to one export negotiated differently".into()));
            }
            sessions.push(s);
        }
        let info = ExportInfo {
            size: neg.size,
            flags: neg.flags,
            mode: neg.mode,
            block_size: neg.block_size,
            block_status: neg.base_allocation.is_some(),
        };
        let max_io = neg
            .block_size
            .map_or(DEFAULT_MAX_BLOCK, |(_, _, max)| u64::from(max))
            .clamp(4096, u64::from(u32::MAX) & !4095);
        let mut slots = Vec::new();
        let mut managers = Vec::new();
        for (id, s) in sessions.into_iter().enumerate() {
            let slot = Arc::new(Slot {
                id,
                size: info.size,
                flags: info.flags,
                state: Mutex::new(SlotState {
                    queue: VecDeque::new(),
                    conn: None,
                    terminal: None,
                    closing: false,
                    reconnects: 0,
                    resubmitted: 0,
                }),
                wake_writer: Notify::new(),
                wake_manager: Notify::new(),
            });
            managers.push(tokio::spawn(manage(slot.clone(), opts.clone(), s)));
            slots.push(slot);
        }
        info!(addr = %opts.addr, export = %opts.export, size = info.size, mode = ?info.mode, connections = count, "connected");
        Ok(Client {
            inner: Arc::new(Inner {
                opts,
                info,
                slots,
                next: AtomicUsize::new(0),
                max_io,
                managers: Mutex::new(managers),
            }),
        })
    }

    /// The options this client was connected with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The state of the connections: `Connected` when all are up, `Failed` when any has
    /// failed for good, `Closed` after [`Client::close`], else `Reconnecting`.
    pub fn state(&self) -> ConnectionState {
        let mut all_up = true;
        for slot in &self.inner.slots {
            let st = slot.lock();
            if let Some(e) = &st.terminal {
                return ConnectionState::Failed(e.clone());
            }
            if st.closing {
                return ConnectionState::Closed;
            }
            all_up &= st.conn.is_some();
        }
        if all_up {
            ConnectionState::Connected
        } else {
            ConnectionState::Reconnecting
        }
    }

    /// How many times a lost connection has been re-established.
    pub fn reconnects(&self) -> u64 {
        self.inner.slots.iter().map(|s| s.lock().reconnects).sum()
    }

    /// How many requests were sent again after losing their connection.
    pub fn resubmitted(&self) -> u64 {
        self.inner.slots.iter().map(|s| s.lock().resubmitted).sum()
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.info.size
    }

    /// Transmission flags (`NBD_FLAG_*`).
    pub fn flags(&self) -> u16 {
        self.inner.info.flags
    }

    /// Everything the handshake established.
    pub fn info(&self) -> &ExportInfo {
        &self.inner.info
    }

    /// Number of connections in use.
    pub fn connections(&self) -> usize {
        self.inner.slots.len()
    }

    /// Largest read or write sent as one request; larger ones are split.
    pub fn max_request(&self) -> u64 {
        self.inner.max_io
    }

    fn start(&self, op: Op, payload: Option<Arc<[u8]>>) -> Result<ReplyRx, ClientError> {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        self.inner.slots[i].submit(op, payload)
    }

    async fn wait(rx: ReplyRx) -> Result<Reply, ClientError> {
        rx.await.map_err(|_| ClientError::Closed)?
    }

    fn need(&self, flag: u16, what: &'static str) -> Result<(), ClientError> {
        if self.inner.info.flags & flag == 0 {
            return Err(ClientError::Unsupported(what));
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(ClientError::Invalid(format!(
                "range {offset}+{len} goes beyond the end of the export ({} bytes)",
                self.size()
            ))),
        }
    }

    fn check_writable(&self) -> Result<(), ClientError> {
        if self.flags() & NBD_FLAG_READ_ONLY != 0 {
            return Err(ClientError::Unsupported("writes (the export is read-only)"));
        }
        Ok(())
    }

    /// Pieces `(offset, len)` of at most `max` bytes covering `offset..offset+len`.
    fn pieces(offset: u64, len: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
        let mut at = 0;
        std::iter::from_fn(move || {
            (at < len).then(|| {
                let n = (len - at).min(max);
                let p = (offset + at, n);
                at += n;
                p
            })
        })
    }

    /// Sends every piece at once, then waits for all of them (first error wins).
    async fn range_op(&self, command: Command, flags: u16, offset: u64, len: u64, max: u64) -> Result<(), ClientError> {
        let rxs: Vec<_> = Self::pieces(offset, len, max)
            .map(|(o, l)| self.start(Op { command, flags, offset: o, length: l }, None))
            .collect::<Result<_, _>>()?;
        for rx in rxs {
            Self::wait(rx).await?;
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ClientError> {
        if len as u64 <= self.inner.max_io {
            self.check_range(offset, len as u64)?;
            if len == 0 {
                return Ok(Vec::new());
            }
            let rx = self.start(Op { command: Command::Read, flags: 0, offset, length: len as u64 }, None)?;
            return match Self::wait(rx).await? {
                Reply::Data(d) => Ok(d),
                other => Err(ClientError::Protocol(format!("a READ completed with {other:?}"))),
            };
        }
        let mut buf = vec![0u8; len];
        self.read_into(offset, &mut buf).await?;
        Ok(buf)
    }

    /// Hands back the buffer of a finished [`Client::read`] so a later read can reuse it
    /// (optional: saves an allocation and fresh pages per large read).
    pub fn recycle(&self, buf: Vec<u8>) {
        let i = self.inner.next.load(Ordering::Relaxed) % self.inner.slots.len();
        if let Some(conn) = self.inner.slots[i].lock().conn.as_mut() {
            conn.recycle(buf);
        }
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`.
    pub async fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.check_range(offset, buf.len() as u64)?;
        let rxs: Vec<_> = Self::pieces(offset, buf.len() as u64, self.inner.max_io)
            .map(|(o, l)| self.start(Op { command: Command::Read, flags: 0, offset: o, length: l }, None))
            .collect::<Result<_, _>>()?;
        let mut at = 0usize;
        for rx in rxs {
            match Self::wait(rx).await? {
                Reply::Data(d) => {
                    buf[at..at + d.len()].copy_from_slice(&d);
                    at += d.len();
                }
                other => return Err(ClientError::Protocol(format!("a READ completed with {other:?}"))),
            }
        }
        Ok(())
    }

    /// Like [`Client::write`] for data the caller already holds in an `Arc`: sent without a
    /// copy when it fits in one request.
    pub async fn write_shared(&self, offset: u64, data: Arc<[u8]>, fua: bool) -> Result<(), ClientError> {
        if data.len() as u64 > self.inner.max_io {
            return self.write(offset, &data, fua).await;
        }
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        let flags = if fua {
            self.need(NBD_FLAG_SEND_FUA, "FUA")?;
            NBD_CMD_FLAG_FUA
        } else {
            0
        };
        let op = Op { command: Command::Write, flags, offset, length: data.len() as u64 };
        Self::wait(self.start(op, Some(data))?).await.map(drop)
    }

    /// Writes `data` at `offset`; with `fua`, the data is on stable storage when this returns.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ClientError> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        let flags = if fua {
            self.need(NBD_FLAG_SEND_FUA, "FUA")?;
            NBD_CMD_FLAG_FUA
        } else {
            0
        };
        let rxs: Vec<_> = Self::pieces(offset, data.len() as u64, self.inner.max_io)
            .map(|(o, l)| {
                let start = (o - offset) as usize;
                let payload: Arc<[u8]> = Arc::from(&data[start..start + l as usize]);
                self.start(Op { command: Command::Write, flags, offset: o, length: l }, Some(payload))
            })
            .collect::<Result<_, _>>()?;
        for rx in rxs {
            Self::wait(rx).await?;
        }
        Ok(())
    }

    /// Makes every write completed before this call durable (on any connection: multi-conn
    /// is used only when the server promises exactly that).
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.need(NBD_FLAG_SEND_FLUSH, "FLUSH")?;
        let rx = self.start(Op { command: Command::Flush, flags: 0, offset: 0, length: 0 }, None)?;
        Self::wait(rx).await.map(drop)
    }

    /// Discards `len` bytes at `offset` (the content there becomes unspecified).
    pub async fn trim(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        self.check_writable()?;
        self.need(NBD_FLAG_SEND_TRIM, "TRIM")?;
        self.check_range(offset, len)?;
        self.range_op(Command::Trim, 0, offset, len, MAX_RANGE).await
    }

    /// Writes `len` zero bytes at `offset` without sending them.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        self.check_writable()?;
        self.need(NBD_FLAG_SEND_WRITE_ZEROES, "WRITE_ZEROES")?;
        self.check_range(offset, len)?;
        self.range_op(Command::WriteZeroes, 0, offset, len, MAX_RANGE).await
    }

    /// The `base:allocation` extents covering exactly `offset..offset+len` (flags:
    /// `NBD_STATE_HOLE`, `NBD_STATE_ZERO`).
    pub async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ClientError> {
        if !self.inner.info.block_status {
            return Err(ClientError::Unsupported("block status (base:allocation was not negotiated)"));
        }
        self.check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let ask = (end - at).min(MAX_RANGE);
            let rx = self.start(Op { command: Command::BlockStatus, flags: 0, offset: at, length: ask }, None)?;
            let extents = match Self::wait(rx).await? {
                Reply::Extents(e) => e,
                other => return Err(ClientError::Protocol(format!("a BLOCK_STATUS completed with {other:?}"))),
            };
            let before = at;
            for e in extents {
                if at >= end || e.length == 0 {
                    break;
                }
                let length = e.length.min(end - at);
                at += length;
                match out.last_mut() {
                    Some(last) if last.flags == e.flags => last.length += length,
                    _ => out.push(Extent { length, flags: e.flags }),
                }
            }
            if at == before {
                return Err(ClientError::Protocol(format!("block status at {at} made no progress")));
            }
        }
        Ok(out)
    }

    /// Sends `NBD_CMD_DISC` on every connection once its queue is empty, waits (bounded) for
    /// the replies still due, and stops the connection tasks. Other clones stop working too.
    pub async fn close(self) {
        self.inner.shut();
        let managers = std::mem::take(&mut *self.inner.managers.lock().expect("managers lock"));
        for m in managers {
            let _ = m.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range() {
        let v: Vec<_> = Client::pieces(10, 25, 10).collect();
        assert_eq!(v, vec![(10, 10), (20, 10), (30, 5)]);
        assert_eq!(Client::pieces(0, 0, 10).count(), 0);
    }

    #[test]
    fn addresses() {
        assert_eq!(unix_path("/run/gnbd.sock"), Some(Path::new("/run/gnbd.sock")));
        assert_eq!(unix_path("unix:x.sock"), Some(Path::new("x.sock")));
        assert_eq!(unix_path("127.0.0.1:10809"), None);
        assert_eq!(unix_path("server:10809"), None);
    }

    #[test]
    fn zero_timeout_means_forever() {
        let mut o = ClientOptions::new("h:1", "e");
        o.io_timeout = Some(Duration::ZERO);
        assert_eq!(o.timeout(), None);
        o.io_timeout = Some(Duration::from_secs(2));
        assert_eq!(o.timeout(), Some(Duration::from_secs(2)));
    }
}
