//! The async driver: connections, the writer and reader task of each, reconnection with
//! resubmission, the I/O timeout, and the public [`Client`] API.
//!
//! Each connection ("slot") has a manager task. While connected it runs a writer task
//! (takes requests from the slot's queue, records them in the sans-IO [`Conn`] and writes
//! them) and a reader task (feeds the socket's bytes to the `Conn` and answers the callers'
//! oneshot channels). When either ends, the manager puts every request that had no reply
//! back at the front of the queue and reconnects with exponential back-off; while the slot
//! is down, requests older than the I/O timeout fail with [`ClientError::TimedOut`].
//!
//! - `options`: [`ClientOptions`];
//! - `session`: opening and negotiating one connection, listing exports;
//! - `slot`: one connection's queue and its writer and reader tasks;
//! - `reconnect`: the manager of a slot: reconnection with resubmission;
//! - `split`: requests larger than the server takes, sent as several;
//! - this module: the public [`Client`] API over a pool of slots (multi-conn), round-robin.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nbd_proto::consts::*;
use nbd_proto::{Command, Extent, ReplyMode};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::info;

use crate::conn::{Op, Reply};
use crate::error::ClientError;

mod options;
mod reconnect;
mod session;
mod slot;
mod split;

pub use options::ClientOptions;
pub use session::{list_exports, list_exports_with};

use reconnect::manage;
use session::open;
use slot::{ReplyRx, Slot, SlotState};
use split::{DEFAULT_MAX_BLOCK, MAX_RANGE};

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
