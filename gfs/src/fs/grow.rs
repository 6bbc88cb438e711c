//! Online growth of a mounted filesystem: `gfs_grow` (resource groups for new space at the end
//! of the device) and `gfs_jadd` (journals for more node slots), and [`Fs::reload_layout`],
//! which brings a mount up to date with a layout another node (or a replayed journal) changed.
//!
//! Both changes are one journaled transaction of the mount that makes them, so a crash leaves
//! the old layout or the new one:
//!
//! - grow: the new resource groups (headers and empty bitmaps) are written straight to the
//!   new space and flushed first: they lie past the filesystem's end, nobody looks at them
//!   until the superblock says otherwise. Then one transaction changes the superblock
//!   (`block_count`, `rg_count`), the master statfs block (total and free grow by the new data
//!   blocks) and, when the last group was short, its header (and bitmap) grown in place.
//! - jadd: each new journal takes a run of `1 + blocks` free data blocks in one resource
//!   group (marked as metadata): its statfs change block, then the journal. Their contents
//!   (an empty statfs change block, a clean journal header at a random sequence, a zeroed
//!   first log block) are written and flushed while the blocks are still free; then one
//!   transaction marks them in the bitmaps and changes the journal index and the superblock.
//!
//! Either way the transaction is committed and checkpointed at once (everything home), so a
//! node that mounts next, or takes the filesystem next, reads the new layout from home.

use super::*;
use std::fmt;

/// Resource groups shorter than this are not made (as mkfs: a short tail stays unused).
const MIN_RG_BLOCKS: u64 = 16;

/// Why `gfs_grow` or `gfs_jadd` refused or failed.
#[derive(Debug, Error)]
pub enum GrowError {
    #[error(
        "the device holds {device} blocks and the filesystem already ends at block {fs}: nothing to grow \
         (enlarge the device first)"
    )]
    NotLarger { device: u64, fs: u64 },
    #[error(
        "the device has only {extra} blocks past the filesystem's end (block {fs}); a new resource group needs \
         at least {MIN_RG_BLOCKS}"
    )]
    TooLittle { extra: u64, fs: u64 },
    #[error(
        "this filesystem's resource groups are {have_blocks} blocks ({have_mb} MiB), fixed when it was made; \
         leave -r out or give {have_mb}"
    )]
    RgSize { have_blocks: u32, have_mb: u64 },
    #[error("give at least one journal to add")]
    NoJournals,
    #[error("cannot add {add} journals: the filesystem has {have} and holds at most {max}")]
    TooManyJournals { have: u32, add: u32, max: usize },
    #[error("a journal of {blocks} blocks is too small (at least {min} blocks)")]
    JournalSize { blocks: u64, min: u64 },
    #[error(
        "no free run of {need} contiguous blocks in any resource group for a new journal, and the device has no \
         new space: enlarge the device (gfs_jadd then grows the filesystem into it) or free space"
    )]
    NoRoom { need: u64 },
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl From<DeviceError> for GrowError {
    fn from(e: DeviceError) -> Self {
        GrowError::Fs(FsError::Device(e))
    }
}

impl From<FormatError> for GrowError {
    fn from(e: FormatError) -> Self {
        GrowError::Fs(FsError::Corrupt(e))
    }
}

/// Smallest journal `gfs_jadd` makes: room for a full transaction of the front end (256
/// blocks) with its descriptors and commit, twice.
pub const MIN_JOURNAL_BLOCKS: u64 = 520;

/// What a grow did (or, with `test`, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowReport {
    pub test: bool,
    pub device_blocks: u64,
    pub old_blocks: u64,
    pub new_blocks: u64,
    pub old_rgs: u32,
    pub new_rgs: u32,
    /// The last group, grown in place: (index, data blocks before, after).
    pub extended: Option<(u32, u32, u32)>,
    /// Data blocks the filesystem gains.
    pub added_data: u64,
}

