//! The node-to-node protocol: a sans-IO codec for the messages DLM daemons exchange over TCP.
//! The byte-by-byte layout is in `docs/wire.md`; [`decode`] never panics on any input.

use crate::mode::{Flags, Mode, SbFlags, Status};
use crate::plock::{PlockArgs, PlockConflict, PlockCopy, PlockKind, PlockOpCode};
use crate::resource::LockId;

/// A node id, as the cluster layer numbers nodes (cluster.conf `nodeid`).
pub type NodeId = u32;

/// First two bytes of every frame: "DL".
pub const DLM_MAGIC: u16 = 0x444c;
/// Protocol version carried in every frame.
pub const DLM_VERSION: u8 = 1;
/// Size of the frame header.
pub const HEADER_SIZE: usize = 8;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Longest resource or lockspace name, in bytes.
pub const MAX_NAME: usize = 64;
/// Longest value block, in bytes.
pub const MAX_LVB: usize = 512;

const T_HELLO: u8 = 0;
const T_LOOKUP: u8 = 1;
const T_LOOKUP_REPLY: u8 = 2;
const T_REQUEST: u8 = 3;
const T_CONVERT: u8 = 4;
const T_UNLOCK: u8 = 5;
const T_CANCEL: u8 = 6;
const T_CAST: u8 = 7;
const T_BAST: u8 = 8;
const T_RECOVER_LOCKS: u8 = 9;
const T_RECOVER_DONE: u8 = 10;
const T_PLOCK_OP: u8 = 11;
const T_PLOCK_REPLY: u8 = 12;
const T_PLOCK_RECOVER: u8 = 13;

const NO_MODE: u8 = 0xff;

/// A lock as its owner node knows it, sent to a resource's new master during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockCopy {
    /// The lock.
    pub lkid: LockId,
    /// Granted mode, if any.
    pub grmode: Option<Mode>,
    /// A request or conversion to replay on the new master.
    pub rqmode: Option<Mode>,
    /// Flags of the lock's last operation.
    pub flags: Flags,
    /// Value block sequence number the lock last saw.
    pub lvbseq: u32,
    /// The lock's value block.
    pub lvb: Vec<u8>,
    /// The owner wrote `lvb` (on a down-conversion or unlock from PW/EX) but never learnt
    /// whether the old master applied it; `lvbseq` is the sequence number it wrote over.
    pub unconfirmed_write: bool,
    /// A cancel of the replayed request is pending.
    pub cancel: bool,
    /// The value block in `lvb` was read flagged not valid.
    pub lvb_invalid: bool,
}

/// The value block state an old master hands over during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterLvb {
    /// Contents.
    pub lvb: Vec<u8>,
    /// Sequence number.
    pub seq: u32,
    /// Flagged not valid.
    pub valnotvalid: bool,
}

