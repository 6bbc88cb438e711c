//! Everything that needs `unsafe`: io_uring, aligned buffers and the few raw syscalls std does
//! not wrap (eventfd, lseek SEEK_DATA/SEEK_HOLE, shutdown on a raw fd, SIGPIPE, keepalive, poll).
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

/// Ignores SIGPIPE: a vanished client must give EPIPE, not kill the server.
pub fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN is always sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
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
