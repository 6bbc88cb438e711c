//! Superblock and statfs blocks.

use super::*;

/// Bytes reserved for the lock protocol name and for the lock table name.
pub const LOCKTABLE_LEN: usize = 64;
/// `slot` value of the master statfs block (per-node change blocks carry their slot).
pub const STATFS_MASTER: u32 = u32::MAX;

/// The lock protocol named in the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockProto {
    /// One node, no cluster: locks are local.
    Nolock,
    /// Locks through the cluster's DLM.
    Dlm,
}

impl LockProto {
    pub fn as_str(self) -> &'static str {
        match self {
            LockProto::Nolock => "lock_nolock",
            LockProto::Dlm => "lock_dlm",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "lock_nolock" => Some(Self::Nolock),
            "lock_dlm" => Some(Self::Dlm),
            _ => None,
        }
    }
}

impl std::fmt::Display for LockProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The superblock, at block [`SB_BLOCK`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Always [`BLOCK_SIZE`] for this format version.
    pub block_size: u32,
    /// Blocks in the filesystem (the device may be larger).
    pub block_count: u64,
    pub uuid: [u8; 16],
    pub lockproto: LockProto,
    /// `cluster:fsname` (at most 63 bytes).
    pub locktable: String,
    /// Inode number (= block address) of the root directory.
    pub root_dinode: u64,
    /// Address of the journal index.
    pub jindex_block: u64,
    /// Address of the master statfs block.
    pub master_statfs: u64,
    /// Address of the first resource group.
    pub rg_start: u64,
    /// Blocks per resource group (header + bitmaps + data); the last one may be shorter.
    pub rg_blocks: u32,
    pub rg_count: u32,
    /// Journals (node slots); the journal index lists them.
    pub journal_count: u32,
}

impl Superblock {
    /// Start and length of resource group `i` (computed from the geometry).
    pub fn rg_extent(&self, i: u32) -> (u64, u64) {
        let start = self.rg_start + i as u64 * self.rg_blocks as u64;
        let len = (self.block_count.saturating_sub(start)).min(self.rg_blocks as u64);
        (start, len)
    }

    pub fn encode(&self) -> Box<Block> {
        let mut b = new_block(BlockType::Superblock, SB_BLOCK);
        put_u32(&mut b[..], 24, self.block_size);
        put_u32(&mut b[..], 28, 0);
        put_u64(&mut b[..], 32, self.block_count);
        b[40..56].copy_from_slice(&self.uuid);
        put_name(&mut b[56..120], self.lockproto.as_str());
        put_name(&mut b[120..184], &self.locktable);
        put_u64(&mut b[..], 184, self.root_dinode);
        put_u64(&mut b[..], 192, self.jindex_block);
        put_u64(&mut b[..], 200, self.master_statfs);
        put_u64(&mut b[..], 208, self.rg_start);
        put_u32(&mut b[..], 216, self.rg_blocks);
        put_u32(&mut b[..], 220, self.rg_count);
        put_u32(&mut b[..], 224, self.journal_count);
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8]) -> Result<Self, FormatError> {
        let blkno = SB_BLOCK;
        Header::verify(buf, BlockType::Superblock, blkno)?;
        let block_size = get_u32(buf, 24);
        if block_size as usize != BLOCK_SIZE {
            return Err(FormatError::invalid(blkno, "block size (only 4096 is supported)"));
        }
        let lp = get_name(&buf[56..120]).ok_or(FormatError::invalid(blkno, "lock protocol name"))?;
        let lockproto = LockProto::parse(&lp).ok_or(FormatError::invalid(blkno, "lock protocol"))?;
        let locktable = get_name(&buf[120..184]).ok_or(FormatError::invalid(blkno, "lock table name"))?;
        let sb = Superblock {
            block_size,
            block_count: get_u64(buf, 32),
            uuid: buf[40..56].try_into().expect("16 bytes"),
            lockproto,
            locktable,
            root_dinode: get_u64(buf, 184),
            jindex_block: get_u64(buf, 192),
            master_statfs: get_u64(buf, 200),
            rg_start: get_u64(buf, 208),
            rg_blocks: get_u32(buf, 216),
            rg_count: get_u32(buf, 220),
            journal_count: get_u32(buf, 224),
        };
        let in_fs = |a: u64| a > SB_BLOCK && a < sb.block_count;
        if !in_fs(sb.root_dinode) || !in_fs(sb.jindex_block) || !in_fs(sb.master_statfs) || !in_fs(sb.rg_start) {
            return Err(FormatError::invalid(blkno, "address outside the filesystem"));
        }
        if sb.rg_blocks < 3 || sb.rg_count == 0 {
            return Err(FormatError::invalid(blkno, "resource group geometry"));
        }
        let end = sb.rg_start as u128 + (sb.rg_count as u128 - 1) * sb.rg_blocks as u128;
        if end >= sb.block_count as u128 {
            return Err(FormatError::invalid(blkno, "resource groups past the end of the filesystem"));
        }
        if sb.journal_count == 0 || sb.journal_count as usize > JINDEX_MAX {
            return Err(FormatError::invalid(blkno, "journal count"));
        }
        Ok(sb)
    }
}

fn put_name(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn get_name(src: &[u8]) -> Option<String> {
    let n = src.iter().position(|&c| c == 0)?;
    if src[n..].iter().any(|&c| c != 0) {
        return None;
    }
    String::from_utf8(src[..n].to_vec()).ok()
}

/// Free-space counters: the master block holds the totals; each node slot has a change block
/// with deltas it has not yet folded into the master (so `df` needs no cluster-wide lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statfs {
    /// [`STATFS_MASTER`] or the node slot.
    pub slot: u32,
    /// Total data blocks (master) or 0 (change blocks).
    pub total: i64,
    /// Free data blocks (master) or the change in free blocks.
    pub free: i64,
    /// Dinodes in use (master) or the change in dinodes.
    pub dinodes: i64,
}

impl Statfs {
    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::Statfs, blkno);
        put_u32(&mut b[..], 24, self.slot);
        put_i64(&mut b[..], 32, self.total);
        put_i64(&mut b[..], 40, self.free);
        put_i64(&mut b[..], 48, self.dinodes);
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::Statfs, blkno)?;
        Ok(Statfs {
            slot: get_u32(buf, 24),
            total: get_i64(buf, 32),
            free: get_i64(buf, 40),
            dinodes: get_i64(buf, 48),
        })
    }
}
