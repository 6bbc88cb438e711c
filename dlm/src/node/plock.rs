//! POSIX byte-range locks ("plocks") across the cluster: the node side.
//!
//! # Placement
//! The plock master of a resource name is its directory node,
//! `members[hash(name) % members.len()]`, fixed for an epoch with no lookup round trip.
//! Plocks are a namespace of their own: a plock resource and a DLM lock resource with the
//! same name do not interact. The master keeps one [`PlockTable`] per name; a request from
//! a node's client costs one round trip ([`Message::PlockOp`], [`Message::PlockReply`]),
//! none when this node is the master.
//!
//! # What each node keeps
//! - `tables`: the tables of the names it masters.
//! - `mine`: the locks its own clients hold, as the master's replies reported them (the
//!   master applies an owner's operations in the order they arrive, and replies in that
//!   order, so applying the granted ones here in reply order gives the same result).
//! - `pending`: its clients' requests without a reply yet (a waiting F_SETLKW among them).
//!
//! # Recovery
//! Every membership change rebuilds every table: in phase A each node sends what its
//! clients hold (`mine`) to each name's master under the new members
//! ([`Message::PlockRecover`], before its RecoverDone, so a master has every copy once it
//! has every RecoverDone); in phase B the masters build their tables from those copies (the
//! failed nodes' locks are simply absent); on resume each node sends its pending requests
//! again. Replies to requests sent at an earlier epoch are dropped (the request is sent
//! again), so a request is answered exactly once.

use std::collections::{BTreeMap, HashMap};

use tracing::{debug, warn};

use super::{dir_node, Ast, DlmError, Node, Output, Owner, State};
use crate::mode::DLM_ECANCEL;
use crate::plock::{
    Plock, PlockArgs, PlockConflict, PlockCopy, PlockKind, PlockOpCode, PlockOwner, PlockReq, PlockTable, SetOutcome,
};
use crate::wire::{Message, NodeId, MAX_NAME};

/// Status of a request that conflicts and does not wait.
pub const PLOCK_EAGAIN: i32 = -11;
/// Status of a waiting request refused because waiting would deadlock.
pub const PLOCK_EDEADLK: i32 = -35;
/// Status of a waiting request that was cancelled.
pub const PLOCK_ECANCELED: i32 = -DLM_ECANCEL;
/// Status of a request refused as malformed.
pub const PLOCK_EINVAL: i32 = -22;

/// Most locks in one [`Message::PlockRecover`] (keeps it well under the frame limit).
const RECOVER_CHUNK: usize = 16 * 1024;

/// A plock operation of a local client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlockOp {
    /// F_SETLK (`wait` false) or F_SETLKW (`wait` true); `args.kind` Unlock releases.
    Set {
        /// Owner, pid, range, kind.
        args: PlockArgs,
        /// Queue instead of failing with EAGAIN.
        wait: bool,
    },
    /// F_GETLK.
    Get {
        /// Owner, range, kind.
        args: PlockArgs,
    },
    /// Release every lock of `owner` on the resource (close).
    ReleaseOwner {
        /// The owner.
        owner: u64,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Pending {
    name: Vec<u8>,
    op: PlockOp,
    /// The epoch it was sent at (None: not sent yet, or to send again after recovery).
    sent: Option<u64>,
    /// The client wants it withdrawn.
    cancel: bool,
    cancel_sent: bool,
}

/// One lockspace's plocks on this node.
#[derive(Debug, Default)]
pub(super) struct LsPlocks {
    tables: HashMap<Vec<u8>, PlockTable>,
    mine: HashMap<Vec<u8>, PlockTable>,
    pending: BTreeMap<(Owner, u64), Pending>,
    /// Connections gone while the lockspace was not running: tell the masters on resume.
    drops: Vec<(Vec<u8>, Owner)>,
}

/// A master-side table being rebuilt during recovery.
pub(super) type Rebuild = BTreeMap<Vec<u8>, PlockTable>;

/// A plock resource this node masters, for `dlm_tool plocks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlockDump {
    /// Name.
    pub name: Vec<u8>,
    /// Held locks, by owner then start.
    pub locks: Vec<Plock>,
    /// Waiting requests, oldest first: the request and the lock it asks for.
    pub waiters: Vec<(PlockReq, Plock)>,
}

