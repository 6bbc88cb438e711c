//! Block devices: a file or block device (pread/pwrite/fdatasync), or a gnbd export reached
//! through `gnbd_client` (`gnbd://SERVER[:PORT]/NAME`), and a fault-injecting wrapper for
//! crash tests.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Why device I/O failed.
#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("cannot open {spec}: {source}")]
    Open { spec: String, source: std::io::Error },
    #[error("cannot connect to {spec}: {reason}")]
    Connect { spec: String, reason: String },
    #[error("bad device name {spec:?}: {reason}")]
    BadSpec { spec: String, reason: &'static str },
    #[error("bad server in {spec:?}: {reason}")]
    BadServer { spec: String, reason: String },
    #[error("I/O error at byte {offset}: {source}")]
    Io { offset: u64, source: std::io::Error },
    #[error("gnbd request at byte {offset} failed: {reason}")]
    Remote { offset: u64, reason: String },
    #[error("the device is in use by another mount on this host")]
    Busy,
    #[error("access at byte {offset} length {len} is past the end of the device ({size} bytes)")]
    OutOfRange { offset: u64, len: usize, size: u64 },
}

/// A device the filesystem lives on.
pub trait Device: Send + Sync + std::fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Looks at the size again (the device may have grown since it was opened: a longer
    /// file, a resized block device) and returns it; `size` answers with it from then on.
    /// Devices whose size cannot change under them return `size`.
    fn refresh_size(&self) -> Result<u64, DeviceError> {
        Ok(self.size())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError>;
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError>;
    /// Makes every completed write stable.
    fn sync(&self) -> Result<(), DeviceError>;
    /// Takes this host's claim on the device for a mount (held until the device is dropped):
    /// exclusive, or `shared` (lock_dlm mounts of several nodes on one host), waiting up to
    /// `wait` for a conflicting holder (e.g. a mount process still finishing its unmount).
    /// No-op where there is nothing to lock.
    fn claim(&self, wait: std::time::Duration, shared: bool) -> Result<(), DeviceError> {
        let _ = (wait, shared);
        Ok(())
    }
    /// The asynchronous client behind a `gnbd://` device, for callers that can keep many
    /// requests in flight without a thread each (None for every other device).
    fn gnbd_client(&self) -> Option<&gnbd_client::Client> {
        None
    }
}

fn check_range(offset: u64, len: usize, size: u64) -> Result<(), DeviceError> {
    if offset.checked_add(len as u64).is_none_or(|end| end > size) {
        return Err(DeviceError::OutOfRange { offset, len, size });
    }
    Ok(())
}

/// A regular file or a block device.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    size: AtomicU64,
}

impl FileDevice {
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, DeviceError> {
        let path = path.into();
        let spec = path.display().to_string();
        // Read-write; a device this process may only read (a read-only medium, a mounted
        // disk the kernel keeps to itself) is opened read-only: its writes fail.
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            // EPERM, EACCES, EROFS.
            Err(e) if matches!(e.raw_os_error(), Some(1 | 13 | 30)) => OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(|_| DeviceError::Open { spec: spec.clone(), source: e })?,
            Err(source) => return Err(DeviceError::Open { spec, source }),
        };
        let size = Self::end_of(&file).map_err(|source| DeviceError::Open { spec, source })?;
        Ok(FileDevice { file, size: AtomicU64::new(size) })
    }

    /// The size of a regular file or a block device (seeking to the end works for both).
    fn end_of(file: &File) -> std::io::Result<u64> {
        use std::io::{Seek, SeekFrom};
        let mut f = file;
        f.seek(SeekFrom::End(0))
    }
}

