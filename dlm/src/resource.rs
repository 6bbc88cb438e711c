//! One resource as its master sees it: the grant, convert and wait queues, the value block,
//! and the classic VMS/Linux DLM granting rules. This is the "lock step": every request,
//! conversion, unlock and cancel on a resource goes through here, on whichever node masters it.
//!
//! The rules (numbers refer to the VMS DLM manual, as the Linux DLM's comments do):
//! - a new request is granted at once only if it is compatible with every granted lock and
//!   both the convert and the wait queue are empty (6-4); otherwise it waits, FIFO;
//! - a conversion is granted at once if compatible with every other granted lock (6-3),
//!   unless QUECVT asks it to queue behind existing conversions (6-7); a queued conversion is
//!   granted only from the head of the convert queue; conversions go before new requests;
//! - EXPEDITE (NL only) is granted at once; ALTPR/ALTCW try the alternate mode;
//! - a conversion that would deadlock with one already queued fails with EDEADLK, or with
//!   CONVDEADLK has its granted mode demoted to NL;
//! - blocking callbacks go to granted (and converting) locks that block a queued request,
//!   one per distinct blocked mode (the "highbast" rule).

use crate::mode::{Flags, LvbOp, Mode, SbFlags, Status};

/// A lock's identity, unique in a lockspace across the cluster: the owning node in the high
/// 32 bits, a per-node sequence number in the low 32 bits.
pub type LockId = u64;

/// The node that owns a lock id.
pub fn lock_node(id: LockId) -> u32 {
    (id >> 32) as u32
}

/// One lock (a "lock block") on a resource, as the master holds it.
#[derive(Debug, Clone)]
pub struct Lkb {
    /// Cluster-wide lock id.
    pub id: LockId,
    /// Granted mode, `None` while a new request waits.
    pub grmode: Option<Mode>,
    /// Requested mode while a request or conversion is queued.
    pub rqmode: Option<Mode>,
    /// Flags of the current operation.
    pub flags: Flags,
    /// The lock's copy of the value block (empty when the lock does not use one).
    pub lvb: Vec<u8>,
    /// Sequence number of the value block the lock last read or wrote.
    pub lvbseq: u32,
    highbast: u8,
    /// Modes already announced by blocking callbacks since the last grant (bit per mode).
    basts_sent: u8,
    sbflags: SbFlags,
}

impl Lkb {
    /// A new, not yet granted lock requesting `mode`.
    pub fn new(id: LockId, mode: Mode, flags: Flags, lvb: Option<&[u8]>) -> Lkb {
        Lkb {
            id,
            grmode: None,
            rqmode: Some(mode),
            flags,
            lvb: lvb.map(<[u8]>::to_vec).unwrap_or_default(),
            lvbseq: 0,
            highbast: 0,
            basts_sent: 0,
            sbflags: SbFlags::default(),
        }
    }

    /// A lock already granted in `mode` (recovery rebuilds masters from these).
    pub fn granted(id: LockId, mode: Mode, flags: Flags, lvb: Vec<u8>, lvbseq: u32) -> Lkb {
        Lkb {
            id,
            grmode: Some(mode),
            rqmode: None,
            flags,
            lvb,
            lvbseq,
            highbast: 0,
            basts_sent: 0,
            sbflags: SbFlags::default(),
        }
    }
}

/// Something the owner of a lock must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Completion: the operation on `id` finished with `status`; the lock now holds `mode`.
    Cast {
        /// The lock.
        id: LockId,
        /// Outcome.
        status: Status,
        /// Granted mode after the operation (`None`: the lock no longer exists or never got one).
        mode: Option<Mode>,
        /// DEMOTED / VALNOTVALID / ALTMODE.
        sbflags: SbFlags,
        /// The value block read by the grant.
        lvb: Option<Vec<u8>>,
        /// Sequence number of the value block the lock last read or wrote.
        lvbseq: u32,
    },
    /// Blocking callback: the lock `id` blocks a request for `mode`.
    Bast {
        /// The blocking lock.
        id: LockId,
        /// The mode being requested by the blocked lock.
        mode: Mode,
    },
}

/// Which queue a lock is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Granted (and not converting).
    Grant,
    /// Granted, with a queued conversion.
    Convert,
    /// Waiting for a first grant.
    Wait,
}

/// Why an operation on a resource was refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The lock id is not on this resource.
    #[error("lock {id:#x} is not on this resource")]
    NoSuchLock {
        /// The lock.
        id: LockId,
    },
    /// The lock has a request or conversion in progress (unlock/convert refused, EBUSY).
    #[error("lock {id:#x} has an operation in progress")]
    Busy {
        /// The lock.
        id: LockId,
    },
}

#[derive(Clone, Copy)]
struct Req {
    id: LockId,
    grmode: Option<Mode>,
    rqmode: Mode,
    flags: Flags,
}

enum Decision {
    Grant { mode: Mode, alt: bool },
    Deadlock,
    Demote,
    No,
}

/// A resource as its master holds it.
#[derive(Debug, Clone)]
pub struct Resource {
    grant: Vec<Lkb>,
    convert: Vec<Lkb>,
    wait: Vec<Lkb>,
    lvb: Vec<u8>,
    lvbseq: u32,
    valnotvalid: bool,
}

