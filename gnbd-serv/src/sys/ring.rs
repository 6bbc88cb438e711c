//! A safe io_uring wrapper: every buffer an operation touches is moved into the ring when the
//! operation is submitted and handed back, untouched by anyone else, with its completion.

use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};

use super::buf::AlignedBuf;

/// One reply on its way to a socket: a small header and, for reads, a slice of a data buffer.
#[derive(Debug)]
pub struct OutMsg {
    pub head: Vec<u8>,
    pub data: Option<(AlignedBuf, Range<usize>)>,
}

impl OutMsg {
    /// Bytes this reply puts on the wire.
    pub fn wire_len(&self) -> usize {
        self.head.len() + self.data.as_ref().map_or(0, |(_, r)| r.len())
    }
}

/// Resources held by the ring for one operation, returned with its completion.
#[derive(Debug, Default)]
pub enum Owned {
    #[default]
    None,
    Buf(AlignedBuf),
    Bytes(Vec<u8>),
    /// Held only to keep the memory alive while the kernel uses it.
    Shared(#[allow(dead_code)] Arc<AlignedBuf>),
    Msgs(Vec<OutMsg>),
    /// Held only to keep the memory alive while the kernel uses it.
    Counter(#[allow(dead_code)] Box<[u8; 8]>),
}

/// A finished operation.
#[derive(Debug)]
pub struct Completion {
    /// The caller's tag, as given at submission.
    pub tag: u64,
    /// Bytes transferred, or a negated errno.
    pub result: i32,
    pub owned: Owned,
}

#[derive(Debug)]
struct Slot {
    tag: u64,
    owned: Owned,
    /// Completions still expected (an operation split into several entries).
    pending: u32,
    /// Sum of the parts' results, or the first error.
    result: i32,
    iov: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
}

/// Upper bound on iovecs in one sendmsg (the kernel's UIO_MAXIOV is 1024).
const MAX_IOV: usize = 1024;

/// An io_uring instance owned by one thread.
pub struct Ring {
    ring: IoUring,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    spare: Vec<(Vec<libc::iovec>, Box<libc::msghdr>)>,
    in_flight: usize,
    /// Completions reaped early (to make room while submitting), handed out by `drain`.
    backlog: Vec<Completion>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("in_flight", &self.in_flight).finish()
    }
}

fn empty_msghdr() -> Box<libc::msghdr> {
    // SAFETY: msghdr is a plain C struct for which all-zero bytes is a valid (empty) value.
    Box::new(unsafe { std::mem::zeroed() })
}

impl Ring {
    pub fn new(entries: u32) -> io::Result<Self> {
        // Completions are only reaped by the thread that submits: let the kernel run task work
        // at that point instead of interrupting the thread (fewer context switches). Older
        // kernels refuse these flags; fall back to a plain ring there.
        let ring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))?;
        Ok(Self { ring, slots: Vec::new(), free: Vec::new(), spare: Vec::new(), in_flight: 0, backlog: Vec::new() })
    }

    /// Operations submitted whose completion has not been drained yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn slot(&mut self, tag: u64, owned: Owned) -> usize {
        let (iov, msg) = self.spare.pop().unwrap_or_else(|| (Vec::new(), empty_msghdr()));
        let s = Slot { tag, owned, iov, msg, pending: 1, result: 0 };
        self.in_flight += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i] = Some(s);
            i
        } else {
            self.slots.push(Some(s));
            self.slots.len() - 1
        }
    }

    /// Queues an entry, submitting first when the submission queue is full.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until its completion is drained; the caller
    /// guarantees it by keeping the pointed-to memory in the slot named by its user data.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            match self.ring.submit() {
                Ok(_) => {}
                // The completion queue is full: reap it to make room, keep the results.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let mut backlog = std::mem::take(&mut self.backlog);
                    self.reap(&mut backlog);
                    self.backlog = backlog;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) => {}
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
        }
    }

    /// Reads `range` of `buf` from `fd` at `offset`.
    pub fn read(&mut self, fd: RawFd, mut buf: AlignedBuf, range: Range<usize>, offset: u64, tag: u64) {
        assert!(range.end <= buf.capacity());
        // SAFETY: range checked above; the pointer is computed before the buffer moves into
        // the slot, and a heap allocation does not move with its owner.
        let ptr = unsafe { buf.as_mut_ptr().add(range.start) };
        let i = self.slot(tag, Owned::Buf(buf));
        let e = opcode::Read::new(types::Fd(fd), ptr, range.len() as u32).offset(offset).build().user_data(i as u64);
        // SAFETY: the buffer lives in slot `i` until the completion is drained.
        unsafe { self.push(e) }
    }

    /// Reads `range` of `buf` from `fd` at `offset` as several concurrent reads of at most
    /// `chunk` bytes. One completion arrives when all parts are done: the total byte count,
    /// or the first error. A short part makes the total short (the caller retries unsplit).
    pub fn read_split(
        &mut self,
        fd: RawFd,
        mut buf: AlignedBuf,
        range: Range<usize>,
        offset: u64,
        chunk: usize,
        tag: u64,
    ) {
        assert!(range.end <= buf.capacity() && chunk > 0);
        let base = buf.as_mut_ptr();
        let parts = range.len().div_ceil(chunk);
        let i = self.slot(tag, Owned::Buf(buf));
        self.slots[i].as_mut().expect("slot just filled").pending = parts as u32;
        let mut at = range.start;
        while at < range.end {
            let len = chunk.min(range.end - at);
            // SAFETY: at + len <= range.end <= capacity, checked above.
            let ptr = unsafe { base.add(at) };
            let e = opcode::Read::new(types::Fd(fd), ptr, len as u32)
                .offset(offset + (at - range.start) as u64)
                .build()
                .user_data(i as u64);
            // SAFETY: the buffer lives in slot `i` until its last part completes; the parts
            // write disjoint ranges.
            unsafe { self.push(e) }
            at += len;
        }
    }

    /// Writes `range` of `buf` to `fd` at `offset`, with `preadv2`-style flags (RWF_DSYNC).
    pub fn write(&mut self, fd: RawFd, buf: AlignedBuf, range: Range<usize>, offset: u64, rw_flags: i32, tag: u64) {
        assert!(range.end <= buf.capacity());
        // SAFETY: range checked above.
        let ptr = unsafe { buf.as_ptr().add(range.start) };
        let i = self.slot(tag, Owned::Buf(buf));
        let e = opcode::Write::new(types::Fd(fd), ptr, range.len() as u32)
            .offset(offset)
            .rw_flags(rw_flags)
            .build()
            .user_data(i as u64);
        // SAFETY: the buffer lives in slot `i` until the completion is drained.
        unsafe { self.push(e) }
    }

    /// Writes the first `len` bytes of a shared buffer (used for zero fill).
    pub fn write_shared(&mut self, fd: RawFd, buf: Arc<AlignedBuf>, len: usize, offset: u64, rw_flags: i32, tag: u64) {
        assert!(len <= buf.capacity());
        let ptr = buf.as_ptr();
        let i = self.slot(tag, Owned::Shared(buf));
        let e = opcode::Write::new(types::Fd(fd), ptr, len as u32)
            .offset(offset)
            .rw_flags(rw_flags)
            .build()
            .user_data(i as u64);
        // SAFETY: one reference to the buffer lives in slot `i` until the completion is drained,
        // and nobody writes through a shared buffer.
        unsafe { self.push(e) }
    }

    /// Receives into `range` of an aligned buffer (write payloads).
    pub fn recv_buf(&mut self, fd: RawFd, mut buf: AlignedBuf, range: Range<usize>, tag: u64) {
        assert!(range.end <= buf.capacity());
        // SAFETY: range checked above.
        let ptr = unsafe { buf.as_mut_ptr().add(range.start) };
        let i = self.slot(tag, Owned::Buf(buf));
        let e = opcode::Recv::new(types::Fd(fd), ptr, range.len() as u32).build().user_data(i as u64);
        // SAFETY: the buffer lives in slot `i` until the completion is drained.
        unsafe { self.push(e) }
    }

    /// Receives into `v[range]` (request headers).
    pub fn recv_bytes(&mut self, fd: RawFd, mut v: Vec<u8>, range: Range<usize>, tag: u64) {
        assert!(range.end <= v.len());
        let ptr = v[range.clone()].as_mut_ptr();
        let i = self.slot(tag, Owned::Bytes(v));
        let e = opcode::Recv::new(types::Fd(fd), ptr, range.len() as u32).build().user_data(i as u64);
        // SAFETY: the vector lives, unresized, in slot `i` until the completion is drained.
        unsafe { self.push(e) }
    }

    /// Sends a batch of replies with one sendmsg, skipping the first `skip` bytes (already
    /// sent by an earlier, partial send). The batch comes back with the completion.
    pub fn sendmsg(&mut self, fd: RawFd, msgs: Vec<OutMsg>, skip: usize, tag: u64) {
        let i = self.slot(tag, Owned::None);
        let slot = self.slots[i].as_mut().expect("slot just filled");
        slot.iov.clear();
        let mut skip = skip;
        for m in &msgs {
            let data = m.data.as_ref().map(|(b, r)| &b.as_slice()[r.clone()]);
            for part in [Some(&m.head[..]), data].into_iter().flatten() {
                if part.len() <= skip {
                    skip -= part.len();
                    continue;
                }
                let p = &part[skip..];
                skip = 0;
                if slot.iov.len() < MAX_IOV {
                    slot.iov.push(libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() });
                }
            }
        }
        *slot.msg = *empty_msghdr();
        slot.msg.msg_iov = slot.iov.as_mut_ptr();
        slot.msg.msg_iovlen = slot.iov.len();
        let msg: *const libc::msghdr = &*slot.msg;
        slot.owned = Owned::Msgs(msgs);
        let e = opcode::SendMsg::new(types::Fd(fd), msg).flags(libc::MSG_NOSIGNAL as u32).build().user_data(i as u64);
        // SAFETY: the msghdr (boxed), the iovec array (not resized until the slot is reused)
        // and every buffer they point into (the batch, moved into the slot; heap data does not
        // move) live in slot `i` until the completion is drained.
        unsafe { self.push(e) }
    }

    pub fn fsync(&mut self, fd: RawFd, datasync: bool, tag: u64) {
        let i = self.slot(tag, Owned::None);
        let flags = if datasync { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
        let e = opcode::Fsync::new(types::Fd(fd)).flags(flags).build().user_data(i as u64);
        // SAFETY: no memory is referenced.
        unsafe { self.push(e) }
    }

    pub fn fallocate(&mut self, fd: RawFd, mode: i32, offset: u64, len: u64, tag: u64) {
        let i = self.slot(tag, Owned::None);
        let e = opcode::Fallocate::new(types::Fd(fd), len).offset(offset).mode(mode).build().user_data(i as u64);
        // SAFETY: no memory is referenced.
        unsafe { self.push(e) }
    }

    pub fn fadvise(&mut self, fd: RawFd, offset: u64, len: u64, advice: i32, tag: u64) {
        let i = self.slot(tag, Owned::None);
        let len = libc::off_t::try_from(len).unwrap_or(libc::off_t::MAX);
        let e = opcode::Fadvise::new(types::Fd(fd), len, advice).offset(offset).build().user_data(i as u64);
        // SAFETY: no memory is referenced.
        unsafe { self.push(e) }
    }

    /// Reads an eventfd's 8-byte counter.
    pub fn read_counter(&mut self, fd: RawFd, tag: u64) {
        let mut b = Box::new([0u8; 8]);
        let ptr = b.as_mut_ptr();
        let i = self.slot(tag, Owned::Counter(b));
        let e = opcode::Read::new(types::Fd(fd), ptr, 8).build().user_data(i as u64);
        // SAFETY: the box lives in slot `i` until the completion is drained.
        unsafe { self.push(e) }
    }

    /// Submits queued operations and waits until at least `want` completions are ready.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        // Completions already reaped count: do not sleep while they wait to be handed out.
        let want = if self.backlog.is_empty() { want } else { 0 };
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves every ready completion into `out`, handing back the resources of each.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.backlog);
        self.reap(out);
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let i = cqe.user_data() as usize;
            let Some(Some(s)) = self.slots.get_mut(i) else {
                continue; // not ours: cannot happen, every entry carries a slot index
            };
            s.pending -= 1;
            if s.result >= 0 {
                s.result = if cqe.result() < 0 { cqe.result() } else { s.result + cqe.result() };
            }
            if s.pending > 0 {
                continue;
            }
            let slot = self.slots[i].take().expect("checked above");
            self.free.push(i);
            self.in_flight -= 1;
            out.push(Completion { tag: slot.tag, result: slot.result, owned: slot.owned });
            self.spare.push((slot.iov, slot.msg));
        }
    }
}
