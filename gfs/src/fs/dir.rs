//! Hashed directories: extendible hashing over leaves (see docs/format.md). The hash table is
//! kept in the dinode up to 256 slots, then in hash table blocks mapped by the directory's
//! extents, up to 2^20 slots; past that, a full leaf at the deepest level chains an overflow
//! leaf.

use super::file::{insert_block, map_block};
use super::*;

/// One entry returned by [`Fs::readdir`]; `offset` resumes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirEntry {
    pub ino: u64,
    pub dtype: u8,
    pub name: Vec<u8>,
    pub offset: u64,
}

/// Offsets 1 and 2 are `.` and `..`; entries use `3 + (hash << 20 | rank among equal hashes)`.
const COOKIE_BASE: u64 = 3;
/// Deepest hash table (2^20 slots, 8 MiB of table).
const MAX_DIR_DEPTH: u8 = 20;

impl Fs {
    pub(super) fn dir_table(&mut self, dir: u64) -> Result<(Dinode, Vec<u64>)> {
        let d = self.dinode(dir)?;
        if !d.is_dir() {
            return Err(FsError::NotDir);
        }
        if let Content::DirHash(t) = &d.content {
            let t = t.clone();
            return Ok((d, t));
        }
        let want = 1usize << d.dir_depth;
        let (ext, _) = self.load_map(&d)?;
        let mut table = Vec::with_capacity(want);
        for k in 0..want.div_ceil(DIR_TABLE_PTRS) as u64 {
            let blk = map_block(&ext, k).ok_or(FsError::Corrupt(FormatError::invalid(dir, "hash table block")))?;
            let t = DirTable::decode(&self.read_meta(blk)?[..], blk)?;
            if t.index as u64 != k || t.owner != dir {
                return Err(FsError::Corrupt(FormatError::invalid(blk, "hash table block owner or index")));
            }
            table.extend(t.ptrs);
        }
        if table.len() != want {
            return Err(FsError::Corrupt(FormatError::invalid(dir, "hash table size")));
        }
        Ok((d, table))
    }

    /// Stores a directory's hash table: in the dinode while it fits, else in table blocks
    /// (only blocks whose pointers changed are rewritten).
    fn store_table(&mut self, dir: u64, d: &mut Dinode, table: Vec<u64>) -> Result<()> {
        if d.dir_depth <= self.inline_dir_depth && matches!(d.content, Content::DirHash(_)) {
            d.content = Content::DirHash(table);
            return Ok(());
        }
        let (mut ext, old_index) = match &d.content {
            Content::DirHash(_) => (Vec::new(), Vec::new()),
            _ => self.load_map(d)?,
        };
        for (k, chunk) in table.chunks(DIR_TABLE_PTRS).enumerate() {
            let t = DirTable { owner: dir, index: k as u32, ptrs: chunk.to_vec() };
            match map_block(&ext, k as u64) {
                Some(blk) => {
                    if DirTable::decode(&self.read_meta(blk)?[..], blk).ok().as_ref() != Some(&t) {
                        self.write_meta(blk, t.encode(blk));
                    }
                }
                None => {
                    let goal = if k > 0 { map_block(&ext, k as u64 - 1).map(|p| p + 1) } else { None };
                    let blk = self.alloc(BlockState::Meta, goal.or(Some(dir + 1)))?;
                    d.blocks += 1;
                    self.write_meta(blk, t.encode(blk));
                    insert_block(&mut ext, k as u64, blk);
                }
            }
        }
        self.store_map(dir, d, ext, &old_index)
    }

    pub(super) fn leaf(&mut self, blkno: u64) -> Result<Arc<DirLeaf>> {
        if let Some(l) = self.leaves.get(&blkno) {
            return Ok(l.clone());
        }
        let l = Arc::new(DirLeaf::decode(&self.read_meta(blkno)?[..], blkno)?);
        self.leaves.insert(blkno, l.clone());
        Ok(l)
    }

    fn put_leaf(&mut self, blkno: u64, leaf: DirLeaf) {
        self.put_leaf_arc(blkno, Arc::new(leaf));
    }

    fn put_leaf_arc(&mut self, blkno: u64, leaf: Arc<DirLeaf>) {
        self.write_meta(blkno, leaf.encode(blkno));
        self.leaves.insert(blkno, leaf);
    }

    /// Leaf `blkno` to change in place: taken out of the decoded cache, so unless a caller
    /// still holds it no copy of its entries is made (`put_leaf_arc` puts it back).
    fn take_leaf(&mut self, blkno: u64) -> Result<Arc<DirLeaf>> {
        let l = self.leaf(blkno)?;
        self.leaves.remove(&blkno);
        Ok(l)
    }

