//! The node's vocabulary with its driver and tools: membership events in, [`Output`]s
//! (messages to send, callbacks to deliver) out, refusals of client calls ([`DlmError`]),
//! and the snapshots `dlm_tool` prints.

use crate::mode::{Mode, SbFlags, Status};
use crate::plock::PlockConflict;
use crate::resource::{LockId, Queue};
use crate::wire::{Message, NodeId, MAX_LVB, MAX_NAME};

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
    /// The outcome of a [`Node::plock`](super::Node::plock) request.
    Plock {
        /// Lockspace id.
        ls: u32,
        /// The client.
        owner: Owner,
        /// The request id it gave.
        reqid: u64,
        /// 0, [`PLOCK_EAGAIN`](super::PLOCK_EAGAIN), [`PLOCK_EDEADLK`](super::PLOCK_EDEADLK),
        /// [`PLOCK_ECANCELED`](super::PLOCK_ECANCELED) or [`PLOCK_EINVAL`](super::PLOCK_EINVAL).
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
