//! An invariant checker (the seed of gfs_fsck): walks the tree from the root and compares
//! what is reachable with the bitmaps, the link counts and the resource group counters.

use super::*;

/// What [`Fs::check`] found; `problems` is empty on a consistent filesystem.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub inodes: u64,
    pub directories: u64,
    pub blocks_in_use: u64,
    pub problems: Vec<String>,
}

impl Fs {
    /// Checks the filesystem as this mount sees it.
    pub fn check(&mut self) -> Result<CheckReport> {
        let mut r = CheckReport::default();
        // block -> expected state; inode -> links found.
        let mut used: HashMap<u64, BlockState> = HashMap::new();
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut stack = vec![self.root()];
        let mut seen_dirs = HashSet::new();
        used.insert(self.root(), BlockState::Dinode);
        while let Some(dir) = stack.pop() {
            if !seen_dirs.insert(dir) {
                r.problems.push(format!("directory {dir} reachable twice"));
                continue;
            }
            r.directories += 1;
            let (d, table) = match self.dir_table(dir) {
                Ok(x) => x,
                Err(e) => {
                    r.problems.push(format!("directory {dir}: hash table: {e}"));
                    continue;
                }
            };
            let table = &table;
            if !matches!(d.content, Content::DirHash(_)) {
                if let Content::Index(idx) = &d.content {
                    for x in idx {
                        used.insert(x.leaf, BlockState::Meta);
                    }
                }
                let (ext, _) = self.load_map(&d)?;
                for x in &ext {
                    for b in x.physical..x.physical + x.len as u64 {
                        if used.insert(b, BlockState::Meta).is_some() {
                            r.problems.push(format!("block {b} used twice"));
                        }
                    }
                }
            }
            let mut leaves = HashSet::new();
            let mut entries = 0u64;
            for &p in table.iter() {
                let mut blk = p;
                while blk != 0 && leaves.insert(blk) {
                    used.insert(blk, BlockState::Meta);
                    let l = self.leaf(blk)?;
                    for e in &l.entries {
                        entries += 1;
                        *links.entry(e.inum).or_default() += 1;
                        let first = !used.contains_key(&e.inum);
                        used.insert(e.inum, BlockState::Dinode);
                        let c = match self.dinode(e.inum) {
                            Ok(c) => c,
                            Err(err) => {
                                r.problems
                                    .push(format!("entry {:?} in {dir}: {err}", String::from_utf8_lossy(&e.name)));
                                continue;
                            }
                        };
                        if first && c.xattr_block != 0 && used.insert(c.xattr_block, BlockState::Meta).is_some() {
                            r.problems.push(format!("block {} used twice", c.xattr_block));
                        }
                        if dtype(c.mode) != e.dtype {
                            r.problems.push(format!("entry type mismatch for inode {}", e.inum));
                        }
                        if c.is_dir() {
                            stack.push(e.inum);
                            if c.parent != dir {
                                r.problems
                                    .push(format!("directory {} has parent {} but is in {dir}", e.inum, c.parent));
                            }
                        } else if first && !c.is_symlink() {
                            if let Content::Index(idx) = &c.content {
                                for x in idx {
                                    if used.insert(x.leaf, BlockState::Meta).is_some() {
                                        r.problems.push(format!("block {} used twice", x.leaf));
                                    }
                                }
                            }
                            let (ext, _) = self.load_map(&c)?;
                            let mut nblocks = 0u64;
                            for x in &ext {
                                nblocks += x.len as u64;
                                for b in x.physical..x.physical + x.len as u64 {
                                    if used.insert(b, BlockState::Data).is_some() {
                                        r.problems.push(format!("block {b} used twice"));
                                    }
                                }
                            }
                            if let Content::Index(idx) = &c.content {
                                nblocks += idx.len() as u64;
                            }
                            if c.xattr_block != 0 {
                                nblocks += 1;
                            }
                            if nblocks != c.blocks {
                                r.problems.push(format!(
                                    "inode {}: {nblocks} blocks mapped, dinode says {}",
                                    e.inum, c.blocks
                                ));
                            }
                        }
                    }
                    blk = l.next;
                }
            }
            if entries != d.dir_entries {
                r.problems.push(format!("directory {dir}: {entries} entries, dinode says {}", d.dir_entries));
            }
        }
        // Link counts: files = entries naming them; directories = 2 + subdirectories.
        let mut subdirs: HashMap<u64, u32> = HashMap::new();
        for &dir in &seen_dirs {
            let d = self.dinode(dir)?;
            if dir != self.root() {
                *subdirs.entry(d.parent).or_default() += 1;
            }
        }
        for (&ino, &n) in &links {
            let Ok(d) = self.dinode(ino) else { continue };
            r.inodes += 1;
            let want = if d.is_dir() { 2 + subdirs.get(&ino).copied().unwrap_or(0) } else { n };
            if d.nlink != want && !(d.is_dir() && n != 1) {
                r.problems.push(format!("inode {ino}: link count {} but {want} found", d.nlink));
            }
        }
        let root = self.dinode(self.root())?;
        if root.xattr_block != 0 {
            used.insert(root.xattr_block, BlockState::Meta);
        }
        let want_root = 2 + subdirs.get(&self.root()).copied().unwrap_or(0);
        if root.nlink != want_root {
            r.problems.push(format!("root: link count {} but {want_root} found", root.nlink));
        }
        // Journals added by gfs_jadd live in resource groups.
        for (first, n) in self.journal_runs_in_groups()? {
            for b in first..first + n {
                if used.insert(b, BlockState::Meta).is_some() {
                    r.problems.push(format!("block {b} used twice (a journal's)"));
                }
            }
        }
        // Bitmaps against reachability (open-but-unlinked inodes are legitimately unreachable).
        let orphans: HashSet<u64> = self.orphans.clone();
        for rgi in 0..self.rgs.len() {
            let (data0, count) = (self.rgs[rgi].rg.data0, self.rgs[rgi].rg.data_count as u64);
            let (mut free, mut dinodes) = (0u32, 0u32);
            for b in data0..data0 + count {
                let s = self.block_state(b)?;
                if s == BlockState::Free {
                    free += 1;
                } else {
                    r.blocks_in_use += 1;
                }
                if s == BlockState::Dinode {
                    dinodes += 1;
                }
                let want = used.get(&b).copied().unwrap_or(BlockState::Free);
                if s != want && orphans.is_empty() {
                    r.problems.push(format!("block {b}: bitmap says {s:?}, reachability says {want:?}"));
                }
            }
            let rg = self.rgs[rgi].rg;
            if rg.free != free || rg.dinodes != dinodes {
                r.problems.push(format!(
                    "resource group {rgi}: header free {} dinodes {}, bitmap free {free} dinodes {dinodes}",
                    rg.free, rg.dinodes
                ));
            }
        }
        Ok(r)
    }
}
