//! Where a resource lives: its directory node (by hash over the members) and its master
//! (the first node to use it), and the routing of an operation to the master, looking the
//! master up first if needed. See "Distribution" in the [module doc](super).

use tracing::warn;

use super::{Cancel, Held, Lockspace, Node, OpKind, Output, Pending, State};
use crate::mode::Flags;
use crate::resource::{LockId, Resource};
use crate::wire::{Message, NodeId};

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

impl Node {
    /// Send an operation on its way, or hold it while the lockspace is not running.
    pub(super) fn issue(&mut self, ls: u32, kind: OpKind, lkid: LockId) {
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        if !matches!(l.state, State::Running) {
            l.held.push(Held::Local(kind, lkid));
            return;
        }
        self.dispatch(ls, kind, lkid);
    }

    /// Route an operation to the resource's master, looking the master up if needed.
    pub(super) fn dispatch(&mut self, ls: u32, kind: OpKind, lkid: LockId) {
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

    /// `name`'s master is `master`: run the operations that waited for the answer.
    pub(super) fn set_master(&mut self, ls: u32, name: &[u8], master: NodeId) {
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

    /// A lookup of `name` at this node, its directory node: the first node to ask becomes
    /// the master.
    pub(super) fn lookup(&mut self, ls: u32, from: NodeId, name: Vec<u8>) {
        if dir_node(&name, &self.members) != self.me {
            warn!(from, "lookup sent to the wrong directory node");
            return;
        }
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        let master = *l.dir.entry(name.clone()).or_insert(from);
        let epoch = l.epoch;
        if master == self.me {
            l.rsbs.entry(name.clone()).or_default();
            self.set_master(ls, &name, master);
        }
        self.out.push(Output::Send { to: from, msg: Message::LookupReply { ls, epoch, name, master } });
    }
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
