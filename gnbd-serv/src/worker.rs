//! The data path: worker threads, each owning one io_uring and the connections handed to it
//! after their handshake. Per connection, one receive is in flight at a time; every request
//! goes to the ring as soon as its header (and payload) is in; replies are queued as their
//! completions arrive, in any order, and sent in batches with one sendmsg.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use nbd_proto::consts::*;
use nbd_proto::{
    decode_request, encode_block_status, encode_done, encode_error, encode_read_reply_header, wire_error_from_errno,
    Command, Decode, Negotiated, ReplyMode, Request,
};
use tracing::{debug, info, warn};

use crate::export::{Export, DIRECT_ALIGN};
use crate::request::{block_status, validate, Limits, Refused};
use crate::sys;
use crate::sys::buf::{AlignedBuf, BufPool};
use crate::sys::ring::{Completion, OutMsg, Owned, Ring};

/// A connection that finished its handshake, on its way to a worker.
#[derive(Debug)]
pub struct NewConn {
    pub sock: OwnedFd,
    pub peer: String,
    pub export: Arc<Export>,
    pub negotiated: Negotiated,
    /// Bytes received after the handshake's last message (early requests).
    pub leftover: Vec<u8>,
    pub client_id: u64,
    /// Set by a fence order: start no more I/O for this connection.
    pub fenced: Arc<std::sync::atomic::AtomicBool>,
}

/// Messages to a worker.
#[derive(Debug)]
pub enum WorkerMsg {
    Conn(Box<NewConn>),
    /// Stop reading new requests, finish and answer the in-flight ones, then exit.
    Shutdown,
    /// The grace period is over: cut every connection (a client that does not read its
    /// replies would otherwise hold the shutdown forever).
    Abort,
}

