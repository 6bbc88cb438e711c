//! The write-ahead journal: commit, checkpoint, replay (format in docs/format.md).

use super::*;

/// Largest single write of a checkpoint (bytes).
const CHECKPOINT_RUN: usize = 1 << 20;

impl Fs {
    fn jblock(&self, pos: u64) -> u64 {
        self.journal.start + pos
    }

    /// Writes the running transaction to the journal and flushes: after this returns, every
    /// change made so far survives a crash.
    pub fn commit(&mut self) -> Result<()> {
        self.statfs_change_block()?;
        self.encode_dinodes();
        if self.dirty.is_empty() {
            if self.data_unsynced {
                self.dev.sync()?;
                self.data_unsynced = false;
            }
            return Ok(());
        }
        let homes: Vec<u64> = self.dirty.iter().copied().collect();
        let ndesc = homes.len().div_ceil(LOG_DESCRIPTOR_MAX) as u64;
        let need = ndesc + homes.len() as u64 + 1;
        if need >= self.journal.blocks as u64 {
            return Err(FsError::Journal(format!(
                "transaction of {need} blocks does not fit the {}-block journal",
                self.journal.blocks
            )));
        }
        if self.jhead + need > self.journal.blocks as u64 {
            self.checkpoint()?;
        }
        // Data first: blocks a transaction makes reachable must hold their data.
        if self.data_unsynced {
            self.dev.sync()?;
            self.data_unsynced = false;
        }
        let seq = self.jseq;
        // One buffer kept across commits (a fresh megabyte per commit costs page faults).
        let mut buf = std::mem::take(&mut self.jbuf);
        buf.clear();
        buf.reserve(need as usize * BLOCK_SIZE);
        let mut pos = self.jhead;
        for (i, chunk) in homes.chunks(LOG_DESCRIPTOR_MAX).enumerate() {
            let desc = LogDescriptor { sequence: seq, more: (i as u64) + 1 < ndesc, homes: chunk.to_vec() };
            buf.extend_from_slice(&desc.encode(self.jblock(pos))[..]);
            pos += 1;
            for h in chunk {
                buf.extend_from_slice(&self.cache.get(h).expect("dirty blocks are cached")[..]);
                pos += 1;
            }
        }
        let crc = crc32c::crc32c(&buf);
        let commit = LogCommit { sequence: seq, blocks: (need - 1) as u32, crc };
        buf.extend_from_slice(&commit.encode(self.jblock(pos))[..]);
        let written = self.dev.write_at(&buf, self.jblock(self.jhead) * bs());
        self.jbuf = buf;
        written?;
        self.dev.sync()?;
        // The images move to `committed` (read_meta finds them there until they are home).
        // The superblock stays cached too: fresh_meta (grow.rs) re-reads it from home when
        // it is not cached.
        for h in homes {
            let img = if h == SB_BLOCK {
                self.cache.get(&h).expect("dirty blocks are cached").clone()
            } else {
                self.cache.remove(&h).expect("dirty blocks are cached")
            };
            self.committed.insert(h, img);
        }
        self.dirty.clear();
        self.jhead += need;
        self.jseq += 1;
        if self.cache.len() > self.cache_limit {
            // Everything cached is clean now (home, or kept in `committed` until it is).
            self.drop_caches();
        }
        Ok(())
    }

