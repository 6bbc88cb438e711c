//! Everything that needs `unsafe`: io_uring, aligned buffers and the few raw syscalls std does
//! not wrap (eventfd, lseek SEEK_DATA/SEEK_HOLE, shutdown on a raw fd, signals, fork, flock).
//! The rest of the crate is safe code.

pub mod buf;
pub mod ring;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A non-blocking-free eventfd used to wake a worker's ring.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the returned descriptor.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter.
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64. A failure (counter overflow) cannot lose a
    // wake-up: the counter is already non-zero then.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Shuts a socket down by raw descriptor (`how` = libc::SHUT_RD / SHUT_RDWR). Used to cut a
/// connection owned by a worker thread from another thread.
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown(2) on a descriptor the caller knows is an open socket; errors are moot.
    unsafe { libc::shutdown(fd, how) };
}

/// `lseek(fd, offset, SEEK_DATA or SEEK_HOLE)`. `Ok(None)` when there is no such position
/// before the end (ENXIO).
pub fn seek(fd: &impl AsRawFd, offset: u64, hole: bool) -> io::Result<Option<u64>> {
    let whence = if hole { libc::SEEK_HOLE } else { libc::SEEK_DATA };
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain syscall on a descriptor the caller owns.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as u64))
}

/// Blocks the given signals in the calling thread (and threads it spawns later).
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local sigset.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    // SAFETY: valid set pointer; old set not requested.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(set)
}

/// Waits for one of the (blocked) signals in `set`.
pub fn wait_signal(set: &libc::sigset_t) -> libc::c_int {
    loop {
        let mut sig = 0;
        // SAFETY: valid pointers to a sigset and an int.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}

/// Ignores SIGPIPE: a vanished client must give EPIPE, not kill the server.
pub fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN is always sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Takes an exclusive, non-blocking flock on `file`. `Ok(false)` when someone else holds it.
pub fn try_lock(file: &std::fs::File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Result of [`fork`] as seen by each side.
#[derive(Debug)]
pub enum Forked {
    Parent { child: libc::pid_t },
    Child,
}

/// fork(2).
///
/// # Safety
///
/// The process must have a single thread: the child gets only the calling thread, so a lock
/// or allocator state held by any other thread at the moment of the fork would stay held
/// for ever in the child.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees there is only one thread, so the child is consistent.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent { child }),
    }
}

/// Detaches from the controlling terminal: new session, stdin from /dev/null, stdout and
/// stderr into `log`.
pub fn detach(log: &std::fs::File) -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    cvt(unsafe { libc::setsid() })?;
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto the standard descriptors, from descriptors we own.
    unsafe {
        cvt(libc::dup2(null.as_raw_fd(), 0))?;
        cvt(libc::dup2(log.as_raw_fd(), 1))?;
        cvt(libc::dup2(log.as_raw_fd(), 2))?;
    }
    Ok(())
}

/// Waits for a child and returns its exit code (128+signal when killed).
pub fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid with a valid pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// Turns on TCP keepalive with short timers (idle 30 s, then 3 probes 10 s apart), so a
/// client node that dies without closing its connections is noticed within about a minute.
pub fn set_keepalive(fd: &impl AsRawFd) {
    let set = |level, opt, val: libc::c_int| {
        // SAFETY: setsockopt with a pointer to a c_int and its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
}

/// Puts a descriptor into non-blocking mode.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; F_GETFL/F_SETFL take no pointers.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// One descriptor to wait on with [`poll`]; a descriptor with no interest is skipped.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub struct PollFd(libc::pollfd);

impl PollFd {
    pub fn new(fd: RawFd, read: bool, write: bool) -> PollFd {
        let mut events = 0;
        if read {
            events |= libc::POLLIN;
        }
        if write {
            events |= libc::POLLOUT;
        }
        // A negative descriptor is ignored by poll(2) (no POLLHUP spinning for idle ones).
        PollFd(libc::pollfd { fd: if events == 0 { -1 } else { fd }, events, revents: 0 })
    }
    pub fn readable(&self) -> bool {
        self.0.revents & (libc::POLLIN | libc::POLLHUP) != 0 && self.0.events & libc::POLLIN != 0
    }
    pub fn failed(&self) -> bool {
        self.0.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (EINTR counts as a timeout).
pub fn poll(fds: &mut [PollFd], timeout: std::time::Duration) -> io::Result<()> {
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: PollFd is #[repr(transparent)] over libc::pollfd; the pointer and length
    // describe the caller's live, exclusively borrowed slice for the duration of the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr().cast::<libc::pollfd>(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}
