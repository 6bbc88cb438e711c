//! The local client protocol: frames between programs and `dlm_controld` over its Unix
//! socket. Sans-IO; layout in `docs/client-protocol.md`. Every request carries a sequence
//! number and gets exactly one [`Response::Reply`] or [`Response::Text`] with it, in order;
//! completions and blocking callbacks arrive in between as they happen.

use crate::mode::{Flags, Mode, SbFlags, Status};
use crate::node::MemberEvent;
use crate::plock::{PlockArgs, PlockConflict, PlockOpCode};
use crate::resource::LockId;
use crate::wire::{FieldError, Fields};

/// Largest frame body accepted.
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;

const Q_JOIN: u8 = 1;
const Q_LEAVE: u8 = 2;
const Q_LOCK: u8 = 3;
const Q_CONVERT: u8 = 4;
const Q_UNLOCK: u8 = 5;
const Q_CANCEL: u8 = 6;
const Q_LIST: u8 = 7;
const Q_DUMP: u8 = 8;
const Q_MEMBER: u8 = 9;
const Q_PLOCK: u8 = 10;
const Q_PLOCK_CANCEL: u8 = 11;
const Q_PLOCK_DUMP: u8 = 12;
const R_REPLY: u8 = 64;
const R_TEXT: u8 = 65;
const R_COMPLETION: u8 = 66;
const R_BLOCKING: u8 = 67;
const R_PLOCK: u8 = 68;
const NO_MODE: u8 = 0xff;

/// A request from a local program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Join (create) a lockspace; the reply carries its id.
    Join {
        /// Name.
        name: Vec<u8>,
        /// Value block size (0: the default).
        lvblen: u16,
    },
    /// Leave a lockspace.
    Leave {
        /// Lockspace id.
        ls: u32,
    },
    /// New lock; the reply carries the lock id, the completion follows.
    Lock {
        /// Lockspace id.
        ls: u32,
        /// Mode.
        mode: Mode,
        /// Flags.
        flags: Flags,
        /// Resource name.
        name: Vec<u8>,
        /// Value block (empty: none).
        lvb: Vec<u8>,
    },
    /// Convert a lock.
    Convert {
        /// Lockspace id.
        ls: u32,
        /// Lock.
        lkid: LockId,
        /// Mode.
        mode: Mode,
        /// Flags.
        flags: Flags,
        /// Value block (empty: none).
        lvb: Vec<u8>,
    },
    /// Release a lock.
    Unlock {
        /// Lockspace id.
        ls: u32,
        /// Lock.
        lkid: LockId,
        /// Flags.
        flags: Flags,
        /// Value block (empty: none).
        lvb: Vec<u8>,
    },
    /// Cancel a queued request or conversion (reply status 0: sent, 1: nothing to cancel).
    Cancel {
        /// Lockspace id.
        ls: u32,
        /// Lock.
        lkid: LockId,
    },
    /// `dlm_tool ls`.
    List,
    /// `dlm_tool lockdump NAME`.
    Dump {
        /// Lockspace name.
        name: Vec<u8>,
    },
    /// A membership event from the cluster layer (members, fenced, quorum).
    Member {
        /// The event.
        event: MemberEvent,
    },
    /// A POSIX byte-range lock operation on resource `name`: Set (F_SETLK/F_SETLKW), Get
    /// (F_GETLK) or ReleaseOwner (close; only `args.owner` counts). The reply accepts it;
    /// the outcome follows as a [`Response::Plock`] with this request's sequence number.
    Plock {
        /// Lockspace id.
        ls: u32,
        /// Set, Get or ReleaseOwner.
        op: PlockOpCode,
        /// Resource name.
        name: Vec<u8>,
        /// Owner, pid, range, kind.
        args: PlockArgs,
        /// F_SETLKW: wait for the grant instead of failing with EAGAIN.
        wait: bool,
    },
    /// Withdraw the waiting Plock request with sequence number `reqid` (reply status 0:
    /// withdrawn or being withdrawn, 1: not pending).
    PlockCancel {
        /// Lockspace id.
        ls: u32,
        /// The request.
        reqid: u32,
    },
    /// `dlm_tool plocks NAME`.
    PlockDump {
        /// Lockspace name.
        name: Vec<u8>,
    },
}

