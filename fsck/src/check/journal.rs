//! Pass 2: journals. A damaged journal index is rebuilt from mkfs's layout, a damaged journal
//! header is reset (empty, clean), committed transactions are found by the format's replay
//! rules and replayed into the image (in memory only with `-n`), and a journal left not clean
//! by a crash is marked clean. With `lock_dlm`, a journal not marked clean stops the check
//! unless `-f`. A replay that changed the layout (a crash during gfs_grow or gfs_jadd) makes
//! pass 1 run again on the replayed superblock.

use gfs::format::*;

use super::{Checker, BS, C_FREE, C_META};
use crate::FsckError;

impl Checker<'_> {
    /// The journal index the geometry implies (mkfs's layout).
    fn expected_jindex(&self) -> Option<JIndex> {
        let j = self.fixed_journals();
        let first = self.sb.master_statfs + 1 + j;
        let jblocks = self.sb.rg_start.checked_sub(first)? / j;
        if jblocks < 8 {
            return None;
        }
        Some(JIndex {
            journals: (0..j)
                .map(|s| JournalEntry {
                    start: first + s * jblocks,
                    blocks: jblocks as u32,
                    statfs_block: self.sb.master_statfs + 1 + s,
                })
                .collect(),
        })
    }

    /// Journals mkfs made (in the fixed area before the resource groups): the journal
    /// headers start right after their statfs change blocks, so the first journal header
    /// found after the master statfs block says how many there are.
    fn fixed_journals(&self) -> u64 {
        let m = self.sb.master_statfs;
        (1..=self.sb.journal_count as u64)
            .find(|&j| {
                let at = m + 1 + j;
                matches!(self.img.with(at, |b| JournalHeader::decode(b, at)), Ok(Ok(h)) if h.slot == 0)
            })
            .unwrap_or(self.sb.journal_count as u64)
    }

    /// Whether a journal index entry is somewhere a journal can be: in the area mkfs lays
    /// journals out in (after the journal index, before the resource groups), or, for one
    /// gfs_jadd added, its statfs change block and its journal inside resource groups' data.
    fn journal_in_place(&self, e: &JournalEntry, jindex: u64) -> bool {
        let end = e.start + e.blocks as u64;
        let fixed = |a: u64, n: u64| a > jindex && a + n <= self.sb.rg_start;
        let data = |a: u64, n: u64| a + n <= self.sb.block_count && (a..a + n).all(|b| self.is_data(b));
        (fixed(e.start, e.blocks as u64) && fixed(e.statfs_block, 1))
            || (data(e.start, e.blocks as u64) && data(e.statfs_block, 1) && !(e.start..end).contains(&e.statfs_block))
    }

    /// A replayed transaction may have changed the layout (a crash during gfs_grow or
    /// gfs_jadd): the checks go on with the superblock and journal index as replayed.
    pub(super) fn after_replay(&mut self) -> Result<(), FsckError> {
        if self.replayed == 0 {
            return Ok(());
        }
        let sb = match Superblock::decode(&self.img.read(SB_BLOCK)?[..]) {
            Ok(sb) if sb != self.sb => sb,
            _ => return Ok(()),
        };
        self.verbose(format!(
            "  the journal changed the layout: {} blocks, {} resource groups, {} journals",
            sb.block_count, sb.rg_count, sb.journal_count
        ));
        let dev_blocks = self.img.dev.size() / BS;
        if dev_blocks < sb.block_count {
            return Err(FsckError::Truncated { dev: dev_blocks, fs: sb.block_count });
        }
        self.img.blocks = dev_blocks;
        self.sb = sb;
        self.claims = vec![C_FREE; self.sb.block_count as usize];
        self.rgs.clear();
        // What pass 1 said about the old layout no longer matters: it runs again.
        self.problems.retain(|p| p.pass != 1 || p.what.starts_with("superblock"));
        self.pass = 1;
        self.pass1_rgrps()?;
        self.pass = 2;
        let at = self.sb.jindex_block;
        if let Ok(j) = JIndex::decode(&self.img.read(at)?[..], at) {
            if j.journals.len() == self.sb.journal_count as usize
                && j.journals.iter().all(|e| self.journal_in_place(e, at))
            {
                self.journals = j.journals;
            }
        }
        Ok(())
    }

    /// Claims the blocks of journals that live in resource groups (added by gfs_jadd), so
    /// the bitmaps keep them in use.
    pub(super) fn claim_journals(&mut self) -> Result<(), FsckError> {
        for (slot, e) in self.journals.clone().iter().enumerate() {
            if e.statfs_block < self.sb.rg_start {
                continue;
            }
            let blocks = std::iter::once(e.statfs_block).chain(e.start..e.start + e.blocks as u64);
            let mut taken = 0u64;
            for b in blocks {
                if !self.try_claim(b, C_META) {
                    taken += 1;
                }
            }
            if taken > 0 {
                self.problem(format!("journal {slot}: {taken} of its blocks are claimed twice"), "left alone", false);
            }
        }
        Ok(())
    }

    pub(super) fn pass2_journals(&mut self) -> Result<(), FsckError> {
        let at = self.sb.jindex_block;
        let expected = self.expected_jindex();
        let jindex = match JIndex::decode(&self.img.read(at)?[..], at) {
            Ok(j)
                if j.journals.len() == self.sb.journal_count as usize
                    && j.journals.iter().all(|e| self.journal_in_place(e, at)) =>
            {
                j
            }
            found => {
                let what = match found {
                    Err(e) => format!("journal index: {e}"),
                    Ok(_) => "journal index does not match the superblock".to_string(),
                };
                let Some(j) = expected else {
                    self.problem(what, "cannot rebuild: journals left alone", false);
                    return Ok(());
                };
                if j.journals.len() < self.sb.journal_count as usize {
                    // Journals gfs_jadd placed in resource groups cannot be found again.
                    let n = j.journals.len() as u32;
                    self.problem(
                        format!("{what}; journals {n} and up (added by gfs_jadd) are lost"),
                        "rebuilt from the geometry with the journals mkfs made (add the others again with gfs_jadd)",
                        false,
                    );
                    self.sb.journal_count = n;
                    self.img.stage(SB_BLOCK, self.sb.encode())?;
                } else {
                    self.problem(what, "rebuilt from the geometry", false);
                }
                self.img.stage(at, j.encode(at))?;
                j
            }
        };
        self.journals = jindex.journals.clone();
        for (slot, e) in jindex.journals.iter().enumerate() {
            let h = match JournalHeader::decode(&self.img.read(e.start)?[..], e.start) {
                Ok(h) if h.slot == slot as u32 => h,
                found => {
                    let what = match found {
                        Err(err) => format!("journal {slot} header: {err}"),
                        Ok(h) => format!("journal {slot} header names slot {}", h.slot),
                    };
                    self.problem(what, "journal reset (empty)", false);
                    let seq = gfs::now().sec as u64 * 1_000_000;
                    let h = JournalHeader { slot: slot as u32, sequence: seq, clean: true };
                    self.img.stage(e.start, h.encode(e.start))?;
                    self.img.staged.insert(e.start + 1, Box::new([0u8; BLOCK_SIZE]));
                    continue;
                }
            };
            if !h.clean && self.sb.lockproto == LockProto::Dlm && !self.opts.force {
                return Err(FsckError::Mounted(format!(
                    "journal {slot} is not marked clean: the filesystem may be mounted on another node (use -f once \
                     every node is down)"
                )));
            }
            let (txs, copies, next_seq) = self.scan_journal(e, h.sequence)?;
            if txs == 0 {
                if !h.clean {
                    self.problem(format!("journal {slot} was not unmounted cleanly"), "marked clean", true);
                    let h = JournalHeader { clean: true, ..h };
                    self.img.stage(e.start, h.encode(e.start))?;
                } else {
                    self.verbose(format!("  journal {slot}: clean"));
                }
                continue;
            }
            self.problem(
                format!("journal {slot} is dirty: {txs} committed transactions ({} blocks) not replayed", copies.len()),
                "replayed",
                true,
            );
            for (home, blk) in copies {
                self.img.staged.insert(home, blk);
            }
            let h = JournalHeader { slot: slot as u32, sequence: next_seq, clean: true };
            self.img.stage(e.start, h.encode(e.start))?;
            self.replayed += txs;
        }
        Ok(())
    }

    /// Reads the committed transactions of a journal by the format's replay rules (gfs's
    /// own [`scan_journal`]): (transactions, block copies in order, sequence after the last).
    #[allow(clippy::type_complexity)]
    fn scan_journal(&self, j: &JournalEntry, seq0: u64) -> Result<(u64, Vec<(u64, Box<Block>)>, u64), FsckError> {
        let scan = scan_journal(j, seq0, self.sb.block_count, |b| self.img.read(b))?;
        let count = scan.transactions.len() as u64;
        let copies = scan.transactions.into_iter().flat_map(|t| t.copies).collect();
        Ok((count, copies, scan.next_sequence))
    }
}
