//! The FUSE front end: every request runs against the [`Fs`] engine under one mutex. A
//! background thread commits the running transaction every 5 seconds (and requests that dirty
//! many blocks commit at once); fsync and fsyncdir commit before they answer.

use crate::format::Timestamp;
use crate::fs::{Attr, Fs, FsError, SetAttr};
use crate::glock::Glocks;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
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
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_all();
        let glocks = self.glocks.lock().expect("glocks mutex").take();
        let mut g = self.fs.lock().expect("fs mutex");
        let r = match g.take() {
            Some(mut fs) => {
                // The unmount writes (statfs, checkpoint) need the glock.
                let r = match &glocks {
                    Some(gl) if !gl.held() => match gl.acquire() {
                        Ok(free) => fs.after_glock(&free),
                        Err(e) => Err(FsError::Journal(e.to_string())),
                    },
                    _ => Ok(()),
                };
                r.and_then(|()| fs.unmount())
            }
            None => Ok(()),
        };
        drop(g);
        if let Some(gl) = glocks {
            if let Ok(gl) = Arc::try_unwrap(gl) {
                gl.shutdown();
            }
        }
        r
    }
}

/// The FUSE filesystem.
#[derive(Debug)]
pub struct GfsFuse {
    shared: Arc<Shared>,
    root: u64,
    glocks: Option<Arc<Glocks>>,
    /// How long the kernel may cache names and attributes (zero with cluster locking).
    ttl: Duration,
    /// Open flags: direct I/O with cluster locking (no page cache to invalidate).
    open_flags: FopenFlags,
}

