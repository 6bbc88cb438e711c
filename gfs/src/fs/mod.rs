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
//!
//! This module holds the engine's state ([`Fs`]), mount, inodes and durability; the parts:
//! `cache` (metadata cache), `alloc` (allocator and statfs), `dir` (hashed directories),
//! `namespace` (creating, linking, renaming, looking up names), `file` (file data), `xattr`
//! (extended attributes), `journal` (commit, checkpoint, replay), `locks` (what glocks
//! cover, lock_dlm), `grow` (gfs_grow, gfs_jadd) and `check` (the invariant checker).

mod alloc;
mod cache;
mod check;
mod dir;
mod file;
mod grow;
mod journal;
mod locks;
mod namespace;
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