/// One node-to-node message. `ls` is the lockspace's global id, `epoch` the sender's
/// recovery generation of that lockspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First frame on a connection: who is speaking.
    Hello {
        /// The sender.
        node: NodeId,
    },
    /// Ask the directory node who masters `name` (the asker becomes master if nobody does).
    Lookup {
        /// Lockspace.
        ls: u32,
        /// Sender's epoch.
        epoch: u64,
        /// Resource.
        name: Vec<u8>,
    },
    /// The directory's answer.
    LookupReply {
        /// Lockspace.
        ls: u32,
        /// Sender's epoch.
        epoch: u64,
        /// Resource.
        name: Vec<u8>,
        /// Its master.
        master: NodeId,
    },
    /// A new lock request, to the master.
    Request {
        /// Lockspace.
        ls: u32,
        /// Sender's epoch.
        epoch: u64,
        /// Resource.
        name: Vec<u8>,
        /// Lock id (owned by the sender).
        lkid: LockId,
        /// Requested mode.
        mode: Mode,
        /// Flags.
        flags: Flags,
        /// Value block (may be empty).
        lvb: Vec<u8>,
    },
    /// A conversion, to the master.
    Convert {
        /// Lockspace.
        ls: u32,
        /// Sender's epoch.
        epoch: u64,
        /// Resource.
        name: Vec<u8>,
        /// Lock id.
        lkid: LockId,
        /// Requested mode.
        mode: Mode,
        /// Flags.
        flags: Flags,
        /// Value block to write on a down-conversion (may be empty).
        lvb: Vec<u8>,
    },
    /// An unlock, to the master.
    Unlock {
        /// Lockspace.
        ls: u32,
        /// Sender's epoch.
        epoch: u64,
        /// Resource.
        name: Vec<u8>,
        /// Lock id.
        lkid: LockId,
        /// Flags (VALBLK, IVVALBLK).
        flags: Flags,
        /// Value block to write (may be empty).
        lvb: Vec<u8>,
    },
    /// Cancel a queued request or conversion, to the master.
    Cancel {
        /// Lockspace.
        ls: u32,
        /// Sender's epoch.
        epoch: u64,
        /// Resource.
        name: Vec<u8>,
        /// Lock id.
        lkid: LockId,
    },
    /// Completion, from the master to the lock's owner.
    Cast {
        /// Lockspace.
        ls: u32,
        /// Sender's epoch.
        epoch: u64,
        /// Lock id.
        lkid: LockId,
        /// Outcome.
        status: Status,
        /// Granted mode after the operation.
        mode: Option<Mode>,
        /// Status-block flags.
        sbflags: SbFlags,
        /// Value block sequence number.
        lvbseq: u32,
        /// Value block read by the grant.
        lvb: Option<Vec<u8>>,
    },
    /// Blocking callback, from the master to the owner of a blocking lock.
    Bast {
        /// Lockspace.
        ls: u32,
        /// Sender's epoch.
        epoch: u64,
        /// The blocking lock.
        lkid: LockId,
        /// The blocked mode.
        mode: Mode,
    },
    /// Recovery: the sender's locks on `name` (and, if it mastered it, the value block).
    RecoverLocks {
        /// Lockspace.
        ls: u32,
        /// Recovery epoch.
        epoch: u64,
        /// Resource.
        name: Vec<u8>,
        /// Value block state when the sender was the old master.
        master: Option<MasterLvb>,
        /// The sender's locks.
        locks: Vec<LockCopy>,
    },
    /// Recovery: the sender has sent everything for `epoch`; its slot table for it.
    RecoverDone {
        /// Lockspace.
        ls: u32,
        /// Recovery epoch.
        epoch: u64,
        /// Whether `slots` is the table the members agreed on (false from a newcomer).
        agreed: bool,
        /// (node, slot) pairs for the members of `epoch`.
        slots: Vec<(NodeId, u16)>,
    },
    /// A POSIX lock operation of the sender's client `client`, to the plock master of `name`.
    PlockOp {
        /// Lockspace.
        ls: u32,
        /// Sender's epoch.
        epoch: u64,
        /// Resource.
        name: Vec<u8>,
        /// Client connection on the sender.
        client: u64,
        /// Request id (for Cancel: the request to withdraw).
        reqid: u64,
        /// Operation.
        op: PlockOpCode,
        /// Owner, pid, range and kind (only `owner` for ReleaseOwner; unused otherwise).
        args: PlockArgs,
        /// F_SETLKW: queue instead of failing.
        wait: bool,
    },
    /// The outcome of a [`Message::PlockOp`], master to requester.
    PlockReply {
        /// Lockspace.
        ls: u32,
        /// The epoch the request was sent at.
        epoch: u64,
        /// Client connection on the requester.
        client: u64,
        /// Request id.
        reqid: u64,
        /// 0, -11 (EAGAIN) or `-DLM_ECANCEL`.
        status: i32,
        /// For a Get: the conflicting lock, if any.
        conflict: Option<PlockConflict>,
    },
    /// Recovery: the locks the sender's clients hold on `name`, to its new plock master.
    PlockRecover {
        /// Lockspace.
        ls: u32,
        /// Recovery epoch.
        epoch: u64,
        /// Resource.
        name: Vec<u8>,
        /// The locks.
        locks: Vec<PlockCopy>,
    },
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame does not start with the DLM magic.
    #[error("bad magic {0:#06x}: not a DLM peer")]
    BadMagic(u16),
    /// A version this node does not speak.
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// The payload length is over the limit.
    #[error("frame of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLong(usize),
    /// Unknown message type.
    #[error("unknown message type {0}")]
    BadType(u8),
    /// A field is out of range or the payload is short or has trailing bytes.
    #[error("malformed {what} in message type {kind}")]
    Malformed {
        /// Message type.
        kind: u8,
        /// Which field.
        what: &'static str,
    },
}

