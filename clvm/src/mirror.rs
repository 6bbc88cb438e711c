//! Mirror state: the region log (which regions may differ between the legs) and resync.
//!
//! A mirror LV's extents are cut into regions of `region_size` sectors. A region is *stale*
//! when its legs may hold different data: a write is in flight on it (set before the legs
//! are written, so a crash leaves it marked), a leg failed while it was written, or it was
//! written while a leg was missing. Reads of a stale region come only from a healthy leg;
//! [`Mirror::resync`] copies each stale region from a healthy leg to the others and clears
//! it. The set lives in the disk log (`<LV>_mlog`, layout below) so it survives a crash or
//! a stop; with `--mirrorlog core` it lives in memory and every region starts stale.
//!
//! Disk log layout (the first bytes of the `_mlog` LV; documented in `clvm/docs/format.md`):
//!
//! | bytes | field |
//! |---|---|
//! | 0 – 7 | magic `clvmMLOG` |
//! | 8 – 11 | version 1 (u32 LE) |
//! | 12 – 15 | region size in sectors (u32 LE) |
//! | 16 – 23 | number of regions (u64 LE) |
//! | 24 – 27 | LVM2 CRC of bytes 0 – 23 |
//! | 512 – | one bit per region, least significant bit first: 1 = stale |

use crate::crc::{calc_crc, INITIAL_CRC};
use blockdev::{Device, DeviceError};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// The log's magic.
pub const LOG_MAGIC: &[u8; 8] = b"clvmMLOG";
/// Where the bitmap starts in the log.
pub const BITMAP_OFFSET: u64 = 512;

/// The stale-region set, in memory and (with a disk log) on disk.
#[derive(Debug)]
struct Regions {
    /// Persistent bits as last written (bitmap bytes).
    bits: Vec<u8>,
    /// Writes in flight per region.
    inflight: HashMap<u64, u32>,
    /// Regions whose legs may differ (need a resync).
    stale: BTreeSet<u64>,
    /// Regions marked only for writes that completed on every leg: cleared at the next sync.
    clean_pending: BTreeSet<u64>,
}

/// A mirror's region log and leg health.
pub struct Mirror {
    log: Option<Arc<dyn Device>>,
    region_bytes: u64,
    regions: u64,
    state: Mutex<Regions>,
    /// Writes hold it shared; a resync of one region holds it exclusive.
    copy_lock: RwLock<()>,
    /// PV names whose legs failed (not written, not read).
    failed: Mutex<BTreeSet<String>>,
    /// PV names of legs that came back: written, not read, until the resync is done.
    recovering: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("regions", &self.regions).field("region_bytes", &self.region_bytes).finish()
    }
}

fn io_err(msg: impl Into<String>) -> DeviceError {
    DeviceError::Io { offset: 0, source: std::io::Error::other(msg.into()) }
}

