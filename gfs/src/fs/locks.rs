//! What the cluster's glocks cover, seen from the engine (lock_dlm).
//!
//! Every metadata block belongs to one lock: a dinode and the blocks it owns (extent leaves,
//! directory leaves and hash table blocks, its xattr block: each records its owner) belong
//! to the inode's lock; a resource group's header and bitmaps to the group's lock; the
//! master statfs block to the statfs lock. This node's own statfs change block is written
//! only by this node and needs none. The front end takes the locks an operation needs before
//! it runs ([`Fs::set_held`] tells the engine which); the engine checks every block it
//! changes against them, allocates only from resource groups held exclusively, and
//! [`Fs::invalidate`] forgets what a lock covers when the lock goes to another node.

use super::*;

/// A cluster lock (glock). The derived order is the lock order: every operation takes its
/// locks in ascending order (the layout lock first, then the rename lock, inodes by number,
/// resource groups, statfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockKey {
    /// The superblock and journal index: every operation holds it shared; gfs_grow and
    /// gfs_jadd take it exclusively (no other node runs anything meanwhile) and the others
    /// re-read the layout when they take it again.
    Layout,
    /// Serializes directory moves between directories (the ancestor check).
    Rename,
    /// A dinode and everything it owns.
    Inode(u64),
    /// A resource group's header and bitmaps.
    Rgrp(u32),
    /// The master statfs block.
    Statfs,
}

impl LockKey {
    /// The DLM resource name.
    pub fn resource_name(&self) -> Vec<u8> {
        match self {
            LockKey::Layout => b"layout".to_vec(),
            LockKey::Rename => b"rename".to_vec(),
            LockKey::Inode(i) => format!("inode-{i:x}").into_bytes(),
            LockKey::Rgrp(r) => format!("rgrp-{r}").into_bytes(),
            LockKey::Statfs => b"statfs".to_vec(),
        }
    }
}

/// Asks whether another node has an inode open (lock_dlm; none with lock_nolock).
#[derive(Default)]
pub(super) struct OpenCheck(Option<Box<dyn Fn(u64) -> bool + Send>>);

impl std::fmt::Debug for OpenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "OpenCheck(dlm)" } else { "OpenCheck(none)" })
    }
}

/// Which locks an operation holds, and how (lock_dlm only).
#[derive(Debug, Clone, Default)]
pub(super) struct Held {
    pub(super) shared: HashSet<LockKey>,
    pub(super) exclusive: HashSet<LockKey>,
    /// Dinodes allocated by the running operation (nobody else can know them yet).
    pub(super) new_inodes: HashSet<u64>,
    /// Blocks changed without the lock that covers them (a planning bug; reported).
    pub(super) violations: Vec<(u64, Option<LockKey>)>,
}

impl Fs {
    /// The lock that covers metadata block `blkno` holding `b`, if any.
    pub(super) fn owner_of(&self, blkno: u64, b: &Block) -> Option<LockKey> {
        let h = Header::peek(&b[..])?;
        match BlockType::from_u16(h.block_type)? {
            BlockType::Dinode => Some(LockKey::Inode(blkno)),
            BlockType::ExtentLeaf | BlockType::DirTable | BlockType::DirLeaf | BlockType::Xattr => {
                Some(LockKey::Inode(get_u64(&b[..], 24)))
            }
            BlockType::Rgrp | BlockType::Bitmap => {
                let i = blkno.checked_sub(self.sb.rg_start)? / self.sb.rg_blocks as u64;
                Some(LockKey::Rgrp(i as u32))
            }
            BlockType::Statfs if blkno == self.sb.master_statfs => Some(LockKey::Statfs),
            _ => None,
        }
    }

    /// Turns on lock checking (lock_dlm): from now on the engine changes only what the locks
    /// given to [`Fs::set_held`] cover. What the mount read so far goes home and is
    /// forgotten (it was cached before blocks were tracked by lock).
    pub fn set_clustered(&mut self) -> Result<()> {
        self.write_back()?;
        self.drop_caches();
        self.held = Some(Held::default());
        Ok(())
    }