    /// Writes every committed block home, flushes, and empties the journal.
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.committed.is_empty() && self.jtail_seq == self.jseq && !self.unmounting {
            self.pinned.clear();
            return Ok(());
        }
        // Runs of consecutive blocks go home in one write each (new dinodes and the leaves
        // and bitmaps near them are mostly allocated in order).
        let mut run = std::mem::take(&mut self.jbuf);
        run.clear();
        let mut run_start = 0;
        for (&h, img) in &self.committed {
            let contiguous = !run.is_empty() && h == run_start + (run.len() / BLOCK_SIZE) as u64;
            if !run.is_empty() && (!contiguous || run.len() >= CHECKPOINT_RUN) {
                self.dev.write_at(&run, run_start * bs())?;
                run.clear();
            }
            if run.is_empty() {
                run_start = h;
            }
            run.extend_from_slice(&img[..]);
        }
        if !run.is_empty() {
            self.dev.write_at(&run, run_start * bs())?;
        }
        self.jbuf = run;
        self.dev.sync()?;
        let start = self.journal.start;
        let h = JournalHeader { slot: self.slot, sequence: self.jseq, clean: self.unmounting };
        self.dev.write_at(&h.encode(start)[..], start * bs())?;
        self.dev.sync()?;
        self.committed.clear();
        self.pinned.clear();
        self.jtail_seq = self.jseq;
        self.jhead = 1;
        Ok(())
    }

    /// Replays committed transactions; returns how many, and whether the journal was left
    /// clean by an unmount. Leaves the header marked not clean (mounted).
    pub(super) fn replay(&mut self) -> Result<(u64, bool)> {
        let (count, clean, seq) = self.replay_journal(self.journal, self.slot, false)?;
        self.jseq = seq;
        self.jtail_seq = seq;
        self.jhead = 1;
        Ok((count, clean))
    }

    /// Replays journal `j` (of `slot`); leaves its header at the next sequence, marked
    /// `mark_clean`. Returns (transactions, whether it was clean, next sequence).
    pub(super) fn replay_journal(&mut self, j: JournalEntry, slot: u32, mark_clean: bool) -> Result<(u64, bool, u64)> {
        let start = j.start;
        let mut raw = Box::new([0u8; BLOCK_SIZE]);
        self.dev.read_at(&mut raw[..], start * bs())?;
        let header = JournalHeader::decode(&raw[..], start)?;
        let dev = self.dev.clone();
        let scan = scan_journal(&j, header.sequence, self.sb.block_count, |b| {
            let mut c = Box::new([0u8; BLOCK_SIZE]);
            dev.read_at(&mut c[..], b * bs()).map(|()| c)
        })?;
        for t in &scan.transactions {
            for (home, c) in &t.copies {
                self.dev.write_at(&c[..], home * bs())?;
            }
            tracing::info!(sequence = t.sequence, blocks = t.copies.len(), "replayed transaction");
        }
        let (count, seq) = (scan.transactions.len() as u64, scan.next_sequence);
        self.dev.sync()?;
        self.dev.write_at(&JournalHeader { slot, sequence: seq, clean: mark_clean }.encode(start)[..], start * bs())?;
        self.dev.sync()?;
        Ok((count, header.clean, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mkfs::{mkfs, MkfsOptions};

    /// A filesystem in a temporary file, removed on drop.
    struct TempImage(std::path::PathBuf);

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn image(name: &str) -> (TempImage, Arc<dyn Device>) {
        let p = std::env::temp_dir().join(format!("gfs-journal-{name}-{}.img", std::process::id()));
        std::fs::File::create(&p).unwrap().set_len(32 << 20).unwrap();
        let t = TempImage(p.clone());
        let dev: Arc<dyn Device> = Arc::new(crate::device::FileDevice::open(&p).unwrap());
        let o = MkfsOptions {
            lockproto: LockProto::Nolock,
            locktable: "t:fs".into(),
            journals: 1,
            journal_blocks: Some(64),
            rg_blocks: Some(1024),
            overwrite: false,
        };
        mkfs(&*dev, &o).unwrap();
        (t, dev)
    }

    /// Dinodes changed many times between commits (kept decoded, encoded at commit) reach
    /// the journal in their last version; a tiny journal forces checkpoints, which write
    /// runs of blocks home; a crash after the last sync loses nothing synced.
    #[test]
    fn last_versions_survive_checkpoints_and_a_crash() {
        let (_t, dev) = image("versions");
        let mut fs = Fs::mount(dev.clone(), 0).unwrap();
        let root = fs.root();
        let d = fs.mkdir(root, b"d", 0o755, 0, 0).unwrap().ino;
        let mut inos = Vec::new();
        for i in 0..300u32 {
            let a = fs.mknod(d, format!("f{i}").as_bytes(), libc::S_IFREG | 0o600, 0, 0, 0).unwrap();
            // Several changes to one dinode in one transaction: only the last one counts.
            for m in [0o601, 0o602, 0o600 | (i & 0o77)] {
                fs.setattr(a.ino, &SetAttr { mode: Some(m), ..Default::default() }).unwrap();
            }
            inos.push(a.ino);
            if fs.dirty_blocks() >= 24 {
                fs.commit().unwrap();
            }
        }
        for i in (0..300).step_by(3) {
            fs.unlink(d, format!("f{i}").as_bytes()).unwrap();
        }
        // The checker reads raw blocks: it must see the unencoded dinodes' new versions.
        let r = fs.check().unwrap();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        fs.sync().unwrap();
        drop(fs); // crash: the journal holds what is not home yet
        let mut fs = Fs::mount(dev, 0).unwrap();
        let r = fs.check().unwrap();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        for (i, &ino) in inos.iter().enumerate() {
            let name = format!("f{i}");
            if i % 3 == 0 {
                assert!(matches!(fs.lookup(d, name.as_bytes()), Err(FsError::NotFound)));
            } else {
                let a = fs.lookup(d, name.as_bytes()).unwrap();
                assert_eq!(a.ino, ino);
                assert_eq!(a.mode, libc::S_IFREG | 0o600 | (i as u32 & 0o77));
            }
        }
        assert_eq!(fs.getattr(d).unwrap().nlink, 2);
        assert_eq!(fs.readdir(d, 0, 1000).unwrap().len(), 200);
    }
}
