//! The FUSE front end: every request runs against the [`Fs`] engine under one mutex. A
//! background thread commits the running transaction every 5 seconds (and requests that dirty
//! many blocks commit at once); fsync and fsyncdir commit before they answer.
//!
//! With lock_dlm every request first takes the glocks it needs ([`Shared::op`]): a *plan*
//! names them step by step (it may read only what the glocks it already holds cover, e.g.
//! look a name up in a directory held to find the inode to lock next), the glocks are taken
//! in lock order outside the engine's mutex, and the request runs once the plan is covered.

use crate::format::Timestamp;
use crate::fs::{Attr, Fs, FsError, LockKey, SetAttr};
use crate::glock::{GlockHooks, Glocks, HeldLocks, RangeLock, Want};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache names and attributes. With lock_nolock every change goes
/// through this mount, so the kernel's caches never go stale behind its back.
const TTL: Duration = Duration::from_secs(3600);
/// Commit as soon as the running transaction holds this many blocks.
const COMMIT_BLOCKS: usize = 256;
/// The periodic commit interval (as ext4's default): changes not fsync-ed are durable
/// within this time.
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// State shared between the FUSE session, the committer thread and the glock thread.
#[derive(Debug)]
pub struct Shared {
    fs: Mutex<Option<Fs>>,
    glocks: Mutex<Option<Arc<Glocks>>>,
    stop: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
    /// lock_dlm: what the kernel caches (names per directory, attributes), so a glock going
    /// to another node can take it back ([`KernelCache`]).
    kernel: KernelCache,
}

/// What the kernel caches on a lock_dlm mount, and the channel to take it back.
///
/// The kernel caches attributes (taken back with an attribute-only invalidation, which never
/// waits on the kernel's inode locks). It does not cache names (entry TTL zero): taking a
/// name back needs the directory's inode lock, which a request in flight holds while it waits
/// for the very glock being given up, so every lookup reaches the engine instead.
#[derive(Debug, Default)]
struct KernelCache {
    root: u64,
    /// Inodes whose attributes were handed out.
    attrs: Mutex<HashSet<u64>>,
    /// Set once the FUSE session exists.
    invalidator: OnceLock<std::sync::mpsc::Sender<Invalidation>>,
}

/// Kernel attributes to invalidate (FUSE inode numbers), and who waits.
#[derive(Debug)]
struct Invalidation {
    attrs: Vec<u64>,
    done: std::sync::mpsc::Sender<()>,
}

/// How long a demotion waits for the kernel to drop what it cached (an attribute-only
/// invalidation takes no inode lock: this is a safety net, not an expected wait).
const INVALIDATE_WAIT: Duration = Duration::from_millis(200);

impl KernelCache {
    fn fuse_ino(&self, ino: u64) -> u64 {
        if ino == self.root {
            1
        } else {
            ino
        }
    }

    fn note_attr(&self, ino: u64) {
        if self.invalidator.get().is_some() {
            self.attrs.lock().expect("kernel attrs").insert(ino);
        }
    }

    /// Takes back everything the kernel caches (after replaying another node's journal).
    fn invalidate_all(&self) {
        let attrs: Vec<u64> = self.attrs.lock().expect("kernel attrs").drain().collect();
        self.send(attrs);
    }

    /// Takes back what the kernel caches under inode `ino`'s glock: its attributes.
    fn invalidate(&self, ino: u64) {
        if self.attrs.lock().expect("kernel attrs").remove(&ino) {
            self.send(vec![ino]);
        }
    }

    fn send(&self, inos: Vec<u64>) {
        let Some(tx) = self.invalidator.get() else { return };
        if inos.is_empty() {
            return;
        }
        let (done, wait) = std::sync::mpsc::channel();
        let job = Invalidation { attrs: inos.into_iter().map(|i| self.fuse_ino(i)).collect(), done };
        if tx.send(job).is_ok() && wait.recv_timeout(INVALIDATE_WAIT).is_err() {
            tracing::warn!("the kernel has not dropped cached attributes yet");
        }
    }
}

impl Shared {
    /// Commits the running transaction (periodically, from the committer thread).
    fn commit(&self) {
        let mut g = self.fs.lock().expect("fs mutex");
        if let Some(fs) = g.as_mut() {
            if let Err(e) = fs.commit() {
                tracing::error!(error = %e, "commit failed");
            }
        }
    }

