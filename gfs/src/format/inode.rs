//! Dinodes (one block per inode; the inode number is the block address), extent maps and
//! extended attribute blocks.

use super::*;

/// Offset of the content area in a dinode.
const CONTENT_OFF: usize = 160;
/// Bytes of content area in a dinode.
pub const DINODE_CONTENT: usize = BLOCK_SIZE - CONTENT_OFF;
/// Extents that fit in a dinode.
pub const INLINE_EXTENTS_MAX: usize = DINODE_CONTENT / EXTENT_LEN;
/// Extent-index entries that fit in a dinode.
pub const INLINE_INDEX_MAX: usize = DINODE_CONTENT / INDEX_LEN;
/// Extents in one extent leaf block.
pub const EXTENT_LEAF_MAX: usize = (BLOCK_SIZE - 40) / EXTENT_LEN;
/// Deepest directory hash table kept inside the dinode (2^8 pointers = 2 KiB).
pub const INLINE_DIR_DEPTH: u8 = 8;
/// Longest symlink target (stored inline in the dinode).
pub const MAX_SYMLINK_LEN: usize = DINODE_CONTENT;
/// Bytes of name/value space in one xattr block.
pub const XATTR_SPACE: usize = BLOCK_SIZE - 40;

const EXTENT_LEN: usize = 24;
const INDEX_LEN: usize = 16;

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// A run of `len` file blocks starting at file block `logical`, stored from `physical` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u32,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.logical + self.len as u64
    }
    fn put(&self, b: &mut [u8], off: usize) {
        put_u64(b, off, self.logical);
        put_u64(b, off + 8, self.physical);
        put_u32(b, off + 16, self.len);
        put_u32(b, off + 20, 0);
    }
    fn get(b: &[u8], off: usize) -> Extent {
        Extent { logical: get_u64(b, off), physical: get_u64(b, off + 8), len: get_u32(b, off + 16) }
    }
}

/// Checks a list of extents: non-empty runs, sorted, not overlapping, no overflow.
fn check_extents(ext: &[Extent], blkno: u64) -> Result<(), FormatError> {
    let mut prev_end = 0u64;
    for (i, e) in ext.iter().enumerate() {
        if e.len == 0 || e.physical == 0 {
            return Err(FormatError::invalid(blkno, "empty extent"));
        }
        if e.logical.checked_add(e.len as u64).is_none() || e.physical.checked_add(e.len as u64).is_none() {
            return Err(FormatError::invalid(blkno, "extent overflows"));
        }
        if i > 0 && e.logical < prev_end {
            return Err(FormatError::invalid(blkno, "extents out of order or overlapping"));
        }
        prev_end = e.end();
    }
    Ok(())
}

/// An entry of a dinode's extent index: the extent leaf whose first extent starts at file
/// block `logical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentIndex {
    pub logical: u64,
    pub leaf: u64,
}

/// What the content area of a dinode holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Extents of the file (or of a directory's hash table blocks), sorted by `logical`.
    Extents(Vec<Extent>),
    /// Extent leaf blocks, sorted by `logical`.
    Index(Vec<ExtentIndex>),
    /// Inline bytes (a symlink's target).
    Inline(Vec<u8>),
    /// A directory's hash table (2^depth leaf addresses), when depth <= [`INLINE_DIR_DEPTH`].
    DirHash(Vec<u64>),
}

/// An inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dinode {
    /// File type and permission bits, as in `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    /// Blocks allocated to this inode besides the dinode itself (data and metadata).
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u32,
    /// Bumped each time the block is reused for a new inode (NFS-style generation).
    pub generation: u64,
    /// For directories: the parent directory (the root is its own parent).
    pub parent: u64,
    pub flags: u32,
    /// Global depth of a directory's hash table.
    pub dir_depth: u8,
    /// Block holding this inode's extended attributes (0: none).
    pub xattr_block: u64,
    /// Entries in a directory (without `.` and `..`).
    pub dir_entries: u64,
    pub content: Content,
}

