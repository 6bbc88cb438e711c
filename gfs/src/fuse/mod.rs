//! The FUSE front end: every request runs against the [`Fs`] engine under one mutex. A
//! background thread commits the running transaction every 5 seconds (and requests that dirty
//! many blocks commit at once); fsync and fsyncdir commit before they answer.
//!
//! With lock_dlm every request first takes the glocks it needs ([`Shared::op`]): a *plan*
//! names them step by step (it may read only what the glocks it already holds cover, e.g.
//! look a name up in a directory held to find the inode to lock next), the glocks are taken
//! in lock order outside the engine's mutex, and the request runs once the plan is covered.
//!
//! - this module: the shared state ([`Shared`]: engine, committer, unmount), the glocks'
//!   hooks and the [`GfsFuse`] glue (inode numbers, attribute and entry replies);
//! - `plan`: request planning ([`Need`], one plan per kind of request, taking the glocks in
//!   order, re-planning);
//! - `cache`: what the kernel caches on a lock_dlm mount, and taking it back;
//! - `ops`: the operations (the `fuser::Filesystem` implementation).

mod cache;
mod ops;
mod plan;

pub use plan::Need;

use crate::format::Timestamp;
use crate::fs::{Attr, Fs, FsError, LockKey};
use crate::glock::{GlockHooks, Glocks, HeldLocks, Want};
use cache::KernelCache;
use fuser::{Errno, FileAttr, FileType, FopenFlags, Generation, INodeNo, ReplyEmpty, ReplyEntry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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
            kernel: KernelCache::new(root),
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

fn systime(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec.min(999_999_999))
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}
