//! The filesystem engine (one node, `lock_nolock`): metadata cache, allocator, directories,
//! files, and the write-ahead journal with replay. Front ends (FUSE, tests) call it; it is
//! synchronous and not thread-safe by itself (wrap it in a mutex).
//!
//! Transactions: every change marks the metadata blocks it touches dirty in the running
//! transaction. [`Fs::commit`] flushes file data, writes the dirty blocks to this node's
//! journal (descriptor, copies, commit block), flushes, and only then may the blocks go home;
//! they go home at the next checkpoint ([`Fs::checkpoint`]: when the journal is full, or at
//! unmount). Freed blocks are not reused before the next checkpoint, so a replay can never
//! write an old metadata copy over a block that meanwhile holds something else.

mod check;
mod dir;
mod file;
mod grow;
mod journal;
mod locks;
mod xattr;

use crate::device::{Device, DeviceError};
use crate::format::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use thiserror::Error;

pub use check::CheckReport;
pub use dir::ReaddirEntry;
pub use grow::{GrowError, GrowReport, JaddReport, MIN_JOURNAL_BLOCKS};
pub use locks::LockKey;
pub use xattr::{XATTR_CREATE, XATTR_REPLACE};

/// Why a filesystem operation failed.
#[derive(Debug, Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("no space left on the filesystem")]
    NoSpace,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid argument")]
    Invalid,
    #[error("file too fragmented or too large for this version")]
    TooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("no such attribute")]
    NoData,
    #[error("operation not supported")]
    NotSupported,
    #[error("device: {0}")]
    Device(#[from] DeviceError),
    #[error("corrupt metadata: {0}")]
    Corrupt(#[from] FormatError),
    #[error("journal: {0}")]
    Journal(String),
}

impl FsError {
    /// The errno for this error (the one place errors map to wire codes).
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NoSpace => libc::ENOSPC,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid => libc::EINVAL,
            FsError::TooBig => libc::EFBIG,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NoData => libc::ENODATA,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::Device(_) | FsError::Corrupt(_) | FsError::Journal(_) => libc::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, FsError>;

/// Attributes of an inode, as a front end needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u32,
    pub generation: u64,
}

/// Which attributes `setattr` changes.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
}

/// Free space, for statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStat {
    pub total: u64,
    pub free: u64,
    pub dinodes: u64,
}

/// In-memory state of one resource group.
#[derive(Debug, Clone)]
struct RgState {
    addr: u64,
    rg: Rgrp,
    /// Entry to start the next free-block search at (just past the last allocation).
    next: u64,
    /// The counters may have changed on disk (lock_dlm: its lock went to another node).
    stale: bool,
}

/// A mounted filesystem.
#[derive(Debug)]
pub struct Fs {
    dev: Arc<dyn Device>,
    sb: Superblock,
    slot: u32,
    journal: JournalEntry,
    /// Metadata blocks read or written (verified when read).
    cache: HashMap<u64, Box<Block>>,
    /// Decoded dinodes and directory leaves of cached blocks (saves decoding on every use).
    dinodes: HashMap<u64, Dinode>,
    leaves: HashMap<u64, Arc<DirLeaf>>,
    /// lock_nolock: dirty dinodes whose newest version is only in `dinodes`, encoded when the
    /// block is read or committed (a directory's dinode changes several times per create).
    unencoded: HashSet<u64>,
    /// Blocks changed in the running transaction.
    dirty: BTreeSet<u64>,
    /// Blocks committed to the journal but not yet written home.
    committed: BTreeMap<u64, Box<Block>>,
    /// Reused buffer for journal and checkpoint writes.
    jbuf: Vec<u8>,
    /// Freed blocks that may not be reused before the next checkpoint.
    pinned: HashSet<u64>,
    rgs: Vec<RgState>,
    /// Resource group to try first for allocations.
    rg_hint: usize,
    /// Next journal block to write (1..journal.blocks).
    jhead: u64,
    /// Sequence of the next transaction.
    jseq: u64,
    /// Sequence the journal header currently names (first transaction at block 1).
    jtail_seq: u64,
    /// Changes to fold into this slot's statfs change block.
    statfs_free: i64,
    statfs_dinodes: i64,
    /// File data written since the last device flush.
    data_unsynced: bool,
    /// Open handles per inode (unlinked inodes are freed at last close).
    open: HashMap<u64, u32>,
    /// Inodes whose link count reached zero while open.
    orphans: HashSet<u64>,
    next_generation: u64,
    /// Transactions replayed at mount.
    replayed: u64,
    /// Clean blocks kept cached before the cache is emptied.
    cache_limit: usize,
    /// Deepest directory hash table kept in the dinode (at most [`INLINE_DIR_DEPTH`]).
    inline_dir_depth: u8,
    /// Set for the final checkpoint of an unmount (marks the journal clean).
    unmounting: bool,
    /// Orphaned inodes freed at mount (the previous mount of this slot died).
    orphans_freed: u64,
    /// lock_dlm: the locks the running operation holds (None with lock_nolock).
    held: Option<locks::Held>,
    /// lock_dlm: cached blocks by the lock that covers them.
    owned: HashMap<LockKey, HashSet<u64>>,
    /// lock_dlm: blocks to free once their resource groups' locks are held.
    deferred_frees: Vec<u64>,
    /// lock_dlm: the layout lock went to another node (gfs_grow, gfs_jadd may have run).
    layout_stale: bool,
    /// lock_dlm: whether another node has an inode open (its iopen glock).
    open_check: locks::OpenCheck,
}

