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
//!
//! Beside the glocks, per inode: an iopen lock (PR while this node has the inode open, so
//! other nodes leave it allocated) and the cluster's byte-range locks.
//!
//! - this module: the glock table, taking glocks ([`Glocks::acquire`], [`HeldLocks`]), iopen
//!   locks, `gfs_tool glocks`, shutdown;
//! - `demote`: each glock's DLM task, demotion when another node asks, reclaiming idle ones;
//! - `recovery`: the recovery pass (journals of nodes that are gone);
//! - `plock`: fcntl and flock locks ([`RangeLock`], [`PlockError`]).

mod demote;
mod plock;
mod recovery;

use plock::PlockWait;
pub use plock::{PlockError, RangeLock};

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