    fn slot(hash: u32, depth: u8) -> usize {
        if depth == 0 {
            0
        } else {
            (hash >> (32 - depth as u32)) as usize
        }
    }

    /// Finds `name` in `dir`: (inode, leaf block holding it).
    pub(super) fn lookup_entry(&mut self, dir: u64, name: &[u8]) -> Result<(u64, u64)> {
        let (d, table) = self.dir_table(dir)?;
        let hash = name_hash(name);
        let mut blk = table[Self::slot(hash, d.dir_depth)];
        loop {
            let leaf = self.leaf(blk)?;
            if let Some(e) = leaf.entries.iter().find(|e| e.hash == hash && e.name == name) {
                return Ok((e.inum, blk));
            }
            if leaf.next == 0 {
                return Err(FsError::NotFound);
            }
            blk = leaf.next;
        }
    }

    /// Adds an entry (the name is known to be absent).
    pub(super) fn dir_add(&mut self, dir: u64, name: &[u8], ino: u64, dtype: u8) -> Result<()> {
        let hash = name_hash(name);
        let entry = DirEntry { inum: ino, hash, dtype, name: name.to_vec() };
        loop {
            let (mut d, mut table) = self.dir_table(dir)?;
            let slot = Self::slot(hash, d.dir_depth);
            let first = table[slot];
            // Walk the chain for room.
            let mut blk = first;
            loop {
                let leaf = self.leaf(blk)?;
                if leaf.used() + entry.space() <= DIR_LEAF_SPACE {
                    drop(leaf);
                    let mut leaf = self.take_leaf(blk)?;
                    let l = Arc::make_mut(&mut leaf);
                    let pos = l.entries.partition_point(|e| (e.hash, &e.name[..]) < (hash, name));
                    l.entries.insert(pos, entry);
                    self.put_leaf_arc(blk, leaf);
                    d.dir_entries += 1;
                    self.put_dinode(dir, &d);
                    return Ok(());
                }
                if leaf.next == 0 {
                    break;
                }
                blk = leaf.next;
            }
            // Full: split the first leaf if it can, else chain an overflow leaf.
            let leaf = self.leaf(first)?;
            if (leaf.depth as u8) < d.dir_depth || d.dir_depth < MAX_DIR_DEPTH {
                if leaf.depth as u8 == d.dir_depth {
                    table = table.iter().flat_map(|&p| [p, p]).collect();
                    d.dir_depth += 1;
                }
                self.split_leaf(dir, &mut d, &mut table, first)?;
                self.store_table(dir, &mut d, table)?;
                self.put_dinode(dir, &d);
                continue;
            }
            let mut last = (*self.leaf(blk)?).clone();
            let new = self.alloc(BlockState::Meta, Some(blk + 1))?;
            let nl = DirLeaf { owner: dir, depth: last.depth, prefix: last.prefix, next: 0, entries: vec![entry] };
            self.put_leaf(new, nl);
            last.next = new;
            self.put_leaf(blk, last);
            d.blocks += 1;
            d.dir_entries += 1;
            self.put_dinode(dir, &d);
            return Ok(());
        }
    }

    /// Splits leaf `blk` (with its overflow chain) on its next hash bit.
    fn split_leaf(&mut self, dir: u64, d: &mut Dinode, table: &mut [u64], blk: u64) -> Result<()> {
        let mut leaf = (*self.leaf(blk)?).clone();
        // Gather the chain; its overflow leaves are freed and their entries redistributed.
        let mut entries = std::mem::take(&mut leaf.entries);
        let mut next = leaf.next;
        while next != 0 {
            let l = self.leaf(next)?;
            entries.extend(l.entries.iter().cloned());
            self.free_block(next)?;
            d.blocks -= 1;
            next = l.next;
        }
        let depth = leaf.depth as u32;
        let bit = 1u32 << (31 - depth);
        let new = self.alloc(BlockState::Meta, Some(blk + 1))?;
        d.blocks += 1;
        let (hi, lo): (Vec<DirEntry>, Vec<DirEntry>) = entries.into_iter().partition(|e| e.hash & bit != 0);
        let left = DirLeaf { owner: dir, depth: depth as u16 + 1, prefix: leaf.prefix, next: 0, entries: lo };
        let right = DirLeaf { owner: dir, depth: depth as u16 + 1, prefix: leaf.prefix | bit, next: 0, entries: hi };
        // Slots of the old leaf: 2^(global - local) consecutive slots from its prefix.
        let g = d.dir_depth as u32;
        let start = if g == 0 { 0 } else { (leaf.prefix >> (32 - g)) as usize };
        let span = 1usize << (g - depth);
        for (i, s) in table.iter_mut().enumerate().skip(start).take(span) {
            *s = if i - start >= span / 2 { new } else { blk };
        }
        // A split that leaves one side over-full is fine: the retry splits again or chains.
        let left = self.fit_or_chain(dir, d, blk, left)?;
        self.put_leaf(blk, left);
        let right = self.fit_or_chain(dir, d, new, right)?;
        self.put_leaf(new, right);
        Ok(())
    }

