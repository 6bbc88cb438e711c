//! Writing directories afresh (pass 3's repairs, carried out in pass 6 once every block the
//! walk claims is known): the smallest inline hash table that holds the surviving entries,
//! overflow chains past depth 8; adding one entry in place where a leaf has room; new
//! directory dinodes (a lost root, lost+found).

use std::collections::HashSet;

use gfs::format::*;

use super::blockmap::map_block;
use super::{Checker, C_META};
use crate::FsckError;

impl Checker<'_> {
    /// Adds one entry to a directory that is not being rebuilt: into a leaf with room in
    /// the right slot, else the directory is rebuilt.
    pub(super) fn add_entry(&mut self, dir: u64, e: DirEntry) -> Result<(), FsckError> {
        if let Some(v) = self.rebuild.get_mut(&dir) {
            v.push(e);
            return Ok(());
        }
        let d = self.inodes[&dir].d.clone();
        if let Content::DirHash(t) = &d.content {
            let slot = if d.dir_depth == 0 { 0 } else { (e.hash >> (32 - d.dir_depth as u32)) as usize };
            let p = t[slot];
            if let Ok(mut l) = DirLeaf::decode(&self.img.read(p)?[..], p) {
                if l.used() + e.space() <= DIR_LEAF_SPACE {
                    let pos = l.entries.partition_point(|x| (x.hash, &x.name[..]) < (e.hash, &e.name[..]));
                    l.entries.insert(pos, e);
                    self.img.stage(p, l.encode(p))?;
                    self.inodes.get_mut(&dir).expect("dir").d.dir_entries += 1;
                    return Ok(());
                }
            }
        }
        // Rebuild the whole directory with the new entry: gather its current entries.
        let mut all = self.dir_entries_now(dir, &d)?;
        all.push(e);
        for b in self.dir_blocks_now(dir, &d)? {
            self.unclaim(b);
        }
        self.rebuild.insert(dir, all);
        Ok(())
    }

    /// A directory's hash table as it stands (inline, or from the table blocks it maps).
    fn dir_tables(&mut self, dir: u64, d: &Dinode) -> Result<Vec<u64>, FsckError> {
        Ok(match &d.content {
            Content::DirHash(t) => t.clone(),
            _ => {
                let (ext, _, _) = self.load_map_noclaim(dir, d)?;
                let mut t = Vec::new();
                let mut k = 0;
                while let Some(b) = map_block(&ext, k) {
                    if let Ok(tb) = DirTable::decode(&self.img.read(b)?[..], b) {
                        t.extend(tb.ptrs);
                    }
                    k += 1;
                }
                t
            }
        })
    }

    /// Every entry a directory's leaves hold now (each leaf read once).
    fn dir_entries_now(&mut self, dir: u64, d: &Dinode) -> Result<Vec<DirEntry>, FsckError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for p in self.dir_tables(dir, d)? {
            let mut b = p;
            while b != 0 && seen.insert(b) {
                let Ok(l) = DirLeaf::decode(&self.img.read(b)?[..], b) else { break };
                out.extend(l.entries);
                b = l.next;
            }
        }
        Ok(out)
    }

    /// Every block a directory's structure uses now: leaves, table blocks, index leaves.
    fn dir_blocks_now(&mut self, dir: u64, d: &Dinode) -> Result<Vec<u64>, FsckError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for p in self.dir_tables(dir, d)? {
            let mut b = p;
            while b != 0 && seen.insert(b) {
                out.push(b);
                let Ok(l) = DirLeaf::decode(&self.img.read(b)?[..], b) else { break };
                b = l.next;
            }
        }
        if !matches!(d.content, Content::DirHash(_)) {
            let (ext, _, _) = self.load_map_noclaim(dir, d)?;
            for e in ext {
                out.extend(e.physical..e.physical + e.len as u64);
            }
            if let Content::Index(ix) = &d.content {
                out.extend(ix.iter().map(|x| x.leaf));
            }
        }
        Ok(out)
    }

    /// Writes a directory afresh: the smallest inline hash table whose leaves hold the
    /// entries (overflow chains at the deepest inline level).
    pub(super) fn build_dir(&mut self, dir: u64, mut entries: Vec<DirEntry>) -> Result<(), FsckError> {
        entries.sort_by(|a, b| (a.hash, &a.name).cmp(&(b.hash, &b.name)));
        let slot = |h: u32, g: u8| if g == 0 { 0 } else { (h >> (32 - g as u32)) as usize };
        let mut g = 0u8;
        loop {
            let mut used = vec![0usize; 1 << g];
            for e in &entries {
                used[slot(e.hash, g)] += e.space();
            }
            if used.iter().all(|&u| u <= DIR_LEAF_SPACE) || g == INLINE_DIR_DEPTH {
                break;
            }
            g += 1;
        }
        let mut table = Vec::with_capacity(1 << g);
        let mut nblocks = 0u64;
        let mut it = entries.iter().peekable();
        for s in 0..(1usize << g) {
            let mut bucket = Vec::new();
            while let Some(e) = it.peek() {
                if slot(e.hash, g) != s {
                    break;
                }
                bucket.push((*it.next().expect("peeked")).clone());
            }
            // Chunks that fit a leaf, chained.
            let mut chunks: Vec<Vec<DirEntry>> = vec![Vec::new()];
            let mut used = 0;
            for e in bucket {
                if used + e.space() > DIR_LEAF_SPACE {
                    chunks.push(Vec::new());
                    used = 0;
                }
                used += e.space();
                chunks.last_mut().expect("one").push(e);
            }
            let mut addrs = Vec::new();
            for _ in &chunks {
                let Some(b) = self.alloc(C_META) else {
                    self.problem(format!("directory {dir}: no space to rebuild it"), "left empty", false);
                    return Ok(());
                };
                addrs.push(b);
            }
            let prefix = if g == 0 { 0 } else { ((s as u64) << (32 - g as u32)) as u32 };
            for (k, chunk) in chunks.into_iter().enumerate() {
                let next = addrs.get(k + 1).copied().unwrap_or(0);
                let l = DirLeaf { owner: dir, depth: g as u16, prefix, next, entries: chunk };
                self.img.stage(addrs[k], l.encode(addrs[k]))?;
            }
            nblocks += addrs.len() as u64;
            table.push(addrs[0]);
        }
        let i = self.inodes.get_mut(&dir).expect("rebuilt directory is walked");
        i.d.content = Content::DirHash(table);
        i.d.dir_depth = g;
        i.d.dir_entries = entries.len() as u64;
        i.d.blocks = nblocks + (i.d.xattr_block != 0) as u64;
        Ok(())
    }
}

/// A new, empty directory dinode (made by fsck: a lost root, lost+found).
pub(super) fn new_dir_dinode(parent: u64, mode: u32) -> Dinode {
    let now = gfs::now();
    Dinode {
        mode,
        uid: 0,
        gid: 0,
        nlink: 2,
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        rdev: 0,
        generation: now.sec as u64,
        parent,
        flags: 0,
        dir_depth: 0,
        xattr_block: 0,
        dir_entries: 0,
        content: Content::DirHash(vec![]),
    }
}
