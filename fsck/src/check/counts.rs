//! Pass 6: counts. Orphans linked into lost+found and damaged directories rebuilt (now that
//! every block the walk claims is known); link counts (files: entries; directories: 2 +
//! subdirectories) and `..`; the bitmaps against what was claimed (in use but free, free but
//! in use, wrong kind); the resource group counters; statfs (master + every slot's change
//! block must equal the counts, else the master is rewritten and the change blocks zeroed).

use gfs::format::*;

use super::{Checker, Rg, LOST_FOUND};
use crate::FsckError;

/// What the bitmaps, rebuilt from the claims, count over every resource group.
#[derive(Clone, Copy)]
struct Totals {
    /// Data blocks.
    total: i64,
    free: i64,
    dinodes: i64,
}

impl Checker<'_> {
    pub(super) fn pass6_finish(&mut self) -> Result<(), FsckError> {
        if !self.link_orphans()? {
            // No space for lost+found: nothing is rebuilt or relinked, only counted.
            return self.finish_counters();
        }
        // Rebuild directories (allocating their leaves).
        for (dir, entries) in std::mem::take(&mut self.rebuild) {
            self.build_dir(dir, entries)?;
        }
        self.fix_links()?;
        self.finish_counters()
    }

    /// Link counts, parents, then write the dinodes that changed.
    fn fix_links(&mut self) -> Result<(), FsckError> {
        let root = self.sb.root_dinode;
        let lf = self.lost_found.unwrap_or(root);
        let inos: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in inos {
            let i = &self.inodes[&ino];
            let mut d = i.d.clone();
            let want = if d.is_dir() { 2 + i.subdirs } else { i.links };
            let parent = if ino == root {
                root
            } else if i.found_in == LOST_FOUND {
                lf
            } else {
                i.found_in
            };
            if d.nlink != want {
                self.problem(
                    format!("inode {ino}: link count {} but {want} found", d.nlink),
                    "link count corrected",
                    true,
                );
                d.nlink = want;
            }
            if d.is_dir() && d.parent != parent {
                self.problem(
                    format!("directory {ino}: '..' is {} but it is in {parent}", d.parent),
                    "'..' corrected",
                    true,
                );
                d.parent = parent;
            }
            if self.inodes[&ino].orig.as_ref() != Some(&d) {
                self.img.stage(ino, d.encode(ino))?;
            }
        }
        Ok(())
    }

    /// Bitmaps against the claims, resource group counters, statfs.
    fn finish_counters(&mut self) -> Result<(), FsckError> {
        let t = self.check_bitmaps()?;
        self.check_statfs(t)?;
        let (total, free_all) = (t.total, t.free);
        let summary = format!(
            "{} inodes, {} directories, {} of {total} data blocks in use",
            self.inodes.len(),
            self.inodes.values().filter(|i| i.d.is_dir()).count(),
            total - free_all
        );
        self.say(summary);
        Ok(())
    }

    /// Writes every bitmap afresh from the claims (reporting how they differ from what was
    /// found) and corrects the resource group counters.
    fn check_bitmaps(&mut self) -> Result<Totals, FsckError> {
        let (mut used_free, mut free_used, mut wrong_kind) = (0u64, 0u64, 0u64);
        let mut total = 0i64;
        let mut free_all = 0i64;
        let mut dinodes_all = 0i64;
        let groups = self.rgs.len();
        for i in 0..groups {
            if self.opts.verbose && groups >= 4 && i > 0 && (i * 4 / groups) != ((i - 1) * 4 / groups) {
                self.say(format!("  {}%", i * 4 / groups * 25));
            }
            let Rg { addr, rg, .. } = self.rgs[i];
            let (mut free, mut dinodes) = (0u32, 0u32);
            for k in 0..rg.bitmap_blocks {
                let mut bm = Bitmap::new(i as u32, k);
                let first = k as u64 * BITMAP_BLOCKS_PER_BLOCK as u64;
                let last = (first + BITMAP_BLOCKS_PER_BLOCK as u64).min(rg.data_count as u64);
                let old = self.rgs[i].bitmaps[k as usize].clone();
                for e in first..last {
                    let b = rg.data0 + e;
                    let want = BlockState::from_bits(self.claims[b as usize]);
                    let entry = (e - first) as u32;
                    bm.set(entry, want);
                    match want {
                        BlockState::Free => free += 1,
                        BlockState::Dinode => dinodes += 1,
                        _ => {}
                    }
                    if let Some(old) = &old {
                        let have = old.get(entry);
                        if have != want {
                            match (have, want) {
                                (BlockState::Free, _) => free_used += 1,
                                (_, BlockState::Free) => used_free += 1,
                                _ => wrong_kind += 1,
                            }
                        }
                    }
                }
                let at = addr + 1 + k as u64;
                self.img.stage(at, bm.encode(at))?;
            }
            if free != rg.free || dinodes != rg.dinodes {
                self.problem(
                    format!(
                        "resource group {i}: header says {} free, {} dinodes; bitmaps {free} free, {dinodes} dinodes",
                        rg.free, rg.dinodes
                    ),
                    "counters corrected",
                    true,
                );
            }
            let nrg = Rgrp { free, dinodes, ..rg };
            self.img.stage(addr, nrg.encode(addr))?;
            self.rgs[i].rg = nrg;
            total += rg.data_count as i64;
            free_all += free as i64;
            dinodes_all += dinodes as i64;
        }
        if free_used > 0 {
            self.problem(format!("{free_used} blocks in use but marked free"), "marked in use", true);
        }
        if used_free > 0 {
            self.problem(format!("{used_free} blocks marked in use but not used by anything"), "marked free", true);
        }
        if wrong_kind > 0 {
            self.problem(format!("{wrong_kind} blocks marked with the wrong kind of use"), "bitmap corrected", true);
        }
        Ok(Totals { total, free: free_all, dinodes: dinodes_all })
    }

    /// Statfs: master + every slot's pending change must equal the counts.
    fn check_statfs(&mut self, t: Totals) -> Result<(), FsckError> {
        let Totals { total, free: free_all, dinodes: dinodes_all } = t;
        let m = self.sb.master_statfs;
        let master = Statfs::decode(&self.img.read(m)?[..], m);
        let statfs_blocks: Vec<u64> = if self.journals.is_empty() {
            // The journal index was beyond repair: mkfs's places.
            (0..self.sb.journal_count as u64).map(|s| m + 1 + s).collect()
        } else {
            self.journals.iter().map(|e| e.statfs_block).collect()
        };
        let mut sum = (0i64, 0i64);
        let mut changes_ok = true;
        for (s, &at) in statfs_blocks.iter().enumerate() {
            match Statfs::decode(&self.img.read(at)?[..], at) {
                Ok(c) if c.slot == s as u32 => {
                    sum.0 += c.free;
                    sum.1 += c.dinodes;
                }
                _ => changes_ok = false,
            }
        }
        let ok = matches!(&master, Ok(x) if x.slot == STATFS_MASTER && x.total == total
            && x.free + sum.0 == free_all && x.dinodes + sum.1 == dinodes_all)
            && changes_ok;
        if !ok {
            let what = match &master {
                Ok(x) => format!(
                    "statfs: {} blocks, {} free, {} dinodes recorded; {total}, {free_all}, {dinodes_all} counted",
                    x.total,
                    x.free + sum.0,
                    x.dinodes + sum.1
                ),
                Err(e) => format!("statfs: {e}"),
            };
            self.problem(what, "statfs totals rewritten", true);
            let nm = Statfs { slot: STATFS_MASTER, total, free: free_all, dinodes: dinodes_all };
            self.img.stage(m, nm.encode(m))?;
            for (s, &at) in statfs_blocks.iter().enumerate() {
                self.img.stage(at, Statfs { slot: s as u32, total: 0, free: 0, dinodes: 0 }.encode(at))?;
            }
        }
        Ok(())
    }
}
