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
//!
//! # Layout
//! - this file: the [`Node`] and its per-lockspace state, lockspaces (join, leave) and
//!   what `dlm_tool` reads;
//! - `types`: the public types the driver and the tools exchange with the node;
//! - `local`: the locks of this node's clients (the client calls and their completions);
//! - `directory`: directory nodes, masters, and routing an operation to its master;
//! - `message`: messages from peers, and operations at the master;
//! - `recovery`: membership changes, waiting for fencing, remastering, dropping a dead
//!   node's locks and deciding the value blocks;
//! - `plock`: POSIX byte-range locks across the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::mode::{Flags, Mode};
use crate::resource::{Effect, LockId, Resource};
use crate::wire::{LockCopy, MasterLvb, Message, NodeId, MAX_LVB, MAX_NAME};

mod directory;
mod local;
mod message;
mod plock;
mod recovery;
mod types;

pub use directory::{dir_node, lockspace_id};
pub use plock::{PlockDump, PlockOp, PLOCK_EAGAIN, PLOCK_ECANCELED, PLOCK_EDEADLK, PLOCK_EINVAL};
use recovery::{compute_slots, Recovery};
pub use types::{
    Ast, DlmError, LockDump, LockspaceInfo, MemberEvent, Membership, Output, Owner, ResourceDump, StaticMembership,
    DEFAULT_LVB_LEN,
};

/// The operation a local lock has under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Request { mode: Mode, flags: Flags },
    Convert { mode: Mode, flags: Flags },
    Unlock { flags: Flags },
}

/// Where a local lock's cancel is: none, held back, or sent to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    None,
    Held,
    Issued,
}

/// What of a local lock is routed to the master: its operation or its cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Op,
    Cancel,
}

/// A lock of one of this node's clients (or an orphan), as this node knows it.
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

/// This node's view of one resource: its master, the resource itself when this node
/// masters it, and the local operations waiting for a lookup's answer.
#[derive(Debug, Default)]
struct Rsb {
    master: Option<NodeId>,
    res: Option<Resource>,
    lookup_sent: bool,
    waiting: Vec<(OpKind, LockId)>,
}

/// Something held back while the lockspace is not running.
#[derive(Debug)]
enum Held {
    Local(OpKind, LockId),
    Msg(NodeId, Message),
}
/// Whether a lockspace grants: running, paused without quorum, or recovering.
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
}
