//! One connection ("slot"): its queue of requests, and the writer and reader tasks that
//! move them through the sans-IO [`Conn`] while connected; requests that wait too long for a
//! connection fail with the I/O timeout.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nbd_proto::{encode_request, Command, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{error, warn};

use crate::conn::{Conn, Op, Reply};
use crate::error::ClientError;

use super::session::{ReadHalf, WriteHalf};

/// Where a caller waits for its request's outcome.
pub(super) type ReplyRx = oneshot::Receiver<Result<Reply, ClientError>>;

/// A request waiting in a slot's queue or in flight on its connection.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) op: Op,
    pub(super) payload: Option<Arc<[u8]>>,
    pub(super) tx: oneshot::Sender<Result<Reply, ClientError>>,
    /// Since when the request has been waiting for a connection (for the I/O timeout).
    pub(super) since: Instant,
}

#[derive(Debug)]
pub(super) struct SlotState {
    pub(super) queue: VecDeque<Pending>,
    /// Present while connected.
    pub(super) conn: Option<Conn<Pending>>,
    /// Set when reconnecting cannot help (fenced, export gone): every request fails with it.
    pub(super) terminal: Option<ClientError>,
    pub(super) closing: bool,
    /// Connections re-established after a loss.
    pub(super) reconnects: u64,
    /// Requests sent again after a connection was lost before their reply.
    pub(super) resubmitted: u64,
}

/// One connection's shared state.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) id: usize,
    /// Export size and flags from the first handshake; a reconnect that finds others warns.
    pub(super) size: u64,
    pub(super) flags: u16,
    pub(super) state: Mutex<SlotState>,
    pub(super) wake_writer: Notify,
    pub(super) wake_manager: Notify,
}

impl Slot {
    pub(super) fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().expect("a slot lock holder panicked")
    }

    pub(super) fn submit(&self, op: Op, payload: Option<Arc<[u8]>>) -> Result<ReplyRx, ClientError> {
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

    pub(super) fn fail_queue(&self, err: &ClientError) {
        let queued: Vec<Pending> = self.lock().queue.drain(..).collect();
        for p in queued {
            let _ = p.tx.send(Err(err.clone()));
        }
    }

    /// Fails queued requests older than the timeout; returns the next deadline.
    pub(super) fn expire(&self, io_timeout: Option<Duration>) -> Option<Instant> {
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
    pub(super) async fn expire_loop(&self, io_timeout: Option<Duration>) {
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
pub(super) enum End {
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
pub(super) const VECTORED_MIN: usize = 64 << 10;
/// Buffered headers and small payloads are written out once this much has gathered (and
/// whenever the queue runs empty).
pub(super) const OUT_FLUSH: usize = 256 << 10;

/// Writes all of `a` then all of `b`, with as few system calls as the socket allows.
pub(super) async fn write_both(w: &mut WriteHalf, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
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

pub(super) async fn writer(slot: Arc<Slot>, mut w: WriteHalf) -> End {
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
pub(super) const DIRECT_MIN: usize = 16 << 10;

/// Where the reader puts the next bytes from the socket.
pub(super) enum Target<'a> {
    /// The reader's own buffer, fed to the decoder.
    Buffer(&'a mut [u8]),
    /// A read request's buffer, appended to (at most `usize` bytes).
    Direct(&'a mut Vec<u8>, usize),
}

pub(super) async fn receive(r: &mut ReadHalf, target: &mut Target<'_>) -> io::Result<usize> {
    match target {
        Target::Buffer(b) => r.read(b).await,
        Target::Direct(v, limit) => (&mut *r).take(*limit as u64).read_buf(*v).await,
    }
}

pub(super) async fn reader(slot: Arc<Slot>, mut r: ReadHalf, io_timeout: Option<Duration>) -> End {
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

pub(super) async fn join(h: &mut JoinHandle<End>) -> End {
    match h.await {
        Ok(end) => end,
        Err(e) => End::Lost(io::Error::other(format!("connection task failed: {e}")).into()),
    }
}