/// Clean metadata blocks kept in memory before the cache is emptied (256 MiB).
const CACHE_BLOCKS: usize = 65536;

fn bs() -> u64 {
    BLOCK_SIZE as u64
}

impl Fs {
    /// Mounts the filesystem on `dev` using journal `slot`: claims the device (waiting up to
    /// 10 s for a previous mount on this host to let go), replays the journal if it holds
    /// committed transactions and folds the slot's statfs changes into the master.
    pub fn mount(dev: Arc<dyn Device>, slot: u32) -> Result<Fs> {
        Self::mount_with(dev, slot, false)
    }

    /// [`Fs::mount`]; with `shared_claim` (lock_dlm: the cluster's locks coordinate the
    /// mounts, several of which may be on one host) the device claim is shared.
    pub fn mount_with(dev: Arc<dyn Device>, slot: u32, shared_claim: bool) -> Result<Fs> {
        dev.claim(std::time::Duration::from_secs(10), shared_claim)?;
        let sb = crate::mkfs::read_superblock(&*dev).map_err(|e| match e {
            crate::MkfsError::Device(d) => FsError::Device(d),
            crate::MkfsError::Format(f) => FsError::Corrupt(f),
            other => FsError::Journal(other.to_string()),
        })?;
        let mut raw = Box::new([0u8; BLOCK_SIZE]);
        dev.read_at(&mut raw[..], sb.jindex_block * bs())?;
        let jindex = JIndex::decode(&raw[..], sb.jindex_block)?;
        let journal = *jindex
            .journals
            .get(slot as usize)
            .ok_or_else(|| FsError::Journal(format!("no journal for slot {slot}")))?;
        let mut fs = Fs {
            dev,
            sb,
            slot,
            journal,
            cache: HashMap::new(),
            dinodes: HashMap::new(),
            leaves: HashMap::new(),
            unencoded: HashSet::new(),
            dirty: BTreeSet::new(),
            committed: BTreeMap::new(),
            jbuf: Vec::new(),
            pinned: HashSet::new(),
            rgs: Vec::new(),
            rg_hint: 0,
            jhead: 1,
            jseq: 0,
            jtail_seq: 0,
            statfs_free: 0,
            statfs_dinodes: 0,
            data_unsynced: false,
            open: HashMap::new(),
            orphans: HashSet::new(),
            next_generation: crate::now().sec as u64 * 1_000_000,
            replayed: 0,
            cache_limit: CACHE_BLOCKS,
            inline_dir_depth: INLINE_DIR_DEPTH,
            unmounting: false,
            orphans_freed: 0,
            held: None,
            owned: HashMap::new(),
            deferred_frees: Vec::new(),
            layout_stale: false,
            open_check: locks::OpenCheck::default(),
        };
        let (replayed, clean) = fs.replay()?;
        fs.replayed = replayed;
        for i in 0..fs.sb.rg_count {
            let (addr, _) = fs.sb.rg_extent(i);
            let rg = Rgrp::decode(&fs.read_meta(addr)?[..], addr)?;
            fs.rgs.push(RgState { addr, rg, next: 0, stale: false });
        }
        // A replayed transaction may have grown the filesystem or added journals.
        fs.reload_layout()?;
        // lock_dlm: an unlinked inode may still be open on another node; no scan.
        if !clean && !shared_claim {
            fs.orphans_freed = fs.free_orphans()?;
        }
        fs.fold_statfs()?;
        fs.commit()?;
        Ok(fs)
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }
    pub fn root(&self) -> u64 {
        self.sb.root_dinode
    }
    /// Transactions replayed when this mount started.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Inodes unlinked while open by a mount that died, freed when this mount started.
    pub fn orphans_freed(&self) -> u64 {
        self.orphans_freed
    }

