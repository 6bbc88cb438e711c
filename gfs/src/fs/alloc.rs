//! The allocator: resource group bitmaps (block states, allocation near a goal, freeing with
//! pinning until the next checkpoint) and the statfs counters (this node's change block, its
//! folding into the master statfs block, free space).

use super::*;

impl Fs {
    pub(super) fn bitmap_addr(&self, rgi: usize, entry: u64) -> (u64, u32) {
        let r = &self.rgs[rgi];
        (r.addr + 1 + entry / BITMAP_BLOCKS_PER_BLOCK as u64, (entry % BITMAP_BLOCKS_PER_BLOCK as u64) as u32)
    }

    pub(super) fn rg_of(&self, blkno: u64) -> Option<usize> {
        if blkno < self.sb.rg_start {
            return None;
        }
        let i = ((blkno - self.sb.rg_start) / self.sb.rg_blocks as u64) as usize;
        let r = self.rgs.get(i)?;
        (blkno >= r.rg.data0 && blkno < r.rg.data0 + r.rg.data_count as u64).then_some(i)
    }

    /// State of a data block in its bitmap.
    pub fn block_state(&mut self, blkno: u64) -> Result<BlockState> {
        let rgi = self.rg_of(blkno).ok_or(FsError::Invalid)?;
        let (baddr, entry) = self.bitmap_addr(rgi, blkno - self.rgs[rgi].rg.data0);
        let bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
        Ok(bm.get(entry))
    }

    pub(super) fn set_state(&mut self, blkno: u64, s: BlockState) -> Result<()> {
        let rgi = self.rg_of(blkno).ok_or(FsError::Invalid)?;
        if !self.rg_writable(rgi) {
            return Err(FsError::Journal(format!("resource group {rgi} changed without its lock")));
        }
        let (baddr, entry) = self.bitmap_addr(rgi, blkno - self.rgs[rgi].rg.data0);
        let mut bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
        let old = bm.get(entry);
        bm.set(entry, s);
        self.write_meta(baddr, bm.encode(baddr));
        let r = &mut self.rgs[rgi];
        match (old == BlockState::Free, s == BlockState::Free) {
            (true, false) => {
                r.rg.free -= 1;
                self.statfs_free -= 1;
            }
            (false, true) => {
                r.rg.free += 1;
                self.statfs_free += 1;
            }
            _ => {}
        }
        if old == BlockState::Dinode && s != BlockState::Dinode {
            r.rg.dinodes -= 1;
            self.statfs_dinodes -= 1;
        } else if old != BlockState::Dinode && s == BlockState::Dinode {
            r.rg.dinodes += 1;
            self.statfs_dinodes += 1;
        }
        let (addr, rg) = (r.addr, r.rg);
        self.write_meta(addr, rg.encode(addr));
        Ok(())
    }

    /// Allocates one block, preferably `goal` (to extend a run).
    pub(super) fn alloc(&mut self, s: BlockState, goal: Option<u64>) -> Result<u64> {
        let b = self.find_block(goal)?;
        self.set_state(b, s)?;
        Ok(b)
    }

    /// Allocates up to `max` contiguous data blocks (at least one), starting at `goal` if it
    /// is free: returns (first block, count).
    pub(super) fn alloc_run(&mut self, goal: Option<u64>, max: u64) -> Result<(u64, u64)> {
        let first = self.find_block(goal)?;
        let rgi = self.rg_of(first).expect("found in a group");
        let (baddr, entry) = self.bitmap_addr(rgi, first - self.rgs[rgi].rg.data0);
        let mut bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
        let room = (BITMAP_BLOCKS_PER_BLOCK - entry) as u64;
        let in_rg = self.rgs[rgi].rg.data0 + self.rgs[rgi].rg.data_count as u64 - first;
        let mut n = 0u64;
        while n < max.min(room).min(in_rg)
            && bm.get(entry + n as u32) == BlockState::Free
            && !self.pinned.contains(&(first + n))
        {
            bm.set(entry + n as u32, BlockState::Data);
            n += 1;
        }
        self.write_meta(baddr, bm.encode(baddr));
        let r = &mut self.rgs[rgi];
        r.rg.free -= n as u32;
        r.next = first - r.rg.data0 + n;
        self.statfs_free -= n as i64;
        let (addr, rg) = (r.addr, r.rg);
        self.write_meta(addr, rg.encode(addr));
        Ok((first, n))
    }

