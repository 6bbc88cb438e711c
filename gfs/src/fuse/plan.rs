//! Request planning (lock_dlm): which glocks a request needs ([`Need`], one plan per kind of
//! request), taking them in lock order outside the engine's mutex and re-planning until the
//! plan is covered, then running the request; with lock_nolock it runs at once (the plan only
//! says how much it may allocate).

use super::{GfsFuse, Shared, COMMIT_BLOCKS};
use crate::fs::{Attr, Fs, FsError, LockKey};
use crate::glock::{Glocks, HeldLocks, Want};
use fuser::Errno;

impl Shared {
    /// Runs `f` once the glocks `plan` names are held (lock_dlm). `plan` is called under
    /// the engine's mutex with the glocks held so far; it adds what the request needs and may
    /// read only what those glocks cover ([`Need::lock`] says whether a glock is held yet).
    pub(super) fn op<T>(
        &self,
        gl: &Glocks,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        self.op_held(gl, plan, f).0
    }

    /// [`Shared::op`], also giving back the glocks still held (a reply that the kernel will
    /// cache must be sent before they go: a demotion then finds it to take back).
    fn op_held<T>(
        &self,
        gl: &Glocks,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> (Result<T, FsError>, HeldLocks) {
        let mut held = HeldLocks::default();
        let r = self.op_inner(gl, &mut held, plan, f);
        (r, held)
    }

    fn op_inner<T>(
        &self,
        gl: &Glocks,
        held: &mut HeldLocks,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let mut f = Some(f);
        for _ in 0..64 {
            let mut g = self.fs.lock().expect("fs mutex");
            let fs = g.as_mut().ok_or(FsError::Journal("the filesystem is unmounted".into()))?;
            let (sh, ex) = held.split();
            fs.set_held(sh, ex)?;
            let mut need = Need::default();
            need.lock(held, LockKey::Layout, Want::Sh);
            plan(fs, held, &mut need)?;
            if need.alloc > 0 {
                let have: u64 = held
                    .split()
                    .1
                    .into_iter()
                    .filter_map(|k| if let LockKey::Rgrp(i) = k { Some(fs.rgrp_free(i)) } else { None })
                    .sum();
                if have < need.alloc {
                    if let Some(c) = fs
                        .alloc_candidates(need.alloc - have)
                        .into_iter()
                        .find(|&c| !held.covers(LockKey::Rgrp(c), Want::Ex))
                    {
                        need.keys.push((LockKey::Rgrp(c), Want::Ex));
                    }
                }
            }
            if need.keys.iter().all(|&(k, w)| held.covers(k, w)) {
                fs.make_room(need.alloc)?;
                let run = f.take().expect("runs once");
                let r = run(fs);
                for (b, k) in fs.take_violations() {
                    tracing::error!(block = b, lock = ?k, "block changed without its glock (bug)");
                }
                let deferred = fs.take_deferred_frees();
                if fs.dirty_blocks() >= COMMIT_BLOCKS {
                    fs.commit()?;
                }
                drop(g);
                if !deferred.is_empty() {
                    self.free_deferred(gl, deferred);
                }
                return r;
            }
            drop(g);
            let fresh = gl.acquire(held, &need.keys).map_err(|e| FsError::Journal(e.to_string()))?;
            if !fresh.is_empty() {
                let mut g = self.fs.lock().expect("fs mutex");
                if let Some(fs) = g.as_mut() {
                    for k in fresh {
                        fs.invalidate(k);
                    }
                }
            }
        }
        Err(FsError::Journal("the glocks an operation needs kept changing".into()))
    }

    /// Frees blocks an operation gave back in resource groups it did not hold.
    fn free_deferred(&self, gl: &Glocks, blocks: Vec<u64>) {
        let r = self.op(
            gl,
            |fs, h, n| {
                for &b in &blocks {
                    if let Some(i) = fs.rgrp_of(b) {
                        n.lock(h, LockKey::Rgrp(i), Want::Ex);
                    }
                }
                Ok(())
            },
            |fs| fs.free_deferred(&blocks),
        );
        if let Err(e) = r {
            tracing::error!(error = %e, blocks = blocks.len(), "cannot free blocks (left allocated; gfs_fsck reclaims them)");
        }
    }
}

/// What a request needs (lock_dlm): glocks, and how many blocks it may allocate.
#[derive(Debug, Default)]
pub struct Need {
    keys: Vec<(LockKey, Want)>,
    pub(super) alloc: u64,
}

impl Need {
    /// Adds `key`; returns whether it is held already (so the plan may read what it covers).
    pub(super) fn lock(&mut self, held: &HeldLocks, key: LockKey, want: Want) -> bool {
        self.keys.push((key, want));
        held.covers(key, want)
    }
}

impl GfsFuse {
    /// Runs `f` against the engine: with lock_dlm once the glocks `plan` names are held
    /// (see [`Shared::op`]), with lock_nolock at once.
    pub(super) fn run<T>(
        &self,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> Result<T, Errno> {
        self.run_held(plan, f).0
    }

    /// [`GfsFuse::run`], keeping the glocks until the caller drops them (after its reply).
    pub(super) fn run_held<T>(
        &self,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> (Result<T, Errno>, Option<HeldLocks>) {
        let (r, held) = match &self.glocks {
            Some(gl) => {
                let (r, h) = self.shared.op_held(gl, plan, f);
                (r, Some(h))
            }
            None => (self.run_local(plan, f), None),
        };
        let r = r.map_err(|e| {
            if matches!(e, FsError::Device(_) | FsError::Corrupt(_) | FsError::Journal(_)) {
                tracing::error!(error = %e, "I/O error");
            }
            Errno::from_i32(e.errno())
        });
        (r, held)
    }

    /// lock_nolock: runs `f` at once.
    fn run_local<T>(
        &self,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let mut g = self.shared.fs.lock().expect("fs mutex");
        let fs = g.as_mut().ok_or(FsError::Journal("the filesystem is unmounted".into()))?;
        // The plan only says how much the request may allocate here (it reads nothing
        // without glocks).
        let mut need = Need::default();
        let _ = plan(fs, &HeldLocks::default(), &mut need);
        fs.make_room(need.alloc)?;
        let r = f(fs);
        if fs.dirty_blocks() >= COMMIT_BLOCKS {
            fs.commit()?;
        }
        r
    }

    /// lock_dlm, after mknod/mkdir/symlink: the kernel will cache the new inode's
    /// attributes, so hold its glock shared too (another node changing it then asks for it,
    /// and the kernel's copy is taken back).
    pub(super) fn created_entry(&self, r: &Result<Attr, Errno>, held: &mut Option<HeldLocks>) {
        let (Some(gl), Some(h), Ok(a)) = (&self.glocks, held.as_mut(), r) else { return };
        match gl.acquire(h, &[(LockKey::Inode(a.ino), Want::Sh)]) {
            Ok(fresh) => {
                if let Some(fs) = self.shared.fs.lock().expect("fs mutex").as_mut() {
                    for k in fresh {
                        fs.invalidate(k);
                    }
                }
            }
            Err(e) => tracing::warn!(inode = a.ino, error = %e, "cannot take a new inode's glock"),
        }
    }
}

/// Blocks a namespace change may allocate (a dinode, directory leaves, hash table blocks).
pub(super) const NAMESPACE_ALLOC: u64 = 16;

type PlanResult = Result<(), FsError>;

/// No glocks (the request touches only this node's state or journal).
pub(super) fn no_locks(_: &mut Fs, _: &HeldLocks, _: &mut Need) -> PlanResult {
    Ok(())
}

/// Reads inode `ino`.
pub(super) fn shared(ino: u64) -> impl Fn(&mut Fs, &HeldLocks, &mut Need) -> PlanResult {
    move |_, h, n| {
        n.lock(h, LockKey::Inode(ino), Want::Sh);
        Ok(())
    }
}

/// Changes inode `ino`, allocating at most `alloc` blocks.
pub(super) fn exclusive(ino: u64, alloc: u64) -> impl Fn(&mut Fs, &HeldLocks, &mut Need) -> PlanResult {
    move |_, h, n| {
        n.lock(h, LockKey::Inode(ino), Want::Ex);
        n.alloc = alloc;
        Ok(())
    }
}

/// Looks `name` up in `parent`: the directory, then the inode it names.
pub(super) fn lookup_plan(parent: u64, name: &[u8]) -> impl Fn(&mut Fs, &HeldLocks, &mut Need) -> PlanResult + '_ {
    move |fs, h, n| {
        if name.len() > crate::format::MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        if !n.lock(h, LockKey::Inode(parent), Want::Sh) {
            return Ok(());
        }
        let child = match name {
            b"." => parent,
            b".." => fs.parent_of(parent)?,
            _ => fs.lookup_ino(parent, name)?,
        };
        n.lock(h, LockKey::Inode(child), Want::Sh);
        Ok(())
    }
}

/// unlink/rmdir: the directory and the inode losing a link.
pub(super) fn remove_plan(parent: u64, name: &[u8]) -> impl Fn(&mut Fs, &HeldLocks, &mut Need) -> PlanResult + '_ {
    move |fs, h, n| {
        if !n.lock(h, LockKey::Inode(parent), Want::Ex) {
            return Ok(());
        }
        let victim = fs.lookup_ino(parent, name)?;
        n.lock(h, LockKey::Inode(victim), Want::Ex);
        Ok(())
    }
}

/// rename: both directories, the inode moved, the inode replaced; a directory moving to
/// another parent also takes the rename glock and reads the new parent's ancestors (to
/// refuse moving a directory below itself).
pub(super) fn rename_plan<'a>(
    parent: u64,
    name: &'a [u8],
    newparent: u64,
    newname: &'a [u8],
) -> impl Fn(&mut Fs, &HeldLocks, &mut Need) -> PlanResult + 'a {
    move |fs, h, n| {
        n.alloc = NAMESPACE_ALLOC;
        let a = n.lock(h, LockKey::Inode(parent), Want::Ex);
        let b = n.lock(h, LockKey::Inode(newparent), Want::Ex);
        if !(a && b) {
            return Ok(());
        }
        let moved = fs.lookup_ino(parent, name)?;
        if !n.lock(h, LockKey::Inode(moved), Want::Ex) {
            return Ok(());
        }
        match fs.lookup_ino(newparent, newname) {
            Ok(t) => {
                n.lock(h, LockKey::Inode(t), Want::Ex);
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        if parent != newparent && fs.is_dir(moved)? {
            if !n.lock(h, LockKey::Rename, Want::Ex) {
                return Ok(());
            }
            let mut at = newparent;
            loop {
                let up = fs.parent_of(at)?;
                if up == at || up == 0 || !n.lock(h, LockKey::Inode(up), Want::Sh) {
                    break;
                }
                at = up;
            }
        }
        Ok(())
    }
}