impl fmt::Display for GrowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| (b * BLOCK_SIZE as u64) >> 20;
        writeln!(f, "device: {} blocks ({} MiB)", self.device_blocks, mib(self.device_blocks))?;
        writeln!(
            f,
            "filesystem: {} blocks ({} MiB), {} resource groups",
            self.old_blocks,
            mib(self.old_blocks),
            self.old_rgs
        )?;
        if let Some((i, a, b)) = self.extended {
            writeln!(f, "resource group {i}: {a} -> {b} data blocks (grown in place)")?;
        }
        writeln!(
            f,
            "{} {} new resource groups, {} data blocks ({} MiB)",
            if self.test { "would add" } else { "added" },
            self.new_rgs - self.old_rgs,
            self.added_data,
            mib(self.added_data)
        )?;
        write!(
            f,
            "filesystem {}: {} blocks ({} MiB), {} resource groups",
            if self.test { "would be" } else { "now" },
            self.new_blocks,
            mib(self.new_blocks),
            self.new_rgs
        )
    }
}

/// What a jadd did (or, with `test`, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JaddReport {
    pub test: bool,
    /// The grow that made room first, if one was needed.
    pub grew: Option<GrowReport>,
    /// The new journals (with `test`: where they would go).
    pub journals: Vec<(u32, JournalEntry)>,
    pub journal_count: u32,
}

impl fmt::Display for JaddReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(g) = &self.grew {
            writeln!(f, "{g}")?;
        }
        for (slot, j) in &self.journals {
            writeln!(
                f,
                "journal{slot}: start {} blocks {} ({} MiB) statfs {}{}",
                j.start,
                j.blocks,
                (j.blocks as u64 * BLOCK_SIZE as u64) >> 20,
                j.statfs_block,
                if self.test { " (would be added)" } else { "" }
            )?;
        }
        write!(f, "journals: {}", self.journal_count)
    }
}

/// The plan of a grow: the report, and the groups to write.
struct GrowPlan {
    report: GrowReport,
    new_groups: Vec<(u64, Rgrp)>,
    /// The last group's new header if it grows in place.
    extend: Option<Rgrp>,
}

type GResult<T> = std::result::Result<T, GrowError>;

impl RgState {
    /// A group just read from home (or just made).
    fn fresh(addr: u64, rg: Rgrp) -> RgState {
        RgState { addr, rg, next: 0, stale: false }
    }
}

impl Fs {
    /// Adds resource groups for the space past the filesystem's end (the device grew): see the
    /// module documentation. `rg_blocks`, if given, must be this filesystem's group size (in
    /// blocks, or in whole MiB rounded down: a multiple of 256 blocks).
    /// With `test`, only says what it would do.
    pub fn grow(&mut self, rg_blocks: Option<u32>, test: bool) -> GResult<GrowReport> {
        if let Some(r) = rg_blocks {
            // Tools give whole MiB: the group size rounded down to MiB names it too.
            let same_mib = r.is_multiple_of(256) && r / 256 == self.sb.rg_blocks / 256;
            if r != self.sb.rg_blocks && !same_mib {
                let have_mb = (self.sb.rg_blocks as u64 * BLOCK_SIZE as u64) >> 20;
                return Err(GrowError::RgSize { have_blocks: self.sb.rg_blocks, have_mb });
            }
        }
        let plan = self.plan_grow(test)?;
        if test {
            return Ok(plan.report);
        }
        self.apply_grow(&plan)?;
        Ok(plan.report)
    }

    fn plan_grow(&mut self, test: bool) -> GResult<GrowPlan> {
        let device = self.dev.refresh_size()? / bs();
        let sb = &self.sb;
        if device <= sb.block_count {
            return Err(GrowError::NotLarger { device, fs: sb.block_count });
        }
        let rg_blocks = sb.rg_blocks as u64;
        let last = sb.rg_count - 1;
        let (lstart, llen) = sb.rg_extent(last);
        let mut end = sb.block_count;
        let mut extend = None;
        if llen < rg_blocks {
            // The last group is short: it takes what its slot can hold now.
            let len = rg_blocks.min(device - lstart);
            let cur = self.rgs[last as usize].rg;
            if let Some(mut r) = Rgrp::layout_capped(last, lstart, len, cur.bitmap_blocks) {
                if r.data_count > cur.data_count {
                    r.free = cur.free + (r.data_count - cur.data_count);
                    r.dinodes = cur.dinodes;
                    extend = Some(r);
                }
            }
            end = lstart + len;
        }
        let mut new_groups = Vec::new();
        if end == lstart + rg_blocks {
            let mut start = end;
            while start < device {
                let len = (device - start).min(rg_blocks);
                if len < MIN_RG_BLOCKS {
                    break;
                }
                let index = sb.rg_count + new_groups.len() as u32;
                let Some(r) = Rgrp::layout(index, start, len) else { break };
                new_groups.push((start, r));
                start += len;
                end = start;
            }
        }
        if extend.is_none() && new_groups.is_empty() {
            return Err(GrowError::TooLittle { extra: device - sb.block_count, fs: sb.block_count });
        }
        let added_data = extend.map(|r| (r.data_count - self.rgs[last as usize].rg.data_count) as u64).unwrap_or(0)
            + new_groups.iter().map(|(_, r)| r.data_count as u64).sum::<u64>();
        let report = GrowReport {
            test,
            device_blocks: device,
            old_blocks: sb.block_count,
            new_blocks: end,
            old_rgs: sb.rg_count,
            new_rgs: sb.rg_count + new_groups.len() as u32,
            extended: extend.map(|r| (last, self.rgs[last as usize].rg.data_count, r.data_count)),
            added_data,
        };
        Ok(GrowPlan { report, new_groups, extend })
    }