fn op_message(ls: u32, epoch: u64, name: &[u8], client: Owner, reqid: u64, op: &PlockOp) -> Message {
    let (code, args, wait) = match *op {
        PlockOp::Set { args, wait } => (PlockOpCode::Set, args, wait),
        PlockOp::Get { args } => (PlockOpCode::Get, args, false),
        PlockOp::ReleaseOwner { owner } => {
            (PlockOpCode::ReleaseOwner, PlockArgs { owner, ..PlockArgs::default() }, false)
        }
    };
    Message::PlockOp { ls, epoch, name: name.to_vec(), client, reqid, op: code, args, wait }
}

impl Node {
    /// A POSIX lock operation of local client `client` on resource `name`; `reqid` names it
    /// (unique per client while it is pending). The outcome comes as an [`Ast::Plock`]
    /// (possibly in the output of this very call): status 0, -11 (EAGAIN: conflict and
    /// not waiting), `-DLM_ECANCEL` (cancelled) or -22; for a Get, the conflicting lock.
    pub fn plock(&mut self, ls: u32, client: Owner, reqid: u64, name: &[u8], op: PlockOp) -> Result<(), DlmError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(DlmError::BadName);
        }
        let l = self.lockspaces.get_mut(&ls).ok_or(DlmError::NoLockspace { ls })?;
        if let PlockOp::Set { args, .. } | PlockOp::Get { args } = op {
            if args.start > args.end {
                self.out.push(Output::Ast(Ast::Plock {
                    ls,
                    owner: client,
                    reqid,
                    status: PLOCK_EINVAL,
                    conflict: None,
                }));
                return Ok(());
            }
        }
        if l.plock.pending.contains_key(&(client, reqid)) {
            return Err(DlmError::Busy { lkid: reqid });
        }
        l.plock.pending.insert(
            (client, reqid),
            Pending { name: name.to_vec(), op, sent: None, cancel: false, cancel_sent: false },
        );
        if matches!(l.state, State::Running) {
            self.plock_send(ls, client, reqid);
        }
        Ok(())
    }

    /// Withdraw the waiting request `reqid` of `client` (its FUSE request was interrupted).
    /// Returns false if it is not pending (already answered) or is not a lock request that
    /// may wait (F_SETLKW of a read or write lock). If the master has granted it
    /// meanwhile, the grant still comes (the lock is held, as with Linux's DLM).
    pub fn plock_cancel(&mut self, ls: u32, client: Owner, reqid: u64) -> Result<bool, DlmError> {
        let l = self.lockspaces.get_mut(&ls).ok_or(DlmError::NoLockspace { ls })?;
        let Some(p) = l.plock.pending.get_mut(&(client, reqid)) else { return Ok(false) };
        if !matches!(p.op, PlockOp::Set { wait: true, args } if args.kind != PlockKind::Unlock) {
            // Only a request that may wait can be withdrawn; the others complete as sent.
            return Ok(false);
        }
        p.cancel = true;
        if p.sent.is_none() {
            l.plock.pending.remove(&(client, reqid));
            self.out.push(Output::Ast(Ast::Plock {
                ls,
                owner: client,
                reqid,
                status: PLOCK_ECANCELED,
                conflict: None,
            }));
        } else if matches!(l.state, State::Running) {
            self.plock_send_cancel(ls, client, reqid);
        }
        Ok(true)
    }

    /// The plock resources this node masters in `ls`, sorted by name.
    pub fn plock_dump(&self, ls: u32) -> Option<Vec<PlockDump>> {
        let l = self.lockspaces.get(&ls)?;
        let mut v: Vec<PlockDump> = l
            .plock
            .tables
            .iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(name, t)| PlockDump {
                name: name.clone(),
                locks: t.locks().to_vec(),
                waiters: t.waiters().map(|w| (w.req, w.lock)).collect(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Some(v)
    }

    /// The locks this node's clients hold in `ls` (as the masters reported them).
    pub fn plocks_held(&self, ls: u32) -> Vec<(Vec<u8>, Plock)> {
        let Some(l) = self.lockspaces.get(&ls) else { return Vec::new() };
        let mut v: Vec<(Vec<u8>, Plock)> =
            l.plock.mine.iter().flat_map(|(n, t)| t.locks().iter().map(|p| (n.clone(), *p))).collect();
        v.sort_by(|a, b| (&a.0, a.1.who, a.1.start).cmp(&(&b.0, b.1.who, b.1.start)));
        v
    }

    fn plock_master_of(&self, name: &[u8]) -> NodeId {
        dir_node(name, &self.members)
    }

    fn plock_send(&mut self, ls: u32, client: Owner, reqid: u64) {
        let me = self.me;
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        let epoch = l.epoch;
        let p = l.plock.pending.get_mut(&(client, reqid)).expect("caller checked");
        p.sent = Some(epoch);
        p.cancel_sent = false;
        let msg = op_message(ls, epoch, &p.name, client, reqid, &p.op);
        let to = dir_node(&p.name, &self.members);
        if to == me {
            self.plock_master(ls, me, msg);
        } else {
            self.out.push(Output::Send { to, msg });
        }
    }

    fn plock_send_cancel(&mut self, ls: u32, client: Owner, reqid: u64) {
        let me = self.me;
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        let epoch = l.epoch;
        let Some(p) = l.plock.pending.get_mut(&(client, reqid)) else { return };
        if p.cancel_sent {
            return;
        }
        p.cancel_sent = true;
        let msg = Message::PlockOp {
            ls,
            epoch,
            name: p.name.clone(),
            client,
            reqid,
            op: PlockOpCode::Cancel,
            args: PlockArgs::default(),
            wait: false,
        };
        let to = dir_node(&p.name, &self.members);
        if to == me {
            self.plock_master(ls, me, msg);
        } else {
            self.out.push(Output::Send { to, msg });
        }
    }

    /// Local client `client` went away: forget its requests and locks here and have the
    /// masters drop its locks and waiting requests.
    pub(super) fn plock_drop_client(&mut self, ls: u32, client: Owner) {
        let me = self.me;
        let Some(l) = self.lockspaces.get_mut(&ls) else { return };
        let mut names: Vec<Vec<u8>> = Vec::new();
        l.plock.pending.retain(|(c, _), p| {
            if *c == client {
                if p.sent.is_some() {
                    names.push(p.name.clone());
                }
                return false;
            }
            true
        });
        let mut none = Vec::new();
        for (name, t) in &mut l.plock.mine {
            if t.locks().iter().any(|p| p.who.client == client) {
                t.drop_where(|o| o.client == client, &mut none);
                names.push(name.clone());
            }
        }
        l.plock.mine.retain(|_, t| !t.is_empty());
        names.sort();
        names.dedup();
        if names.is_empty() {
            return;
        }
        if !matches!(l.state, State::Running) {
            l.plock.drops.extend(names.into_iter().map(|n| (n, client)));
            return;
        }
        for name in names {
            self.plock_send_drop(ls, me, name, client);
        }
    }

    fn plock_send_drop(&mut self, ls: u32, me: NodeId, name: Vec<u8>, client: Owner) {
        let epoch = self.lockspaces.get(&ls).map_or(0, |l| l.epoch);
        let to = self.plock_master_of(&name);
        let msg = Message::PlockOp {
            ls,
            epoch,
            name,
            client,
            reqid: 0,
            op: PlockOpCode::DropClient,
            args: PlockArgs::default(),
            wait: false,
        };
        if to == me {
            self.plock_master(ls, me, msg);
        } else {
            self.out.push(Output::Send { to, msg });
        }
    }

    /// A [`Message::PlockOp`] at its master (from a peer or this node), lockspace running.
    pub(super) fn plock_master(&mut self, ls: u32, from: NodeId, msg: Message) {
        let Message::PlockOp { name, client, reqid, op, args, wait, epoch, .. } = msg else { return };
        if name.is_empty() || self.plock_master_of(&name) != self.me {
            warn!(from, ls, "plock operation sent to the wrong master refused");
            self.plock_answer(ls, from, epoch, client, reqid, PLOCK_EINVAL, None);
            return;
        }
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        let table = l.plock.tables.entry(name.clone()).or_default();
        let who = PlockOwner { node: from, client, owner: args.owner };
        let req = PlockReq { node: from, client, id: reqid };
        let mut granted = Vec::new();
        let mut answer = None;
        match op {
            PlockOpCode::Set => {
                if args.start > args.end {
                    answer = Some((PLOCK_EINVAL, None));
                } else {
                    let lock = Plock { who, pid: args.pid, kind: args.kind, start: args.start, end: args.end };
                    match table.set(lock, wait.then_some(req), &mut granted) {
                        SetOutcome::Granted => answer = Some((0, None)),
                        SetOutcome::WouldBlock => answer = Some((PLOCK_EAGAIN, None)),
                        SetOutcome::Deadlock => answer = Some((PLOCK_EDEADLK, None)),
                        SetOutcome::Queued => debug!(from, client, reqid, "plock request waits"),
                    }
                }
            }
            PlockOpCode::Get => answer = Some((0, table.get(who, args.kind, args.start, args.end))),
            PlockOpCode::ReleaseOwner => {
                table.release_owner(who, &mut granted);
                answer = Some((0, None));
            }
            PlockOpCode::Cancel => {
                if table.cancel(req) {
                    answer = Some((PLOCK_ECANCELED, None));
                }
            }
            PlockOpCode::DropClient => {
                table.drop_where(|o| o.node == from && o.client == client, &mut granted);
            }
        }
        if table.is_empty() {
            l.plock.tables.remove(&name);
        }
        if let Some((status, conflict)) = answer {
            self.plock_answer(ls, from, epoch, client, reqid, status, conflict);
        }
        for g in granted {
            self.plock_answer(ls, g.node, self.epoch_of(ls), g.client, g.id, 0, None);
        }
    }

    fn epoch_of(&self, ls: u32) -> u64 {
        self.lockspaces.get(&ls).map_or(0, |l| l.epoch)
    }

    #[allow(clippy::too_many_arguments)]
    fn plock_answer(
        &mut self,
        ls: u32,
        to: NodeId,
        epoch: u64,
        client: Owner,
        reqid: u64,
        status: i32,
        conflict: Option<PlockConflict>,
    ) {
        if to == self.me {
            self.plock_reply(ls, epoch, client, reqid, status, conflict);
        } else {
            self.out.push(Output::Send { to, msg: Message::PlockReply { ls, epoch, client, reqid, status, conflict } });
        }
    }

    /// The master's answer to one of this node's requests.
    pub(super) fn plock_reply(
        &mut self,
        ls: u32,
        epoch: u64,
        client: Owner,
        reqid: u64,
        status: i32,
        conflict: Option<PlockConflict>,
    ) {
        let me = self.me;
        let Some(l) = self.lockspaces.get_mut(&ls) else { return };
        match l.plock.pending.get(&(client, reqid)) {
            Some(p) if p.sent == Some(epoch) => {}
            _ => {
                debug!(client, reqid, epoch, "stale or unknown plock reply dropped");
                return;
            }
        }
        let p = l.plock.pending.remove(&(client, reqid)).expect("checked");
        if status == 0 {
            let mine = l.plock.mine.entry(p.name.clone()).or_default();
            match p.op {
                PlockOp::Set { args, .. } => mine.apply(Plock {
                    who: PlockOwner { node: me, client, owner: args.owner },
                    pid: args.pid,
                    kind: args.kind,
                    start: args.start,
                    end: args.end,
                }),
                PlockOp::ReleaseOwner { owner } => {
                    mine.release_owner(PlockOwner { node: me, client, owner }, &mut Vec::new())
                }
                PlockOp::Get { .. } => {}
            }
            if mine.is_empty() {
                l.plock.mine.remove(&p.name);
            }
        }
        self.out.push(Output::Ast(Ast::Plock { ls, owner: client, reqid, status, conflict }));
    }

    /// Recovery phase A: the copies of what this node's clients hold, per name, for the
    /// masters under `members`. Pending requests are to be sent again after recovery.
    pub(super) fn plock_phase_a(
        &mut self,
        ls: u32,
        epoch: u64,
        members: &[NodeId],
        own: &mut Rebuild,
    ) -> Vec<(NodeId, Message)> {
        let me = self.me;
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        for p in l.plock.pending.values_mut() {
            p.sent = None;
            p.cancel_sent = false;
        }
        // The rebuilt tables will not have the gone clients' locks: nothing to tell.
        l.plock.drops.clear();
        let mut names: Vec<&Vec<u8>> = l.plock.mine.keys().collect();
        names.sort();
        let mut sends = Vec::new();
        for name in names {
            let locks: Vec<PlockCopy> = l.plock.mine[name]
                .locks()
                .iter()
                .map(|p| PlockCopy {
                    client: p.who.client,
                    owner: p.who.owner,
                    pid: p.pid,
                    kind: p.kind,
                    start: p.start,
                    end: p.end,
                })
                .collect();
            let to = dir_node(name, members);
            if to == me {
                add_copies(own, name, me, &locks);
            } else {
                for chunk in locks.chunks(RECOVER_CHUNK) {
                    sends.push((to, Message::PlockRecover { ls, epoch, name: name.clone(), locks: chunk.to_vec() }));
                }
            }
        }
        sends
    }

    /// Recovery phase B: the tables of the names this node masters now.
    pub(super) fn plock_phase_b(&mut self, ls: u32, rebuilt: Rebuild) {
        let me = self.me;
        let members = self.members.clone();
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        l.plock.tables = rebuilt.into_iter().filter(|(n, t)| dir_node(n, &members) == me && !t.is_empty()).collect();
    }

    /// The lockspace runs again: send what waited.
    pub(super) fn plock_resume(&mut self, ls: u32) {
        let me = self.me;
        let Some(l) = self.lockspaces.get_mut(&ls) else { return };
        let drops = std::mem::take(&mut l.plock.drops);
        let todo: Vec<((Owner, u64), bool, bool)> =
            l.plock.pending.iter().map(|(k, p)| (*k, p.sent.is_none(), p.cancel && !p.cancel_sent)).collect();
        for (name, client) in drops {
            self.plock_send_drop(ls, me, name, client);
        }
        for ((client, reqid), unsent, cancel) in todo {
            if !self.is_running(ls) {
                return;
            }
            if unsent && cancel {
                let l = self.lockspaces.get_mut(&ls).expect("exists");
                l.plock.pending.remove(&(client, reqid));
                self.out.push(Output::Ast(Ast::Plock {
                    ls,
                    owner: client,
                    reqid,
                    status: PLOCK_ECANCELED,
                    conflict: None,
                }));
            } else if unsent {
                self.plock_send(ls, client, reqid);
            } else if cancel {
                self.plock_send_cancel(ls, client, reqid);
            }
        }
    }
}

/// Add `from`'s copies of `name` to a table being rebuilt.
pub(super) fn add_copies(rebuild: &mut Rebuild, name: &[u8], from: NodeId, locks: &[PlockCopy]) {
    let t = rebuild.entry(name.to_vec()).or_default();
    for c in locks {
        if c.kind == PlockKind::Unlock || c.start > c.end {
            continue;
        }
        t.apply(Plock {
            who: PlockOwner { node: from, client: c.client, owner: c.owner },
            pid: c.pid,
            kind: c.kind,
            start: c.start,
            end: c.end,
        });
    }
}
