//! The image every pass reads and repairs: the device with staged block images on top, read
//! in chunks. Nothing reaches the device until [`Img::flush`].

use std::collections::BTreeMap;
use std::sync::Arc;

use gfs::format::*;
use gfs::Device;

use super::BS;
use crate::FsckError;

/// Blocks read at once (read-ahead: dinodes, leaves and bitmaps sit close together).
const CHUNK: u64 = 64;
/// Chunks kept (16 MiB).
const CHUNKS_KEPT: usize = 64;

/// The device with staged block images on top, read in chunks.
pub(super) struct Img {
    pub(super) dev: Arc<dyn Device>,
    pub(super) staged: BTreeMap<u64, Box<Block>>,
    /// Recently read chunks, oldest first.
    chunks: std::cell::RefCell<std::collections::VecDeque<(u64, Vec<u8>)>>,
    /// Blocks on the device.
    pub(super) blocks: u64,
}

impl Img {
    pub(super) fn new(dev: Arc<dyn Device>) -> Self {
        let blocks = dev.size() / BS;
        Img { dev, staged: BTreeMap::new(), chunks: Default::default(), blocks }
    }

    pub(super) fn read(&self, b: u64) -> Result<Box<Block>, FsckError> {
        self.with(b, |x| {
            let mut out = Box::new([0u8; BLOCK_SIZE]);
            out.copy_from_slice(x);
            out
        })
    }

    /// Runs `f` on block `b` without copying it.
    pub(super) fn with<R>(&self, b: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R, FsckError> {
        if let Some(x) = self.staged.get(&b) {
            return Ok(f(&x[..]));
        }
        if b >= self.blocks {
            let mut x = Box::new([0u8; BLOCK_SIZE]);
            self.dev.read_at(&mut x[..], b * BS)?;
            return Ok(f(&x[..]));
        }
        let c = b / CHUNK;
        let mut chunks = self.chunks.borrow_mut();
        if chunks.back().is_none_or(|(k, _)| *k != c) {
            if let Some(i) = chunks.iter().position(|(k, _)| *k == c) {
                let hit = chunks.remove(i).expect("found");
                chunks.push_back(hit);
            } else {
                let n = CHUNK.min(self.blocks - c * CHUNK);
                let mut buf = vec![0u8; (n * BS) as usize];
                self.dev.read_at(&mut buf, c * CHUNK * BS)?;
                if chunks.len() >= CHUNKS_KEPT {
                    chunks.pop_front();
                }
                chunks.push_back((c, buf));
            }
        }
        let (_, buf) = chunks.back().expect("just read");
        let off = ((b - c * CHUNK) * BS) as usize;
        Ok(f(&buf[off..off + BLOCK_SIZE]))
    }
    /// Stages `blk` for block `b` unless the block already holds exactly that.
    pub(super) fn stage(&mut self, b: u64, blk: Box<Block>) -> Result<(), FsckError> {
        if !self.with(b, |x| x == &blk[..])? {
            self.staged.insert(b, blk);
        }
        Ok(())
    }
    pub(super) fn flush(&mut self) -> Result<u64, FsckError> {
        let n = self.staged.len() as u64;
        self.chunks.borrow_mut().clear();
        for (b, x) in std::mem::take(&mut self.staged) {
            self.dev.write_at(&x[..], b * BS)?;
        }
        self.dev.sync()?;
        Ok(n)
    }
}
