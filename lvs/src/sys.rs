//! The two syscalls the data plane needs that std and tokio do not wrap: `pipe2` and
//! `splice`, for moving bulk data socket → pipe → socket without copying it through user
//! space. This is the only module of the crate with `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Capacity asked for each pipe (the default 64 KiB caps one splice at 16 pages).
const PIPE_SIZE: libc::c_int = 256 * 1024;

/// A non-blocking pipe.
#[derive(Debug)]
pub struct Pipe {
    /// Read end.
    pub r: OwnedFd,
    /// Write end.
    pub w: OwnedFd,
}

impl Pipe {
    /// A new non-blocking, close-on-exec pipe of [`PIPE_SIZE`] (or the default size when
    /// the system refuses to grow it).
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two ints, which pipe2 fills in.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are open and nothing else owns them.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ on an open pipe descriptor with an int argument; failure
        // (above pipe-max-size) leaves the pipe as it was, which is fine.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Pipe { r, w })
    }

    /// Bytes this pipe can hold.
    pub fn capacity(&self) -> usize {
        // SAFETY: F_GETPIPE_SZ on an open pipe descriptor takes no argument.
        let n = unsafe { libc::fcntl(self.w.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if n > 0 {
            n as usize
        } else {
            64 * 1024
        }
    }
}

/// `splice(from, NULL, to, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)`: moves up to
/// `len` bytes between a socket and a pipe. Ok(0) means end of file on `from`.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: a plain syscall on descriptors the caller keeps open for the duration; null
    // offsets are required for sockets and pipes (they have no file position).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
