//! One node's DLM: lockspaces, the resource directory, masters, the local locks of this
//! node's clients, and recovery. Sans-IO: the driver feeds it client calls, messages from
//! peers and membership events, and carries out the [`Output`]s it returns (messages to
//! send, callbacks to deliver).
//!
//! # Distribution
//! A resource's directory node is `members[hash(name) % members.len()]` (members sorted).
//! The first node to use a resource asks the directory node (zero round trips when that is
//! itself) and becomes master if nobody is; requests then go to the master (zero round
//! trips when local). A request thus costs at most two round trips: lookup, then request.
//!
//! # Recovery
//! Every membership change starts recovery at the new epoch in every lockspace: stop
//! granting; wait until every failed node is fenced (and the cluster is quorate); then each
//! node settles the operations it had in flight (down-conversions and unlocks complete
//! locally, requests and up-conversions are carried over), sends each of its locks to the
//! resource's new master (the directory node under the new membership) together with the
//! value block if it was the old master, and announces it is done. When every member is
//! done, the new masters rebuild their queues from those copies (the dead nodes' locks are
//! simply absent), decide the value blocks (flagged not valid when a failed node could have
//! changed them), replay the carried-over requests, grant, and everybody resumes. Every
//! recovery rebuilds every resource, so a recovery interrupted by another membership change
//! is simply started again.
//!
//! A member that gets a recovery message for its current epoch while not recovering (the
//! sender restarted under the same membership, or this node created the lockspace after
//! the member list) recovers again at that epoch with the sender.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tracing::{debug, warn};

use crate::mode::{Flags, Mode, SbFlags, Status};
use crate::plock::PlockConflict;
use crate::resource::{lock_node, Effect, Lkb, LockId, Queue, Resource};
use crate::wire::{LockCopy, MasterLvb, Message, NodeId, MAX_LVB, MAX_NAME};

mod plock;
pub use plock::{PlockDump, PlockOp, PLOCK_EAGAIN, PLOCK_ECANCELED, PLOCK_EDEADLK, PLOCK_EINVAL};

/// Identifies the local client that owns a lock (the daemon uses its connection number).
pub type Owner = u64;

/// Default value block size, bytes.
pub const DEFAULT_LVB_LEN: usize = 32;

/// What the cluster layer tells the DLM. Membership is virtually synchronous: every node
/// sees the same sequence of member lists, each with a larger epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// The members are now `members`; `failed` were lost (not left cleanly) and must be
    /// fenced before recovery goes on.
    Members {
        /// Membership generation, strictly increasing.
        epoch: u64,
        /// Node ids of the members.
        members: Vec<NodeId>,
        /// Lost nodes that must be fenced.
        failed: Vec<NodeId>,
    },
    /// `node` has been fenced: it can no longer touch shared storage.
    Fenced {
        /// The fenced node.
        node: NodeId,
    },
    /// Whether the cluster has quorum. Without it nothing is granted.
    Quorum {
        /// Quorate.
        quorate: bool,
    },
}

/// A source of membership events; the cluster layer implements it, tests use
/// [`StaticMembership`].
pub trait Membership {
    /// The next event, if one is ready.
    fn poll_event(&mut self) -> Option<MemberEvent>;
}

/// A fixed member list: one `Members` event, quorate, nobody ever fails.
#[derive(Debug, Clone)]
pub struct StaticMembership {
    events: Vec<MemberEvent>,
}

impl StaticMembership {
    /// Members `members`, epoch 1.
    pub fn new(members: Vec<NodeId>) -> StaticMembership {
        StaticMembership { events: vec![MemberEvent::Members { epoch: 1, members, failed: Vec::new() }] }
    }
}

impl Membership for StaticMembership {
    fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop()
    }
}

/// A callback for a local client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ast {
    /// Completion of a request, conversion, unlock or cancel.
    Completion {
        /// Lockspace id.
        ls: u32,
        /// Lock.
        lkid: LockId,
        /// Owner.
        owner: Owner,
        /// Outcome.
        status: Status,
        /// Granted mode now.
        mode: Option<Mode>,
        /// DEMOTED / VALNOTVALID / ALTMODE.
        sbflags: SbFlags,
        /// The value block, when VALBLK was given and the operation read it.
        lvb: Option<Vec<u8>>,
    },
    /// The lock blocks another node's or client's request for `mode`.
    Blocking {
        /// Lockspace id.
        ls: u32,
        /// Lock.
        lkid: LockId,
        /// Owner.
        owner: Owner,
        /// The blocked mode.
        mode: Mode,
    },
    /// The outcome of a [`Node::plock`] request.
    Plock {
        /// Lockspace id.
        ls: u32,
        /// The client.
        owner: Owner,
        /// The request id it gave.
        reqid: u64,
        /// 0, [`PLOCK_EAGAIN`], [`PLOCK_EDEADLK`], [`PLOCK_ECANCELED`] or [`PLOCK_EINVAL`].
        status: i32,
        /// For a Get: the conflicting lock, if any.
        conflict: Option<PlockConflict>,
    },
}

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `msg` to node `to`.
    Send {
        /// Destination.
        to: NodeId,
        /// Message.
        msg: Message,
    },
    /// Deliver a callback to a local client.
    Ast(Ast),
}

/// A client call refused at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DlmError {
    /// No such lockspace on this node.
    #[error("no lockspace with id {ls:#x} on this node; join it first")]
    NoLockspace {
        /// Lockspace id.
        ls: u32,
    },
    /// The lockspace name is empty or too long.
    #[error("lockspace name must be 1 to {MAX_NAME} bytes")]
    BadLockspaceName,
    /// The lock id is unknown or belongs to another client.
    #[error("no lock {lkid:#x} owned by this client")]
    NoSuchLock {
        /// Lock id.
        lkid: LockId,
    },
    /// The resource name is empty or too long.
    #[error("resource name must be 1 to {MAX_NAME} bytes")]
    BadName,
    /// Flags that cannot be used with this call.
    #[error("invalid flags {flags:#x} for {call}")]
    BadFlags {
        /// The flags.
        flags: u32,
        /// The call.
        call: &'static str,
    },
    /// A value block of the wrong size.
    #[error("value block must be {want} bytes, got {got}")]
    BadLvb {
        /// Lockspace's size.
        want: usize,
        /// Given.
        got: usize,
    },
    /// The lock has an operation in progress (EBUSY).
    #[error("lock {lkid:#x} has an operation in progress")]
    Busy {
        /// Lock id.
        lkid: LockId,
    },
    /// The value block size is not a multiple of 8 in 8..=512.
    #[error("value block size {0} must be a multiple of 8 between 8 and {MAX_LVB}")]
    BadLvbLen(usize),
}

impl DlmError {
    /// The one mapping from refusals to the negative errno local clients see.
    pub fn code(&self) -> i32 {
        match self {
            DlmError::NoLockspace { .. } | DlmError::NoSuchLock { .. } => -2,
            DlmError::Busy { .. } => -16,
            DlmError::BadLockspaceName
            | DlmError::BadName
            | DlmError::BadFlags { .. }
            | DlmError::BadLvb { .. }
            | DlmError::BadLvbLen(_) => -22,
        }
    }
}

/// The lockspace id used on the wire: FNV-1a of the name folded to 32 bits.
pub fn lockspace_id(name: &[u8]) -> u32 {
    let h = fnv1a(name);
    (h ^ (h >> 32)) as u32
}

fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The directory node of `name` among `members` (sorted, non-empty).
pub fn dir_node(name: &[u8], members: &[NodeId]) -> NodeId {
    members[(fnv1a(name) % members.len() as u64) as usize]
}

/// Whether a conversion from `gr` to `rq` only weakens the lock (everything compatible
/// with `gr` is compatible with `rq`).
fn is_down(gr: Mode, rq: Mode) -> bool {
    Mode::ALL.iter().all(|&m| !gr.compatible(m) || rq.compatible(m))
}

fn is_up(gr: Mode, rq: Mode) -> bool {
    is_down(rq, gr)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Request { mode: Mode, flags: Flags },
    Convert { mode: Mode, flags: Flags },
    Unlock { flags: Flags },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    None,
    Held,
    Issued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Op,
    Cancel,
}

#[derive(Debug, Clone)]
struct LocalLock {
    name: Vec<u8>,
    owner: Option<Owner>,
    doomed: bool,
    persistent: bool,
    grmode: Option<Mode>,
    gr_flags: Flags,
    pending: Option<Pending>,
    issued: bool,
    cancel: Cancel,
    lvb: Vec<u8>,
    lvbseq: u32,
    /// `lvb` was read flagged not valid.
    lvb_invalid: bool,
}