impl GfsFuse {
    /// Wraps a mounted engine and starts the committer thread; with `glocks` (lock_dlm)
    /// every request runs under the cluster-wide glock.
    pub fn new(fs: Fs, glocks: Option<Glocks>) -> (GfsFuse, Arc<Shared>) {
        let root = fs.root();
        let glocks = glocks.map(Arc::new);
        let shared = Arc::new(Shared {
            fs: Mutex::new(Some(fs)),
            glocks: Mutex::new(glocks.clone()),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
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
            let weak = Arc::downgrade(&shared);
            gl.on_demote(Box::new(move |held| {
                if let Some(s) = weak.upgrade() {
                    let mut g = s.fs.lock().expect("fs mutex");
                    if let Some(fs) = g.as_mut() {
                        if let Err(e) = fs.release_for_glock() {
                            tracing::error!(error = %e, "write-back before releasing the glock failed");
                        }
                    }
                    held.store(false, Ordering::SeqCst);
                } else {
                    held.store(false, Ordering::SeqCst);
                }
            }));
        }
        // Nothing is buffered per open file, so close needs no FLUSH request.
        let (ttl, open_flags) = if glocks.is_some() {
            (Duration::ZERO, FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH)
        } else {
            // lock_nolock: this mount is the only writer; the page cache stays valid.
            (TTL, FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH)
        };
        (GfsFuse { shared: shared.clone(), root, glocks, ttl, open_flags }, shared)
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

    fn with<T>(&self, f: impl FnOnce(&mut Fs) -> Result<T, FsError>) -> Result<T, Errno> {
        let mut g = self.shared.fs.lock().expect("fs mutex");
        let fs = g.as_mut().ok_or(Errno::EIO)?;
        if let Some(gl) = &self.glocks {
            if !gl.held() {
                let free = gl.acquire().map_err(|e| {
                    tracing::error!(error = %e, "cannot take the filesystem glock");
                    Errno::EIO
                })?;
                fs.after_glock(&free).map_err(|e| {
                    tracing::error!(error = %e, "cannot refresh after taking the glock");
                    Errno::EIO
                })?;
            }
        }
        let r = f(fs);
        if fs.dirty_blocks() >= COMMIT_BLOCKS {
            if let Err(e) = fs.commit() {
                tracing::error!(error = %e, "commit failed");
                return Err(Errno::EIO);
            }
        }
        r.map_err(|e| {
            if matches!(e, FsError::Device(_) | FsError::Corrupt(_) | FsError::Journal(_)) {
                tracing::error!(error = %e, "I/O error");
            }
            Errno::from_i32(e.errno())
        })
    }

    fn attr(&self, a: &Attr) -> FileAttr {
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
            Ok(a) => reply.entry(&self.ttl, &self.attr(&a), Generation(a.generation)),
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

impl Filesystem for GfsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.shared.shutdown() {
            tracing::error!(error = %e, "unmount failed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let p = self.ino(parent);
        match self.with(|fs| fs.lookup(p, name.as_bytes())) {
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
                reply.entry(&self.ttl, &a, Generation(0));
            }
            r => self.entry(r, reply),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let i = self.ino(ino);
        match self.with(|fs| fs.getattr(i)) {
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
        let r = self.with(|fs| {
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
        match self.with(|fs| fs.readlink(i)) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let p = self.ino(parent);
        let (uid, gid) = (req.uid(), req.gid());
        let r = self.with(|fs| {
            let (gid, _) = new_gid(fs, p, gid)?;
            let mode = if mode & libc::S_IFMT == 0 { mode | libc::S_IFREG } else { mode };
            fs.mknod(p, name.as_bytes(), mode & !(umask & 0o777), uid, gid, rdev)
        });
        self.entry(r, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let p = self.ino(parent);
        let (uid, gid) = (req.uid(), req.gid());
        let r = self.with(|fs| {
            let (gid, inherit) = new_gid(fs, p, gid)?;
            let mode = (mode & !umask & 0o7777) | if inherit { libc::S_ISGID } else { 0 };
            fs.mkdir(p, name.as_bytes(), mode, uid, gid)
        });
        self.entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = self.ino(parent);
        Self::empty(self.with(|fs| fs.unlink(p, name.as_bytes())), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = self.ino(parent);
        Self::empty(self.with(|fs| fs.rmdir(p, name.as_bytes())), reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let p = self.ino(parent);
        let (uid, gid) = (req.uid(), req.gid());
        let r = self.with(|fs| {
            let (gid, _) = new_gid(fs, p, gid)?;
            fs.symlink(p, link_name.as_bytes(), target.as_os_str().as_bytes(), uid, gid)
        });
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
        let r = self.with(|fs| {
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
        self.entry(self.with(|fs| fs.link(i, np, newname.as_bytes())), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let i = self.ino(ino);
        match self.with(|fs| {
            fs.getattr(i)?;
            fs.open_inode(i);
            Ok(())
        }) {
            Ok(()) => reply.opened(FileHandle(0), self.open_flags),
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
        let r = self.with(|fs| {
            let (gid, _) = new_gid(fs, p, gid)?;
            let mode = if mode & libc::S_IFMT == 0 { mode | libc::S_IFREG } else { mode };
            let a = fs.mknod(p, name.as_bytes(), mode & !(umask & 0o777), uid, gid, 0)?;
            fs.open_inode(a.ino);
            Ok(a)
        });
        match r {
            Ok(a) => reply.created(&self.ttl, &self.attr(&a), Generation(a.generation), FileHandle(0), self.open_flags),
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
        match self.with(|fs| fs.read(i, offset, size as usize)) {
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
        let r = self.with(|fs| {
            // A write by anyone clears setuid (and setgid with group execute).
            let a = fs.getattr(i)?;
            if a.mode & libc::S_ISUID != 0 || a.mode & (libc::S_ISGID | 0o010) == (libc::S_ISGID | 0o010) {
                fs.setattr(
                    i,
                    &SetAttr { mode: Some(a.mode & !(libc::S_ISUID | libc::S_ISGID) & 0o7777), ..Default::default() },
                )?;
            }
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

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let i = self.ino(ino);
        Self::empty(self.with(|fs| fs.release_inode(i)), reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        Self::empty(self.with(|fs| fs.sync()), reply);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let i = self.ino(ino);
        let r = self.with(|fs| {
            let parent = fs.lookup(i, b"..")?.ino;
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
        Self::empty(self.with(|fs| fs.fallocate(i, offset, length, keep)), reply);
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
        Self::empty(self.with(|fs| fs.setxattr(i, name.as_bytes(), value, flags)), reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let i = self.ino(ino);
        xattr_reply(self.with(|fs| fs.getxattr(i, name.as_bytes())), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let i = self.ino(ino);
        xattr_reply(self.with(|fs| fs.listxattr(i)), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let i = self.ino(ino);
        Self::empty(self.with(|fs| fs.removexattr(i, name.as_bytes())), reply);
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        Self::empty(self.with(|fs| fs.sync()), reply);
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
        match self.with(|fs| Ok(crate::grow::serve(fs, uid, in_data))) {
            Ok(out) => reply.ioctl(0, &out),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.with(|fs| fs.statfs()) {
            Ok(s) => reply.statfs(s.total, s.free, s.free, s.dinodes + s.free, s.free, 4096, 255, 4096),
            Err(e) => reply.error(e),
        }
    }
}
