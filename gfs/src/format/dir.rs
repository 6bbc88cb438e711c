//! Hashed directories (extendible hashing, as GFS's "exhash"): a table of 2^depth leaf
//! addresses indexed by the top `depth` bits of the name's hash; each leaf holds the entries
//! whose hash starts with its prefix.

use super::*;

/// Longest file name.
pub const MAX_NAME_LEN: usize = 255;
/// Leaf addresses in one hash table block.
pub const DIR_TABLE_PTRS: usize = (BLOCK_SIZE - 40) / 8;
/// Bytes of entry space in one leaf.
pub const DIR_LEAF_SPACE: usize = BLOCK_SIZE - LEAF_ENTRIES_OFF;
const LEAF_ENTRIES_OFF: usize = 48;
const ENTRY_FIXED: usize = 14;

/// The hash of a file name (CRC32C of its bytes).
pub fn name_hash(name: &[u8]) -> u32 {
    crc32c::crc32c(name)
}

/// A block of a directory's hash table (used once the table outgrows the dinode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirTable {
    pub owner: u64,
    /// Position of this block in the table (its first pointer is `index * DIR_TABLE_PTRS`).
    pub index: u32,
    pub ptrs: Vec<u64>,
}

impl DirTable {
    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::DirTable, blkno);
        put_u64(&mut b[..], 24, self.owner);
        put_u32(&mut b[..], 32, self.index);
        put_u32(&mut b[..], 36, self.ptrs.len() as u32);
        for (i, p) in self.ptrs.iter().enumerate() {
            put_u64(&mut b[..], 40 + i * 8, *p);
        }
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::DirTable, blkno)?;
        let count = get_u32(buf, 36) as usize;
        if count == 0 || count > DIR_TABLE_PTRS {
            return Err(FormatError::invalid(blkno, "hash table pointer count"));
        }
        let ptrs: Vec<u64> = (0..count).map(|i| get_u64(buf, 40 + i * 8)).collect();
        if ptrs.contains(&0) {
            return Err(FormatError::invalid(blkno, "hash table pointer"));
        }
        Ok(DirTable { owner: get_u64(buf, 24), index: get_u32(buf, 32), ptrs })
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub inum: u64,
    pub hash: u32,
    /// `DT_*` type of the target (as in `d_type`).
    pub dtype: u8,
    pub name: Vec<u8>,
}

impl DirEntry {
    /// Bytes this entry takes in a leaf.
    pub fn space(&self) -> usize {
        ENTRY_FIXED + self.name.len()
    }
    /// Bytes an entry with a name of `len` bytes takes.
    pub fn space_for(len: usize) -> usize {
        ENTRY_FIXED + len
    }
}

/// A directory leaf: the entries whose hash starts with `prefix` (its top `depth` bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirLeaf {
    pub owner: u64,
    /// Local depth: how many top hash bits all entries here share.
    pub depth: u16,
    /// The shared prefix, in the top `depth` bits.
    pub prefix: u32,
    /// Overflow leaf (for more colliding names than one leaf holds), 0 if none.
    pub next: u64,
    pub entries: Vec<DirEntry>,
}

impl DirLeaf {
    /// Bytes used by the entries.
    pub fn used(&self) -> usize {
        self.entries.iter().map(|e| e.space()).sum()
    }

    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::DirLeaf, blkno);
        put_u64(&mut b[..], 24, self.owner);
        put_u16(&mut b[..], 32, self.depth);
        put_u16(&mut b[..], 34, self.entries.len() as u16);
        put_u32(&mut b[..], 36, self.prefix);
        put_u64(&mut b[..], 40, self.next);
        let mut off = LEAF_ENTRIES_OFF;
        for e in &self.entries {
            put_u64(&mut b[..], off, e.inum);
            put_u32(&mut b[..], off + 8, e.hash);
            b[off + 12] = e.dtype;
            b[off + 13] = e.name.len() as u8;
            b[off + ENTRY_FIXED..off + ENTRY_FIXED + e.name.len()].copy_from_slice(&e.name);
            off += e.space();
        }
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::DirLeaf, blkno)?;
        let depth = get_u16(buf, 32);
        let count = get_u16(buf, 34) as usize;
        let prefix = get_u32(buf, 36);
        // The bits below the prefix must be zero.
        let low_mask = if depth >= 32 { 0 } else { u32::MAX >> depth };
        if depth > 32 || prefix & low_mask != 0 {
            return Err(FormatError::invalid(blkno, "leaf depth or prefix"));
        }
        let mut entries = Vec::with_capacity(count.min(DIR_LEAF_SPACE / ENTRY_FIXED));
        let mut off = LEAF_ENTRIES_OFF;
        for _ in 0..count {
            if off + ENTRY_FIXED > BLOCK_SIZE {
                return Err(FormatError::invalid(blkno, "directory entry past the block"));
            }
            let nl = buf[off + 13] as usize;
            if nl == 0 || off + ENTRY_FIXED + nl > BLOCK_SIZE {
                return Err(FormatError::invalid(blkno, "directory entry name length"));
            }
            let name = buf[off + ENTRY_FIXED..off + ENTRY_FIXED + nl].to_vec();
            let hash = get_u32(buf, off + 8);
            if hash != name_hash(&name) || name.contains(&b'/') || name.contains(&0) {
                return Err(FormatError::invalid(blkno, "directory entry name or hash"));
            }
            if depth > 0 && (hash >> (32 - depth as u32)) != (prefix >> (32 - depth as u32)) {
                return Err(FormatError::invalid(blkno, "directory entry in the wrong leaf"));
            }
            entries.push(DirEntry { inum: get_u64(buf, off), hash, dtype: buf[off + 12], name });
            off += ENTRY_FIXED + nl;
        }
        Ok(DirLeaf { owner: get_u64(buf, 24), depth, prefix, next: get_u64(buf, 40), entries })
    }
}
