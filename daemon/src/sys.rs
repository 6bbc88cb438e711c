//! Every `unsafe` call of the toolkit: a new session, pointing a standard descriptor at a
//! file, and the signal handler that turns signals into bytes on a pipe.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// setsid(2): leaves the controlling terminal and the parent's process group.
pub(crate) fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    cvt(unsafe { libc::setsid() }).map(|_| ())
}

/// dup2(2) of `file` onto the standard descriptor `target` (0, 1 or 2).
pub(crate) fn redirect(file: &impl AsRawFd, target: RawFd) -> io::Result<()> {
    debug_assert!((0..=2).contains(&target));
    // SAFETY: both descriptors are open (the source is borrowed for the call); dup2 onto a
    // standard descriptor replaces it atomically and Rust's std handles keep no state about
    // what the descriptor points at.
    cvt(unsafe { libc::dup2(file.as_raw_fd(), target) }).map(|_| ())
}

/// Write end of the self-pipe the signal handler writes to (-1 until installed).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives across the call. The pipe is
        // non-blocking, so a full pipe drops the byte instead of blocking the handler (the
        // reader is then far behind and has bytes of its own to process).
        let _ = unsafe { libc::write(fd, std::ptr::addr_of!(b).cast(), 1) };
    }
}

/// Routes `signals` to `pipe_fd` (one byte, the signal number, per delivery) with
/// SA_RESTART, so no default action (termination, for SIGHUP) ever runs.
pub(crate) fn install_signal_pipe(pipe_fd: RawFd, signals: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller keeps open for the life of the process.
    let flags = cvt(unsafe { libc::fcntl(pipe_fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(pipe_fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    SIGNAL_PIPE.store(pipe_fd, Ordering::SeqCst);
    for &sig in signals {
        // SAFETY: sigaction is plain data; zeroed is a valid initial value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: valid pointer to a local set.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: valid sigaction pointers; the handler only calls write(2), which is
        // async-signal-safe, and reads an atomic.
        cvt(unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) })?;
    }
    // Unblock them in this thread (a caller may have inherited a blocked mask).
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local set.
    unsafe { libc::sigemptyset(&mut set) };
    for &sig in signals {
        // SAFETY: as above.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: valid set pointer; the old mask is not requested.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}