    /// lock_dlm: starts the thread that takes back what the kernel cached when a glock goes
    /// to another node (FUSE invalidation notifications on the session's channel).
    pub fn start_invalidator(&self, notifier: fuser::Notifier) {
        if self.glocks.lock().expect("glocks mutex").is_none() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel::<Invalidation>();
        let spawned = std::thread::Builder::new().name("gfs-invalidate".into()).spawn(move || {
            for job in rx {
                for ino in job.attrs {
                    // Offset -1: attributes only. ENOENT: the kernel had already dropped it.
                    let _ = notifier.inval_inode(INodeNo(ino), -1, 0);
                }
                let _ = job.done.send(());
            }
        });
        match spawned {
            Ok(_) => {
                let _ = self.kernel.invalidator.set(tx);
            }
            Err(e) => tracing::error!(error = %e, "cannot start the invalidation thread"),
        }
    }

    /// Commits, checkpoints and releases the filesystem (clean unmount).
    pub fn shutdown(&self) -> Result<(), FsError> {
        if self.stop.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.wake.notify_all();
        let glocks = self.glocks.lock().expect("glocks mutex").clone();
        let r = match &glocks {
            None => match self.fs.lock().expect("fs mutex").take() {
                Some(fs) => fs.unmount(),
                None => Ok(()),
            },
            Some(gl) => self.shutdown_clustered(gl),
        };
        if let Some(gl) = glocks {
            gl.shutdown();
        }
        *self.glocks.lock().expect("glocks mutex") = None;
        r
    }

    /// lock_dlm unmount: free this node's orphans and fold statfs under their glocks.
    fn shutdown_clustered(&self, gl: &Arc<Glocks>) -> Result<(), FsError> {
        let orphans = match self.fs.lock().expect("fs mutex").as_mut() {
            Some(fs) => fs.orphan_list(),
            None => return Ok(()),
        };
        for ino in orphans {
            let r = self.op(
                gl,
                |_, h, n| {
                    n.lock(h, LockKey::Inode(ino), Want::Ex);
                    Ok(())
                },
                |fs| fs.destroy_orphan(ino),
            );
            if let Err(e) = r {
                tracing::error!(inode = ino, error = %e, "cannot free an inode unlinked while open");
            }
        }
        let mut held = HeldLocks::default();
        let fresh =
            gl.acquire(&mut held, &[(LockKey::Statfs, Want::Ex)]).map_err(|e| FsError::Journal(e.to_string()))?;
        let mut g = self.fs.lock().expect("fs mutex");
        let Some(mut fs) = g.take() else { return Ok(()) };
        for k in fresh {
            fs.invalidate(k);
        }
        let (sh, ex) = held.split();
        fs.set_held(sh, ex)?;
        let r = fs.unmount();
        drop(g);
        drop(held);
        r
    }

    /// Runs `f` once the glocks `plan` names are held (lock_dlm). `plan` is called under
    /// the engine's mutex with the glocks held so far; it adds what the request needs and may
    /// read only what those glocks cover ([`Need::lock`] says whether a glock is held yet).
    fn op<T>(
        &self,
        gl: &Glocks,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        self.op_held(gl, plan, f).0
    }

