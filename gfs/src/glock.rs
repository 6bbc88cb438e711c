//! lock_dlm: glocks through the cluster's DLM (`dlm_controld` and its client library).
//!
//! One glock per inode, per resource group, one for the master statfs block and one that
//! serializes directory moves ([`LockKey`]); each is a DLM lock in the filesystem's lockspace.
//! A node takes a glock in PR to read and cache what it covers, in EX to change it, and keeps
//! it (in the DLM) after the operation until another node asks for it: then, after a minimum
//! hold time, it waits for its local holders, writes everything back home (commit and
//! checkpoint), forgets what the glock covers (when going to NL) and converts down (EX to PR
//! when the other node only reads). Operations take their glocks in [`LockKey`] order, so
//! nodes never wait on each other in a cycle.
//!
//! Journals and recovery: each node holds its journal's lock (`journal-N`, EX) while mounted.
//! Every glock is requested with a value block; the DLM marks a value block not valid when a
//! node dies holding the lock in EX (after it is fenced). A node granted a glock that way,
//! and every node every two seconds, runs a recovery pass under the cluster-wide `recovery`
//! lock: it tries every other journal's lock with NOQUEUE, and replays the journals it can
//! take. A node's journal only ever holds changes covered by glocks it holds in EX (every
//! demotion writes everything home), so nobody reads those blocks before the replay.

use crate::fs::LockKey;
use dlm::{DlmClient, Flags, Lock, Mode, SbFlags};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;

/// The shortest time a node keeps a glock once granted (avoids ping-pong). A glock asked
/// for again soon after it was granted keeps doubling its hold, up to [`MAX_HOLD`], so nodes
/// taking turns on a busy directory each get a useful batch of work done per turn.
const MIN_HOLD: Duration = Duration::from_millis(20);
const MAX_HOLD: Duration = Duration::from_millis(320);
/// How long a mount waits for its journal slot's lock.
const JOURNAL_WAIT: Duration = Duration::from_secs(20);
/// How often every node looks for journals of nodes that are gone (and reclaims glocks).
const RECOVERY_INTERVAL: Duration = Duration::from_secs(2);
/// Glocks a node keeps before it gives idle ones back to the DLM (NL ones, and PR ones
/// unused for [`RECLAIM_IDLE`]), down to half this number.
const RECLAIM_ABOVE: usize = 8192;
const RECLAIM_IDLE: Duration = Duration::from_secs(10);
/// Written into a glock's value block when it leaves EX (a valid value block means "the last
/// EX holder let go properly"). The lockspace's value blocks are the default 32 bytes.
const LVB: [u8; 32] = *b"gfs: last EX holder let go\0\0\0\0\0\0";

/// Why a glock operation failed.
#[derive(Debug, Error)]
pub enum GlockError {
    #[error("dlm: {0}")]
    Dlm(#[from] dlm::ClientError),
    #[error("journal slot {0} is in use by another node (pick another with -o journal=N)")]
    SlotBusy(u32),
    #[error("the glock service is gone")]
    Gone,
}

/// How an operation holds a glock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Want {
    /// Read and cache (DLM PR; shared with other nodes and local operations).
    Sh,
    /// Change (DLM EX; one local operation at a time).
    Ex,
}

/// What the filesystem does for the glocks (implemented by the FUSE front end).
pub trait GlockHooks: Send + Sync {
    /// Before a glock leaves EX: everything changed so far goes home.
    fn write_back(&self);
    /// A glock went to NL (or was re-taken): forget what it covers.
    fn invalidate(&self, key: LockKey);
    /// Replay the journals of `slots` (nodes that are gone).
    fn recover(&self, slots: &[u32]);
    /// How many journals the filesystem has now (gfs_jadd adds some).
    fn journals(&self) -> u32;
}