    /// Whether this mount coordinates with other nodes through glocks.
    pub fn clustered(&self) -> bool {
        self.held.is_some()
    }

    /// The locks the next operation holds (shared, exclusive). Resource groups whose
    /// counters went stale are re-read.
    pub fn set_held(
        &mut self,
        shared: impl IntoIterator<Item = LockKey>,
        exclusive: impl IntoIterator<Item = LockKey>,
    ) -> Result<()> {
        let Some(h) = self.held.as_mut() else { return Ok(()) };
        h.shared = shared.into_iter().collect();
        h.exclusive = exclusive.into_iter().collect();
        h.new_inodes.clear();
        h.violations.clear();
        if self.layout_stale && (h.shared.contains(&LockKey::Layout) || h.exclusive.contains(&LockKey::Layout)) {
            // Taken again after gfs_grow or gfs_jadd ran elsewhere: the new layout.
            self.layout_stale = false;
            self.reload_layout()?;
        }
        let Some(h) = self.held.as_ref() else { return Ok(()) };
        let rgs: Vec<u32> = h
            .shared
            .iter()
            .chain(h.exclusive.iter())
            .filter_map(|k| if let LockKey::Rgrp(i) = k { Some(*i) } else { None })
            .collect();
        for i in rgs {
            if self.rgs.get(i as usize).is_some_and(|r| r.stale) {
                self.refresh_rgrp(i)?;
            }
        }
        Ok(())
    }

    /// Blocks the last operation changed without holding their lock (should be none).
    pub fn take_violations(&mut self) -> Vec<(u64, Option<LockKey>)> {
        self.held.as_mut().map(|h| std::mem::take(&mut h.violations)).unwrap_or_default()
    }

    /// lock_dlm: records that the running operation changes `blkno` (holding `b`): indexes
    /// it under the lock that covers it, and notes a violation if that lock is not held.
    pub(super) fn note_write(&mut self, blkno: u64, b: &Block) {
        if self.held.is_none() {
            return;
        }
        let owner = self.owner_of(blkno, b);
        let statfs_block = self.journal.statfs_block;
        let h = self.held.as_mut().expect("checked above");
        let ok = match owner {
            _ if h.exclusive.contains(&LockKey::Layout) => true,
            None => blkno == statfs_block,
            Some(LockKey::Inode(i)) => h.exclusive.contains(&LockKey::Inode(i)) || h.new_inodes.contains(&i),
            Some(k) => h.exclusive.contains(&k),
        };
        if !ok {
            h.violations.push((blkno, owner));
        }
        if let Some(k) = owner {
            self.owned.entry(k).or_default().insert(blkno);
        }
    }

    /// Whether resource group `rgi` may be allocated from (or freed into) now.
    pub(super) fn rg_writable(&self, rgi: usize) -> bool {
        match &self.held {
            None => true,
            Some(h) => h.exclusive.contains(&LockKey::Rgrp(rgi as u32)) || h.exclusive.contains(&LockKey::Layout),
        }
    }

    /// Records a dinode allocated by the running operation.
    pub(super) fn note_new_inode(&mut self, ino: u64) {
        if let Some(h) = self.held.as_mut() {
            h.new_inodes.insert(ino);
        }
    }

    /// Forgets every cached block `key` covers (another node may change them now). Blocks
    /// changed here and not yet home are kept: before a glock goes to another node the
    /// caller writes everything back first ([`Fs::write_back`]).
    pub fn invalidate(&mut self, key: LockKey) {
        if key == LockKey::Layout {
            self.layout_stale = true;
        }
        if let LockKey::Rgrp(i) = key {
            if let Some(r) = self.rgs.get_mut(i as usize) {
                r.stale = true;
            }
        }
        let Some(blocks) = self.owned.remove(&key) else { return };
        for b in blocks {
            if self.dirty.contains(&b) || self.committed.contains_key(&b) {
                // Changed here and not home yet (a new inode taken afresh): newer than disk.
                self.owned.entry(key).or_default().insert(b);
                continue;
            }
            self.cache.remove(&b);
            self.dinodes.remove(&b);
            self.leaves.remove(&b);
        }
    }

