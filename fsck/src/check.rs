//! The passes. All reads go through [`Img`], which serves staged repairs over the device, so
//! later passes see the filesystem as the earlier ones left it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;

use gfs::format::*;
use gfs::Device;

use crate::{FsckError, Mode, Options, Summary};

/// One inconsistency: what was found and what the repair is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub pass: u8,
    pub what: String,
    pub fix: String,
    /// Safe for `-p` (preen).
    pub safe: bool,
}

const BS: u64 = BLOCK_SIZE as u64;
/// Claim states (as [`BlockState`]); 0 is unclaimed.
const C_FREE: u8 = 0;
const C_DATA: u8 = BlockState::Data as u8;
const C_META: u8 = BlockState::Meta as u8;
const C_DINODE: u8 = BlockState::Dinode as u8;
/// Placeholder parent for directories moved to lost+found before it has an inode number.
const LOST_FOUND: u64 = u64::MAX;
const DT_DIR: u8 = 4;

fn dtype(mode: u32) -> u8 {
    gfs::fs::dtype(mode)
}

/// Blocks read at once (read-ahead: dinodes, leaves and bitmaps sit close together).
const CHUNK: u64 = 64;
/// Chunks kept (16 MiB).
const CHUNKS_KEPT: usize = 64;

/// The device with staged block images on top, read in chunks.
struct Img {
    dev: Arc<dyn Device>,
    staged: BTreeMap<u64, Box<Block>>,
    /// Recently read chunks, oldest first.
    chunks: std::cell::RefCell<std::collections::VecDeque<(u64, Vec<u8>)>>,
    /// Blocks on the device.
    blocks: u64,
}

impl Img {
    fn new(dev: Arc<dyn Device>) -> Self {
        let blocks = dev.size() / BS;
        Img { dev, staged: BTreeMap::new(), chunks: Default::default(), blocks }
    }

    fn read(&self, b: u64) -> Result<Box<Block>, FsckError> {
        self.with(b, |x| {
            let mut out = Box::new([0u8; BLOCK_SIZE]);
            out.copy_from_slice(x);
            out
        })
    }