    /// Frees every dinode with no links (left by a mount that died with them open).
    fn free_orphans(&mut self) -> Result<u64> {
        let mut found = Vec::new();
        for rgi in 0..self.rgs.len() {
            if self.rgs[rgi].rg.dinodes == 0 {
                continue;
            }
            let (data0, count) = (self.rgs[rgi].rg.data0, self.rgs[rgi].rg.data_count as u64);
            let mut entry = 0;
            while entry < count {
                let (baddr, e) = self.bitmap_addr(rgi, entry);
                let base = entry - e as u64;
                let limit = (count - base).min(BITMAP_BLOCKS_PER_BLOCK as u64) as u32;
                let bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
                for i in e..limit {
                    if bm.get(i) == BlockState::Dinode {
                        let ino = data0 + base + i as u64;
                        if self.dinode(ino)?.nlink == 0 && !self.orphans.contains(&ino) {
                            found.push(ino);
                        }
                    }
                }
                entry = base + limit as u64;
            }
            if self.dirty.is_empty() && self.cache.len() > self.cache_limit {
                self.drop_caches();
            }
        }
        for &ino in &found {
            tracing::info!(inode = ino, "freeing orphaned inode");
            self.destroy_inode(ino)?;
        }
        Ok(found.len() as u64)
    }

    // ---- metadata cache ----

    /// Reads metadata block `blkno` into the cache (checksum verified by the caller's decode).
    fn read_meta(&mut self, blkno: u64) -> Result<&Block> {
        if self.unencoded.contains(&blkno) {
            self.encode_dinode(blkno);
        }
        if !self.cache.contains_key(&blkno) {
            if blkno >= self.sb.block_count {
                return Err(FsError::Corrupt(FormatError::invalid(blkno, "address past the end")));
            }
            // A block committed but not yet home is newer in the journal's image.
            let b = match self.committed.get(&blkno) {
                Some(img) => img.clone(),
                None => {
                    let mut b = Box::new([0u8; BLOCK_SIZE]);
                    self.dev.read_at(&mut b[..], blkno * bs())?;
                    Header::verify_any(&b[..], blkno)?;
                    b
                }
            };
            if self.held.is_some() {
                if let Some(k) = self.owner_of(blkno, &b) {
                    self.owned.entry(k).or_default().insert(blkno);
                }
            }
            self.cache.insert(blkno, b);
        }
        Ok(self.cache.get(&blkno).expect("just inserted"))
    }

    /// Puts a new version of metadata block `blkno` in the running transaction.
    fn write_meta(&mut self, blkno: u64, b: Box<Block>) {
        self.note_write(blkno, &b);
        self.cache.insert(blkno, b);
        self.dirty.insert(blkno);
        self.unencoded.remove(&blkno);
        self.dinodes.remove(&blkno);
        self.leaves.remove(&blkno);
    }

    /// Brings the cached image of an unencoded dinode up to date.
    fn encode_dinode(&mut self, ino: u64) {
        if self.unencoded.remove(&ino) {
            let b = self.dinodes.get(&ino).expect("unencoded dinodes stay decoded").encode(ino);
            self.cache.insert(ino, b);
        }
    }

    /// Encodes every unencoded dinode (before a commit reads the dirty blocks' images).
    fn encode_dinodes(&mut self) {
        let pending: Vec<u64> = self.unencoded.iter().copied().collect();
        for ino in pending {
            self.encode_dinode(ino);
        }
    }

    /// Empties the caches (only clean blocks may be dropped: callers check `dirty`).
    fn drop_caches(&mut self) {
        self.cache.clear();
        self.dinodes.clear();
        self.leaves.clear();
        self.owned.clear();
    }

