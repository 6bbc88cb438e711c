//! Making a filesystem, and reading one for `gfs_tool`.

use crate::device::{Device, DeviceError};
use crate::format::*;
use thiserror::Error;

/// Why `mkfs.gfs` or `gfs_tool` failed.
#[derive(Debug, Error)]
pub enum MkfsError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("the device already holds a gfs filesystem (lock table {locktable:?}); use -O to overwrite it")]
    Exists { locktable: String },
    #[error("lock table {0:?} must be CLUSTER:FSNAME (at most 63 bytes, neither part empty)")]
    BadLockTable(String),
    #[error("journal count {0} must be between 1 and {JINDEX_MAX}")]
    BadJournalCount(u32),
    #[error("the device is too small: {blocks} blocks of 4096 bytes, need at least {need}")]
    TooSmall { blocks: u64, need: u64 },
}

/// `mkfs.gfs` parameters.
#[derive(Debug, Clone)]
pub struct MkfsOptions {
    pub lockproto: LockProto,
    pub locktable: String,
    pub journals: u32,
    /// Blocks per journal (default: 8 MiB, smaller on small devices).
    pub journal_blocks: Option<u32>,
    /// Blocks per resource group (default: 64 MiB, smaller on small devices).
    pub rg_blocks: Option<u32>,
    /// Overwrite an existing filesystem.
    pub overwrite: bool,
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut b).is_ok() {
            return b;
        }
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed = crc32c::crc32c(&t.as_nanos().to_le_bytes()) as u64 ^ std::process::id() as u64;
    for (i, x) in b.iter_mut().enumerate() {
        *x = (seed.rotate_left(i as u32 * 7) ^ i as u64) as u8;
    }
    b
}

fn write(dev: &dyn Device, blkno: u64, b: &Block) -> Result<(), DeviceError> {
    dev.write_at(b, blkno * BLOCK_SIZE as u64)
}

/// Reads and verifies metadata block `blkno`.
pub fn read_block(dev: &dyn Device, blkno: u64) -> Result<Box<Block>, DeviceError> {
    let mut b = Box::new([0u8; BLOCK_SIZE]);
    dev.read_at(&mut b[..], blkno * BLOCK_SIZE as u64)?;
    Ok(b)
}

/// Reads the superblock.
pub fn read_superblock(dev: &dyn Device) -> Result<Superblock, MkfsError> {
    if dev.size() < (SB_BLOCK + 1) * BLOCK_SIZE as u64 {
        return Err(MkfsError::TooSmall { blocks: dev.size() / BLOCK_SIZE as u64, need: SB_BLOCK + 1 });
    }
    Ok(Superblock::decode(&read_block(dev, SB_BLOCK)?[..])?)
}

