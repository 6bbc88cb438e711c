//! The metadata cache: blocks read from the device (or the journal's newer image of a block
//! committed but not yet home), new versions put in the running transaction, and decoded
//! dinodes kept beside their blocks.

use super::*;

impl Fs {
    /// Reads metadata block `blkno` into the cache (checksum verified by the caller's decode).
    pub(super) fn read_meta(&mut self, blkno: u64) -> Result<&Block> {
        if self.unencoded.contains(&blkno) {
            self.encode_dinode(blkno);
        }
        if !self.cache.contains_key(&blkno) {
            if blkno >= self.sb.block_count {
                return Err(FsError::Corrupt(FormatError::invalid(blkno, "address past the end")));
            }
            // A block committed but not yet home is newer in the journal's image.
            let b = match self.committed.get(&blkno) {
                Some(img) => img.clone(),
                None => {
                    let mut b = Box::new([0u8; BLOCK_SIZE]);
                    self.dev.read_at(&mut b[..], blkno * bs())?;
                    Header::verify_any(&b[..], blkno)?;
                    b
                }
            };
            if self.held.is_some() {
                if let Some(k) = self.owner_of(blkno, &b) {
                    self.owned.entry(k).or_default().insert(blkno);
                }
            }
            self.cache.insert(blkno, b);
        }
        Ok(self.cache.get(&blkno).expect("just inserted"))
    }

    /// Puts a new version of metadata block `blkno` in the running transaction.
    pub(super) fn write_meta(&mut self, blkno: u64, b: Box<Block>) {
        self.note_write(blkno, &b);
        self.cache.insert(blkno, b);
        self.dirty.insert(blkno);
        self.unencoded.remove(&blkno);
        self.dinodes.remove(&blkno);
        self.leaves.remove(&blkno);
    }

    /// Brings the cached image of an unencoded dinode up to date.
    pub(super) fn encode_dinode(&mut self, ino: u64) {
        if self.unencoded.remove(&ino) {
            let b = self.dinodes.get(&ino).expect("unencoded dinodes stay decoded").encode(ino);
            self.cache.insert(ino, b);
        }
    }

    /// Encodes every unencoded dinode (before a commit reads the dirty blocks' images).
    pub(super) fn encode_dinodes(&mut self) {
        let pending: Vec<u64> = self.unencoded.iter().copied().collect();
        for ino in pending {
            self.encode_dinode(ino);
        }
    }

    /// Empties the caches (only clean blocks may be dropped: callers check `dirty`).
    pub(super) fn drop_caches(&mut self) {
        self.cache.clear();
        self.dinodes.clear();
        self.leaves.clear();
        self.owned.clear();
    }

    pub(super) fn dinode(&mut self, ino: u64) -> Result<Dinode> {
        if let Some(d) = self.dinodes.get(&ino) {
            return Ok(d.clone());
        }
        let b = self.read_meta(ino)?;
        let d = Dinode::decode(&b[..], ino)?;
        self.dinodes.insert(ino, d.clone());
        Ok(d)
    }

    pub(super) fn put_dinode(&mut self, ino: u64, d: &Dinode) {
        if self.held.is_some() {
            // lock_dlm: the lock checks look at the block's new image.
            self.write_meta(ino, d.encode(ino));
        } else {
            self.dirty.insert(ino);
            self.unencoded.insert(ino);
            self.leaves.remove(&ino);
        }
        self.dinodes.insert(ino, d.clone());
    }
}