    fn dinode(&mut self, ino: u64) -> Result<Dinode> {
        if let Some(d) = self.dinodes.get(&ino) {
            return Ok(d.clone());
        }
        let b = self.read_meta(ino)?;
        let d = Dinode::decode(&b[..], ino)?;
        self.dinodes.insert(ino, d.clone());
        Ok(d)
    }

    fn put_dinode(&mut self, ino: u64, d: &Dinode) {
        if self.held.is_some() {
            // lock_dlm: the lock checks look at the block's new image.
            self.write_meta(ino, d.encode(ino));
        } else {
            self.dirty.insert(ino);
            self.unencoded.insert(ino);
            self.leaves.remove(&ino);
        }
        self.dinodes.insert(ino, d.clone());
    }

    // ---- allocation ----

    fn bitmap_addr(&self, rgi: usize, entry: u64) -> (u64, u32) {
        let r = &self.rgs[rgi];
        (r.addr + 1 + entry / BITMAP_BLOCKS_PER_BLOCK as u64, (entry % BITMAP_BLOCKS_PER_BLOCK as u64) as u32)
    }

    fn rg_of(&self, blkno: u64) -> Option<usize> {
        if blkno < self.sb.rg_start {
            return None;
        }
        let i = ((blkno - self.sb.rg_start) / self.sb.rg_blocks as u64) as usize;
        let r = self.rgs.get(i)?;
        (blkno >= r.rg.data0 && blkno < r.rg.data0 + r.rg.data_count as u64).then_some(i)
    }

    /// State of a data block in its bitmap.
    pub fn block_state(&mut self, blkno: u64) -> Result<BlockState> {
        let rgi = self.rg_of(blkno).ok_or(FsError::Invalid)?;
        let (baddr, entry) = self.bitmap_addr(rgi, blkno - self.rgs[rgi].rg.data0);
        let bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
        Ok(bm.get(entry))
    }

    fn set_state(&mut self, blkno: u64, s: BlockState) -> Result<()> {
        let rgi = self.rg_of(blkno).ok_or(FsError::Invalid)?;
        if !self.rg_writable(rgi) {
            return Err(FsError::Journal(format!("resource group {rgi} changed without its lock")));
        }
        let (baddr, entry) = self.bitmap_addr(rgi, blkno - self.rgs[rgi].rg.data0);
        let mut bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
        let old = bm.get(entry);
        bm.set(entry, s);
        self.write_meta(baddr, bm.encode(baddr));
        let r = &mut self.rgs[rgi];
        match (old == BlockState::Free, s == BlockState::Free) {
            (true, false) => {
                r.rg.free -= 1;
                self.statfs_free -= 1;
            }
            (false, true) => {
                r.rg.free += 1;
                self.statfs_free += 1;
            }
            _ => {}
        }
        if old == BlockState::Dinode && s != BlockState::Dinode {
            r.rg.dinodes -= 1;
            self.statfs_dinodes -= 1;
        } else if old != BlockState::Dinode && s == BlockState::Dinode {
            r.rg.dinodes += 1;
            self.statfs_dinodes += 1;
        }
        let (addr, rg) = (r.addr, r.rg);
        self.write_meta(addr, rg.encode(addr));
        Ok(())
    }

    /// Allocates one block, preferably `goal` (to extend a run).
    fn alloc(&mut self, s: BlockState, goal: Option<u64>) -> Result<u64> {
        let b = self.find_block(goal)?;
        self.set_state(b, s)?;
        Ok(b)
    }

    /// Allocates up to `max` contiguous data blocks (at least one), starting at `goal` if it
    /// is free: returns (first block, count).
    fn alloc_run(&mut self, goal: Option<u64>, max: u64) -> Result<(u64, u64)> {
        let first = self.find_block(goal)?;
        let rgi = self.rg_of(first).expect("found in a group");
        let (baddr, entry) = self.bitmap_addr(rgi, first - self.rgs[rgi].rg.data0);
        let mut bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
        let room = (BITMAP_BLOCKS_PER_BLOCK - entry) as u64;
        let in_rg = self.rgs[rgi].rg.data0 + self.rgs[rgi].rg.data_count as u64 - first;
        let mut n = 0u64;
        while n < max.min(room).min(in_rg)
            && bm.get(entry + n as u32) == BlockState::Free
            && !self.pinned.contains(&(first + n))
        {
            bm.set(entry + n as u32, BlockState::Data);
            n += 1;
        }
        self.write_meta(baddr, bm.encode(baddr));
        let r = &mut self.rgs[rgi];
        r.rg.free -= n as u32;
        r.next = first - r.rg.data0 + n;
        self.statfs_free -= n as i64;
        let (addr, rg) = (r.addr, r.rg);
        self.write_meta(addr, rg.encode(addr));
        Ok((first, n))
    }