    /// A free, unpinned block: `goal` if possible, else the next one after the last
    /// allocation in the preferred group, else anywhere.
    pub(super) fn find_block(&mut self, goal: Option<u64>) -> Result<u64> {
        if let Some(g) = goal {
            if !self.pinned.contains(&g)
                && self.rg_of(g).is_some_and(|i| self.rg_writable(i))
                && self.block_state(g)? == BlockState::Free
            {
                return Ok(g);
            }
        }
        let n = self.rgs.len();
        for k in 0..n {
            let rgi = (self.rg_hint + k) % n;
            if self.rgs[rgi].rg.free == 0 || !self.rg_writable(rgi) {
                continue;
            }
            let count = self.rgs[rgi].rg.data_count as u64;
            let next = self.rgs[rgi].next.min(count);
            for (from, to) in [(next, count), (0, next)] {
                if let Some(blk) = self.scan_rg(rgi, from, to)? {
                    self.rg_hint = rgi;
                    self.rgs[rgi].next = blk - self.rgs[rgi].rg.data0 + 1;
                    return Ok(blk);
                }
            }
        }
        Err(FsError::NoSpace)
    }

    /// First free, unpinned block of group `rgi` with entry in `[from, to)`.
    pub(super) fn scan_rg(&mut self, rgi: usize, from: u64, to: u64) -> Result<Option<u64>> {
        let data0 = self.rgs[rgi].rg.data0;
        let mut entry = from;
        while entry < to {
            let (baddr, e) = self.bitmap_addr(rgi, entry);
            let base = entry - e as u64;
            let limit = (to - base).min(BITMAP_BLOCKS_PER_BLOCK as u64) as u32;
            let bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
            let mut at = e;
            while let Some(f) = bm.find_free(at, limit) {
                let blk = data0 + base + f as u64;
                if !self.pinned.contains(&blk) {
                    return Ok(Some(blk));
                }
                at = f + 1;
            }
            entry = base + limit as u64;
        }
        Ok(None)
    }

    /// Frees a block; it stays unusable until the next checkpoint.
    pub(super) fn free_block(&mut self, blkno: u64) -> Result<()> {
        match self.rg_of(blkno) {
            // lock_dlm: another node may own that group now; free it once its lock is held.
            Some(rgi) if !self.rg_writable(rgi) => self.deferred_frees.push(blkno),
            _ => {
                self.set_state(blkno, BlockState::Free)?;
                self.pinned.insert(blkno);
            }
        }
        self.cache.remove(&blkno);
        self.unencoded.remove(&blkno);
        self.dinodes.remove(&blkno);
        self.leaves.remove(&blkno);
        self.dirty.remove(&blkno);
        self.committed.remove(&blkno);
        Ok(())
    }

    pub(super) fn statfs_change_block(&mut self) -> Result<()> {
        if self.statfs_free == 0 && self.statfs_dinodes == 0 {
            return Ok(());
        }
        let a = self.journal.statfs_block;
        let mut c = Statfs::decode(&self.read_meta(a)?[..], a)?;
        c.free += self.statfs_free;
        c.dinodes += self.statfs_dinodes;
        self.statfs_free = 0;
        self.statfs_dinodes = 0;
        self.write_meta(a, c.encode(a));
        Ok(())
    }

    /// Folds this slot's statfs changes into the master block.
    pub(super) fn fold_statfs(&mut self) -> Result<()> {
        self.statfs_change_block()?;
        let a = self.journal.statfs_block;
        let mut c = Statfs::decode(&self.read_meta(a)?[..], a)?;
        if c.free == 0 && c.dinodes == 0 {
            return Ok(());
        }
        let m = self.sb.master_statfs;
        let mut master = Statfs::decode(&self.read_meta(m)?[..], m)?;
        master.free += c.free;
        master.dinodes += c.dinodes;
        c.free = 0;
        c.dinodes = 0;
        self.write_meta(m, master.encode(m));
        self.write_meta(a, c.encode(a));
        Ok(())
    }

    pub fn statfs(&mut self) -> Result<FsStat> {
        let total: u64 = self.rgs.iter().map(|r| r.rg.data_count as u64).sum();
        // Blocks freed since the last checkpoint count as free: make_room frees them up.
        let free: u64 = self.rgs.iter().map(|r| r.rg.free as u64).sum::<u64>();
        let dinodes: u64 = self.rgs.iter().map(|r| r.rg.dinodes as u64).sum();
        Ok(FsStat { total, free, dinodes })
    }
}
