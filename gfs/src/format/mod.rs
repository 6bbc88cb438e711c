//! The on-disk format: one definition of every structure, with `encode` and `decode`.
//!
//! Every metadata block is [`BLOCK_SIZE`] bytes and starts with a 24-byte [`Header`]
//! (magic, block type, format version, the block's own address and a CRC32C of the whole
//! block). [`Header::seal`] fills the checksum in, and every `decode` verifies the magic,
//! the type, the address and the checksum before it looks at the body, so a torn,
//! misdirected or corrupted block is an error and never a wrong answer. All integers are
//! little-endian. The layout is written down byte by byte in `gfs/docs/format.md`.
//!
//! Decoders are pure functions of `&[u8]`: they never panic on any input (a fuzz target and
//! property tests hold them to it).

mod dir;
mod inode;
mod journal;
mod rgrp;
mod sb;

pub use dir::{name_hash, DirEntry, DirLeaf, DirTable, DIR_LEAF_SPACE, DIR_TABLE_PTRS, MAX_NAME_LEN};
pub use inode::{
    Content, Dinode, Extent, ExtentIndex, ExtentLeaf, Timestamp, Xattr, XattrBlock, DINODE_CONTENT, EXTENT_LEAF_MAX,
    INLINE_DIR_DEPTH, INLINE_EXTENTS_MAX, INLINE_INDEX_MAX, MAX_SYMLINK_LEN, XATTR_SPACE,
};
pub use journal::{
    scan_journal, JIndex, JournalEntry, JournalHeader, JournalScan, LogCommit, LogDescriptor, LoggedTransaction,
    JINDEX_MAX, LOG_DESCRIPTOR_MAX,
};
pub use rgrp::{Bitmap, BlockState, Rgrp, BITMAP_BLOCKS_PER_BLOCK, BITMAP_BYTES};
pub use sb::{LockProto, Statfs, Superblock, LOCKTABLE_LEN, STATFS_MASTER};

use thiserror::Error;

/// Every block of the filesystem is this many bytes.
pub const BLOCK_SIZE: usize = 4096;
/// Magic number at the start of every metadata block (the classic GFS one).
pub const GFS_MAGIC: u32 = 0x0116_1970;
/// On-disk format version written by this code and the only one it reads.
pub const GFS_FORMAT: u16 = 1;
/// Address of the superblock (byte offset 65536: the first 64 KiB are left to boot loaders
/// and partition tables).
pub const SB_BLOCK: u64 = 16;
/// Size of the common metadata header.
pub const HEADER_LEN: usize = 24;

/// One block buffer.
pub type Block = [u8; BLOCK_SIZE];

/// What a metadata block is (the `type` field of its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum BlockType {
    Superblock = 1,
    Rgrp = 2,
    Bitmap = 3,
    Dinode = 4,
    ExtentLeaf = 5,
    DirTable = 6,
    DirLeaf = 7,
    JIndex = 8,
    Statfs = 9,
    JournalHeader = 10,
    LogDescriptor = 11,
    LogCommit = 12,
    Xattr = 13,
}

impl BlockType {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Superblock,
            2 => Self::Rgrp,
            3 => Self::Bitmap,
            4 => Self::Dinode,
            5 => Self::ExtentLeaf,
            6 => Self::DirTable,
            7 => Self::DirLeaf,
            8 => Self::JIndex,
            9 => Self::Statfs,
            10 => Self::JournalHeader,
            11 => Self::LogDescriptor,
            12 => Self::LogCommit,
            13 => Self::Xattr,
            _ => return None,
        })
    }
}

/// Why a block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    #[error("block {blkno}: buffer is {len} bytes, a block is {BLOCK_SIZE}")]
    Short { blkno: u64, len: usize },
    #[error("block {blkno}: bad magic {magic:#010x} (not a gfs metadata block)")]
    BadMagic { blkno: u64, magic: u32 },
    #[error("block {blkno}: unknown format version {version} (this build reads {GFS_FORMAT})")]
    BadVersion { blkno: u64, version: u16 },
    #[error("block {blkno}: expected a {expected:?} block, found type {found}")]
    WrongType { blkno: u64, expected: BlockType, found: u16 },
    #[error("block {blkno}: header says it belongs at block {stored} (misdirected write?)")]
    WrongAddress { blkno: u64, stored: u64 },
    #[error("block {blkno}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { blkno: u64, stored: u32, computed: u32 },
    #[error("block {blkno}: invalid {what}")]
    Invalid { blkno: u64, what: &'static str },
}

impl FormatError {
    pub(crate) fn invalid(blkno: u64, what: &'static str) -> Self {
        Self::Invalid { blkno, what }
    }
}

/// The common header of every metadata block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub block_type: u16,
    pub blkno: u64,
    pub crc: u32,
}

impl Header {
    /// Reads the header without verifying anything but the length and magic (used by journal
    /// replay to find where a logged copy belongs, before verifying it).
    pub fn peek(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_LEN || get_u32(buf, 0) != GFS_MAGIC {
            return None;
        }
        Some(Header { block_type: get_u16(buf, 4), blkno: get_u64(buf, 8), crc: get_u32(buf, 16) })
    }

    /// Writes the header for a block of type `t` at `blkno` (checksum left zero).
    pub fn write(buf: &mut Block, t: BlockType, blkno: u64) {
        put_u32(buf, 0, GFS_MAGIC);
        put_u16(buf, 4, t as u16);
        put_u16(buf, 6, GFS_FORMAT);
        put_u64(buf, 8, blkno);
        put_u32(buf, 16, 0);
        put_u32(buf, 20, 0);
    }