/// The result of [`decode`] when no error occurred.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole message, and how many bytes it used.
    Frame(Message, usize),
    /// At least this many more bytes are needed.
    NeedMore(usize),
}

struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn name(&mut self, n: &[u8]) {
        debug_assert!(n.len() <= MAX_NAME);
        self.u8(n.len() as u8);
        self.0.extend_from_slice(n);
    }
    fn lvb(&mut self, v: &[u8]) {
        debug_assert!(v.len() <= MAX_LVB);
        self.u16(v.len() as u16);
        self.0.extend_from_slice(v);
    }
    fn mode(&mut self, m: Option<Mode>) {
        self.u8(m.map_or(NO_MODE, |m| m as u8));
    }
    fn head(&mut self, ls: u32, epoch: u64) {
        self.u32(ls);
        self.u64(epoch);
    }
    fn range(&mut self, kind: PlockKind, start: u64, end: u64) {
        self.u8(kind.to_u8());
        self.u64(start);
        self.u64(end);
    }
}

/// Append the frame for `msg` to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&DLM_MAGIC.to_be_bytes());
    out.push(DLM_VERSION);
    out.push(msg_type(msg));
    out.extend_from_slice(&[0; 4]);
    let mut w = W(out);
    match msg {
        Message::Hello { node } => w.u32(*node),
        Message::Lookup { ls, epoch, name } => {
            w.head(*ls, *epoch);
            w.name(name);
        }
        Message::LookupReply { ls, epoch, name, master } => {
            w.head(*ls, *epoch);
            w.name(name);
            w.u32(*master);
        }
        Message::Request { ls, epoch, name, lkid, mode, flags, lvb }
        | Message::Convert { ls, epoch, name, lkid, mode, flags, lvb } => {
            w.head(*ls, *epoch);
            w.name(name);
            w.u64(*lkid);
            w.u8(*mode as u8);
            w.u32(flags.0);
            w.lvb(lvb);
        }
        Message::Unlock { ls, epoch, name, lkid, flags, lvb } => {
            w.head(*ls, *epoch);
            w.name(name);
            w.u64(*lkid);
            w.u32(flags.0);
            w.lvb(lvb);
        }
        Message::Cancel { ls, epoch, name, lkid } => {
            w.head(*ls, *epoch);
            w.name(name);
            w.u64(*lkid);
        }
        Message::Cast { ls, epoch, lkid, status, mode, sbflags, lvbseq, lvb } => {
            w.head(*ls, *epoch);
            w.u64(*lkid);
            w.u32(status.code() as u32);
            w.mode(*mode);
            w.u8(sbflags.0);
            w.u32(*lvbseq);
            match lvb {
                Some(v) => {
                    w.u8(1);
                    w.lvb(v);
                }
                None => w.u8(0),
            }
        }
        Message::Bast { ls, epoch, lkid, mode } => {
            w.head(*ls, *epoch);
            w.u64(*lkid);
            w.u8(*mode as u8);
        }
        Message::RecoverLocks { ls, epoch, name, master, locks } => {
            w.head(*ls, *epoch);
            w.name(name);
            match master {
                Some(m) => {
                    w.u8(1);
                    w.lvb(&m.lvb);
                    w.u32(m.seq);
                    w.u8(m.valnotvalid as u8);
                }
                None => w.u8(0),
            }
            debug_assert!(locks.len() <= u16::MAX as usize);
            w.u16(locks.len() as u16);
            for c in locks {
                w.u64(c.lkid);
                w.mode(c.grmode);
                w.mode(c.rqmode);
                w.u32(c.flags.0);
                w.u32(c.lvbseq);
                w.u8(c.unconfirmed_write as u8 | (c.cancel as u8) << 1 | (c.lvb_invalid as u8) << 2);
                w.lvb(&c.lvb);
            }
        }
        Message::RecoverDone { ls, epoch, agreed, slots } => {
            w.head(*ls, *epoch);
            w.u8(*agreed as u8);
            w.u16(slots.len() as u16);
            for (n, s) in slots {
                w.u32(*n);
                w.u16(*s);
            }
        }
        Message::PlockOp { ls, epoch, name, client, reqid, op, args, wait } => {
            w.head(*ls, *epoch);
            w.name(name);
            w.u64(*client);
            w.u64(*reqid);
            w.u8(op.to_u8());
            w.u64(args.owner);
            w.u32(args.pid);
            w.range(args.kind, args.start, args.end);
            w.u8(*wait as u8);
        }
        Message::PlockReply { ls, epoch, client, reqid, status, conflict } => {
            w.head(*ls, *epoch);
            w.u64(*client);
            w.u64(*reqid);
            w.u32(*status as u32);
            match conflict {
                Some(c) => {
                    w.u8(1);
                    w.range(c.kind, c.start, c.end);
                    w.u32(c.pid);
                    w.u32(c.node);
                }
                None => w.u8(0),
            }
        }
        Message::PlockRecover { ls, epoch, name, locks } => {
            w.head(*ls, *epoch);
            w.name(name);
            w.u16(locks.len() as u16);
            for l in locks {
                w.u64(l.client);
                w.u64(l.owner);
                w.u32(l.pid);
                w.range(l.kind, l.start, l.end);
            }
        }
    }
    let len = (out.len() - start - HEADER_SIZE) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_be_bytes());
}