impl Resource {
    /// An empty resource with a zeroed value block of `lvblen` bytes.
    pub fn new(lvblen: usize) -> Resource {
        Resource {
            grant: Vec::new(),
            convert: Vec::new(),
            wait: Vec::new(),
            lvb: vec![0; lvblen],
            lvbseq: 0,
            valnotvalid: false,
        }
    }

    /// Whether no lock is on any queue.
    pub fn is_empty(&self) -> bool {
        self.grant.is_empty() && self.convert.is_empty() && self.wait.is_empty()
    }

    /// The queues, in order: granted, converting, waiting.
    pub fn queues(&self) -> [(Queue, &[Lkb]); 3] {
        [(Queue::Grant, &self.grant), (Queue::Convert, &self.convert), (Queue::Wait, &self.wait)]
    }

    /// The value block, its sequence number and whether it is flagged not valid.
    pub fn lvb(&self) -> (&[u8], u32, bool) {
        (&self.lvb, self.lvbseq, self.valnotvalid)
    }

    /// Replace the value block state (recovery).
    pub fn set_lvb(&mut self, lvb: &[u8], seq: u32, valnotvalid: bool) {
        let n = self.lvb.len().min(lvb.len());
        self.lvb[..n].copy_from_slice(&lvb[..n]);
        self.lvb[n..].fill(0);
        self.lvbseq = seq;
        self.valnotvalid = valnotvalid;
    }

    /// Flag the value block not valid (a holder in PW/EX was lost).
    pub fn invalidate_lvb(&mut self) {
        self.valnotvalid = true;
    }

    /// Where the lock `id` is.
    pub fn find(&self, id: LockId) -> Option<(Queue, &Lkb)> {
        self.queues().into_iter().find_map(|(q, v)| v.iter().find(|l| l.id == id).map(|l| (q, l)))
    }

    /// Add a lock that is already granted (recovery), without any checks or callbacks.
    pub fn insert_granted(&mut self, lkb: Lkb) {
        self.grant.push(lkb);
    }

    /// A new request. Completion (grant, or WouldBlock under NOQUEUE) and blocking callbacks
    /// are appended to `out`; a queued request produces its completion later.
    pub fn request(&mut self, mut lkb: Lkb, out: &mut Vec<Effect>) {
        let req = summary(&lkb);
        match self.can_be_granted(req, true, false, None) {
            Decision::Grant { mode, alt } => {
                self.grant_lock(&mut lkb, mode, alt, out);
                self.grant.push(lkb);
            }
            _ if lkb.flags.contains(Flags::NOQUEUE) => {
                out.push(cast(&lkb, Status::WouldBlock, None));
            }
            _ => {
                self.wait.push(lkb);
                self.send_blocking_asts(req.id, req.rqmode, out);
            }
        }
    }

    /// Convert the granted lock `id` to `mode`. `lvb` (when given) is the value block to
    /// write on a down-conversion from PW/EX.
    pub fn convert(
        &mut self,
        id: LockId,
        mode: Mode,
        flags: Flags,
        lvb: Option<&[u8]>,
        out: &mut Vec<Effect>,
    ) -> Result<(), ResourceError> {
        let gi = match self.find(id) {
            None => return Err(ResourceError::NoSuchLock { id }),
            Some((Queue::Grant, _)) => self.grant.iter().position(|l| l.id == id).expect("just found"),
            Some(_) => return Err(ResourceError::Busy { id }),
        };
        {
            let l = &mut self.grant[gi];
            l.rqmode = Some(mode);
            l.flags = flags;
            l.sbflags = SbFlags::default();
            if let Some(v) = lvb {
                l.lvb = v.to_vec();
            }
        }
        let req = summary(&self.grant[gi]);
        match self.can_be_granted(req, true, false, None) {
            Decision::Grant { mode, alt } => {
                let mut l = self.grant.remove(gi);
                self.grant_lock(&mut l, mode, alt, out);
                self.grant.push(l);
                self.grant_pending_locks(out);
                return Ok(());
            }
            Decision::Deadlock => {
                let l = &mut self.grant[gi];
                l.rqmode = None;
                out.push(cast(l, Status::Deadlock, l.grmode));
                return Ok(());
            }
            Decision::Demote => {
                let l = &mut self.grant[gi];
                l.grmode = Some(Mode::Nl);
                l.sbflags.set(SbFlags::DEMOTED);
                self.grant_pending_convert(None, &mut false, out);
                let gi = self.grant.iter().position(|l| l.id == id).expect("demoted lock stays granted");
                let req = summary(&self.grant[gi]);
                if self.can_be_granted_simple(req, true, false) {
                    let mut l = self.grant.remove(gi);
                    self.grant_lock(&mut l, req.rqmode, false, out);
                    self.grant.push(l);
                    self.grant_pending_locks(out);
                    return Ok(());
                }
            }
            Decision::No => {}
        }
        let gi = self.grant.iter().position(|l| l.id == id).expect("lock stays granted until queued");
        if flags.contains(Flags::NOQUEUE) {
            let l = &mut self.grant[gi];
            l.rqmode = None;
            out.push(cast(l, Status::WouldBlock, l.grmode));
            return Ok(());
        }
        let l = self.grant.remove(gi);
        self.convert.push(l);
        self.send_blocking_asts(id, mode, out);
        Ok(())
    }