/// The acceptor's handle on a worker thread.
#[derive(Debug)]
pub struct WorkerHandle {
    tx: Sender<WorkerMsg>,
    wake: Arc<OwnedFd>,
    join: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl WorkerHandle {
    pub fn spawn(id: usize, ring_entries: u32) -> std::io::Result<WorkerHandle> {
        let (tx, rx) = channel();
        let wake = Arc::new(sys::eventfd()?);
        let w = wake.clone();
        let (ready_tx, ready_rx) = channel();
        let join = std::thread::Builder::new().name(format!("gnbd-worker-{id}")).spawn(move || {
            // The ring is made on the thread that uses it (single-issuer rings require it).
            match Ring::new(ring_entries) {
                Ok(ring) => {
                    let _ = ready_tx.send(Ok(()));
                    let run = std::panic::AssertUnwindSafe(move || Worker::new(ring, rx, w).run());
                    if std::panic::catch_unwind(run).is_err() {
                        // A worker that died would leave its clients hanging and swallow new
                        // ones: stop loudly so clients reconnect to a restarted server.
                        tracing::error!("worker {id} crashed (a bug); aborting so that clients see the failure");
                        std::process::abort();
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        ready_rx.recv().map_err(|_| std::io::Error::other("worker thread died while starting"))??;
        Ok(WorkerHandle { tx, wake, join: std::sync::Mutex::new(Some(join)) })
    }

    pub fn send(&self, msg: WorkerMsg) {
        if self.tx.send(msg).is_ok() {
            sys::eventfd_signal(self.wake.as_raw_fd());
        }
    }

    pub fn is_finished(&self) -> bool {
        self.join.lock().expect("join lock").as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the thread to finish.
    pub fn join(&self) {
        let j = self.join.lock().expect("join lock").take();
        if let Some(j) = j {
            let _ = j.join();
        }
    }
}

// Tag layout: connection index (24 bits) | generation (16) | kind (8) | request slot (16).
const KIND_RECV: u64 = 1;
const KIND_PAYLOAD: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_FILE: u64 = 4;
const TAG_WAKE: u64 = u64::MAX;

fn tag(conn: usize, gen: u16, kind: u64, slot: usize) -> u64 {
    ((conn as u64) << 40) | (u64::from(gen) << 24) | (kind << 16) | slot as u64
}

fn untag(t: u64) -> (usize, u16, u64, usize) {
    ((t >> 40) as usize, (t >> 24) as u16, (t >> 16) & 0xff, (t & 0xffff) as usize)
}

/// Size of the per-connection receive buffer for request headers and small payloads.
const RBUF_SIZE: usize = 128 * 1024;
/// Per-connection limits before it stops reading new requests.
const MAX_SLOTS: usize = 1024;
const MAX_INFLIGHT_BYTES: u64 = 256 << 20;
/// Direct reads of at least twice this size go to the device as parallel parts of this size.
const SPLIT_READ: usize = 256 * 1024;
/// Chunk used when zeroes must be written because the store cannot fallocate.
const ZERO_CHUNK: usize = 1 << 20;

/// What a request slot is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its write payload is still arriving.
    Payload,
    /// The main operation is in the ring.
    Io,
    /// Writing zeroes by hand, up to this offset.
    ZeroFill { end: u64 },
    /// A flush after the operation, for FUA.
    Sync,
}

#[derive(Debug)]
struct Slot {
    req: Request,
    phase: Phase,
    /// Data buffer (reads and writes); in the ring while an operation runs.
    buf: Option<AlignedBuf>,
    /// Bytes of the operation done so far (short reads and writes are continued).
    done: u64,
    /// Error to report once the payload has been drained.
    refused: Option<Refused>,
    /// The read went to the device as several parallel parts.
    split: bool,
    fd: RawFd,
}

#[derive(Debug)]
struct Conn {
    sock: OwnedFd,
    fd: RawFd,
    gen: u16,
    peer: String,
    export: Arc<Export>,
    client_id: u64,
    fenced: Arc<std::sync::atomic::AtomicBool>,
    limits: Limits,
    rbuf: Option<Vec<u8>>,
    rstart: usize,
    rend: usize,
    /// Slot whose payload is being received straight into its buffer.
    payload: Option<usize>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    active: usize,
    inflight_bytes: u64,
    sendq: Vec<OutMsg>,
    sending: bool,
    send_skip: usize,
    /// Operations of this connection in the ring.
    ops: usize,
    recv_pending: bool,
    /// `process_input` is running for this connection (replies queued meanwhile must not
    /// re-enter it).
    parsing: bool,
    /// Listed in `Worker::want_send`.
    send_wanted: bool,
    /// No more requests will be read (disconnect, error, shutdown).
    eof: bool,
    /// The socket is broken: replies are dropped.
    dead: bool,
}

impl Conn {
    fn alloc_slot(&mut self, req: Request, fd: RawFd) -> usize {
        let s = Slot { req, phase: Phase::Io, buf: None, done: 0, refused: None, split: false, fd };
        self.active += 1;
        if matches!(req.command, Command::Read | Command::Write) {
            self.inflight_bytes += req.length;
        }
        if let Some(i) = self.free_slots.pop() {
            self.slots[i] = Some(s);
            i
        } else {
            self.slots.push(Some(s));
            self.slots.len() - 1
        }
    }

    fn slot(&mut self, i: usize) -> &mut Slot {
        self.slots[i].as_mut().expect("slot in use")
    }

    fn free_slot(&mut self, i: usize) -> Slot {
        let s = self.slots[i].take().expect("slot in use");
        self.free_slots.push(i);
        self.active -= 1;
        if matches!(s.req.command, Command::Read | Command::Write) {
            self.inflight_bytes -= s.req.length;
        }
        s
    }

    fn mode(&self) -> ReplyMode {
        self.limits.mode
    }

    fn paused(&self) -> bool {
        self.active >= MAX_SLOTS || self.inflight_bytes >= MAX_INFLIGHT_BYTES
    }
}

struct Worker {
    ring: Ring,
    rx: Receiver<WorkerMsg>,
    wake: Arc<OwnedFd>,
    conns: Vec<Option<Box<Conn>>>,
    free_conns: Vec<usize>,
    gen: u16,
    pool: BufPool,
    heads: Vec<Vec<u8>>,
    zeroes: Option<Arc<AlignedBuf>>,
    shutting_down: bool,
    wake_pending: bool,
    completions: Vec<Completion>,
    /// Connections with replies queued since the last flush.
    want_send: Vec<usize>,
}

impl Worker {
    fn new(ring: Ring, rx: Receiver<WorkerMsg>, wake: Arc<OwnedFd>) -> Self {
        Worker {
            ring,
            rx,
            wake,
            conns: Vec::new(),
            free_conns: Vec::new(),
            gen: 0,
            pool: BufPool::default(),
            heads: Vec::new(),
            zeroes: None,
            shutting_down: false,
            wake_pending: false,
            completions: Vec::new(),
            want_send: Vec::new(),
        }
    }

    fn run(&mut self) {
        self.arm_wake();
        loop {
            if let Err(e) = self.ring.submit_and_wait(1) {
                warn!(error = %e, "io_uring wait failed; worker stops");
                break;
            }
            let mut comps = std::mem::take(&mut self.completions);
            self.ring.drain(&mut comps);
            for c in comps.drain(..) {
                self.complete(c);
            }
            self.completions = comps;
            self.flush_sends();
            if self.shutting_down && self.conns.iter().all(Option::is_none) {
                break;
            }
        }
        // Let the pending eventfd read finish so no buffer is left with the kernel.
        if self.wake_pending {
            sys::eventfd_signal(self.wake.as_raw_fd());
            while self.ring.in_flight() > 0 {
                if self.ring.submit_and_wait(1).is_err() {
                    break;
                }
                let mut comps = Vec::new();
                self.ring.drain(&mut comps);
            }
        }
    }

    fn arm_wake(&mut self) {
        self.ring.read_counter(self.wake.as_raw_fd(), TAG_WAKE);
        self.wake_pending = true;
    }

    fn messages(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                WorkerMsg::Conn(c) => self.add_conn(*c),
                WorkerMsg::Abort => {
                    for c in self.conns.iter_mut().flatten() {
                        sys::shutdown(c.fd, libc::SHUT_RDWR);
                    }
                }
                WorkerMsg::Shutdown => {
                    self.shutting_down = true;
                    for c in self.conns.iter_mut().flatten() {
                        // Wakes the pending receive with end-of-file; replies still go out.
                        sys::shutdown(c.fd, libc::SHUT_RD);
                    }
                }
            }
        }
    }

    fn add_conn(&mut self, nc: NewConn) {
        let neg = nc.negotiated;
        let mut rbuf = vec![0u8; RBUF_SIZE.max(nc.leftover.len())];
        rbuf[..nc.leftover.len()].copy_from_slice(&nc.leftover);
        self.gen = self.gen.wrapping_add(1);
        let conn = Conn {
            fd: nc.sock.as_raw_fd(),
            sock: nc.sock,
            gen: self.gen,
            peer: nc.peer,
            limits: Limits {
                size: nc.export.size,
                readonly: nc.export.spec.readonly,
                mode: neg.mode,
                base_allocation: neg.base_allocation.is_some(),
            },
            export: nc.export,
            client_id: nc.client_id,
            fenced: nc.fenced,
            rbuf: Some(rbuf),
            rstart: 0,
            rend: nc.leftover.len(),
            payload: None,
            slots: Vec::new(),
            free_slots: Vec::new(),
            active: 0,
            inflight_bytes: 0,
            sendq: Vec::new(),
            sending: false,
            send_skip: 0,
            ops: 0,
            recv_pending: false,
            parsing: false,
            send_wanted: false,
            eof: self.shutting_down,
            dead: false,
        };
        let ci = if let Some(i) = self.free_conns.pop() {
            self.conns[i] = Some(Box::new(conn));
            i
        } else {
            self.conns.push(Some(Box::new(conn)));
            self.conns.len() - 1
        };
        debug!(conn = ci, "connection added to worker");
        self.process_input(ci);
        self.maybe_close(ci);
    }

    fn conn(&mut self, ci: usize) -> &mut Conn {
        self.conns[ci].as_mut().expect("connection exists")
    }

    fn complete(&mut self, c: Completion) {
        if c.tag == TAG_WAKE {
            self.wake_pending = false;
            if !(self.shutting_down && self.conns.iter().all(Option::is_none)) {
                self.arm_wake();
            }
            self.messages();
            return;
        }
        let (ci, gen, kind, si) = untag(c.tag);
        match self.conns.get(ci) {
            Some(Some(conn)) if conn.gen == gen => {}
            _ => {
                warn!(tag = c.tag, "completion for a connection that is gone; ignored");
                return;
            }
        }
        self.conn(ci).ops -= 1;
        match kind {
            KIND_RECV => self.recv_done(ci, c),
            KIND_PAYLOAD => self.payload_done(ci, si, c),
            KIND_SEND => self.send_done(ci, c),
            KIND_FILE => self.file_done(ci, si, c),
            _ => warn!(tag = c.tag, "completion of unknown kind"),
        }
        self.maybe_close(ci);
    }

    // ----- receiving -----

    fn submit_recv(&mut self, ci: usize) {
        let conn = self.conn(ci);
        if conn.eof || conn.recv_pending || conn.payload.is_some() || conn.paused() {
            return;
        }
        let mut rbuf = conn.rbuf.take().expect("receive buffer is home");
        // Keep the unparsed tail at the front.
        if conn.rstart > 0 {
            rbuf.copy_within(conn.rstart..conn.rend, 0);
            conn.rend -= conn.rstart;
            conn.rstart = 0;
        }
        let (fd, rend, t) = (conn.fd, conn.rend, tag(ci, conn.gen, KIND_RECV, 0));
        let cap = rbuf.len();
        conn.recv_pending = true;
        conn.ops += 1;
        self.ring.recv_bytes(fd, rbuf, rend..cap, t);
    }

    fn recv_done(&mut self, ci: usize, c: Completion) {
        let conn = self.conn(ci);
        conn.recv_pending = false;
        let Owned::Bytes(rbuf) = c.owned else { unreachable!("receive completions carry the receive buffer") };
        conn.rbuf = Some(rbuf);
        if c.result <= 0 {
            if c.result < 0 && c.result != -libc::ECONNRESET {
                debug!(peer = %conn.peer, error = %std::io::Error::from_raw_os_error(-c.result), "receive failed");
            }
            conn.eof = true;
            return;
        }
        conn.rend += c.result as usize;
        self.process_input(ci);
    }

    /// Parses and starts every complete request in the receive buffer, then receives more.
    fn process_input(&mut self, ci: usize) {
        self.conn(ci).parsing = true;
        loop {
            let conn = self.conn(ci);
            if conn.eof || conn.payload.is_some() || conn.paused() {
                break;
            }
            let rbuf = conn.rbuf.as_ref().expect("receive buffer is home");
            let req = match decode_request(&rbuf[conn.rstart..conn.rend], conn.mode()) {
                Ok(Decode::Done { value, consumed }) => {
                    conn.rstart += consumed;
                    value
                }
                Ok(Decode::NeedMore { .. }) => break,
                Err(e) => {
                    warn!(peer = %conn.peer, error = %e, "protocol violation; disconnecting");
                    conn.eof = true;
                    break;
                }
            };
            self.request(ci, req);
        }
        self.conn(ci).parsing = false;
        self.submit_recv(ci);
    }

    fn request(&mut self, ci: usize, req: Request) {
        let conn = self.conn(ci);
        if req.command == Command::Disc {
            debug!(peer = %conn.peer, "client disconnects");
            conn.eof = true;
            return;
        }
        let refused = validate(&req, &conn.limits).err();
        let payload = req.payload_len();
        if payload == 0 {
            match refused {
                Some(r) => self.reply_error(ci, &req, r.error, r.why),
                None => {
                    let fd = self.pick_fd(ci, &req);
                    let si = self.conn(ci).alloc_slot(req, fd);
                    self.start(ci, si);
                }
            }
            return;
        }
        // A payload follows: it must be taken off the wire even when the request is refused.
        if payload > u64::from(crate::export::MAX_PAYLOAD) {
            warn!(peer = %conn.peer, length = payload, "write payload over 64 MiB cannot be skipped; disconnecting");
            conn.eof = true;
            return;
        }
        let len = payload as usize;
        let fd = self.pick_fd(ci, &req);
        let mut buf = self.pool.get(len);
        let conn = self.conn(ci);
        let rbuf = conn.rbuf.as_ref().expect("receive buffer is home");
        let have = (conn.rend - conn.rstart).min(len);
        buf.as_mut_slice()[..have].copy_from_slice(&rbuf[conn.rstart..conn.rstart + have]);
        conn.rstart += have;
        let si = conn.alloc_slot(req, fd);
        let slot = conn.slot(si);
        slot.buf = Some(buf);
        slot.done = have as u64;
        slot.refused = refused;
        if have == len {
            self.payload_complete(ci, si);
        } else {
            self.recv_payload(ci, si);
        }
    }

    fn recv_payload(&mut self, ci: usize, si: usize) {
        let conn = self.conn(ci);
        conn.payload = Some(si);
        let (fd, t) = (conn.fd, tag(ci, conn.gen, KIND_PAYLOAD, si));
        conn.ops += 1;
        let slot = conn.slot(si);
        slot.phase = Phase::Payload;
        let (from, to) = (slot.done as usize, slot.req.length as usize);
        let buf = slot.buf.take().expect("payload buffer");
        self.ring.recv_buf(fd, buf, from..to, t);
    }

    fn payload_done(&mut self, ci: usize, si: usize, c: Completion) {
        let Owned::Buf(buf) = c.owned else { unreachable!("payload completions carry the buffer") };
        let conn = self.conn(ci);
        let slot = conn.slot(si);
        slot.buf = Some(buf);
        if c.result <= 0 {
            debug!(peer = %conn.peer, "client vanished in the middle of a write payload");
            conn.payload = None;
            conn.eof = true;
            let s = conn.free_slot(si);
            if let Some(b) = s.buf {
                self.pool.put(b);
            }
            return;
        }
        slot.done += c.result as u64;
        if slot.done < slot.req.length {
            self.recv_payload(ci, si);
            return;
        }
        self.conn(ci).payload = None;
        self.payload_complete(ci, si);
        self.process_input(ci);
    }

    fn payload_complete(&mut self, ci: usize, si: usize) {
        let slot = self.conn(ci).slot(si);
        slot.done = 0;
        if let Some(r) = slot.refused {
            let req = slot.req;
            self.finish_error(ci, si, &req, r.error, r.why);
        } else {
            self.start(ci, si);
        }
    }

    // ----- the backing store -----

    /// O_DIRECT for aligned data transfers; the page-cache descriptor otherwise.
    fn pick_fd(&mut self, ci: usize, req: &Request) -> RawFd {
        let e = &self.conn(ci).export;
        match &e.buffered {
            Some(b)
                if matches!(req.command, Command::Read | Command::Write)
                    && (!req.offset.is_multiple_of(DIRECT_ALIGN) || !req.length.is_multiple_of(DIRECT_ALIGN)) =>
            {
                b.as_raw_fd()
            }
            _ => e.file.as_raw_fd(),
        }
    }

    fn start(&mut self, ci: usize, si: usize) {
        let conn = self.conn(ci);
        if conn.fenced.load(std::sync::atomic::Ordering::SeqCst) {
            // The node is fenced: not one more byte of its I/O may reach the store.
            let req = conn.slot(si).req;
            self.finish_error(ci, si, &req, NBD_EPERM, "this node has been fenced");
            return;
        }
        let conn = self.conn(ci);
        let t = tag(ci, conn.gen, KIND_FILE, si);
        let cached = conn.export.spec.cached || !conn.export.direct_io();
        let direct_fd = !cached && conn.export.file.as_raw_fd() == conn.slots[si].as_ref().map_or(-1, |s| s.fd);
        conn.ops += 1;
        let slot = conn.slot(si);
        slot.phase = Phase::Io;
        let (req, fd, done, buf, was_split) = (slot.req, slot.fd, slot.done, slot.buf.take(), slot.split);
        match req.command {
            Command::Read => {
                let len = req.length as usize;
                let buf = buf.unwrap_or_else(|| self.pool.get(len));
                if direct_fd && done == 0 && len >= 2 * SPLIT_READ && !was_split {
                    // Devices serve large direct reads faster as parallel smaller ones.
                    self.conn(ci).slot(si).split = true;
                    self.ring.read_split(fd, buf, 0..len, req.offset, SPLIT_READ, t);
                } else {
                    self.ring.read(fd, buf, done as usize..len, req.offset + done, t);
                }
            }
            Command::Write => {
                let buf = buf.expect("write payload");
                let flags = if req.flags & NBD_CMD_FLAG_FUA != 0 { libc::RWF_DSYNC } else { 0 };
                self.ring.write(fd, buf, done as usize..req.length as usize, req.offset + done, flags, t);
            }
            Command::Flush => self.ring.fsync(fd, true, t),
            Command::Trim => {
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                self.ring.fallocate(fd, mode, req.offset, req.length, t)
            }
            Command::WriteZeroes => {
                let mode = if req.flags & NBD_CMD_FLAG_NO_HOLE != 0 {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                };
                self.ring.fallocate(fd, mode, req.offset, req.length, t)
            }
            Command::Cache if cached => self.ring.fadvise(fd, req.offset, req.length, libc::POSIX_FADV_WILLNEED, t),
            Command::Cache => {
                // O_DIRECT export: there is no cache to fill.
                self.conn(ci).ops -= 1;
                self.finish_ok(ci, si);
            }
            Command::BlockStatus => {
                self.conn(ci).ops -= 1;
                self.block_status(ci, si);
            }
            Command::Disc | Command::Resize | Command::Other(_) => {
                unreachable!("refused by validation or handled before")
            }
        }
    }

    fn file_done(&mut self, ci: usize, si: usize, c: Completion) {
        let conn = self.conn(ci);
        let slot = conn.slot(si);
        let req = slot.req;
        if let Owned::Buf(b) = c.owned {
            slot.buf = Some(b);
        }
        let res = c.result;
        match (slot.phase, req.command) {
            (Phase::Sync, _) => {
                if res < 0 {
                    self.finish_errno(ci, si, -res);
                } else {
                    self.finish_ok(ci, si);
                }
            }
            (Phase::ZeroFill { end }, _) => {
                if res <= 0 {
                    self.finish_errno(ci, si, if res == 0 { libc::EIO } else { -res });
                    return;
                }
                slot.done += res as u64;
                if req.offset + slot.done < end {
                    self.zero_fill(ci, si);
                } else {
                    self.after_write(ci, si);
                }
            }
            (_, Command::Read | Command::Write) => {
                if res < 0 {
                    self.finish_errno(ci, si, -res);
                    return;
                }
                if res == 0 {
                    // The backing file shrank under us.
                    self.finish_errno(ci, si, libc::EIO);
                    return;
                }
                if slot.split && (res as u64) < req.length {
                    // A part came back short: read it again in one piece.
                    slot.done = 0;
                    self.start(ci, si);
                    return;
                }
                slot.done += res as u64;
                if slot.done < req.length {
                    self.start(ci, si);
                } else if req.command == Command::Read {
                    self.finish_read(ci, si);
                } else {
                    self.finish_ok(ci, si);
                }
            }
            (_, Command::Trim) => {
                // Trim is advisory: a store that cannot punch holes has done nothing wrong.
                if res < 0 && res != -libc::EOPNOTSUPP {
                    self.finish_errno(ci, si, -res);
                } else {
                    self.after_write(ci, si);
                }
            }
            (_, Command::WriteZeroes) => {
                if res >= 0 {
                    self.after_write(ci, si);
                } else if res == -libc::EOPNOTSUPP || res == -libc::EINVAL {
                    if req.flags & NBD_CMD_FLAG_FAST_ZERO != 0 {
                        self.finish_error(ci, si, &req, NBD_ENOTSUP, "zeroing this store is not fast");
                    } else {
                        let slot = self.conn(ci).slot(si);
                        slot.phase = Phase::ZeroFill { end: req.offset + req.length };
                        slot.done = 0;
                        self.zero_fill(ci, si);
                    }
                } else {
                    self.finish_errno(ci, si, -res);
                }
            }
            (_, Command::Flush | Command::Cache) => {
                if res < 0 && !(req.command == Command::Cache) {
                    self.finish_errno(ci, si, -res);
                } else {
                    self.finish_ok(ci, si);
                }
            }
            _ => self.finish_ok(ci, si),
        }
    }

    /// FUA on a trim or zeroing needs a flush before the reply.
    fn after_write(&mut self, ci: usize, si: usize) {
        let conn = self.conn(ci);
        let t = tag(ci, conn.gen, KIND_FILE, si);
        let slot = conn.slot(si);
        if slot.req.flags & NBD_CMD_FLAG_FUA != 0 {
            slot.phase = Phase::Sync;
            let fd = slot.fd;
            conn.ops += 1;
            self.ring.fsync(fd, true, t);
        } else {
            self.finish_ok(ci, si);
        }
    }

    fn zero_fill(&mut self, ci: usize, si: usize) {
        let zeroes = self.zeroes.get_or_insert_with(|| Arc::new(AlignedBuf::new(ZERO_CHUNK))).clone();
        let conn = self.conn(ci);
        let t = tag(ci, conn.gen, KIND_FILE, si);
        conn.ops += 1;
        let slot = conn.slot(si);
        let Phase::ZeroFill { end } = slot.phase else { unreachable!("zero fill phase") };
        let at = slot.req.offset + slot.done;
        let len = (end - at).min(ZERO_CHUNK as u64) as usize;
        let slot_fd = slot.fd;
        // Through the page cache: the range need not be aligned for O_DIRECT.
        let fd = conn.export.buffered.as_ref().map_or(slot_fd, |b| b.as_raw_fd());
        self.ring.write_shared(fd, zeroes, len, at, 0, t);
    }

    fn block_status(&mut self, ci: usize, si: usize) {
        let conn = self.conn(ci);
        let req = conn.slot(si).req;
        let one = req.flags & NBD_CMD_FLAG_REQ_ONE != 0;
        let extents = block_status(&conn.export.file, conn.limits.size, req.offset, req.length, one, conn.mode());
        let mode = conn.mode();
        self.conn(ci).free_slot(si);
        let mut head = self.head();
        encode_block_status(&mut head, mode, req.cookie, req.offset, nbd_proto::BASE_ALLOCATION_ID, &extents);
        self.queue(ci, OutMsg { head, data: None });
    }

    // ----- replies -----

    fn head(&mut self) -> Vec<u8> {
        let mut h = self.heads.pop().unwrap_or_else(|| Vec::with_capacity(64));
        h.clear();
        h
    }

    fn finish_read(&mut self, ci: usize, si: usize) {
        let conn = self.conn(ci);
        let mode = conn.mode();
        let slot = conn.free_slot(si);
        let mut head = self.head();
        encode_read_reply_header(&mut head, mode, slot.req.cookie, slot.req.offset, slot.req.length);
        let buf = slot.buf.expect("read buffer");
        self.queue(ci, OutMsg { head, data: Some((buf, 0..slot.req.length as usize)) });
    }

    fn finish_ok(&mut self, ci: usize, si: usize) {
        let conn = self.conn(ci);
        let mode = conn.mode();
        let slot = conn.free_slot(si);
        if let Some(b) = slot.buf {
            self.pool.put(b);
        }
        let mut head = self.head();
        encode_done(&mut head, mode, slot.req.cookie, slot.req.offset);
        self.queue(ci, OutMsg { head, data: None });
    }

    fn finish_errno(&mut self, ci: usize, si: usize, errno: i32) {
        let req = self.conn(ci).slot(si).req;
        let err = std::io::Error::from_raw_os_error(errno);
        let conn = self.conn(ci);
        warn!(peer = %conn.peer, export = %conn.export.spec.name, command = ?req.command, offset = req.offset,
              length = req.length, error = %err, "I/O on the backing store failed");
        self.finish_error(ci, si, &req, wire_error_from_errno(errno), "I/O error on the server's backing store");
    }

    fn finish_error(&mut self, ci: usize, si: usize, req: &Request, error: u32, why: &str) {
        let conn = self.conn(ci);
        let slot = conn.free_slot(si);
        if let Some(b) = slot.buf {
            self.pool.put(b);
        }
        self.reply_error(ci, req, error, why);
    }

    fn reply_error(&mut self, ci: usize, req: &Request, error: u32, why: &str) {
        let mode = self.conn(ci).mode();
        debug!(command = ?req.command, error = nbd_proto::wire_error_name(error), why, "request refused");
        let mut head = self.head();
        encode_error(&mut head, mode, req.cookie, req.offset, error, why);
        self.queue(ci, OutMsg { head, data: None });
    }

    fn queue(&mut self, ci: usize, msg: OutMsg) {
        let conn = self.conn(ci);
        if conn.dead {
            self.recycle(vec![msg]);
            return;
        }
        conn.sendq.push(msg);
        // Sent once this round of completions is processed, so that replies finishing
        // together leave in one sendmsg (fewer, larger segments for both ends).
        if !conn.send_wanted {
            conn.send_wanted = true;
            self.want_send.push(ci);
        }
        // A slot was freed: a paused connection may read again.
        self.process_input_if_idle(ci);
    }

    fn flush_sends(&mut self) {
        let mut want = std::mem::take(&mut self.want_send);
        for ci in want.drain(..) {
            let Some(conn) = self.conns[ci].as_mut() else { continue };
            conn.send_wanted = false;
            self.submit_send(ci);
            self.maybe_close(ci);
        }
        self.want_send = want;
    }

    fn process_input_if_idle(&mut self, ci: usize) {
        let conn = self.conn(ci);
        if !conn.parsing && !conn.recv_pending && conn.payload.is_none() && !conn.eof && !conn.paused() {
            self.process_input(ci);
        }
    }

    fn submit_send(&mut self, ci: usize) {
        let conn = self.conn(ci);
        if conn.sending || conn.sendq.is_empty() || conn.dead {
            return;
        }
        let batch = std::mem::take(&mut conn.sendq);
        conn.sending = true;
        conn.ops += 1;
        let (fd, t, skip) = (conn.fd, tag(ci, conn.gen, KIND_SEND, 0), conn.send_skip);
        self.ring.sendmsg(fd, batch, skip, t);
    }

    fn send_done(&mut self, ci: usize, c: Completion) {
        let Owned::Msgs(mut batch) = c.owned else { unreachable!("send completions carry the batch") };
        let conn = self.conn(ci);
        conn.sending = false;
        if c.result < 0 {
            debug!(peer = %conn.peer, error = %std::io::Error::from_raw_os_error(-c.result), "send failed; dropping the connection");
            conn.dead = true;
            conn.eof = true;
            sys::shutdown(conn.fd, libc::SHUT_RDWR);
            let q = std::mem::take(&mut conn.sendq);
            self.recycle(batch);
            self.recycle(q);
            return;
        }
        let total: usize = batch.iter().map(OutMsg::wire_len).sum::<usize>() - conn.send_skip;
        let sent = c.result as usize;
        if sent < total {
            // Drop fully sent replies, keep the rest (in front of anything queued since).
            let mut skip = conn.send_skip + sent;
            let mut done = 0;
            while done < batch.len() && batch[done].wire_len() <= skip {
                skip -= batch[done].wire_len();
                done += 1;
            }
            let finished: Vec<OutMsg> = batch.drain(..done).collect();
            conn.send_skip = skip;
            batch.append(&mut conn.sendq);
            conn.sendq = batch;
            self.recycle(finished);
        } else {
            conn.send_skip = 0;
            self.recycle(batch);
        }
        self.submit_send(ci);
    }

    fn recycle(&mut self, msgs: Vec<OutMsg>) {
        for m in msgs {
            if let Some((b, _)) = m.data {
                self.pool.put(b);
            }
            if self.heads.len() < 4096 {
                self.heads.push(m.head);
            }
        }
    }

    // ----- closing -----

    fn maybe_close(&mut self, ci: usize) {
        let Some(conn) = self.conns[ci].as_ref() else { return };
        let idle_out = conn.dead || (!conn.sending && conn.sendq.is_empty());
        if !(conn.eof && conn.ops == 0 && conn.active == 0 && idle_out) {
            // A connection at EOF with requests still running stays until they answer.
            if conn.eof && conn.ops == 0 && conn.active > 0 {
                warn!(peer = %conn.peer, "connection has requests with no operation in flight; closing");
            } else {
                return;
            }
        }
        let conn = self.conns[ci].take().expect("checked above");
        self.free_conns.push(ci);
        conn.export.detach_client(conn.client_id);
        info!(peer = %conn.peer, export = %conn.export.spec.name, "client disconnected");
        let Conn { sock, sendq, slots, .. } = *conn;
        self.recycle(sendq);
        for s in slots.into_iter().flatten() {
            if let Some(b) = s.buf {
                self.pool.put(b);
            }
        }
        drop(sock);
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("connections", &self.conns.iter().flatten().count()).finish()
    }
}

/// Round-robin distribution of connections over workers.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<WorkerHandle>,
    next: std::sync::atomic::AtomicUsize,
}

impl Workers {
    pub fn spawn(n: usize) -> std::io::Result<Workers> {
        let workers = (0..n.max(1)).map(|i| WorkerHandle::spawn(i, 1024)).collect::<Result<_, _>>()?;
        Ok(Workers { workers, next: Default::default() })
    }

    pub fn dispatch(&self, conn: NewConn) {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.workers.len();
        self.workers[i].send(WorkerMsg::Conn(Box::new(conn)));
    }

    /// Asks every worker to finish its in-flight requests and stop, and waits for them; after
    /// `grace`, connections still open are cut.
    pub fn shutdown(&self, grace: std::time::Duration) {
        for w in &self.workers {
            w.send(WorkerMsg::Shutdown);
        }
        let deadline = std::time::Instant::now() + grace;
        while !self.workers.iter().all(WorkerHandle::is_finished) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for w in &self.workers {
            if !w.is_finished() {
                warn!("connections still busy after the shutdown grace period; cutting them");
                w.send(WorkerMsg::Abort);
            }
        }
        for w in &self.workers {
            w.join();
        }
    }
}
