//! Recovery: every membership change rebuilds every lockspace. Membership events (members
//! changed, node fenced, quorum) stop granting; phase A waits until every failed node is
//! fenced and the cluster is quorate, then drops the dead nodes' locks on the resources
//! this node mastered, settles this node's operations in flight and sends its locks (and
//! the old master's value blocks) to each resource's new master; phase B, once every
//! member is done, rebuilds the queues there, decides the value blocks (flagged not valid
//! when a lost node may have changed them) and resumes. See "Recovery" in the
//! [module doc](super).

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, warn};

use super::{dir_node, plock, Ast, Cancel, Held, Lockspace, MemberEvent, Node, OpKind, Output, Owner, Pending, State};
use crate::mode::{Flags, Mode, SbFlags, Status};
use crate::resource::{lock_node, Effect, Lkb, LockId, Resource};
use crate::wire::{LockCopy, MasterLvb, Message, NodeId};

/// Whether a conversion from `gr` to `rq` only weakens the lock (everything compatible
/// with `gr` is compatible with `rq`).
fn is_down(gr: Mode, rq: Mode) -> bool {
    Mode::ALL.iter().all(|&m| !gr.compatible(m) || rq.compatible(m))
}

fn is_up(gr: Mode, rq: Mode) -> bool {
    is_down(rq, gr)
}

/// What one node sent for one resource during recovery.
type Contribution = (NodeId, Option<MasterLvb>, Vec<LockCopy>);

/// A local operation settled by phase A: lock, owner, status, granted mode.
type Settled = (LockId, Option<Owner>, Status, Option<Mode>);

/// One lockspace's recovery at one epoch.
#[derive(Debug)]
pub(super) struct Recovery {
    epoch: u64,
    phase_a_done: bool,
    done_from: BTreeSet<NodeId>,
    copies: BTreeMap<Vec<u8>, Vec<Contribution>>,
    /// Plock tables being rebuilt from the members' copies.
    plocks: plock::Rebuild,
    prev_slots: BTreeMap<NodeId, (bool, Vec<(NodeId, u16)>)>,
}

impl Node {
    /// A membership event from the cluster layer.
    pub fn membership(&mut self, ev: MemberEvent) {
        match ev {
            MemberEvent::Members { epoch, members, failed } => self.members_changed(epoch, members, failed),
            MemberEvent::Fenced { node } => self.fenced(node),
            MemberEvent::Quorum { quorate } => self.quorum(quorate),
        }
    }