    /// Release the lock `id`. Writes the value block from `lvb` (or the lock's copy) when the
    /// lock is held in PW/EX and VALBLK is set; IVVALBLK invalidates it instead.
    pub fn unlock(
        &mut self,
        id: LockId,
        flags: Flags,
        lvb: Option<&[u8]>,
        out: &mut Vec<Effect>,
    ) -> Result<(), ResourceError> {
        let gi = match self.find(id) {
            None => return Err(ResourceError::NoSuchLock { id }),
            Some((Queue::Grant, _)) => self.grant.iter().position(|l| l.id == id).expect("just found"),
            Some(_) => return Err(ResourceError::Busy { id }),
        };
        let mut l = self.grant.remove(gi);
        if let Some(v) = lvb {
            l.lvb = v.to_vec();
        }
        if l.grmode >= Some(Mode::Pw) {
            if flags.contains(Flags::IVVALBLK) {
                self.valnotvalid = true;
            } else if flags.contains(Flags::VALBLK) && !l.lvb.is_empty() {
                self.write_lvb(&l.lvb);
            }
        }
        out.push(Effect::Cast {
            id,
            status: Status::Unlocked,
            mode: None,
            sbflags: SbFlags::default(),
            lvb: None,
            lvbseq: self.lvbseq,
        });
        self.grant_pending_locks(out);
        Ok(())
    }

    /// Cancel the queued request or conversion of `id`. Returns false when there was nothing
    /// to cancel (the lock is simply granted): no callback then.
    pub fn cancel(&mut self, id: LockId, out: &mut Vec<Effect>) -> Result<bool, ResourceError> {
        if let Some(i) = self.wait.iter().position(|l| l.id == id) {
            let l = self.wait.remove(i);
            out.push(cast(&l, Status::Canceled, None));
        } else if let Some(i) = self.convert.iter().position(|l| l.id == id) {
            let mut l = self.convert.remove(i);
            l.rqmode = None;
            out.push(cast(&l, Status::Canceled, l.grmode));
            self.grant.push(l);
        } else if self.grant.iter().any(|l| l.id == id) {
            return Ok(false);
        } else {
            return Err(ResourceError::NoSuchLock { id });
        }
        self.grant_pending_locks(out);
        Ok(true)
    }

    /// Remove every lock for which `dead` is true, without callbacks (their owners are
    /// gone). The value block is flagged not valid if one of them held PW/EX with VALBLK.
    /// Returns how many locks went.
    pub fn purge(&mut self, dead: impl Fn(LockId) -> bool) -> usize {
        let mut n = 0;
        let mut inval = false;
        for q in [&mut self.grant, &mut self.convert, &mut self.wait] {
            q.retain(|l| {
                if dead(l.id) {
                    n += 1;
                    inval |= l.grmode >= Some(Mode::Pw) && l.flags.contains(Flags::VALBLK);
                    false
                } else {
                    true
                }
            });
        }
        if inval {
            self.valnotvalid = true;
        }
        n
    }

    /// Try to grant whatever is queued (after recovery or a purge).
    pub fn grant_pending(&mut self, out: &mut Vec<Effect>) {
        self.grant_pending_locks(out);
    }

    fn write_lvb(&mut self, v: &[u8]) {
        let n = self.lvb.len().min(v.len());
        self.lvb[..n].copy_from_slice(&v[..n]);
        self.lvb[n..].fill(0);
        self.lvbseq = self.lvbseq.wrapping_add(1);
        self.valnotvalid = false;
    }

    /// Grant `l` in `mode`: value block handling and the completion.
    fn grant_lock(&mut self, l: &mut Lkb, mode: Mode, alt: bool, out: &mut Vec<Effect>) {
        if alt {
            l.sbflags.set(SbFlags::ALTMODE);
        }
        let mut read = None;
        match Mode::lvb_op(l.grmode, mode) {
            LvbOp::Read => {
                if l.flags.contains(Flags::VALBLK) {
                    l.lvb.clone_from(&self.lvb);
                    l.lvbseq = self.lvbseq;
                    read = Some(l.lvb.clone());
                }
            }
            LvbOp::Write => {
                if l.flags.contains(Flags::IVVALBLK) {
                    self.valnotvalid = true;
                } else if l.flags.contains(Flags::VALBLK) && !l.lvb.is_empty() {
                    let v = std::mem::take(&mut l.lvb);
                    self.write_lvb(&v);
                    l.lvb = v;
                    l.lvbseq = self.lvbseq;
                }
            }
            LvbOp::None => {}
        }
        if self.valnotvalid && Mode::lvb_op(l.grmode, mode) != LvbOp::None {
            l.sbflags.set(SbFlags::VALNOTVALID);
        }
        l.grmode = Some(mode);
        l.rqmode = None;
        l.highbast = 0;
        l.basts_sent = 0;
        let sbflags = std::mem::take(&mut l.sbflags);
        out.push(Effect::Cast {
            id: l.id,
            status: Status::Granted,
            mode: Some(mode),
            sbflags,
            lvb: read,
            lvbseq: l.lvbseq,
        });
    }