    fn apply_grow(&mut self, plan: &GrowPlan) -> GResult<()> {
        // What this mount changed so far goes first, in its own transaction.
        self.commit()?;
        // The new groups, straight to the new space (past the end: nobody reads them yet).
        for (start, r) in &plan.new_groups {
            let mut buf = Vec::with_capacity((1 + r.bitmap_blocks as usize) * BLOCK_SIZE);
            buf.extend_from_slice(&r.encode(*start)[..]);
            for k in 0..r.bitmap_blocks {
                let at = start + 1 + k as u64;
                buf.extend_from_slice(&Bitmap::new(r.index, k).encode(at)[..]);
            }
            self.dev.write_at(&buf, start * bs())?;
        }
        self.dev.sync()?;
        // One transaction: the last group grown in place, the master statfs, the superblock.
        let mut sb = self.sb.clone();
        sb.block_count = plan.report.new_blocks;
        sb.rg_count = plan.report.new_rgs;
        if let Some(r) = plan.extend {
            let i = r.index as usize;
            let (addr, old) = (self.rgs[i].addr, self.rgs[i].rg);
            // Entries past the old end must read free (they were never used).
            let k = (old.data_count as u64 - 1) / BITMAP_BLOCKS_PER_BLOCK as u64;
            let baddr = addr + 1 + k;
            let mut bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
            let from = (old.data_count as u64 - k * BITMAP_BLOCKS_PER_BLOCK as u64) as u32;
            for e in from..BITMAP_BLOCKS_PER_BLOCK {
                bm.set(e, BlockState::Free);
            }
            self.write_meta(baddr, bm.encode(baddr));
            self.write_meta(addr, r.encode(addr));
            self.rgs[i].rg = r;
        }
        let m = self.sb.master_statfs;
        let mut master = Statfs::decode(&self.read_meta(m)?[..], m)?;
        master.total += plan.report.added_data as i64;
        master.free += plan.report.added_data as i64;
        self.write_meta(m, master.encode(m));
        self.write_meta(SB_BLOCK, sb.encode());
        self.sb = sb;
        for (start, r) in &plan.new_groups {
            self.rgs.push(RgState::fresh(*start, *r));
        }
        self.commit()?;
        // Home at once: the next mount (or node) reads the new layout from home, and later
        // transactions of this journal may name blocks in the new space.
        self.checkpoint()?;
        tracing::info!(
            blocks = plan.report.new_blocks,
            groups = plan.report.new_rgs,
            added = plan.report.added_data,
            "filesystem grown"
        );
        Ok(())
    }

