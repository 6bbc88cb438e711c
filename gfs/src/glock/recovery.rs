//! Journals and recovery: the recovery pass (under the cluster-wide `recovery` lock, replay
//! the journals whose locks nobody holds) and this node's own replay at mount.

use super::*;

impl Inner {
    /// One recovery pass: under the cluster's `recovery` lock, replay the journals whose
    /// locks nobody holds (nodes that are gone), unless already replayed since.
    pub(super) fn recover_pass(&self, force: bool) -> Result<(), GlockError> {
        let mut clean = self.recovering.lock().expect("recovery mutex");
        let journals = self.hooks().map(|h| h.journals()).unwrap_or(0).max(self.journals);
        let (rec, locks, free) = self.rt.block_on(async {
            let rec = self.client.lock(self.ls, b"recovery", Mode::Ex, Flags::empty(), None).await?;
            let mut free = Vec::new();
            let mut locks = Vec::new();
            for s in (0..journals).filter(|&s| s != self.slot) {
                match self.client.lock(self.ls, &journal_name(s), Mode::Ex, Flags::NOQUEUE, None).await {
                    Ok(l) => {
                        if force || !clean.contains(&s) {
                            free.push(s);
                        }
                        locks.push(l);
                    }
                    Err(_) => {
                        clean.remove(&s);
                    }
                }
            }
            Ok::<_, GlockError>((rec, locks, free))
        })?;
        // Outside the runtime: the replay does device I/O (a gnbd device blocks on its own).
        if !free.is_empty() {
            if let Some(h) = self.hooks() {
                h.recover(&free);
                clean.extend(free.iter().copied());
            }
        }
        self.rt.block_on(async {
            for l in locks {
                let _ = l.unlock(Flags::empty(), None).await;
            }
            rec.unlock(Flags::empty(), None).await
        })?;
        Ok(())
    }
}

impl Glocks {
    /// Runs `f` (this node's own journal replay at mount) under the cluster's recovery lock.
    pub fn with_recovery_lock<T>(&self, f: impl FnOnce() -> T) -> Result<T, GlockError> {
        let i = &self.inner;
        let rec = i.rt.block_on(i.client.lock(i.ls, b"recovery", Mode::Ex, Flags::empty(), None))?;
        let r = f();
        i.rt.block_on(rec.unlock(Flags::empty(), None))?;
        Ok(r)
    }
}
