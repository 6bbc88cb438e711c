//! What the FUSE file of a device process is served from: a [`Backend`].
//!
//! Two backends exist: a gnbd (NBD) export through [`gnbd_client::Client`] (asynchronous,
//! many requests in flight on its connections), and any [`blockdev::Device`] through
//! [`DeviceBackend`] (blocking calls run on tokio's blocking pool, so several requests
//! proceed at once). [`DeviceFs`](crate::DeviceFs) turns FUSE requests into backend calls,
//! each started on the tokio runtime and answered from there.
//!
//! | call | gnbd client | `blockdev::Device` |
//! |---|---|---|
//! | `read` | `NBD_CMD_READ` (buffer recycled after the reply) | `read_at` |
//! | `write` (`fua`) | `NBD_CMD_WRITE` without a copy (`NBD_CMD_FLAG_FUA`) | `write_at` (then `sync`) |
//! | `flush` | `NBD_CMD_FLUSH` | `sync` |
//! | `trim` | `NBD_CMD_TRIM` | zeros written |
//! | `write_zeroes` | `NBD_CMD_WRITE_ZEROES` | zeros written |
//!
//! Errors carry the errno the FUSE request fails with: the client's mapping of NBD errors
//! ([`ClientError::errno`]), `EIO` for every device error.

use blockdev::{Device, DeviceError};
use gnbd_client::{Client, ClientError, ConnectionState};
use std::future::Future;
use std::sync::Arc;

/// An error a backend call ends with: shown in the device process's log, answered to the
/// kernel as [`BackendError::errno`].
pub trait BackendError: std::fmt::Display + Send + 'static {
    /// The Linux errno the FUSE request fails with.
    fn errno(&self) -> i32;
}

impl BackendError for ClientError {
    fn errno(&self) -> i32 {
        ClientError::errno(self)
    }
}

impl BackendError for DeviceError {
    fn errno(&self) -> i32 {
        libc::EIO
    }
}

/// The state a backend reports in the control socket's `status` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `connected`, `reconnecting`, `failed: ...`, `closed` (a gnbd export); `active` (a
    /// local device).
    pub state: String,
    /// Connections re-established (0 for a local device).
    pub reconnects: u64,
    /// Requests sent again after a reconnection.
    pub resubmitted: u64,
}