    /// Runs `f` on block `b` without copying it.
    fn with<R>(&self, b: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R, FsckError> {
        if let Some(x) = self.staged.get(&b) {
            return Ok(f(&x[..]));
        }
        if b >= self.blocks {
            let mut x = Box::new([0u8; BLOCK_SIZE]);
            self.dev.read_at(&mut x[..], b * BS)?;
            return Ok(f(&x[..]));
        }
        let c = b / CHUNK;
        let mut chunks = self.chunks.borrow_mut();
        if chunks.back().is_none_or(|(k, _)| *k != c) {
            if let Some(i) = chunks.iter().position(|(k, _)| *k == c) {
                let hit = chunks.remove(i).expect("found");
                chunks.push_back(hit);
            } else {
                let n = CHUNK.min(self.blocks - c * CHUNK);
                let mut buf = vec![0u8; (n * BS) as usize];
                self.dev.read_at(&mut buf, c * CHUNK * BS)?;
                if chunks.len() >= CHUNKS_KEPT {
                    chunks.pop_front();
                }
                chunks.push_back((c, buf));
            }
        }
        let (_, buf) = chunks.back().expect("just read");
        let off = ((b - c * CHUNK) * BS) as usize;
        Ok(f(&buf[off..off + BLOCK_SIZE]))
    }
    /// Stages `blk` for block `b` unless the block already holds exactly that.
    fn stage(&mut self, b: u64, blk: Box<Block>) -> Result<(), FsckError> {
        if !self.with(b, |x| x == &blk[..])? {
            self.staged.insert(b, blk);
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<u64, FsckError> {
        let n = self.staged.len() as u64;
        self.chunks.borrow_mut().clear();
        for (b, x) in std::mem::take(&mut self.staged) {
            self.dev.write_at(&x[..], b * BS)?;
        }
        self.dev.sync()?;
        Ok(n)
    }
}

struct Rg {
    addr: u64,
    /// Geometry from the superblock; counters as found on disk (or 0 when rebuilt).
    rg: Rgrp,
    /// Bitmaps as found (`None`: unreadable, rebuilt from reachability).
    bitmaps: Vec<Option<Bitmap>>,
}

/// What the walk knows about a reachable inode.
struct Ino {
    d: Dinode,
    /// Directory entries naming it.
    links: u32,
    /// Subdirectories (directories only).
    subdirs: u32,
    /// The directory it was found in (`LOST_FOUND` for orphans).
    found_in: u64,
    /// The dinode as found (`None`: made by fsck), so only changed dinodes are written.
    orig: Option<Dinode>,
}

struct Checker<'a> {
    img: Img,
    sb: Superblock,
    opts: Options,
    out: &'a mut dyn Write,
    rgs: Vec<Rg>,
    claims: Vec<u8>,
    inodes: BTreeMap<u64, Ino>,
    problems: Vec<Problem>,
    /// Directories to rebuild from these entries.
    rebuild: BTreeMap<u64, Vec<DirEntry>>,
    lost_found: Option<u64>,
    lf_entries: Vec<DirEntry>,
    /// Orphans to link into lost+found.
    lf_new: Vec<u64>,
    alloc_cursor: u64,
    pass: u8,
    replayed: u64,
    /// The journals (from the journal index, or rebuilt from the geometry).
    journals: Vec<JournalEntry>,
}

/// Checks (and with `-y`/`-p` repairs) the filesystem on `dev`.
pub fn check_device(dev: Arc<dyn Device>, opts: &Options, out: &mut dyn Write) -> Result<Summary, FsckError> {
    let mut img = Img::new(dev);
    let mut sb_problem = None;
    let sb = match Superblock::decode(&img.read(SB_BLOCK)?[..]) {
        Ok(sb) => sb,
        Err(e) => match rebuild_superblock(&img)? {
            Some(sb) => {
                img.stage(SB_BLOCK, sb.encode())?;
                sb_problem = Some(format!(
                    "superblock: {e}; found {} resource groups of {} blocks from {}, {} journals, root {}",
                    sb.rg_count, sb.rg_blocks, sb.rg_start, sb.journal_count, sb.root_dinode
                ));
                sb
            }
            None => return Err(FsckError::Superblock(e)),
        },
    };
    let dev_blocks = img.dev.size() / BS;
    if dev_blocks < sb.block_count {
        return Err(FsckError::Truncated { dev: dev_blocks, fs: sb.block_count });
    }
    let mut c = Checker {
        claims: vec![C_FREE; sb.block_count as usize],
        img,
        sb,
        opts: *opts,
        out,
        rgs: Vec::new(),
        inodes: BTreeMap::new(),
        problems: Vec::new(),
        rebuild: BTreeMap::new(),
        lost_found: None,
        lf_entries: Vec::new(),
        lf_new: Vec::new(),
        alloc_cursor: 0,
        pass: 0,
        replayed: 0,
        journals: Vec::new(),
    };
    if let Some(what) = sb_problem {
        c.pass = 1;
        c.problem(
            what,
            "superblock rebuilt from the resource group headers (new UUID; lock protocol lock_nolock and lock \
             table fsck:rebuilt: set the right ones before mounting in a cluster)",
            false,
        );
    }
    c.run()
}

/// Finds the geometry mkfs wrote from what survives: the journal index and master statfs at
/// their fixed places, resource group headers (the first two give the start and the size),
/// the root directory at the first data block of group 0.
fn rebuild_superblock(img: &Img) -> Result<Option<Superblock>, FsckError> {
    let dev_blocks = img.dev.size() / BS;
    let jindex_block = SB_BLOCK + 1;
    let master_statfs = SB_BLOCK + 2;
    let rg_at = |b: u64| -> Result<Option<Rgrp>, FsckError> { Ok(Rgrp::decode(&img.read(b)?[..], b).ok()) };
    // Journal count: the journal index, else the statfs change blocks that follow the master.
    let journal_count = match JIndex::decode(&img.read(jindex_block)?[..], jindex_block) {
        Ok(j) => j.journals.len() as u64,
        Err(_) => {
            let mut n = 0;
            while n < JINDEX_MAX as u64
                && matches!(Statfs::decode(&img.read(master_statfs + 1 + n)?[..], master_statfs + 1 + n),
                    Ok(s) if s.slot == n as u32)
            {
                n += 1;
            }
            n
        }
    };
    if journal_count == 0 {
        return Ok(None);
    }
    // First resource group: the first group header with index 0 past the journals.
    let mut b = master_statfs + 1 + journal_count;
    let (rg_start, rg0) = loop {
        if b >= dev_blocks {
            return Ok(None);
        }
        match rg_at(b)? {
            Some(r) if r.index == 0 => break (b, r),
            _ => b += 1,
        }
    };
    // Size: where group 1 starts (or group 0's own length if it is the only one).
    let own_len = 1 + rg0.bitmap_blocks as u64 + rg0.data_count as u64;
    let mut rg_blocks = own_len;
    let mut b = rg_start + own_len;
    while b < dev_blocks && b < rg_start + 2 * own_len + 16 {
        if matches!(rg_at(b)?, Some(r) if r.index == 1) {
            rg_blocks = b - rg_start;
            break;
        }
        b += 1;
    }
    // Groups: as many as the device holds (mkfs's rule), the last one possibly shorter.
    let mut rg_count = 0u64;
    let mut end = rg_start;
    while end < dev_blocks {
        let len = (dev_blocks - end).min(rg_blocks);
        let known = rg_at(end)?;
        let len = match known {
            Some(r) if r.index as u64 == rg_count => 1 + r.bitmap_blocks as u64 + r.data_count as u64,
            _ if len < 16 && rg_count > 0 => break,
            _ => len,
        };
        if Rgrp::layout(rg_count as u32, end, len).is_none() {
            break;
        }
        rg_count += 1;
        end += len;
    }
    // mkfs puts the root at group 0's first data block (if it is gone, pass 3 makes a new one).
    let root = rg0.data0;
    let t = gfs::now();
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&(t.sec as u64).to_le_bytes());
    uuid[8..12].copy_from_slice(&t.nsec.to_le_bytes());
    uuid[12..].copy_from_slice(&std::process::id().to_le_bytes());
    Ok(Some(Superblock {
        block_size: BLOCK_SIZE as u32,
        block_count: end,
        uuid,
        lockproto: LockProto::Nolock,
        locktable: "fsck:rebuilt".into(),
        root_dinode: root,
        jindex_block,
        master_statfs,
        rg_start,
        rg_blocks: rg_blocks as u32,
        rg_count: rg_count as u32,
        journal_count: journal_count as u32,
    }))
}

impl Checker<'_> {
    fn say(&mut self, msg: impl AsRef<str>) {
        let _ = writeln!(self.out, "{}", msg.as_ref());
    }
    fn verbose(&mut self, msg: impl AsRef<str>) {
        if self.opts.verbose {
            self.say(msg);
        }
    }
    fn problem(&mut self, what: String, fix: &str, safe: bool) {
        let status = match self.opts.mode {
            Mode::No => format!("not fixed; -y would: {fix}"),
            Mode::Preen if !safe => "not fixed: needs gfs_fsck -y".to_string(),
            _ => format!("fixed: {fix}"),
        };
        self.say(format!("  {what} [{status}]"));
        self.problems.push(Problem { pass: self.pass, what, fix: fix.to_string(), safe });
    }

