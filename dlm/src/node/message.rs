//! Messages from peers: the epoch gate (messages from a later membership wait for it, from
//! an earlier one are dropped or refused), lockspaces hosted on a peer's behalf, replies,
//! and operations arriving at a resource's master, whose effects are routed to the lock
//! owners' nodes. Recovery messages go on to [`recovery`](super::recovery).

use tracing::{debug, warn};

use super::{Held, Node, Output, State, DEFAULT_LVB_LEN};
use crate::mode::{SbFlags, Status};
use crate::resource::{lock_node, Effect, Lkb};
use crate::wire::{Message, NodeId};

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
    /// Handle the messages that waited for the membership this node has now.
    pub(super) fn replay_future(&mut self) {
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
        if !self.lockspaces.contains_key(&ls) && !self.host_lockspace(from, ls, epoch, kind, &msg) {
            return;
        }
        match kind {
            Kind::Recovery => self.recovery_receive(ls, from, epoch, msg),
            Kind::Reply => self.reply_receive(ls, from, epoch, msg),
            Kind::Op => self.op_receive(ls, from, epoch, msg),
        }
    }

    /// A message for a lockspace this node has not got. Returns whether it is handled on.
    fn host_lockspace(&mut self, from: NodeId, ls: u32, epoch: u64, kind: Kind, msg: &Message) -> bool {
        match kind {
            Kind::Recovery if epoch == self.epoch => {
                // A lockspace this node never joined, being recovered by the others:
                // take part with nothing to contribute.
                let name = format!("ls-{ls:08x}").into_bytes();
                self.create_ls(ls, name, DEFAULT_LVB_LEN, true);
                true
            }
            Kind::Op if epoch == self.epoch => {
                // A peer uses a lockspace this node has not joined yet: host it (a
                // lockspace spans every member; joining it here later names it).
                let name = format!("ls-{ls:08x}").into_bytes();
                self.create_ls(ls, name, DEFAULT_LVB_LEN, false);
                true
            }
            Kind::Op => {
                self.reply_invalid(from, ls, epoch, msg);
                false
            }
            _ => false,
        }
    }

    /// A reply: a lookup's answer, a completion, a blocking callback or a plock outcome.
    fn reply_receive(&mut self, ls: u32, from: NodeId, epoch: u64, msg: Message) {
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
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

    /// An operation for this node as directory node (a lookup) or as master.
    fn op_receive(&mut self, ls: u32, from: NodeId, epoch: u64, msg: Message) {
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        if epoch < l.epoch {
            debug!(from, epoch, "operation from before recovery dropped");
            return;
        }
        if !matches!(l.state, State::Running) {
            l.held.push(Held::Msg(from, msg));
            return;
        }
        if let Message::Lookup { name, .. } = msg {
            self.lookup(ls, from, name);
        } else if let Message::PlockOp { .. } = msg {
            self.plock_master(ls, from, msg);
        } else {
            self.master_receive(ls, from, msg);
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
    pub(super) fn master_receive(&mut self, ls: u32, from: NodeId, msg: Message) {
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

    /// Carry a master's effects to the locks' owners: here, or by message.
    pub(super) fn route_effects(&mut self, ls: u32, eff: &mut Vec<Effect>) {
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