fn msg_type(m: &Message) -> u8 {
    match m {
        Message::Hello { .. } => T_HELLO,
        Message::Lookup { .. } => T_LOOKUP,
        Message::LookupReply { .. } => T_LOOKUP_REPLY,
        Message::Request { .. } => T_REQUEST,
        Message::Convert { .. } => T_CONVERT,
        Message::Unlock { .. } => T_UNLOCK,
        Message::Cancel { .. } => T_CANCEL,
        Message::Cast { .. } => T_CAST,
        Message::Bast { .. } => T_BAST,
        Message::RecoverLocks { .. } => T_RECOVER_LOCKS,
        Message::RecoverDone { .. } => T_RECOVER_DONE,
        Message::PlockOp { .. } => T_PLOCK_OP,
        Message::PlockReply { .. } => T_PLOCK_REPLY,
        Message::PlockRecover { .. } => T_PLOCK_RECOVER,
    }
}

/// What a field reader reports when a frame is malformed; both protocols (this one and the
/// local client protocol) read their bodies with the one [`Fields`] reader.
pub(crate) trait FieldError {
    /// The field `what` of a frame of type `kind` is short or out of range.
    fn malformed(kind: u8, what: &'static str) -> Self;
}

impl FieldError for WireError {
    fn malformed(kind: u8, what: &'static str) -> Self {
        WireError::Malformed { kind, what }
    }
}

/// Big-endian field reader over one frame body.
pub(crate) struct Fields<'a, E> {
    pub(crate) b: &'a [u8],
    kind: u8,
    error: std::marker::PhantomData<E>,
}

