//! dlm: the distributed lock manager — lock engine, node-to-node protocol, per-node daemon
//! and client library.
//!
//! - [`Resource`]: the lock step. One resource's grant, convert and wait queues, the six
//!   modes and their compatibility, NOQUEUE, QUECVT, CONVDEADLK, EXPEDITE, ALTPR/ALTCW,
//!   value blocks, completion and blocking callbacks ([`Effect`]). Pure, no I/O.
//! - [`Node`]: one node's lock manager, sans-IO: lockspaces, the directory (a name's
//!   directory node is picked by hashing over the members), mastering (first user becomes
//!   master), local locks with PERSISTENT/ORPHAN, and recovery driven by [`MemberEvent`]s
//!   (members changed, node fenced, quorum). It returns [`Output`]s: [`Message`]s to send,
//!   [`Ast`]s to deliver. [`Node::single`] is the no-cluster mode (`lock_nolock`).
//! - [`encode`]/[`decode`]: the node-to-node wire codec (`docs/wire.md`);
//!   [`encode_request`]/[`decode_request`] and friends: the local client protocol
//!   (`docs/client-protocol.md`).
//! - [`PlockTable`]: POSIX byte-range locks (fcntl) of one resource, pure; [`Node::plock`]
//!   runs them cluster-wide (each name's table on its directory node, rebuilt in recovery)
//!   and [`DlmClient::plock_set`], [`DlmClient::plock_get`] and
//!   [`DlmClient::plock_release_owner`] are the filesystem's entry points.
//! - [`run_daemon`]: `dlm_controld` — the node on a Unix socket for programs and TCP for
//!   peers; [`DlmClient`]: the async client library; [`tool`]: `dlm_tool`.
//!
//! ```
//! use dlm::{Ast, Flags, Mode, Node, Output, Status};
//! let mut node = Node::single();
//! let ls = node.join(b"demo", 32).unwrap();
//! let a = node.lock(ls, 1, b"res", Mode::Ex, Flags::empty(), None).unwrap();
//! let b = node.lock(ls, 2, b"res", Mode::Pr, Flags::NOQUEUE, None).unwrap();
//! let out = node.take_output();
//! assert!(matches!(&out[0], Output::Ast(Ast::Completion { lkid, status: Status::Granted, .. }) if *lkid == a));
//! assert!(matches!(&out[1], Output::Ast(Ast::Completion { lkid, status: Status::WouldBlock, .. }) if *lkid == b));
//! ```
#![forbid(unsafe_code)]

mod client;
pub mod cluster;
mod daemon;
mod mode;
mod node;
mod plock;
mod proto;
mod resource;
#[doc(hidden)]
pub mod sim;
pub mod tool;
mod wire;

pub use client::{ClientError, Completion, DlmClient, Lock};
pub use daemon::{run as run_daemon, DaemonConfig, DaemonError, Ready};
pub use mode::{Flags, Mode, SbFlags, Status, DLM_ECANCEL, DLM_EUNLOCK};
pub use node::{
    dir_node, lockspace_id, Ast, DlmError, LockDump, LockspaceInfo, MemberEvent, Membership, Node, Output, Owner,
    PlockDump, PlockOp, ResourceDump, StaticMembership, DEFAULT_LVB_LEN, PLOCK_EAGAIN, PLOCK_ECANCELED, PLOCK_EDEADLK,
    PLOCK_EINVAL,
};
pub use plock::{
    Plock, PlockArgs, PlockConflict, PlockCopy, PlockKind, PlockOpCode, PlockOwner, PlockReq, PlockTable, PlockWaiter,
    SetOutcome,
};
pub use proto::{
    decode_request, decode_response, encode_request, encode_response, Frame, ProtoError, Request, Response,
    MAX_CLIENT_FRAME,
};
pub use resource::{lock_node, Effect, Lkb, LockId, Queue, Resource, ResourceError};
pub use wire::{
    decode, encode, Decoded, LockCopy, MasterLvb, Message, NodeId, WireError, DLM_MAGIC, DLM_VERSION, HEADER_SIZE,
    MAX_LVB, MAX_NAME, MAX_PAYLOAD,
};
