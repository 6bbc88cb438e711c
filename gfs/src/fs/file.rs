//! Regular file data through the extent map: up to 164 extents in the dinode; beyond that an
//! index in the dinode of up to 246 extent leaves of up to 169 extents each. Leaves keep their
//! boundaries across updates (an over-full leaf splits in two), so a change rewrites only the
//! leaves it touches.

use super::*;

/// The device block holding file block `lblk`, if mapped.
pub(super) fn map_block(ext: &[Extent], lblk: u64) -> Option<u64> {
    map(ext, lblk)
}

/// Maps the hole `lblk` to `pblk`.
pub(super) fn insert_block(ext: &mut Vec<Extent>, lblk: u64, pblk: u64) {
    insert(ext, lblk, pblk)
}

fn map(ext: &[Extent], lblk: u64) -> Option<u64> {
    let i = ext.partition_point(|e| e.end() <= lblk);
    ext.get(i).filter(|e| e.logical <= lblk).map(|e| e.physical + (lblk - e.logical))
}

/// Inserts the mapping lblk -> pblk (lblk is a hole), merging with neighbours.
fn insert(ext: &mut Vec<Extent>, lblk: u64, pblk: u64) {
    let i = ext.partition_point(|e| e.end() <= lblk);
    if i > 0 {
        let p = &mut ext[i - 1];
        if p.end() == lblk && p.physical + p.len as u64 == pblk && p.len < u32::MAX {
            p.len += 1;
            // Maybe now touches the next one.
            if i < ext.len() && ext[i].logical == lblk + 1 && ext[i].physical == pblk + 1 {
                let n = ext.remove(i);
                ext[i - 1].len += n.len;
            }
            return;
        }
    }
    if i < ext.len() && ext[i].logical == lblk + 1 && ext[i].physical == pblk + 1 {
        ext[i].logical -= 1;
        ext[i].physical -= 1;
        ext[i].len += 1;
        return;
    }
    ext.insert(i, Extent { logical: lblk, physical: pblk, len: 1 });
}

impl Fs {
    /// The file's extents and (if it has one) its extent index.
    pub(super) fn load_map(&mut self, d: &Dinode) -> Result<(Vec<Extent>, Vec<ExtentIndex>)> {
        match &d.content {
            Content::Extents(v) => Ok((v.clone(), Vec::new())),
            Content::Index(idx) => {
                let mut all = Vec::new();
                for e in idx {
                    let leaf = ExtentLeaf::decode(&self.read_meta(e.leaf)?[..], e.leaf)?;
                    all.extend(leaf.extents);
                }
                if all.windows(2).any(|w| w[0].end() > w[1].logical) {
                    return Err(FsError::Corrupt(FormatError::invalid(idx[0].leaf, "extent leaves overlap")));
                }
                Ok((all, idx.clone()))
            }
            _ => Err(FsError::Invalid),
        }
    }