    /// Computes the checksum of a finished block and stores it in the header.
    pub fn seal(buf: &mut Block) {
        let crc = block_crc(buf);
        put_u32(buf, 16, crc);
    }

    /// Verifies magic, version, type, address and checksum of `buf` as block `blkno`.
    pub fn verify(buf: &[u8], expected: BlockType, blkno: u64) -> Result<(), FormatError> {
        let found = Self::verify_any(buf, blkno)?;
        if found != expected as u16 {
            return Err(FormatError::WrongType { blkno, expected, found });
        }
        Ok(())
    }

    /// Verifies everything but the type; returns the type.
    pub fn verify_any(buf: &[u8], blkno: u64) -> Result<u16, FormatError> {
        if buf.len() != BLOCK_SIZE {
            return Err(FormatError::Short { blkno, len: buf.len() });
        }
        let magic = get_u32(buf, 0);
        if magic != GFS_MAGIC {
            return Err(FormatError::BadMagic { blkno, magic });
        }
        let version = get_u16(buf, 6);
        if version != GFS_FORMAT {
            return Err(FormatError::BadVersion { blkno, version });
        }
        let stored = get_u32(buf, 16);
        let computed = block_crc(buf);
        if stored != computed {
            return Err(FormatError::BadChecksum { blkno, stored, computed });
        }
        let at = get_u64(buf, 8);
        if at != blkno {
            return Err(FormatError::WrongAddress { blkno, stored: at });
        }
        Ok(get_u16(buf, 4))
    }
}

/// CRC32C of a block with its checksum field (bytes 16..20) taken as zero.
pub fn block_crc(buf: &[u8]) -> u32 {
    let c = crc32c::crc32c(&buf[..16]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &buf[20..])
}

/// Any metadata block, decoded (for tools that walk the device: fsck, `gfs_tool`).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaBlock {
    Superblock(Superblock),
    Rgrp(Rgrp),
    Bitmap(Bitmap),
    Dinode(Dinode),
    ExtentLeaf(ExtentLeaf),
    DirTable(DirTable),
    DirLeaf(DirLeaf),
    JIndex(JIndex),
    Statfs(Statfs),
    JournalHeader(JournalHeader),
    LogDescriptor(LogDescriptor),
    LogCommit(LogCommit),
    Xattr(XattrBlock),
}

impl MetaBlock {
    /// Decodes whatever metadata block `buf` holds, verified as block `blkno`.
    pub fn decode(buf: &[u8], blkno: u64) -> Result<MetaBlock, FormatError> {
        let t = Header::verify_any(buf, blkno)?;
        let t = BlockType::from_u16(t).ok_or(FormatError::invalid(blkno, "block type"))?;
        Ok(match t {
            BlockType::Superblock => Self::Superblock(Superblock::decode(buf)?),
            BlockType::Rgrp => Self::Rgrp(Rgrp::decode(buf, blkno)?),
            BlockType::Bitmap => Self::Bitmap(Bitmap::decode(buf, blkno)?),
            BlockType::Dinode => Self::Dinode(Dinode::decode(buf, blkno)?),
            BlockType::ExtentLeaf => Self::ExtentLeaf(ExtentLeaf::decode(buf, blkno)?),
            BlockType::DirTable => Self::DirTable(DirTable::decode(buf, blkno)?),
            BlockType::DirLeaf => Self::DirLeaf(DirLeaf::decode(buf, blkno)?),
            BlockType::JIndex => Self::JIndex(JIndex::decode(buf, blkno)?),
            BlockType::Statfs => Self::Statfs(Statfs::decode(buf, blkno)?),
            BlockType::JournalHeader => Self::JournalHeader(JournalHeader::decode(buf, blkno)?),
            BlockType::LogDescriptor => Self::LogDescriptor(LogDescriptor::decode(buf, blkno)?),
            BlockType::LogCommit => Self::LogCommit(LogCommit::decode(buf, blkno)?),
            BlockType::Xattr => Self::Xattr(XattrBlock::decode(buf, blkno)?),
        })
    }

    /// Encodes the block for address `blkno` (a superblock always goes to [`SB_BLOCK`]).
    pub fn encode(&self, blkno: u64) -> Box<Block> {
        match self {
            Self::Superblock(x) => x.encode(),
            Self::Rgrp(x) => x.encode(blkno),
            Self::Bitmap(x) => x.encode(blkno),
            Self::Dinode(x) => x.encode(blkno),
            Self::ExtentLeaf(x) => x.encode(blkno),
            Self::DirTable(x) => x.encode(blkno),
            Self::DirLeaf(x) => x.encode(blkno),
            Self::JIndex(x) => x.encode(blkno),
            Self::Statfs(x) => x.encode(blkno),
            Self::JournalHeader(x) => x.encode(blkno),
            Self::LogDescriptor(x) => x.encode(blkno),
            Self::LogCommit(x) => x.encode(blkno),
            Self::Xattr(x) => x.encode(blkno),
        }
    }
}

// Little-endian field access. Callers pass offsets inside a block; the decoders check
// lengths first, so these index a buffer of at least `off + N` bytes.
pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
pub(crate) fn get_i64(b: &[u8], off: usize) -> i64 {
    i64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_i64(b: &mut [u8], off: usize, v: i64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// A zeroed block with a header for `t` at `blkno`.
pub(crate) fn new_block(t: BlockType, blkno: u64) -> Box<Block> {
    let mut b = Box::new([0u8; BLOCK_SIZE]);
    Header::write(&mut b, t, blkno);
    b
}

#[cfg(test)]
mod tests;
