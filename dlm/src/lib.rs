//! dlm: the distributed lock manager.
#![forbid(unsafe_code)]

mod client;
mod daemon;
mod mode;
mod node;
mod proto;
mod resource;
pub mod tool;
mod wire;

pub use client::{ClientError, Completion, DlmClient, Lock};
pub use daemon::{run as run_daemon, DaemonConfig, DaemonError, Ready};
pub use mode::{Flags, Mode, SbFlags, Status, DLM_ECANCEL, DLM_EUNLOCK};
pub use node::{
    dir_node, lockspace_id, Ast, DlmError, LockDump, LockspaceInfo, MemberEvent, Membership, Node, Output, Owner,
    ResourceDump, StaticMembership, DEFAULT_LVB_LEN,
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