fn header(region_sectors: u64, regions: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..8].copy_from_slice(LOG_MAGIC);
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12..16].copy_from_slice(&(region_sectors as u32).to_le_bytes());
    h[16..24].copy_from_slice(&regions.to_le_bytes());
    let crc = calc_crc(INITIAL_CRC, &h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes a fresh log: every region stale (`in_sync` false: the legs were never copied) or
/// none (`--nosync`).
pub fn init_log(log: &dyn Device, region_sectors: u64, lv_bytes: u64, in_sync: bool) -> Result<(), DeviceError> {
    let region_bytes = region_sectors * 512;
    let regions = lv_bytes.div_ceil(region_bytes);
    let nbytes = regions.div_ceil(8) as usize;
    if BITMAP_OFFSET + nbytes as u64 > log.size() {
        return Err(io_err(format!("the mirror log ({} bytes) is too small for {regions} regions", log.size())));
    }
    let mut bits = vec![if in_sync { 0 } else { 0xff }; nbytes];
    if !in_sync && !regions.is_multiple_of(8) {
        if let Some(last) = bits.last_mut() {
            *last = (1u8 << (regions % 8)) - 1;
        }
    }
    log.write_at(&bits, BITMAP_OFFSET)?;
    log.write_at(&header(region_sectors, regions), 0)?;
    log.sync()
}

impl Mirror {
    /// The state of a mirror of `lv_bytes` with `region_sectors` regions; `log` is the disk
    /// log (None: a core log, every region stale).
    pub fn open(log: Option<Arc<dyn Device>>, region_sectors: u64, lv_bytes: u64) -> Result<Mirror, DeviceError> {
        let region_bytes = region_sectors.max(1) * 512;
        let regions = lv_bytes.div_ceil(region_bytes);
        let nbytes = regions.div_ceil(8) as usize;
        let mut bits = vec![0xffu8; nbytes];
        let mut log = log;
        if let Some(l) = &log {
            let mut h = [0u8; 512];
            l.read_at(&mut h, 0)?;
            let valid = &h[..8] == LOG_MAGIC
                && h[8..12] == 1u32.to_le_bytes()
                && calc_crc(INITIAL_CRC, &h[..24]).to_le_bytes() == h[24..28];
            let same = valid && h[12..16] == (region_sectors as u32).to_le_bytes();
            let old_regions = u64::from_le_bytes(h[16..24].try_into().unwrap_or([0; 8]));
            if same && BITMAP_OFFSET + nbytes as u64 <= l.size() {
                // Regions beyond the old size (the LV grew) start stale.
                let keep = old_regions.min(regions).div_ceil(8) as usize;
                l.read_at(&mut bits[..keep], BITMAP_OFFSET)?;
                for r in old_regions..regions {
                    bits[(r / 8) as usize] |= 1 << (r % 8);
                }
                if old_regions != regions {
                    l.write_at(&bits, BITMAP_OFFSET)?;
                    l.write_at(&header(region_sectors, regions), 0)?;
                    l.sync()?;
                }
            } else if BITMAP_OFFSET + nbytes as u64 <= l.size() {
                tracing::warn!("mirror log has no valid header: every region is resynced");
                l.write_at(&bits, BITMAP_OFFSET)?;
                l.write_at(&header(region_sectors, regions), 0)?;
                l.sync()?;
            } else {
                tracing::warn!("mirror log too small: using a core log");
                log = None;
            }
        }
        let stale = (0..regions).filter(|r| bits[(r / 8) as usize] & (1 << (r % 8)) != 0).collect();
        Ok(Mirror {
            log,
            region_bytes,
            regions,
            state: Mutex::new(Regions { bits, inflight: HashMap::new(), stale, clean_pending: BTreeSet::new() }),
            copy_lock: RwLock::new(()),
            failed: Mutex::new(BTreeSet::new()),
            recovering: Mutex::new(BTreeSet::new()),
        })
    }

    /// Region of an LV byte offset.
    pub fn region_of(&self, lv_offset: u64) -> u64 {
        lv_offset / self.region_bytes
    }

    /// Bytes per region.
    pub fn region_bytes(&self) -> u64 {
        self.region_bytes
    }

    /// Regions that need a resync.
    pub fn stale_regions(&self) -> usize {
        self.lock_state().stale.len()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, Regions> {
        self.state.lock().expect("mirror state")
    }

    /// Writes the bitmap byte of region `r` to the log when it changed.
    fn persist(&self, st: &mut Regions, r: u64, set: bool) -> Result<(), DeviceError> {
        let (i, b) = ((r / 8) as usize, 1u8 << (r % 8));
        let before = st.bits[i];
        if set {
            st.bits[i] |= b;
        } else {
            st.bits[i] &= !b;
        }
        if st.bits[i] != before {
            if let Some(l) = &self.log {
                l.write_at(&st.bits[i..=i], BITMAP_OFFSET + i as u64)?;
                l.sync()?;
            }
        }
        Ok(())
    }

    /// Before writing LV bytes `[off, off+len)`: marks their regions (on disk first). Holds
    /// the copy lock shared until [`Mirror::end_write`].
    pub fn begin_write(&self, off: u64, len: u64) -> Result<std::sync::RwLockReadGuard<'_, ()>, DeviceError> {
        let guard = self.copy_lock.read().expect("copy lock");
        let (first, last) = (self.region_of(off), self.region_of(off + len.max(1) - 1));
        let mut st = self.lock_state();
        for r in first..=last.min(self.regions.saturating_sub(1)) {
            *st.inflight.entry(r).or_insert(0) += 1;
            st.clean_pending.remove(&r);
            self.persist(&mut st, r, true)?;
        }
        Ok(guard)
    }

    /// After the write: `all_legs` says it reached every leg of the mirror (none failed or
    /// missing). Otherwise its regions stay stale until a resync.
    pub fn end_write(&self, off: u64, len: u64, all_legs: bool) {
        let (first, last) = (self.region_of(off), self.region_of(off + len.max(1) - 1));
        let mut st = self.lock_state();
        for r in first..=last.min(self.regions.saturating_sub(1)) {
            let n = st.inflight.entry(r).or_insert(1);
            *n -= 1;
            let idle = *n == 0;
            if idle {
                st.inflight.remove(&r);
            }
            if !all_legs {
                st.stale.insert(r);
            } else if idle && !st.stale.contains(&r) {
                st.clean_pending.insert(r);
            }
        }
    }

    /// After a sync of the legs: regions written on every leg and idle are clean again.
    pub fn after_sync(&self) -> Result<(), DeviceError> {
        let mut st = self.lock_state();
        let done: Vec<u64> = std::mem::take(&mut st.clean_pending).into_iter().collect();
        for r in done {
            if !st.inflight.contains_key(&r) && !st.stale.contains(&r) {
                self.persist(&mut st, r, false)?;
            }
        }
        Ok(())
    }

    /// Whether reads of LV bytes at `off` must avoid legs that are not fully in sync.
    pub fn is_stale(&self, off: u64) -> bool {
        let r = self.region_of(off);
        let st = self.lock_state();
        st.stale.contains(&r) || st.inflight.contains_key(&r)
    }

    /// Marks the leg on PV `pv` failed.
    pub fn fail(&self, pv: &str) {
        self.recovering.lock().expect("recovering").remove(pv);
        self.failed.lock().expect("failed").insert(pv.to_owned());
    }

    /// Whether the leg on `pv` is failed.
    pub fn is_failed(&self, pv: &str) -> bool {
        self.failed.lock().expect("failed").contains(pv)
    }

    /// Whether the leg on `pv` is back but not yet resynced.
    pub fn is_recovering(&self, pv: &str) -> bool {
        self.recovering.lock().expect("recovering").contains(pv)
    }

    /// Failed legs' PVs.
    pub fn failed_pvs(&self) -> Vec<String> {
        self.failed.lock().expect("failed").iter().cloned().collect()
    }

    /// A failed leg answered again: written from now on, read after the resync.
    pub fn returned(&self, pv: &str) {
        if self.failed.lock().expect("failed").remove(pv) {
            self.recovering.lock().expect("recovering").insert(pv.to_owned());
        }
    }

    /// Copies every stale region with `copy(region_offset, region_len)` (which reads a healthy
    /// leg and writes the others), one region at a time under the exclusive copy lock, and
    /// clears it. Then recovering legs are healthy. Returns the regions copied.
    pub fn resync(
        &self,
        lv_bytes: u64,
        copy: &dyn Fn(u64, u64) -> Result<(), DeviceError>,
    ) -> Result<u64, DeviceError> {
        if !self.failed.lock().expect("failed").is_empty() {
            return Err(io_err("a leg is still failed: nothing to copy to"));
        }
        let mut n = 0;
        loop {
            let _g = self.copy_lock.write().expect("copy lock");
            let next = { self.lock_state().stale.iter().next().copied() };
            let Some(r) = next else { break };
            let off = r * self.region_bytes;
            let len = self.region_bytes.min(lv_bytes.saturating_sub(off));
            if len > 0 {
                copy(off, len)?;
            }
            let mut st = self.lock_state();
            st.stale.remove(&r);
            if !st.inflight.contains_key(&r) {
                self.persist(&mut st, r, false)?;
            }
            n += 1;
        }
        self.recovering.lock().expect("recovering").clear();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::MemDevice;

    #[test]
    fn the_log_keeps_stale_regions_across_opens() {
        let log: Arc<dyn Device> = Arc::new(MemDevice::new(vec![0u8; 64 << 10]));
        init_log(&*log, 16, 10 * 8192, true).unwrap();
        let m = Mirror::open(Some(log.clone()), 16, 10 * 8192).unwrap();
        assert_eq!(m.stale_regions(), 0);
        // A write in flight when the node died: its region is marked on disk.
        let g = m.begin_write(3 * 8192 + 100, 10).unwrap();
        drop(g);
        drop(m);
        let m = Mirror::open(Some(log.clone()), 16, 10 * 8192).unwrap();
        assert_eq!(m.stale_regions(), 1);
        assert!(m.is_stale(3 * 8192));
        let copied = std::sync::Mutex::new(vec![]);
        let n = m.resync(10 * 8192, &|o, l| {
            copied.lock().unwrap().push((o, l));
            Ok(())
        });
        assert_eq!(n.unwrap(), 1);
        assert_eq!(copied.into_inner().unwrap(), vec![(3 * 8192, 8192)]);
        drop(m);
        assert_eq!(Mirror::open(Some(log), 16, 10 * 8192).unwrap().stale_regions(), 0);
    }

    #[test]
    fn completed_writes_clear_at_sync_and_degraded_ones_stay() {
        let log: Arc<dyn Device> = Arc::new(MemDevice::new(vec![0u8; 64 << 10]));
        init_log(&*log, 16, 4 * 8192, true).unwrap();
        let m = Mirror::open(Some(log.clone()), 16, 4 * 8192).unwrap();
        let g = m.begin_write(0, 8192 * 2).unwrap();
        drop(g);
        m.end_write(0, 8192 * 2, true);
        let g = m.begin_write(3 * 8192, 1).unwrap();
        drop(g);
        m.end_write(3 * 8192, 1, false);
        m.after_sync().unwrap();
        drop(m);
        let m = Mirror::open(Some(log), 16, 4 * 8192).unwrap();
        assert!(!m.is_stale(0) && !m.is_stale(8192) && m.is_stale(3 * 8192));
    }

    #[test]
    fn a_core_log_starts_all_stale_and_a_grown_lv_adds_stale_regions() {
        assert_eq!(Mirror::open(None, 16, 5 * 8192).unwrap().stale_regions(), 5);
        let log: Arc<dyn Device> = Arc::new(MemDevice::new(vec![0u8; 64 << 10]));
        init_log(&*log, 16, 4 * 8192, true).unwrap();
        let m = Mirror::open(Some(log), 16, 6 * 8192).unwrap();
        assert_eq!(m.stale_regions(), 2);
    }
}
