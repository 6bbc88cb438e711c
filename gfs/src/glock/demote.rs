//! Letting glocks go: each glock's DLM lock is owned by a task that runs the conversions
//! local operations ask for and, when another node asks for the glock, demotes it (after the
//! hold time and the local holders: write back, forget, convert down); idle glocks beyond the
//! limit go back to the DLM.

use super::*;

impl Inner {
    /// Called by a glock's task when another node wants `wanted`: wait for local holders
    /// and the minimum hold, write back and invalidate; says what to convert to.
    pub(super) fn prepare_demote(&self, key: LockKey, granted: Mode, wanted: Mode) -> Demote {
        tracing::debug!(?key, %granted, %wanted, "blocking callback");
        let mut t = self.table.lock().expect("glock table");
        let Some(e) = t.get(&key) else { return Demote::NotNeeded };
        // A local conversion is in flight (this task runs it): decide once it is done.
        if e.busy {
            return Demote::Later;
        }
        if granted == Mode::Nl || (granted == Mode::Pr && wanted == Mode::Pr) {
            return Demote::NotNeeded;
        }
        let target = if granted == Mode::Ex && wanted == Mode::Pr { Mode::Pr } else { Mode::Nl };
        // Keep it for its hold time (local work goes on meanwhile), then drain local holders.
        let until = {
            let Some(e) = t.get_mut(&key) else { return Demote::NotNeeded };
            let since = e.granted_at.elapsed();
            e.hold = if since < e.hold * 2 {
                (e.hold * 2).min(MAX_HOLD)
            } else if since > Duration::from_secs(1) {
                MIN_HOLD
            } else {
                e.hold
            };
            e.asked = true;
            e.granted_at + e.hold
        };
        drop(t);
        let left = until.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
        t = self.table.lock().expect("glock table");
        if let Some(e) = t.get_mut(&key) {
            e.demote = true;
        }
        loop {
            let Some(e) = t.get(&key) else { return Demote::NotNeeded };
            if e.sh == 0 && !e.ex && !e.busy {
                break;
            }
            t = self.cond.wait(t).expect("glock table");
        }
        if let Some(e) = t.get_mut(&key) {
            e.busy = true;
        }
        drop(t);
        if let Some(h) = self.hooks() {
            if granted == Mode::Ex {
                h.write_back();
            }
            if target == Mode::Nl {
                h.invalidate(key);
            }
        }
        Demote::To(target)
    }

    pub(super) fn finish_demote(&self, key: LockKey, mode: Option<Mode>) {
        let mut t = self.table.lock().expect("glock table");
        if let Some(e) = t.get_mut(&key) {
            if let Some(m) = mode {
                e.mode = m;
            }
            e.busy = false;
            e.demote = false;
            e.asked = false;
        }
        drop(t);
        self.cond.notify_all();
    }

