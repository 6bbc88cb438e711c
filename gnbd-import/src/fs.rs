//! The FUSE side of a device process: a one-file filesystem whose file is the device.
//!
//! The mount holds a single regular file, `device`, as large as the [`Backend`] (a gnbd
//! export, or any `blockdev::Device`). Every FUSE request on it becomes a backend call,
//! started on the tokio runtime and answered from there, so the kernel can keep many
//! requests in flight (loop devices in direct-I/O
//! mode submit asynchronous direct I/O; `FUSE_ASYNC_DIO` and a raised background limit let
//! it reach the backend undiluted). The file is opened with `FOPEN_DIRECT_IO`: the importing
//! node keeps no page cache of a device other nodes may be writing.
//!
//! | FUSE request | backend call | NBD request (gnbd export) |
//! |---|---|---|
//! | read | `read` | `NBD_CMD_READ` (split by the client above the server's maximum) |
//! | write (with `O_SYNC`/`O_DSYNC`: FUA) | `write` | `NBD_CMD_WRITE` |
//! | fsync, fdatasync | `flush` | `NBD_CMD_FLUSH` |
//! | fallocate `PUNCH_HOLE` | `trim` | `NBD_CMD_TRIM` |
//! | fallocate `ZERO_RANGE` | `write_zeroes` | `NBD_CMD_WRITE_ZEROES` |

use crate::backend::{Backend, BackendError};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::runtime::Handle;

/// Name of the one file in the mount.
pub const DEVICE_FILE: &str = "device";

const FILE_INO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(3600);
/// Requests the kernel may have outstanding on the connection at once (FUSE's default is
/// 12, which would cap a queue depth of 32 far below the device's).
const MAX_BACKGROUND: u16 = 256;
/// The kernel's cap on one request here (`fs.fuse.max_pages_limit` = 256 pages).
const MAX_WRITE: u32 = 1 << 20;

/// Counters the device process reports in `gnbd_import -l`.
#[derive(Debug, Default)]
pub struct IoStats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub trims: AtomicU64,
    pub errors: AtomicU64,
}

/// The filesystem: one file backed by `backend`.
#[derive(Debug)]
pub struct DeviceFs<B> {
    backend: Arc<B>,
    rt: Handle,
    size: u64,
    read_only: bool,
    created: SystemTime,
    stats: Arc<IoStats>,
}

impl<B: Backend> DeviceFs<B> {
    /// Serves `backend` through requests spawned on `rt`; read-only when asked or when the
    /// backend is.
    pub fn new(backend: Arc<B>, rt: Handle, read_only: bool, stats: Arc<IoStats>) -> Self {
        let size = backend.size();
        let read_only = read_only || backend.read_only();
        Self { backend, rt, size, read_only, created: SystemTime::now(), stats }
    }

    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == FILE_INO {
            (FileType::RegularFile, if self.read_only { 0o400 } else { 0o600 }, self.size, 1)
        } else {
            (FileType::Directory, 0o700, 0, 2)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Clamps `[offset, offset + len)` to the export; `None` when it starts at or past the end.
    fn clamp(&self, offset: u64, len: u64) -> Option<u64> {
        (offset < self.size).then(|| len.min(self.size - offset))
    }
}

fn fail(stats: &IoStats, e: &impl BackendError) -> Errno {
    stats.errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(error = %e, "request failed");
    Errno::from_i32(e.errno())
}

fn errno_ok(r: Result<(), impl BackendError>, stats: &IoStats, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(stats, &e)),
    }
}

impl<B: Backend> Filesystem for DeviceFs<B> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_ASYNC_DIO | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        let _ = config.set_max_readahead(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == DEVICE_FILE {
            reply.entry(&TTL, &self.attr(FILE_INO), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT || ino == FILE_INO {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
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
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // A device has a fixed size and owner: accept only no-op changes (timestamps, which
        // `touch` and some tools set, are ignored).
        if size.is_some_and(|s| s != self.size) {
            return reply.error(Errno::EPERM);
        }
        if mode.is_some() || uid.is_some_and(|u| u != 0) || gid.is_some_and(|g| g != 0) {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &self.attr(ino));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if writing && self.read_only {
            return reply.error(Errno::EROFS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(len) = self.clamp(offset, size as u64) else {
            return reply.data(&[]);
        };
        let backend = self.backend.clone();
        let stats = self.stats.clone();
        self.rt.spawn(async move {
            stats.reads.fetch_add(1, Ordering::Relaxed);
            match backend.read(offset, len as usize).await {
                Ok(data) => {
                    reply.data(data.as_ref());
                    backend.recycle(data);
                }
                Err(e) => reply.error(fail(&stats, &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.read_only {
            return reply.error(Errno::EROFS);
        }
        let Some(len) = self.clamp(offset, data.len() as u64) else {
            return reply.error(Errno::ENOSPC);
        };
        if len < data.len() as u64 {
            // Like a block device: a write that runs past the end is refused whole.
            return reply.error(Errno::ENOSPC);
        }
        let fua = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let data: Arc<[u8]> = Arc::from(data);
        let backend = self.backend.clone();
        let stats = self.stats.clone();
        self.rt.spawn(async move {
            stats.writes.fetch_add(1, Ordering::Relaxed);
            let len = data.len() as u32;
            match backend.write(offset, data, fua).await {
                Ok(()) => reply.written(len),
                Err(e) => reply.error(fail(&stats, &e)),
            }
        });
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2): nothing is buffered here (every write was answered by the backend).
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let backend = self.backend.clone();
        let stats = self.stats.clone();
        self.rt.spawn(async move {
            stats.flushes.fetch_add(1, Ordering::Relaxed);
            errno_ok(backend.flush().await, &stats, reply);
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if self.read_only {
            return reply.error(Errno::EROFS);
        }
        let Some(len) = self.clamp(offset, length) else {
            // Nothing of the range lies inside the device.
            return if mode & libc::FALLOC_FL_KEEP_SIZE != 0 { reply.ok() } else { reply.error(Errno::EPERM) };
        };
        let backend = self.backend.clone();
        let stats = self.stats.clone();
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            self.rt.spawn(async move {
                stats.trims.fetch_add(1, Ordering::Relaxed);
                errno_ok(backend.trim(offset, len).await, &stats, reply);
            });
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            self.rt.spawn(async move {
                stats.writes.fetch_add(1, Ordering::Relaxed);
                errno_ok(backend.write_zeroes(offset, len).await, &stats, reply);
            });
        } else if mode & !libc::FALLOC_FL_KEEP_SIZE == 0 && len == length {
            // Plain allocation inside the device: the blocks exist already.
            reply.ok();
        } else {
            reply.error(Errno::EOPNOTSUPP);
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, DEVICE_FILE),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.size / 4096;
        reply.statfs(blocks, 0, 0, 2, 0, 4096, 255, 4096);
    }
}