pub(crate) const S_IFMT: u32 = 0o170000;
pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFLNK: u32 = 0o120000;

impl Dinode {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }

    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::Dinode, blkno);
        let bb = &mut b[..];
        put_u32(bb, 24, self.mode);
        put_u32(bb, 28, self.uid);
        put_u32(bb, 32, self.gid);
        put_u32(bb, 36, self.nlink);
        put_u64(bb, 40, self.size);
        put_u64(bb, 48, self.blocks);
        put_i64(bb, 56, self.atime.sec);
        put_i64(bb, 64, self.mtime.sec);
        put_i64(bb, 72, self.ctime.sec);
        put_u32(bb, 80, self.atime.nsec);
        put_u32(bb, 84, self.mtime.nsec);
        put_u32(bb, 88, self.ctime.nsec);
        put_u32(bb, 92, self.rdev);
        put_u64(bb, 96, self.generation);
        put_u64(bb, 104, self.parent);
        put_u32(bb, 112, self.flags);
        bb[117] = self.dir_depth;
        put_u64(bb, 120, self.xattr_block);
        put_u64(bb, 128, self.dir_entries);
        let (kind, count) = match &self.content {
            Content::Extents(v) => {
                for (i, e) in v.iter().enumerate() {
                    e.put(bb, CONTENT_OFF + i * EXTENT_LEN);
                }
                (0u8, v.len())
            }
            Content::Index(v) => {
                for (i, e) in v.iter().enumerate() {
                    put_u64(bb, CONTENT_OFF + i * INDEX_LEN, e.logical);
                    put_u64(bb, CONTENT_OFF + i * INDEX_LEN + 8, e.leaf);
                }
                (1, v.len())
            }
            Content::Inline(v) => {
                bb[CONTENT_OFF..CONTENT_OFF + v.len()].copy_from_slice(v);
                (2, v.len())
            }
            Content::DirHash(v) => {
                for (i, p) in v.iter().enumerate() {
                    put_u64(bb, CONTENT_OFF + i * 8, *p);
                }
                (3, v.len())
            }
        };
        bb[116] = kind;
        put_u16(bb, 118, count as u16);
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::Dinode, blkno)?;
        let ts = |s: usize, n: usize| Timestamp { sec: get_i64(buf, s), nsec: get_u32(buf, n) };
        let kind = buf[116];
        let count = get_u16(buf, 118) as usize;
        let dir_depth = buf[117];
        let content = match kind {
            0 => {
                if count > INLINE_EXTENTS_MAX {
                    return Err(FormatError::invalid(blkno, "inline extent count"));
                }
                let v: Vec<Extent> = (0..count).map(|i| Extent::get(buf, CONTENT_OFF + i * EXTENT_LEN)).collect();
                check_extents(&v, blkno)?;
                Content::Extents(v)
            }
            1 => {
                if count == 0 || count > INLINE_INDEX_MAX {
                    return Err(FormatError::invalid(blkno, "extent index count"));
                }
                let v: Vec<ExtentIndex> = (0..count)
                    .map(|i| ExtentIndex {
                        logical: get_u64(buf, CONTENT_OFF + i * INDEX_LEN),
                        leaf: get_u64(buf, CONTENT_OFF + i * INDEX_LEN + 8),
                    })
                    .collect();
                if v.windows(2).any(|w| w[0].logical >= w[1].logical) || v.iter().any(|e| e.leaf == 0) {
                    return Err(FormatError::invalid(blkno, "extent index"));
                }
                Content::Index(v)
            }
            2 => {
                if count > DINODE_CONTENT {
                    return Err(FormatError::invalid(blkno, "inline data length"));
                }
                Content::Inline(buf[CONTENT_OFF..CONTENT_OFF + count].to_vec())
            }
            3 => {
                if dir_depth > INLINE_DIR_DEPTH || count != 1usize << dir_depth {
                    return Err(FormatError::invalid(blkno, "inline hash table size"));
                }
                let v: Vec<u64> = (0..count).map(|i| get_u64(buf, CONTENT_OFF + i * 8)).collect();
                if v.contains(&0) {
                    return Err(FormatError::invalid(blkno, "hash table pointer"));
                }
                Content::DirHash(v)
            }
            _ => return Err(FormatError::invalid(blkno, "content kind")),
        };
        if dir_depth > 32 {
            return Err(FormatError::invalid(blkno, "directory depth"));
        }
        Ok(Dinode {
            mode: get_u32(buf, 24),
            uid: get_u32(buf, 28),
            gid: get_u32(buf, 32),
            nlink: get_u32(buf, 36),
            size: get_u64(buf, 40),
            blocks: get_u64(buf, 48),
            atime: ts(56, 80),
            mtime: ts(64, 84),
            ctime: ts(72, 88),
            rdev: get_u32(buf, 92),
            generation: get_u64(buf, 96),
            parent: get_u64(buf, 104),
            flags: get_u32(buf, 112),
            dir_depth,
            xattr_block: get_u64(buf, 120),
            dir_entries: get_u64(buf, 128),
            content,
        })
    }
}