    /// `_can_be_granted` of the Linux DLM.
    fn can_be_granted_simple(&self, r: Req, now: bool, first: bool) -> bool {
        let conv = r.grmode.is_some();
        if r.flags.contains(Flags::EXPEDITE) {
            return true;
        }
        // Granted modes of converting locks count as granted too.
        let conflict = |g: &Lkb| g.id != r.id && !g.grmode.expect("granted lock has a mode").compatible(r.rqmode);
        if self.grant.iter().any(conflict) || self.convert.iter().any(conflict) {
            return false;
        }
        if now && conv {
            return !r.flags.contains(Flags::QUECVT) || self.convert.is_empty();
        }
        if !now && conv && first {
            return true;
        }
        if now && !conv && self.convert.is_empty() && self.wait.is_empty() {
            return true;
        }
        !now && !conv && self.convert.is_empty() && first
    }

    /// `can_be_granted`: the simple rule, then conversion deadlock, then ALTPR/ALTCW.
    /// `conv_pos` is the lock's index in the convert queue when it is queued there.
    fn can_be_granted(&self, r: Req, now: bool, first: bool, conv_pos: Option<usize>) -> Decision {
        if self.can_be_granted_simple(r, now, first) {
            return Decision::Grant { mode: r.rqmode, alt: false };
        }
        if r.grmode.is_some() && !r.flags.contains(Flags::NOQUEUE) && self.conversion_deadlock(r, conv_pos) {
            return if r.flags.contains(Flags::CONVDEADLK) { Decision::Demote } else { Decision::Deadlock };
        }
        let alt = if r.rqmode != Mode::Pr && r.flags.contains(Flags::ALTPR) {
            Some(Mode::Pr)
        } else if r.rqmode != Mode::Cw && r.flags.contains(Flags::ALTCW) {
            Some(Mode::Cw)
        } else {
            None
        };
        if let Some(alt) = alt {
            if self.can_be_granted_simple(Req { rqmode: alt, ..r }, now, first) {
                return Decision::Grant { mode: alt, alt: true };
            }
        }
        Decision::No
    }

    /// Whether the conversion `r` deadlocks with the conversions queued ahead of (or
    /// mutually with those behind) it.
    fn conversion_deadlock(&self, r: Req, conv_pos: Option<usize>) -> bool {
        let gr = r.grmode.expect("conversion has a granted mode");
        let pos = conv_pos.unwrap_or(self.convert.len());
        self.convert.iter().enumerate().any(|(i, l1)| {
            if i == pos {
                return false;
            }
            let rq1 = l1.rqmode.expect("converting lock has a requested mode");
            let gr1 = l1.grmode.expect("converting lock has a granted mode");
            if i < pos {
                !gr.compatible(rq1)
            } else {
                !gr.compatible(rq1) && !gr1.compatible(r.rqmode)
            }
        })
    }

    fn grant_pending_convert(&mut self, high: Option<Mode>, cw: &mut bool, out: &mut Vec<Effect>) -> Option<Mode> {
        let mut quit = false;
        loop {
            let mut grant_restart = false;
            let mut demote_restart = false;
            let mut hi: Option<Mode> = None;
            let mut i = 0;
            while i < self.convert.len() {
                let req = summary(&self.convert[i]);
                match self.can_be_granted(req, false, i == 0, Some(i)) {
                    Decision::Grant { mode, alt } => {
                        let mut l = self.convert.remove(i);
                        self.grant_lock(&mut l, mode, alt, out);
                        self.grant.push(l);
                        grant_restart = true;
                        continue;
                    }
                    Decision::Demote if req.grmode != Some(Mode::Nl) => {
                        let l = &mut self.convert[i];
                        l.grmode = Some(Mode::Nl);
                        l.sbflags.set(SbFlags::DEMOTED);
                        demote_restart = true;
                    }
                    Decision::Deadlock => {
                        // A deadlock that formed while queued (Linux only warns and leaves
                        // both stuck): fail this conversion so the queue can move.
                        let mut l = self.convert.remove(i);
                        l.rqmode = None;
                        out.push(cast(&l, Status::Deadlock, l.grmode));
                        self.grant.push(l);
                        grant_restart = true;
                        continue;
                    }
                    _ => {
                        hi = hi.max(Some(req.rqmode));
                        if req.rqmode == Mode::Cw {
                            *cw = true;
                        }
                    }
                }
                i += 1;
            }
            if grant_restart {
                continue;
            }
            if demote_restart && !quit {
                quit = true;
                continue;
            }
            return high.max(hi);
        }
    }

    fn grant_pending_wait(&mut self, mut high: Option<Mode>, cw: &mut bool, out: &mut Vec<Effect>) -> Option<Mode> {
        let mut i = 0;
        while i < self.wait.len() {
            let req = summary(&self.wait[i]);
            if let Decision::Grant { mode, alt } = self.can_be_granted(req, false, i == 0, None) {
                let mut l = self.wait.remove(i);
                self.grant_lock(&mut l, mode, alt, out);
                self.grant.push(l);
            } else {
                high = high.max(Some(req.rqmode));
                if req.rqmode == Mode::Cw {
                    *cw = true;
                }
                i += 1;
            }
        }
        high
    }