    /// The task that owns one glock's DLM lock: runs conversions asked by operations and
    /// demotions asked by other nodes.
    pub(super) async fn glock_task(self: Arc<Self>, key: LockKey, mut rx: mpsc::UnboundedReceiver<TaskCmd>) {
        let mut lock: Option<Lock> = None;
        // A blocking callback not acted on yet (a local conversion was in flight).
        let mut pending: Option<Mode> = None;
        enum Ev {
            Cmd(Option<TaskCmd>),
            Blocked(Option<Mode>),
        }
        loop {
            let ev = match (lock.as_mut(), pending) {
                (_, Some(m)) => tokio::select! {
                    c = rx.recv() => Ev::Cmd(c),
                    _ = tokio::time::sleep(Duration::from_millis(2)) => Ev::Blocked(Some(m)),
                },
                (Some(l), None) => tokio::select! {
                    c = rx.recv() => Ev::Cmd(c),
                    m = l.blocked() => Ev::Blocked(m),
                },
                (None, None) => Ev::Cmd(rx.recv().await),
            };
            match ev {
                Ev::Cmd(None) => break,
                Ev::Cmd(Some(TaskCmd::Lock(mode, flags, reply))) => {
                    let r = match lock.as_mut() {
                        Some(l) => l.convert(mode, flags, None).await.map(|c| c.sbflags),
                        None => match self.client.lock(self.ls, &key.resource_name(), mode, flags, None).await {
                            Ok(l) => {
                                let f = l.sbflags();
                                lock = Some(l);
                                Ok(f)
                            }
                            Err(e) => Err(e),
                        },
                    };
                    let _ = reply.send(r);
                }
                Ev::Cmd(Some(TaskCmd::Unlock(reply))) => {
                    if let Some(l) = lock.take() {
                        let lvb = (l.mode() == Some(Mode::Ex)).then_some(&LVB[..]);
                        let _ = l.unlock(Flags::VALBLK, lvb).await;
                    }
                    let _ = reply.send(());
                    return;
                }
                Ev::Blocked(None) => {
                    tracing::error!(?key, "lost the connection to dlm_controld");
                    self.finish_demote(key, Some(Mode::Nl));
                    return;
                }
                Ev::Blocked(Some(wanted)) => {
                    let me = self.clone();
                    let granted = lock.as_ref().and_then(|l| l.mode()).unwrap_or(Mode::Nl);
                    // A plain thread, not spawn_blocking: the write-back does device I/O, and a
                    // gnbd device cannot block_on from inside this runtime.
                    let (dtx, drx) = tokio::sync::oneshot::channel();
                    let spawned = std::thread::Builder::new().name("gfs-demote".into()).spawn(move || {
                        let _ = dtx.send(me.prepare_demote(key, granted, wanted));
                    });
                    let d = match spawned {
                        Ok(_) => drx.await.map_err(|_| ()),
                        Err(_) => Err(()),
                    };
                    pending = None;
                    let target = match d {
                        Ok(Demote::To(t)) => t,
                        Ok(Demote::NotNeeded) => continue,
                        Ok(Demote::Later) => {
                            pending = Some(wanted);
                            continue;
                        }
                        Err(_) => {
                            self.finish_demote(key, None);
                            continue;
                        }
                    };
                    let Some(l) = lock.as_mut() else { continue };
                    let lvb = (l.mode() == Some(Mode::Ex)).then_some(&LVB[..]);
                    match l.convert(target, Flags::VALBLK, lvb).await {
                        Ok(_) => self.finish_demote(key, Some(target)),
                        Err(e) => {
                            tracing::error!(?key, error = %e, "cannot demote a glock");
                            self.finish_demote(key, None);
                        }
                    }
                }
            }
        }
        if let Some(l) = lock.take() {
            let _ = l.unlock(Flags::empty(), None).await;
        }
    }

    /// Gives idle glocks back to the DLM while this node has more than `above`: NL ones
    /// first, then PR ones unused for `idle` (what they cover is forgotten first), oldest
    /// first, down to half of `above`. Returns how many went.
    pub(super) fn reclaim(&self, above: usize, idle: Duration) -> usize {
        let victims: Vec<(LockKey, Mode, mpsc::UnboundedSender<TaskCmd>)> = {
            let mut t = self.table.lock().expect("glock table");
            if t.len() <= above {
                return 0;
            }
            let mut c: Vec<(bool, Instant, LockKey)> = t
                .iter()
                .filter(|(_, e)| e.sh == 0 && !e.ex && !e.busy && !e.demote && !e.asked && e.task.is_some())
                .filter(|(_, e)| e.mode == Mode::Nl || (e.mode == Mode::Pr && e.granted_at.elapsed() >= idle))
                .map(|(k, e)| (e.mode != Mode::Nl, e.granted_at, *k))
                .collect();
            c.sort();
            c.truncate(t.len() - above / 2);
            c.into_iter()
                .filter_map(|(_, _, k)| {
                    let e = t.get_mut(&k)?;
                    e.busy = true;
                    Some((k, e.mode, e.task.clone()?))
                })
                .collect()
        };
        let n = victims.len();
        for (key, mode, tx) in victims {
            if mode != Mode::Nl {
                if let Some(h) = self.hooks() {
                    h.invalidate(key);
                }
            }
            let (rtx, rrx) = std_mpsc::channel();
            if tx.send(TaskCmd::Unlock(rtx)).is_ok() {
                let _ = rrx.recv_timeout(Duration::from_secs(10));
            }
            self.table.lock().expect("glock table").remove(&key);
            self.cond.notify_all();
        }
        if n > 0 {
            tracing::debug!(glocks = n, "idle glocks given back to the DLM");
        }
        n
    }
}
