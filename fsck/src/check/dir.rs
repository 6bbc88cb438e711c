//! Pass 3: directories, breadth first from the root. The hash table (inline, or table blocks
//! mapped by extents), the leaves and their overflow chains must agree on depth, prefix and
//! slot span. Entries: no `.`/`..`, no duplicates, the inode must be a data block holding a
//! dinode with links, not a second link to a directory, not a block used for something else;
//! `d_type` must match the mode. A bad entry is removed in place (the leaf re-encoded); a
//! directory whose structure is damaged is queued to be rebuilt afresh from every leaf that
//! still reads (written in pass 6, see [`super::dir_rebuild`]).

use std::collections::{HashMap, HashSet};

use gfs::format::*;

use super::blockmap::map_block;
use super::dir_rebuild::new_dir_dinode;
use super::{dtype, Checker, Ino, C_DINODE, C_FREE, C_META};
use crate::FsckError;

/// What reading a directory's structure found.
#[derive(Default)]
struct DirScan {
    /// Leaves read, in table order, each followed by its overflow chain; misplaced ones too
    /// (they are claimed, and their entries are salvaged).
    leaves: Vec<(u64, DirLeaf)>,
    /// Leaves read so far (block -> index in `leaves`).
    seen: HashMap<u64, usize>,
    /// Blocks the structure uses besides the leaves (hash table blocks, extent leaves).
    blocks: u64,
    /// Why the structure is damaged (the first reason found).
    broken: Option<String>,
}

/// The entries that survive the entry checks, per leaf.
struct Kept {
    /// Per leaf: the entries it keeps (none when the directory is rebuilt).
    entries: Vec<Vec<DirEntry>>,
    /// Per leaf: whether an entry was removed or corrected (the leaf is written again).
    dirty: Vec<bool>,
    /// Subdirectories reached for the first time, to walk.
    subdirs: Vec<u64>,
}

