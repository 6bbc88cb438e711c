//! POSIX byte-range locks (`fcntl` F_GETLK/F_SETLK/F_SETLKW) as the cluster sees them: one
//! [`PlockTable`] per (lockspace, resource name), kept by the resource's plock master.
//! Sans-IO and pure.
//!
//! An owner is a [`PlockOwner`]: the node, the client connection on that node (a mount
//! process) and the caller's owner number (the kernel's `fl_owner`, one per open file
//! description or process). Ranges are inclusive, `end == u64::MAX` meaning "to EOF".
//!
//! A set by an owner replaces what that owner held over the range, splitting and merging
//! its locks exactly as POSIX does (a read lock next to or over a read lock of the same
//! owner merges with it; a write over part of a read splits the read). Locks of different
//! owners conflict when they overlap and one of them is a write lock. A request that
//! conflicts either fails ([`SetOutcome::WouldBlock`]) or waits in a FIFO queue; every
//! change re-examines the queue in order and grants each waiter no held lock conflicts with.
//!
//! ```
//! use dlm::{Plock, PlockKind, PlockOwner, PlockReq, PlockTable, SetOutcome};
//! let a = PlockOwner { node: 1, client: 1, owner: 7 };
//! let b = PlockOwner { node: 2, client: 1, owner: 9 };
//! let mut t = PlockTable::default();
//! let mut granted = Vec::new();
//! let r = |id| PlockReq { node: 2, client: 1, id };
//! assert_eq!(t.set(Plock { who: a, pid: 100, kind: PlockKind::Write, start: 0, end: 9 }, None, &mut granted), SetOutcome::Granted);
//! assert_eq!(t.set(Plock { who: b, pid: 200, kind: PlockKind::Read, start: 5, end: 5 }, Some(r(1)), &mut granted), SetOutcome::Queued);
//! assert_eq!(t.get(b, PlockKind::Read, 5, 5).unwrap().pid, 100);
//! t.set(Plock { who: a, pid: 100, kind: PlockKind::Unlock, start: 0, end: u64::MAX }, None, &mut granted);
//! assert_eq!(granted, vec![r(1)]);
//! ```

use std::collections::VecDeque;

use crate::wire::NodeId;

/// The type of a byte-range lock request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum PlockKind {
    /// F_RDLCK: shared.
    Read,
    /// F_WRLCK: exclusive.
    Write,
    /// F_UNLCK: release the range.
    #[default]
    Unlock,
}

impl PlockKind {
    /// Wire value: 0 read, 1 write, 2 unlock.
    pub fn to_u8(self) -> u8 {
        match self {
            PlockKind::Read => 0,
            PlockKind::Write => 1,
            PlockKind::Unlock => 2,
        }
    }

    /// From the wire value.
    pub fn from_u8(v: u8) -> Option<PlockKind> {
        Some(match v {
            0 => PlockKind::Read,
            1 => PlockKind::Write,
            2 => PlockKind::Unlock,
            _ => return None,
        })
    }

    fn conflicts(self, other: PlockKind) -> bool {
        self == PlockKind::Write || other == PlockKind::Write
    }
}

/// Who holds a byte-range lock, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlockOwner {
    /// The node whose client holds it.
    pub node: NodeId,
    /// The client connection on that node (the daemon's connection number).
    pub client: u64,
    /// The caller's owner number (`fl_owner`).
    pub owner: u64,
}

/// A waiting request, named by its origin: node, client connection, request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlockReq {
    /// Node that sent it.
    pub node: NodeId,
    /// Client connection on that node.
    pub client: u64,
    /// Request id on that connection.
    pub id: u64,
}

/// A byte-range lock request as a client gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlockArgs {
    /// The caller's owner number (`fl_owner`: one per open file description or process).
    pub owner: u64,
    /// Process id, reported to others by F_GETLK.
    pub pid: u32,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive (`u64::MAX`: to EOF).
    pub end: u64,
    /// Read, Write or Unlock.
    pub kind: PlockKind,
}

/// A plock operation of a node's client, as the node sends it to the resource's plock
/// master (wire value in parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlockOpCode {
    /// (0) F_SETLK / F_SETLKW.
    Set,
    /// (1) F_GETLK.
    Get,
    /// (2) Release every lock of `args.owner` (close).
    ReleaseOwner,
    /// (3) Withdraw the waiting request `reqid` (the FUSE request was interrupted).
    Cancel,
    /// (4) The client connection is gone: drop its locks and waiting requests.
    DropClient,
}