    /// Adds `count` journals (node slots) of `journal_blocks` blocks each (default: the size
    /// of journal 0), from free space, growing the filesystem into new space at the end of
    /// the device first when free space has no room. With `test`, only says what it would do.
    pub fn add_journals(&mut self, count: u32, journal_blocks: Option<u64>, test: bool) -> GResult<JaddReport> {
        if count == 0 {
            return Err(GrowError::NoJournals);
        }
        let have = self.sb.journal_count;
        if have as usize + count as usize > JINDEX_MAX {
            return Err(GrowError::TooManyJournals { have, add: count, max: JINDEX_MAX });
        }
        let jindex = self.read_jindex()?;
        let blocks = journal_blocks.unwrap_or((jindex.journals[0].blocks as u64).max(MIN_JOURNAL_BLOCKS));
        if blocks < MIN_JOURNAL_BLOCKS || blocks > u32::MAX as u64 {
            return Err(GrowError::JournalSize { blocks, min: MIN_JOURNAL_BLOCKS });
        }
        let need = 1 + blocks;
        let mut grew = None;
        let mut runs = self.find_runs(count as usize, need)?;
        if runs.len() < count as usize {
            match self.plan_grow(test) {
                Ok(plan) => {
                    if !test {
                        self.apply_grow(&plan)?;
                        runs = self.find_runs(count as usize, need)?;
                    } else {
                        // The new groups are empty: each holds journals back to back.
                        for (start, r) in &plan.new_groups {
                            let mut at = r.data0;
                            while runs.len() < count as usize
                                && at + need <= start + 1 + r.bitmap_blocks as u64 + r.data_count as u64
                            {
                                runs.push(at);
                                at += need;
                            }
                        }
                    }
                    grew = Some(plan.report);
                }
                Err(GrowError::NotLarger { .. } | GrowError::TooLittle { .. }) => {}
                Err(e) => return Err(e),
            }
            if runs.len() < count as usize {
                return Err(GrowError::NoRoom { need });
            }
        }
        let journals: Vec<(u32, JournalEntry)> = runs
            .iter()
            .enumerate()
            .map(|(k, &at)| (have + k as u32, JournalEntry { start: at + 1, blocks: blocks as u32, statfs_block: at }))
            .collect();
        let report = JaddReport { test, grew, journals, journal_count: have + count };
        if test {
            return Ok(report);
        }
        self.commit()?;
        // Contents first, while the blocks are still free.
        let seq0 = u64::from_le_bytes(crate::mkfs::random_bytes()) >> 8;
        for (slot, j) in &report.journals {
            let mut buf = Vec::with_capacity(3 * BLOCK_SIZE);
            buf.extend_from_slice(&Statfs { slot: *slot, total: 0, free: 0, dinodes: 0 }.encode(j.statfs_block)[..]);
            buf.extend_from_slice(&JournalHeader { slot: *slot, sequence: seq0, clean: true }.encode(j.start)[..]);
            buf.extend_from_slice(&[0u8; BLOCK_SIZE]);
            self.dev.write_at(&buf, j.statfs_block * bs())?;
        }
        self.dev.sync()?;
        // One transaction: the bitmaps, the journal index, the superblock.
        for (_, j) in &report.journals {
            for b in j.statfs_block..j.start + j.blocks as u64 {
                self.set_state(b, BlockState::Meta)?;
            }
        }
        let mut jindex = jindex;
        jindex.journals.extend(report.journals.iter().map(|(_, j)| *j));
        let ja = self.sb.jindex_block;
        self.write_meta(ja, jindex.encode(ja));
        let mut sb = self.sb.clone();
        sb.journal_count = report.journal_count;
        self.write_meta(SB_BLOCK, sb.encode());
        self.sb = sb;
        self.commit()?;
        self.checkpoint()?;
        tracing::info!(added = count, journals = report.journal_count, "journals added");
        Ok(report)
    }

    /// The journal index as this mount sees it.
    fn read_jindex(&mut self) -> Result<JIndex> {
        let ja = self.sb.jindex_block;
        Ok(JIndex::decode(&self.read_meta(ja)?[..], ja)?)
    }

