//! Pass 1: resource groups. Each group's expected geometry comes from the superblock
//! (`Rgrp::layout`); a header that does not decode or does not match is rebuilt from it (its
//! counters are recomputed in pass 6). Bitmap blocks that do not decode are rebuilt from
//! reachability in pass 6; pass 4 scans their range for dinodes.

use gfs::format::*;

use super::{Checker, Rg};
use crate::FsckError;

impl Checker<'_> {
    pub(super) fn pass1_rgrps(&mut self) -> Result<(), FsckError> {
        for i in 0..self.sb.rg_count {
            let (addr, len) = self.sb.rg_extent(i);
            let Some(want) = Rgrp::layout(i, addr, len) else {
                self.problem(format!("resource group {i} at {addr}: too short ({len} blocks)"), "ignored", true);
                continue;
            };
            let found = Rgrp::decode(&self.img.read(addr)?[..], addr);
            let rg = match found {
                // mkfs's shape, or a last group gfs_grow extended in place.
                Ok(r) if r.fits_slot(i, addr, len) => r,
                Ok(_) => {
                    self.problem(
                        format!("resource group {i} header at {addr} does not match the geometry"),
                        "header rebuilt from the superblock's geometry",
                        false,
                    );
                    Rgrp { free: 0, dinodes: 0, ..want }
                }
                Err(e) => {
                    self.problem(format!("resource group {i} header: {e}"), "header rebuilt", false);
                    Rgrp { free: 0, dinodes: 0, ..want }
                }
            };
            let mut bitmaps = Vec::new();
            for k in 0..rg.bitmap_blocks {
                let at = addr + 1 + k as u64;
                match Bitmap::decode(&self.img.read(at)?[..], at) {
                    Ok(bm) if bm.rg_index == i && bm.index == k => bitmaps.push(Some(bm)),
                    Ok(_) => {
                        self.problem(
                            format!("bitmap {k} of resource group {i} (block {at}): wrong group or index"),
                            "bitmap rebuilt from the blocks in use",
                            false,
                        );
                        bitmaps.push(None);
                    }
                    Err(e) => {
                        self.problem(format!("bitmap {k} of resource group {i}: {e}"), "bitmap rebuilt", false);
                        bitmaps.push(None);
                    }
                }
            }
            self.rgs.push(Rg { addr, rg, bitmaps });
        }
        let n = self.rgs.len();
        self.verbose(format!("  {n} resource groups, {} blocks", self.sb.block_count));
        Ok(())
    }
}