    /// Stores `ext` as the file's map (inline, or in leaves reusing `old`'s boundaries).
    pub(super) fn store_map(&mut self, ino: u64, d: &mut Dinode, ext: Vec<Extent>, old: &[ExtentIndex]) -> Result<()> {
        if ext.len() <= INLINE_EXTENTS_MAX {
            for e in old {
                self.free_block(e.leaf)?;
                d.blocks -= 1;
            }
            d.content = Content::Extents(ext);
            return Ok(());
        }
        // Group the extents by the old leaves' starting points.
        let mut groups: Vec<(Option<u64>, Vec<Extent>)> = if old.is_empty() {
            ext.chunks(EXTENT_LEAF_MAX / 2).map(|c| (None, c.to_vec())).collect()
        } else {
            let mut g: Vec<(Option<u64>, Vec<Extent>)> = old.iter().map(|e| (Some(e.leaf), Vec::new())).collect();
            for e in ext {
                let i = old.partition_point(|x| x.logical <= e.logical).saturating_sub(1);
                g[i].1.push(e);
            }
            g
        };
        // Split over-full groups, drop empty ones.
        let mut out: Vec<(Option<u64>, Vec<Extent>)> = Vec::new();
        for (blk, v) in groups.drain(..) {
            if v.is_empty() {
                if let Some(b) = blk {
                    self.free_block(b)?;
                    d.blocks -= 1;
                }
            } else if v.len() > EXTENT_LEAF_MAX {
                let (a, b) = v.split_at(v.len() / 2);
                out.push((blk, a.to_vec()));
                out.push((None, b.to_vec()));
            } else {
                out.push((blk, v));
            }
        }
        if out.len() > INLINE_INDEX_MAX {
            return Err(FsError::TooBig);
        }
        let mut index = Vec::with_capacity(out.len());
        for (blk, v) in out {
            let leaf = ExtentLeaf { owner: ino, extents: v };
            let at = match blk {
                Some(b) => {
                    let same = ExtentLeaf::decode(&self.read_meta(b)?[..], b).is_ok_and(|l| l == leaf);
                    if !same {
                        self.write_meta(b, leaf.encode(b));
                    }
                    b
                }
                None => {
                    let b = self.alloc(BlockState::Meta, Some(ino + 1))?;
                    d.blocks += 1;
                    self.write_meta(b, leaf.encode(b));
                    b
                }
            };
            index.push(ExtentIndex { logical: leaf.extents[0].logical, leaf: at });
        }
        d.content = Content::Index(index);
        Ok(())
    }