    /// First addresses of up to `count` disjoint runs of `need` free, unpinned data blocks,
    /// each inside one resource group.
    fn find_runs(&mut self, count: usize, need: u64) -> Result<Vec<u64>> {
        let mut runs = Vec::new();
        for rgi in 0..self.rgs.len() {
            if (self.rgs[rgi].rg.free as u64) < need {
                continue;
            }
            let (data0, n) = (self.rgs[rgi].rg.data0, self.rgs[rgi].rg.data_count as u64);
            let mut run_start = 0u64;
            let mut run_len = 0u64;
            let mut entry = 0u64;
            while entry < n && runs.len() < count {
                let (baddr, e) = self.bitmap_addr(rgi, entry);
                let base = entry - e as u64;
                let limit = (n - base).min(BITMAP_BLOCKS_PER_BLOCK as u64) as u32;
                let bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
                for i in e..limit {
                    let b = data0 + base + i as u64;
                    if bm.get(i) == BlockState::Free && !self.pinned.contains(&b) {
                        if run_len == 0 {
                            run_start = b;
                        }
                        run_len += 1;
                        if run_len == need {
                            runs.push(run_start);
                            run_len = 0;
                            if runs.len() == count {
                                break;
                            }
                        }
                    } else {
                        run_len = 0;
                    }
                }
                entry = base + limit as u64;
            }
            if runs.len() == count {
                break;
            }
        }
        Ok(runs)
    }

    /// Blocks the journal index places inside resource groups (journals added by
    /// [`Fs::add_journals`]: each one's statfs change block and journal), as (first, count).
    pub(crate) fn journal_runs_in_groups(&mut self) -> Result<Vec<(u64, u64)>> {
        let jindex = self.read_jindex()?;
        Ok(jindex
            .journals
            .iter()
            .filter(|j| j.statfs_block >= self.sb.rg_start)
            .map(|j| (j.statfs_block, j.start + j.blocks as u64 - j.statfs_block))
            .collect())
    }

    /// Re-reads the superblock and, if the layout changed (another node grew the filesystem
    /// or added journals, or a replayed journal did), the resource groups and the journal
    /// index. Blocks changed by the running transaction are kept. Returns whether anything
    /// changed. Mount calls it after replay; lock_dlm calls it whenever it takes the
    /// filesystem from another node.
    pub fn reload_layout(&mut self) -> Result<bool> {
        let sb = Superblock::decode(&self.fresh_meta(SB_BLOCK)?[..])?;
        if sb == self.sb {
            return Ok(false);
        }
        if sb.block_count < self.sb.block_count
            || sb.rg_count < self.sb.rg_count
            || sb.journal_count < self.sb.journal_count
            || sb.rg_start != self.sb.rg_start
            || sb.rg_blocks != self.sb.rg_blocks
        {
            return Err(FsError::Journal(format!(
                "the filesystem layout shrank or moved under this mount ({} blocks, {} groups before; {} and {} now)",
                self.sb.block_count, self.sb.rg_count, sb.block_count, sb.rg_count
            )));
        }
        if sb.block_count * bs() > self.dev.size() {
            self.dev.refresh_size()?;
        }
        let old_groups = self.rgs.len() as u32;
        self.sb = sb;
        // The last known group may have grown in place; the others are new.
        for i in old_groups.saturating_sub(1)..self.sb.rg_count {
            let (addr, _) = self.sb.rg_extent(i);
            let rg = Rgrp::decode(&self.fresh_meta(addr)?[..], addr)?;
            match self.rgs.get_mut(i as usize) {
                Some(r) => r.rg = rg,
                None => self.rgs.push(RgState::fresh(addr, rg)),
            }
        }
        let ja = self.sb.jindex_block;
        self.fresh_meta(ja)?;
        let jindex = self.read_jindex()?;
        if let Some(j) = jindex.journals.get(self.slot as usize) {
            self.journal = *j;
        }
        tracing::info!(
            blocks = self.sb.block_count,
            groups = self.sb.rg_count,
            journals = self.sb.journal_count,
            "filesystem layout reloaded"
        );
        Ok(true)
    }

    /// Metadata block `blkno` re-read from home unless this mount has a newer version (in the
    /// running transaction, or committed and not yet home).
    fn fresh_meta(&mut self, blkno: u64) -> Result<&Block> {
        if !self.dirty.contains(&blkno) && !self.committed.contains_key(&blkno) {
            self.cache.remove(&blkno);
        }
        if blkno == SB_BLOCK && !self.cache.contains_key(&blkno) && !self.committed.contains_key(&blkno) {
            // The superblock names the end of the filesystem: read it past read_meta's check.
            let mut b = Box::new([0u8; BLOCK_SIZE]);
            self.dev.read_at(&mut b[..], blkno * bs())?;
            Header::verify_any(&b[..], blkno)?;
            self.cache.insert(blkno, b);
        }
        self.read_meta(blkno)
    }
}

#[cfg(test)]
mod tests;