    /// The members are now `members` at `epoch`; `failed` must be fenced first.
    fn members_changed(&mut self, epoch: u64, mut members: Vec<NodeId>, failed: Vec<NodeId>) {
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

    /// `node` is fenced: recovery may go on once nobody else needs fencing.
    fn fenced(&mut self, node: NodeId) {
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

    /// Quorum gained or lost: pause, resume, or go on with recovery.
    fn quorum(&mut self, quorate: bool) {
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

    /// A recovery message (lock copies, plock copies, a member done) in lockspace `ls`.
    pub(super) fn recovery_receive(&mut self, ls: u32, from: NodeId, epoch: u64, msg: Message) {
        if let Message::RecoverDone { slots, epoch, agreed: true, .. } = &msg {
            self.adopt_agreed_slots(ls, *epoch, slots);
        }
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        if epoch == l.epoch && !matches!(l.state, State::Recovering(_)) {
            // A member recovers at this node's epoch, which this node is not doing (it never
            // sends recovery messages after completing one): the member is a new incarnation
            // (its daemon restarted under the same membership and joined before knowing the
            // members), or this node created the lockspace after its member list while the
            // others recover it. Either way take part (again): the recovery rebuilds every
            // resource from the locks their owners hold now.
            debug!(from, ls, epoch, "a member recovers at this epoch; recovering too");
            l.state = State::Recovering(Box::new(Recovery::new(epoch)));
            self.try_phase_a(ls);
        }
        let l = self.lockspaces.get_mut(&ls).expect("exists");
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
            Message::PlockRecover { name, locks, .. } => plock::add_copies(&mut rec.plocks, &name, from, &locks),
            Message::RecoverDone { slots, agreed, .. } => {
                rec.done_from.insert(from);
                rec.prev_slots.insert(from, (agreed, slots));
                self.try_phase_b(ls);
            }
            _ => {}
        }
    }

    /// A newcomer learns the agreed slots from any member that has them, even from an
    /// interrupted recovery: replay the member lists seen since `epoch` onto them.
    fn adopt_agreed_slots(&mut self, ls: u32, epoch: u64, slots: &[(NodeId, u16)]) {
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
        if !l.slots_hist {
            if let Some(m) = self.history.iter().position(|(e, _)| *e == epoch) {
                let mut map: BTreeMap<NodeId, u16> = slots.iter().copied().collect();
                for (_, members) in &self.history[m + 1..] {
                    map = compute_slots(&map, members);
                }
                l.slots = map;
                l.slots_hist = true;
            }
        }
    }

    /// Recovery done or quorum back: run again (if quorate) and carry out what was held.
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

    /// Phase A, once every failed node is fenced and the cluster is quorate: hand this
    /// node's part of every resource to its new master and announce it is done.
    pub(super) fn try_phase_a(&mut self, ls: u32) {
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
        let mut master_lvb = l.purge_departed(&members);
        // 2. Settle this node's operations in flight and copy its locks.
        let (mut copies, asts) = l.settle_and_copy();
        // 3. Forget masters, directory and lookups.
        l.forget_masters(&copies, &members);
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

    /// Phase B, once every member is done: build the resources this node masters now from
    /// the copies, grant, and resume.
    pub(super) fn try_phase_b(&mut self, ls: u32) {
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
            let Some(res) = rebuild_resource(l.lvblen, &parts, &mut eff) else { continue };
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
    /// Phase A, step 1, as old master: drop the locks of nodes that are gone; keep the value
    /// blocks. They are kept until a recovery completes, in case this one is interrupted.
    /// One kept from an earlier, interrupted recovery may have been outdated by a later
    /// master that is gone now: it goes out flagged not valid. Returns the value blocks to
    /// hand over.
    fn purge_departed(&mut self, members: &[NodeId]) -> BTreeMap<Vec<u8>, MasterLvb> {
        for m in self.handover.values_mut() {
            m.valnotvalid = true;
        }
        for (name, rsb) in &mut self.rsbs {
            if let Some(res) = &mut rsb.res {
                let departed = &self.departed;
                res.purge(|id| !members.contains(&lock_node(id)) || departed.contains(&lock_node(id)));
                let (v, seq, inval) = res.lvb();
                self.handover.insert(name.clone(), MasterLvb { lvb: v.to_vec(), seq, valnotvalid: inval });
            }
        }
        self.handover.clone()
    }

    /// Phase A, step 2: settle this node's operations in flight (down-conversions and
    /// unlocks complete here, requests and up-conversions are carried over) and copy its
    /// locks, by resource name. Returns the copies and the completions to deliver.
    fn settle_and_copy(&mut self) -> (BTreeMap<Vec<u8>, Vec<LockCopy>>, Vec<Settled>) {
        let mut copies: BTreeMap<Vec<u8>, Vec<LockCopy>> = BTreeMap::new();
        let mut ids: Vec<LockId> = self.locks.keys().copied().collect();
        ids.sort_unstable();
        let mut asts = Vec::new();
        for id in ids {
            let lk = self.locks.get_mut(&id).expect("listed");
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
                    self.locks.remove(&id);
                    if wrote {
                        copy.grmode = None;
                        copy.flags = flags;
                        copy.unconfirmed_write = true;
                        self.ghosts.push((name, copy));
                    }
                    continue;
                }
                (Some(Pending::Convert { mode, flags }), true) => {
                    let gr = lk.grmode.expect("conversion of a granted lock");
                    lk.issued = false;
                    if is_down(gr, mode) {
                        if gr >= Mode::Pw && flags.0 & (Flags::VALBLK | Flags::IVVALBLK).0 != 0 {
                            let ghost = LockCopy { grmode: None, flags, unconfirmed_write: true, ..copy.clone() };
                            self.ghosts.push((lk.name.clone(), ghost));
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
        (copies, asts)
    }

    /// Phase A, step 3: forget masters, directory and lookups; the new master of
    /// everything is its directory node under the new membership. Only the resources with
    /// a lock of this node held or wanted are kept.
    fn forget_masters(&mut self, copies: &BTreeMap<Vec<u8>, Vec<LockCopy>>, members: &[NodeId]) {
        self.rsbs.retain(|name, rsb| {
            rsb.res = None;
            rsb.waiting.clear();
            rsb.lookup_sent = false;
            rsb.master = Some(dir_node(name, members));
            copies.get(name).is_some_and(|c| c.iter().any(|c| c.grmode.is_some() || c.rqmode.is_some()))
        });
        self.dir.clear();
    }

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
    pub(super) fn new(epoch: u64) -> Recovery {
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

/// Phase B for one resource: its queues and value block rebuilt from the members' copies,
/// the carried-over requests replayed and granted what can be (effects into `eff`). None
/// when nobody holds a lock on it and its master is gone: it is forgotten, value block and
/// all, as when its last lock is released.
fn rebuild_resource(lvblen: usize, parts: &[Contribution], eff: &mut Vec<Effect>) -> Option<Resource> {
    let mut locks: Vec<LockCopy> = parts.iter().flat_map(|p| p.2.iter().cloned()).collect();
    locks.sort_by_key(|c| c.lkid);
    let master = parts.iter().filter_map(|p| p.1.as_ref()).max_by_key(|m| (m.seq, m.valnotvalid));
    if master.is_none() && locks.iter().all(|c| c.grmode.is_none() && c.rqmode.is_none()) {
        return None;
    }
    let mut res = Resource::new(lvblen);
    rebuild_lvb(&mut res, master, &locks);
    for c in locks.iter().filter(|c| c.grmode.is_some()) {
        res.insert_granted(Lkb::granted(c.lkid, c.grmode.expect("filtered"), c.flags, c.lvb.clone(), c.lvbseq));
    }
    for c in locks.iter().filter(|c| c.grmode.is_some() && c.rqmode.is_some()) {
        let _ = res.convert(c.lkid, c.rqmode.expect("filtered"), c.flags, None, eff);
    }
    for c in locks.iter().filter(|c| c.grmode.is_none() && c.rqmode.is_some()) {
        let lvb = (!c.lvb.is_empty()).then_some(c.lvb.as_slice());
        res.request(Lkb::new(c.lkid, c.rqmode.expect("filtered"), c.flags, lvb), eff);
    }
    for c in locks.iter().filter(|c| c.cancel) {
        let _ = res.cancel(c.lkid, eff);
    }
    res.grant_pending(eff);
    Some(res)
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

/// Slots for `members`: a member keeps its slot in `prev`, a new one takes the lowest free.
pub(super) fn compute_slots(prev: &BTreeMap<NodeId, u16>, members: &[NodeId]) -> BTreeMap<NodeId, u16> {
    let mut slots: BTreeMap<NodeId, u16> =
        prev.iter().filter(|(n, _)| members.contains(n)).map(|(n, s)| (*n, *s)).collect();
    let used: BTreeSet<u16> = slots.values().copied().collect();
    let mut free = (1u16..).filter(|s| !used.contains(s));
    for &m in members {
        slots.entry(m).or_insert_with(|| free.next().expect("slots are plenty"));
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::lockspace_id;
    use crate::sim::Net;

    impl Net {
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
        let mut net = Net::default();
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
        let mut net = Net::default();
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
