//! The passes, one module each (see `docs/fsck.md`): [`sb`] (0, superblock), [`rgrp`] (1,
//! resource groups), [`journal`] (2, journals), [`dir`] (3, directories, rebuilt by
//! [`dir_rebuild`]), [`connect`] (4, connectivity), [`blockmap`] (5, block maps) and
//! [`counts`] (6, counts). This module holds what they share: the checker's state, the
//! driver that runs them in order, and the block claims. All reads go through [`Img`], which
//! serves staged repairs over the device, so later passes see the filesystem as the earlier
//! ones left it.

mod blockmap;
mod connect;
mod counts;
mod dir;
mod dir_rebuild;
mod img;
mod journal;
mod rgrp;
mod sb;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use gfs::format::*;
use gfs::Device;

use crate::{FsckError, Mode, Options, Summary};
use img::Img;

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

/// A resource group as pass 1 read it.
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

/// The state the passes share: the image, the geometry, who claimed each block, the inodes
/// the walk reached, the problems found and the directory repairs still to write.
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
    let (sb, sb_problem) = sb::read_superblock(&mut img)?;
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

    /// The dinode at `ino`, which must be a data block. `Err`: why it is not one.
    fn read_dinode(&self, ino: u64) -> Result<Dinode, String> {
        if !self.is_data(ino) {
            return Err(format!("inode number {ino} is not a data block"));
        }
        match self.img.with(ino, |b| Dinode::decode(b, ino)) {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}
