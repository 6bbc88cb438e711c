//! Resource groups: a header block, its bitmap blocks, then its data blocks.

use super::*;

/// Bitmap bytes in one bitmap block.
pub const BITMAP_BYTES: usize = BLOCK_SIZE - 32;
/// Data blocks one bitmap block describes (2 bits each).
pub const BITMAP_BLOCKS_PER_BLOCK: u32 = (BITMAP_BYTES * 4) as u32;

/// Allocation state of a data block (2 bits in a bitmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockState {
    Free = 0,
    /// File data.
    Data = 1,
    /// Metadata other than a dinode (extent leaves, directory blocks, xattr blocks).
    Meta = 2,
    /// A dinode.
    Dinode = 3,
}

impl BlockState {
    pub fn from_bits(v: u8) -> Self {
        match v & 3 {
            0 => Self::Free,
            1 => Self::Data,
            2 => Self::Meta,
            _ => Self::Dinode,
        }
    }
}

/// Resource group header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgrp {
    pub index: u32,
    /// Bitmap blocks following the header.
    pub bitmap_blocks: u32,
    /// First data block.
    pub data0: u64,
    /// Data blocks in this group.
    pub data_count: u32,
    /// Free data blocks.
    pub free: u32,
    /// Dinodes in this group.
    pub dinodes: u32,
}

impl Rgrp {
    /// Bitmap blocks needed for `data` data blocks.
    pub fn bitmaps_for(data: u64) -> u64 {
        data.div_ceil(BITMAP_BLOCKS_PER_BLOCK as u64)
    }

    /// Splits a group of `len` blocks at `start` into header, bitmaps and data.
    /// `None` if it is too small to hold one data block.
    pub fn layout(index: u32, start: u64, len: u64) -> Option<Rgrp> {
        // Largest data count d with 1 + bitmaps_for(d) + d <= len.
        let mut d = len.checked_sub(2)?;
        while d > 0 && 1 + Self::bitmaps_for(d) + d > len {
            d -= 1;
        }
        if d == 0 {
            return None;
        }
        let bitmap_blocks = Self::bitmaps_for(d);
        Some(Rgrp {
            index,
            bitmap_blocks: bitmap_blocks as u32,
            data0: start + 1 + bitmap_blocks,
            data_count: d as u32,
            free: d as u32,
            dinodes: 0,
        })
    }

    /// [`Rgrp::layout`] with at most `max_bitmaps` bitmap blocks: the shape `gfs_grow` gives
    /// the last group when it extends it in place (its bitmap blocks cannot grow in number
    /// without moving its data blocks, so a group grown past what they cover keeps the rest
    /// of its slot unused). Equal to `layout` when `max_bitmaps` is enough.
    pub fn layout_capped(index: u32, start: u64, len: u64, max_bitmaps: u32) -> Option<Rgrp> {
        let full = Self::layout(index, start, len)?;
        if full.bitmap_blocks <= max_bitmaps {
            return Some(full);
        }
        let bitmaps = max_bitmaps as u64;
        let d = (bitmaps * BITMAP_BLOCKS_PER_BLOCK as u64).min(len.checked_sub(1 + bitmaps)?);
        if d == 0 || Self::bitmaps_for(d) != bitmaps {
            return None;
        }
        Some(Rgrp {
            index,
            bitmap_blocks: max_bitmaps,
            data0: start + 1 + bitmaps,
            data_count: d as u32,
            free: d as u32,
            dinodes: 0,
        })
    }

    /// Whether this header's shape is one a group `index` of `len` blocks at `start` may
    /// have: mkfs's [`Rgrp::layout`], or [`Rgrp::layout_capped`] with its own bitmap count
    /// (a last group extended in place by `gfs_grow`).
    pub fn fits_slot(&self, index: u32, start: u64, len: u64) -> bool {
        let Some(want) = Self::layout_capped(index, start, len, self.bitmap_blocks) else { return false };
        self.index == want.index
            && self.bitmap_blocks == want.bitmap_blocks
            && self.data0 == want.data0
            && self.data_count == want.data_count
    }

    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::Rgrp, blkno);
        put_u32(&mut b[..], 24, self.index);
        put_u32(&mut b[..], 28, self.bitmap_blocks);
        put_u64(&mut b[..], 32, self.data0);
        put_u32(&mut b[..], 40, self.data_count);
        put_u32(&mut b[..], 44, self.free);
        put_u32(&mut b[..], 48, self.dinodes);
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::Rgrp, blkno)?;
        let r = Rgrp {
            index: get_u32(buf, 24),
            bitmap_blocks: get_u32(buf, 28),
            data0: get_u64(buf, 32),
            data_count: get_u32(buf, 40),
            free: get_u32(buf, 44),
            dinodes: get_u32(buf, 48),
        };
        if r.bitmap_blocks as u64 != Self::bitmaps_for(r.data_count as u64) {
            return Err(FormatError::invalid(blkno, "bitmap block count"));
        }
        if r.data0 != blkno + 1 + r.bitmap_blocks as u64 {
            return Err(FormatError::invalid(blkno, "first data block"));
        }
        if r.free > r.data_count || r.dinodes > r.data_count {
            return Err(FormatError::invalid(blkno, "free or dinode count"));
        }
        Ok(r)
    }
}

/// One bitmap block: 2 bits per data block, four blocks per byte, lowest bits first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    pub rg_index: u32,
    /// Which bitmap block of its group this is.
    pub index: u32,
    pub bits: Box<[u8; BITMAP_BYTES]>,
}

impl Bitmap {
    pub fn new(rg_index: u32, index: u32) -> Self {
        Bitmap { rg_index, index, bits: Box::new([0u8; BITMAP_BYTES]) }
    }

    pub fn get(&self, i: u32) -> BlockState {
        let i = i as usize;
        BlockState::from_bits(self.bits[i / 4] >> ((i % 4) * 2))
    }

    pub fn set(&mut self, i: u32, s: BlockState) {
        let i = i as usize;
        let shift = (i % 4) * 2;
        self.bits[i / 4] = (self.bits[i / 4] & !(3 << shift)) | ((s as u8) << shift);
    }

    /// First free entry at or after `from` and before `limit`.
    pub fn find_free(&self, from: u32, limit: u32) -> Option<u32> {
        let limit = limit.min(BITMAP_BLOCKS_PER_BLOCK);
        let mut i = from;
        while i < limit {
            if i.is_multiple_of(4) && i + 4 <= limit {
                let b = self.bits[i as usize / 4];
                // All four entries in use: every 2-bit pair is non-zero.
                if (b | b >> 1) & 0x55 == 0x55 {
                    i += 4;
                    continue;
                }
            }
            if self.get(i) == BlockState::Free {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    pub fn encode(&self, blkno: u64) -> Box<Block> {
        let mut b = new_block(BlockType::Bitmap, blkno);
        put_u32(&mut b[..], 24, self.rg_index);
        put_u32(&mut b[..], 28, self.index);
        b[32..].copy_from_slice(&self.bits[..]);
        Header::seal(&mut b);
        b
    }

    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self, FormatError> {
        Header::verify(buf, BlockType::Bitmap, blkno)?;
        let mut bits = Box::new([0u8; BITMAP_BYTES]);
        bits.copy_from_slice(&buf[32..]);
        Ok(Bitmap { rg_index: get_u32(buf, 24), index: get_u32(buf, 28), bits })
    }
}