#[derive(Debug, Default)]
struct Rsb {
    master: Option<NodeId>,
    res: Option<Resource>,
    lookup_sent: bool,
    waiting: Vec<(OpKind, LockId)>,
}

#[derive(Debug)]
enum Held {
    Local(OpKind, LockId),
    Msg(NodeId, Message),
}

/// What one node sent for one resource during recovery.
type Contribution = (NodeId, Option<MasterLvb>, Vec<LockCopy>);

#[derive(Debug)]
struct Recovery {
    epoch: u64,
    phase_a_done: bool,
    done_from: BTreeSet<NodeId>,
    copies: BTreeMap<Vec<u8>, Vec<Contribution>>,
    /// Plock tables being rebuilt from the members' copies.
    plocks: plock::Rebuild,
    prev_slots: BTreeMap<NodeId, (bool, Vec<(NodeId, u16)>)>,
}

#[derive(Debug)]
enum State {
    Running,
    Paused,
    Recovering(Box<Recovery>),
}

/// One lockspace on this node.
#[derive(Debug)]
struct Lockspace {
    id: u32,
    name: Vec<u8>,
    lvblen: usize,
    state: State,
    epoch: u64,
    snap_epoch: u64,
    slots: BTreeMap<NodeId, u16>,
    /// `slots` are the ones every member agrees on (false on a newcomer until recovery).
    slots_hist: bool,
    rsbs: HashMap<Vec<u8>, Rsb>,
    dir: HashMap<Vec<u8>, NodeId>,
    locks: HashMap<LockId, LocalLock>,
    next_seq: u32,
    held: Vec<Held>,
    /// Value blocks of resources this node mastered, kept until a recovery completes.
    handover: BTreeMap<Vec<u8>, MasterLvb>,
    /// Writes settled locally during recovery, kept until a recovery completes.
    ghosts: Vec<(Vec<u8>, LockCopy)>,
    /// Nodes that left since the last completed recovery (even if back since).
    departed: BTreeSet<NodeId>,
    /// POSIX byte-range locks.
    plock: plock::LsPlocks,
}

/// A snapshot of one lockspace for `dlm_tool ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockspaceInfo {
    /// Name.
    pub name: Vec<u8>,
    /// Wire id.
    pub id: u32,
    /// Members (node ids).
    pub members: Vec<NodeId>,
    /// Slot of each member.
    pub slots: Vec<(NodeId, u16)>,
    /// Recovery generation.
    pub epoch: u64,
    /// "running", "paused" (no quorum) or "recovering".
    pub state: &'static str,
    /// Value block size.
    pub lvblen: usize,
    /// Locks owned by this node's clients.
    pub local_locks: usize,
    /// Resources this node masters.
    pub mastered: usize,
}

/// One lock in a [`ResourceDump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockDump {
    /// Lock id (owner node in the high 32 bits).
    pub lkid: LockId,
    /// Queue.
    pub queue: Queue,
    /// Granted mode.
    pub grmode: Option<Mode>,
    /// Requested mode.
    pub rqmode: Option<Mode>,
}

/// A resource this node masters, for `dlm_tool lockdump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDump {
    /// Name.
    pub name: Vec<u8>,
    /// Master (this node).
    pub master: NodeId,
    /// Value block sequence number and not-valid flag.
    pub lvbseq: u32,
    /// Value block flagged not valid.
    pub valnotvalid: bool,
    /// The locks, granted first.
    pub locks: Vec<LockDump>,
}

/// One node's lock manager.
#[derive(Debug)]
pub struct Node {
    me: NodeId,
    epoch: u64,
    members: Vec<NodeId>,
    /// The last member lists, by epoch (newcomers replay them onto adopted slots).
    history: Vec<(u64, Vec<NodeId>)>,
    need_fence: BTreeSet<NodeId>,
    fenced: BTreeSet<NodeId>,
    quorate: bool,
    lockspaces: HashMap<u32, Lockspace>,
    future: Vec<(NodeId, Message)>,
    out: Vec<Output>,
    effects: Vec<Effect>,
}

/// How a message is treated with respect to epochs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Op,
    Reply,
    Recovery,
}

fn msg_head(m: &Message) -> Option<(u32, u64, Kind)> {
    Some(match m {
        Message::Hello { .. } => return None,
        Message::Lookup { ls, epoch, .. }
        | Message::Request { ls, epoch, .. }
        | Message::Convert { ls, epoch, .. }
        | Message::Unlock { ls, epoch, .. }
        | Message::Cancel { ls, epoch, .. }
        | Message::PlockOp { ls, epoch, .. } => (*ls, *epoch, Kind::Op),
        Message::LookupReply { ls, epoch, .. }
        | Message::Cast { ls, epoch, .. }
        | Message::Bast { ls, epoch, .. }
        | Message::PlockReply { ls, epoch, .. } => (*ls, *epoch, Kind::Reply),
        Message::RecoverLocks { ls, epoch, .. }
        | Message::RecoverDone { ls, epoch, .. }
        | Message::PlockRecover { ls, epoch, .. } => (*ls, *epoch, Kind::Recovery),
    })
}

impl Node {
    /// A node with id `me`, not yet in any membership (nothing is granted until the first
    /// [`MemberEvent::Members`]).
    pub fn new(me: NodeId) -> Node {
        Node {
            me,
            epoch: 0,
            members: Vec::new(),
            history: Vec::new(),
            need_fence: BTreeSet::new(),
            fenced: BTreeSet::new(),
            quorate: true,
            lockspaces: HashMap::new(),
            future: Vec::new(),
            out: Vec::new(),
            effects: Vec::new(),
        }
    }

    /// A single node with no cluster (the filesystem's `lock_nolock`): member of itself.
    pub fn single() -> Node {
        let mut n = Node::new(1);
        n.membership(MemberEvent::Members { epoch: 1, members: vec![1], failed: Vec::new() });
        n
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Current members.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Take what the driver must do.
    pub fn take_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Append what the driver must do to `v` (reuses the caller's buffer).
    pub fn drain_output_into(&mut self, v: &mut Vec<Output>) {
        v.append(&mut self.out);
    }

    /// Join (create) a lockspace on this node. Every member must join a lockspace before
    /// locks are taken in it. Returns its id. Joining again is harmless.
    pub fn join(&mut self, name: &[u8], lvblen: usize) -> Result<u32, DlmError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(DlmError::BadLockspaceName);
        }
        if lvblen == 0 || !lvblen.is_multiple_of(8) || lvblen > MAX_LVB {
            return Err(DlmError::BadLvbLen(lvblen));
        }
        let id = lockspace_id(name);
        match self.lockspaces.get_mut(&id) {
            None => self.create_ls(id, name.to_vec(), lvblen, false),
            Some(l) if l.name != name => {
                // Hosted on a peer's behalf so far: take the real name and size.
                l.name = name.to_vec();
                if l.rsbs.values().all(|r| r.res.as_ref().is_none_or(Resource::is_empty)) {
                    l.lvblen = lvblen;
                }
            }
            Some(_) => {}
        }
        Ok(id)
    }

    fn create_ls(&mut self, id: u32, name: Vec<u8>, lvblen: usize, recovering: bool) {
        let state = if self.epoch == 0 || recovering {
            State::Recovering(Box::new(Recovery::new(self.epoch)))
        } else if self.quorate {
            State::Running
        } else {
            State::Paused
        };
        let slots = if self.epoch == 0 || recovering {
            BTreeMap::new()
        } else {
            compute_slots(&BTreeMap::new(), &self.members)
        };
        self.lockspaces.insert(
            id,
            Lockspace {
                id,
                name,
                lvblen,
                state,
                epoch: self.epoch,
                snap_epoch: if recovering { 0 } else { self.epoch },
                slots_hist: !slots.is_empty(),
                slots,
                rsbs: HashMap::new(),
                dir: HashMap::new(),
                locks: HashMap::new(),
                next_seq: 1,
                held: Vec::new(),
                handover: BTreeMap::new(),
                ghosts: Vec::new(),
                departed: BTreeSet::new(),
                plock: plock::LsPlocks::default(),
            },
        );
        if recovering {
            self.try_phase_a(id);
        }
    }

