//! An active LV as a device process serves it: [`LvBackend`] answers the FUSE file's requests
//! for a linear or striped LV whose PVs are all gnbd exports straight on the exports' async
//! clients, many requests in flight and no thread each, the runs on different PVs at the same
//! time. Other LVs (mirrors, PVs on files or block devices) are served through their
//! [`LvDevice`] on the blocking pool (`gnbd_import::run_block_device`).

use crate::map::{runs, LvDevice, Run};
use blockdev::{Device, DeviceError};
use gnbd_import::{Backend, BackendError};
use std::future::Future;
use std::sync::Arc;

/// Why a request failed, with the errno the kernel gets.
#[derive(Debug)]
pub struct LvIoError {
    message: String,
    errno: i32,
}

impl std::fmt::Display for LvIoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl BackendError for LvIoError {
    fn errno(&self) -> i32 {
        self.errno
    }
}

impl From<DeviceError> for LvIoError {
    fn from(e: DeviceError) -> Self {
        LvIoError { message: e.to_string(), errno: EIO }
    }
}

impl From<gnbd_client::ClientError> for LvIoError {
    fn from(e: gnbd_client::ClientError) -> Self {
        LvIoError { errno: e.errno(), message: e.to_string() }
    }
}

/// Linux's EIO: what a device error reaches the kernel as.
const EIO: i32 = 5;

/// A linear or striped LV over gnbd exports, served asynchronously.
#[derive(Debug)]
pub struct LvBackend {
    lv: Arc<LvDevice>,
}

impl LvBackend {
    /// `Some` when every PV the LV uses is a gnbd export and the LV is not a mirror.
    pub fn new(lv: Arc<LvDevice>) -> Option<LvBackend> {
        let all_gnbd = lv.used_pvs().iter().all(|p| lv.pv_device(p).is_some_and(|d| d.gnbd_client().is_some()));
        (all_gnbd && !lv.is_mirror()).then_some(LvBackend { lv })
    }

    fn client(&self, pv: &str) -> Result<&gnbd_client::Client, LvIoError> {
        self.lv
            .pv_device(pv)
            .and_then(|d| d.gnbd_client())
            .ok_or_else(|| LvIoError { message: format!("PV {pv} has no client"), errno: EIO })
    }

    fn runs(&self, offset: u64, len: usize) -> Result<Vec<Run>, LvIoError> {
        Ok(runs(&self.lv.pieces(offset, len)?))
    }
}

impl Backend for LvBackend {
    type Buf = Vec<u8>;
    type Error = LvIoError;

    fn size(&self) -> u64 {
        self.lv.size()
    }
    fn read_only(&self) -> bool {
        false
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, LvIoError> {
        let runs = self.runs(offset, len)?;
        if let [r] = runs.as_slice() {
            if r.parts.len() == 1 {
                return Ok(self.client(&r.pv)?.read(r.dev_off, r.len as usize).await?);
            }
        }
        // Every run at once, then the parts into place.
        let mut reads = Vec::with_capacity(runs.len());
        for r in &runs {
            reads.push(self.client(&r.pv)?.read(r.dev_off, r.len as usize));
        }
        let mut buf = vec![0u8; len];
        for (r, data) in runs.iter().zip(join_all(reads).await) {
            let data = data?;
            let mut o = 0usize;
            for &(at, n) in &r.parts {
                buf[at..at + n].copy_from_slice(&data[o..o + n]);
                o += n;
            }
        }
        Ok(buf)
    }

    async fn write(&self, offset: u64, data: Arc<[u8]>, fua: bool) -> Result<(), LvIoError> {
        let runs = self.runs(offset, data.len())?;
        let mut writes = Vec::with_capacity(runs.len());
        for r in &runs {
            let bytes: Arc<[u8]> = if runs.len() == 1 && r.parts.len() == 1 {
                data.clone()
            } else {
                let mut b = Vec::with_capacity(r.len as usize);
                for &(at, n) in &r.parts {
                    b.extend_from_slice(&data[at..at + n]);
                }
                b.into()
            };
            writes.push(self.client(&r.pv)?.write_shared(r.dev_off, bytes, fua));
        }
        for w in join_all(writes).await {
            w?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), LvIoError> {
        let mut flushes = Vec::new();
        for pv in self.lv.used_pvs() {
            flushes.push(self.client(pv)?.flush());
        }
        for f in join_all(flushes).await {
            f?;
        }
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), LvIoError> {
        for r in self.runs(offset, len as usize)? {
            self.client(&r.pv)?.trim(r.dev_off, r.len).await?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), LvIoError> {
        for r in self.runs(offset, len as usize)? {
            self.client(&r.pv)?.write_zeroes(r.dev_off, r.len).await?;
        }
        Ok(())
    }
}

/// Polls every future until all are done (no extra crate: a handful per request).
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(out.iter_mut().map(|o| o.take().expect("every future finished")).collect())
        }
    })
    .await
}