    /// A free, unpinned block: `goal` if possible, else the next one after the last
    /// allocation in the preferred group, else anywhere.
    fn find_block(&mut self, goal: Option<u64>) -> Result<u64> {
        if let Some(g) = goal {
            if !self.pinned.contains(&g)
                && self.rg_of(g).is_some_and(|i| self.rg_writable(i))
                && self.block_state(g)? == BlockState::Free
            {
                return Ok(g);
            }
        }
        let n = self.rgs.len();
        for k in 0..n {
            let rgi = (self.rg_hint + k) % n;
            if self.rgs[rgi].rg.free == 0 || !self.rg_writable(rgi) {
                continue;
            }
            let count = self.rgs[rgi].rg.data_count as u64;
            let next = self.rgs[rgi].next.min(count);
            for (from, to) in [(next, count), (0, next)] {
                if let Some(blk) = self.scan_rg(rgi, from, to)? {
                    self.rg_hint = rgi;
                    self.rgs[rgi].next = blk - self.rgs[rgi].rg.data0 + 1;
                    return Ok(blk);
                }
            }
        }
        Err(FsError::NoSpace)
    }

    /// First free, unpinned block of group `rgi` with entry in `[from, to)`.
    fn scan_rg(&mut self, rgi: usize, from: u64, to: u64) -> Result<Option<u64>> {
        let data0 = self.rgs[rgi].rg.data0;
        let mut entry = from;
        while entry < to {
            let (baddr, e) = self.bitmap_addr(rgi, entry);
            let base = entry - e as u64;
            let limit = (to - base).min(BITMAP_BLOCKS_PER_BLOCK as u64) as u32;
            let bm = Bitmap::decode(&self.read_meta(baddr)?[..], baddr)?;
            let mut at = e;
            while let Some(f) = bm.find_free(at, limit) {
                let blk = data0 + base + f as u64;
                if !self.pinned.contains(&blk) {
                    return Ok(Some(blk));
                }
                at = f + 1;
            }
            entry = base + limit as u64;
        }
        Ok(None)
    }

    /// Frees a block; it stays unusable until the next checkpoint.
    fn free_block(&mut self, blkno: u64) -> Result<()> {
        match self.rg_of(blkno) {
            // lock_dlm: another node may own that group now; free it once its lock is held.
            Some(rgi) if !self.rg_writable(rgi) => self.deferred_frees.push(blkno),
            _ => {
                self.set_state(blkno, BlockState::Free)?;
                self.pinned.insert(blkno);
            }
        }
        self.cache.remove(&blkno);
        self.unencoded.remove(&blkno);
        self.dinodes.remove(&blkno);
        self.leaves.remove(&blkno);
        self.dirty.remove(&blkno);
        self.committed.remove(&blkno);
        Ok(())
    }

    // ---- statfs ----

    fn statfs_change_block(&mut self) -> Result<()> {
        if self.statfs_free == 0 && self.statfs_dinodes == 0 {
            return Ok(());
        }
        let a = self.journal.statfs_block;
        let mut c = Statfs::decode(&self.read_meta(a)?[..], a)?;
        c.free += self.statfs_free;
        c.dinodes += self.statfs_dinodes;
        self.statfs_free = 0;
        self.statfs_dinodes = 0;
        self.write_meta(a, c.encode(a));
        Ok(())
    }

    /// Folds this slot's statfs changes into the master block.
    fn fold_statfs(&mut self) -> Result<()> {
        self.statfs_change_block()?;
        let a = self.journal.statfs_block;
        let mut c = Statfs::decode(&self.read_meta(a)?[..], a)?;
        if c.free == 0 && c.dinodes == 0 {
            return Ok(());
        }
        let m = self.sb.master_statfs;
        let mut master = Statfs::decode(&self.read_meta(m)?[..], m)?;
        master.free += c.free;
        master.dinodes += c.dinodes;
        c.free = 0;
        c.dinodes = 0;
        self.write_meta(m, master.encode(m));
        self.write_meta(a, c.encode(a));
        Ok(())
    }