/// Makes a filesystem on `dev`.
pub fn mkfs(dev: &dyn Device, o: &MkfsOptions) -> Result<Superblock, MkfsError> {
    let (cluster, fsname) = o.locktable.split_once(':').unwrap_or(("", ""));
    if cluster.is_empty() || fsname.is_empty() || o.locktable.len() >= LOCKTABLE_LEN || o.locktable.contains('\0') {
        return Err(MkfsError::BadLockTable(o.locktable.clone()));
    }
    if o.journals == 0 || o.journals as usize > JINDEX_MAX {
        return Err(MkfsError::BadJournalCount(o.journals));
    }
    let blocks = dev.size() / BLOCK_SIZE as u64;
    if !o.overwrite && blocks > SB_BLOCK {
        if let Ok(sb) = read_superblock(dev) {
            return Err(MkfsError::Exists { locktable: sb.locktable });
        }
    }
    let j = o.journals as u64;
    // Metadata area: superblock, jindex, master statfs, one statfs change block per slot.
    let jindex_block = SB_BLOCK + 1;
    let master_statfs = SB_BLOCK + 2;
    let journal_start = SB_BLOCK + 3 + j;
    let jblocks = o.journal_blocks.map(|v| v as u64).unwrap_or_else(|| (blocks / 8 / j).clamp(64, 2048));
    let rg_start = journal_start + j * jblocks;
    let need = rg_start + 64;
    if blocks < need || jblocks < 8 {
        return Err(MkfsError::TooSmall { blocks, need });
    }
    let rg_blocks = o.rg_blocks.map(|v| v as u64).unwrap_or_else(|| ((blocks - rg_start) / 4).clamp(64, 16384)).max(16);
    // Resource groups; a short tail that cannot hold a useful group is left unused.
    let mut rgs = Vec::new();
    let mut start = rg_start;
    while start < blocks {
        let len = (blocks - start).min(rg_blocks);
        if len < 16 && !rgs.is_empty() {
            break;
        }
        match Rgrp::layout(rgs.len() as u32, start, len) {
            Some(r) => rgs.push((start, r)),
            None => break,
        }
        start += len;
    }
    if rgs.is_empty() {
        return Err(MkfsError::TooSmall { blocks, need });
    }
    let block_count = start;
    let uuid: [u8; 16] = random_bytes();
    // Root directory: the first two data blocks of group 0 (dinode and its one leaf).
    let root = rgs[0].1.data0;
    let root_leaf = root + 1;
    let now = crate::now();
    let total: u64 = rgs.iter().map(|(_, r)| r.data_count as u64).sum();

    // Journals: header with a random starting sequence and a zeroed first log block, so
    // nothing left over from an earlier filesystem on the device can pass for a transaction.
    let seq0 = u64::from_le_bytes(random_bytes()) >> 8;
    let zero = [0u8; BLOCK_SIZE];
    let mut jindex = JIndex { journals: Vec::new() };
    for s in 0..o.journals {
        let jstart = journal_start + s as u64 * jblocks;
        let statfs_block = master_statfs + 1 + s as u64;
        write(dev, jstart, &JournalHeader { slot: s, sequence: seq0, clean: true }.encode(jstart))?;
        write(dev, jstart + 1, &zero)?;
        write(dev, statfs_block, &Statfs { slot: s, total: 0, free: 0, dinodes: 0 }.encode(statfs_block))?;
        jindex.journals.push(JournalEntry { start: jstart, blocks: jblocks as u32, statfs_block });
    }
    write(dev, jindex_block, &jindex.encode(jindex_block))?;
    write(
        dev,
        master_statfs,
        &Statfs { slot: STATFS_MASTER, total: total as i64, free: total as i64 - 2, dinodes: 1 }.encode(master_statfs),
    )?;
    for (i, (start, r)) in rgs.iter_mut().enumerate() {
        let mut bitmaps: Vec<Bitmap> = (0..r.bitmap_blocks).map(|b| Bitmap::new(i as u32, b)).collect();
        if i == 0 {
            bitmaps[0].set(0, BlockState::Dinode);
            bitmaps[0].set(1, BlockState::Meta);
            r.free -= 2;
            r.dinodes = 1;
        }
        write(dev, *start, &r.encode(*start))?;
        for (b, bm) in bitmaps.iter().enumerate() {
            let at = *start + 1 + b as u64;
            write(dev, at, &bm.encode(at))?;
        }
    }
    let root_dinode = Dinode {
        mode: 0o040755,
        uid: 0,
        gid: 0,
        nlink: 2,
        size: 0,
        blocks: 1,
        atime: now,
        mtime: now,
        ctime: now,
        rdev: 0,
        generation: 1,
        parent: root,
        flags: 0,
        dir_depth: 0,
        xattr_block: 0,
        dir_entries: 0,
        content: Content::DirHash(vec![root_leaf]),
    };
    write(dev, root, &root_dinode.encode(root))?;
    write(dev, root_leaf, &DirLeaf { owner: root, depth: 0, prefix: 0, next: 0, entries: vec![] }.encode(root_leaf))?;
    dev.sync()?;
    let sb = Superblock {
        block_size: BLOCK_SIZE as u32,
        block_count,
        uuid,
        lockproto: o.lockproto,
        locktable: o.locktable.clone(),
        root_dinode: root,
        jindex_block,
        master_statfs,
        rg_start,
        rg_blocks: rg_blocks as u32,
        rg_count: rgs.len() as u32,
        journal_count: o.journals,
    };
    write(dev, SB_BLOCK, &sb.encode())?;
    dev.sync()?;
    Ok(sb)
}

/// Space as `df` shows it: the master statfs block plus every slot's pending changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DfInfo {
    pub total: u64,
    pub free: u64,
    pub dinodes: u64,
}

/// Reads the statfs blocks (cheap: one block per journal plus one).
pub fn df(dev: &dyn Device, sb: &Superblock) -> Result<DfInfo, MkfsError> {
    let master = Statfs::decode(&read_block(dev, sb.master_statfs)?[..], sb.master_statfs)?;
    let jindex = JIndex::decode(&read_block(dev, sb.jindex_block)?[..], sb.jindex_block)?;
    let (mut free, mut dinodes) = (master.free, master.dinodes);
    for j in &jindex.journals {
        let c = Statfs::decode(&read_block(dev, j.statfs_block)?[..], j.statfs_block)?;
        free += c.free;
        dinodes += c.dinodes;
    }
    Ok(DfInfo { total: master.total.max(0) as u64, free: free.max(0) as u64, dinodes: dinodes.max(0) as u64 })
}

/// Formats a UUID the usual way.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}