    fn run(&mut self) -> Result<Summary, FsckError> {
        self.pass = 1;
        self.verbose("Pass 1: superblock and resource groups");
        self.pass1_rgrps()?;
        self.pass = 2;
        self.verbose("Pass 2: journals");
        self.pass2_journals()?;
        self.after_replay()?;
        self.claim_journals()?;
        if self.opts.mode != Mode::No && !self.img.staged.is_empty() {
            // Replay and journal repairs are safe: written before the rest is looked at.
            self.img.flush()?;
        }
        self.pass = 3;
        self.verbose("Pass 3: directories");
        self.pass3_dirs()?;
        self.pass = 4;
        self.verbose("Pass 4: connectivity");
        self.pass4_connectivity()?;
        self.pass = 5;
        self.verbose("Pass 5: inode block maps");
        self.pass5_files()?;
        self.pass = 6;
        self.verbose("Pass 6: link counts, bitmaps, resource group and statfs counters");
        self.pass6_finish()?;
        let unsafe_found = self.problems.iter().any(|p| !p.safe);
        let write = match self.opts.mode {
            Mode::No => false,
            Mode::Yes => true,
            Mode::Preen => !unsafe_found,
        };
        let mut s = Summary {
            inodes: self.inodes.len() as u64,
            directories: self.inodes.values().filter(|i| i.d.is_dir()).count() as u64,
            journals_replayed: self.replayed,
            ..Default::default()
        };
        for (i, rg) in self.rgs.iter().enumerate() {
            let _ = i;
            s.data_blocks += rg.rg.data_count as u64;
            s.blocks_in_use += (rg.rg.data_count - rg.rg.free) as u64;
        }
        if write && !self.problems.is_empty() {
            let n = self.img.flush()?;
            self.verbose(format!("{n} blocks written"));
            s.written = true;
        } else if self.opts.mode == Mode::Preen && unsafe_found {
            self.say("UNEXPECTED INCONSISTENCY; run gfs_fsck -y (nothing but journal replay was written)");
        }
        s.problems = std::mem::take(&mut self.problems);
        // Journal replay with -y/-p was written even when the rest was clean.
        if s.problems.is_empty() && self.replayed > 0 && self.opts.mode != Mode::No {
            s.written = true;
        }
        Ok(s)
    }

