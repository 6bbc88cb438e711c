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

/// One committed transaction found in a journal: its sequence and the block copies it logs,
/// in order, each with its home address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedTransaction {
    pub sequence: u64,
    pub copies: Vec<(u64, Box<Block>)>,
}

/// What [`scan_journal`] found: the transactions to replay, in order, and the sequence the
/// journal header names once they are home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalScan {
    pub transactions: Vec<LoggedTransaction>,
    pub next_sequence: u64,
}

impl JournalScan {
    /// Every copy of every transaction, in replay order.
    pub fn copies(&self) -> impl Iterator<Item = &(u64, Box<Block>)> {
        self.transactions.iter().flat_map(|t| t.copies.iter())
    }
}

/// The replay rules of the format, in one place (the mount's replay, a node recovering
/// another's journal, and `gfs_fsck` all use it). Reads journal `j` through `read` (block
/// address to block) from block 1, expecting sequence `sequence` (the journal header's),
/// and returns the committed transactions: it stops at the first transaction whose
/// descriptors or commit are missing, out of sequence or past the end of the journal, whose
/// commit checksum does not match, or whose copies do not verify as the blocks they claim to
/// be or claim a home at or past `block_count`. Writing the copies home in order, then the
/// header at `next_sequence`, is the caller's part.
pub fn scan_journal<E>(
    j: &JournalEntry,
    sequence: u64,
    block_count: u64,
    mut read: impl FnMut(u64) -> Result<Box<Block>, E>,
) -> Result<JournalScan, E> {
    let (start, jblocks) = (j.start, j.blocks as u64);
    let mut seq = sequence;
    let mut pos = 1u64;
    let mut transactions = Vec::new();
    'tx: loop {
        let mut copies: Vec<(u64, Box<Block>)> = Vec::new();
        let mut crc = 0u32;
        let mut p = pos;
        let mut first = true;
        loop {
            if p >= jblocks {
                break 'tx;
            }
            let b = read(start + p)?;
            let Ok(desc) = LogDescriptor::decode(&b[..], start + p) else { break 'tx };
            if desc.sequence != seq || p + desc.homes.len() as u64 + 1 >= jblocks {
                break 'tx;
            }
            crc = if first { crc32c::crc32c(&b[..]) } else { crc32c::crc32c_append(crc, &b[..]) };
            first = false;
            p += 1;
            for &home in &desc.homes {
                let c = read(start + p)?;
                crc = crc32c::crc32c_append(crc, &c[..]);
                if Header::verify_any(&c[..], home).is_err() || home >= block_count {
                    break 'tx;
                }
                copies.push((home, c));
                p += 1;
            }
            if !desc.more {
                break;
            }
        }
        let b = read(start + p)?;
        match LogCommit::decode(&b[..], start + p) {
            Ok(c) if c.sequence == seq && c.blocks as u64 == p - pos && c.crc == crc => {}
            _ => break 'tx,
        }
        transactions.push(LoggedTransaction { sequence: seq, copies });
        seq += 1;
        pos = p + 1;
    }
    Ok(JournalScan { transactions, next_sequence: seq })
}

#[cfg(test)]
mod scan_tests {
    use super::*;
    use std::collections::HashMap;

    /// A journal at block 100 of 64 blocks holding transactions `seq0..seq0 + n` with
    /// `per_tx` statfs copies each (homes 1000 + k).
    fn journal(seq0: u64, n: u64, per_tx: usize) -> (JournalEntry, HashMap<u64, Box<Block>>) {
        let j = JournalEntry { start: 100, blocks: 64, statfs_block: 1 };
        let mut blocks = HashMap::new();
        let mut pos = 1u64;
        for t in 0..n {
            let seq = seq0 + t;
            let homes: Vec<u64> = (0..per_tx as u64).map(|k| 1000 + k).collect();
            let desc = LogDescriptor { sequence: seq, more: false, homes: homes.clone() };
            let mut tx = vec![desc.encode(j.start + pos)];
            for (k, &h) in homes.iter().enumerate() {
                tx.push(Statfs { slot: 0, total: 0, free: seq as i64, dinodes: k as i64 }.encode(h));
            }
            let crc = tx.iter().fold(None, |c: Option<u32>, b| {
                Some(c.map_or_else(|| crc32c::crc32c(&b[..]), |c| crc32c::crc32c_append(c, &b[..])))
            });
            let commit = LogCommit { sequence: seq, blocks: tx.len() as u32, crc: crc.unwrap() };
            let at = j.start + pos + tx.len() as u64;
            tx.push(commit.encode(at));
            for b in tx {
                blocks.insert(j.start + pos, b);
                pos += 1;
            }
        }
        (j, blocks)
    }

    fn scan(j: &JournalEntry, blocks: &HashMap<u64, Box<Block>>, seq: u64, count: u64) -> JournalScan {
        scan_journal::<()>(j, seq, count, |b| Ok(blocks.get(&b).cloned().unwrap_or_else(|| Box::new([0; BLOCK_SIZE]))))
            .unwrap()
    }

    #[test]
    fn committed_transactions_in_sequence_are_found() {
        let (j, blocks) = journal(77, 3, 4);
        let s = scan(&j, &blocks, 77, 2000);
        assert_eq!(s.transactions.iter().map(|t| t.sequence).collect::<Vec<_>>(), vec![77, 78, 79]);
        assert_eq!(s.next_sequence, 80);
        assert_eq!(s.copies().count(), 12);
        // The header names another sequence: nothing (leftovers of an older life).
        assert!(scan(&j, &blocks, 78, 2000).transactions.is_empty());
    }

    #[test]
    fn replay_stops_at_a_torn_or_foreign_transaction() {
        let (j, mut blocks) = journal(5, 3, 2);
        // Transaction 2's second copy is torn: its checksum and its copy fail.
        let torn = j.start + 4 + 3;
        blocks.get_mut(&torn).unwrap()[200] ^= 1;
        let s = scan(&j, &blocks, 5, 2000);
        assert_eq!((s.transactions.len(), s.next_sequence), (1, 6));
        // Homes past the end of the filesystem end it too.
        let (j, blocks) = journal(5, 2, 2);
        assert!(scan(&j, &blocks, 5, 1001).transactions.is_empty());
    }
}