    /// Before a lock goes to another node: everything this node changed goes home.
    pub fn write_back(&mut self) -> Result<()> {
        self.commit()?;
        self.checkpoint()
    }

    /// After taking resource group `i`'s lock afresh: its counters as on disk.
    pub fn refresh_rgrp(&mut self, i: u32) -> Result<()> {
        let i = i as usize;
        if i >= self.rgs.len() {
            return Ok(());
        }
        let addr = self.rgs[i].addr;
        self.cache.remove(&addr);
        self.rgs[i].rg = Rgrp::decode(&self.read_meta(addr)?[..], addr)?;
        self.rgs[i].stale = false;
        Ok(())
    }

    /// Resource groups to allocate `blocks` blocks from, best first: the ones this node
    /// prefers (spread by journal slot so nodes do not contend), with enough free blocks as
    /// last seen.
    pub fn alloc_candidates(&self, blocks: u64) -> Vec<u32> {
        let n = self.rgs.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.rg_hint % n;
        let mut v: Vec<u32> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| self.rgs[i].rg.free as u64 >= blocks.max(1))
            .map(|i| i as u32)
            .collect();
        if v.is_empty() {
            // Nothing big enough as far as we know: the group with the most free blocks.
            if let Some((i, _)) = self.rgs.iter().enumerate().max_by_key(|(_, r)| r.rg.free) {
                v.push(i as u32);
            }
        }
        v
    }

    /// Free blocks of resource group `i` as last seen (exact while its lock is held).
    pub fn rgrp_free(&self, i: u32) -> u64 {
        self.rgs.get(i as usize).map(|r| r.rg.free as u64).unwrap_or(0)
    }

    /// Number of journals (node slots).
    pub fn journal_count(&self) -> u32 {
        self.sb.journal_count
    }

    /// Number of resource groups.
    pub fn rgrp_count(&self) -> u32 {
        self.rgs.len() as u32
    }

    /// Makes allocations start in resource group `i` (lock_dlm spreads nodes by slot).
    pub fn set_rgrp_hint(&mut self, i: u32) {
        if !self.rgs.is_empty() {
            self.rg_hint = i as usize % self.rgs.len();
        }
    }

    /// The inode `name` in directory `dir` names.
    pub fn lookup_ino(&mut self, dir: u64, name: &[u8]) -> Result<u64> {
        Ok(self.lookup_entry(dir, name)?.0)
    }

    /// The parent of directory `dir` (itself for the root).
    pub fn parent_of(&mut self, dir: u64) -> Result<u64> {
        Ok(self.dinode(dir)?.parent)
    }

    /// Whether `ino` is a directory.
    pub fn is_dir(&mut self, ino: u64) -> Result<bool> {
        Ok(self.dinode(ino)?.is_dir())
    }

    /// Replays the journals of `slots` (nodes that are gone; the caller holds their journal
    /// locks and the recovery lock). Returns the transactions replayed.
    pub fn recover_slots(&mut self, slots: &[u32]) -> Result<u64> {
        if slots.is_empty() {
            return Ok(0);
        }
        self.write_back()?;
        let mut raw = Box::new([0u8; BLOCK_SIZE]);
        self.dev.read_at(&mut raw[..], self.sb.jindex_block * bs())?;
        let jindex = JIndex::decode(&raw[..], self.sb.jindex_block)?;
        let mut total = 0;
        for &s in slots {
            let Some(j) = jindex.journals.get(s as usize).copied() else { continue };
            let (count, clean, _) = self.replay_journal(j, s, true)?;
            if count > 0 || !clean {
                tracing::info!(slot = s, transactions = count, "recovered the journal of a node that is gone");
            }
            total += count;
        }
        if total > 0 {
            // Replayed blocks belong to locks this node did not hold; drop anything cached.
            self.drop_caches();
            for r in &mut self.rgs {
                r.stale = true;
            }
        }
        Ok(total)
    }
}