/// Block storage a device process serves as its FUSE file.
///
/// Every call returns a future that [`DeviceFs`](crate::DeviceFs) spawns on the device
/// process's tokio runtime, so a backend should start its work without blocking the calling
/// thread (use `tokio::task::spawn_blocking` for blocking I/O, as [`DeviceBackend`] does).
/// Ranges are checked against [`Backend::size`] before a call.
pub trait Backend: Send + Sync + 'static {
    /// The buffer a read returns (handed back through [`Backend::recycle`] once answered).
    type Buf: AsRef<[u8]> + Send + 'static;
    type Error: BackendError;

    /// Size in bytes (fixed for the life of the mount).
    fn size(&self) -> u64;
    /// Whether the storage refuses writes (the mount is then read-only whatever was asked).
    fn read_only(&self) -> bool;
    /// Reads `len` bytes at `offset`.
    fn read(&self, offset: u64, len: usize) -> impl Future<Output = Result<Self::Buf, Self::Error>> + Send;
    /// Takes back the buffer of an answered read for reuse (optional).
    fn recycle(&self, buf: Self::Buf) {
        drop(buf);
    }
    /// Writes `data` at `offset`; with `fua` the data is on stable storage on completion.
    fn write(&self, offset: u64, data: Arc<[u8]>, fua: bool) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Makes every completed write stable.
    fn flush(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Discards `len` bytes at `offset` (reads of the range return zeros afterwards, as
    /// after `fallocate(PUNCH_HOLE)`).
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Writes `len` zero bytes at `offset`.
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// The state for `status` requests.
    fn health(&self) -> Health {
        Health { state: "active".into(), reconnects: 0, resubmitted: 0 }
    }
    /// Called once, when the device is gone (loop device detached, FUSE unmounted) and the
    /// last reference to the backend is the caller's: closes connections in order.
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

impl Backend for Client {
    type Buf = Vec<u8>;
    type Error = ClientError;

    fn size(&self) -> u64 {
        Client::size(self)
    }
    fn read_only(&self) -> bool {
        self.flags() & nbd_proto::consts::NBD_FLAG_READ_ONLY != 0
    }
    fn read(&self, offset: u64, len: usize) -> impl Future<Output = Result<Vec<u8>, ClientError>> + Send {
        Client::read(self, offset, len)
    }
    fn recycle(&self, buf: Vec<u8>) {
        Client::recycle(self, buf);
    }
    fn write(&self, offset: u64, data: Arc<[u8]>, fua: bool) -> impl Future<Output = Result<(), ClientError>> + Send {
        self.write_shared(offset, data, fua)
    }
    fn flush(&self) -> impl Future<Output = Result<(), ClientError>> + Send {
        Client::flush(self)
    }
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), ClientError>> + Send {
        Client::trim(self, offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), ClientError>> + Send {
        Client::write_zeroes(self, offset, len)
    }
    fn health(&self) -> Health {
        let state = match self.state() {
            ConnectionState::Connected => "connected".to_string(),
            ConnectionState::Reconnecting => "reconnecting".to_string(),
            ConnectionState::Failed(e) => format!("failed: {e}"),
            ConnectionState::Closed => "closed".to_string(),
        };
        Health { state, reconnects: self.reconnects(), resubmitted: self.resubmitted() }
    }
    fn close(self) -> impl Future<Output = ()> + Send {
        Client::close(self)
    }
}

/// Zeros are written in pieces of at most this many bytes.
const ZERO_CHUNK: usize = 1 << 20;

/// A [`blockdev::Device`] as a backend: each call runs the device's blocking method on
/// tokio's blocking pool. Never read-only; trims and write-zeroes write zeros.
#[derive(Debug, Clone)]
pub struct DeviceBackend {
    dev: Arc<dyn Device>,
    size: u64,
}

impl DeviceBackend {
    /// Serves `dev`, at the size it has now.
    pub fn new(dev: Arc<dyn Device>) -> Self {
        let size = dev.size();
        Self { dev, size }
    }

    /// The device served.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }

    /// Runs `f` on the device on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        offset: u64,
        f: impl FnOnce(&dyn Device) -> Result<T, DeviceError> + Send + 'static,
    ) -> Result<T, DeviceError> {
        let dev = self.dev.clone();
        match tokio::task::spawn_blocking(move || f(&*dev)).await {
            Ok(r) => r,
            Err(e) => {
                Err(DeviceError::Io { offset, source: std::io::Error::other(format!("the I/O task failed: {e}")) })
            }
        }
    }

    async fn zero(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.blocking(offset, move |dev| {
            let zeros = vec![0u8; (len as usize).min(ZERO_CHUNK)];
            let mut at = offset;
            let end = offset + len;
            while at < end {
                let n = ((end - at) as usize).min(zeros.len());
                dev.write_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        })
        .await
    }
}

impl Backend for DeviceBackend {
    type Buf = Vec<u8>;
    type Error = DeviceError;

    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, len: usize) -> impl Future<Output = Result<Vec<u8>, DeviceError>> + Send {
        self.blocking(offset, move |dev| {
            let mut buf = vec![0u8; len];
            dev.read_at(&mut buf, offset)?;
            Ok(buf)
        })
    }
    fn write(&self, offset: u64, data: Arc<[u8]>, fua: bool) -> impl Future<Output = Result<(), DeviceError>> + Send {
        self.blocking(offset, move |dev| {
            dev.write_at(&data, offset)?;
            if fua {
                dev.sync()?;
            }
            Ok(())
        })
    }
    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>> + Send {
        self.blocking(0, |dev| dev.sync())
    }
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), DeviceError>> + Send {
        self.zero(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), DeviceError>> + Send {
        self.zero(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_backend_reads_writes_zeroes_and_fails_with_eio() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let dev: Arc<dyn Device> = Arc::new(blockdev::MemDevice::new(vec![0; 3 << 20]));
        let b = DeviceBackend::new(dev);
        assert_eq!(b.size(), 3 << 20);
        rt.block_on(async {
            let data: Arc<[u8]> = (0..(3u32 << 20)).map(|i| (i % 251) as u8 + 1).collect::<Vec<_>>().into();
            b.write(0, data.clone(), true).await.unwrap();
            assert_eq!(b.read(0, 3 << 20).await.unwrap(), &data[..]);
            // Zeros across a chunk boundary, not at the edges of the range.
            b.write_zeroes(4096, (1 << 20) + 8192).await.unwrap();
            b.trim((2 << 20) + 512, 512).await.unwrap();
            b.flush().await.unwrap();
            let got = b.read(0, 3 << 20).await.unwrap();
            for (i, (&g, &d)) in got.iter().zip(data.iter()).enumerate() {
                let zeroed =
                    (4096..4096 + (1 << 20) + 8192).contains(&i) || ((2 << 20) + 512..(2 << 20) + 1024).contains(&i);
                assert_eq!(g, if zeroed { 0 } else { d }, "byte {i}");
            }
            let e = b.read((3 << 20) - 1, 2).await.unwrap_err();
            assert_eq!(e.errno(), libc::EIO);
        });
        assert_eq!(b.health().state, "active");
    }

    /// A device that drives a runtime of its own (as `blockdev::GnbdDevice` does, and a
    /// logical volume over gnbd exports): its blocking calls may `block_on` there.
    #[derive(Debug)]
    struct OwnRuntime {
        rt: tokio::runtime::Runtime,
        inner: blockdev::MemDevice,
    }

    impl Device for OwnRuntime {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
            self.rt.block_on(async { self.inner.read_at(buf, offset) })
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
            self.rt.block_on(async { self.inner.write_at(buf, offset) })
        }
        fn sync(&self) -> Result<(), DeviceError> {
            self.rt.block_on(async { self.inner.sync() })
        }
    }

    #[test]
    fn a_device_with_its_own_runtime_is_served_from_the_blocking_pool() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let own = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let b = DeviceBackend::new(Arc::new(OwnRuntime { rt: own, inner: blockdev::MemDevice::new(vec![0; 1 << 16]) }));
        rt.block_on(async {
            let writes: Vec<_> =
                (0..16u8).map(|i| b.write(u64::from(i) * 4096, Arc::from(vec![i + 1; 4096]), i % 2 == 0)).collect();
            for w in writes {
                w.await.unwrap();
            }
            let got = b.read(0, 1 << 16).await.unwrap();
            assert!(got.chunks(4096).enumerate().all(|(i, c)| c.iter().all(|&x| x == i as u8 + 1)));
        });
    }
}