    /// Leave a lockspace: its local locks are released (persistent ones too) and it is
    /// forgotten here once nothing of it is left on this node. Returns false if unknown.
    pub fn leave(&mut self, ls: u32) -> bool {
        let Some(l) = self.lockspaces.get_mut(&ls) else { return false };
        let owners: BTreeSet<Option<Owner>> = l.locks.values().map(|x| x.owner).collect();
        for lk in l.locks.values_mut() {
            lk.persistent = false;
        }
        for o in owners.into_iter().flatten() {
            self.purge_owner(ls, o);
        }
        let l = self.lockspaces.get_mut(&ls).expect("still there");
        let orphans: Vec<LockId> = l.locks.iter().filter(|(_, x)| x.owner.is_none()).map(|(k, _)| *k).collect();
        for id in orphans {
            let lk = l.locks.get_mut(&id).expect("listed");
            lk.doomed = true;
        }
        self.reap_doomed(ls);
        true
    }

    /// The lockspaces on this node.
    pub fn lockspaces(&self) -> Vec<LockspaceInfo> {
        let mut v: Vec<LockspaceInfo> = self
            .lockspaces
            .values()
            .map(|l| LockspaceInfo {
                name: l.name.clone(),
                id: l.id,
                members: self.members.clone(),
                slots: l.slots.iter().map(|(n, s)| (*n, *s)).collect(),
                epoch: l.epoch,
                state: match l.state {
                    State::Running => "running",
                    State::Paused => "paused",
                    State::Recovering(_) => "recovering",
                },
                lvblen: l.lvblen,
                local_locks: l.locks.len(),
                mastered: l.rsbs.values().filter(|r| r.res.is_some()).count(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The id of the lockspace named `name`, if joined.
    pub fn lockspace_by_name(&self, name: &[u8]) -> Option<u32> {
        let id = lockspace_id(name);
        self.lockspaces.contains_key(&id).then_some(id)
    }

    /// The resources this node masters in `ls`, sorted by name.
    pub fn lockdump(&self, ls: u32) -> Option<Vec<ResourceDump>> {
        let l = self.lockspaces.get(&ls)?;
        let mut v: Vec<ResourceDump> = l
            .rsbs
            .iter()
            .filter_map(|(name, r)| {
                let res = r.res.as_ref()?;
                let (_, lvbseq, valnotvalid) = res.lvb();
                let locks = res
                    .queues()
                    .into_iter()
                    .flat_map(|(q, ls)| {
                        ls.iter().map(move |k| LockDump { lkid: k.id, queue: q, grmode: k.grmode, rqmode: k.rqmode })
                    })
                    .collect();
                Some(ResourceDump { name: name.clone(), master: self.me, lvbseq, valnotvalid, locks })
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Some(v)
    }

    /// Slot of `node` in `ls` (1-based), stable while it stays a member.
    pub fn slot(&self, ls: u32, node: NodeId) -> Option<u16> {
        self.lockspaces.get(&ls)?.slots.get(&node).copied()
    }

    /// Whether `ls` is running (not recovering, quorate).
    pub fn is_running(&self, ls: u32) -> bool {
        self.lockspaces.get(&ls).is_some_and(|l| matches!(l.state, State::Running))
    }

    /// Granted mode of a local lock, as this node knows it.
    pub fn granted_mode(&self, ls: u32, lkid: LockId) -> Option<Mode> {
        self.lockspaces.get(&ls)?.locks.get(&lkid)?.grmode
    }

    /// Value block the local lock last read or wrote.
    pub fn lock_lvb(&self, ls: u32, lkid: LockId) -> Option<&[u8]> {
        Some(&self.lockspaces.get(&ls)?.locks.get(&lkid)?.lvb)
    }

    /// Request a new lock on `name` in `mode` for `owner`. The completion comes as an
    /// [`Ast::Completion`] (possibly in the output of this very call).
    pub fn lock(
        &mut self,
        ls: u32,
        owner: Owner,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        lvb: Option<&[u8]>,
    ) -> Result<LockId, DlmError> {
        let me = self.me;
        let l = self.lockspaces.get_mut(&ls).ok_or(DlmError::NoLockspace { ls })?;
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(DlmError::BadName);
        }
        let bad = Flags::CONVERT | Flags::CANCEL | Flags::QUECVT | Flags::CONVDEADLK;
        if !Flags::KNOWN.contains(flags)
            || flags.0 & bad.0 != 0
            || (flags.contains(Flags::EXPEDITE) && mode != Mode::Nl)
            || flags.contains(Flags::ALTPR | Flags::ALTCW)
        {
            return Err(DlmError::BadFlags { flags: flags.0, call: "lock" });
        }
        check_lvb(l.lvblen, lvb)?;
        let lkid = ((me as u64) << 32) | l.next_seq as u64;
        l.next_seq = l.next_seq.wrapping_add(1).max(1);
        if flags.contains(Flags::ORPHAN) {
            // Adopt an orphan of this node: same name, granted in exactly `mode`.
            let mut found = None;
            let mut other_mode = false;
            for (id, lk) in &l.locks {
                if lk.owner.is_none() && !lk.doomed && lk.name == name && lk.pending.is_none() {
                    if lk.grmode == Some(mode) {
                        found = Some(*id);
                        break;
                    }
                    other_mode = true;
                }
            }
            let (id, status, lvb) = match found {
                Some(id) => {
                    let lk = l.locks.get_mut(&id).expect("found");
                    lk.owner = Some(owner);
                    lk.persistent = flags.contains(Flags::PERSISTENT) || lk.persistent;
                    let v = flags.contains(Flags::VALBLK).then(|| lk.lvb.clone());
                    (id, Status::Granted, v)
                }
                None => (lkid, if other_mode { Status::WouldBlock } else { Status::NotFound }, None),
            };
            let mode = (status == Status::Granted).then_some(mode);
            self.out.push(Output::Ast(Ast::Completion {
                ls,
                lkid: id,
                owner,
                status,
                mode,
                sbflags: SbFlags::default(),
                lvb,
            }));
            return Ok(id);
        }
        l.locks.insert(
            lkid,
            LocalLock {
                name: name.to_vec(),
                owner: Some(owner),
                doomed: false,
                persistent: flags.contains(Flags::PERSISTENT),
                grmode: None,
                gr_flags: flags,
                pending: Some(Pending::Request { mode, flags }),
                issued: false,
                cancel: Cancel::None,
                lvb: lvb.map(<[u8]>::to_vec).unwrap_or_default(),
                lvbseq: 0,
                lvb_invalid: false,
            },
        );
        self.issue(ls, OpKind::Op, lkid);
        Ok(lkid)
    }

    fn owned(&mut self, ls: u32, owner: Owner, lkid: LockId) -> Result<&mut Lockspace, DlmError> {
        let l = self.lockspaces.get_mut(&ls).ok_or(DlmError::NoLockspace { ls })?;
        match l.locks.get(&lkid) {
            Some(lk) if lk.owner == Some(owner) && !lk.doomed => Ok(l),
            _ => Err(DlmError::NoSuchLock { lkid }),
        }
    }

    /// Convert the granted lock `lkid` to `mode`. With VALBLK, `lvb` is written on a
    /// down-conversion from PW/EX (the lock's last value block if `None`).
    pub fn convert(
        &mut self,
        ls: u32,
        owner: Owner,
        lkid: LockId,
        mode: Mode,
        flags: Flags,
        lvb: Option<&[u8]>,
    ) -> Result<(), DlmError> {
        let l = self.owned(ls, owner, lkid)?;
        check_lvb(l.lvblen, lvb)?;
        let lk = l.locks.get_mut(&lkid).expect("checked");
        let Some(gr) = lk.grmode else { return Err(DlmError::Busy { lkid }) };
        if lk.pending.is_some() {
            return Err(DlmError::Busy { lkid });
        }
        let bad = Flags::CANCEL | Flags::EXPEDITE | Flags::ORPHAN;
        if !Flags::KNOWN.contains(flags)
            || flags.0 & bad.0 != 0
            || flags.contains(Flags::ALTPR | Flags::ALTCW)
            || (flags.contains(Flags::QUECVT) && !Mode::quecvt_ok(gr, mode))
        {
            return Err(DlmError::BadFlags { flags: flags.0, call: "convert" });
        }
        let flags = flags | Flags::CONVERT;
        if let Some(v) = lvb {
            lk.lvb = v.to_vec();
        }
        lk.pending = Some(Pending::Convert { mode, flags });
        lk.issued = false;
        self.issue(ls, OpKind::Op, lkid);
        Ok(())
    }

    /// Release the granted lock `lkid`. With VALBLK and the lock in PW/EX, `lvb` (or the
    /// lock's last value block) is written; IVVALBLK invalidates the value block instead.
    pub fn unlock(
        &mut self,
        ls: u32,
        owner: Owner,
        lkid: LockId,
        flags: Flags,
        lvb: Option<&[u8]>,
    ) -> Result<(), DlmError> {
        let l = self.owned(ls, owner, lkid)?;
        check_lvb(l.lvblen, lvb)?;
        if flags.0 & !(Flags::VALBLK | Flags::IVVALBLK).0 != 0 {
            return Err(DlmError::BadFlags { flags: flags.0, call: "unlock" });
        }
        let lk = l.locks.get_mut(&lkid).expect("checked");
        if lk.grmode.is_none() || lk.pending.is_some() {
            return Err(DlmError::Busy { lkid });
        }
        if let Some(v) = lvb {
            lk.lvb = v.to_vec();
        }
        lk.pending = Some(Pending::Unlock { flags });
        lk.issued = false;
        self.issue(ls, OpKind::Op, lkid);
        Ok(())
    }

    /// Cancel the queued request or conversion of `lkid`. Returns false when there is
    /// nothing to cancel. If the cancel wins, the request completes with
    /// [`Status::Canceled`]; otherwise it completes normally.
    pub fn cancel(&mut self, ls: u32, owner: Owner, lkid: LockId) -> Result<bool, DlmError> {
        let l = self.owned(ls, owner, lkid)?;
        let lk = l.locks.get_mut(&lkid).expect("checked");
        match lk.pending {
            Some(Pending::Request { .. } | Pending::Convert { .. }) if lk.cancel == Cancel::None => {}
            _ => return Ok(false),
        }
        lk.cancel = Cancel::Held;
        self.issue(ls, OpKind::Cancel, lkid);
        Ok(true)
    }

    /// The client `owner` went away: its persistent granted locks become orphans (adoptable
    /// with ORPHAN), everything else is cancelled and released.
    pub fn purge_owner(&mut self, ls: u32, owner: Owner) {
        let Some(l) = self.lockspaces.get_mut(&ls) else { return };
        for lk in l.locks.values_mut().filter(|lk| lk.owner == Some(owner)) {
            lk.owner = None;
            if !(lk.persistent && lk.grmode.is_some() && lk.pending.is_none()) {
                lk.doomed = true;
            }
        }
        self.reap_doomed(ls);
        self.plock_drop_client(ls, owner);
    }

    /// Issue what doomed locks need next: a cancel while queued, an unlock once granted. A
    /// lock held in PW or EX by a client that went away is released with IVVALBLK: whatever
    /// it protected may be half-changed, exactly as when its node dies.
    fn reap_doomed(&mut self, ls: u32) {
        let Some(l) = self.lockspaces.get_mut(&ls) else { return };
        let mut todo = Vec::new();
        let mut gone = Vec::new();
        for (id, lk) in &mut l.locks {
            if !lk.doomed {
                continue;
            }
            match lk.pending {
                None if lk.grmode.is_some() => {
                    let flags = if lk.grmode >= Some(Mode::Pw) { Flags::IVVALBLK } else { Flags::empty() };
                    lk.pending = Some(Pending::Unlock { flags });
                    lk.issued = false;
                    todo.push((OpKind::Op, *id));
                }
                None => gone.push(*id),
                Some(Pending::Request { .. } | Pending::Convert { .. }) if lk.cancel == Cancel::None => {
                    lk.cancel = Cancel::Held;
                    todo.push((OpKind::Cancel, *id));
                }
                Some(_) => {}
            }
        }
        for id in gone {
            l.locks.remove(&id);
        }
        todo.sort_unstable_by_key(|t| t.1);
        for (k, id) in todo {
            self.issue(ls, k, id);
        }
    }

    fn issue(&mut self, ls: u32, kind: OpKind, lkid: LockId) {
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        if !matches!(l.state, State::Running) {
            l.held.push(Held::Local(kind, lkid));
            return;
        }
        self.dispatch(ls, kind, lkid);
    }

    /// Route an operation to the resource's master, looking the master up if needed.
    fn dispatch(&mut self, ls: u32, kind: OpKind, lkid: LockId) {
        let me = self.me;
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        let Some(lk) = l.locks.get_mut(&lkid) else { return };
        match kind {
            OpKind::Op => lk.issued = true,
            OpKind::Cancel => lk.cancel = Cancel::Issued,
        }
        let name = lk.name.clone();
        let rsb = l.rsbs.entry(name.clone()).or_default();
        match rsb.master {
            Some(m) => {
                let msg = op_message(l, kind, lkid);
                if m == me {
                    self.master_receive(ls, me, msg);
                } else {
                    self.out.push(Output::Send { to: m, msg });
                }
            }
            None => {
                rsb.waiting.push((kind, lkid));
                if !rsb.lookup_sent {
                    rsb.lookup_sent = true;
                    let d = dir_node(&name, &self.members);
                    if d == me {
                        let master = *l.dir.entry(name.clone()).or_insert(me);
                        self.set_master(ls, &name, master);
                    } else {
                        let epoch = l.epoch;
                        self.out.push(Output::Send { to: d, msg: Message::Lookup { ls, epoch, name } });
                    }
                }
            }
        }
    }

    fn set_master(&mut self, ls: u32, name: &[u8], master: NodeId) {
        let me = self.me;
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        let lvblen = l.lvblen;
        let Some(rsb) = l.rsbs.get_mut(name) else { return };
        rsb.master = Some(master);
        rsb.lookup_sent = false;
        if master == me && rsb.res.is_none() {
            rsb.res = Some(Resource::new(lvblen));
        }
        let waiting = std::mem::take(&mut rsb.waiting);
        for (k, id) in waiting {
            self.dispatch(ls, k, id);
        }
    }

    /// A membership event from the cluster layer.
    pub fn membership(&mut self, ev: MemberEvent) {
        match ev {
            MemberEvent::Members { epoch, mut members, failed } => {
                if epoch <= self.epoch {
                    debug!(epoch, current = self.epoch, "stale membership event ignored");
                    return;
                }
                members.sort_unstable();
                members.dedup();
                for f in failed {
                    if !members.contains(&f) && !self.fenced.contains(&f) {
                        self.need_fence.insert(f);
                    }
                }
                self.fenced.retain(|n| !members.contains(n));
                self.need_fence.retain(|n| !members.contains(n));
                self.epoch = epoch;
                self.history.push((epoch, members.clone()));
                if self.history.len() > 64 {
                    self.history.remove(0);
                }
                let old = std::mem::replace(&mut self.members, members);
                let mut ids: Vec<u32> = self.lockspaces.keys().copied().collect();
                ids.sort_unstable();
                for id in &ids {
                    let l = self.lockspaces.get_mut(id).expect("listed");
                    // A node that left and is back already (a new incarnation) still lost
                    // the locks of its old one.
                    l.departed.extend(old.iter().filter(|n| !self.members.contains(n)));
                    l.epoch = epoch;
                    let prev = std::mem::replace(&mut l.state, State::Recovering(Box::new(Recovery::new(epoch))));
                    if let State::Recovering(rec) = prev {
                        // An interrupted recovery: keep the value blocks and unconfirmed
                        // writes handed to this node (their senders may have finished and
                        // forgotten them) to hand them on again.
                        l.keep_handed_over(*rec);
                    }
                    // Every member sees the same sequence of member lists, so every member
                    // computes the same slots; a newcomer (whose slots are not the agreed
                    // ones until a recovery completes) adopts the others' during recovery.
                    l.slots = compute_slots(&l.slots, &self.members);
                }
                self.replay_future();
                for id in ids {
                    self.try_phase_a(id);
                }
            }
            MemberEvent::Fenced { node } => {
                self.need_fence.remove(&node);
                if !self.members.contains(&node) {
                    self.fenced.insert(node);
                }
                let mut ids: Vec<u32> = self.lockspaces.keys().copied().collect();
                ids.sort_unstable();
                for id in ids {
                    self.try_phase_a(id);
                }
            }
            MemberEvent::Quorum { quorate } => {
                self.quorate = quorate;
                let mut ids: Vec<u32> = self.lockspaces.keys().copied().collect();
                ids.sort_unstable();
                for id in ids {
                    let l = self.lockspaces.get_mut(&id).expect("listed");
                    match (&l.state, quorate) {
                        (State::Running, false) => l.state = State::Paused,
                        (State::Paused, true) => self.resume(id),
                        (State::Recovering(_), true) => self.try_phase_a(id),
                        _ => {}
                    }
                }
            }
        }
    }

    fn replay_future(&mut self) {
        let epoch = self.epoch;
        let (now, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.future).into_iter().partition(|(_, m)| msg_head(m).is_some_and(|h| h.1 <= epoch));
        self.future = later;
        for (from, m) in now {
            self.receive(from, m);
        }
    }

    /// A message from node `from`.
    pub fn receive(&mut self, from: NodeId, msg: Message) {
        let Some((ls, epoch, kind)) = msg_head(&msg) else { return };
        if epoch > self.epoch {
            self.future.push((from, msg));
            return;
        }
        if !self.members.contains(&from) {
            debug!(from, "message from a non-member dropped");
            return;
        }
        if !self.lockspaces.contains_key(&ls) {
            match kind {
                Kind::Recovery if epoch == self.epoch => {
                    // A lockspace this node never joined, being recovered by the others:
                    // take part with nothing to contribute.
                    let name = format!("ls-{ls:08x}").into_bytes();
                    self.create_ls(ls, name, DEFAULT_LVB_LEN, true);
                }
                Kind::Op if epoch == self.epoch => {
                    // A peer uses a lockspace this node has not joined yet: host it (a
                    // lockspace spans every member; joining it here later names it).
                    let name = format!("ls-{ls:08x}").into_bytes();
                    self.create_ls(ls, name, DEFAULT_LVB_LEN, false);
                }
                Kind::Op => {
                    self.reply_invalid(from, ls, epoch, &msg);
                    return;
                }
                _ => return,
            }
        }
        let l = self.lockspaces.get_mut(&ls).expect("exists");
        if let Message::RecoverDone { slots, epoch, agreed: true, .. } = &msg {
            // A newcomer learns the agreed slots from any member that has them, even from
            // an interrupted recovery: replay the member lists seen since onto them.
            if !l.slots_hist {
                if let Some(m) = self.history.iter().position(|(e, _)| e == epoch) {
                    let mut map: BTreeMap<NodeId, u16> = slots.iter().copied().collect();
                    for (_, members) in &self.history[m + 1..] {
                        map = compute_slots(&map, members);
                    }
                    l.slots = map;
                    l.slots_hist = true;
                }
            }
        }
        let mut l = l;
        if kind == Kind::Recovery && epoch == l.epoch && !matches!(l.state, State::Recovering(_)) {
            // A member recovers at this node's epoch, which this node is not doing (it never
            // sends recovery messages after completing one): the member is a new incarnation
            // (its daemon restarted under the same membership and joined before knowing the
            // members), or this node created the lockspace after its member list while the
            // others recover it. Either way take part (again): the recovery rebuilds every
            // resource from the locks their owners hold now.
            debug!(from, ls, epoch, "a member recovers at this epoch; recovering too");
            l.state = State::Recovering(Box::new(Recovery::new(epoch)));
            self.try_phase_a(ls);
            l = self.lockspaces.get_mut(&ls).expect("exists");
        }
        match kind {
            Kind::Recovery => {
                let State::Recovering(rec) = &mut l.state else {
                    debug!(from, "recovery message while not recovering dropped");
                    return;
                };
                if epoch != rec.epoch {
                    return;
                }
                match msg {
                    Message::RecoverLocks { name, master, locks, .. } => {
                        let locks = locks.into_iter().filter(|c| lock_node(c.lkid) == from).collect();
                        rec.copies.entry(name).or_default().push((from, master, locks));
                    }
                    Message::PlockRecover { name, locks, .. } => {
                        plock::add_copies(&mut rec.plocks, &name, from, &locks)
                    }
                    Message::RecoverDone { slots, agreed, .. } => {
                        rec.done_from.insert(from);
                        rec.prev_slots.insert(from, (agreed, slots));
                        self.try_phase_b(ls);
                    }
                    _ => {}
                }
            }
            Kind::Reply => {
                let accept = match msg {
                    Message::LookupReply { .. } => {
                        if epoch == l.epoch && matches!(l.state, State::Paused) {
                            l.held.push(Held::Msg(from, msg));
                            return;
                        }
                        epoch == l.epoch && matches!(l.state, State::Running)
                    }
                    _ => epoch >= l.snap_epoch,
                };
                if !accept {
                    debug!(from, epoch, "stale reply dropped");
                    return;
                }
                match msg {
                    Message::LookupReply { name, master, .. } if self.members.contains(&master) => {
                        self.set_master(ls, &name, master);
                    }
                    Message::Cast { lkid, status, mode, sbflags, lvbseq, lvb, .. } if lock_node(lkid) == self.me => {
                        self.local_cast(ls, lkid, status, mode, sbflags, lvb, lvbseq);
                    }
                    Message::Bast { lkid, mode, .. } => self.local_bast(ls, lkid, mode),
                    Message::PlockReply { client, reqid, status, conflict, .. } => {
                        self.plock_reply(ls, epoch, client, reqid, status, conflict)
                    }
                    _ => {}
                }
            }
            Kind::Op => {
                if epoch < l.epoch {
                    debug!(from, epoch, "operation from before recovery dropped");
                    return;
                }
                if !matches!(l.state, State::Running) {
                    l.held.push(Held::Msg(from, msg));
                    return;
                }
                if let Message::Lookup { name, .. } = msg {
                    if dir_node(&name, &self.members) != self.me {
                        warn!(from, "lookup sent to the wrong directory node");
                        return;
                    }
                    let master = *l.dir.entry(name.clone()).or_insert(from);
                    let epoch = l.epoch;
                    if master == self.me {
                        l.rsbs.entry(name.clone()).or_default();
                        self.set_master(ls, &name, master);
                    }
                    self.out.push(Output::Send { to: from, msg: Message::LookupReply { ls, epoch, name, master } });
                } else if let Message::PlockOp { .. } = msg {
                    self.plock_master(ls, from, msg);
                } else {
                    self.master_receive(ls, from, msg);
                }
            }
        }
    }

    fn reply_invalid(&mut self, from: NodeId, ls: u32, epoch: u64, msg: &Message) {
        let lkid = match msg {
            Message::Request { lkid, .. }
            | Message::Convert { lkid, .. }
            | Message::Unlock { lkid, .. }
            | Message::Cancel { lkid, .. } => *lkid,
            _ => return,
        };
        self.out.push(Output::Send {
            to: from,
            msg: Message::Cast {
                ls,
                epoch,
                lkid,
                status: Status::Invalid,
                mode: None,
                sbflags: SbFlags::default(),
                lvbseq: 0,
                lvb: None,
            },
        });
    }

    /// An operation arriving at the master (from a peer or from this node).
    fn master_receive(&mut self, ls: u32, from: NodeId, msg: Message) {
        let me = self.me;
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        let lvblen = l.lvblen;
        let epoch = l.epoch;
        let lkid = match &msg {
            Message::Request { lkid, .. }
            | Message::Convert { lkid, .. }
            | Message::Unlock { lkid, .. }
            | Message::Cancel { lkid, .. } => *lkid,
            _ => return,
        };
        let name = match &msg {
            Message::Request { name, .. }
            | Message::Convert { name, .. }
            | Message::Unlock { name, .. }
            | Message::Cancel { name, .. } => name,
            _ => return,
        };
        if lock_node(lkid) != from || name.is_empty() {
            warn!(from, lkid, "lock id not owned by its sender refused");
            self.reply_invalid(from, ls, epoch, &msg);
            return;
        }
        let rsb = l.rsbs.entry(name.clone()).or_default();
        if rsb.master != Some(me) || rsb.res.is_none() {
            // The directory made this node master before its own lookup reply arrived:
            // become master now, and run this node's operations waiting for that reply.
            let name = name.clone();
            self.set_master(ls, &name, me);
            self.master_receive(ls, from, msg);
            return;
        }
        let res = rsb.res.as_mut().expect("master has the resource");
        let mut eff = std::mem::take(&mut self.effects);
        let ok = match &msg {
            Message::Request { lkid, mode, flags, lvb, .. } => {
                if res.find(*lkid).is_some() || !lvb_fits(lvb, lvblen) {
                    false
                } else {
                    res.request(Lkb::new(*lkid, *mode, *flags, lvb_opt(lvb)), &mut eff);
                    true
                }
            }
            Message::Convert { lkid, mode, flags, lvb, .. } => {
                lvb_fits(lvb, lvblen) && res.convert(*lkid, *mode, *flags, lvb_opt(lvb), &mut eff).is_ok()
            }
            Message::Unlock { lkid, flags, lvb, .. } => {
                lvb_fits(lvb, lvblen) && res.unlock(*lkid, *flags, lvb_opt(lvb), &mut eff).is_ok()
            }
            Message::Cancel { lkid, .. } => res.cancel(*lkid, &mut eff).is_ok(),
            _ => true,
        };
        if !ok {
            warn!(from, lkid, "invalid lock operation refused");
            if from == me {
                self.local_cast(ls, lkid, Status::Invalid, None, SbFlags::default(), None, 0);
            } else {
                self.reply_invalid(from, ls, epoch, &msg);
            }
        }
        self.route_effects(ls, &mut eff);
        self.effects = eff;
    }

    fn route_effects(&mut self, ls: u32, eff: &mut Vec<Effect>) {
        let me = self.me;
        let epoch = self.lockspaces.get(&ls).map_or(0, |l| l.epoch);
        for e in eff.drain(..) {
            match e {
                Effect::Cast { id, status, mode, sbflags, lvb, lvbseq } => {
                    if lock_node(id) == me {
                        self.local_cast(ls, id, status, mode, sbflags, lvb, lvbseq);
                    } else {
                        self.out.push(Output::Send {
                            to: lock_node(id),
                            msg: Message::Cast { ls, epoch, lkid: id, status, mode, sbflags, lvbseq, lvb },
                        });
                    }
                }
                Effect::Bast { id, mode } => {
                    if lock_node(id) == me {
                        self.local_bast(ls, id, mode);
                    } else {
                        self.out
                            .push(Output::Send { to: lock_node(id), msg: Message::Bast { ls, epoch, lkid: id, mode } });
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn local_cast(
        &mut self,
        ls: u32,
        lkid: LockId,
        status: Status,
        mode: Option<Mode>,
        sbflags: SbFlags,
        lvb: Option<Vec<u8>>,
        lvbseq: u32,
    ) {
        let Some(l) = self.lockspaces.get_mut(&ls) else { return };
        let Some(lk) = l.locks.get_mut(&lkid) else {
            debug!(lkid, "completion for an unknown lock dropped");
            return;
        };
        if lk.pending.is_none() || !lk.issued {
            debug!(lkid, "completion without an operation in flight dropped");
            return;
        }
        let pending = lk.pending.take().expect("checked");
        lk.issued = false;
        lk.cancel = Cancel::None;
        let mut remove = false;
        match status {
            Status::Granted => {
                if let Pending::Convert { flags, .. } = pending {
                    // A down-conversion from PW/EX wrote the lock's value block.
                    if lk.grmode >= Some(Mode::Pw) && lvb.is_none() && flags.contains(Flags::VALBLK) {
                        lk.lvb_invalid = flags.contains(Flags::IVVALBLK);
                    }
                }
                lk.grmode = mode;
                if let Pending::Request { flags, .. } | Pending::Convert { flags, .. } = pending {
                    lk.gr_flags = flags;
                }
                if let Some(v) = &lvb {
                    lk.lvb.clone_from(v);
                    lk.lvb_invalid = sbflags.contains(SbFlags::VALNOTVALID);
                }
                lk.lvbseq = lvbseq;
            }
            Status::Unlocked => remove = true,
            Status::Invalid | Status::NotFound => remove = lk.grmode.is_none(),
            _ => {
                lk.grmode = mode;
                remove = mode.is_none();
            }
        }
        let owner = lk.owner;
        let doomed = lk.doomed;
        if remove {
            l.locks.remove(&lkid);
        }
        if let Some(owner) = owner {
            self.out.push(Output::Ast(Ast::Completion { ls, lkid, owner, status, mode, sbflags, lvb }));
        }
        if doomed {
            self.reap_doomed(ls);
        }
    }

    fn local_bast(&mut self, ls: u32, lkid: LockId, mode: Mode) {
        let Some(l) = self.lockspaces.get(&ls) else { return };
        if let Some(LocalLock { owner: Some(owner), grmode: Some(_), .. }) = l.locks.get(&lkid) {
            self.out.push(Output::Ast(Ast::Blocking { ls, lkid, owner: *owner, mode }));
        }
    }

    fn resume(&mut self, ls: u32) {
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        l.state = if self.quorate { State::Running } else { State::Paused };
        if !matches!(l.state, State::Running) {
            return;
        }
        let held = std::mem::take(&mut l.held);
        for h in held {
            match h {
                Held::Local(k, id) => {
                    let l = self.lockspaces.get_mut(&ls).expect("exists");
                    if !matches!(l.state, State::Running) {
                        l.held.push(Held::Local(k, id));
                        continue;
                    }
                    let valid = l.locks.get(&id).is_some_and(|lk| match k {
                        OpKind::Op => lk.pending.is_some() && !lk.issued,
                        OpKind::Cancel => lk.cancel == Cancel::Held && lk.pending.is_some(),
                    });
                    if valid {
                        self.dispatch(ls, k, id);
                    }
                }
                Held::Msg(from, m) => self.receive(from, m),
            }
        }
        // Recovery may have settled the operations of locks whose owner went away.
        self.reap_doomed(ls);
        self.plock_resume(ls);
    }

    fn try_phase_a(&mut self, ls: u32) {
        let me = self.me;
        if !self.quorate || !self.need_fence.is_empty() || self.members.is_empty() {
            return;
        }
        let members = self.members.clone();
        let Some(l) = self.lockspaces.get_mut(&ls) else { return };
        let State::Recovering(rec) = &l.state else { return };
        if rec.phase_a_done || rec.epoch != self.epoch {
            return;
        }
        let epoch = rec.epoch;
        // 1. As old master: drop the locks of nodes that are gone; keep the value blocks.
        //    They are kept until a recovery completes, in case this one is interrupted. One
        //    kept from an earlier, interrupted recovery may have been outdated by a later
        //    master that is gone now: it goes out flagged not valid.
        for m in l.handover.values_mut() {
            m.valnotvalid = true;
        }
        for (name, rsb) in &mut l.rsbs {
            if let Some(res) = &mut rsb.res {
                let departed = &l.departed;
                res.purge(|id| !members.contains(&lock_node(id)) || departed.contains(&lock_node(id)));
                let (v, seq, inval) = res.lvb();
                l.handover.insert(name.clone(), MasterLvb { lvb: v.to_vec(), seq, valnotvalid: inval });
            }
        }
        let mut master_lvb = l.handover.clone();
        // 2. Settle this node's operations in flight and copy its locks.
        let mut copies: BTreeMap<Vec<u8>, Vec<LockCopy>> = BTreeMap::new();
        let mut ids: Vec<LockId> = l.locks.keys().copied().collect();
        ids.sort_unstable();
        let mut asts = Vec::new();
        for id in ids {
            let lk = l.locks.get_mut(&id).expect("listed");
            let issued = lk.issued;
            let cancel = lk.cancel == Cancel::Issued;
            let mut copy = LockCopy {
                lkid: id,
                grmode: lk.grmode,
                rqmode: None,
                flags: lk.gr_flags,
                lvbseq: lk.lvbseq,
                lvb: lk.lvb.clone(),
                unconfirmed_write: false,
                cancel: false,
                lvb_invalid: lk.lvb_invalid,
            };
            match (lk.pending, issued) {
                (Some(Pending::Request { .. }), false) => continue,
                (Some(_), false) | (None, _) => {}
                (Some(Pending::Unlock { flags }), true) => {
                    let gr = lk.grmode.expect("unlock of a granted lock");
                    let wrote = gr >= Mode::Pw && flags.0 & (Flags::VALBLK | Flags::IVVALBLK).0 != 0;
                    asts.push((id, lk.owner, Status::Unlocked, None));
                    let name = lk.name.clone();
                    l.locks.remove(&id);
                    if wrote {
                        copy.grmode = None;
                        copy.flags = flags;
                        copy.unconfirmed_write = true;
                        l.ghosts.push((name, copy));
                    }
                    continue;
                }
                (Some(Pending::Convert { mode, flags }), true) => {
                    let gr = lk.grmode.expect("conversion of a granted lock");
                    lk.issued = false;
                    if is_down(gr, mode) {
                        if gr >= Mode::Pw && flags.0 & (Flags::VALBLK | Flags::IVVALBLK).0 != 0 {
                            let ghost = LockCopy { grmode: None, flags, unconfirmed_write: true, ..copy.clone() };
                            l.ghosts.push((lk.name.clone(), ghost));
                            // A later write by this lock goes on top of this one.
                            lk.lvbseq = lk.lvbseq.wrapping_add(1);
                            copy.lvbseq = lk.lvbseq;
                            // The lock now holds what it wrote.
                            copy.lvb_invalid = flags.contains(Flags::IVVALBLK);
                            lk.lvb_invalid = copy.lvb_invalid;
                        }
                        copy.grmode = Some(mode);
                        copy.flags = flags;
                        lk.grmode = Some(mode);
                        lk.gr_flags = flags;
                        lk.pending = None;
                        lk.cancel = Cancel::None;
                        asts.push((id, lk.owner, Status::Granted, Some(mode)));
                    } else {
                        let hold = if flags.contains(Flags::CONVDEADLK) {
                            Mode::Nl
                        } else if is_up(gr, mode) {
                            gr
                        } else {
                            Mode::Cr
                        };
                        lk.grmode = Some(hold);
                        lk.issued = true;
                        copy.grmode = Some(hold);
                        copy.rqmode = Some(mode);
                        copy.flags = flags;
                        copy.cancel = cancel;
                    }
                }
                (Some(Pending::Request { mode, flags }), true) => {
                    copy.rqmode = Some(mode);
                    copy.flags = flags;
                    copy.cancel = cancel;
                }
            }
            copies.entry(lk.name.clone()).or_default().push(copy);
        }
        // 3. Forget masters, directory and lookups; the new master of everything is its
        //    directory node under the new membership.
        l.rsbs.retain(|name, rsb| {
            rsb.res = None;
            rsb.waiting.clear();
            rsb.lookup_sent = false;
            rsb.master = Some(dir_node(name, &members));
            copies.get(name).is_some_and(|c| c.iter().any(|c| c.grmode.is_some() || c.rqmode.is_some()))
        });
        l.dir.clear();
        l.snap_epoch = epoch;
        let State::Recovering(rec) = &mut l.state else { unreachable!("checked above") };
        rec.phase_a_done = true;
        for (name, g) in &l.ghosts {
            copies.entry(name.clone()).or_default().push(g.clone());
        }
        let mut names: BTreeSet<Vec<u8>> = copies.keys().cloned().collect();
        names.extend(master_lvb.keys().cloned());
        let mut sends = Vec::new();
        for name in names {
            let master = master_lvb.remove(&name);
            let locks = copies.remove(&name).unwrap_or_default();
            let to = dir_node(&name, &members);
            if to == me {
                rec.copies.entry(name).or_default().push((me, master, locks));
            } else {
                sends.push((to, Message::RecoverLocks { ls, epoch, name, master, locks }));
            }
        }
        let slots: Vec<(NodeId, u16)> = l.slots.iter().map(|(n, s)| (*n, *s)).collect();
        let agreed = l.slots_hist;
        rec.prev_slots.insert(me, (agreed, slots.clone()));
        rec.done_from.insert(me);
        let mut own = std::mem::take(&mut rec.plocks);
        // Plock copies go out before RecoverDone, so a master has them all with the last one.
        sends.extend(self.plock_phase_a(ls, epoch, &members, &mut own));
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        let State::Recovering(rec) = &mut l.state else { unreachable!("checked above") };
        for (name, t) in own {
            let dst = rec.plocks.entry(name).or_default();
            for p in t.locks() {
                dst.apply(*p);
            }
        }
        for (to, msg) in sends {
            self.out.push(Output::Send { to, msg });
        }
        for &m in &members {
            if m != me {
                self.out.push(Output::Send {
                    to: m,
                    msg: Message::RecoverDone { ls, epoch, agreed, slots: slots.clone() },
                });
            }
        }
        for (id, owner, status, mode) in asts {
            if let Some(owner) = owner {
                self.out.push(Output::Ast(Ast::Completion {
                    ls,
                    lkid: id,
                    owner,
                    status,
                    mode,
                    sbflags: SbFlags::default(),
                    lvb: None,
                }));
            }
        }
        self.try_phase_b(ls);
    }

    fn try_phase_b(&mut self, ls: u32) {
        let me = self.me;
        let members = self.members.clone();
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        let State::Recovering(rec) = &mut l.state else { return };
        if !rec.phase_a_done || !members.iter().all(|m| rec.done_from.contains(m)) {
            return;
        }
        let rec = std::mem::take(&mut **rec);
        // Slots: those the members with history agree on.
        // If no member has them (every node that had them is gone), take the lowest node
        // id's, so that all still agree.
        let pick = rec.prev_slots.values().find(|(agreed, _)| *agreed).or_else(|| rec.prev_slots.values().next());
        if let Some((_, s)) = pick {
            l.slots = s.iter().copied().collect();
        }
        l.slots_hist = true;
        let mut eff = std::mem::take(&mut self.effects);
        let mut all_eff = Vec::new();
        for (name, parts) in rec.copies {
            if dir_node(&name, &members) != me {
                warn!("recovery copy for a resource this node does not master dropped");
                continue;
            }
            let mut locks: Vec<LockCopy> = parts.iter().flat_map(|p| p.2.iter().cloned()).collect();
            locks.sort_by_key(|c| c.lkid);
            let master = parts.iter().filter_map(|p| p.1.as_ref()).max_by_key(|m| (m.seq, m.valnotvalid));
            if master.is_none() && locks.iter().all(|c| c.grmode.is_none() && c.rqmode.is_none()) {
                // Nobody holds a lock and the master is gone: the resource (and its value
                // block) is forgotten, as when its last lock is released.
                continue;
            }
            let mut res = Resource::new(l.lvblen);
            rebuild_lvb(&mut res, master, &locks);
            for c in locks.iter().filter(|c| c.grmode.is_some()) {
                res.insert_granted(Lkb::granted(c.lkid, c.grmode.expect("filtered"), c.flags, c.lvb.clone(), c.lvbseq));
            }
            for c in locks.iter().filter(|c| c.grmode.is_some() && c.rqmode.is_some()) {
                let _ = res.convert(c.lkid, c.rqmode.expect("filtered"), c.flags, None, &mut eff);
            }
            for c in locks.iter().filter(|c| c.grmode.is_none() && c.rqmode.is_some()) {
                let lvb = (!c.lvb.is_empty()).then_some(c.lvb.as_slice());
                res.request(Lkb::new(c.lkid, c.rqmode.expect("filtered"), c.flags, lvb), &mut eff);
            }
            for c in locks.iter().filter(|c| c.cancel) {
                let _ = res.cancel(c.lkid, &mut eff);
            }
            res.grant_pending(&mut eff);
            all_eff.append(&mut eff);
            l.dir.insert(name.clone(), me);
            let rsb = l.rsbs.entry(name).or_default();
            rsb.master = Some(me);
            rsb.res = Some(res);
        }
        l.handover.clear();
        l.ghosts.clear();
        l.departed.clear();
        debug!(ls, epoch = rec.epoch, "recovery done");
        self.plock_phase_b(ls, rec.plocks);
        self.effects = eff;
        self.route_effects(ls, &mut all_eff);
        self.resume(ls);
    }
}

impl Lockspace {
    fn keep_handed_over(&mut self, rec: Recovery) {
        for (name, parts) in rec.copies {
            for (_, master, locks) in parts {
                if let Some(m) = master {
                    match self.handover.get(&name) {
                        Some(old) if old.seq > m.seq || (old.seq == m.seq && old.valnotvalid) => {}
                        _ => {
                            self.handover.insert(name.clone(), m);
                        }
                    }
                }
                for c in locks.into_iter().filter(|c| c.unconfirmed_write) {
                    let dup = self.ghosts.iter().any(|(n, g)| *n == name && g.lkid == c.lkid && g.lvbseq == c.lvbseq);
                    if !dup {
                        self.ghosts.push((name.clone(), c));
                    }
                }
            }
        }
    }
}

impl Default for Recovery {
    fn default() -> Recovery {
        Recovery::new(0)
    }
}

impl Recovery {
    fn new(epoch: u64) -> Recovery {
        Recovery {
            epoch,
            phase_a_done: false,
            done_from: BTreeSet::new(),
            copies: BTreeMap::new(),
            plocks: BTreeMap::new(),
            prev_slots: BTreeMap::new(),
        }
    }
}

/// The value block of a rebuilt resource.
///
/// - A surviving lock held above CR has the current value: nobody could write it since that
///   lock was granted (and it saw every write before).
/// - Else the old master's value (plus a write its owner could not confirm), unless a lock
///   copy has seen a newer one than it (a hand-over from an interrupted recovery is stale).
/// - Else the newest copy, flagged not valid: a lost node may have written since.
fn rebuild_lvb(res: &mut Resource, master: Option<&MasterLvb>, locks: &[LockCopy]) {
    let valblk = |c: &&LockCopy| c.flags.contains(Flags::VALBLK) && !c.lvb.is_empty();
    let eff = |c: &LockCopy| c.lvbseq.wrapping_add(c.unconfirmed_write as u32);
    let newest = locks.iter().filter(valblk).map(eff).max();
    if let Some(big) = locks.iter().filter(valblk).find(|c| !c.unconfirmed_write && c.grmode > Some(Mode::Cr)) {
        res.set_lvb(&big.lvb, newest.unwrap_or(0).max(big.lvbseq), big.lvb_invalid);
        return;
    }
    if let Some(m) = master.filter(|m| !locks.iter().filter(valblk).any(|c| c.lvbseq > m.seq)) {
        res.set_lvb(&m.lvb, m.seq, m.valnotvalid);
        // Writes in flight, each on top of the previous one.
        let mut seq = m.seq;
        while let Some(c) = locks.iter().find(|c| c.unconfirmed_write && c.lvbseq == seq) {
            seq = seq.wrapping_add(1);
            if c.flags.contains(Flags::IVVALBLK) {
                res.set_lvb(&c.lvb, seq, true);
            } else {
                res.set_lvb(&c.lvb, seq, false);
            }
        }
        return;
    }
    match locks.iter().filter(valblk).max_by_key(|c| eff(c)) {
        Some(c) => res.set_lvb(&c.lvb, eff(c), true),
        None => {
            if let Some(m) = master {
                res.set_lvb(&m.lvb, m.seq, true);
            }
            res.invalidate_lvb();
        }
    }
}

fn compute_slots(prev: &BTreeMap<NodeId, u16>, members: &[NodeId]) -> BTreeMap<NodeId, u16> {
    let mut slots: BTreeMap<NodeId, u16> =
        prev.iter().filter(|(n, _)| members.contains(n)).map(|(n, s)| (*n, *s)).collect();
    let used: BTreeSet<u16> = slots.values().copied().collect();
    let mut free = (1u16..).filter(|s| !used.contains(s));
    for &m in members {
        slots.entry(m).or_insert_with(|| free.next().expect("slots are plenty"));
    }
    slots
}

fn op_message(l: &Lockspace, kind: OpKind, lkid: LockId) -> Message {
    let lk = &l.locks[&lkid];
    let (ls, epoch, name) = (l.id, l.epoch, lk.name.clone());
    if kind == OpKind::Cancel {
        return Message::Cancel { ls, epoch, name, lkid };
    }
    let lvb_if = |f: Flags| if f.contains(Flags::VALBLK) { lk.lvb.clone() } else { Vec::new() };
    match lk.pending.expect("dispatched operation is pending") {
        Pending::Request { mode, flags } => Message::Request { ls, epoch, name, lkid, mode, flags, lvb: lvb_if(flags) },
        Pending::Convert { mode, flags } => Message::Convert { ls, epoch, name, lkid, mode, flags, lvb: lvb_if(flags) },
        Pending::Unlock { flags } => Message::Unlock { ls, epoch, name, lkid, flags, lvb: lvb_if(flags) },
    }
}

fn check_lvb(want: usize, lvb: Option<&[u8]>) -> Result<(), DlmError> {
    match lvb {
        Some(v) if v.len() != want => Err(DlmError::BadLvb { want, got: v.len() }),
        _ => Ok(()),
    }
}

fn lvb_opt(v: &[u8]) -> Option<&[u8]> {
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

fn lvb_fits(v: &[u8], lvblen: usize) -> bool {
    v.is_empty() || v.len() == lvblen
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Nodes with messages carried by hand, in order.
    struct Net {
        nodes: BTreeMap<NodeId, Node>,
        queue: VecDeque<(NodeId, NodeId, Message)>,
        asts: Vec<(NodeId, Ast)>,
    }

    impl Net {
        fn collect(&mut self, id: NodeId) {
            for o in self.nodes.get_mut(&id).expect("node").take_output() {
                match o {
                    Output::Send { to, msg } => self.queue.push_back((id, to, msg)),
                    Output::Ast(a) => self.asts.push((id, a)),
                }
            }
        }

        fn event(&mut self, id: NodeId, ev: MemberEvent) {
            self.nodes.get_mut(&id).expect("node").membership(ev);
            self.collect(id);
        }

        fn run(&mut self) {
            while let Some((from, to, msg)) = self.queue.pop_front() {
                if let Some(n) = self.nodes.get_mut(&to) {
                    n.receive(from, msg);
                    self.collect(to);
                }
            }
        }

        fn state(&self, id: NodeId) -> &'static str {
            self.nodes[&id].lockspaces()[0].state
        }

        /// Takes EX on `name` from node `id`, runs the net, and says whether it was granted.
        fn ex(&mut self, id: NodeId, name: &[u8]) -> Option<LockId> {
            let ls = lockspace_id(b"test");
            let lkid = self.nodes.get_mut(&id).expect("node").lock(ls, 1, name, Mode::Ex, Flags(0), None).ok()?;
            self.collect(id);
            self.run();
            let granted = self.asts.iter().any(|(n, a)| {
                *n == id && matches!(a, Ast::Completion { lkid: l, status: Status::Granted, .. } if *l == lkid)
            });
            granted.then_some(lkid)
        }
    }

    fn members(ids: &[NodeId]) -> MemberEvent {
        MemberEvent::Members { epoch: 5, members: ids.to_vec(), failed: vec![] }
    }

    /// Three nodes running at epoch 5, the lockspace joined after the member list.
    fn running() -> Net {
        let mut net = Net { nodes: BTreeMap::new(), queue: VecDeque::new(), asts: Vec::new() };
        for id in 1..=3 {
            net.nodes.insert(id, Node::new(id));
            net.event(id, members(&[1, 2, 3]));
        }
        for id in 1..=3 {
            net.nodes.get_mut(&id).unwrap().join(b"test", 32).unwrap();
            net.collect(id);
        }
        net.run();
        for id in 1..=3 {
            assert_eq!(net.state(id), "running");
        }
        net
    }

    #[test]
    fn a_lockspace_joined_before_the_member_list_recovers_with_running_peers() {
        let mut net = running();
        // Node 3's daemon restarts: its clients join the lockspace before it learns the
        // members, which are (by ring id) the same list at the same epoch as the others'.
        let mut fresh = Node::new(3);
        fresh.join(b"test", 32).unwrap();
        net.nodes.insert(3, fresh);
        net.collect(3);
        assert_eq!(net.state(3), "recovering");
        net.event(3, members(&[1, 2, 3]));
        net.run();
        for id in 1..=3 {
            assert_eq!(net.state(id), "running", "node {id}");
        }
        // Locking works across the nodes, whoever masters the names.
        for name in [&b"a"[..], b"b", b"c", b"d", b"e", b"f"] {
            let a = net.ex(3, name).expect("granted to node 3");
            let n3 = net.nodes.get_mut(&3).unwrap();
            n3.unlock(lockspace_id(b"test"), 1, a, Flags(0), None).unwrap();
            net.collect(3);
            net.run();
            assert!(net.ex(1, name).is_some(), "granted to node 1 after node 3 unlocked");
        }
        let slots: Vec<_> = (1..=3).map(|id| net.nodes[&id].lockspaces()[0].slots.clone()).collect();
        assert!(slots.windows(2).all(|w| w[0] == w[1]), "{slots:?}");
    }

    #[test]
    fn a_newcomer_joining_after_its_member_list_takes_part_in_the_others_recovery() {
        // Nodes 1 and 2 run the lockspace; node 3 comes up and every node gets [1, 2, 3] at
        // epoch 9; node 3's client joins before the others' recovery messages reach it.
        let mut net = Net { nodes: BTreeMap::new(), queue: VecDeque::new(), asts: Vec::new() };
        for id in 1..=2 {
            net.nodes.insert(id, Node::new(id));
            net.event(id, members(&[1, 2]));
            net.nodes.get_mut(&id).unwrap().join(b"test", 32).unwrap();
            net.collect(id);
        }
        net.run();
        let held = net.ex(1, b"x").expect("granted before node 3 came");
        net.nodes.insert(3, Node::new(3));
        for id in 1..=3 {
            net.event(id, MemberEvent::Members { epoch: 9, members: vec![1, 2, 3], failed: vec![] });
        }
        net.nodes.get_mut(&3).unwrap().join(b"test", 32).unwrap();
        net.collect(3);
        net.run();
        for id in 1..=3 {
            assert_eq!(net.state(id), "running", "node {id}");
        }
        // Node 1's lock survived the recovery: node 3 waits for it, then gets it.
        let ls = lockspace_id(b"test");
        let n3 = net.nodes.get_mut(&3).unwrap();
        let w = n3.lock(ls, 1, b"x", Mode::Ex, Flags(0), None).unwrap();
        net.collect(3);
        net.run();
        let granted = |net: &Net| {
            net.asts.iter().any(|(n, a)| {
                *n == 3 && matches!(a, Ast::Completion { lkid, status: Status::Granted, .. } if *lkid == w)
            })
        };
        assert!(!granted(&net));
        net.nodes.get_mut(&1).unwrap().unlock(ls, 1, held, Flags(0), None).unwrap();
        net.collect(1);
        net.run();
        assert!(granted(&net));
        for name in [&b"a"[..], b"b", b"c", b"d"] {
            assert!(net.ex(3, name).is_some());
        }
    }
}