#[derive(Debug)]
struct Entry {
    /// Mode granted by the DLM (NL: nothing usable).
    mode: Mode,
    /// Local holders.
    sh: u32,
    ex: bool,
    /// A DLM operation is in flight.
    busy: bool,
    /// Another node asked for it: no new local holders until it is demoted.
    demote: bool,
    /// Another node asked for it and the hold time is not over: local holders may still
    /// come and go, but no new DLM conversion starts.
    asked: bool,
    granted_at: Instant,
    /// How long to keep it once granted (adapts between MIN_HOLD and MAX_HOLD).
    hold: Duration,
    task: Option<mpsc::UnboundedSender<TaskCmd>>,
}

/// What a blocking callback leads to.
enum Demote {
    /// Nothing: the mode held does not block the other node.
    NotNeeded,
    /// A local conversion is in flight; look again once it is done.
    Later,
    /// Written back and invalidated: convert to this mode.
    To(Mode),
}

enum TaskCmd {
    Lock(Mode, Flags, std_mpsc::Sender<Result<SbFlags, dlm::ClientError>>),
    Unlock(std_mpsc::Sender<()>),
}

struct Inner {
    rt: tokio::runtime::Runtime,
    client: DlmClient,
    ls: u32,
    slot: u32,
    journals: u32,
    table: Mutex<HashMap<LockKey, Entry>>,
    cond: Condvar,
    hooks: OnceLock<Box<dyn GlockHooks>>,
    stop: AtomicBool,
    /// One recovery pass at a time on this node.
    recovering: Mutex<HashSet<u32>>,
    journal_lock: Mutex<Option<Lock>>,
    /// Glocks kept before idle ones go back to the DLM.
    reclaim_above: std::sync::atomic::AtomicUsize,
}

/// This node's glocks.
pub struct Glocks {
    inner: Arc<Inner>,
    recovery_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    plock_waits: Mutex<Vec<PlockWait>>,
    /// iopen locks: PR on `iopen-<ino>` while this node has the inode open (open count).
    iopens: Mutex<HashMap<u64, (u32, Lock)>>,
}

impl std::fmt::Debug for Glocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Glocks").field("slot", &self.inner.slot).finish()
    }
}

fn iopen_name(ino: u64) -> Vec<u8> {
    format!("iopen-{ino:x}").into_bytes()
}

fn journal_name(slot: u32) -> Vec<u8> {
    format!("journal-{slot}").into_bytes()
}

/// Local holders that `want` cannot share with.
fn local_conflict(e: &Entry, want: Want) -> bool {
    match want {
        Want::Sh => e.ex,
        Want::Ex => e.ex || e.sh > 0,
    }
}

fn covers(mode: Mode, want: Want) -> bool {
    match want {
        Want::Sh => mode == Mode::Pr || mode == Mode::Ex,
        Want::Ex => mode == Mode::Ex,
    }
}

impl Inner {
    fn hooks(&self) -> Option<&dyn GlockHooks> {
        self.hooks.get().map(|h| &**h)
    }

    /// Sends `mode` to the glock's task and waits for the DLM's answer.
    fn dlm_lock(&self, tx: &mpsc::UnboundedSender<TaskCmd>, mode: Mode) -> Result<SbFlags, GlockError> {
        let (rtx, rrx) = std_mpsc::channel();
        let flags = Flags::VALBLK;
        tx.send(TaskCmd::Lock(mode, flags, rtx)).map_err(|_| GlockError::Gone)?;
        Ok(rrx.recv().map_err(|_| GlockError::Gone)??)
    }