    fn grant_pending_locks(&mut self, out: &mut Vec<Effect>) {
        let mut cw = false;
        let high = self.grant_pending_convert(None, &mut cw, out);
        let Some(high) = self.grant_pending_wait(high, &mut cw, out) else { return };
        for l in &mut self.grant {
            let gr = l.grmode.expect("granted lock has a mode");
            let needs = if (gr == Mode::Pr && cw) || (gr == Mode::Cw && high == Mode::Pr) {
                l.highbast < Mode::Ex as u8
            } else {
                l.highbast < high as u8 && !gr.compatible(high)
            };
            if needs {
                let mode = if cw && high == Mode::Pr && gr == Mode::Pr { Mode::Cw } else { high };
                if l.basts_sent & (1 << mode as u8) == 0 {
                    out.push(Effect::Bast { id: l.id, mode });
                    l.basts_sent |= 1 << mode as u8;
                }
                l.highbast = high as u8;
            }
        }
    }

    /// Blocking callbacks to the granted and converting locks that block `rq` (from `id`).
    fn send_blocking_asts(&mut self, id: LockId, rq: Mode, out: &mut Vec<Effect>) {
        for l in self.grant.iter_mut().chain(self.convert.iter_mut()) {
            if l.id == id {
                continue;
            }
            let gr = l.grmode.expect("granted lock has a mode");
            let needs = if (gr == Mode::Pr && rq == Mode::Cw) || (gr == Mode::Cw && rq == Mode::Pr) {
                l.highbast < Mode::Ex as u8
            } else {
                l.highbast < rq as u8 && !gr.compatible(rq)
            };
            if needs {
                if l.basts_sent & (1 << rq as u8) == 0 {
                    out.push(Effect::Bast { id: l.id, mode: rq });
                    l.basts_sent |= 1 << rq as u8;
                }
                l.highbast = rq as u8;
            }
        }
    }
}

fn summary(l: &Lkb) -> Req {
    Req { id: l.id, grmode: l.grmode, rqmode: l.rqmode.expect("queued lock has a requested mode"), flags: l.flags }
}

