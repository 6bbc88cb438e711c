//! The few raw syscalls the harness needs, fenced in one module.
//!
//! Everything here is a thin, safe wrapper over one libc call: signal flags for a clean
//! shutdown, child-reaping helpers (the bench is a subreaper so that a daemonizing peer such
//! as nbd-server stays reapable), `statfs` to refuse tmpfs, and page-cache writeback and
//! dropping.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// The last terminating signal received (SIGINT, SIGTERM or SIGHUP), 0 if none.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Catch SIGINT, SIGTERM and SIGHUP into a flag that every wait loop polls, so that an
/// interrupted run unwinds through the `Drop` guards and kills its children.
pub fn install_stop_handlers() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // performs an atomic store, which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The terminating signal received so far, if any.
pub fn stop_signal() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Become a child subreaper: orphaned descendants (nbd-server's daemon and its per-connection
/// processes) are re-parented to us instead of init, so we can signal and reap them.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer argument, no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make the child get SIGKILL if the bench dies without running its destructors (kill -9).
/// Spawn only from the main thread: the signal fires when the spawning thread exits.
pub fn kill_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Send `sig` to process `pid`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill takes plain integers; pid > 0 so it targets exactly one process.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reap `pid` if it has exited: `Ok(Some(raw wait status))`, `Ok(None)` if still running.
pub fn try_reap(pid: i32) -> io::Result<Option<i32>> {
    if pid <= 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut status: libc::c_int = 0;
    // SAFETY: status is a valid, writable c_int; pid > 0 so only that child is waited for.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match rc {
        0 => Ok(None),
        r if r == pid => Ok(Some(status)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Filesystem facts about the directory holding the backing file.
#[derive(Debug, Clone, Copy)]
pub struct FsInfo {
    pub is_tmpfs: bool,
    pub avail_bytes: u64,
}

/// `statfs(2)` on `path`.
pub fn fs_info(path: &Path) -> io::Result<FsInfo> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: zeroed statfs is a valid buffer; c is a NUL-terminated path that outlives the
    // call.
    let (rc, st) = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        let rc = libc::statfs(c.as_ptr(), &mut st);
        (rc, st)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The field types differ between libcs and architectures.
    #[allow(clippy::unnecessary_cast)]
    let (magic, avail) = (st.f_type as i64, (st.f_bavail as u64).saturating_mul(st.f_bsize as u64));
    Ok(FsInfo { is_tmpfs: magic == TMPFS_MAGIC || magic == RAMFS_MAGIC, avail_bytes: avail })
}

/// Write back every dirty page (`sync(2)`).
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Write back dirty pages, then ask the kernel to drop the clean page cache
/// (`echo 1 > /proc/sys/vm/drop_caches`). Dropping clean pages loses no data. Returns false
/// when not permitted (not root, read-only /proc in a container).
pub fn drop_page_cache() -> bool {
    sync();
    std::fs::write("/proc/sys/vm/drop_caches", b"1\n").is_ok()
}