impl Fs {
    /// Blocks freed by the last operations in resource groups whose locks they did not hold
    /// (lock_dlm): they stay allocated until [`Fs::free_deferred`] runs with those locks.
    pub fn take_deferred_frees(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.deferred_frees)
    }

    /// Frees blocks given back by [`Fs::take_deferred_frees`] (their groups' locks held).
    pub fn free_deferred(&mut self, blocks: &[u64]) -> Result<()> {
        for &b in blocks {
            self.free_block(b)?;
        }
        Ok(())
    }

    /// The resource group holding block `blkno`.
    pub fn rgrp_of(&self, blkno: u64) -> Option<u32> {
        self.rg_of(blkno).map(|i| i as u32)
    }

    /// Free space as the cluster sees it (lock_dlm): the master statfs block plus every
    /// node's change block as on disk, with this node's own changes as it knows them.
    pub fn statfs_cluster(&mut self) -> Result<FsStat> {
        let info = crate::df(&*self.dev, &self.sb).map_err(|e| match e {
            crate::MkfsError::Device(d) => FsError::Device(d),
            crate::MkfsError::Format(f) => FsError::Corrupt(f),
            other => FsError::Journal(other.to_string()),
        })?;
        let a = self.journal.statfs_block;
        let mut raw = Box::new([0u8; BLOCK_SIZE]);
        self.dev.read_at(&mut raw[..], a * bs())?;
        let home = Statfs::decode(&raw[..], a)?;
        let mine = Statfs::decode(&self.read_meta(a)?[..], a)?;
        // Blocks freed since the last checkpoint count as free: make_room frees them up.
        let free = info.free as i64 - home.free + mine.free + self.statfs_free;
        let dinodes = info.dinodes as i64 - home.dinodes + mine.dinodes + self.statfs_dinodes;
        let total: u64 = self.rgs.iter().map(|r| r.rg.data_count as u64).sum();
        Ok(FsStat { total, free: free.clamp(0, total as i64) as u64, dinodes: dinodes.max(0) as u64 })
    }
}

impl Fs {
    /// Inodes unlinked while open on this node (freed at their last close or at unmount).
    pub fn orphan_list(&self) -> Vec<u64> {
        self.orphans.iter().copied().collect()
    }

    /// Frees an inode unlinked while open (unmount; its glock held in EX).
    pub fn destroy_orphan(&mut self, ino: u64) -> Result<()> {
        if self.orphans.remove(&ino) {
            self.open.remove(&ino);
            if !self.open_elsewhere(ino) {
                self.destroy_inode(ino)?;
            }
        }
        Ok(())
    }
}

impl Fs {
    /// lock_dlm: how to ask whether another node has an inode open. An inode whose last link
    /// goes while it is open on another node is left for that node to free at its last close.
    pub fn set_open_check(&mut self, f: Box<dyn Fn(u64) -> bool + Send>) {
        self.open_check = OpenCheck(Some(f));
    }

    pub(super) fn open_elsewhere(&self, ino: u64) -> bool {
        self.open_check.0.as_ref().is_some_and(|f| f(ino))
    }

    /// Open handles on `ino` on this node.
    pub fn open_count(&self, ino: u64) -> u32 {
        self.open.get(&ino).copied().unwrap_or(0)
    }
}

impl Fs {
    /// Before an operation that may allocate `blocks` changes anything: if only blocks freed
    /// since the last checkpoint (not reusable before it) could satisfy it, commit and
    /// checkpoint now so they are. Without this a filesystem whose free space was just freed
    /// would refuse writes until the next checkpoint.
    pub fn make_room(&mut self, blocks: u64) -> Result<()> {
        if blocks == 0 || self.pinned.is_empty() {
            return Ok(());
        }
        let free: u64 = (0..self.rgs.len()).filter(|&i| self.rg_writable(i)).map(|i| self.rgs[i].rg.free as u64).sum();
        if free.saturating_sub(self.pinned.len() as u64) < blocks {
            tracing::debug!(blocks, pinned = self.pinned.len(), "checkpoint to reuse freed blocks");
            self.write_back()?;
        }
        Ok(())
    }
}