    // ---- geometry and claims ----

    fn rg_of(&self, b: u64) -> Option<usize> {
        if b < self.sb.rg_start || b >= self.sb.block_count {
            return None;
        }
        let i = ((b - self.sb.rg_start) / self.sb.rg_blocks as u64) as usize;
        let r = &self.rgs.get(i)?.rg;
        (b >= r.data0 && b < r.data0 + r.data_count as u64).then_some(i)
    }
    fn is_data(&self, b: u64) -> bool {
        self.rg_of(b).is_some()
    }
    fn claimed(&self, b: u64) -> u8 {
        self.claims.get(b as usize).copied().unwrap_or(C_FREE)
    }
    /// Claims a single block if it is a data block nobody claimed yet.
    fn try_claim(&mut self, b: u64, state: u8) -> bool {
        if !self.is_data(b) || self.claims[b as usize] != C_FREE {
            return false;
        }
        self.claims[b as usize] = state;
        true
    }
    fn unclaim(&mut self, b: u64) {
        if let Some(x) = self.claims.get_mut(b as usize) {
            *x = C_FREE;
        }
    }
    /// Bitmap state of a data block as found on disk (`None` if its bitmap is unreadable).
    fn bitmap_state(&self, b: u64) -> Option<BlockState> {
        let i = self.rg_of(b)?;
        let k = b - self.rgs[i].rg.data0;
        let bm = self.rgs[i].bitmaps.get((k / BITMAP_BLOCKS_PER_BLOCK as u64) as usize)?.as_ref()?;
        Some(bm.get((k % BITMAP_BLOCKS_PER_BLOCK as u64) as u32))
    }
    fn alloc(&mut self, state: u8) -> Option<u64> {
        let total: u64 = self.sb.block_count;
        let mut b = self.alloc_cursor.max(self.sb.rg_start);
        while b < total {
            if self.try_claim(b, state) {
                self.alloc_cursor = b + 1;
                return Some(b);
            }
            b += 1;
        }
        None
    }

    // ---- pass 1 ----