    /// Called by a glock's task when another node wants `wanted`: wait for local holders
    /// and the minimum hold, write back and invalidate; says what to convert to.
    fn prepare_demote(&self, key: LockKey, granted: Mode, wanted: Mode) -> Demote {
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

    fn finish_demote(&self, key: LockKey, mode: Option<Mode>) {
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
    async fn glock_task(self: Arc<Self>, key: LockKey, mut rx: mpsc::UnboundedReceiver<TaskCmd>) {
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

    /// Takes `key` for a local operation; returns whether the DLM granted it afresh (what
    /// it covers must be re-read) and whether the last EX holder died (recovery first).
    fn acquire_one(self: &Arc<Self>, key: LockKey, want: Want) -> Result<(bool, bool), GlockError> {
        let mut fresh = false;
        let mut dead_holder = false;
        let mut t = self.table.lock().expect("glock table");
        loop {
            let e = t.entry(key).or_insert_with(|| Entry {
                mode: Mode::Nl,
                sh: 0,
                ex: false,
                busy: false,
                demote: false,
                asked: false,
                granted_at: Instant::now(),
                hold: MIN_HOLD,
                task: None,
            });
            if e.demote || e.busy {
                t = self.cond.wait(t).expect("glock table");
                continue;
            }
            if covers(e.mode, want) {
                if local_conflict(e, want) {
                    t = self.cond.wait(t).expect("glock table");
                    continue;
                }
                match want {
                    Want::Sh => e.sh += 1,
                    Want::Ex => e.ex = true,
                }
                return Ok((fresh, dead_holder));
            }
            // The DLM must grant more: no local holder may be using the weaker mode, and no
            // other node may be waiting for this node to let go.
            if e.sh > 0 || e.ex || e.asked {
                t = self.cond.wait(t).expect("glock table");
                continue;
            }
            e.busy = true;
            let tx = match &e.task {
                Some(tx) => tx.clone(),
                None => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    self.rt.spawn(self.clone().glock_task(key, rx));
                    e.task = Some(tx.clone());
                    tx
                }
            };
            let from = e.mode;
            drop(t);
            // PR -> EX goes through NL, so two readers upgrading never deadlock.
            let mut r = Ok(SbFlags::default());
            if from == Mode::Pr {
                r = self.dlm_lock(&tx, Mode::Nl);
                if r.is_ok() {
                    let mut t = self.table.lock().expect("glock table");
                    if let Some(e) = t.get_mut(&key) {
                        e.mode = Mode::Nl;
                    }
                }
            }
            let mode = match want {
                Want::Sh => Mode::Pr,
                Want::Ex => Mode::Ex,
            };
            let r = r.and_then(|_| self.dlm_lock(&tx, mode));
            t = self.table.lock().expect("glock table");
            let e = t.get_mut(&key).expect("entry stays");
            e.busy = false;
            match r {
                Ok(sb) => {
                    e.mode = mode;
                    e.granted_at = Instant::now();
                    fresh = true;
                    dead_holder |= sb.contains(SbFlags::VALNOTVALID);
                    self.cond.notify_all();
                }
                Err(err) => {
                    self.cond.notify_all();
                    return Err(err);
                }
            }
        }
    }

    fn release_one(&self, key: LockKey, want: Want) {
        let mut t = self.table.lock().expect("glock table");
        if let Some(e) = t.get_mut(&key) {
            match want {
                Want::Sh => e.sh = e.sh.saturating_sub(1),
                Want::Ex => e.ex = false,
            }
        }
        drop(t);
        self.cond.notify_all();
    }

    /// Gives idle glocks back to the DLM while this node has more than `above`: NL ones
    /// first, then PR ones unused for `idle` (what they cover is forgotten first), oldest
    /// first, down to half of `above`. Returns how many went.
    fn reclaim(&self, above: usize, idle: Duration) -> usize {
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

    /// One recovery pass: under the cluster's `recovery` lock, replay the journals whose
    /// locks nobody holds (nodes that are gone), unless already replayed since.
    fn recover_pass(&self, force: bool) -> Result<(), GlockError> {
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

/// Glocks held by one operation; released when dropped.
#[derive(Debug, Default)]
pub struct HeldLocks {
    keys: Vec<(LockKey, Want)>,
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("slot", &self.slot).finish()
    }
}

impl HeldLocks {
    /// Whether `key` is held at least as `want`.
    pub fn covers(&self, key: LockKey, want: Want) -> bool {
        self.keys.iter().any(|&(k, w)| k == key && w >= want)
    }

    /// The keys held shared and exclusive.
    pub fn split(&self) -> (Vec<LockKey>, Vec<LockKey>) {
        let sh = self.keys.iter().filter(|(_, w)| *w == Want::Sh).map(|(k, _)| *k).collect();
        let ex = self.keys.iter().filter(|(_, w)| *w == Want::Ex).map(|(k, _)| *k).collect();
        (sh, ex)
    }

    fn release_all(&mut self) {
        if let Some(inner) = &self.inner {
            for (k, w) in self.keys.drain(..).rev() {
                inner.release_one(k, w);
            }
        }
    }
}

impl Drop for HeldLocks {
    fn drop(&mut self) {
        self.release_all();
    }
}

impl Glocks {
    /// Connects to `dlm_controld` at `socket`, joins lockspace `fsname` and takes the lock of
    /// journal `slot` (waiting a little for a previous holder), under the recovery lock: the
    /// caller replays its own journal and then calls [`Glocks::mounted`].
    pub fn start(socket: &str, fsname: &str, slot: u32, journals: u32) -> Result<Glocks, GlockError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gfs-glock")
            .enable_all()
            .build()
            .map_err(|e| GlockError::Dlm(dlm::ClientError::Io(e)))?;
        let (client, ls, journal_lock) = rt.block_on(async {
            let client = DlmClient::connect(socket).await?;
            let ls = client.join(fsname.as_bytes(), 0).await?;
            let mut j = client.request(ls, &journal_name(slot), Mode::Ex, Flags::empty(), None).await?;
            match tokio::time::timeout(JOURNAL_WAIT, j.wait()).await {
                Ok(r) => {
                    r?;
                }
                Err(_) => {
                    let _ = j.cancel().await;
                    return Err(GlockError::SlotBusy(slot));
                }
            }
            Ok::<_, GlockError>((client, ls, j))
        })?;
        let inner = Arc::new(Inner {
            rt,
            client,
            ls,
            slot,
            journals,
            table: Mutex::new(HashMap::new()),
            cond: Condvar::new(),
            hooks: OnceLock::new(),
            stop: AtomicBool::new(false),
            recovering: Mutex::new(HashSet::new()),
            journal_lock: Mutex::new(Some(journal_lock)),
            reclaim_above: std::sync::atomic::AtomicUsize::new(RECLAIM_ABOVE),
        });
        Ok(Glocks {
            inner,
            recovery_thread: Mutex::new(None),
            plock_waits: Mutex::new(Vec::new()),
            iopens: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` (this node's own journal replay at mount) under the cluster's recovery lock.
    pub fn with_recovery_lock<T>(&self, f: impl FnOnce() -> T) -> Result<T, GlockError> {
        let i = &self.inner;
        let rec = i.rt.block_on(i.client.lock(i.ls, b"recovery", Mode::Ex, Flags::empty(), None))?;
        let r = f();
        i.rt.block_on(rec.unlock(Flags::empty(), None))?;
        Ok(r)
    }

    /// How many glocks this node keeps before giving idle ones back to the DLM (default
    /// 8192; mount option `glock_limit`).
    pub fn set_glock_limit(&self, n: usize) {
        self.inner.reclaim_above.store(n.max(2), Ordering::Relaxed);
    }

    /// Sets what the glocks call into; starts the periodic recovery pass.
    pub fn set_hooks(&self, hooks: Box<dyn GlockHooks>) {
        let _ = self.inner.hooks.set(hooks);
        let inner = self.inner.clone();
        let t = std::thread::Builder::new().name("gfs-recovery".into()).spawn(move || {
            while !inner.stop.load(Ordering::SeqCst) {
                if let Err(e) = inner.recover_pass(false) {
                    tracing::warn!(error = %e, "recovery pass failed");
                }
                inner.reclaim(inner.reclaim_above.load(Ordering::Relaxed), RECLAIM_IDLE);
                let until = Instant::now() + RECOVERY_INTERVAL;
                while Instant::now() < until && !inner.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        if let Ok(t) = t {
            *self.recovery_thread.lock().expect("thread slot") = Some(t);
        }
    }

    /// Takes `keys` (in lock order) for one operation, adding to what `held` already has.
    /// When a new key sorts before one already held, everything is released and taken
    /// again in order. Returns the keys granted afresh (their cached blocks must be
    /// forgotten before use).
    pub fn acquire(&self, held: &mut HeldLocks, keys: &[(LockKey, Want)]) -> Result<Vec<LockKey>, GlockError> {
        let mut want: Vec<(LockKey, Want)> = Vec::new();
        for &(k, w) in held.keys.iter().chain(keys.iter()) {
            match want.iter_mut().find(|(x, _)| *x == k) {
                Some(e) => e.1 = e.1.max(w),
                None => want.push((k, w)),
            }
        }
        want.sort();
        let in_order = {
            let max_held = held.keys.iter().map(|(k, _)| *k).max();
            let upgrades = keys.iter().any(|&(k, w)| held.keys.iter().any(|&(hk, hw)| hk == k && hw < w));
            !upgrades && keys.iter().all(|&(k, _)| held.covers(k, Want::Sh) || max_held.is_none_or(|m| k > m))
        };
        if !in_order {
            held.release_all();
        }
        held.inner = Some(self.inner.clone());
        let mut fresh = Vec::new();
        let mut dead = false;
        for (k, w) in want {
            if held.covers(k, w) {
                continue;
            }
            let (f, d) = self.inner.acquire_one(k, w)?;
            held.keys.push((k, w));
            if f {
                fresh.push(k);
            }
            dead |= d;
        }
        if dead {
            // The last EX holder of something we now hold died: replay before using it.
            self.inner.recover_pass(true)?;
        }
        Ok(fresh)
    }

    /// The inode was opened on this node: hold its iopen lock in PR (other nodes then leave
    /// it allocated when its last link goes).
    pub fn iopen_open(&self, ino: u64) {
        let mut m = self.iopens.lock().expect("iopens");
        if let Some(e) = m.get_mut(&ino) {
            e.0 += 1;
            return;
        }
        let i = &self.inner;
        match i.rt.block_on(i.client.lock(i.ls, &iopen_name(ino), Mode::Pr, Flags::empty(), None)) {
            Ok(l) => {
                m.insert(ino, (1, l));
            }
            Err(e) => tracing::warn!(inode = ino, error = %e, "cannot take an iopen lock"),
        }
    }

    /// Closed on this node (`last`: no handle left here): the iopen lock goes at the last.
    pub fn iopen_close(&self, ino: u64) {
        let mut m = self.iopens.lock().expect("iopens");
        let Some(e) = m.get_mut(&ino) else { return };
        e.0 = e.0.saturating_sub(1);
        if e.0 == 0 {
            if let Some((_, l)) = m.remove(&ino) {
                let _ = self.inner.rt.block_on(l.unlock(Flags::empty(), None));
            }
        }
    }

    /// Whether another node has inode `ino` open (its iopen lock cannot be had in EX). Call
    /// with no handle open here.
    pub fn open_elsewhere(&self, ino: u64) -> bool {
        let i = &self.inner;
        i.rt.block_on(async {
            match i.client.lock(i.ls, &iopen_name(ino), Mode::Ex, Flags::NOQUEUE, None).await {
                Ok(l) => {
                    let _ = l.unlock(Flags::empty(), None).await;
                    false
                }
                Err(dlm::ClientError::Status(dlm::Status::WouldBlock)) => true,
                Err(e) => {
                    // Cannot tell: keep the inode (gfs_fsck reclaims it if it is garbage).
                    tracing::warn!(inode = ino, error = %e, "cannot ask whether an inode is open elsewhere");
                    true
                }
            }
        })
    }

    /// This node's glocks, one line each, in lock order: DLM mode, local holders, state,
    /// hold time (`gfs_tool glocks`). At most `max` lines, then how many more.
    pub fn dump(&self, max: usize) -> String {
        use std::fmt::Write;
        let t = self.inner.table.lock().expect("glock table");
        let mut keys: Vec<_> = t.keys().copied().collect();
        keys.sort();
        let mut out = format!("glocks of journal slot {}: {}\n", self.inner.slot, keys.len());
        for k in keys.iter().take(max) {
            let e = &t[k];
            let state = match (e.busy, e.demote, e.asked) {
                (true, _, _) => "converting",
                (_, true, _) => "demoting",
                (_, _, true) => "asked",
                _ => "idle",
            };
            let _ = writeln!(
                out,
                "{:<24} {:<2} holders sh {} ex {} {:<10} hold {} ms, granted {} ms ago",
                String::from_utf8_lossy(&k.resource_name()),
                e.mode.to_string(),
                e.sh,
                u8::from(e.ex),
                state,
                e.hold.as_millis(),
                e.granted_at.elapsed().as_millis()
            );
        }
        if keys.len() > max {
            let _ = writeln!(out, "... {} more", keys.len() - max);
        }
        out
    }

    /// Releases every glock and the journal lock, and leaves the lockspace.
    pub fn shutdown(&self) {
        let i = &self.inner;
        i.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.recovery_thread.lock().expect("thread slot").take() {
            let _ = t.join();
        }
        let tasks: Vec<_> = {
            let mut t = i.table.lock().expect("glock table");
            t.drain().filter_map(|(_, e)| e.task).collect()
        };
        for tx in tasks {
            let (rtx, rrx) = std_mpsc::channel();
            if tx.send(TaskCmd::Unlock(rtx)).is_ok() {
                let _ = rrx.recv_timeout(Duration::from_secs(10));
            }
        }
        let j = i.journal_lock.lock().expect("journal lock").take();
        i.rt.block_on(async {
            if let Some(j) = j {
                let _ = j.unlock(Flags::empty(), None).await;
            }
            let _ = i.client.leave(i.ls).await;
        });
    }
}

/// A POSIX byte-range lock request as FUSE gives it (`typ` is F_RDLCK, F_WRLCK or F_UNLCK;
/// `end` inclusive, `i64::MAX` meaning to the end of the file).
#[derive(Debug, Clone, Copy)]
pub struct RangeLock {
    pub ino: u64,
    pub owner: u64,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub typ: i32,
}

/// Why a byte-range lock was refused.
#[derive(Debug, Error)]
pub enum PlockError {
    #[error("conflicting lock held")]
    WouldBlock,
    #[error("waiting would deadlock")]
    Deadlock,
    #[error("invalid range or type")]
    Invalid,
    #[error("the wait was withdrawn (the file was closed)")]
    Interrupted,
    #[error("dlm: {0}")]
    Dlm(dlm::ClientError),
}

impl PlockError {
    /// The errno for FUSE.
    pub fn errno(&self) -> i32 {
        match self {
            PlockError::WouldBlock => libc::EAGAIN,
            PlockError::Deadlock => libc::EDEADLK,
            PlockError::Invalid => libc::EINVAL,
            PlockError::Interrupted => libc::EINTR,
            PlockError::Dlm(_) => libc::EIO,
        }
    }
}

type PlockReply = Arc<Mutex<Option<Box<dyn FnOnce(Result<(), PlockError>) + Send>>>>;

/// An F_SETLKW waiting in the background.
struct PlockWait {
    ino: u64,
    owner: u64,
    task: tokio::task::AbortHandle,
    reply: PlockReply,
}

fn plock_name(ino: u64) -> Vec<u8> {
    format!("plock-{ino:x}").into_bytes()
}

fn plock_args(l: &RangeLock) -> Result<dlm::PlockArgs, PlockError> {
    let kind = match l.typ {
        libc::F_RDLCK => dlm::PlockKind::Read,
        libc::F_WRLCK => dlm::PlockKind::Write,
        libc::F_UNLCK => dlm::PlockKind::Unlock,
        _ => return Err(PlockError::Invalid),
    };
    let end = if l.end >= i64::MAX as u64 { u64::MAX } else { l.end };
    if l.start > end {
        return Err(PlockError::Invalid);
    }
    Ok(dlm::PlockArgs { owner: l.owner, pid: l.pid, start: l.start, end, kind })
}

fn plock_error(e: dlm::ClientError) -> PlockError {
    match e {
        dlm::ClientError::WouldBlock => PlockError::WouldBlock,
        dlm::ClientError::Status(dlm::Status::Deadlock) => PlockError::Deadlock,
        dlm::ClientError::Refused(-22) => PlockError::Invalid,
        e => PlockError::Dlm(e),
    }
}

/// Cluster-wide POSIX locks (fcntl) and flock, through the DLM's plock service: every node
/// sees the same locks on a file.
impl Glocks {
    /// F_GETLK: the first lock that conflicts with `l`, as (type, start, end, pid).
    pub fn plock_get(&self, l: &RangeLock) -> Result<Option<(i32, u64, u64, u32)>, PlockError> {
        let args = plock_args(l)?;
        let i = &self.inner;
        let c = i.rt.block_on(i.client.plock_get(i.ls, &plock_name(l.ino), args)).map_err(plock_error)?;
        Ok(c.map(|c| {
            let typ = match c.kind {
                dlm::PlockKind::Read => libc::F_RDLCK,
                _ => libc::F_WRLCK,
            };
            let end = if c.end == u64::MAX { i64::MAX as u64 } else { c.end };
            (typ, c.start, end, c.pid)
        }))
    }

    /// F_SETLK (or an unlock): at once.
    pub fn plock_set(&self, l: &RangeLock) -> Result<(), PlockError> {
        let args = plock_args(l)?;
        let i = &self.inner;
        i.rt.block_on(i.client.plock_set(i.ls, &plock_name(l.ino), args, false)).map_err(plock_error)
    }

    /// F_SETLKW: waits in the background (no FUSE thread is held) and calls `done` with the
    /// outcome. The wait is withdrawn when the owner closes the file ([`Glocks::plock_close`]).
    pub fn plock_wait(&self, l: &RangeLock, done: impl FnOnce(Result<(), PlockError>) + Send + 'static) {
        let args = match plock_args(l) {
            Ok(a) => a,
            Err(e) => return done(Err(e)),
        };
        let inner = self.inner.clone();
        let name = plock_name(l.ino);
        let reply: PlockReply = Arc::new(Mutex::new(Some(Box::new(done))));
        let r2 = reply.clone();
        let task = self.inner.rt.spawn(async move {
            let r = inner.client.plock_set(inner.ls, &name, args, true).await.map_err(plock_error);
            if let Some(f) = r2.lock().expect("plock reply").take() {
                f(r);
            }
        });
        let mut w = self.plock_waits.lock().expect("plock waits");
        w.retain(|x| !x.task.is_finished());
        w.push(PlockWait { ino: l.ino, owner: l.owner, task: task.abort_handle(), reply });
    }

    /// The owner closed the file: withdraw its waits and drop its locks on `ino`.
    pub fn plock_close(&self, ino: u64, owner: u64) -> Result<(), PlockError> {
        let withdrawn: Vec<PlockWait> = {
            let mut w = self.plock_waits.lock().expect("plock waits");
            let (gone, keep): (Vec<_>, Vec<_>) =
                w.drain(..).filter(|x| !x.task.is_finished()).partition(|x| x.ino == ino && x.owner == owner);
            *w = keep;
            gone
        };
        for x in withdrawn {
            x.task.abort();
            if let Some(f) = x.reply.lock().expect("plock reply").take() {
                f(Err(PlockError::Interrupted));
            }
        }
        let i = &self.inner;
        i.rt.block_on(i.client.plock_release_owner(i.ls, &plock_name(ino), owner)).map_err(plock_error)
    }
}