    /// [`Shared::op`], also giving back the glocks still held (a reply that the kernel will
    /// cache must be sent before they go: a demotion then finds it to take back).
    fn op_held<T>(
        &self,
        gl: &Glocks,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> (Result<T, FsError>, HeldLocks) {
        let mut held = HeldLocks::default();
        let r = self.op_inner(gl, &mut held, plan, f);
        (r, held)
    }

    fn op_inner<T>(
        &self,
        gl: &Glocks,
        held: &mut HeldLocks,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let mut f = Some(f);
        for _ in 0..64 {
            let mut g = self.fs.lock().expect("fs mutex");
            let fs = g.as_mut().ok_or(FsError::Journal("the filesystem is unmounted".into()))?;
            let (sh, ex) = held.split();
            fs.set_held(sh, ex)?;
            let mut need = Need::default();
            need.lock(held, LockKey::Layout, Want::Sh);
            plan(fs, held, &mut need)?;
            if need.alloc > 0 {
                let have: u64 = held
                    .split()
                    .1
                    .into_iter()
                    .filter_map(|k| if let LockKey::Rgrp(i) = k { Some(fs.rgrp_free(i)) } else { None })
                    .sum();
                if have < need.alloc {
                    if let Some(c) = fs
                        .alloc_candidates(need.alloc - have)
                        .into_iter()
                        .find(|&c| !held.covers(LockKey::Rgrp(c), Want::Ex))
                    {
                        need.keys.push((LockKey::Rgrp(c), Want::Ex));
                    }
                }
            }
            if need.keys.iter().all(|&(k, w)| held.covers(k, w)) {
                fs.make_room(need.alloc)?;
                let run = f.take().expect("runs once");
                let r = run(fs);
                for (b, k) in fs.take_violations() {
                    tracing::error!(block = b, lock = ?k, "block changed without its glock (bug)");
                }
                let deferred = fs.take_deferred_frees();
                if fs.dirty_blocks() >= COMMIT_BLOCKS {
                    fs.commit()?;
                }
                drop(g);
                if !deferred.is_empty() {
                    self.free_deferred(gl, deferred);
                }
                return r;
            }
            drop(g);
            let fresh = gl.acquire(held, &need.keys).map_err(|e| FsError::Journal(e.to_string()))?;
            if !fresh.is_empty() {
                let mut g = self.fs.lock().expect("fs mutex");
                if let Some(fs) = g.as_mut() {
                    for k in fresh {
                        fs.invalidate(k);
                    }
                }
            }
        }
        Err(FsError::Journal("the glocks an operation needs kept changing".into()))
    }

    /// Frees blocks an operation gave back in resource groups it did not hold.
    fn free_deferred(&self, gl: &Glocks, blocks: Vec<u64>) {
        let r = self.op(
            gl,
            |fs, h, n| {
                for &b in &blocks {
                    if let Some(i) = fs.rgrp_of(b) {
                        n.lock(h, LockKey::Rgrp(i), Want::Ex);
                    }
                }
                Ok(())
            },
            |fs| fs.free_deferred(&blocks),
        );
        if let Err(e) = r {
            tracing::error!(error = %e, blocks = blocks.len(), "cannot free blocks (left allocated; gfs_fsck reclaims them)");
        }
    }
}

/// What a request needs (lock_dlm): glocks, and how many blocks it may allocate.
#[derive(Debug, Default)]
pub struct Need {
    keys: Vec<(LockKey, Want)>,
    alloc: u64,
}

impl Need {
    /// Adds `key`; returns whether it is held already (so the plan may read what it covers).
    fn lock(&mut self, held: &HeldLocks, key: LockKey, want: Want) -> bool {
        self.keys.push((key, want));
        held.covers(key, want)
    }
}

/// The glocks' view of the filesystem: write back, invalidate, recover.
struct Hooks(std::sync::Weak<Shared>);

impl GlockHooks for Hooks {
    fn write_back(&self) {
        if let Some(s) = self.0.upgrade() {
            if let Some(fs) = s.fs.lock().expect("fs mutex").as_mut() {
                if let Err(e) = fs.write_back() {
                    tracing::error!(error = %e, "write-back before releasing a glock failed");
                }
            }
        }
    }

    fn invalidate(&self, key: LockKey) {
        if let Some(s) = self.0.upgrade() {
            if let Some(fs) = s.fs.lock().expect("fs mutex").as_mut() {
                fs.invalidate(key);
            }
            if let LockKey::Inode(ino) = key {
                s.kernel.invalidate(ino);
            }
        }
    }

    fn journals(&self) -> u32 {
        self.0.upgrade().and_then(|s| s.fs.lock().expect("fs mutex").as_ref().map(|fs| fs.journal_count())).unwrap_or(0)
    }

    fn recover(&self, slots: &[u32]) {
        if let Some(s) = self.0.upgrade() {
            let replayed = match s.fs.lock().expect("fs mutex").as_mut().map(|fs| fs.recover_slots(slots)) {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    tracing::error!(error = %e, ?slots, "journal recovery failed");
                    0
                }
                None => 0,
            };
            if replayed > 0 {
                s.kernel.invalidate_all();
            }
        }
    }
}

/// The FUSE filesystem.
#[derive(Debug)]
pub struct GfsFuse {
    shared: Arc<Shared>,
    root: u64,
    glocks: Option<Arc<Glocks>>,
    /// How long the kernel may cache attributes (lock_dlm: taken back by notifications).
    ttl: Duration,
    /// How long the kernel may cache names (lock_dlm: not at all, see [`KernelCache`]).
    entry_ttl: Duration,
    /// Open flags: direct I/O with cluster locking (no page cache to invalidate).
    open_flags: FopenFlags,
}