    fn pass1_rgrps(&mut self) -> Result<(), FsckError> {
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

    // ---- pass 2 ----

    /// The journal index the geometry implies (mkfs's layout).
    fn expected_jindex(&self) -> Option<JIndex> {
        let j = self.fixed_journals();
        let first = self.sb.master_statfs + 1 + j;
        let jblocks = self.sb.rg_start.checked_sub(first)? / j;
        if jblocks < 8 {
            return None;
        }
        Some(JIndex {
            journals: (0..j)
                .map(|s| JournalEntry {
                    start: first + s * jblocks,
                    blocks: jblocks as u32,
                    statfs_block: self.sb.master_statfs + 1 + s,
                })
                .collect(),
        })
    }

    /// Journals mkfs made (in the fixed area before the resource groups): the journal
    /// headers start right after their statfs change blocks, so the first journal header
    /// found after the master statfs block says how many there are.
    fn fixed_journals(&self) -> u64 {
        let m = self.sb.master_statfs;
        (1..=self.sb.journal_count as u64)
            .find(|&j| {
                let at = m + 1 + j;
                matches!(self.img.with(at, |b| JournalHeader::decode(b, at)), Ok(Ok(h)) if h.slot == 0)
            })
            .unwrap_or(self.sb.journal_count as u64)
    }

    /// Whether a journal index entry is somewhere a journal can be: in the area mkfs lays
    /// journals out in (after the journal index, before the resource groups), or, for one
    /// gfs_jadd added, its statfs change block and its journal inside resource groups' data.
    fn journal_in_place(&self, e: &JournalEntry, jindex: u64) -> bool {
        let end = e.start + e.blocks as u64;
        let fixed = |a: u64, n: u64| a > jindex && a + n <= self.sb.rg_start;
        let data = |a: u64, n: u64| a + n <= self.sb.block_count && (a..a + n).all(|b| self.is_data(b));
        (fixed(e.start, e.blocks as u64) && fixed(e.statfs_block, 1))
            || (data(e.start, e.blocks as u64) && data(e.statfs_block, 1) && !(e.start..end).contains(&e.statfs_block))
    }

    /// A replayed transaction may have changed the layout (a crash during gfs_grow or
    /// gfs_jadd): the checks go on with the superblock and journal index as replayed.
    fn after_replay(&mut self) -> Result<(), FsckError> {
        if self.replayed == 0 {
            return Ok(());
        }
        let sb = match Superblock::decode(&self.img.read(SB_BLOCK)?[..]) {
            Ok(sb) if sb != self.sb => sb,
            _ => return Ok(()),
        };
        self.verbose(format!(
            "  the journal changed the layout: {} blocks, {} resource groups, {} journals",
            sb.block_count, sb.rg_count, sb.journal_count
        ));
        let dev_blocks = self.img.dev.size() / BS;
        if dev_blocks < sb.block_count {
            return Err(FsckError::Truncated { dev: dev_blocks, fs: sb.block_count });
        }
        self.img.blocks = dev_blocks;
        self.sb = sb;
        self.claims = vec![C_FREE; self.sb.block_count as usize];
        self.rgs.clear();
        // What pass 1 said about the old layout no longer matters: it runs again.
        self.problems.retain(|p| p.pass != 1 || p.what.starts_with("superblock"));
        self.pass = 1;
        self.pass1_rgrps()?;
        self.pass = 2;
        let at = self.sb.jindex_block;
        if let Ok(j) = JIndex::decode(&self.img.read(at)?[..], at) {
            if j.journals.len() == self.sb.journal_count as usize
                && j.journals.iter().all(|e| self.journal_in_place(e, at))
            {
                self.journals = j.journals;
            }
        }
        Ok(())
    }

    /// Claims the blocks of journals that live in resource groups (added by gfs_jadd), so
    /// the bitmaps keep them in use.
    fn claim_journals(&mut self) -> Result<(), FsckError> {
        for (slot, e) in self.journals.clone().iter().enumerate() {
            if e.statfs_block < self.sb.rg_start {
                continue;
            }
            let blocks = std::iter::once(e.statfs_block).chain(e.start..e.start + e.blocks as u64);
            let mut taken = 0u64;
            for b in blocks {
                if !self.try_claim(b, C_META) {
                    taken += 1;
                }
            }
            if taken > 0 {
                self.problem(format!("journal {slot}: {taken} of its blocks are claimed twice"), "left alone", false);
            }
        }
        Ok(())
    }

    fn pass2_journals(&mut self) -> Result<(), FsckError> {
        let at = self.sb.jindex_block;
        let expected = self.expected_jindex();
        let jindex = match JIndex::decode(&self.img.read(at)?[..], at) {
            Ok(j)
                if j.journals.len() == self.sb.journal_count as usize
                    && j.journals.iter().all(|e| self.journal_in_place(e, at)) =>
            {
                j
            }
            found => {
                let what = match found {
                    Err(e) => format!("journal index: {e}"),
                    Ok(_) => "journal index does not match the superblock".to_string(),
                };
                let Some(j) = expected else {
                    self.problem(what, "cannot rebuild: journals left alone", false);
                    return Ok(());
                };
                if j.journals.len() < self.sb.journal_count as usize {
                    // Journals gfs_jadd placed in resource groups cannot be found again.
                    let n = j.journals.len() as u32;
                    self.problem(
                        format!("{what}; journals {n} and up (added by gfs_jadd) are lost"),
                        "rebuilt from the geometry with the journals mkfs made (add the others again with gfs_jadd)",
                        false,
                    );
                    self.sb.journal_count = n;
                    self.img.stage(SB_BLOCK, self.sb.encode())?;
                } else {
                    self.problem(what, "rebuilt from the geometry", false);
                }
                self.img.stage(at, j.encode(at))?;
                j
            }
        };
        self.journals = jindex.journals.clone();
        for (slot, e) in jindex.journals.iter().enumerate() {
            let h = match JournalHeader::decode(&self.img.read(e.start)?[..], e.start) {
                Ok(h) if h.slot == slot as u32 => h,
                found => {
                    let what = match found {
                        Err(err) => format!("journal {slot} header: {err}"),
                        Ok(h) => format!("journal {slot} header names slot {}", h.slot),
                    };
                    self.problem(what, "journal reset (empty)", false);
                    let seq = gfs::now().sec as u64 * 1_000_000;
                    let h = JournalHeader { slot: slot as u32, sequence: seq, clean: true };
                    self.img.stage(e.start, h.encode(e.start))?;
                    self.img.staged.insert(e.start + 1, Box::new([0u8; BLOCK_SIZE]));
                    continue;
                }
            };
            if !h.clean && self.sb.lockproto == LockProto::Dlm && !self.opts.force {
                return Err(FsckError::Mounted(format!(
                    "journal {slot} is not marked clean: the filesystem may be mounted on another node (use -f once \
                     every node is down)"
                )));
            }
            let (txs, copies, next_seq) = self.scan_journal(e, h.sequence)?;
            if txs == 0 {
                if !h.clean {
                    self.problem(format!("journal {slot} was not unmounted cleanly"), "marked clean", true);
                    let h = JournalHeader { clean: true, ..h };
                    self.img.stage(e.start, h.encode(e.start))?;
                } else {
                    self.verbose(format!("  journal {slot}: clean"));
                }
                continue;
            }
            self.problem(
                format!("journal {slot} is dirty: {txs} committed transactions ({} blocks) not replayed", copies.len()),
                "replayed",
                true,
            );
            for (home, blk) in copies {
                self.img.staged.insert(home, blk);
            }
            let h = JournalHeader { slot: slot as u32, sequence: next_seq, clean: true };
            self.img.stage(e.start, h.encode(e.start))?;
            self.replayed += txs;
        }
        Ok(())
    }

    /// Reads the committed transactions of a journal by the format's replay rules (gfs's
    /// own [`scan_journal`]): (transactions, block copies in order, sequence after the last).
    #[allow(clippy::type_complexity)]
    fn scan_journal(&self, j: &JournalEntry, seq0: u64) -> Result<(u64, Vec<(u64, Box<Block>)>, u64), FsckError> {
        let scan = scan_journal(j, seq0, self.sb.block_count, |b| self.img.read(b))?;
        let count = scan.transactions.len() as u64;
        let copies = scan.transactions.into_iter().flat_map(|t| t.copies).collect();
        Ok((count, copies, scan.next_sequence))
    }

    // ---- pass 3 ----

    fn read_dinode(&self, ino: u64) -> Result<Dinode, String> {
        if !self.is_data(ino) {
            return Err(format!("inode number {ino} is not a data block"));
        }
        match self.img.with(ino, |b| Dinode::decode(b, ino)) {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn pass3_dirs(&mut self) -> Result<(), FsckError> {
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
    fn walk_from(&mut self, top: u64) -> Result<(), FsckError> {
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
        let mut blocks = 0u64;
        let mut broken: Option<String> = None;
        // Hash table.
        let g = d.dir_depth;
        let table: Vec<u64> = match &d.content {
            Content::DirHash(t) => t.clone(),
            Content::Extents(_) | Content::Index(_) if self.rebuild.contains_key(&dir) => Vec::new(),
            Content::Extents(_) | Content::Index(_) => {
                let (ext, nidx, err) = self.load_map(dir, &d)?;
                blocks += nidx;
                if let Some(e) = err {
                    broken.get_or_insert(e);
                }
                let mut t = Vec::new();
                let want = 1usize.checked_shl(g as u32).unwrap_or(usize::MAX);
                if g > 20 {
                    broken.get_or_insert(format!("hash table depth {g}"));
                }
                let mut k = 0u64;
                while broken.is_none() && t.len() < want {
                    let Some(blk) = map_block(&ext, k) else {
                        broken = Some(format!("hash table block {k} missing"));
                        break;
                    };
                    if !self.try_claim(blk, C_META) {
                        broken = Some(format!("hash table block {k} at {blk}: bad or shared pointer"));
                        break;
                    }
                    blocks += 1;
                    match DirTable::decode(&self.img.read(blk)?[..], blk) {
                        Ok(tb) if tb.owner == dir && tb.index as u64 == k => t.extend(tb.ptrs),
                        Ok(_) => broken = Some(format!("hash table block {blk}: wrong owner or index")),
                        Err(e) => broken = Some(format!("hash table: {e}")),
                    }
                    k += 1;
                }
                if broken.is_none() && t.len() != want {
                    broken = Some("hash table size".into());
                }
                t
            }
            Content::Inline(_) => {
                broken = Some("directory with inline content".into());
                Vec::new()
            }
        };
        // Leaves, per slot.
        let mut leaves: Vec<(u64, DirLeaf)> = Vec::new();
        let mut seen: HashMap<u64, usize> = HashMap::new();
        if broken.is_none() && !self.rebuild.contains_key(&dir) {
            let mut s = 0usize;
            while s < table.len() {
                let p = table[s];
                if seen.contains_key(&p) {
                    // Already read: must not reappear after other leaves.
                    broken.get_or_insert(format!("hash table slot {s}: leaf {p} out of place"));
                    break;
                }
                let leaf = match self.read_leaf(dir, p) {
                    Ok(l) => l,
                    Err(e) => {
                        broken.get_or_insert(e);
                        break;
                    }
                };
                let (depth, lprefix, ldepth, mut next) = (leaf.depth as u32, leaf.prefix, leaf.depth, leaf.next);
                // Kept even if misplaced: it is claimed, and its entries are salvaged.
                seen.insert(p, leaves.len());
                leaves.push((p, leaf));
                if depth > g as u32 {
                    broken.get_or_insert(format!("leaf {p}: depth {depth} above the table's {g}"));
                    break;
                }
                let span = 1usize << (g as u32 - depth);
                let slot_prefix = if g == 0 { 0 } else { ((s as u64) << (32 - g as u32)) as u32 };
                let mask = if depth == 0 { 0 } else { u32::MAX << (32 - depth) };
                if !s.is_multiple_of(span) || slot_prefix & mask != lprefix || table[s..].len() < span {
                    broken.get_or_insert(format!("leaf {p}: prefix does not match its hash table slots"));
                    break;
                }
                if table[s..s + span].iter().any(|&x| x != p) {
                    broken.get_or_insert(format!("hash table slots {s}..{}: leaf {p} not repeated", s + span));
                    break;
                }
                // Overflow chain.
                while next != 0 && broken.is_none() {
                    match self.read_leaf(dir, next) {
                        Ok(l) if l.depth == ldepth && l.prefix == lprefix && !seen.contains_key(&next) => {
                            seen.insert(next, leaves.len());
                            let n = l.next;
                            leaves.push((next, l));
                            next = n;
                        }
                        Ok(l) => {
                            broken = Some(format!("overflow leaf {next}: depth or prefix"));
                            seen.insert(next, leaves.len());
                            leaves.push((next, l));
                        }
                        Err(e) => broken = Some(e),
                    }
                }
                s += span;
            }
        }
        if broken.is_some() && !self.rebuild.contains_key(&dir) {
            // Salvage: every other leaf the table names, whatever its place.
            let mut tried: HashSet<u64> = seen.keys().copied().collect();
            for &p in &table {
                let mut b = p;
                while b != 0 && tried.insert(b) {
                    match self.read_leaf(dir, b) {
                        Ok(l) => {
                            let n = l.next;
                            seen.insert(b, leaves.len());
                            leaves.push((b, l));
                            b = n;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        // Entries.
        let mut entries: Vec<(usize, DirEntry)> = Vec::new();
        for (i, (_, l)) in leaves.iter_mut().enumerate() {
            entries.extend(std::mem::take(&mut l.entries).into_iter().map(|e| (i, e)));
        }
        if let Some(why) = &broken {
            let n = entries.len();
            self.problem(
                format!("directory {dir}: {why}"),
                &format!("directory rebuilt from the {n} entries still readable"),
                false,
            );
            for (p, _) in &leaves {
                self.unclaim(*p);
            }
            if !matches!(d.content, Content::DirHash(_)) {
                // Table blocks and index leaves are dropped with the old structure.
                let (ext, _, _) = self.load_map_noclaim(dir, &d)?;
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
        }
        blocks += leaves.len() as u64;
        let rebuilding = self.rebuild.contains_key(&dir);
        let mut keep: Vec<Vec<DirEntry>> = vec![Vec::new(); leaves.len()];
        let mut dirty_leaf = vec![false; leaves.len()];
        let mut names = HashSet::new();
        let mut subdirs = Vec::new();
        for (li, mut e) in entries {
            let drop = |c: &mut Self, why: String| {
                let name = String::from_utf8_lossy(&e.name);
                c.problem(format!("directory {dir}: entry {name:?} -> {}: {why}", e.inum), "entry removed", false);
            };
            if e.name == b"." || e.name == b".." {
                drop(self, "reserved name stored".into());
                dirty_leaf[li] = true;
                continue;
            }
            if !names.insert(e.name.clone()) {
                drop(self, "duplicate name".into());
                dirty_leaf[li] = true;
                continue;
            }
            let child_state = self.claimed(e.inum);
            let cd = if child_state == C_DINODE {
                match self.inodes.get(&e.inum) {
                    Some(ci) if ci.d.is_dir() => {
                        drop(self, "second link to a directory".into());
                        dirty_leaf[li] = true;
                        continue;
                    }
                    Some(ci) => ci.d.clone(),
                    None => {
                        drop(self, "not an inode".into());
                        dirty_leaf[li] = true;
                        continue;
                    }
                }
            } else if child_state != C_FREE {
                drop(self, "points at a block in use for something else".into());
                dirty_leaf[li] = true;
                continue;
            } else {
                match self.read_dinode(e.inum) {
                    Ok(cd) if cd.nlink == 0 => {
                        drop(self, "inode has no links (deleted)".into());
                        dirty_leaf[li] = true;
                        continue;
                    }
                    Ok(cd) => {
                        self.claims[e.inum as usize] = C_DINODE;
                        self.inodes.insert(
                            e.inum,
                            Ino { d: cd.clone(), links: 0, subdirs: 0, found_in: dir, orig: Some(cd.clone()) },
                        );
                        if cd.is_dir() {
                            subdirs.push(e.inum);
                        }
                        cd
                    }
                    Err(why) => {
                        drop(self, why);
                        dirty_leaf[li] = true;
                        continue;
                    }
                }
            };
            if e.dtype != dtype(cd.mode) {
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
                dirty_leaf[li] = true;
            }
            self.inodes.get_mut(&e.inum).expect("claimed above").links += 1;
            if cd.is_dir() {
                self.inodes.get_mut(&dir).expect("walked").subdirs += 1;
            }
            if dir == self.sb.root_dinode && e.name == b"lost+found" && cd.is_dir() {
                self.lost_found = Some(e.inum);
            }
            if Some(dir) == self.lost_found {
                self.lf_entries.push(e.clone());
            }
            if rebuilding {
                self.rebuild.get_mut(&dir).expect("rebuilding").push(e);
            } else {
                keep[li].push(e);
            }
        }
        if !rebuilding {
            let n: u64 = keep.iter().map(|k| k.len() as u64).sum();
            for (i, (p, l)) in leaves.iter().enumerate() {
                if dirty_leaf[i] {
                    let nl = DirLeaf { entries: std::mem::take(&mut keep[i]), ..l.clone() };
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
        Ok(subdirs)
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

    /// Checks an inode's xattr block; drops the pointer if bad. True if kept (and claimed).
    fn check_xattr(&mut self, ino: u64, d: &mut Dinode) -> bool {
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
    fn load_map(&mut self, ino: u64, d: &Dinode) -> Result<(Vec<Extent>, u64, Option<String>), FsckError> {
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

    fn load_map_noclaim(&mut self, ino: u64, d: &Dinode) -> Result<(Vec<Extent>, u64, Option<String>), FsckError> {
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

    // ---- pass 4 ----

    fn pass4_connectivity(&mut self) -> Result<(), FsckError> {
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

    // ---- pass 5 ----

    fn pass5_files(&mut self) -> Result<(), FsckError> {
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

    // ---- pass 6 ----

    fn pass6_finish(&mut self) -> Result<(), FsckError> {
        // lost+found.
        if !self.lf_new.is_empty() {
            let root = self.sb.root_dinode;
            let lf = match self.lost_found {
                Some(lf) => lf,
                None => {
                    let Some(lf) = self.alloc(C_DINODE) else {
                        self.problem("no space for lost+found".into(), "orphans left unlinked", false);
                        return self.finish_counters();
                    };
                    self.problem("no lost+found directory".into(), "lost+found created", false);
                    let d = new_dir_dinode(root, 0o40700);
                    self.inodes.insert(lf, Ino { d, links: 1, subdirs: 0, found_in: root, orig: None });
                    self.inodes.get_mut(&root).expect("root").subdirs += 1;
                    let e = DirEntry {
                        inum: lf,
                        hash: name_hash(b"lost+found"),
                        dtype: DT_DIR,
                        name: b"lost+found".to_vec(),
                    };
                    self.add_entry(root, e)?;
                    self.lost_found = Some(lf);
                    lf
                }
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
        }
        // Rebuild directories (allocating their leaves).
        for (dir, entries) in std::mem::take(&mut self.rebuild) {
            self.build_dir(dir, entries)?;
        }
        // Link counts, parents, then write the dinodes that changed.
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
        self.finish_counters()
    }

    /// Adds one entry to a directory that is not being rebuilt: into a leaf with room in
    /// the right slot, else the directory is rebuilt.
    fn add_entry(&mut self, dir: u64, e: DirEntry) -> Result<(), FsckError> {
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
    fn build_dir(&mut self, dir: u64, mut entries: Vec<DirEntry>) -> Result<(), FsckError> {
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

    /// Bitmaps against the claims, resource group counters, statfs.
    fn finish_counters(&mut self) -> Result<(), FsckError> {
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
        // Statfs: master + every slot's pending change must equal the counts.
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
        let summary = format!(
            "{} inodes, {} directories, {} of {total} data blocks in use",
            self.inodes.len(),
            self.inodes.values().filter(|i| i.d.is_dir()).count(),
            total - free_all
        );
        self.say(summary);
        Ok(())
    }
}

fn new_dir_dinode(parent: u64, mode: u32) -> Dinode {
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

/// Device block of file block `k` in a list of extents.
fn map_block(ext: &[Extent], k: u64) -> Option<u64> {
    ext.iter().find(|e| k >= e.logical && k < e.end()).map(|e| e.physical + (k - e.logical))
}
