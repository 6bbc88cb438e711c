//! The one place gfs calls into the kernel with `unsafe`: the control ioctl `gfs_grow` and
//! `gfs_jadd` send to a mount point (see [`crate::grow`]), and the lazy unmount of a stop request.

use std::os::fd::AsRawFd;

/// Issues ioctl `cmd` on `file` with `buf` as its argument: the kernel copies `buf` in and
/// the answer back over it. `cmd` must encode `buf.len()` as its size (`_IOWR`), which the
/// assertion holds it to.
pub(crate) fn ioctl_rw(file: &std::fs::File, cmd: u32, buf: &mut [u8]) -> std::io::Result<()> {
    assert_eq!(((cmd >> 16) & 0x3fff) as usize, buf.len(), "ioctl size must match the buffer");
    assert_eq!(cmd >> 30, 3, "a read-write ioctl");
    // SAFETY: `file` is an open descriptor for the duration of the call; `buf` is a valid,
    // exclusively borrowed buffer of exactly the size `cmd` encodes (asserted above), so the
    // kernel reads and writes only inside it.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), cmd as libc::Ioctl, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// umount2(2) with MNT_DETACH: the mount leaves the namespace now and goes away when its
/// last user is gone (a stop request while files are open).
pub(crate) fn lazy_unmount(mountpoint: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "mount point contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
