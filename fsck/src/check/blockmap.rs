//! Pass 5: block maps of files, in inode order. Extent leaves (owner, first logical block)
//! and extents inside a resource group's data area not claimed by anything else (first claim
//! wins; metadata is claimed before file data). A bad extent is dropped (a hole) and the map
//! stored again (inline if it fits, else fresh extent leaves). Xattr blocks: owner checked.
//! Block counts recomputed. The map readers here serve the directory pass too.

use gfs::format::*;

use super::{Checker, C_DATA, C_FREE, C_META};
use crate::FsckError;

impl Checker<'_> {
    pub(super) fn pass5_files(&mut self) -> Result<(), FsckError> {
        let files: Vec<u64> = self.inodes.iter().filter(|(_, i)| !i.d.is_dir()).map(|(&b, _)| b).collect();
        let total = files.len().max(1);
        let mut next_pct = 25;
        for (n, ino) in files.into_iter().enumerate() {
            if self.opts.verbose && (n * 100 / total) >= next_pct {
                self.say(format!("  {next_pct}%"));
                next_pct += 25;
            }
            let mut d = self.inodes[&ino].d.clone();
            let mut blocks = 0u64;
            if !d.is_symlink() || !matches!(d.content, Content::Inline(_)) {
                blocks += self.check_file_map(ino, &mut d)?;
            }
            if d.xattr_block != 0 && self.check_xattr(ino, &mut d) {
                blocks += 1;
            }
            if d.blocks != blocks {
                self.problem(
                    format!("inode {ino}: {} blocks recorded, {blocks} in use", d.blocks),
                    "block count corrected",
                    true,
                );
                d.blocks = blocks;
            }
            self.inodes.get_mut(&ino).expect("walked").d = d;
        }
        Ok(())
    }

    /// Claims a file's blocks; drops extents with bad or shared pointers. Returns the blocks
    /// the map uses (data and extent leaves).
    fn check_file_map(&mut self, ino: u64, d: &mut Dinode) -> Result<u64, FsckError> {
        if let Content::Inline(_) | Content::DirHash(_) = d.content {
            self.problem(format!("inode {ino}: content kind not valid for a file"), "content cleared", false);
            d.content = Content::Extents(Vec::new());
            d.size = 0;
            return Ok(0);
        }
        let (ext, nidx, err) = self.load_map(ino, d)?;
        let mut changed = false;
        if let Some(e) = err {
            self.problem(format!("inode {ino}: {e}"), "extents in the damaged leaves dropped (holes)", false);
            changed = true;
        }
        let mut good = Vec::new();
        for e in ext {
            let ok_range =
                (e.physical..e.physical + e.len as u64).all(|b| self.is_data(b) && self.claimed(b) == C_FREE);
            if ok_range {
                for b in e.physical..e.physical + e.len as u64 {
                    self.claims[b as usize] = C_DATA;
                }
                good.push(e);
            } else {
                let bad = (e.physical..e.physical + e.len as u64).any(|b| !self.is_data(b));
                let why = if bad { "outside the data area" } else { "blocks claimed twice" };
                self.problem(
                    format!(
                        "inode {ino}: extent of {} blocks at file block {} -> {}: {why}",
                        e.len, e.logical, e.physical
                    ),
                    "extent dropped (hole)",
                    false,
                );
                changed = true;
            }
        }
        let data: u64 = good.iter().map(|e| e.len as u64).sum();
        if !changed {
            return Ok(data + nidx);
        }
        // Store the surviving map: inline if it fits, else fresh leaves (old ones released).
        if let Content::Index(ix) = &d.content {
            for x in ix {
                if self.claimed(x.leaf) == C_META {
                    self.unclaim(x.leaf);
                }
            }
        }
        if good.len() <= INLINE_EXTENTS_MAX {
            d.content = Content::Extents(good);
            return Ok(data);
        }
        let mut index = Vec::new();
        for chunk in good.chunks(EXTENT_LEAF_MAX) {
            let Some(leaf) = self.alloc(C_META) else {
                self.problem(format!("inode {ino}: no space for extent leaves"), "file truncated", false);
                break;
            };
            self.img.stage(leaf, ExtentLeaf { owner: ino, extents: chunk.to_vec() }.encode(leaf))?;
            index.push(ExtentIndex { logical: chunk[0].logical, leaf });
        }
        let n = index.len() as u64;
        let kept: u64 = good.iter().take(n as usize * EXTENT_LEAF_MAX).map(|e| e.len as u64).sum();
        for e in good.iter().skip(n as usize * EXTENT_LEAF_MAX) {
            for b in e.physical..e.physical + e.len as u64 {
                self.unclaim(b);
            }
        }
        d.content = if index.is_empty() { Content::Extents(Vec::new()) } else { Content::Index(index) };
        Ok(kept + n)
    }

    /// Checks an inode's xattr block; drops the pointer if bad. True if kept (and claimed).
    pub(super) fn check_xattr(&mut self, ino: u64, d: &mut Dinode) -> bool {
        let x = d.xattr_block;
        let claimed = self.try_claim(x, C_META);
        let ok = claimed
            && match self.img.read(x) {
                Ok(b) => matches!(XattrBlock::decode(&b[..], x), Ok(xb) if xb.owner == ino),
                Err(_) => false,
            };
        if claimed && !ok {
            self.unclaim(x);
        }
        if !ok {
            self.problem(format!("inode {ino}: bad extended attribute block {x}"), "attributes dropped", false);
            d.xattr_block = 0;
        }
        ok
    }

    /// An inode's extent map: (extents, index leaves claimed, why it is damaged). Index leaves
    /// are claimed as metadata; extents are returned as found (not claimed).
    pub(super) fn load_map(&mut self, ino: u64, d: &Dinode) -> Result<(Vec<Extent>, u64, Option<String>), FsckError> {
        match &d.content {
            Content::Extents(v) => Ok((v.clone(), 0, None)),
            Content::Index(ix) => {
                let mut ext = Vec::new();
                let mut n = 0;
                for (i, x) in ix.iter().enumerate() {
                    if !self.try_claim(x.leaf, C_META) {
                        return Ok((ext, n, Some(format!("extent leaf {i} at {}: bad or shared pointer", x.leaf))));
                    }
                    n += 1;
                    match ExtentLeaf::decode(&self.img.read(x.leaf)?[..], x.leaf) {
                        Ok(l) if l.owner == ino && l.extents[0].logical == x.logical => ext.extend(l.extents),
                        Ok(_) => return Ok((ext, n, Some(format!("extent leaf {}: wrong owner or start", x.leaf)))),
                        Err(e) => return Ok((ext, n, Some(format!("extent leaf: {e}")))),
                    }
                }
                if ext.windows(2).any(|w| w[1].logical < w[0].end()) {
                    return Ok((ext, n, Some("extent leaves overlap".into())));
                }
                Ok((ext, n, None))
            }
            _ => Ok((Vec::new(), 0, None)),
        }
    }

    /// An inode's extents from the index leaves already claimed as metadata, claiming
    /// nothing (to release or re-read a structure): the same shape as [`Self::load_map`].
    pub(super) fn load_map_noclaim(
        &mut self,
        ino: u64,
        d: &Dinode,
    ) -> Result<(Vec<Extent>, u64, Option<String>), FsckError> {
        let mut ext = Vec::new();
        match &d.content {
            Content::Extents(v) => ext = v.clone(),
            Content::Index(ix) => {
                for x in ix {
                    if self.claimed(x.leaf) != C_META {
                        continue;
                    }
                    if let Ok(l) = ExtentLeaf::decode(&self.img.read(x.leaf)?[..], x.leaf) {
                        if l.owner == ino {
                            ext.extend(l.extents);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok((ext, 0, None))
    }
}

/// Device block of file block `k` in a list of extents.
pub(super) fn map_block(ext: &[Extent], k: u64) -> Option<u64> {
    ext.iter().find(|e| k >= e.logical && k < e.end()).map(|e| e.physical + (k - e.logical))
}