impl PlockOpCode {
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            PlockOpCode::Set => 0,
            PlockOpCode::Get => 1,
            PlockOpCode::ReleaseOwner => 2,
            PlockOpCode::Cancel => 3,
            PlockOpCode::DropClient => 4,
        }
    }

    /// From the wire value.
    pub fn from_u8(v: u8) -> Option<PlockOpCode> {
        Some(match v {
            0 => PlockOpCode::Set,
            1 => PlockOpCode::Get,
            2 => PlockOpCode::ReleaseOwner,
            3 => PlockOpCode::Cancel,
            4 => PlockOpCode::DropClient,
            _ => return None,
        })
    }
}

/// A lock a node's client holds, as the node hands it to the plock master in recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlockCopy {
    /// Client connection on the sending node.
    pub client: u64,
    /// Owner number.
    pub owner: u64,
    /// Process id.
    pub pid: u32,
    /// Read or Write.
    pub kind: PlockKind,
    /// First byte.
    pub start: u64,
    /// Last byte.
    pub end: u64,
}

/// The lock that makes a request conflict (what F_GETLK reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlockConflict {
    /// Read or Write.
    pub kind: PlockKind,
    /// First byte.
    pub start: u64,
    /// Last byte (`u64::MAX`: to EOF).
    pub end: u64,
    /// Process id its owner gave.
    pub pid: u32,
    /// Node holding it.
    pub node: NodeId,
}

/// One held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plock {
    /// Owner.
    pub who: PlockOwner,
    /// Process id for reporting.
    pub pid: u32,
    /// Read or Write.
    pub kind: PlockKind,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
}

/// One queued request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlockWaiter {
    /// The request.
    pub req: PlockReq,
    /// The lock it asks for.
    pub lock: Plock,
}

/// What [`PlockTable::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// Applied.
    Granted,
    /// Conflicts and the caller does not wait (EAGAIN).
    WouldBlock,
    /// Conflicts; queued under its [`PlockReq`] until granted or cancelled.
    Queued,
    /// Conflicts, and waiting would close a cycle of owners waiting for each other on
    /// this resource (EDEADLK); not queued.
    Deadlock,
}

/// The byte-range locks of one resource.
#[derive(Debug, Clone, Default)]
pub struct PlockTable {
    /// Held locks, sorted by (owner, start); one owner's never overlap.
    locks: Vec<Plock>,
    waiters: VecDeque<PlockWaiter>,
}

fn overlaps(a_start: u64, a_end: u64, b_start: u64, b_end: u64) -> bool {
    a_start <= b_end && b_start <= a_end
}

