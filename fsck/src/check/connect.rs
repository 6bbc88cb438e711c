//! Pass 4: connectivity. Dinodes marked in the bitmaps (or found in a group whose bitmap is
//! unreadable) that no entry reaches: with no links they are unlinked-while-open files of a
//! crashed node and are freed; otherwise they go to `lost+found/#INODE` (directories from
//! their topmost unreachable ancestor, with their subtree). `lost+found` is created if needed
//! (linked in by pass 6, once every block the walk claims is known).

use std::collections::{BTreeMap, HashSet};

use gfs::format::*;

use super::dir_rebuild::new_dir_dinode;
use super::{dtype, Checker, Ino, C_DINODE, C_FREE, DT_DIR, LOST_FOUND};
use crate::FsckError;

impl Checker<'_> {
    pub(super) fn pass4_connectivity(&mut self) -> Result<(), FsckError> {
        // Candidates: dinodes the bitmaps mark in use, and any dinode in a group whose
        // bitmap is unreadable.
        let mut cands = Vec::new();
        for rg in &self.rgs {
            for k in 0..rg.rg.data_count as u64 {
                let b = rg.rg.data0 + k;
                if self.claims[b as usize] != C_FREE {
                    continue;
                }
                match rg.bitmaps.get((k / BITMAP_BLOCKS_PER_BLOCK as u64) as usize) {
                    Some(Some(bm)) => {
                        if bm.get((k % BITMAP_BLOCKS_PER_BLOCK as u64) as u32) == BlockState::Dinode {
                            cands.push(b);
                        }
                    }
                    _ => cands.push(b),
                }
            }
        }
        let mut orphans: BTreeMap<u64, Dinode> = BTreeMap::new();
        for b in cands {
            let marked = self.bitmap_state(b) == Some(BlockState::Dinode);
            match self.read_dinode(b) {
                Ok(d) if d.nlink == 0 => {
                    self.problem(format!("inode {b}: unreferenced with no links (unlinked while open)"), "freed", true);
                }
                Ok(d) => {
                    orphans.insert(b, d);
                }
                Err(e) if marked => {
                    self.problem(format!("inode {b}: marked in use, unreadable: {e}"), "freed", false);
                }
                Err(_) => {}
            }
        }
        // Directories first, each from its topmost unreachable ancestor.
        let dirs: Vec<u64> = orphans.iter().filter(|(_, d)| d.is_dir()).map(|(&b, _)| b).collect();
        for b in dirs {
            if self.claims[b as usize] != C_FREE {
                continue;
            }
            let mut top = b;
            let mut hops = 0;
            while let Some(p) = orphans.get(&top).map(|d| d.parent) {
                if p == top || hops > orphans.len() || self.claims.get(p as usize) != Some(&C_FREE) {
                    break;
                }
                match orphans.get(&p) {
                    Some(pd) if pd.is_dir() => top = p,
                    _ => break,
                }
                hops += 1;
            }
            self.attach_orphan(top, orphans[&top].clone())?;
            self.walk_from(top)?;
        }
        for (b, d) in orphans {
            if self.claims[b as usize] == C_FREE && !d.is_dir() {
                self.attach_orphan(b, d)?;
            }
        }
        Ok(())
    }

    fn attach_orphan(&mut self, b: u64, d: Dinode) -> Result<(), FsckError> {
        let kind = if d.is_dir() { "directory" } else { "inode" };
        self.problem(format!("{kind} {b}: not reachable from the root"), "moved to lost+found", false);
        self.claims[b as usize] = C_DINODE;
        self.inodes.insert(b, Ino { orig: Some(d.clone()), d, links: 0, subdirs: 0, found_in: LOST_FOUND });
        self.lf_new.push(b);
        Ok(())
    }

    /// Links the orphans found in pass 4 into lost+found as `#INODE` (the directory is
    /// rebuilt with them). False if there is no lost+found and no space to make one: the
    /// orphans stay unlinked.
    pub(super) fn link_orphans(&mut self) -> Result<bool, FsckError> {
        if self.lf_new.is_empty() {
            return Ok(true);
        }
        let Some(lf) = self.lost_found_dir()? else {
            return Ok(false);
        };
        let mut entries = std::mem::take(&mut self.lf_entries);
        if let Some(r) = self.rebuild.remove(&lf) {
            entries = r;
        }
        let mut names: HashSet<Vec<u8>> = entries.iter().map(|e| e.name.clone()).collect();
        for b in std::mem::take(&mut self.lf_new) {
            let mut name = format!("#{b}").into_bytes();
            let mut k = 1;
            while names.contains(&name) {
                name = format!("#{b}.{k}").into_bytes();
                k += 1;
            }
            names.insert(name.clone());
            let i = self.inodes.get_mut(&b).expect("orphan");
            i.links += 1;
            i.found_in = lf;
            let dt = dtype(i.d.mode);
            if i.d.is_dir() {
                self.inodes.get_mut(&lf).expect("lost+found").subdirs += 1;
            }
            entries.push(DirEntry { inum: b, hash: name_hash(&name), dtype: dt, name });
        }
        self.rebuild.insert(lf, entries);
        Ok(true)
    }

    /// The lost+found directory, made (and linked into the root) if there is none; `None` if
    /// there is no space for it.
    fn lost_found_dir(&mut self) -> Result<Option<u64>, FsckError> {
        if let Some(lf) = self.lost_found {
            return Ok(Some(lf));
        }
        let root = self.sb.root_dinode;
        let Some(lf) = self.alloc(C_DINODE) else {
            self.problem("no space for lost+found".into(), "orphans left unlinked", false);
            return Ok(None);
        };
        self.problem("no lost+found directory".into(), "lost+found created", false);
        let d = new_dir_dinode(root, 0o40700);
        self.inodes.insert(lf, Ino { d, links: 1, subdirs: 0, found_in: root, orig: None });
        self.inodes.get_mut(&root).expect("root").subdirs += 1;
        let e = DirEntry { inum: lf, hash: name_hash(b"lost+found"), dtype: DT_DIR, name: b"lost+found".to_vec() };
        self.add_entry(root, e)?;
        self.lost_found = Some(lf);
        Ok(Some(lf))
    }
}