/// A frame from the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The answer to request `seq`: 0 or a negative errno; the lockspace and lock ids.
    Reply {
        /// Request sequence number.
        seq: u32,
        /// 0 or a negative errno.
        status: i32,
        /// Lockspace id.
        ls: u32,
        /// Lock id.
        lkid: LockId,
    },
    /// Text answer to request `seq` (list, dump).
    Text {
        /// Request sequence number.
        seq: u32,
        /// 0 or a negative errno.
        status: i32,
        /// The text.
        text: String,
    },
    /// A completion callback.
    Completion {
        /// Lockspace id.
        ls: u32,
        /// Lock.
        lkid: LockId,
        /// Outcome.
        status: Status,
        /// Granted mode now.
        mode: Option<Mode>,
        /// Status-block flags.
        sbflags: SbFlags,
        /// Value block.
        lvb: Option<Vec<u8>>,
    },
    /// A blocking callback.
    Blocking {
        /// Lockspace id.
        ls: u32,
        /// Lock.
        lkid: LockId,
        /// Blocked mode.
        mode: Mode,
    },
    /// The outcome of Plock request `seq`.
    Plock {
        /// The request's sequence number.
        seq: u32,
        /// 0, -11 (EAGAIN), `-DLM_ECANCEL` (cancelled) or -22.
        status: i32,
        /// Lockspace id.
        ls: u32,
        /// For a Get: the conflicting lock, if any.
        conflict: Option<PlockConflict>,
    },
}

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Frame over [`MAX_CLIENT_FRAME`].
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
    /// Unknown frame type.
    #[error("unknown frame type {0}")]
    BadType(u8),
    /// A field out of range, a short body or trailing bytes.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Result of a decode that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<T> {
    /// A value, its sequence number (0 for responses) and the bytes used.
    Done(T, u32, usize),
    /// At least this many more bytes are needed.
    NeedMore(usize),
}

struct W;