impl<'a, E: FieldError> Fields<'a, E> {
    pub(crate) fn new(b: &'a [u8], kind: u8) -> Self {
        Fields { b, kind, error: std::marker::PhantomData }
    }
    pub(crate) fn bad(&self, what: &'static str) -> E {
        E::malformed(self.kind, what)
    }
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], E> {
        if self.b.len() < n {
            return Err(self.bad(what));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, E> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, E> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, E> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, E> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    pub(crate) fn name(&mut self) -> Result<Vec<u8>, E> {
        let n = self.u8("name length")? as usize;
        if n > MAX_NAME {
            return Err(self.bad("name length"));
        }
        Ok(self.take(n, "name")?.to_vec())
    }
    pub(crate) fn lvb(&mut self) -> Result<Vec<u8>, E> {
        let n = self.u16("value block length")? as usize;
        if n > MAX_LVB {
            return Err(self.bad("value block length"));
        }
        Ok(self.take(n, "value block")?.to_vec())
    }
    pub(crate) fn mode(&mut self) -> Result<Mode, E> {
        let v = self.u8("mode")?;
        Mode::from_u8(v).ok_or_else(|| self.bad("mode"))
    }
    pub(crate) fn opt_mode(&mut self) -> Result<Option<Mode>, E> {
        match self.u8("mode")? {
            NO_MODE => Ok(None),
            v => Mode::from_u8(v).map(Some).ok_or_else(|| self.bad("mode")),
        }
    }
    pub(crate) fn flags(&mut self) -> Result<Flags, E> {
        let f = Flags(self.u32("flags")?);
        if !Flags::KNOWN.contains(f) {
            return Err(self.bad("flags"));
        }
        Ok(f)
    }
    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, E> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.bad(what)),
        }
    }
}

type R<'a> = Fields<'a, WireError>;

impl R<'_> {
    fn head(&mut self) -> Result<(u32, u64), WireError> {
        Ok((self.u32("lockspace")?, self.u64("epoch")?))
    }
}

impl<E: FieldError> Fields<'_, E> {
    pub(crate) fn plock_kind(&mut self) -> Result<PlockKind, E> {
        let v = self.u8("plock type")?;
        PlockKind::from_u8(v).ok_or_else(|| self.bad("plock type"))
    }
}