    /// Moves entries that do not fit in `leaf` into overflow leaves chained after it.
    fn fit_or_chain(&mut self, dir: u64, d: &mut Dinode, at: u64, mut leaf: DirLeaf) -> Result<DirLeaf> {
        if leaf.used() <= DIR_LEAF_SPACE {
            return Ok(leaf);
        }
        let mut rest = Vec::new();
        while leaf.used() > DIR_LEAF_SPACE {
            rest.push(leaf.entries.pop().expect("over-full leaf has entries"));
        }
        rest.reverse();
        let new = self.alloc(BlockState::Meta, Some(at + 1))?;
        d.blocks += 1;
        let over = DirLeaf { owner: dir, depth: leaf.depth, prefix: leaf.prefix, next: 0, entries: rest };
        let over = self.fit_or_chain(dir, d, new, over)?;
        self.put_leaf(new, over);
        leaf.next = new;
        Ok(leaf)
    }

    pub(super) fn dir_remove(&mut self, dir: u64, name: &[u8]) -> Result<()> {
        let (_, blk) = self.lookup_entry(dir, name)?;
        let mut leaf = self.take_leaf(blk)?;
        Arc::make_mut(&mut leaf).entries.retain(|e| e.name != name);
        self.put_leaf_arc(blk, leaf);
        let mut d = self.dinode(dir)?;
        d.dir_entries = d.dir_entries.saturating_sub(1);
        self.put_dinode(dir, &d);
        Ok(())
    }

    /// Frees a directory's leaves and hash table blocks (it is empty).
    pub(super) fn dir_free_blocks(&mut self, dir: u64, d: &Dinode) -> Result<()> {
        let (_, table) = self.dir_table(dir)?;
        let mut seen = HashSet::new();
        for &p in &table {
            let mut blk = p;
            while blk != 0 && seen.insert(blk) {
                let next = self.leaf(blk)?.next;
                self.free_block(blk)?;
                blk = next;
            }
        }
        if !matches!(d.content, Content::DirHash(_)) {
            let (ext, index) = self.load_map(d)?;
            for e in ext {
                for b in e.physical..e.physical + e.len as u64 {
                    self.free_block(b)?;
                }
            }
            for i in index {
                self.free_block(i.leaf)?;
            }
        }
        Ok(())
    }

    /// Entries after `offset`, in hash order, at most `max`. Stable across concurrent
    /// inserts and removals (offsets are hash-based cookies).
    pub fn readdir(&mut self, dir: u64, offset: u64, max: usize) -> Result<Vec<ReaddirEntry>> {
        let (d, table) = self.dir_table(dir)?;
        let after = offset.checked_sub(COOKIE_BASE);
        let start_slot = after.map_or(0, |a| Self::slot((a >> 20) as u32, d.dir_depth));
        let mut out = Vec::new();
        let mut prev = 0;
        for &p in &table[start_slot..] {
            if p == prev {
                continue;
            }
            prev = p;
            let mut entries = Vec::new();
            let mut blk = p;
            while blk != 0 {
                let l = self.leaf(blk)?;
                entries.extend(l.entries.iter().cloned());
                blk = l.next;
            }
            entries.sort_by(|a, b| (a.hash, &a.name).cmp(&(b.hash, &b.name)));
            let mut rank = 0u64;
            for (i, e) in entries.iter().enumerate() {
                rank = if i > 0 && entries[i - 1].hash == e.hash { rank + 1 } else { 0 };
                let cookie = COOKIE_BASE + ((e.hash as u64) << 20 | rank.min((1 << 20) - 1));
                if after.is_some_and(|a| cookie <= a + COOKIE_BASE) {
                    continue;
                }
                out.push(ReaddirEntry { ino: e.inum, dtype: e.dtype, name: e.name.clone(), offset: cookie });
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }
}
