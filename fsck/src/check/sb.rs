//! Pass 0: the superblock. Read as found, or rebuilt from what mkfs left elsewhere when it
//! does not decode (the lock protocol, lock table and UUID are not stored anywhere else).

use gfs::format::*;

use super::img::Img;
use super::BS;
use crate::FsckError;

/// Reads the superblock, or rebuilds it (staged) if it does not decode: the superblock and,
/// when rebuilt, what was wrong and what was found (reported once the checker exists).
pub(super) fn read_superblock(img: &mut Img) -> Result<(Superblock, Option<String>), FsckError> {
    let mut sb_problem = None;
    let sb = match Superblock::decode(&img.read(SB_BLOCK)?[..]) {
        Ok(sb) => sb,
        Err(e) => match rebuild_superblock(img)? {
            Some(sb) => {
                img.stage(SB_BLOCK, sb.encode())?;
                sb_problem = Some(format!(
                    "superblock: {e}; found {} resource groups of {} blocks from {}, {} journals, root {}",
                    sb.rg_count, sb.rg_blocks, sb.rg_start, sb.journal_count, sb.root_dinode
                ));
                sb
            }
            None => return Err(FsckError::Superblock(e)),
        },
    };
    Ok((sb, sb_problem))
}

/// Finds the geometry mkfs wrote from what survives: the journal index and master statfs at
/// their fixed places, resource group headers (the first two give the start and the size),
/// the root directory at the first data block of group 0.
fn rebuild_superblock(img: &Img) -> Result<Option<Superblock>, FsckError> {
    let dev_blocks = img.dev.size() / BS;
    let jindex_block = SB_BLOCK + 1;
    let master_statfs = SB_BLOCK + 2;
    let rg_at = |b: u64| -> Result<Option<Rgrp>, FsckError> { Ok(Rgrp::decode(&img.read(b)?[..], b).ok()) };
    // Journal count: the journal index, else the statfs change blocks that follow the master.
    let journal_count = match JIndex::decode(&img.read(jindex_block)?[..], jindex_block) {
        Ok(j) => j.journals.len() as u64,
        Err(_) => {
            let mut n = 0;
            while n < JINDEX_MAX as u64
                && matches!(Statfs::decode(&img.read(master_statfs + 1 + n)?[..], master_statfs + 1 + n),
                    Ok(s) if s.slot == n as u32)
            {
                n += 1;
            }
            n
        }
    };
    if journal_count == 0 {
        return Ok(None);
    }
    // First resource group: the first group header with index 0 past the journals.
    let mut b = master_statfs + 1 + journal_count;
    let (rg_start, rg0) = loop {
        if b >= dev_blocks {
            return Ok(None);
        }
        match rg_at(b)? {
            Some(r) if r.index == 0 => break (b, r),
            _ => b += 1,
        }
    };
    // Size: where group 1 starts (or group 0's own length if it is the only one).
    let own_len = 1 + rg0.bitmap_blocks as u64 + rg0.data_count as u64;
    let mut rg_blocks = own_len;
    let mut b = rg_start + own_len;
    while b < dev_blocks && b < rg_start + 2 * own_len + 16 {
        if matches!(rg_at(b)?, Some(r) if r.index == 1) {
            rg_blocks = b - rg_start;
            break;
        }
        b += 1;
    }
    // Groups: as many as the device holds (mkfs's rule), the last one possibly shorter.
    let mut rg_count = 0u64;
    let mut end = rg_start;
    while end < dev_blocks {
        let len = (dev_blocks - end).min(rg_blocks);
        let known = rg_at(end)?;
        let len = match known {
            Some(r) if r.index as u64 == rg_count => 1 + r.bitmap_blocks as u64 + r.data_count as u64,
            _ if len < 16 && rg_count > 0 => break,
            _ => len,
        };
        if Rgrp::layout(rg_count as u32, end, len).is_none() {
            break;
        }
        rg_count += 1;
        end += len;
    }
    // mkfs puts the root at group 0's first data block (if it is gone, pass 3 makes a new one).
    let root = rg0.data0;
    let t = gfs::now();
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&(t.sec as u64).to_le_bytes());
    uuid[8..12].copy_from_slice(&t.nsec.to_le_bytes());
    uuid[12..].copy_from_slice(&std::process::id().to_le_bytes());
    Ok(Some(Superblock {
        block_size: BLOCK_SIZE as u32,
        block_count: end,
        uuid,
        lockproto: LockProto::Nolock,
        locktable: "fsck:rebuilt".into(),
        root_dinode: root,
        jindex_block,
        master_statfs,
        rg_start,
        rg_blocks: rg_blocks as u32,
        rg_count: rg_count as u32,
        journal_count: journal_count as u32,
    }))
}