/// Decode one frame from the front of `buf`.
pub fn decode(buf: &[u8]) -> Result<Decoded, WireError> {
    if buf.len() < HEADER_SIZE {
        return Ok(Decoded::NeedMore(HEADER_SIZE - buf.len()));
    }
    let magic = u16::from_be_bytes([buf[0], buf[1]]);
    if magic != DLM_MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if buf[2] != DLM_VERSION {
        return Err(WireError::BadVersion(buf[2]));
    }
    let kind = buf[3];
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLong(len));
    }
    if buf.len() < HEADER_SIZE + len {
        return Ok(Decoded::NeedMore(HEADER_SIZE + len - buf.len()));
    }
    let mut r = R::new(&buf[HEADER_SIZE..HEADER_SIZE + len], kind);
    let msg = match kind {
        T_HELLO => Message::Hello { node: r.u32("node")? },
        T_LOOKUP => {
            let (ls, epoch) = r.head()?;
            Message::Lookup { ls, epoch, name: r.name()? }
        }
        T_LOOKUP_REPLY => {
            let (ls, epoch) = r.head()?;
            Message::LookupReply { ls, epoch, name: r.name()?, master: r.u32("master")? }
        }
        T_REQUEST | T_CONVERT => {
            let (ls, epoch) = r.head()?;
            let name = r.name()?;
            let lkid = r.u64("lock id")?;
            let mode = r.mode()?;
            let flags = r.flags()?;
            let lvb = r.lvb()?;
            if kind == T_REQUEST {
                Message::Request { ls, epoch, name, lkid, mode, flags, lvb }
            } else {
                Message::Convert { ls, epoch, name, lkid, mode, flags, lvb }
            }
        }
        T_UNLOCK => {
            let (ls, epoch) = r.head()?;
            Message::Unlock { ls, epoch, name: r.name()?, lkid: r.u64("lock id")?, flags: r.flags()?, lvb: r.lvb()? }
        }
        T_CANCEL => {
            let (ls, epoch) = r.head()?;
            Message::Cancel { ls, epoch, name: r.name()?, lkid: r.u64("lock id")? }
        }
        T_CAST => {
            let (ls, epoch) = r.head()?;
            let lkid = r.u64("lock id")?;
            let code = r.u32("status")? as i32;
            let status = Status::from_code(code).ok_or_else(|| r.bad("status"))?;
            let mode = r.opt_mode()?;
            let sb = r.u8("sbflags")?;
            if sb & !0x7 != 0 {
                return Err(r.bad("sbflags"));
            }
            let lvbseq = r.u32("lvbseq")?;
            let lvb = if r.bool("lvb present")? { Some(r.lvb()?) } else { None };
            Message::Cast { ls, epoch, lkid, status, mode, sbflags: SbFlags(sb), lvbseq, lvb }
        }
        T_BAST => {
            let (ls, epoch) = r.head()?;
            Message::Bast { ls, epoch, lkid: r.u64("lock id")?, mode: r.mode()? }
        }
        T_RECOVER_LOCKS => {
            let (ls, epoch) = r.head()?;
            let name = r.name()?;
            let master = if r.bool("master present")? {
                Some(MasterLvb { lvb: r.lvb()?, seq: r.u32("lvbseq")?, valnotvalid: r.bool("valnotvalid")? })
            } else {
                None
            };
            let n = r.u16("lock count")? as usize;
            let mut locks = Vec::with_capacity(n.min(r.b.len() / 23));
            for _ in 0..n {
                let lkid = r.u64("lock id")?;
                let grmode = r.opt_mode()?;
                let rqmode = r.opt_mode()?;
                let flags = r.flags()?;
                let lvbseq = r.u32("lvbseq")?;
                let cf = r.u8("copy flags")?;
                if cf & !7 != 0 {
                    return Err(r.bad("copy flags"));
                }
                let lvb = r.lvb()?;
                locks.push(LockCopy {
                    lkid,
                    grmode,
                    rqmode,
                    flags,
                    lvbseq,
                    lvb,
                    unconfirmed_write: cf & 1 != 0,
                    cancel: cf & 2 != 0,
                    lvb_invalid: cf & 4 != 0,
                });
            }
            Message::RecoverLocks { ls, epoch, name, master, locks }
        }
        T_RECOVER_DONE => {
            let (ls, epoch) = r.head()?;
            let agreed = r.bool("agreed")?;
            let n = r.u16("slot count")? as usize;
            let mut slots = Vec::with_capacity(n.min(r.b.len() / 6));
            for _ in 0..n {
                slots.push((r.u32("node")?, r.u16("slot")?));
            }
            Message::RecoverDone { ls, epoch, agreed, slots }
        }
        T_PLOCK_OP => {
            let (ls, epoch) = r.head()?;
            let name = r.name()?;
            let client = r.u64("client")?;
            let reqid = r.u64("request id")?;
            let op = r.u8("plock op")?;
            let op = PlockOpCode::from_u8(op).ok_or_else(|| r.bad("plock op"))?;
            let owner = r.u64("owner")?;
            let pid = r.u32("pid")?;
            let kind = r.plock_kind()?;
            let args = PlockArgs { owner, pid, kind, start: r.u64("start")?, end: r.u64("end")? };
            Message::PlockOp { ls, epoch, name, client, reqid, op, args, wait: r.bool("wait")? }
        }
        T_PLOCK_REPLY => {
            let (ls, epoch) = r.head()?;
            let client = r.u64("client")?;
            let reqid = r.u64("request id")?;
            let status = r.u32("status")? as i32;
            let conflict = if r.bool("conflict present")? {
                let kind = r.plock_kind()?;
                let (start, end) = (r.u64("start")?, r.u64("end")?);
                Some(PlockConflict { kind, start, end, pid: r.u32("pid")?, node: r.u32("node")? })
            } else {
                None
            };
            Message::PlockReply { ls, epoch, client, reqid, status, conflict }
        }
        T_PLOCK_RECOVER => {
            let (ls, epoch) = r.head()?;
            let name = r.name()?;
            let n = r.u16("plock count")? as usize;
            let mut locks = Vec::with_capacity(n.min(r.b.len() / 37));
            for _ in 0..n {
                let client = r.u64("client")?;
                let owner = r.u64("owner")?;
                let pid = r.u32("pid")?;
                let kind = r.plock_kind()?;
                locks.push(PlockCopy { client, owner, pid, kind, start: r.u64("start")?, end: r.u64("end")? });
            }
            Message::PlockRecover { ls, epoch, name, locks }
        }
        other => return Err(WireError::BadType(other)),
    };
    if !r.b.is_empty() {
        return Err(r.bad("trailing bytes"));
    }
    Ok(Decoded::Frame(msg, HEADER_SIZE + len))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mode() -> impl Strategy<Value = Mode> {
        (0u8..6).prop_map(|v| Mode::from_u8(v).expect("in range"))
    }
    fn opt_mode() -> impl Strategy<Value = Option<Mode>> {
        proptest::option::of(mode())
    }
    fn name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=MAX_NAME)
    }
    fn lvb() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=64)
    }
    fn flags() -> impl Strategy<Value = Flags> {
        any::<u32>().prop_map(|f| Flags(f & Flags::KNOWN.0))
    }
    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Granted),
            Just(Status::WouldBlock),
            Just(Status::Deadlock),
            Just(Status::Unlocked),
            Just(Status::Canceled),
            Just(Status::Invalid),
            Just(Status::NotFound)
        ]
    }
    fn copy() -> impl Strategy<Value = LockCopy> {
        (any::<u64>(), opt_mode(), opt_mode(), flags(), any::<u32>(), lvb(), any::<u8>()).prop_map(
            |(lkid, grmode, rqmode, flags, lvbseq, lvb, b)| LockCopy {
                lkid,
                grmode,
                rqmode,
                flags,
                lvbseq,
                lvb,
                unconfirmed_write: b & 1 != 0,
                cancel: b & 2 != 0,
                lvb_invalid: b & 4 != 0,
            },
        )
    }

    pub(crate) fn plock_args() -> impl Strategy<Value = PlockArgs> {
        (any::<(u64, u32, u64, u64)>(), 0u8..3).prop_map(|((owner, pid, start, end), k)| PlockArgs {
            owner,
            pid,
            start,
            end,
            kind: PlockKind::from_u8(k).expect("in range"),
        })
    }

    pub(crate) fn message() -> impl Strategy<Value = Message> {
        let h = (any::<u32>(), any::<u64>());
        prop_oneof![
            any::<u32>().prop_map(|node| Message::Hello { node }),
            (h, name()).prop_map(|((ls, epoch), name)| Message::Lookup { ls, epoch, name }),
            (h, name(), any::<u32>()).prop_map(|((ls, epoch), name, master)| Message::LookupReply {
                ls,
                epoch,
                name,
                master
            }),
            (h, name(), any::<u64>(), mode(), flags(), lvb(), any::<bool>()).prop_map(
                |((ls, epoch), name, lkid, mode, flags, lvb, conv)| if conv {
                    Message::Convert { ls, epoch, name, lkid, mode, flags, lvb }
                } else {
                    Message::Request { ls, epoch, name, lkid, mode, flags, lvb }
                }
            ),
            (h, name(), any::<u64>(), flags(), lvb()).prop_map(|((ls, epoch), name, lkid, flags, lvb)| {
                Message::Unlock { ls, epoch, name, lkid, flags, lvb }
            }),
            (h, name(), any::<u64>()).prop_map(|((ls, epoch), name, lkid)| Message::Cancel { ls, epoch, name, lkid }),
            (h, any::<u64>(), status(), opt_mode(), 0u8..8, any::<u32>(), proptest::option::of(lvb())).prop_map(
                |((ls, epoch), lkid, status, mode, sb, lvbseq, lvb)| Message::Cast {
                    ls,
                    epoch,
                    lkid,
                    status,
                    mode,
                    sbflags: SbFlags(sb),
                    lvbseq,
                    lvb
                }
            ),
            (h, any::<u64>(), mode()).prop_map(|((ls, epoch), lkid, mode)| Message::Bast { ls, epoch, lkid, mode }),
            (
                h,
                name(),
                proptest::option::of((lvb(), any::<u32>(), any::<bool>())),
                proptest::collection::vec(copy(), 0..5)
            )
                .prop_map(|((ls, epoch), name, m, locks)| Message::RecoverLocks {
                    ls,
                    epoch,
                    name,
                    master: m.map(|(lvb, seq, valnotvalid)| MasterLvb { lvb, seq, valnotvalid }),
                    locks
                }),
            (h, any::<bool>(), proptest::collection::vec((any::<u32>(), any::<u16>()), 0..6))
                .prop_map(|((ls, epoch), agreed, slots)| Message::RecoverDone { ls, epoch, agreed, slots }),
            (h, name(), any::<(u64, u64)>(), 0u8..5, plock_args(), any::<bool>()).prop_map(
                |((ls, epoch), name, (client, reqid), op, args, wait)| Message::PlockOp {
                    ls,
                    epoch,
                    name,
                    client,
                    reqid,
                    op: PlockOpCode::from_u8(op).expect("in range"),
                    args,
                    wait
                }
            ),
            (h, any::<(u64, u64, i32)>(), proptest::option::of((plock_args(), any::<u32>()))).prop_map(
                |((ls, epoch), (client, reqid, status), c)| Message::PlockReply {
                    ls,
                    epoch,
                    client,
                    reqid,
                    status,
                    conflict: c.map(|(a, node)| PlockConflict {
                        kind: a.kind,
                        start: a.start,
                        end: a.end,
                        pid: a.pid,
                        node
                    })
                }
            ),
            (h, name(), proptest::collection::vec((any::<u64>(), plock_args()), 0..5)).prop_map(
                |((ls, epoch), name, locks)| Message::PlockRecover {
                    ls,
                    epoch,
                    name,
                    locks: locks
                        .into_iter()
                        .map(|(client, a)| PlockCopy {
                            client,
                            owner: a.owner,
                            pid: a.pid,
                            kind: a.kind,
                            start: a.start,
                            end: a.end
                        })
                        .collect()
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(msgs in proptest::collection::vec(message(), 1..4)) {
            let mut buf = Vec::new();
            for m in &msgs {
                encode(m, &mut buf);
            }
            let mut at = 0;
            for m in &msgs {
                // Every strict prefix of a frame asks for more bytes.
                match decode(&buf[at..at + 3]).unwrap() {
                    Decoded::NeedMore(n) => prop_assert!(n > 0),
                    Decoded::Frame(..) => prop_assert!(false, "frame from 3 bytes"),
                }
                match decode(&buf[at..]).unwrap() {
                    Decoded::Frame(d, used) => {
                        prop_assert_eq!(&d, m);
                        match decode(&buf[at..at + used - 1]).unwrap() {
                            Decoded::NeedMore(n) => prop_assert_eq!(n, 1),
                            Decoded::Frame(..) => prop_assert!(false, "frame from a short buffer"),
                        }
                        at += used;
                    }
                    Decoded::NeedMore(_) => prop_assert!(false, "whole frame needs more"),
                }
            }
            prop_assert_eq!(at, buf.len());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let mut framed = vec![0x44, 0x4c, 1, bytes.first().copied().unwrap_or(0) % 12, 0, 0, 0, bytes.len() as u8];
            framed.extend_from_slice(&bytes);
            let _ = decode(&framed);
        }
    }

    #[test]
    fn rejects_bad_headers_and_fields() {
        assert_eq!(decode(b"XXXXXXXX"), Err(WireError::BadMagic(0x5858)));
        assert_eq!(decode(&[0x44, 0x4c, 9, 0, 0, 0, 0, 0]), Err(WireError::BadVersion(9)));
        assert_eq!(decode(&[0x44, 0x4c, 1, 0, 0xff, 0, 0, 0]), Err(WireError::TooLong(0xff00_0000)));
        assert_eq!(decode(&[0x44, 0x4c, 1, 99, 0, 0, 0, 0]), Err(WireError::BadType(99)));
        let mut buf = Vec::new();
        encode(&Message::Bast { ls: 1, epoch: 2, lkid: 3, mode: Mode::Ex }, &mut buf);
        *buf.last_mut().unwrap() = 6;
        assert!(matches!(decode(&buf), Err(WireError::Malformed { what: "mode", .. })));
        let mut buf = Vec::new();
        encode(&Message::Hello { node: 1 }, &mut buf);
        buf[7] += 1;
        buf.push(0);
        assert!(matches!(decode(&buf), Err(WireError::Malformed { what: "trailing bytes", .. })));
    }
}