impl W {
    fn start(out: &mut Vec<u8>, kind: u8, seq: u32) -> usize {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(kind);
        out.extend_from_slice(&seq.to_be_bytes());
        at
    }
    fn finish(out: &mut [u8], at: usize) {
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn put_name(out: &mut Vec<u8>, n: &[u8]) {
    out.push(n.len().min(255) as u8);
    out.extend_from_slice(&n[..n.len().min(255)]);
}

fn put_lvb(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
}

/// Append request `req` with sequence number `seq`.
pub fn encode_request(req: &Request, seq: u32, out: &mut Vec<u8>) {
    let kind = match req {
        Request::Join { .. } => Q_JOIN,
        Request::Leave { .. } => Q_LEAVE,
        Request::Lock { .. } => Q_LOCK,
        Request::Convert { .. } => Q_CONVERT,
        Request::Unlock { .. } => Q_UNLOCK,
        Request::Cancel { .. } => Q_CANCEL,
        Request::List => Q_LIST,
        Request::Dump { .. } => Q_DUMP,
        Request::Member { .. } => Q_MEMBER,
        Request::Plock { .. } => Q_PLOCK,
        Request::PlockCancel { .. } => Q_PLOCK_CANCEL,
        Request::PlockDump { .. } => Q_PLOCK_DUMP,
    };
    let at = W::start(out, kind, seq);
    match req {
        Request::Join { name, lvblen } => {
            put_name(out, name);
            out.extend_from_slice(&lvblen.to_be_bytes());
        }
        Request::Leave { ls } => out.extend_from_slice(&ls.to_be_bytes()),
        Request::Lock { ls, mode, flags, name, lvb } => {
            out.extend_from_slice(&ls.to_be_bytes());
            out.push(*mode as u8);
            out.extend_from_slice(&flags.0.to_be_bytes());
            put_name(out, name);
            put_lvb(out, lvb);
        }
        Request::Convert { ls, lkid, mode, flags, lvb } => {
            out.extend_from_slice(&ls.to_be_bytes());
            out.extend_from_slice(&lkid.to_be_bytes());
            out.push(*mode as u8);
            out.extend_from_slice(&flags.0.to_be_bytes());
            put_lvb(out, lvb);
        }
        Request::Unlock { ls, lkid, flags, lvb } => {
            out.extend_from_slice(&ls.to_be_bytes());
            out.extend_from_slice(&lkid.to_be_bytes());
            out.extend_from_slice(&flags.0.to_be_bytes());
            put_lvb(out, lvb);
        }
        Request::Cancel { ls, lkid } => {
            out.extend_from_slice(&ls.to_be_bytes());
            out.extend_from_slice(&lkid.to_be_bytes());
        }
        Request::List => {}
        Request::Dump { name } => put_name(out, name),
        Request::Member { event } => match event {
            MemberEvent::Members { epoch, members, failed } => {
                out.push(0);
                out.extend_from_slice(&epoch.to_be_bytes());
                for list in [members, failed] {
                    out.extend_from_slice(&(list.len().min(1024) as u16).to_be_bytes());
                    for n in list.iter().take(1024) {
                        out.extend_from_slice(&n.to_be_bytes());
                    }
                }
            }
            MemberEvent::Fenced { node } => {
                out.push(1);
                out.extend_from_slice(&node.to_be_bytes());
            }
            MemberEvent::Quorum { quorate } => {
                out.push(2);
                out.push(*quorate as u8);
            }
        },
        Request::Plock { ls, op, name, args, wait } => {
            out.extend_from_slice(&ls.to_be_bytes());
            out.push(op.to_u8());
            put_name(out, name);
            out.extend_from_slice(&args.owner.to_be_bytes());
            out.extend_from_slice(&args.pid.to_be_bytes());
            out.push(args.kind.to_u8());
            out.extend_from_slice(&args.start.to_be_bytes());
            out.extend_from_slice(&args.end.to_be_bytes());
            out.push(*wait as u8);
        }
        Request::PlockCancel { ls, reqid } => {
            out.extend_from_slice(&ls.to_be_bytes());
            out.extend_from_slice(&reqid.to_be_bytes());
        }
        Request::PlockDump { name } => put_name(out, name),
    }
    W::finish(out, at);
}

/// Append response `resp`.
pub fn encode_response(resp: &Response, out: &mut Vec<u8>) {
    match resp {
        Response::Reply { seq, status, ls, lkid } => {
            let at = W::start(out, R_REPLY, *seq);
            out.extend_from_slice(&status.to_be_bytes());
            out.extend_from_slice(&ls.to_be_bytes());
            out.extend_from_slice(&lkid.to_be_bytes());
            W::finish(out, at);
        }
        Response::Text { seq, status, text } => {
            let at = W::start(out, R_TEXT, *seq);
            out.extend_from_slice(&status.to_be_bytes());
            let t = &text.as_bytes()[..text.len().min(MAX_CLIENT_FRAME - 64)];
            out.extend_from_slice(&(t.len() as u32).to_be_bytes());
            out.extend_from_slice(t);
            W::finish(out, at);
        }
        Response::Completion { ls, lkid, status, mode, sbflags, lvb } => {
            let at = W::start(out, R_COMPLETION, 0);
            out.extend_from_slice(&ls.to_be_bytes());
            out.extend_from_slice(&lkid.to_be_bytes());
            out.extend_from_slice(&status.code().to_be_bytes());
            out.push(mode.map_or(NO_MODE, |m| m as u8));
            out.push(sbflags.0);
            match lvb {
                Some(v) => {
                    out.push(1);
                    put_lvb(out, v);
                }
                None => out.push(0),
            }
            W::finish(out, at);
        }
        Response::Blocking { ls, lkid, mode } => {
            let at = W::start(out, R_BLOCKING, 0);
            out.extend_from_slice(&ls.to_be_bytes());
            out.extend_from_slice(&lkid.to_be_bytes());
            out.push(*mode as u8);
            W::finish(out, at);
        }
        Response::Plock { seq, status, ls, conflict } => {
            let at = W::start(out, R_PLOCK, *seq);
            out.extend_from_slice(&status.to_be_bytes());
            out.extend_from_slice(&ls.to_be_bytes());
            match conflict {
                Some(c) => {
                    out.push(1);
                    out.push(c.kind.to_u8());
                    out.extend_from_slice(&c.start.to_be_bytes());
                    out.extend_from_slice(&c.end.to_be_bytes());
                    out.extend_from_slice(&c.pid.to_be_bytes());
                    out.extend_from_slice(&c.node.to_be_bytes());
                }
                None => out.push(0),
            }
            W::finish(out, at);
        }
    }
}

impl FieldError for ProtoError {
    fn malformed(_kind: u8, what: &'static str) -> Self {
        ProtoError::Malformed(what)
    }
}

type R<'a> = Fields<'a, ProtoError>;

/// A frame's type, sequence number, body after the header, and total size.
type Split<'a> = (u8, u32, &'a [u8], usize);

fn split(buf: &[u8]) -> Result<Option<Split<'_>>, ProtoError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_CLIENT_FRAME {
        return Err(ProtoError::TooLong(len));
    }
    if len < 5 {
        return Err(ProtoError::Malformed("frame length"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let body = &buf[4..4 + len];
    let seq = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
    Ok(Some((body[0], seq, &body[5..], 4 + len)))
}

fn need(buf: &[u8]) -> usize {
    if buf.len() < 4 {
        return 4 - buf.len();
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    (4 + len).saturating_sub(buf.len()).max(1)
}

/// Decode one request from the front of `buf`.
pub fn decode_request(buf: &[u8]) -> Result<Frame<Request>, ProtoError> {
    let Some((kind, seq, body, used)) = split(buf)? else { return Ok(Frame::NeedMore(need(buf))) };
    let mut r = R::new(body, kind);
    let req = match kind {
        Q_JOIN => Request::Join { name: r.name()?, lvblen: r.u16("lvblen")? },
        Q_LEAVE => Request::Leave { ls: r.u32("lockspace")? },
        Q_LOCK => Request::Lock {
            ls: r.u32("lockspace")?,
            mode: r.mode()?,
            flags: r.flags()?,
            name: r.name()?,
            lvb: r.lvb()?,
        },
        Q_CONVERT => Request::Convert {
            ls: r.u32("lockspace")?,
            lkid: r.u64("lock id")?,
            mode: r.mode()?,
            flags: r.flags()?,
            lvb: r.lvb()?,
        },
        Q_UNLOCK => {
            Request::Unlock { ls: r.u32("lockspace")?, lkid: r.u64("lock id")?, flags: r.flags()?, lvb: r.lvb()? }
        }
        Q_CANCEL => Request::Cancel { ls: r.u32("lockspace")?, lkid: r.u64("lock id")? },
        Q_LIST => Request::List,
        Q_DUMP => Request::Dump { name: r.name()? },
        Q_MEMBER => Request::Member {
            event: match r.u8("event kind")? {
                0 => {
                    let epoch = r.u64("epoch")?;
                    let mut lists = [Vec::new(), Vec::new()];
                    for l in &mut lists {
                        let n = r.u16("node count")? as usize;
                        if n > 1024 {
                            return Err(ProtoError::Malformed("node count"));
                        }
                        for _ in 0..n {
                            l.push(r.u32("node")?);
                        }
                    }
                    let [members, failed] = lists;
                    MemberEvent::Members { epoch, members, failed }
                }
                1 => MemberEvent::Fenced { node: r.u32("node")? },
                2 => MemberEvent::Quorum {
                    quorate: match r.u8("quorate")? {
                        0 => false,
                        1 => true,
                        _ => return Err(ProtoError::Malformed("quorate")),
                    },
                },
                _ => return Err(ProtoError::Malformed("event kind")),
            },
        },
        Q_PLOCK => {
            let ls = r.u32("lockspace")?;
            let op = match PlockOpCode::from_u8(r.u8("plock op")?) {
                Some(op @ (PlockOpCode::Set | PlockOpCode::Get | PlockOpCode::ReleaseOwner)) => op,
                _ => return Err(ProtoError::Malformed("plock op")),
            };
            let name = r.name()?;
            let owner = r.u64("owner")?;
            let pid = r.u32("pid")?;
            let kind = r.plock_kind()?;
            let args = PlockArgs { owner, pid, kind, start: r.u64("start")?, end: r.u64("end")? };
            Request::Plock { ls, op, name, args, wait: r.bool("wait")? }
        }
        Q_PLOCK_CANCEL => Request::PlockCancel { ls: r.u32("lockspace")?, reqid: r.u32("request")? },
        Q_PLOCK_DUMP => Request::PlockDump { name: r.name()? },
        other => return Err(ProtoError::BadType(other)),
    };
    if !r.b.is_empty() {
        return Err(ProtoError::Malformed("trailing bytes"));
    }
    Ok(Frame::Done(req, seq, used))
}

/// Decode one response from the front of `buf`.
pub fn decode_response(buf: &[u8]) -> Result<Frame<Response>, ProtoError> {
    let Some((kind, seq, body, used)) = split(buf)? else { return Ok(Frame::NeedMore(need(buf))) };
    let mut r = R::new(body, kind);
    let resp = match kind {
        R_REPLY => {
            Response::Reply { seq, status: r.u32("status")? as i32, ls: r.u32("lockspace")?, lkid: r.u64("lock id")? }
        }
        R_TEXT => {
            let status = r.u32("status")? as i32;
            let n = r.u32("text length")? as usize;
            let t = r.take(n, "text")?;
            Response::Text { seq, status, text: String::from_utf8_lossy(t).into_owned() }
        }
        R_COMPLETION => {
            let ls = r.u32("lockspace")?;
            let lkid = r.u64("lock id")?;
            let status = Status::from_code(r.u32("status")? as i32).ok_or(ProtoError::Malformed("status"))?;
            let mode = match r.u8("mode")? {
                NO_MODE => None,
                v => Some(Mode::from_u8(v).ok_or(ProtoError::Malformed("mode"))?),
            };
            let sbflags = SbFlags(r.u8("sbflags")?);
            let lvb = match r.u8("lvb present")? {
                0 => None,
                1 => Some(r.lvb()?),
                _ => return Err(ProtoError::Malformed("lvb present")),
            };
            Response::Completion { ls, lkid, status, mode, sbflags, lvb }
        }
        R_BLOCKING => Response::Blocking { ls: r.u32("lockspace")?, lkid: r.u64("lock id")?, mode: r.mode()? },
        R_PLOCK => {
            let status = r.u32("status")? as i32;
            let ls = r.u32("lockspace")?;
            let conflict = if r.bool("conflict present")? {
                let kind = r.plock_kind()?;
                let (start, end) = (r.u64("start")?, r.u64("end")?);
                Some(PlockConflict { kind, start, end, pid: r.u32("pid")?, node: r.u32("node")? })
            } else {
                None
            };
            Response::Plock { seq, status, ls, conflict }
        }
        other => return Err(ProtoError::BadType(other)),
    };
    if !r.b.is_empty() {
        return Err(ProtoError::Malformed("trailing bytes"));
    }
    Ok(Frame::Done(resp, seq, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MAX_NAME;
    use proptest::prelude::*;

    fn mode() -> impl Strategy<Value = Mode> {
        (0u8..6).prop_map(|v| Mode::from_u8(v).expect("in range"))
    }
    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=max)
    }
    fn flags() -> impl Strategy<Value = Flags> {
        any::<u32>().prop_map(|f| Flags(f & Flags::KNOWN.0))
    }
    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (bytes(MAX_NAME), any::<u16>()).prop_map(|(name, lvblen)| Request::Join { name, lvblen }),
            any::<u32>().prop_map(|ls| Request::Leave { ls }),
            (any::<u32>(), mode(), flags(), bytes(MAX_NAME), bytes(64))
                .prop_map(|(ls, mode, flags, name, lvb)| Request::Lock { ls, mode, flags, name, lvb }),
            (any::<u32>(), any::<u64>(), mode(), flags(), bytes(64))
                .prop_map(|(ls, lkid, mode, flags, lvb)| Request::Convert { ls, lkid, mode, flags, lvb }),
            (any::<u32>(), any::<u64>(), flags(), bytes(64)).prop_map(|(ls, lkid, flags, lvb)| Request::Unlock {
                ls,
                lkid,
                flags,
                lvb
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(ls, lkid)| Request::Cancel { ls, lkid }),
            Just(Request::List),
            bytes(MAX_NAME).prop_map(|name| Request::Dump { name }),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u32>(), 0..8),
                proptest::collection::vec(any::<u32>(), 0..4)
            )
                .prop_map(|(epoch, members, failed)| Request::Member {
                    event: MemberEvent::Members { epoch, members, failed }
                }),
            any::<u32>().prop_map(|node| Request::Member { event: MemberEvent::Fenced { node } }),
            any::<bool>().prop_map(|quorate| Request::Member { event: MemberEvent::Quorum { quorate } }),
            (any::<u32>(), 0u8..3, bytes(MAX_NAME), crate::wire::tests::plock_args(), any::<bool>()).prop_map(
                |(ls, op, name, args, wait)| Request::Plock {
                    ls,
                    op: PlockOpCode::from_u8(op).expect("in range"),
                    name,
                    args,
                    wait
                }
            ),
            (any::<u32>(), any::<u32>()).prop_map(|(ls, reqid)| Request::PlockCancel { ls, reqid }),
            bytes(MAX_NAME).prop_map(|name| Request::PlockDump { name }),
        ]
    }
    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (any::<u32>(), any::<i32>(), any::<u32>(), any::<u64>())
                .prop_map(|(seq, status, ls, lkid)| Response::Reply { seq, status, ls, lkid }),
            (any::<u32>(), any::<i32>(), "[a-z \n]{0,40}").prop_map(|(seq, status, text)| Response::Text {
                seq,
                status,
                text
            }),
            (
                any::<u32>(),
                any::<u64>(),
                0usize..7,
                proptest::option::of(mode()),
                0u8..8,
                proptest::option::of(bytes(64))
            )
                .prop_map(|(ls, lkid, s, mode, sb, lvb)| Response::Completion {
                    ls,
                    lkid,
                    status: [
                        Status::Granted,
                        Status::WouldBlock,
                        Status::Deadlock,
                        Status::Unlocked,
                        Status::Canceled,
                        Status::Invalid,
                        Status::NotFound
                    ][s],
                    mode,
                    sbflags: SbFlags(sb),
                    lvb
                }),
            (any::<u32>(), any::<u64>(), mode()).prop_map(|(ls, lkid, mode)| Response::Blocking { ls, lkid, mode }),
            (any::<(u32, i32, u32)>(), proptest::option::of((crate::wire::tests::plock_args(), any::<u32>())))
                .prop_map(|((seq, status, ls), c)| Response::Plock {
                    seq,
                    status,
                    ls,
                    conflict: c.map(|(a, node)| PlockConflict {
                        kind: a.kind,
                        start: a.start,
                        end: a.end,
                        pid: a.pid,
                        node
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in request(), seq in any::<u32>()) {
            let mut buf = Vec::new();
            encode_request(&req, seq, &mut buf);
            prop_assert_eq!(decode_request(&buf).unwrap(), Frame::Done(req, seq, buf.len()));
            prop_assert!(matches!(decode_request(&buf[..buf.len() - 1]).unwrap(), Frame::NeedMore(_)));
        }

        #[test]
        fn responses_round_trip(resp in response()) {
            let mut buf = Vec::new();
            encode_response(&resp, &mut buf);
            let seq = match &resp {
                Response::Reply { seq, .. } | Response::Text { seq, .. } | Response::Plock { seq, .. } => *seq,
                _ => 0,
            };
            prop_assert_eq!(decode_response(&buf).unwrap(), Frame::Done(resp, seq, buf.len()));
        }

        #[test]
        fn decoders_never_panic(b in bytes(300)) {
            let _ = decode_request(&b);
            let _ = decode_response(&b);
        }
    }
}