fn cast(l: &Lkb, status: Status, mode: Option<Mode>) -> Effect {
    Effect::Cast { id: l.id, status, mode, sbflags: l.sbflags, lvb: None, lvbseq: l.lvbseq }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mode::*;

    fn casts(out: &[Effect]) -> Vec<(LockId, Status, Option<Mode>)> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Cast { id, status, mode, .. } => Some((*id, *status, *mode)),
                Effect::Bast { .. } => None,
            })
            .collect()
    }

    fn basts(out: &[Effect]) -> Vec<(LockId, Mode)> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Bast { id, mode } => Some((*id, *mode)),
                Effect::Cast { .. } => None,
            })
            .collect()
    }

    fn req(r: &mut Resource, id: LockId, m: Mode, f: Flags) -> Vec<Effect> {
        let mut out = Vec::new();
        r.request(Lkb::new(id, m, f, None), &mut out);
        out
    }

    #[test]
    fn new_requests_grant_when_compatible_and_queue_fifo() {
        let mut r = Resource::new(32);
        assert_eq!(casts(&req(&mut r, 1, Pr, Flags::empty())), vec![(1, Status::Granted, Some(Pr))]);
        assert_eq!(casts(&req(&mut r, 2, Pr, Flags::empty())), vec![(2, Status::Granted, Some(Pr))]);
        let out = req(&mut r, 3, Ex, Flags::empty());
        assert!(casts(&out).is_empty());
        assert_eq!(basts(&out), vec![(1, Ex), (2, Ex)]);
        // A compatible PR must not jump the queued EX (6-4).
        let out = req(&mut r, 4, Pr, Flags::empty());
        assert!(casts(&out).is_empty() && basts(&out).is_empty(), "{out:?}");
        // NOQUEUE fails at once.
        assert_eq!(casts(&req(&mut r, 5, Cr, Flags::NOQUEUE)), vec![(5, Status::WouldBlock, None)]);
        let mut out = Vec::new();
        r.unlock(1, Flags::empty(), None, &mut out).unwrap();
        assert_eq!(casts(&out), vec![(1, Status::Unlocked, None)]);
        out.clear();
        r.unlock(2, Flags::empty(), None, &mut out).unwrap();
        assert_eq!(casts(&out), vec![(2, Status::Unlocked, None), (3, Status::Granted, Some(Ex))]);
        // 4 (PR) is now blocked by 3 (EX): one blocking callback for PR.
        assert_eq!(basts(&out), vec![(3, Pr)]);
    }

    #[test]
    fn blocking_callbacks_once_per_mode() {
        let mut r = Resource::new(32);
        req(&mut r, 1, Cr, Flags::empty());
        assert_eq!(basts(&req(&mut r, 2, Ex, Flags::empty())), vec![(1, Ex)]);
        assert!(basts(&req(&mut r, 3, Ex, Flags::empty())).is_empty(), "EX already announced");
    }

    #[test]
    fn conversions_go_before_new_requests_and_quecvt_queues() {
        let mut r = Resource::new(32);
        req(&mut r, 1, Pr, Flags::empty());
        req(&mut r, 2, Pr, Flags::empty());
        let mut out = Vec::new();
        r.convert(1, Ex, Flags::CONVERT, None, &mut out).unwrap();
        assert!(casts(&out).is_empty());
        assert_eq!(basts(&out), vec![(2, Ex)]);
        // QUECVT: compatible NL->CR conversion of a new lock still waits behind lock 1.
        out.clear();
        req(&mut r, 3, Nl, Flags::EXPEDITE);
        r.convert(3, Cr, Flags::CONVERT | Flags::QUECVT, None, &mut out).unwrap();
        assert!(casts(&out).is_empty());
        out.clear();
        r.unlock(2, Flags::empty(), None, &mut out).unwrap();
        // 1 is granted EX; 3 (CR) stays queued behind it (CR is incompatible with EX).
        assert_eq!(casts(&out), vec![(2, Status::Unlocked, None), (1, Status::Granted, Some(Ex))]);
        out.clear();
        r.convert(1, Nl, Flags::CONVERT, None, &mut out).unwrap();
        assert_eq!(casts(&out), vec![(1, Status::Granted, Some(Nl)), (3, Status::Granted, Some(Cr))]);
    }

    #[test]
    fn conversion_deadlock_fails_or_demotes() {
        let mut r = Resource::new(32);
        req(&mut r, 1, Pr, Flags::empty());
        req(&mut r, 2, Pr, Flags::empty());
        let mut out = Vec::new();
        r.convert(1, Ex, Flags::CONVERT, None, &mut out).unwrap();
        out.clear();
        r.convert(2, Ex, Flags::CONVERT, None, &mut out).unwrap();
        assert_eq!(casts(&out), vec![(2, Status::Deadlock, Some(Pr))]);
        out.clear();
        r.convert(2, Ex, Flags::CONVERT | Flags::CONVDEADLK, None, &mut out).unwrap();
        // 2 is demoted to NL, which lets 1 have EX; 2 then waits for EX.
        assert_eq!(casts(&out), vec![(1, Status::Granted, Some(Ex))]);
        assert_eq!(r.find(2).map(|(q, l)| (q, l.grmode)), Some((Queue::Convert, Some(Nl))));
        out.clear();
        r.unlock(1, Flags::empty(), None, &mut out).unwrap();
        let demoted =
            out.iter().any(|e| matches!(e, Effect::Cast { id: 2, sbflags, .. } if sbflags.contains(SbFlags::DEMOTED)));
        assert!(demoted, "{out:?}");
    }

    #[test]
    fn expedite_and_alternate_modes() {
        let mut r = Resource::new(32);
        req(&mut r, 1, Ex, Flags::empty());
        req(&mut r, 2, Pr, Flags::empty());
        assert_eq!(casts(&req(&mut r, 3, Nl, Flags::EXPEDITE)), vec![(3, Status::Granted, Some(Nl))]);
        let mut r = Resource::new(32);
        req(&mut r, 1, Pr, Flags::empty());
        let out = req(&mut r, 2, Pw, Flags::ALTPR);
        assert_eq!(casts(&out), vec![(2, Status::Granted, Some(Pr))]);
        assert!(matches!(&out[0], Effect::Cast { sbflags, .. } if sbflags.contains(SbFlags::ALTMODE)));
        let mut r = Resource::new(32);
        req(&mut r, 1, Cw, Flags::empty());
        assert_eq!(casts(&req(&mut r, 2, Ex, Flags::ALTCW)), vec![(2, Status::Granted, Some(Cw))]);
    }

    #[test]
    fn cancel_reverts_conversions_and_removes_waiters() {
        let mut r = Resource::new(32);
        req(&mut r, 1, Pr, Flags::empty());
        req(&mut r, 2, Pr, Flags::empty());
        req(&mut r, 3, Ex, Flags::empty());
        let mut out = Vec::new();
        r.convert(2, Ex, Flags::CONVERT, None, &mut out).unwrap();
        out.clear();
        assert!(r.cancel(2, &mut out).unwrap());
        assert_eq!(casts(&out), vec![(2, Status::Canceled, Some(Pr))]);
        out.clear();
        assert!(r.cancel(3, &mut out).unwrap());
        assert_eq!(casts(&out), vec![(3, Status::Canceled, None)]);
        out.clear();
        assert!(!r.cancel(1, &mut out).unwrap());
        assert!(out.is_empty());
        assert_eq!(r.unlock(9, Flags::empty(), None, &mut out), Err(ResourceError::NoSuchLock { id: 9 }));
    }

    #[test]
    fn value_block_rules() {
        let mut r = Resource::new(8);
        let v = Flags::VALBLK;
        let out = req(&mut r, 1, Ex, v);
        assert!(matches!(&out[0], Effect::Cast { lvb: Some(b), .. } if b == &[0; 8]));
        let mut out = Vec::new();
        // Down-conversion from EX writes.
        r.convert(1, Nl, Flags::CONVERT | v, Some(&[7; 8]), &mut out).unwrap();
        assert_eq!(r.lvb().0, &[7; 8]);
        assert_eq!(r.lvb().1, 1);
        // Up-conversion reads.
        out.clear();
        r.convert(1, Pr, Flags::CONVERT | v, None, &mut out).unwrap();
        assert!(matches!(&out[0], Effect::Cast { lvb: Some(b), lvbseq: 1, .. } if b == &[7; 8]));
        // Unlock from PR does not write.
        out.clear();
        r.unlock(1, v, Some(&[9; 8]), &mut out).unwrap();
        assert_eq!(r.lvb().0, &[7; 8]);
        // Unlock from PW writes; IVVALBLK invalidates.
        req(&mut r, 2, Pw, v);
        r.unlock(2, v, Some(&[5; 8]), &mut out).unwrap();
        assert_eq!(r.lvb(), (&[5u8; 8][..], 2, false));
        req(&mut r, 3, Ex, v);
        r.unlock(3, Flags::IVVALBLK, None, &mut out).unwrap();
        assert!(r.lvb().2);
        let out = req(&mut r, 4, Pr, v);
        assert!(matches!(&out[0], Effect::Cast { sbflags, .. } if sbflags.contains(SbFlags::VALNOTVALID)));
        // A purged PW/EX holder invalidates.
        let mut r = Resource::new(8);
        req(&mut r, (7 << 32) | 1, Ex, v);
        assert_eq!(r.purge(|id| lock_node(id) == 7), 1);
        assert!(r.lvb().2);
    }

    /// Property test: random operations on one resource, checked against a model of what
    /// each lock holds, plus invariants of the queues.
    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        #[derive(Debug, Clone, Copy, PartialEq)]
        enum St {
            Waiting,
            Granted(Mode),
            Converting(Mode),
        }

        struct Check {
            r: Resource,
            locks: BTreeMap<LockId, St>,
            valblk: BTreeSet<LockId>,
            value: Option<Vec<u8>>,
            next: LockId,
            basts: BTreeSet<(LockId, Mode)>,
            writes: u8,
        }

        impl Check {
            fn apply(&mut self, out: Vec<Effect>, wait_before: &[LockId]) {
                let mut granted_from_wait = Vec::new();
                for e in out {
                    match e {
                        Effect::Cast { id, status, mode, sbflags, lvb, .. } => {
                            let st = self.locks.get(&id).copied();
                            match status {
                                Status::Granted => {
                                    let m = mode.expect("granted mode");
                                    if st == Some(St::Waiting) && wait_before.contains(&id) {
                                        granted_from_wait.push(id);
                                    }
                                    if let (Some(v), true) = (&lvb, self.valblk.contains(&id)) {
                                        if !sbflags.contains(SbFlags::VALNOTVALID) {
                                            let want = self.value.clone().unwrap_or_else(|| vec![0; v.len()]);
                                            assert_eq!(v, &want, "lock {id} read a stale value block");
                                        }
                                    }
                                    self.locks.insert(id, St::Granted(m));
                                    self.basts.retain(|(l, _)| *l != id);
                                }
                                Status::Unlocked => {
                                    self.locks.remove(&id);
                                }
                                _ => match mode {
                                    Some(m) => {
                                        self.locks.insert(id, St::Granted(m));
                                    }
                                    None => {
                                        self.locks.remove(&id);
                                    }
                                },
                            }
                        }
                        Effect::Bast { id, mode } => {
                            let gr = match self.locks.get(&id) {
                                Some(St::Granted(g) | St::Converting(g)) => *g,
                                other => panic!("blocking callback to {id} in state {other:?}"),
                            };
                            assert!(!gr.compatible(mode), "bast {mode} to a compatible {gr} holder");
                            assert!(self.basts.insert((id, mode)), "repeated bast {mode} to {id}");
                        }
                    }
                }
                // FIFO: waiters are granted in queue order; none jumps one still waiting.
                let still: Vec<LockId> = self.r.wait.iter().map(|l| l.id).collect();
                for g in &granted_from_wait {
                    let pos = wait_before.iter().position(|x| x == g).expect("was waiting");
                    for ahead in &wait_before[..pos] {
                        assert!(!still.contains(ahead), "{g} granted before {ahead} waiting ahead of it");
                    }
                }
                self.invariants();
            }

            fn invariants(&self) {
                let held: Vec<(LockId, Mode)> =
                    self.r.grant.iter().chain(self.r.convert.iter()).map(|l| (l.id, l.grmode.expect("held"))).collect();
                for (i, (a, ma)) in held.iter().enumerate() {
                    for (b, mb) in &held[i + 1..] {
                        assert!(ma.compatible(*mb), "{a}:{ma} and {b}:{mb} granted together");
                    }
                }
                assert!(self.r.wait.iter().all(|l| l.grmode.is_none()));
                assert!(self.r.convert.iter().all(|l| l.rqmode.is_some()));
                assert_eq!(held.len() + self.r.wait.len(), self.locks.len(), "model and queues differ");
            }

            fn step(&mut self, op: u8, pick: usize, mode: Mode, fl: u8) {
                let wait_before: Vec<LockId> = self.r.wait.iter().map(|l| l.id).collect();
                let mut out = Vec::new();
                let ids: Vec<(LockId, St)> = self.locks.iter().map(|(k, v)| (*k, *v)).collect();
                let target = (!ids.is_empty()).then(|| ids[pick % ids.len()]);
                let mut flags = Flags::empty();
                if fl & 1 != 0 {
                    flags = flags | Flags::NOQUEUE;
                }
                if fl & 2 != 0 {
                    flags = flags | Flags::VALBLK;
                }
                match (op % 4, target) {
                    (0, _) | (_, None) => {
                        self.next += 1;
                        let id = self.next;
                        if fl & 4 != 0 {
                            flags = flags | if fl & 8 != 0 { Flags::ALTPR } else { Flags::ALTCW };
                        }
                        if mode == Mode::Nl && fl & 16 != 0 {
                            flags = flags | Flags::EXPEDITE;
                        }
                        if flags.contains(Flags::VALBLK) {
                            self.valblk.insert(id);
                        }
                        self.locks.insert(id, St::Waiting);
                        self.r.request(Lkb::new(id, mode, flags, None), &mut out);
                    }
                    (1, Some((id, St::Granted(gr)))) => {
                        if fl & 4 != 0 && Mode::quecvt_ok(gr, mode) {
                            flags = flags | Flags::QUECVT;
                        }
                        if fl & 8 != 0 {
                            flags = flags | Flags::CONVDEADLK;
                        }
                        let write =
                            gr >= Mode::Pw && !(gr == Mode::Pw && mode == Mode::Ex) && self.valblk.contains(&id);
                        self.writes = self.writes.wrapping_add(1);
                        let v = vec![self.writes; 8];
                        if write && flags.contains(Flags::VALBLK) {
                            // The write happens at once: a down-conversion is always granted.
                            self.value = Some(v.clone());
                        }
                        if !self.valblk.contains(&id) {
                            flags = flags.without(Flags::VALBLK);
                        }
                        self.locks.insert(id, St::Converting(gr));
                        self.r.convert(id, mode, flags | Flags::CONVERT, Some(&v), &mut out).expect("granted");
                        // A conversion that neither completed nor queued reverted.
                        if self.locks.get(&id) == Some(&St::Converting(gr))
                            && !self.r.convert.iter().any(|l| l.id == id)
                        {
                            self.locks.insert(id, St::Granted(gr));
                        }
                        if let Some(l) = self.r.convert.iter().find(|l| l.id == id) {
                            self.locks.insert(id, St::Converting(l.grmode.expect("held")));
                        }
                    }
                    (2, Some((id, St::Granted(gr)))) => {
                        self.writes = self.writes.wrapping_add(1);
                        let v = vec![self.writes; 8];
                        let vb = if self.valblk.contains(&id) { Flags::VALBLK } else { Flags::empty() };
                        if gr >= Mode::Pw && !vb.is_empty_flag() {
                            self.value = Some(v.clone());
                        }
                        self.r.unlock(id, vb, Some(&v), &mut out).expect("granted");
                    }
                    (3, Some((id, St::Waiting | St::Converting(_)))) => {
                        assert!(self.r.cancel(id, &mut out).expect("queued"));
                    }
                    _ => return,
                }
                // Keep converting locks' granted mode in step with demotions.
                for l in &self.r.convert {
                    if let Some(St::Converting(_)) = self.locks.get(&l.id) {
                        self.locks.insert(l.id, St::Converting(l.grmode.expect("held")));
                    }
                }
                self.apply(out, &wait_before);
            }
        }

        trait EmptyFlag {
            fn is_empty_flag(&self) -> bool;
        }
        impl EmptyFlag for Flags {
            fn is_empty_flag(&self) -> bool {
                self.0 == 0
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn random_operations_keep_the_rules(ops in proptest::collection::vec((any::<u8>(), any::<usize>(), 0u8..6, any::<u8>()), 1..120)) {
                let mut c = Check {
                    r: Resource::new(8),
                    locks: BTreeMap::new(),
                    valblk: BTreeSet::new(),
                    value: None,
                    next: 0,
                    basts: BTreeSet::new(),
                    writes: 0,
                };
                for (op, pick, m, fl) in ops {
                    c.step(op, pick, Mode::from_u8(m).expect("in range"), fl);
                }
                // Liveness: release every granted lock that is not converting, repeatedly;
                // every queued request and conversion must complete.
                for _ in 0..200 {
                    let idle: Vec<LockId> =
                        c.locks.iter().filter(|(_, s)| matches!(s, St::Granted(_))).map(|(k, _)| *k).collect();
                    if c.locks.is_empty() {
                        break;
                    }
                    prop_assert!(!idle.is_empty(), "stuck: {:?}", c.locks);
                    for id in idle {
                        let wait_before: Vec<LockId> = c.r.wait.iter().map(|l| l.id).collect();
                        let mut out = Vec::new();
                        c.r.unlock(id, Flags::empty(), None, &mut out).expect("granted");
                        c.apply(out, &wait_before);
                    }
                }
                prop_assert!(c.locks.is_empty() && c.r.is_empty());
            }
        }
    }
}