    /// Writes `data` at `offset`; returns the bytes written (short if space runs out part way).
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let mut d = self.dinode(ino)?;
        if d.is_dir() {
            return Err(FsError::IsDir);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(FsError::TooBig)?;
        let (mut ext, old_index) = self.load_map(&d)?;
        let max_extents = INLINE_INDEX_MAX * EXTENT_LEAF_MAX / 2;
        let first = offset / bs();
        let last = (end - 1) / bs();
        // (physical block, block contents) runs to write.
        let mut run: Option<(u64, Vec<u8>)> = None;
        let mut done = offset;
        let mut failure = None;
        // Blocks allocated ahead for the current hole: (next, count).
        let mut prealloc = (0u64, 0u64);
        for lblk in first..=last {
            let bstart = lblk * bs();
            let lo = offset.max(bstart) - bstart;
            let hi = end.min(bstart + bs()) - bstart;
            let src = &data[(bstart + lo - offset) as usize..(bstart + hi - offset) as usize];
            let (pblk, fresh) = match map(&ext, lblk) {
                Some(p) => (p, false),
                None => {
                    if ext.len() >= max_extents {
                        failure = Some(FsError::TooBig);
                        break;
                    }
                    // Take a run of blocks for this hole at once (one bitmap update).
                    if prealloc.1 == 0 {
                        let mut holes = 1;
                        while lblk + holes <= last && map(&ext, lblk + holes).is_none() {
                            holes += 1;
                        }
                        let goal = if lblk > 0 { map(&ext, lblk - 1).map(|p| p + 1) } else { None };
                        match self.alloc_run(goal.or(Some(ino + 1)), holes) {
                            Ok(run) => prealloc = run,
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    let p = prealloc.0;
                    prealloc = (p + 1, prealloc.1 - 1);
                    insert(&mut ext, lblk, p);
                    d.blocks += 1;
                    (p, true)
                }
            };
            let mut buf = vec![0u8; BLOCK_SIZE];
            if !fresh && (lo != 0 || hi != bs()) {
                self.dev.read_at(&mut buf, pblk * bs())?;
            }
            buf[lo as usize..hi as usize].copy_from_slice(src);
            match &mut run {
                Some((start, v)) if *start + (v.len() / BLOCK_SIZE) as u64 == pblk => v.extend_from_slice(&buf),
                _ => {
                    if let Some((start, v)) = run.take() {
                        self.dev.write_at(&v, start * bs())?;
                    }
                    run = Some((pblk, buf));
                }
            }
            done = bstart + hi;
        }
        // Blocks taken ahead but not used (the loop stopped early) go back at once: nothing
        // ever referred to them.
        for b in prealloc.0..prealloc.0 + prealloc.1 {
            self.set_state(b, BlockState::Free)?;
        }
        if let Some((start, v)) = run {
            self.dev.write_at(&v, start * bs())?;
        }
        self.data_unsynced = true;
        let now = crate::now();
        if done > offset {
            d.size = d.size.max(done);
            d.mtime = now;
            d.ctime = now;
        }
        self.store_map(ino, &mut d, ext, &old_index)?;
        self.put_dinode(ino, &d);
        match failure {
            Some(e) if done == offset => Err(e),
            _ => Ok((done - offset) as usize),
        }
    }

    /// Reads up to `size` bytes at `offset` (holes read as zeros).
    pub fn read(&mut self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        let d = self.dinode(ino)?;
        if d.is_dir() {
            return Err(FsError::IsDir);
        }
        if offset >= d.size {
            return Ok(Vec::new());
        }
        let end = d.size.min(offset + size as u64);
        let (ext, _) = self.load_map(&d)?;
        let first = offset / bs();
        let last = (end - 1) / bs();
        let mut out = vec![0u8; ((last - first + 1) * bs()) as usize];
        let mut lblk = first;
        while lblk <= last {
            let i = ext.partition_point(|e| e.end() <= lblk);
            match ext.get(i) {
                Some(e) if e.logical <= lblk => {
                    let n = (e.end().min(last + 1)) - lblk;
                    let p = e.physical + (lblk - e.logical);
                    let o = ((lblk - first) * bs()) as usize;
                    self.dev.read_at(&mut out[o..o + (n * bs()) as usize], p * bs())?;
                    lblk += n;
                }
                Some(e) => lblk = e.logical.min(last + 1),
                None => break,
            }
        }
        let skip = (offset - first * bs()) as usize;
        out.drain(..skip);
        out.truncate((end - offset) as usize);
        Ok(out)
    }

    /// Sets the size of a file, freeing blocks past the end (the caller stores the dinode).
    pub(super) fn truncate(&mut self, ino: u64, d: &mut Dinode, size: u64) -> Result<()> {
        let (mut ext, old_index) = self.load_map(d)?;
        let keep = size.div_ceil(bs());
        let mut kept = Vec::new();
        for e in ext.drain(..) {
            if e.end() <= keep {
                kept.push(e);
                continue;
            }
            let from = keep.max(e.logical);
            for l in from..e.end() {
                self.free_block(e.physical + (l - e.logical))?;
                d.blocks -= 1;
            }
            if e.logical < keep {
                kept.push(Extent { len: (keep - e.logical) as u32, ..e });
            }
        }
        // Zero the tail of the last block so a later extension reads zeros there.
        if size < d.size && !size.is_multiple_of(bs()) {
            if let Some(p) = map(&kept, size / bs()) {
                let mut buf = vec![0u8; BLOCK_SIZE];
                self.dev.read_at(&mut buf, p * bs())?;
                buf[(size % bs()) as usize..].fill(0);
                self.dev.write_at(&buf, p * bs())?;
                self.data_unsynced = true;
            }
        }
        d.size = size;
        self.store_map(ino, d, kept, &old_index)
    }

    /// Allocates (zeroed) blocks for `[offset, offset + len)`; grows the file unless
    /// `keep_size`.
    pub fn fallocate(&mut self, ino: u64, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        let d = self.dinode(ino)?;
        if d.is_dir() {
            return Err(FsError::IsDir);
        }
        if len == 0 {
            return Err(FsError::Invalid);
        }
        let end = offset.checked_add(len).ok_or(FsError::TooBig)?;
        let (ext, _) = self.load_map(&d)?;
        let zero = vec![0u8; BLOCK_SIZE];
        let size = d.size;
        // Fill holes with zeros block by block (existing data is left alone).
        for lblk in offset / bs()..end.div_ceil(bs()) {
            if map(&ext, lblk).is_none() {
                let n = self.write(ino, lblk * bs(), &zero)?;
                if n < BLOCK_SIZE {
                    return Err(FsError::NoSpace);
                }
            }
        }
        let mut d = self.dinode(ino)?;
        d.size = if keep_size { size } else { size.max(end) };
        if !keep_size || d.size != size {
            d.ctime = crate::now();
        }
        self.put_dinode(ino, &d);
        Ok(())
    }
}