    pub fn statfs(&mut self) -> Result<FsStat> {
        let total: u64 = self.rgs.iter().map(|r| r.rg.data_count as u64).sum();
        // Blocks freed since the last checkpoint count as free: make_room frees them up.
        let free: u64 = self.rgs.iter().map(|r| r.rg.free as u64).sum::<u64>();
        let dinodes: u64 = self.rgs.iter().map(|r| r.rg.dinodes as u64).sum();
        Ok(FsStat { total, free, dinodes })
    }

    // ---- inodes ----

    fn attr_of(ino: u64, d: &Dinode) -> Attr {
        Attr {
            ino,
            mode: d.mode,
            uid: d.uid,
            gid: d.gid,
            nlink: d.nlink,
            size: d.size,
            blocks: d.blocks,
            atime: d.atime,
            mtime: d.mtime,
            ctime: d.ctime,
            rdev: d.rdev,
            generation: d.generation,
        }
    }

    pub fn getattr(&mut self, ino: u64) -> Result<Attr> {
        if self.rg_of(ino).is_none() {
            return Err(FsError::NotFound);
        }
        if self.held.is_some() {
            // lock_dlm: the inode's glock covers the dinode, not the bitmap; a freed dinode
            // is left with no links and no mode.
            let d = self.dinode(ino).map_err(|_| FsError::NotFound)?;
            if d.mode == 0 || (d.nlink == 0 && !self.open.contains_key(&ino)) {
                return Err(FsError::NotFound);
            }
            return Ok(Self::attr_of(ino, &d));
        }
        if self.block_state(ino)? != BlockState::Dinode {
            return Err(FsError::NotFound);
        }
        let d = self.dinode(ino)?;
        Ok(Self::attr_of(ino, &d))
    }

    pub fn setattr(&mut self, ino: u64, s: &SetAttr) -> Result<Attr> {
        let mut d = self.dinode(ino)?;
        let now = crate::now();
        if let Some(size) = s.size {
            if d.is_dir() {
                return Err(FsError::IsDir);
            }
            self.truncate(ino, &mut d, size)?;
            d.mtime = now;
        }
        if let Some(m) = s.mode {
            d.mode = (d.mode & 0o170000) | (m & 0o7777);
        }
        if let Some(u) = s.uid {
            d.uid = u;
        }
        if let Some(g) = s.gid {
            d.gid = g;
        }
        if let Some(t) = s.atime {
            d.atime = t;
        }
        if let Some(t) = s.mtime {
            d.mtime = t;
        }
        d.ctime = now;
        self.put_dinode(ino, &d);
        Ok(Self::attr_of(ino, &d))
    }

    /// Allocates and writes a new dinode.
    fn new_inode(&mut self, near: u64, mode: u32, uid: u32, gid: u32, rdev: u32) -> Result<(u64, Dinode)> {
        let ino = self.alloc(BlockState::Dinode, Some(near + 1))?;
        self.note_new_inode(ino);
        let now = crate::now();
        self.next_generation += 1;
        let d = Dinode {
            mode,
            uid,
            gid,
            nlink: 1,
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            rdev,
            generation: self.next_generation,
            parent: 0,
            flags: 0,
            dir_depth: 0,
            xattr_block: 0,
            dir_entries: 0,
            content: Content::Extents(vec![]),
        };
        Ok((ino, d))
    }

    /// Frees an inode and everything it owns.
    fn destroy_inode(&mut self, ino: u64) -> Result<()> {
        let mut d = self.dinode(ino)?;
        if d.is_dir() {
            self.dir_free_blocks(ino, &d)?;
        } else if !d.is_symlink() {
            self.truncate(ino, &mut d, 0)?;
        }
        if d.xattr_block != 0 {
            self.free_block(d.xattr_block)?;
        }
        self.free_block(ino)?;
        if self.held.is_some() {
            // lock_dlm: other nodes see a freed dinode by its content (see getattr).
            d.nlink = 0;
            d.mode = 0;
            d.xattr_block = 0;
            d.size = 0;
            d.blocks = 0;
            d.content = Content::Extents(vec![]);
            self.put_dinode(ino, &d);
        }
        Ok(())
    }