impl PlockTable {
    /// True when nothing is held or waiting.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty() && self.waiters.is_empty()
    }

    /// Held locks, sorted by owner then start.
    pub fn locks(&self) -> &[Plock] {
        &self.locks
    }

    /// Waiting requests, oldest first.
    pub fn waiters(&self) -> impl Iterator<Item = &PlockWaiter> {
        self.waiters.iter()
    }

    /// F_GETLK: the first lock (lowest start) of another owner that conflicts with `kind`
    /// over `[start, end]`; None if the request could be granted now.
    pub fn get(&self, who: PlockOwner, kind: PlockKind, start: u64, end: u64) -> Option<PlockConflict> {
        if kind == PlockKind::Unlock || start > end {
            return None;
        }
        self.locks
            .iter()
            .filter(|l| l.who != who && overlaps(l.start, l.end, start, end) && l.kind.conflicts(kind))
            .min_by_key(|l| (l.start, l.who))
            .map(|l| PlockConflict { kind: l.kind, start: l.start, end: l.end, pid: l.pid, node: l.who.node })
    }

    /// F_SETLK (`wait` None) or F_SETLKW (`wait` names the request): apply it if nothing
    /// conflicts. Requests the change grants are appended to `granted`, in queue order.
    pub fn set(&mut self, lock: Plock, wait: Option<PlockReq>, granted: &mut Vec<PlockReq>) -> SetOutcome {
        let Plock { who, kind, start, end, .. } = lock;
        if start > end {
            return SetOutcome::Granted;
        }
        if self.get(who, kind, start, end).is_some() {
            let Some(req) = wait else { return SetOutcome::WouldBlock };
            if self.would_deadlock(&lock) {
                return SetOutcome::Deadlock;
            }
            self.waiters.push_back(PlockWaiter { req, lock });
            return SetOutcome::Queued;
        }
        self.apply(lock);
        self.wake(granted);
        SetOutcome::Granted
    }

    /// The owners holding locks that conflict with `lock`.
    fn blockers<'a>(&'a self, lock: &'a Plock) -> impl Iterator<Item = PlockOwner> + 'a {
        self.locks
            .iter()
            .filter(move |l| {
                l.who != lock.who && overlaps(l.start, l.end, lock.start, lock.end) && l.kind.conflicts(lock.kind)
            })
            .map(|l| l.who)
    }

    /// Whether `lock`'s owner would wait, through a chain of owners each waiting for the
    /// next's locks on this resource, for itself (deadlocks across resources or masters are
    /// not seen).
    fn would_deadlock(&self, lock: &Plock) -> bool {
        let mut todo: Vec<PlockOwner> = self.blockers(lock).collect();
        let mut seen = Vec::new();
        while let Some(o) = todo.pop() {
            if o == lock.who {
                return true;
            }
            if seen.contains(&o) {
                continue;
            }
            seen.push(o);
            for w in self.waiters.iter().filter(|w| w.lock.who == o) {
                todo.extend(self.blockers(&w.lock));
            }
        }
        false
    }

    /// Apply a lock or unlock of an owner without a conflict check (rebuilding a table, or a
    /// node's record of what its own clients hold).
    pub fn apply(&mut self, new: Plock) {
        let Plock { who, kind, start, end, .. } = new;
        if start > end {
            return;
        }
        let mut kept = Vec::with_capacity(self.locks.len() + 2);
        for l in self.locks.drain(..) {
            if l.who != who || !overlaps(l.start, l.end, start, end) {
                kept.push(l);
                continue;
            }
            if l.start < start {
                kept.push(Plock { end: start - 1, ..l });
            }
            if l.end > end {
                kept.push(Plock { start: end + 1, ..l });
            }
        }
        if kind != PlockKind::Unlock {
            // Merge with this owner's locks of the same kind that touch the range.
            let (mut s, mut e) = (start, end);
            kept.retain(|l| {
                let touches = l.who == who
                    && l.kind == kind
                    && (overlaps(l.start, l.end, s, e)
                        || l.end.checked_add(1) == Some(s)
                        || e.checked_add(1) == Some(l.start));
                if touches {
                    s = s.min(l.start);
                    e = e.max(l.end);
                }
                !touches
            });
            kept.push(Plock { start: s, end: e, ..new });
        }
        kept.sort_by_key(|l| (l.who, l.start));
        self.locks = kept;
    }

    /// Grant waiters, in queue order, that nothing held conflicts with any more.
    fn wake(&mut self, granted: &mut Vec<PlockReq>) {
        let mut i = 0;
        while i < self.waiters.len() {
            let w = self.waiters[i];
            if self.get(w.lock.who, w.lock.kind, w.lock.start, w.lock.end).is_none() {
                self.waiters.remove(i);
                self.apply(w.lock);
                granted.push(w.req);
                // A grant may have merged locks that earlier waiters skipped: they still
                // conflict (a grant only adds locks), so go on from here.
            } else {
                i += 1;
            }
        }
    }

    /// Withdraw a waiting request; false if it is not waiting (granted already, or unknown).
    pub fn cancel(&mut self, req: PlockReq) -> bool {
        let before = self.waiters.len();
        self.waiters.retain(|w| w.req != req);
        self.waiters.len() != before
    }

    /// Release every lock of owner `who` (close of the file); its waiting requests stay.
    pub fn release_owner(&mut self, who: PlockOwner, granted: &mut Vec<PlockReq>) {
        self.locks.retain(|l| l.who != who);
        self.wake(granted);
    }

    /// Drop the locks and waiting requests of every owner `gone` says is gone (a client
    /// connection closed, a node failed); returns the dropped waiting requests.
    pub fn drop_where(&mut self, gone: impl Fn(&PlockOwner) -> bool, granted: &mut Vec<PlockReq>) -> Vec<PlockReq> {
        self.locks.retain(|l| !gone(&l.who));
        let mut dropped = Vec::new();
        self.waiters.retain(|w| {
            let g = gone(&w.lock.who);
            if g {
                dropped.push(w.req);
            }
            !g
        });
        self.wake(granted);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: PlockOwner = PlockOwner { node: 1, client: 1, owner: 1 };
    const B: PlockOwner = PlockOwner { node: 2, client: 1, owner: 1 };
    use PlockKind::{Read as R, Unlock as U, Write as W};

    fn req(id: u64) -> PlockReq {
        PlockReq { node: 9, client: 9, id }
    }

    fn ranges(t: &PlockTable, who: PlockOwner) -> Vec<(PlockKind, u64, u64)> {
        t.locks().iter().filter(|l| l.who == who).map(|l| (l.kind, l.start, l.end)).collect()
    }

    #[test]
    fn same_owner_splits_merges_upgrades_and_downgrades() {
        let mut t = PlockTable::default();
        let mut g = Vec::new();
        t.set(Plock { who: A, pid: 1, kind: R, start: 0, end: 99 }, None, &mut g);
        t.set(Plock { who: A, pid: 1, kind: W, start: 10, end: 19 }, None, &mut g);
        assert_eq!(ranges(&t, A), vec![(R, 0, 9), (W, 10, 19), (R, 20, 99)]);
        t.set(Plock { who: A, pid: 1, kind: R, start: 10, end: 19 }, None, &mut g);
        assert_eq!(ranges(&t, A), vec![(R, 0, 99)]);
        t.set(Plock { who: A, pid: 1, kind: U, start: 50, end: 59 }, None, &mut g);
        assert_eq!(ranges(&t, A), vec![(R, 0, 49), (R, 60, 99)]);
        t.set(Plock { who: A, pid: 1, kind: R, start: 100, end: u64::MAX }, None, &mut g);
        assert_eq!(ranges(&t, A), vec![(R, 0, 49), (R, 60, u64::MAX)]);
        t.set(Plock { who: A, pid: 1, kind: W, start: 0, end: u64::MAX }, None, &mut g);
        assert_eq!(ranges(&t, A), vec![(W, 0, u64::MAX)]);
        t.set(Plock { who: A, pid: 1, kind: U, start: 0, end: u64::MAX }, None, &mut g);
        assert!(t.is_empty());
        assert!(g.is_empty());
    }

    #[test]
    fn conflicts_queue_in_order_and_cancel() {
        let mut t = PlockTable::default();
        let mut g = Vec::new();
        assert_eq!(t.set(Plock { who: A, pid: 10, kind: R, start: 0, end: 9 }, None, &mut g), SetOutcome::Granted);
        assert_eq!(t.set(Plock { who: B, pid: 20, kind: R, start: 5, end: 15 }, None, &mut g), SetOutcome::Granted);
        assert_eq!(t.set(Plock { who: B, pid: 20, kind: W, start: 5, end: 5 }, None, &mut g), SetOutcome::WouldBlock);
        let c = t.get(B, W, 0, 100).expect("conflict");
        assert_eq!((c.kind, c.start, c.end, c.pid, c.node), (R, 0, 9, 10, 1));
        let other = PlockOwner { owner: 2, ..A };
        assert_eq!(
            t.set(Plock { who: B, pid: 20, kind: W, start: 0, end: 3 }, Some(req(1)), &mut g),
            SetOutcome::Queued
        );
        assert_eq!(
            t.set(Plock { who: other, pid: 30, kind: W, start: 12, end: 12 }, Some(req(2)), &mut g),
            SetOutcome::Queued
        );
        assert_eq!(
            t.set(Plock { who: other, pid: 30, kind: R, start: 100, end: 100 }, Some(req(3)), &mut g),
            SetOutcome::Granted
        );
        assert!(t.cancel(req(2)));
        assert!(!t.cancel(req(2)));
        t.set(Plock { who: A, pid: 10, kind: U, start: 0, end: 1 }, None, &mut g);
        assert!(g.is_empty(), "A still holds 2..=3");
        t.release_owner(A, &mut g);
        assert_eq!(g, vec![req(1)]);
        assert_eq!(ranges(&t, B), vec![(W, 0, 3), (R, 5, 15)]);
        let dropped = t.drop_where(|w| w.node == 2, &mut g);
        assert!(dropped.is_empty());
        assert_eq!(t.locks().len(), 1);
    }

    #[test]
    fn a_wait_that_closes_a_cycle_is_refused() {
        let mut t = PlockTable::default();
        let mut g = Vec::new();
        let c = PlockOwner { node: 3, client: 1, owner: 1 };
        t.set(Plock { who: A, pid: 1, kind: W, start: 0, end: 0 }, None, &mut g);
        t.set(Plock { who: B, pid: 2, kind: W, start: 1, end: 1 }, None, &mut g);
        t.set(Plock { who: c, pid: 3, kind: R, start: 2, end: 2 }, None, &mut g);
        // A waits for B, B for C: no cycle.
        assert_eq!(
            t.set(Plock { who: A, pid: 1, kind: W, start: 1, end: 1 }, Some(req(1)), &mut g),
            SetOutcome::Queued
        );
        assert_eq!(
            t.set(Plock { who: B, pid: 2, kind: W, start: 2, end: 2 }, Some(req(2)), &mut g),
            SetOutcome::Queued
        );
        // C waiting for A closes A -> B -> C -> A.
        let r = t.set(Plock { who: c, pid: 3, kind: W, start: 0, end: 0 }, Some(req(3)), &mut g);
        assert_eq!(r, SetOutcome::Deadlock);
        assert_eq!(t.waiters().count(), 2);
        // Once A gives up waiting, C may wait for A.
        assert!(t.cancel(req(1)));
        assert_eq!(
            t.set(Plock { who: c, pid: 3, kind: W, start: 0, end: 0 }, Some(req(3)), &mut g),
            SetOutcome::Queued
        );
    }

    /// The naive model: per owner, the kind held on each of `N` cells; cell `N - 1` stands
    /// for `[N - 1, u64::MAX]`.
    const N: usize = 25;

    #[derive(Debug, Clone)]
    enum Op {
        Set { who: usize, kind: PlockKind, start: usize, end: usize, wait: bool },
        Get { who: usize, kind: PlockKind, start: usize, end: usize },
        Cancel { nth: usize },
        Release { who: usize },
        DropNode { node: u32 },
    }

    fn owners() -> [PlockOwner; 4] {
        [
            PlockOwner { node: 1, client: 1, owner: 1 },
            PlockOwner { node: 1, client: 1, owner: 2 },
            PlockOwner { node: 2, client: 1, owner: 1 },
            PlockOwner { node: 2, client: 2, owner: 1 },
        ]
    }

    fn cell_start(i: usize) -> u64 {
        i as u64
    }
    fn cell_end(i: usize) -> u64 {
        if i == N - 1 {
            u64::MAX
        } else {
            i as u64
        }
    }

    #[derive(Default)]
    struct Model {
        cells: [[Option<PlockKind>; N]; 4],
        waiters: Vec<(PlockReq, usize, PlockKind, usize, usize)>,
    }

    impl Model {
        fn blockers(&self, who: usize, kind: PlockKind, s: usize, e: usize) -> Vec<usize> {
            (0..4)
                .filter(|&o| o != who && (s..=e).any(|c| self.cells[o][c].is_some_and(|k| k.conflicts(kind))))
                .collect()
        }
        fn deadlock(&self, who: usize, kind: PlockKind, s: usize, e: usize) -> bool {
            let mut todo = self.blockers(who, kind, s, e);
            let mut seen = Vec::new();
            while let Some(o) = todo.pop() {
                if o == who {
                    return true;
                }
                if !seen.contains(&o) {
                    seen.push(o);
                    for w in self.waiters.iter().filter(|w| w.1 == o) {
                        todo.extend(self.blockers(w.1, w.2, w.3, w.4));
                    }
                }
            }
            false
        }
        fn conflict(&self, who: usize, kind: PlockKind, s: usize, e: usize) -> bool {
            kind != U
                && (0..4).any(|o| o != who && (s..=e).any(|c| self.cells[o][c].is_some_and(|k| k.conflicts(kind))))
        }
        fn apply(&mut self, who: usize, kind: PlockKind, s: usize, e: usize) {
            for c in s..=e {
                self.cells[who][c] = (kind != U).then_some(kind);
            }
        }
        fn wake(&mut self, granted: &mut Vec<PlockReq>) {
            let mut i = 0;
            while i < self.waiters.len() {
                let (r, who, kind, s, e) = self.waiters[i];
                if !self.conflict(who, kind, s, e) {
                    self.waiters.remove(i);
                    self.apply(who, kind, s, e);
                    granted.push(r);
                } else {
                    i += 1;
                }
            }
        }
        /// Maximal runs of one kind per owner: what POSIX merging gives.
        fn runs(&self, who: usize) -> Vec<(PlockKind, u64, u64)> {
            let mut v: Vec<(PlockKind, u64, u64)> = Vec::new();
            for c in 0..N {
                if let Some(k) = self.cells[who][c] {
                    match v.last_mut() {
                        Some(last) if last.0 == k && last.2 + 1 == c as u64 => last.2 = cell_end(c),
                        _ => v.push((k, cell_start(c), cell_end(c))),
                    }
                }
            }
            v
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        let kind = prop_oneof![Just(R), Just(W), Just(U)];
        let range = (0..N).prop_flat_map(|s| (Just(s), s..N));
        prop_oneof![
            6 => (0..4usize, kind.clone(), range.clone(), any::<bool>())
                .prop_map(|(who, kind, (start, end), wait)| Op::Set { who, kind, start, end, wait }),
            3 => (0..4usize, prop_oneof![Just(R), Just(W)], range)
                .prop_map(|(who, kind, (start, end))| Op::Get { who, kind, start, end }),
            1 => (0..8usize).prop_map(|nth| Op::Cancel { nth }),
            1 => (0..4usize).prop_map(|who| Op::Release { who }),
            1 => (1..3u32).prop_map(|node| Op::DropNode { node }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn table_agrees_with_a_per_byte_model(ops in proptest::collection::vec(op(), 1..60)) {
            let own = owners();
            let mut t = PlockTable::default();
            let mut m = Model::default();
            let mut next = 0u64;
            for op in ops {
                let (mut g1, mut g2) = (Vec::new(), Vec::new());
                match op {
                    Op::Set { who, kind, start, end, wait } => {
                        next += 1;
                        let r = PlockReq { node: own[who].node, client: own[who].client, id: next };
                        let got = t.set(Plock { who: own[who], pid: who as u32, kind, start: cell_start(start), end: cell_end(end) }, wait.then_some(r), &mut g1);
                        let want = if m.conflict(who, kind, start, end) {
                            if wait && m.deadlock(who, kind, start, end) {
                                SetOutcome::Deadlock
                            } else if wait {
                                m.waiters.push((r, who, kind, start, end));
                                SetOutcome::Queued
                            } else {
                                SetOutcome::WouldBlock
                            }
                        } else {
                            m.apply(who, kind, start, end);
                            m.wake(&mut g2);
                            SetOutcome::Granted
                        };
                        prop_assert_eq!(got, want);
                    }
                    Op::Get { who, kind, start, end } => {
                        let got = t.get(own[who], kind, cell_start(start), cell_end(end));
                        prop_assert_eq!(got.is_some(), m.conflict(who, kind, start, end));
                        if let Some(c) = got {
                            // It is a whole lock of a conflicting owner, overlapping the range,
                            // and no conflicting byte lies before it.
                            let o = (0..4).find(|&o| o != who && m.runs(o).contains(&(c.kind, c.start, c.end)));
                            prop_assert!(o.is_some(), "{:?} is not a lock", c);
                            prop_assert!(c.kind.conflicts(kind));
                            prop_assert!(overlaps(c.start, c.end, cell_start(start), cell_end(end)));
                            let first = (start..=end).find(|&x| (0..4).any(|o| o != who
                                && m.cells[o][x].is_some_and(|k| k.conflicts(kind)))).expect("conflict");
                            prop_assert_eq!(c.start.max(cell_start(start)), cell_start(first));
                        }
                    }
                    Op::Cancel { nth } => {
                        if let Some(&(r, ..)) = m.waiters.get(nth) {
                            m.waiters.remove(nth);
                            prop_assert!(t.cancel(r));
                        } else {
                            let none = PlockReq { node: 0, client: 0, id: 0 };
                            prop_assert!(!t.cancel(none));
                        }
                    }
                    Op::Release { who } => {
                        t.release_owner(own[who], &mut g1);
                        m.cells[who] = [None; N];
                        m.wake(&mut g2);
                    }
                    Op::DropNode { node } => {
                        let mut d1 = t.drop_where(|o| o.node == node, &mut g1);
                        let mut d2 = Vec::new();
                        for (o, w) in own.iter().enumerate() {
                            if w.node == node {
                                m.cells[o] = [None; N];
                            }
                        }
                        m.waiters.retain(|w| {
                            let gone = own[w.1].node == node;
                            if gone {
                                d2.push(w.0);
                            }
                            !gone
                        });
                        m.wake(&mut g2);
                        d1.sort();
                        d2.sort();
                        prop_assert_eq!(d1, d2);
                    }
                }
                prop_assert_eq!(&g1, &g2);
                for (o, w) in own.iter().enumerate() {
                    prop_assert_eq!(ranges(&t, *w), m.runs(o));
                }
                prop_assert_eq!(t.waiters().map(|w| w.req).collect::<Vec<_>>(),
                                m.waiters.iter().map(|w| w.0).collect::<Vec<_>>());
            }
        }
    }
}