impl Device for FileDevice {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }
    fn refresh_size(&self) -> Result<u64, DeviceError> {
        let size = Self::end_of(&self.file).map_err(|source| DeviceError::Io { offset: 0, source })?;
        self.size.store(size, Ordering::Relaxed);
        Ok(size)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        check_range(offset, buf.len(), self.size())?;
        self.file.read_exact_at(buf, offset).map_err(|source| DeviceError::Io { offset, source })
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
        check_range(offset, buf.len(), self.size())?;
        self.file.write_all_at(buf, offset).map_err(|source| DeviceError::Io { offset, source })
    }
    fn sync(&self) -> Result<(), DeviceError> {
        self.file.sync_data().map_err(|source| DeviceError::Io { offset: 0, source })
    }
    fn claim(&self, wait: std::time::Duration, shared: bool) -> Result<(), DeviceError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let r = if shared { self.file.try_lock_shared() } else { self.file.try_lock() };
            match r {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(DeviceError::Busy),
                Err(std::fs::TryLockError::Error(source)) => return Err(DeviceError::Io { offset: 0, source }),
            }
        }
    }
}

/// Connections a [`GnbdDevice`] opens when the server offers multi-conn (gnbd_import's
/// default too).
pub const GNBD_CONNECTIONS: usize = 4;

/// A gnbd (NBD) export used directly through the client library.
#[derive(Debug)]
pub struct GnbdDevice {
    rt: tokio::runtime::Runtime,
    client: gnbd_client::Client,
}

/// `gnbd://SERVER[:PORT]/NAME` as (`host:port` to connect to, export name); SERVER may be a
/// name, an IPv4 address or an IPv6 address in brackets.
fn parse_gnbd_spec(spec: &str) -> Result<(String, &str), DeviceError> {
    let rest = spec
        .strip_prefix("gnbd://")
        .ok_or(DeviceError::BadSpec { spec: spec.into(), reason: "expected gnbd://SERVER[:PORT]/NAME" })?;
    let (host, name) = rest
        .split_once('/')
        .ok_or(DeviceError::BadSpec { spec: spec.into(), reason: "missing /NAME after the server" })?;
    if host.is_empty() || name.is_empty() {
        return Err(DeviceError::BadSpec { spec: spec.into(), reason: "empty server or export name" });
    }
    let addr = gnbd_net::addr::with_default_port(host, 10809)
        .map_err(|e| DeviceError::BadServer { spec: spec.into(), reason: e.to_string() })?;
    Ok((addr, name))
}

impl GnbdDevice {
    /// Connects to `gnbd://SERVER[:PORT]/NAME` (port 10809 if not given); requests wait for
    /// an unreachable server forever (reconnecting and resubmitting).
    pub fn connect(spec: &str) -> Result<Self, DeviceError> {
        Self::connect_with(spec, None)
    }

    /// As [`GnbdDevice::connect`]; with `io_timeout`, a request the server cannot answer for
    /// that long fails instead (GNBD's timeout mode: what a mirror leg needs, so that a dead
    /// server's leg is dropped rather than stalling the volume).
    pub fn connect_with(spec: &str, io_timeout: Option<std::time::Duration>) -> Result<Self, DeviceError> {
        let (addr, name) = parse_gnbd_spec(spec)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|source| DeviceError::Open { spec: spec.into(), source })?;
        let mut opts = gnbd_client::ClientOptions::new(addr, name);
        opts.io_timeout = io_timeout;
        // As gnbd_import's default: several connections when the server offers multi-conn,
        // so requests from many threads do not queue behind one socket.
        opts.connections = GNBD_CONNECTIONS;
        if let Some(t) = io_timeout {
            opts.connect_timeout = opts.connect_timeout.min(t);
        }
        let client = rt
            .block_on(gnbd_client::Client::connect(opts))
            .map_err(|e| DeviceError::Connect { spec: spec.into(), reason: e.to_string() })?;
        Ok(GnbdDevice { rt, client })
    }
}

impl Device for GnbdDevice {
    fn size(&self) -> u64 {
        self.client.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        check_range(offset, buf.len(), self.size())?;
        self.rt
            .block_on(self.client.read_into(offset, buf))
            .map_err(|e| DeviceError::Remote { offset, reason: e.to_string() })
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
        check_range(offset, buf.len(), self.size())?;
        self.rt
            .block_on(self.client.write(offset, buf, false))
            .map_err(|e| DeviceError::Remote { offset, reason: e.to_string() })
    }
    fn sync(&self) -> Result<(), DeviceError> {
        self.rt.block_on(self.client.flush()).map_err(|e| DeviceError::Remote { offset: 0, reason: e.to_string() })
    }
    fn gnbd_client(&self) -> Option<&gnbd_client::Client> {
        Some(&self.client)
    }
}