    /// Drops one link; frees the inode when no link and no open handle remain.
    fn drop_link(&mut self, ino: u64) -> Result<()> {
        let mut d = self.dinode(ino)?;
        d.nlink = d.nlink.saturating_sub(if d.is_dir() { d.nlink } else { 1 });
        d.ctime = crate::now();
        self.put_dinode(ino, &d);
        if d.nlink == 0 {
            if self.open.get(&ino).copied().unwrap_or(0) > 0 {
                self.orphans.insert(ino);
            } else if !self.open_elsewhere(ino) {
                self.destroy_inode(ino)?;
            }
        }
        Ok(())
    }

    pub fn open_inode(&mut self, ino: u64) {
        *self.open.entry(ino).or_default() += 1;
    }

    pub fn release_inode(&mut self, ino: u64) -> Result<()> {
        let n = self.open.entry(ino).or_default();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.open.remove(&ino);
            let orphan = self.orphans.remove(&ino);
            // lock_dlm: another node may have unlinked it while it was open here.
            let unlinked =
                orphan || (self.held.is_some() && self.dinode(ino).is_ok_and(|d| d.nlink == 0 && d.mode != 0));
            if unlinked && !self.open_elsewhere(ino) {
                self.destroy_inode(ino)?;
            }
        }
        Ok(())
    }

    // ---- namespace operations ----

    /// Creates a file, device node, FIFO or socket (`mode` includes the type bits).
    pub fn mknod(&mut self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32, rdev: u32) -> Result<Attr> {
        self.check_new_name(parent, name)?;
        let (ino, d) = self.new_inode(parent, mode, uid, gid, rdev)?;
        self.put_dinode(ino, &d);
        self.dir_add(parent, name, ino, dtype(mode))?;
        self.touch_dir(parent, 0)?;
        Ok(Self::attr_of(ino, &d))
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        self.check_new_name(parent, name)?;
        let (ino, mut d) = self.new_inode(parent, libc::S_IFDIR | (mode & 0o7777), uid, gid, 0)?;
        let leaf = self.alloc(BlockState::Meta, Some(ino + 1))?;
        self.write_meta(leaf, DirLeaf { owner: ino, depth: 0, prefix: 0, next: 0, entries: vec![] }.encode(leaf));
        d.nlink = 2;
        d.parent = parent;
        d.blocks = 1;
        d.content = Content::DirHash(vec![leaf]);
        self.put_dinode(ino, &d);
        self.dir_add(parent, name, ino, libc::DT_DIR)?;
        self.touch_dir(parent, 1)?;
        Ok(Self::attr_of(ino, &d))
    }

    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        if target.len() > MAX_SYMLINK_LEN || target.is_empty() {
            return Err(FsError::NameTooLong);
        }
        self.check_new_name(parent, name)?;
        let (ino, mut d) = self.new_inode(parent, libc::S_IFLNK | 0o777, uid, gid, 0)?;
        d.size = target.len() as u64;
        d.content = Content::Inline(target.to_vec());
        self.put_dinode(ino, &d);
        self.dir_add(parent, name, ino, libc::DT_LNK)?;
        self.touch_dir(parent, 0)?;
        Ok(Self::attr_of(ino, &d))
    }

    pub fn readlink(&mut self, ino: u64) -> Result<Vec<u8>> {
        match self.dinode(ino)?.content {
            Content::Inline(v) => Ok(v),
            _ => Err(FsError::Invalid),
        }
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &[u8]) -> Result<Attr> {
        let mut d = self.dinode(ino)?;
        if d.is_dir() {
            return Err(FsError::IsDir);
        }
        if d.nlink >= 65000 {
            return Err(FsError::TooManyLinks);
        }
        self.check_new_name(parent, name)?;
        self.dir_add(parent, name, ino, dtype(d.mode))?;
        d.nlink += 1;
        d.ctime = crate::now();
        self.put_dinode(ino, &d);
        self.touch_dir(parent, 0)?;
        Ok(Self::attr_of(ino, &d))
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        let (ino, _) = self.lookup_entry(parent, name)?;
        if self.dinode(ino)?.is_dir() {
            return Err(FsError::IsDir);
        }
        self.dir_remove(parent, name)?;
        self.touch_dir(parent, 0)?;
        self.drop_link(ino)
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        let (ino, _) = self.lookup_entry(parent, name)?;
        let d = self.dinode(ino)?;
        if !d.is_dir() {
            return Err(FsError::NotDir);
        }
        if d.dir_entries != 0 {
            return Err(FsError::NotEmpty);
        }
        self.dir_remove(parent, name)?;
        self.touch_dir(parent, -1)?;
        self.drop_link(ino)
    }

    /// Renames atomically, replacing `newname` if it exists (and is compatible).
    pub fn rename(&mut self, parent: u64, name: &[u8], newparent: u64, newname: &[u8]) -> Result<()> {
        if newname.len() > MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        let (ino, _) = self.lookup_entry(parent, name)?;
        let d = self.dinode(ino)?;
        if !self.dinode(newparent)?.is_dir() {
            return Err(FsError::NotDir);
        }
        if d.is_dir() {
            // Refuse to move a directory below itself.
            let mut p = newparent;
            loop {
                if p == ino {
                    return Err(FsError::Invalid);
                }
                let pd = self.dinode(p)?;
                if pd.parent == p || pd.parent == 0 {
                    break;
                }
                p = pd.parent;
            }
        }
        match self.lookup_entry(newparent, newname) {
            Ok((target, _)) => {
                if target == ino {
                    return Ok(());
                }
                let t = self.dinode(target)?;
                match (d.is_dir(), t.is_dir()) {
                    (true, false) => return Err(FsError::NotDir),
                    (false, true) => return Err(FsError::IsDir),
                    (true, true) if t.dir_entries != 0 => return Err(FsError::NotEmpty),
                    _ => {}
                }
                self.dir_remove(newparent, newname)?;
                if t.is_dir() {
                    self.touch_dir(newparent, -1)?;
                }
                self.drop_link(target)?;
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        self.dir_remove(parent, name)?;
        self.dir_add(newparent, newname, ino, dtype(d.mode))?;
        let sub = if d.is_dir() && parent != newparent { 1 } else { 0 };
        self.touch_dir(parent, -sub)?;
        self.touch_dir(newparent, sub)?;
        let mut d = self.dinode(ino)?;
        if d.is_dir() {
            d.parent = newparent;
        }
        d.ctime = crate::now();
        self.put_dinode(ino, &d);
        Ok(())
    }

    fn check_new_name(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        if name.len() > MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(FsError::Invalid);
        }
        if !self.dinode(parent)?.is_dir() {
            return Err(FsError::NotDir);
        }
        match self.lookup_entry(parent, name) {
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Updates a directory's times (and link count by `nlink_delta` for subdirectories).
    fn touch_dir(&mut self, dir: u64, nlink_delta: i32) -> Result<()> {
        let mut d = self.dinode(dir)?;
        let now = crate::now();
        d.mtime = now;
        d.ctime = now;
        d.nlink = (d.nlink as i64 + nlink_delta as i64).max(0) as u32;
        self.put_dinode(dir, &d);
        Ok(())
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Attr> {
        if name.len() > MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        if name == b"." {
            return self.getattr(parent);
        }
        if name == b".." {
            let p = self.dinode(parent)?.parent;
            return self.getattr(p);
        }
        let (ino, _) = self.lookup_entry(parent, name)?;
        self.getattr(ino)
    }

    // ---- durability ----

    /// Makes everything done so far durable (data and metadata).
    pub fn sync(&mut self) -> Result<()> {
        self.commit()
    }

    /// Commits, writes everything home, resets the journal (clean unmount leaves it so).
    pub fn unmount(mut self) -> Result<()> {
        let orphans: Vec<u64> = self.orphans.drain().collect();
        for ino in orphans {
            self.destroy_inode(ino)?;
        }
        self.fold_statfs()?;
        self.commit()?;
        self.unmounting = true;
        self.checkpoint()
    }

    /// Sets how many metadata blocks stay cached (tests use a tiny cache to exercise re-reads).
    pub fn set_cache_limit(&mut self, blocks: usize) {
        self.cache_limit = blocks;
    }

    /// Sets the deepest directory hash table kept inside the dinode (tests use a small value
    /// to reach table blocks with few entries).
    pub fn set_inline_dir_depth(&mut self, depth: u8) {
        self.inline_dir_depth = depth.min(INLINE_DIR_DEPTH);
    }

    /// Blocks in the running transaction.
    pub fn dirty_blocks(&self) -> usize {
        self.dirty.len()
    }
}

/// `d_type` of a mode.
pub fn dtype(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        _ => libc::DT_REG,
    }
}

#[cfg(test)]
mod tests;
