//! Journal index and the journal's own blocks.
//!
//! A journal is a run of blocks owned by one node slot. Block 0 is the [`JournalHeader`];
//! transactions are written from block 1 on, each as one or more [`LogDescriptor`] blocks
//! (each followed by copies of the metadata blocks it lists) and a [`LogCommit`]. After a
//! checkpoint (everything logged written home and flushed) the header's `sequence` moves past
//! the last transaction and logging starts again at block 1, so replay reads forward from
//! block 1 and stops at the first transaction that is not complete, not in sequence or not
//! intact.

use super::*;

/// Journals one journal index block lists.
pub const JINDEX_MAX: usize = (BLOCK_SIZE - 32) / 32;
/// Home addresses one descriptor lists.
pub const LOG_DESCRIPTOR_MAX: usize = (BLOCK_SIZE - 40) / 8;

/// One journal: where it is and its node slot's statfs change block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalEntry {
    pub start: u64,
    pub blocks: u32,
    pub statfs_block: u64,
}

/// The journal index: journal `i` belongs to node slot `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JIndex {
    pub journals: Vec<JournalEntry>,
}

impl JIndex {
    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::JIndex, blkno);
        put_u32(&mut b[..], 24, self.journals.len() as u32);
        for (i, j) in self.journals.iter().enumerate() {
            let o = 32 + i * 32;
            put_u64(&mut b[..], o, j.start);
            put_u32(&mut b[..], o + 8, j.blocks);
            put_u64(&mut b[..], o + 16, j.statfs_block);
        }
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::JIndex, blkno)?;
        let count = get_u32(buf, 24) as usize;
        if count == 0 || count > JINDEX_MAX {
            return Err(FormatError::invalid(blkno, "journal count"));
        }
        let journals: Vec<JournalEntry> = (0..count)
            .map(|i| {
                let o = 32 + i * 32;
                JournalEntry { start: get_u64(buf, o), blocks: get_u32(buf, o + 8), statfs_block: get_u64(buf, o + 16) }
            })
            .collect();
        if journals.iter().any(|j| j.blocks < 8 || j.start == 0 || j.statfs_block == 0) {
            return Err(FormatError::invalid(blkno, "journal entry"));
        }
        Ok(JIndex { journals })
    }
}

/// Block 0 of a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalHeader {
    pub slot: u32,
    /// Sequence number the first transaction at block 1 must carry to be replayed.
    pub sequence: u64,
    /// Set by a clean unmount (and mkfs), cleared while mounted: a mount that finds it clear
    /// looks for inodes that were unlinked while open when the node died.
    pub clean: bool,
}

impl JournalHeader {
    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::JournalHeader, blkno);
        put_u32(&mut b[..], 24, self.slot);
        put_u32(&mut b[..], 28, self.clean as u32);
        put_u64(&mut b[..], 32, self.sequence);
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::JournalHeader, blkno)?;
        let flags = get_u32(buf, 28);
        if flags > 1 {
            return Err(FormatError::invalid(blkno, "journal header flags"));
        }
        Ok(JournalHeader { slot: get_u32(buf, 24), sequence: get_u64(buf, 32), clean: flags == 1 })
    }
}

/// Lists the home addresses of the block copies that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDescriptor {
    pub sequence: u64,
    /// Another descriptor follows this one's copies (else the commit block does).
    pub more: bool,
    pub homes: Vec<u64>,
}

impl LogDescriptor {
    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::LogDescriptor, blkno);
        put_u64(&mut b[..], 24, self.sequence);
        put_u32(&mut b[..], 32, self.homes.len() as u32);
        put_u32(&mut b[..], 36, self.more as u32);
        for (i, h) in self.homes.iter().enumerate() {
            put_u64(&mut b[..], 40 + i * 8, *h);
        }
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::LogDescriptor, blkno)?;
        let count = get_u32(buf, 32) as usize;
        let flags = get_u32(buf, 36);
        if count == 0 || count > LOG_DESCRIPTOR_MAX || flags > 1 {
            return Err(FormatError::invalid(blkno, "log descriptor"));
        }
        let homes = (0..count).map(|i| get_u64(buf, 40 + i * 8)).collect();
        Ok(LogDescriptor { sequence: get_u64(buf, 24), more: flags == 1, homes })
    }
}

/// Ends a transaction: it is replayed only if this block is present and its checksum of the
/// transaction's blocks matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCommit {
    pub sequence: u64,
    /// Journal blocks of the transaction before this one (descriptors and copies).
    pub blocks: u32,
    /// CRC32C over those blocks, in order.
    pub crc: u32,
}

impl LogCommit {
    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::LogCommit, blkno);
        put_u64(&mut b[..], 24, self.sequence);
        put_u32(&mut b[..], 32, self.blocks);
        put_u32(&mut b[..], 36, self.crc);
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::LogCommit, blkno)?;
        Ok(LogCommit { sequence: get_u64(buf, 24), blocks: get_u32(buf, 32), crc: get_u32(buf, 36) })
    }
}