/// Opens a device by name: `gnbd://...` through the client library, anything else as a path.
pub fn open_device(spec: &str) -> Result<Arc<dyn Device>, DeviceError> {
    open_device_with(spec, None)
}

/// As [`open_device`], with an I/O timeout for `gnbd://` devices (see
/// [`GnbdDevice::connect_with`]).
pub fn open_device_with(
    spec: &str,
    gnbd_io_timeout: Option<std::time::Duration>,
) -> Result<Arc<dyn Device>, DeviceError> {
    if spec.starts_with("gnbd://") {
        Ok(Arc::new(GnbdDevice::connect_with(spec, gnbd_io_timeout)?))
    } else {
        Ok(Arc::new(FileDevice::open(spec)?))
    }
}

/// Fault injection for crash tests: passes the first `limit` writes through and silently
/// drops every later one (as if power was cut after the Nth write reached the disk).
#[derive(Debug)]
pub struct CutoffDevice {
    inner: Arc<dyn Device>,
    limit: u64,
    writes: AtomicU64,
}

impl CutoffDevice {
    pub fn new(inner: Arc<dyn Device>, limit: u64) -> Self {
        CutoffDevice { inner, limit, writes: AtomicU64::new(0) }
    }
    /// Writes seen so far (passed and dropped).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    /// Whether writes are being dropped.
    pub fn cut(&self) -> bool {
        self.writes() > self.limit
    }
}

impl Device for CutoffDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn refresh_size(&self) -> Result<u64, DeviceError> {
        self.inner.refresh_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        if n < self.limit {
            self.inner.write_at(buf, offset)
        } else {
            Ok(())
        }
    }
    fn sync(&self) -> Result<(), DeviceError> {
        if self.cut() {
            return Ok(());
        }
        self.inner.sync()
    }
    fn claim(&self, wait: std::time::Duration, shared: bool) -> Result<(), DeviceError> {
        self.inner.claim(wait, shared)
    }
}

/// A device in memory, for tests and fuzz targets across the workspace (test support, not
/// part of the supported API). Accesses past the end fail with [`DeviceError::OutOfRange`],
/// as on a file.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct MemDevice(pub Mutex<Vec<u8>>);

impl MemDevice {
    /// A device holding `image`.
    pub fn new(image: Vec<u8>) -> Self {
        MemDevice(Mutex::new(image))
    }
    /// A copy of what the device holds.
    pub fn image(&self) -> Vec<u8> {
        self.bytes().clone()
    }
    /// Makes the device `bytes` long (new bytes 0xa5), as a longer file or export would be.
    pub fn resize(&self, bytes: usize) {
        self.bytes().resize(bytes, 0xa5);
    }
    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().expect("a MemDevice user panicked while holding its lock")
    }
}

impl Device for MemDevice {
    fn size(&self) -> u64 {
        self.bytes().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        let v = self.bytes();
        check_range(offset, buf.len(), v.len() as u64)?;
        buf.copy_from_slice(&v[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
        let mut v = self.bytes();
        check_range(offset, buf.len(), v.len() as u64)?;
        v[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&self) -> Result<(), DeviceError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnbd_specs() {
        let ok = |s: &str| parse_gnbd_spec(s).map(|(a, n)| (a, n.to_string())).unwrap();
        assert_eq!(ok("gnbd://srv/disk"), ("srv:10809".into(), "disk".into()));
        assert_eq!(ok("gnbd://srv:99/disk"), ("srv:99".into(), "disk".into()));
        assert_eq!(ok("gnbd://[::1]/disk"), ("[::1]:10809".into(), "disk".into()));
        assert_eq!(ok("gnbd://[::1]:99/disk"), ("[::1]:99".into(), "disk".into()));
        assert_eq!(ok("gnbd://::1/disk"), ("[::1]:10809".into(), "disk".into()));
        for bad in ["srv/disk", "gnbd://srv", "gnbd:///disk", "gnbd://srv/", "gnbd://srv:x/d", "gnbd://[::1/d"] {
            assert!(parse_gnbd_spec(bad).is_err(), "{bad}");
        }
    }
}
