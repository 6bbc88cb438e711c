//! The locks of this node's clients: the client calls (lock, convert, unlock, cancel, a
//! client going away) and the completions and blocking callbacks that come back for them
//! from the masters.

use tracing::debug;

use super::{Ast, Cancel, DlmError, LocalLock, Lockspace, Node, OpKind, Output, Owner, Pending};
use crate::mode::{Flags, Mode, SbFlags, Status};
use crate::resource::LockId;
use crate::wire::MAX_NAME;

impl Node {
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
            return Ok(self.adopt_orphan(ls, owner, name, mode, flags, lkid));
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

    /// Adopt an orphan of this node for `owner` (ORPHAN): one on `name` granted in exactly
    /// `mode`. Completes with NotFound if there is none, WouldBlock if there are only
    /// orphans in other modes; `lkid` is the id given back then.
    fn adopt_orphan(&mut self, ls: u32, owner: Owner, name: &[u8], mode: Mode, flags: Flags, lkid: LockId) -> LockId {
        let l = self.lockspaces.get_mut(&ls).expect("caller checked");
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
        id
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
    pub(super) fn reap_doomed(&mut self, ls: u32) {
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

    #[allow(clippy::too_many_arguments)]
    /// A completion from the master for a local lock.
    pub(super) fn local_cast(
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

    /// A blocking callback from the master for a local lock.
    pub(super) fn local_bast(&mut self, ls: u32, lkid: LockId, mode: Mode) {
        let Some(l) = self.lockspaces.get(&ls) else { return };
        if let Some(LocalLock { owner: Some(owner), grmode: Some(_), .. }) = l.locks.get(&lkid) {
            self.out.push(Output::Ast(Ast::Blocking { ls, lkid, owner: *owner, mode }));
        }
    }
}

fn check_lvb(want: usize, lvb: Option<&[u8]>) -> Result<(), DlmError> {
    match lvb {
        Some(v) if v.len() != want => Err(DlmError::BadLvb { want, got: v.len() }),
        _ => Ok(()),
    }
}