/// A block of extents, pointed to from a dinode's extent index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLeaf {
    /// The inode this leaf belongs to.
    pub owner: u64,
    pub extents: Vec<Extent>,
}

impl ExtentLeaf {
    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::ExtentLeaf, blkno);
        put_u64(&mut b[..], 24, self.owner);
        put_u16(&mut b[..], 32, self.extents.len() as u16);
        for (i, e) in self.extents.iter().enumerate() {
            e.put(&mut b[..], 40 + i * EXTENT_LEN);
        }
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::ExtentLeaf, blkno)?;
        let count = get_u16(buf, 32) as usize;
        if count == 0 || count > EXTENT_LEAF_MAX {
            return Err(FormatError::invalid(blkno, "extent leaf count"));
        }
        let extents: Vec<Extent> = (0..count).map(|i| Extent::get(buf, 40 + i * EXTENT_LEN)).collect();
        check_extents(&extents, blkno)?;
        Ok(ExtentLeaf { owner: get_u64(buf, 24), extents })
    }
}

/// One extended attribute (the name includes its namespace prefix, e.g. `user.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// A block of extended attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrBlock {
    pub owner: u64,
    pub attrs: Vec<Xattr>,
}

impl XattrBlock {
    /// Bytes `attrs` take in a block (must be <= [`XATTR_SPACE`]).
    pub fn space(attrs: &[Xattr]) -> usize {
        attrs.iter().map(|a| 3 + a.name.len() + a.value.len()).sum()
    }

    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::Xattr, blkno);
        put_u64(&mut b[..], 24, self.owner);
        put_u16(&mut b[..], 32, self.attrs.len() as u16);
        let mut off = 40;
        for a in &self.attrs {
            b[off] = a.name.len() as u8;
            put_u16(&mut b[..], off + 1, a.value.len() as u16);
            off += 3;
            b[off..off + a.name.len()].copy_from_slice(&a.name);
            off += a.name.len();
            b[off..off + a.value.len()].copy_from_slice(&a.value);
            off += a.value.len();
        }
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::Xattr, blkno)?;
        let count = get_u16(buf, 32) as usize;
        let mut attrs = Vec::new();
        let mut off = 40;
        for _ in 0..count {
            if off + 3 > BLOCK_SIZE {
                return Err(FormatError::invalid(blkno, "xattr entry past the block"));
            }
            let nl = buf[off] as usize;
            let vl = get_u16(buf, off + 1) as usize;
            off += 3;
            if nl == 0 || off + nl + vl > BLOCK_SIZE {
                return Err(FormatError::invalid(blkno, "xattr entry length"));
            }
            attrs.push(Xattr { name: buf[off..off + nl].to_vec(), value: buf[off + nl..off + nl + vl].to_vec() });
            off += nl + vl;
        }
        Ok(XattrBlock { owner: get_u64(buf, 24), attrs })
    }
}