impl Checker<'_> {
    pub(super) fn pass3_dirs(&mut self) -> Result<(), FsckError> {
        let root = self.sb.root_dinode;
        let rd = match self.read_dinode(root) {
            Ok(d) if d.is_dir() => Some(d),
            Ok(_) => {
                self.problem(format!("root inode {root} is not a directory"), "new empty root directory", false);
                None
            }
            Err(e) => {
                self.problem(format!("root inode {root}: {e}"), "new empty root directory", false);
                None
            }
        };
        let fresh = rd.is_none();
        let rd = rd.unwrap_or_else(|| new_dir_dinode(root, 0o40755));
        if !self.try_claim(root, C_DINODE) {
            // Not a data block: the superblock is inconsistent; nothing sensible to do.
            return Err(FsckError::Superblock(FormatError::Invalid { blkno: root, what: "root inode address" }));
        }
        if fresh {
            self.rebuild.insert(root, Vec::new());
        }
        let orig = (!fresh).then(|| rd.clone());
        self.inodes.insert(root, Ino { d: rd, links: 0, subdirs: 0, found_in: root, orig });
        self.walk_from(root)?;
        self.verbose(format!("  {} inodes reachable", self.inodes.len()));
        Ok(())
    }

    /// Walks the directory tree under `top` (already claimed and in `inodes`).
    pub(super) fn walk_from(&mut self, top: u64) -> Result<(), FsckError> {
        let mut queue = std::collections::VecDeque::from([top]);
        // Progress against the dinode count the resource groups record (an estimate).
        let total: u64 = self.rgs.iter().map(|r| r.rg.dinodes as u64).sum::<u64>().max(1);
        let mut next_pct = 25;
        while let Some(dir) = queue.pop_front() {
            for child in self.check_dir(dir)? {
                queue.push_back(child);
            }
            let pct = self.inodes.len() as u64 * 100 / total;
            if self.opts.verbose && self.pass == 3 && pct >= next_pct && next_pct < 100 {
                self.say(format!("  {next_pct}%"));
                next_pct += 25;
            }
        }
        Ok(())
    }

    /// Checks one directory: structure, entries; claims its blocks and its entries' inodes.
    /// Returns the subdirectories to walk.
    fn check_dir(&mut self, dir: u64) -> Result<Vec<u64>, FsckError> {
        let mut d = self.inodes[&dir].d.clone();
        let mut scan = DirScan::default();
        let table = self.read_hash_table(dir, &d, &mut scan)?;
        if !self.rebuild.contains_key(&dir) {
            if scan.broken.is_none() {
                self.read_leaves(dir, d.dir_depth, &table, &mut scan);
            }
            if scan.broken.is_some() {
                self.salvage_leaves(dir, &table, &mut scan);
            }
        }
        let entries = take_entries(&mut scan.leaves);
        if let Some(why) = &scan.broken {
            self.drop_structure(dir, &d, why, &scan.leaves, entries.len())?;
        }
        let mut blocks = scan.blocks + scan.leaves.len() as u64;
        let rebuilding = self.rebuild.contains_key(&dir);
        let mut kept = self.check_entries(dir, entries, scan.leaves.len(), rebuilding);
        if !rebuilding {
            self.rewrite_leaves(dir, &mut d, &scan.leaves, &mut kept)?;
        }
        if d.xattr_block != 0 && self.check_xattr(dir, &mut d) {
            blocks += 1;
        }
        if !rebuilding && d.blocks != blocks {
            self.problem(
                format!("directory {dir}: {} blocks recorded, {blocks} in use", d.blocks),
                "block count corrected",
                true,
            );
            d.blocks = blocks;
        }
        self.inodes.get_mut(&dir).expect("walked").d = d;
        Ok(kept.subdirs)
    }

    /// The hash table: inline in the dinode, or read from the table blocks its map names
    /// (claimed). Empty if the directory is already to be rebuilt, or broken.
    fn read_hash_table(&mut self, dir: u64, d: &Dinode, scan: &mut DirScan) -> Result<Vec<u64>, FsckError> {
        Ok(match &d.content {
            Content::DirHash(t) => t.clone(),
            Content::Extents(_) | Content::Index(_) if self.rebuild.contains_key(&dir) => Vec::new(),
            Content::Extents(_) | Content::Index(_) => self.read_table_blocks(dir, d, scan)?,
            Content::Inline(_) => {
                scan.broken = Some("directory with inline content".into());
                Vec::new()
            }
        })
    }

    /// A hash table kept in blocks the directory's map names: every block present, claimed
    /// once, of this directory and at its index, 2^depth pointers in all.
    fn read_table_blocks(&mut self, dir: u64, d: &Dinode, scan: &mut DirScan) -> Result<Vec<u64>, FsckError> {
        let g = d.dir_depth;
        let (ext, nidx, err) = self.load_map(dir, d)?;
        scan.blocks += nidx;
        if let Some(e) = err {
            scan.broken.get_or_insert(e);
        }
        let mut t = Vec::new();
        let want = 1usize.checked_shl(g as u32).unwrap_or(usize::MAX);
        if g > 20 {
            scan.broken.get_or_insert(format!("hash table depth {g}"));
        }
        let mut k = 0u64;
        while scan.broken.is_none() && t.len() < want {
            let Some(blk) = map_block(&ext, k) else {
                scan.broken = Some(format!("hash table block {k} missing"));
                break;
            };
            if !self.try_claim(blk, C_META) {
                scan.broken = Some(format!("hash table block {k} at {blk}: bad or shared pointer"));
                break;
            }
            scan.blocks += 1;
            match DirTable::decode(&self.img.read(blk)?[..], blk) {
                Ok(tb) if tb.owner == dir && tb.index as u64 == k => t.extend(tb.ptrs),
                Ok(_) => scan.broken = Some(format!("hash table block {blk}: wrong owner or index")),
                Err(e) => scan.broken = Some(format!("hash table: {e}")),
            }
            k += 1;
        }
        if scan.broken.is_none() && t.len() != want {
            scan.broken = Some("hash table size".into());
        }
        Ok(t)
    }

    /// Reads the leaves the hash table names, slot by slot, each with its overflow chain;
    /// stops at the first leaf that cannot be read or does not fit its slots.
    fn read_leaves(&mut self, dir: u64, g: u8, table: &[u64], scan: &mut DirScan) {
        let mut s = 0usize;
        while s < table.len() {
            let p = table[s];
            if scan.seen.contains_key(&p) {
                // Already read: must not reappear after other leaves.
                scan.broken.get_or_insert(format!("hash table slot {s}: leaf {p} out of place"));
                break;
            }
            let leaf = match self.read_leaf(dir, p) {
                Ok(l) => l,
                Err(e) => {
                    scan.broken.get_or_insert(e);
                    break;
                }
            };
            let (depth, prefix, next) = (leaf.depth, leaf.prefix, leaf.next);
            // Kept even if misplaced: it is claimed, and its entries are salvaged.
            scan.seen.insert(p, scan.leaves.len());
            scan.leaves.push((p, leaf));
            let span = match leaf_span(table, s, g, p, depth, prefix) {
                Ok(span) => span,
                Err(why) => {
                    scan.broken.get_or_insert(why);
                    break;
                }
            };
            self.read_chain(dir, next, depth, prefix, scan);
            s += span;
        }
    }

    /// Follows an overflow chain from `next`: every leaf in it has its head's depth and
    /// prefix and is read once.
    fn read_chain(&mut self, dir: u64, mut next: u64, depth: u16, prefix: u32, scan: &mut DirScan) {
        while next != 0 && scan.broken.is_none() {
            match self.read_leaf(dir, next) {
                Ok(l) if l.depth == depth && l.prefix == prefix && !scan.seen.contains_key(&next) => {
                    scan.seen.insert(next, scan.leaves.len());
                    let n = l.next;
                    scan.leaves.push((next, l));
                    next = n;
                }
                Ok(l) => {
                    scan.broken = Some(format!("overflow leaf {next}: depth or prefix"));
                    scan.seen.insert(next, scan.leaves.len());
                    scan.leaves.push((next, l));
                }
                Err(e) => scan.broken = Some(e),
            }
        }
    }

    /// Salvage from a damaged structure: every other leaf the table names (and its chain),
    /// whatever its place.
    fn salvage_leaves(&mut self, dir: u64, table: &[u64], scan: &mut DirScan) {
        let mut tried: HashSet<u64> = scan.seen.keys().copied().collect();
        for &p in table {
            let mut b = p;
            while b != 0 && tried.insert(b) {
                match self.read_leaf(dir, b) {
                    Ok(l) => {
                        let n = l.next;
                        scan.seen.insert(b, scan.leaves.len());
                        scan.leaves.push((b, l));
                        b = n;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// A damaged structure: reported, its leaves, table blocks and index leaves released,
    /// and the directory queued to be rebuilt from the `n` entries taken out of the leaves.
    fn drop_structure(
        &mut self,
        dir: u64,
        d: &Dinode,
        why: &str,
        leaves: &[(u64, DirLeaf)],
        n: usize,
    ) -> Result<(), FsckError> {
        self.problem(
            format!("directory {dir}: {why}"),
            &format!("directory rebuilt from the {n} entries still readable"),
            false,
        );
        for (p, _) in leaves {
            self.unclaim(*p);
        }
        if !matches!(d.content, Content::DirHash(_)) {
            // Table blocks and index leaves are dropped with the old structure.
            let (ext, _, _) = self.load_map_noclaim(dir, d)?;
            for e in ext {
                for b in e.physical..e.physical + e.len as u64 {
                    if self.claimed(b) == C_META {
                        self.unclaim(b);
                    }
                }
            }
            if let Content::Index(ix) = &d.content {
                for x in ix {
                    if self.claimed(x.leaf) == C_META {
                        self.unclaim(x.leaf);
                    }
                }
            }
        }
        self.rebuild.insert(dir, Vec::new());
        Ok(())
    }

    /// Checks every entry (`li`: its leaf): bad ones are reported and dropped, the others
    /// counted as links and kept in their leaf, or queued for the rebuilt directory.
    fn check_entries(&mut self, dir: u64, entries: Vec<(usize, DirEntry)>, leaves: usize, rebuilding: bool) -> Kept {
        let mut kept = Kept { entries: vec![Vec::new(); leaves], dirty: vec![false; leaves], subdirs: Vec::new() };
        let mut names = HashSet::new();
        for (li, mut e) in entries {
            let cd = match self.entry_inode(dir, &e, &mut names, &mut kept.subdirs) {
                Ok(cd) => cd,
                Err(why) => {
                    let name = String::from_utf8_lossy(&e.name);
                    self.problem(
                        format!("directory {dir}: entry {name:?} -> {}: {why}", e.inum),
                        "entry removed",
                        false,
                    );
                    kept.dirty[li] = true;
                    continue;
                }
            };
            if self.fix_entry_type(dir, &mut e, &cd) {
                kept.dirty[li] = true;
            }
            self.count_link(dir, &e, &cd);
            if rebuilding {
                self.rebuild.get_mut(&dir).expect("rebuilding").push(e);
            } else {
                kept.entries[li].push(e);
            }
        }
        kept
    }

    /// The dinode an entry names: claimed and recorded (and queued to walk if a directory)
    /// when this is its first link. `Err`: why the entry must go.
    fn entry_inode(
        &mut self,
        dir: u64,
        e: &DirEntry,
        names: &mut HashSet<Vec<u8>>,
        subdirs: &mut Vec<u64>,
    ) -> Result<Dinode, String> {
        if e.name == b"." || e.name == b".." {
            return Err("reserved name stored".into());
        }
        if !names.insert(e.name.clone()) {
            return Err("duplicate name".into());
        }
        let child_state = self.claimed(e.inum);
        if child_state == C_DINODE {
            return match self.inodes.get(&e.inum) {
                Some(ci) if ci.d.is_dir() => Err("second link to a directory".into()),
                Some(ci) => Ok(ci.d.clone()),
                None => Err("not an inode".into()),
            };
        }
        if child_state != C_FREE {
            return Err("points at a block in use for something else".into());
        }
        let cd = self.read_dinode(e.inum)?;
        if cd.nlink == 0 {
            return Err("inode has no links (deleted)".into());
        }
        self.claims[e.inum as usize] = C_DINODE;
        self.inodes.insert(e.inum, Ino { d: cd.clone(), links: 0, subdirs: 0, found_in: dir, orig: Some(cd.clone()) });
        if cd.is_dir() {
            subdirs.push(e.inum);
        }
        Ok(cd)
    }

    /// Corrects an entry's `d_type` to its inode's mode. True if it changed.
    fn fix_entry_type(&mut self, dir: u64, e: &mut DirEntry, cd: &Dinode) -> bool {
        if e.dtype == dtype(cd.mode) {
            return false;
        }
        let name = String::from_utf8_lossy(&e.name).into_owned();
        self.problem(
            format!(
                "directory {dir}: entry {name:?} has type {} but inode {} is type {}",
                e.dtype,
                e.inum,
                dtype(cd.mode)
            ),
            "entry type corrected",
            true,
        );
        e.dtype = dtype(cd.mode);
        true
    }

    /// Counts a kept entry: a link of its inode, a subdirectory of `dir`; notes lost+found
    /// (in the root) and the entries it holds.
    fn count_link(&mut self, dir: u64, e: &DirEntry, cd: &Dinode) {
        self.inodes.get_mut(&e.inum).expect("recorded by entry_inode").links += 1;
        if cd.is_dir() {
            self.inodes.get_mut(&dir).expect("walked").subdirs += 1;
        }
        if dir == self.sb.root_dinode && e.name == b"lost+found" && cd.is_dir() {
            self.lost_found = Some(e.inum);
        }
        if Some(dir) == self.lost_found {
            self.lf_entries.push(e.clone());
        }
    }

    /// Writes again the leaves an entry was removed from or corrected in, and corrects the
    /// directory's entry count.
    fn rewrite_leaves(
        &mut self,
        dir: u64,
        d: &mut Dinode,
        leaves: &[(u64, DirLeaf)],
        kept: &mut Kept,
    ) -> Result<(), FsckError> {
        let n: u64 = kept.entries.iter().map(|k| k.len() as u64).sum();
        for (i, (p, l)) in leaves.iter().enumerate() {
            if kept.dirty[i] {
                let nl = DirLeaf { entries: std::mem::take(&mut kept.entries[i]), ..l.clone() };
                self.img.stage(*p, nl.encode(*p))?;
            }
        }
        if d.dir_entries != n {
            self.problem(
                format!("directory {dir}: entry count {} but {n} entries found", d.dir_entries),
                "entry count corrected",
                true,
            );
            d.dir_entries = n;
        }
        Ok(())
    }

    fn read_leaf(&mut self, dir: u64, p: u64) -> Result<DirLeaf, String> {
        if !self.try_claim(p, C_META) {
            return Err(format!("leaf pointer {p}: outside the data area or already in use"));
        }
        let leaf = self.img.with(p, |b| DirLeaf::decode(b, p)).map_err(|e| e.to_string())?;
        match leaf {
            Ok(l) if l.owner == dir => Ok(l),
            Ok(l) => {
                self.unclaim(p);
                Err(format!("leaf {p} belongs to inode {}", l.owner))
            }
            Err(e) => {
                self.unclaim(p);
                Err(format!("leaf: {e}"))
            }
        }
    }
}

/// Takes the entries out of the leaves, each with the index of its leaf.
fn take_entries(leaves: &mut [(u64, DirLeaf)]) -> Vec<(usize, DirEntry)> {
    let mut entries = Vec::new();
    for (i, (_, l)) in leaves.iter_mut().enumerate() {
        entries.extend(std::mem::take(&mut l.entries).into_iter().map(|e| (i, e)));
    }
    entries
}

/// How many hash table slots, from slot `s`, the leaf `p` (of `depth` and `prefix`) read
/// there covers in a table of depth `g`: 2^(g - depth), starting at a multiple of that, all
/// pointing at `p`, with the prefix of the first. `Err`: why it does not fit.
fn leaf_span(table: &[u64], s: usize, g: u8, p: u64, depth: u16, prefix: u32) -> Result<usize, String> {
    let depth = depth as u32;
    if depth > g as u32 {
        return Err(format!("leaf {p}: depth {depth} above the table's {g}"));
    }
    let span = 1usize << (g as u32 - depth);
    let slot_prefix = if g == 0 { 0 } else { ((s as u64) << (32 - g as u32)) as u32 };
    let mask = if depth == 0 { 0 } else { u32::MAX << (32 - depth) };
    if !s.is_multiple_of(span) || slot_prefix & mask != prefix || table[s..].len() < span {
        return Err(format!("leaf {p}: prefix does not match its hash table slots"));
    }
    if table[s..s + span].iter().any(|&x| x != p) {
        return Err(format!("hash table slots {s}..{}: leaf {p} not repeated", s + span));
    }
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_span_covers_its_slots() {
        // Depth 2 table: slots 00, 01, 10, 11. Leaf 7 (depth 1, prefix 0) covers 00 and 01;
        // leaves 8 and 9 (depth 2) one slot each.
        let table = [7, 7, 8, 9];
        assert_eq!(leaf_span(&table, 0, 2, 7, 1, 0), Ok(2));
        assert_eq!(leaf_span(&table, 2, 2, 8, 2, 0x8000_0000), Ok(1));
        assert_eq!(leaf_span(&table, 3, 2, 9, 2, 0xc000_0000), Ok(1));
        // A depth-0 table: one slot, the whole hash space.
        assert_eq!(leaf_span(&[5], 0, 0, 5, 0, 0), Ok(1));
    }

    #[test]
    fn leaf_span_rejects_misfits() {
        let table = [7, 7, 8, 9];
        assert_eq!(leaf_span(&table, 0, 2, 7, 3, 0), Err("leaf 7: depth 3 above the table's 2".into()));
        // Wrong prefix for its slot.
        assert!(leaf_span(&table, 2, 2, 8, 2, 0).unwrap_err().contains("prefix does not match"));
        // Not at a multiple of its span.
        assert!(leaf_span(&[7, 8, 8, 9], 1, 2, 8, 1, 0).unwrap_err().contains("prefix does not match"));
        // Span past the end of the table.
        assert!(leaf_span(&table[..3], 2, 2, 8, 1, 0x8000_0000).unwrap_err().contains("prefix does not match"));
        // Not repeated over its span.
        assert_eq!(
            leaf_span(&table, 2, 2, 8, 1, 0x8000_0000),
            Err("hash table slots 2..4: leaf 8 not repeated".into())
        );
    }

    #[test]
    fn take_entries_tags_each_with_its_leaf() {
        let e = |n: &[u8]| DirEntry { inum: 1, hash: name_hash(n), dtype: 8, name: n.to_vec() };
        let leaf = |entries| DirLeaf { owner: 1, depth: 0, prefix: 0, next: 0, entries };
        let mut leaves = vec![(10, leaf(vec![e(b"a"), e(b"b")])), (11, leaf(vec![])), (12, leaf(vec![e(b"c")]))];
        let got: Vec<(usize, Vec<u8>)> = take_entries(&mut leaves).into_iter().map(|(i, e)| (i, e.name)).collect();
        assert_eq!(got, vec![(0, b"a".to_vec()), (0, b"b".to_vec()), (2, b"c".to_vec())]);
        assert!(leaves.iter().all(|(_, l)| l.entries.is_empty()));
    }
}