impl GfsFuse {
    /// Wraps a mounted engine and starts the committer thread; with `glocks` (lock_dlm)
    /// every request first takes its glocks.
    pub fn new(fs: Fs, glocks: Option<Arc<Glocks>>) -> (GfsFuse, Arc<Shared>) {
        let root = fs.root();
        let shared = Arc::new(Shared {
            fs: Mutex::new(Some(fs)),
            glocks: Mutex::new(glocks.clone()),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            kernel: KernelCache { root, ..Default::default() },
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("gfs-commit".into())
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    let g = s.wake_lock.lock().expect("wake mutex");
                    let _ = s.wake.wait_timeout(g, COMMIT_INTERVAL).expect("wake mutex");
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    s.commit();
                }
            })
            .expect("spawn the committer thread");
        if let Some(gl) = &glocks {
            gl.set_hooks(Box::new(Hooks(Arc::downgrade(&shared))));
        }
        // Nothing is buffered per open file, so close needs no FLUSH request.
        let (ttl, open_flags) = if glocks.is_some() {
            // Attributes are cached by the kernel and taken back when a glock goes to another
            // node; names are not (see KernelCache), nor is file data (direct I/O: a read
            // always reaches the engine, under the inode's glock). FLUSH at close releases
            // fcntl locks.
            (TTL, FopenFlags::FOPEN_DIRECT_IO)
        } else {
            // lock_nolock: this mount is the only writer; the page cache stays valid.
            (TTL, FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH)
        };
        let entry_ttl = if glocks.is_some() { Duration::ZERO } else { ttl };
        (GfsFuse { shared: shared.clone(), root, glocks, ttl, entry_ttl, open_flags }, shared)
    }

    fn ino(&self, ino: INodeNo) -> u64 {
        if ino.0 == 1 {
            self.root
        } else {
            ino.0
        }
    }

    fn fuse_ino(&self, ino: u64) -> INodeNo {
        if ino == self.root {
            INodeNo(1)
        } else {
            INodeNo(ino)
        }
    }

    /// Runs `f` against the engine: with lock_dlm once the glocks `plan` names are held
    /// (see [`Shared::op`]), with lock_nolock at once.
    fn run<T>(
        &self,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> Result<T, Errno> {
        self.run_held(plan, f).0
    }

    /// [`GfsFuse::run`], keeping the glocks until the caller drops them (after its reply).
    fn run_held<T>(
        &self,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> (Result<T, Errno>, Option<HeldLocks>) {
        let (r, held) = match &self.glocks {
            Some(gl) => {
                let (r, h) = self.shared.op_held(gl, plan, f);
                (r, Some(h))
            }
            None => (self.run_local(plan, f), None),
        };
        let r = r.map_err(|e| {
            if matches!(e, FsError::Device(_) | FsError::Corrupt(_) | FsError::Journal(_)) {
                tracing::error!(error = %e, "I/O error");
            }
            Errno::from_i32(e.errno())
        });
        (r, held)
    }

    /// lock_nolock: runs `f` at once.
    fn run_local<T>(
        &self,
        plan: impl Fn(&mut Fs, &HeldLocks, &mut Need) -> Result<(), FsError>,
        f: impl FnOnce(&mut Fs) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let mut g = self.shared.fs.lock().expect("fs mutex");
        let fs = g.as_mut().ok_or(FsError::Journal("the filesystem is unmounted".into()))?;
        // The plan only says how much the request may allocate here (it reads nothing
        // without glocks).
        let mut need = Need::default();
        let _ = plan(fs, &HeldLocks::default(), &mut need);
        fs.make_room(need.alloc)?;
        let r = f(fs);
        if fs.dirty_blocks() >= COMMIT_BLOCKS {
            fs.commit()?;
        }
        r
    }

    /// lock_dlm, after mknod/mkdir/symlink: the kernel will cache the new inode's
    /// attributes, so hold its glock shared too (another node changing it then asks for it,
    /// and the kernel's copy is taken back).
    fn created_entry(&self, r: &Result<Attr, Errno>, held: &mut Option<HeldLocks>) {
        let (Some(gl), Some(h), Ok(a)) = (&self.glocks, held.as_mut(), r) else { return };
        match gl.acquire(h, &[(LockKey::Inode(a.ino), Want::Sh)]) {
            Ok(fresh) => {
                if let Some(fs) = self.shared.fs.lock().expect("fs mutex").as_mut() {
                    for k in fresh {
                        fs.invalidate(k);
                    }
                }
            }
            Err(e) => tracing::warn!(inode = a.ino, error = %e, "cannot take a new inode's glock"),
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        self.shared.kernel.note_attr(a.ino);
        let kind = match a.mode & libc::S_IFMT {
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFCHR => FileType::CharDevice,
            libc::S_IFBLK => FileType::BlockDevice,
            libc::S_IFIFO => FileType::NamedPipe,
            libc::S_IFSOCK => FileType::Socket,
            _ => FileType::RegularFile,
        };
        FileAttr {
            ino: self.fuse_ino(a.ino),
            size: a.size,
            blocks: (a.blocks + 1) * 8,
            atime: systime(a.atime),
            mtime: systime(a.mtime),
            ctime: systime(a.ctime),
            crtime: systime(a.ctime),
            kind,
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    fn entry(&self, r: Result<Attr, Errno>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry_with_ttls(&self.ttl, &self.entry_ttl, &self.attr(&a), Generation(a.generation)),
            Err(e) => reply.error(e),
        }
    }

    fn empty(r: Result<(), Errno>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// The getxattr/listxattr protocol: size 0 asks for the length; too small a buffer is ERANGE.
fn xattr_reply(r: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

fn systime(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec.min(999_999_999))
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

fn stamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timestamp { sec, nsec }
        }
    }
}

fn time_or_now(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::Now => crate::now(),
        TimeOrNow::SpecificTime(s) => stamp(s),
    }
}

/// The group a new inode gets: the parent's if it is setgid, else the caller's.
fn new_gid(fs: &mut Fs, parent: u64, req_gid: u32) -> Result<(u32, bool), FsError> {
    let p = fs.getattr(parent)?;
    Ok(if p.mode & libc::S_ISGID != 0 { (p.gid, true) } else { (req_gid, false) })
}

/// Blocks a namespace change may allocate (a dinode, directory leaves, hash table blocks).
const NAMESPACE_ALLOC: u64 = 16;
/// fallocate runs in pieces of this many bytes (each locks its own resource groups).
const FALLOCATE_CHUNK: u64 = 64 << 20;

type PlanResult = Result<(), FsError>;

/// No glocks (the request touches only this node's state or journal).
fn no_locks(_: &mut Fs, _: &HeldLocks, _: &mut Need) -> PlanResult {
    Ok(())
}

/// Reads inode `ino`.
fn shared(ino: u64) -> impl Fn(&mut Fs, &HeldLocks, &mut Need) -> PlanResult {
    move |_, h, n| {
        n.lock(h, LockKey::Inode(ino), Want::Sh);
        Ok(())
    }
}

/// Changes inode `ino`, allocating at most `alloc` blocks.
fn exclusive(ino: u64, alloc: u64) -> impl Fn(&mut Fs, &HeldLocks, &mut Need) -> PlanResult {
    move |_, h, n| {
        n.lock(h, LockKey::Inode(ino), Want::Ex);
        n.alloc = alloc;
        Ok(())
    }
}

/// Looks `name` up in `parent`: the directory, then the inode it names.
fn lookup_plan(parent: u64, name: &[u8]) -> impl Fn(&mut Fs, &HeldLocks, &mut Need) -> PlanResult + '_ {
    move |fs, h, n| {
        if name.len() > crate::format::MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        if !n.lock(h, LockKey::Inode(parent), Want::Sh) {
            return Ok(());
        }
        let child = match name {
            b"." => parent,
            b".." => fs.parent_of(parent)?,
            _ => fs.lookup_ino(parent, name)?,
        };
        n.lock(h, LockKey::Inode(child), Want::Sh);
        Ok(())
    }
}

/// unlink/rmdir: the directory and the inode losing a link.
fn remove_plan(parent: u64, name: &[u8]) -> impl Fn(&mut Fs, &HeldLocks, &mut Need) -> PlanResult + '_ {
    move |fs, h, n| {
        if !n.lock(h, LockKey::Inode(parent), Want::Ex) {
            return Ok(());
        }
        let victim = fs.lookup_ino(parent, name)?;
        n.lock(h, LockKey::Inode(victim), Want::Ex);
        Ok(())
    }
}

