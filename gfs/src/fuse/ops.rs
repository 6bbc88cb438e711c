//! The operations: the `fuser::Filesystem` implementation, each request as a plan (see
//! `plan`) and the engine call it runs, with the reply helpers it needs.

use super::plan::{exclusive, lookup_plan, no_locks, remove_plan, rename_plan, shared, Need, NAMESPACE_ALLOC};
use super::GfsFuse;
use crate::format::Timestamp;
use crate::fs::{Attr, Fs, FsError, LockKey, SetAttr};
use crate::glock::{HeldLocks, RangeLock, Want};
use fuser::{
    Errno, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{SystemTime, UNIX_EPOCH};

/// The getxattr/listxattr protocol: size 0 asks for the length; too small a buffer is ERANGE.
fn xattr_reply(r: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
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

/// fallocate runs in pieces of this many bytes (each locks its own resource groups).
const FALLOCATE_CHUNK: u64 = 64 << 20;

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
