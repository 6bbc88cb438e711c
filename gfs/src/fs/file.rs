//! Regular file data through the extent map (extents kept in the dinode).

use super::*;

fn extents_of(d: &Dinode) -> Result<Vec<Extent>> {
    match &d.content {
        Content::Extents(v) => Ok(v.clone()),
        _ => Err(FsError::TooBig),
    }
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
    /// Writes `data` at `offset`; returns the bytes written.
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let mut d = self.dinode(ino)?;
        if d.is_dir() {
            return Err(FsError::IsDir);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(FsError::TooBig)?;
        let mut ext = extents_of(&d)?;
        let first = offset / bs();
        let last = (end - 1) / bs();
        // (physical block, block contents) runs to write.
        let mut run: Option<(u64, Vec<u8>)> = None;
        for lblk in first..=last {
            let bstart = lblk * bs();
            let lo = offset.max(bstart) - bstart;
            let hi = end.min(bstart + bs()) - bstart;
            let src = &data[(bstart + lo - offset) as usize..(bstart + hi - offset) as usize];
            let (pblk, fresh) = match map(&ext, lblk) {
                Some(p) => (p, false),
                None => {
                    let goal = if lblk > 0 { map(&ext, lblk - 1).map(|p| p + 1) } else { None };
                    let p = self.alloc(BlockState::Data, goal.or(Some(ino + 1)))?;
                    insert(&mut ext, lblk, p);
                    if ext.len() > INLINE_EXTENTS_MAX {
                        self.free_block(p)?;
                        return Err(FsError::TooBig);
                    }
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
        }
        if let Some((start, v)) = run {
            self.dev.write_at(&v, start * bs())?;
        }
        self.data_unsynced = true;
        let now = crate::now();
        d.size = d.size.max(end);
        d.mtime = now;
        d.ctime = now;
        d.content = Content::Extents(ext);
        self.put_dinode(ino, &d);
        Ok(data.len())
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
        let ext = extents_of(&d)?;
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
        let mut ext = extents_of(d)?;
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
        d.content = Content::Extents(kept);
        let _ = ino;
        Ok(())
    }
}