/// rename: both directories, the inode moved, the inode replaced; a directory moving to
/// another parent also takes the rename glock and reads the new parent's ancestors (to
/// refuse moving a directory below itself).
fn rename_plan<'a>(
    parent: u64,
    name: &'a [u8],
    newparent: u64,
    newname: &'a [u8],
) -> impl Fn(&mut Fs, &HeldLocks, &mut Need) -> PlanResult + 'a {
    move |fs, h, n| {
        n.alloc = NAMESPACE_ALLOC;
        let a = n.lock(h, LockKey::Inode(parent), Want::Ex);
        let b = n.lock(h, LockKey::Inode(newparent), Want::Ex);
        if !(a && b) {
            return Ok(());
        }
        let moved = fs.lookup_ino(parent, name)?;
        if !n.lock(h, LockKey::Inode(moved), Want::Ex) {
            return Ok(());
        }
        match fs.lookup_ino(newparent, newname) {
            Ok(t) => {
                n.lock(h, LockKey::Inode(t), Want::Ex);
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        if parent != newparent && fs.is_dir(moved)? {
            if !n.lock(h, LockKey::Rename, Want::Ex) {
                return Ok(());
            }
            let mut at = newparent;
            loop {
                let up = fs.parent_of(at)?;
                if up == at || up == 0 || !n.lock(h, LockKey::Inode(up), Want::Sh) {
                    break;
                }
                at = up;
            }
        }
        Ok(())
    }
}

impl Filesystem for GfsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        if self.glocks.is_some() {
            // fcntl and flock locks go through the cluster (with lock_nolock the kernel's
            // own locks are right: this mount is the only one).
            let _ = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS);
        }
        Ok(())
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let Some(gl) = &self.glocks else { return reply.error(Errno::ENOSYS) };
        let l = RangeLock { ino: self.ino(ino), owner: lock_owner.0, pid, start, end, typ };
        match gl.plock_get(&l) {
            Ok(Some((typ, start, end, pid))) => reply.locked(start, end, typ, pid),
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(Errno::from_i32(e.errno())),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(gl) = &self.glocks else { return reply.error(Errno::ENOSYS) };
        let l = RangeLock { ino: self.ino(ino), owner: lock_owner.0, pid, start, end, typ };
        if sleep && typ != libc::F_UNLCK {
            gl.plock_wait(&l, move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(Errno::from_i32(e.errno())),
            });
        } else {
            match gl.plock_set(&l) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(Errno::from_i32(e.errno())),
            }
        }
    }

    fn destroy(&mut self) {
        if let Err(e) = self.shared.shutdown() {
            tracing::error!(error = %e, "unmount failed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let p = self.ino(parent);
        let (r, _held) = self.run_held(lookup_plan(p, name.as_bytes()), |fs| fs.lookup(p, name.as_bytes()));
        match r {
            // A negative entry (inode 0) lets the kernel cache the absence too.
            Err(e) if e == Errno::ENOENT => {
                let mut a = self.attr(&Attr {
                    ino: 0,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    nlink: 0,
                    size: 0,
                    blocks: 0,
                    atime: Timestamp::default(),
                    mtime: Timestamp::default(),
                    ctime: Timestamp::default(),
                    rdev: 0,
                    generation: 0,
                });
                a.ino = INodeNo(0);
                reply.entry_with_ttls(&self.ttl, &self.entry_ttl, &a, Generation(0));
            }
            r => self.entry(r, reply),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let i = self.ino(ino);
        let (r, _held) = self.run_held(shared(i), |fs| fs.getattr(i));
        match r {
            Ok(a) => reply.attr(&self.ttl, &self.attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let i = self.ino(ino);
        let s = SetAttr { mode, uid, gid, size, atime: atime.map(time_or_now), mtime: mtime.map(time_or_now) };
        let alloc = if s.size.is_some() { 8 } else { 0 };
        let (r, _held) = self.run_held(exclusive(i, alloc), |fs| {
            let mut s = s;
            // chown by anyone clears setuid/setgid (the kernel checked permission already).
            if (s.uid.is_some() || s.gid.is_some()) && s.mode.is_none() {
                let a = fs.getattr(i)?;
                if a.mode & libc::S_IFMT != libc::S_IFDIR && a.mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
                    s.mode = Some(a.mode & !(libc::S_ISUID | libc::S_ISGID) & 0o7777);
                }
            }
            fs.setattr(i, &s)
        });
        match r {
            Ok(a) => reply.attr(&self.ttl, &self.attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let i = self.ino(ino);
        match self.run(shared(i), |fs| fs.readlink(i)) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let p = self.ino(parent);
        let (uid, gid) = (req.uid(), req.gid());
        let (r, mut held) = self.run_held(exclusive(p, NAMESPACE_ALLOC), |fs| {
            let (gid, _) = new_gid(fs, p, gid)?;
            let mode = if mode & libc::S_IFMT == 0 { mode | libc::S_IFREG } else { mode };
            fs.mknod(p, name.as_bytes(), mode & !(umask & 0o777), uid, gid, rdev)
        });
        self.created_entry(&r, &mut held);
        self.entry(r, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let p = self.ino(parent);
        let (uid, gid) = (req.uid(), req.gid());
        let (r, mut held) = self.run_held(exclusive(p, NAMESPACE_ALLOC), |fs| {
            let (gid, inherit) = new_gid(fs, p, gid)?;
            let mode = (mode & !umask & 0o7777) | if inherit { libc::S_ISGID } else { 0 };
            fs.mkdir(p, name.as_bytes(), mode, uid, gid)
        });
        self.created_entry(&r, &mut held);
        self.entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = self.ino(parent);
        Self::empty(self.run(remove_plan(p, name.as_bytes()), |fs| fs.unlink(p, name.as_bytes())), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = self.ino(parent);
        Self::empty(self.run(remove_plan(p, name.as_bytes()), |fs| fs.rmdir(p, name.as_bytes())), reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let p = self.ino(parent);
        let (uid, gid) = (req.uid(), req.gid());
        let (r, mut held) = self.run_held(exclusive(p, NAMESPACE_ALLOC), |fs| {
            let (gid, _) = new_gid(fs, p, gid)?;
            fs.symlink(p, link_name.as_bytes(), target.as_os_str().as_bytes(), uid, gid)
        });
        self.created_entry(&r, &mut held);
        self.entry(r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (p, np) = (self.ino(parent), self.ino(newparent));
        let plan = rename_plan(p, name.as_bytes(), np, newname.as_bytes());
        let r = self.run(plan, |fs| {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) && fs.lookup(np, newname.as_bytes()).is_ok() {
                return Err(FsError::Exists);
            }
            if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
                return Err(FsError::Invalid);
            }
            fs.rename(p, name.as_bytes(), np, newname.as_bytes())
        });
        Self::empty(r, reply);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let (i, np) = (self.ino(ino), self.ino(newparent));
        let plan = move |_: &mut Fs, h: &HeldLocks, n: &mut Need| {
            n.lock(h, LockKey::Inode(i), Want::Ex);
            n.lock(h, LockKey::Inode(np), Want::Ex);
            n.alloc = NAMESPACE_ALLOC;
            Ok(())
        };
        let (r, _held) = self.run_held(plan, |fs| fs.link(i, np, newname.as_bytes()));
        self.entry(r, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let i = self.ino(ino);
        match self.run(shared(i), |fs| {
            fs.getattr(i)?;
            fs.open_inode(i);
            Ok(())
        }) {
            Ok(()) => {
                if let Some(gl) = &self.glocks {
                    gl.iopen_open(i);
                }
                reply.opened(FileHandle(0), self.open_flags)
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let p = self.ino(parent);
        let (uid, gid) = (req.uid(), req.gid());
        let (r, held) = self.run_held(exclusive(p, NAMESPACE_ALLOC), |fs| {
            let (gid, _) = new_gid(fs, p, gid)?;
            let mode = if mode & libc::S_IFMT == 0 { mode | libc::S_IFREG } else { mode };
            let a = fs.mknod(p, name.as_bytes(), mode & !(umask & 0o777), uid, gid, 0)?;
            fs.open_inode(a.ino);
            Ok(a)
        });
        // lock_dlm: entry_ttl is zero, so the kernel keeps neither the name nor the attributes.
        drop(held);
        if let (Some(gl), Ok(a)) = (&self.glocks, &r) {
            gl.iopen_open(a.ino);
        }
        match r {
            Ok(a) => {
                reply.created(&self.entry_ttl, &self.attr(&a), Generation(a.generation), FileHandle(0), self.open_flags)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let i = self.ino(ino);
        match self.run(shared(i), |fs| fs.read(i, offset, size as usize)) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let i = self.ino(ino);
        let sync = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        // lock_dlm: the kernel's idea of the end of the file may be stale (another node
        // appended); O_APPEND writes go to the end as the engine knows it, under the glock.
        let append = self.glocks.is_some() && flags.0 & libc::O_APPEND != 0;
        let r = self.run(exclusive(i, data.len() as u64 / 4096 + 8), |fs| {
            // A write by anyone clears setuid (and setgid with group execute).
            let a = fs.getattr(i)?;
            if a.mode & libc::S_ISUID != 0 || a.mode & (libc::S_ISGID | 0o010) == (libc::S_ISGID | 0o010) {
                fs.setattr(
                    i,
                    &SetAttr { mode: Some(a.mode & !(libc::S_ISUID | libc::S_ISGID) & 0o7777), ..Default::default() },
                )?;
            }
            let offset = if append { a.size } else { offset };
            let n = fs.write(i, offset, data)?;
            if sync {
                fs.sync()?;
            }
            Ok(n)
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(): the owner's fcntl locks on this file go (lock_dlm; data needs no flush).
        if let Some(gl) = &self.glocks {
            if let Err(e) = gl.plock_close(self.ino(ino), lock_owner.0) {
                tracing::warn!(error = %e, "cannot drop byte-range locks at close");
            }
        }
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let i = self.ino(ino);
        // The last close of an open file description: its flock lock goes.
        if let (Some(gl), Some(owner)) = (&self.glocks, lock_owner) {
            if let Err(e) = gl.plock_close(i, owner.0) {
                tracing::warn!(error = %e, "cannot drop a flock lock at close");
            }
        }
        if let Some(gl) = &self.glocks {
            // Let go of the iopen lock first: at the last close here, whether the inode is
            // freed depends on whether another node still has it open.
            gl.iopen_close(i);
        }
        let plan = move |fs: &mut Fs, h: &HeldLocks, n: &mut Need| {
            // The last close here may free it (unlinked here or on another node).
            if fs.open_count(i) <= 1 {
                n.lock(h, LockKey::Inode(i), Want::Ex);
            }
            Ok(())
        };
        Self::empty(self.run(plan, |fs| fs.release_inode(i)), reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        Self::empty(self.run(no_locks, |fs| fs.sync()), reply);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let i = self.ino(ino);
        let r = self.run(shared(i), |fs| {
            let parent = fs.parent_of(i)?;
            let entries = fs.readdir(i, offset, 512)?;
            Ok((parent, entries))
        });
        let (parent, entries) = match r {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        if offset < 1 && reply.add(self.fuse_ino(i), 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset < 2 && reply.add(self.fuse_ino(parent), 2, FileType::Directory, "..") {
            return reply.ok();
        }
        for e in entries {
            let kind = match e.dtype {
                libc::DT_DIR => FileType::Directory,
                libc::DT_LNK => FileType::Symlink,
                libc::DT_CHR => FileType::CharDevice,
                libc::DT_BLK => FileType::BlockDevice,
                libc::DT_FIFO => FileType::NamedPipe,
                libc::DT_SOCK => FileType::Socket,
                _ => FileType::RegularFile,
            };
            if reply.add(self.fuse_ino(e.ino), e.offset, kind, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let i = self.ino(ino);
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        // In pieces, so that each one fits the resource groups it locks.
        let mut r = Ok(());
        let mut at = offset;
        let end = offset.saturating_add(length);
        while at < end && r.is_ok() {
            let n = (end - at).min(FALLOCATE_CHUNK);
            r = self.run(exclusive(i, n / 4096 + 8), |fs| fs.fallocate(i, at, n, keep));
            at += n;
        }
        Self::empty(r, reply);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let i = self.ino(ino);
        Self::empty(self.run(exclusive(i, 2), |fs| fs.setxattr(i, name.as_bytes(), value, flags)), reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let i = self.ino(ino);
        xattr_reply(self.run(shared(i), |fs| fs.getxattr(i, name.as_bytes())), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let i = self.ino(ino);
        xattr_reply(self.run(shared(i), |fs| fs.listxattr(i)), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let i = self.ino(ino);
        Self::empty(self.run(exclusive(i, 2), |fs| fs.removexattr(i, name.as_bytes())), reply);
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        Self::empty(self.run(no_locks, |fs| fs.sync()), reply);
    }

    /// The control ioctl of `gfs_grow` and `gfs_jadd` on the root directory (see
    /// [`crate::grow`]); anything else is not a gfs ioctl.
    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        if cmd != crate::grow::GFS_IOC_CTL || self.ino(ino) != self.root || out_size as usize != in_data.len() {
            return reply.error(Errno::ENOTTY);
        }
        let uid = req.uid();
        if let (Some(gl), Ok(crate::grow::CtlRequest::Glocks)) =
            (&self.glocks, crate::grow::CtlRequest::decode(in_data))
        {
            // gfs_tool glocks: no engine lock needed (up to ~100 lines fit the reply).
            let r = crate::grow::CtlReply { status: 0, message: gl.dump(100) };
            return reply.ioctl(0, &r.encode());
        }
        // gfs_grow / gfs_jadd: the layout, statfs and every resource group, exclusively.
        let plan = |fs: &mut Fs, h: &HeldLocks, n: &mut Need| {
            n.lock(h, LockKey::Layout, Want::Ex);
            n.lock(h, LockKey::Statfs, Want::Ex);
            for i in 0..fs.rgrp_count() {
                n.lock(h, LockKey::Rgrp(i), Want::Ex);
            }
            Ok(())
        };
        match self.run(plan, |fs| {
            let out = crate::grow::serve(fs, uid, in_data);
            // Everything home before other nodes read the new layout.
            fs.write_back()?;
            Ok(out)
        }) {
            Ok(out) => reply.ioctl(0, &out),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.run(no_locks, |fs| if fs.clustered() { fs.statfs_cluster() } else { fs.statfs() }) {
            Ok(s) => reply.statfs(s.total, s.free, s.free, s.dinodes + s.free, s.free, 4096, 255, 4096),
            Err(e) => reply.error(e),
        }
    }
}
