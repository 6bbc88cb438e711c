//! The one mapping layer: an LV's byte offset to the PVs and byte offsets that hold it
//! (linear, striped, and mirror legs through their image LVs), and [`LvDevice`], an LV as a
//! `blockdev` device for every consumer (activation, gfs's `lvm:VG/LV`, benchmarks).

use crate::vg::{LogicalVolume, Segment, VolumeGroup};
use blockdev::{Device, DeviceError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Why an offset cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("logical volume {0} not found")]
    NoLv(String),
    #[error("{lv}: byte {offset} is past the end of the volume ({size} bytes)")]
    Past { lv: String, offset: u64, size: u64 },
    #[error("{lv}: segment type {segtype} cannot be mapped by this version")]
    Unsupported { lv: String, segtype: String },
    #[error("{lv}: area {area} names neither a PV nor an LV of the volume group")]
    BadArea { lv: String, area: String },
    #[error("{lv}: segment at extent {start} is inconsistent: {why}")]
    BadSegment { lv: String, start: u64, why: String },
    #[error("{lv}: sub-volumes nest too deep")]
    TooDeep { lv: String },
}

/// A run of an LV's bytes and where it lives: one place for linear and striped volumes, one
/// per leg for mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Bytes in the run.
    pub len: u64,
    /// `(PV name in the VG, byte offset on that PV's device)` per copy.
    pub copies: Vec<(String, u64)>,
}

/// The LV's size in bytes.
pub fn lv_size(vg: &VolumeGroup, lv: &LogicalVolume) -> u64 {
    lv.extent_count() * vg.extent_size * 512
}

/// Maps `len` bytes of LV `lv` from `offset` (both within the LV) to pieces.
pub fn map(vg: &VolumeGroup, lv: &str, offset: u64, len: u64) -> Result<Vec<Piece>, MapError> {
    map_depth(vg, lv, offset, len, 0)
}

fn map_depth(vg: &VolumeGroup, lv_name: &str, mut offset: u64, len: u64, depth: u32) -> Result<Vec<Piece>, MapError> {
    if depth > 4 {
        return Err(MapError::TooDeep { lv: lv_name.into() });
    }
    let lv = vg.lv(lv_name).ok_or_else(|| MapError::NoLv(lv_name.into()))?;
    let es = vg.extent_size * 512;
    let size = lv.extent_count() * es;
    if offset.checked_add(len).is_none_or(|e| e > size) {
        return Err(MapError::Past { lv: lv_name.into(), offset: offset + len, size });
    }
    let mut out = Vec::new();
    let end = offset + len;
    while offset < end {
        let le = offset / es;
        let seg = lv
            .segments
            .iter()
            .find(|s| s.start_extent <= le && le < s.start_extent + s.extent_count)
            .ok_or_else(|| MapError::Past { lv: lv_name.into(), offset, size })?;
        let seg_off = offset - seg.start_extent * es;
        let seg_left = seg.extent_count * es - seg_off;
        let want = (end - offset).min(seg_left);
        let pieces = map_segment(vg, lv_name, seg, seg_off, want, depth)?;
        let got: u64 = pieces.iter().map(|p| p.len).sum();
        out.extend(pieces);
        offset += got;
    }
    Ok(out)
}

/// Maps within one segment: returns pieces covering a prefix (at least one byte) of `want`.
fn map_segment(
    vg: &VolumeGroup,
    lv: &str,
    seg: &Segment,
    off: u64,
    want: u64,
    depth: u32,
) -> Result<Vec<Piece>, MapError> {
    let es = vg.extent_size * 512;
    let bad = |why: String| MapError::BadSegment { lv: lv.into(), start: seg.start_extent, why };
    match seg.segtype.as_str() {
        "striped" => {
            let n = seg.stripes.len() as u64;
            if n == 0 || !seg.extent_count.is_multiple_of(n) {
                return Err(bad(format!("{} extents over {n} stripes", seg.extent_count)));
            }
            let (area, pv_off, run) = if n == 1 {
                (&seg.stripes[0], off, want)
            } else {
                let ss = seg.stripe_size.unwrap_or(0) * 512;
                if ss == 0 || !es.is_multiple_of(ss) {
                    return Err(bad(format!("stripe size {ss} bytes does not divide the extent size")));
                }
                let chunk = off / ss;
                let within = off % ss;
                let stripe = (chunk % n) as usize;
                let row = chunk / n;
                (&seg.stripes[stripe], row * ss + within, want.min(ss - within))
            };
            match vg.pv(&area.name) {
                Some(pv) => {
                    let at = pv.pe_start * 512 + area.start * es + pv_off;
                    Ok(vec![Piece { len: run, copies: vec![(pv.name.clone(), at)] }])
                }
                None if vg.lv(&area.name).is_some() => {
                    map_depth(vg, &area.name, area.start * es + pv_off, run, depth + 1)
                }
                None => Err(MapError::BadArea { lv: lv.into(), area: area.name.clone() }),
            }
        }
        "mirror" => {
            // Each leg maps on its own; a piece ends where the first leg's run ends.
            let mut legs = Vec::new();
            for a in &seg.mirrors {
                let ps = map_depth(vg, &a.name, a.start * es + off, want, depth + 1)?;
                legs.push(ps);
            }
            if legs.is_empty() {
                return Err(bad("mirror without legs".into()));
            }
            let mut out = Vec::new();
            let mut idx = vec![0usize; legs.len()];
            let mut used = vec![0u64; legs.len()];
            let mut done = 0;
            while done < want {
                let run = legs.iter().zip(&idx).zip(&used).map(|((l, &i), &u)| l[i].len - u).min().unwrap_or(0);
                let copies = legs
                    .iter()
                    .zip(&idx)
                    .zip(&used)
                    .flat_map(|((l, &i), &u)| l[i].copies.iter().map(move |(n, o)| (n.clone(), o + u)))
                    .collect();
                out.push(Piece { len: run, copies });
                done += run;
                for k in 0..legs.len() {
                    used[k] += run;
                    if used[k] == legs[k][idx[k]].len && done < want {
                        idx[k] += 1;
                        used[k] = 0;
                    }
                }
            }
            Ok(out)
        }
        other => Err(MapError::Unsupported { lv: lv.into(), segtype: other.into() }),
    }
}

/// An LV as a block device over the devices of its VG's PVs. Mirror writes go to every leg
/// that has not failed, with the region log marking what they touch; reads come from a
/// healthy leg (an in-sync one for a stale region), then the others on error; a leg whose
/// device fails is dropped and the LV keeps serving from the rest. [`LvDevice::check_legs`]
/// notices a failed leg that answers again and [`LvDevice::resync`] brings it back in sync;
/// [`LvDevice::start_monitor`] does both in the background.
pub struct LvDevice {
    vg: VolumeGroup,
    lv: String,
    size: u64,
    /// PV name in the VG → its device.
    pvs: BTreeMap<String, Arc<dyn Device>>,
    /// The region log and leg health, for a mirror.
    mirror: Option<crate::mirror::Mirror>,
    /// PV names holding mirror legs.
    legs: Vec<String>,
    /// PV names the LV (or its log) uses: what a sync flushes.
    used: Vec<String>,
    degraded: AtomicBool,
}

impl std::fmt::Debug for LvDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LvDevice").field("vg", &self.vg.name).field("lv", &self.lv).field("size", &self.size).finish()
    }
}

impl LvDevice {
    /// The LV `lv` of `vg`, with `pvs` mapping the VG's PV names to open devices. Every PV the
    /// LV uses must be present (mirror legs excepted: a missing leg starts failed).
    pub fn new(vg: VolumeGroup, lv: &str, pvs: BTreeMap<String, Arc<dyn Device>>) -> Result<LvDevice, MapError> {
        let l = vg.lv(lv).ok_or_else(|| MapError::NoLv(lv.into()))?;
        let size = lv_size(&vg, l);
        // Validate the whole map once, so I/O never meets a bad segment.
        let pieces = map(&vg, lv, 0, size)?;
        let mut missing = Vec::new();
        let mut legs = Vec::new();
        let mut used: Vec<String> = Vec::new();
        for p in &pieces {
            for (n, _) in &p.copies {
                if !used.contains(n) && pvs.contains_key(n) {
                    used.push(n.clone());
                }
            }
            let present = p.copies.iter().filter(|(n, _)| pvs.contains_key(n)).count();
            if present == 0 {
                let (n, _) = &p.copies[0];
                return Err(MapError::BadArea { lv: lv.into(), area: format!("{n} (its device is missing)") });
            }
            if p.copies.len() > 1 {
                for (n, _) in &p.copies {
                    if !legs.contains(n) {
                        legs.push(n.clone());
                    }
                    if !pvs.contains_key(n) && !missing.contains(n) {
                        missing.push(n.clone());
                    }
                }
            }
        }
        let mirror_seg = l.segments.iter().find(|s| s.segtype == "mirror").cloned();
        let mirror = match mirror_seg {
            None => None,
            Some(seg) => {
                let log = match &seg.mirror_log {
                    Some(name) => {
                        LvDevice::new(vg.clone(), name, pvs.clone()).ok().map(|d| Arc::new(d) as Arc<dyn Device>)
                    }
                    None => None,
                };
                let region = seg.region_size.unwrap_or(crate::ops::DEFAULT_REGION_SIZE);
                let m = crate::mirror::Mirror::open(log, region, size).map_err(|e| MapError::BadSegment {
                    lv: lv.into(),
                    start: seg.start_extent,
                    why: format!("mirror log: {e}"),
                })?;
                for n in &missing {
                    m.fail(n);
                }
                Some(m)
            }
        };
        let degraded = AtomicBool::new(!missing.is_empty());
        // Only the PVs this LV lives on (the log syncs its own).
        let pvs = pvs.into_iter().filter(|(n, _)| used.contains(n)).collect();
        Ok(LvDevice { vg, lv: lv.to_owned(), size, pvs, mirror, legs, used, degraded })
    }

    /// Whether the LV is a mirror.
    pub fn is_mirror(&self) -> bool {
        self.mirror.is_some()
    }

    /// Whether its VG is clustered.
    pub fn clustered(&self) -> bool {
        crate::ops::is_clustered(&self.vg)
    }

    /// Whether a mirror leg has been dropped.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// PV names whose mirror legs failed.
    pub fn failed_pvs(&self) -> Vec<String> {
        self.mirror.as_ref().map(|m| m.failed_pvs()).unwrap_or_default()
    }

    /// Mirror regions waiting for a resync (0 for other LVs).
    pub fn stale_regions(&self) -> usize {
        self.mirror.as_ref().map_or(0, |m| m.stale_regions())
    }

    fn fail(&self, pv: &str, e: &DeviceError) {
        if let Some(m) = &self.mirror {
            if !m.is_failed(pv) {
                tracing::warn!("{}/{}: the mirror leg on {pv} failed, dropping it: {e}", self.vg.name, self.lv);
            }
            m.fail(pv);
        }
        self.degraded.store(true, Ordering::Relaxed);
    }

    /// The device of PV `name` (one the LV uses).
    pub fn pv_device(&self, name: &str) -> Option<&Arc<dyn Device>> {
        self.pvs.get(name)
    }

    /// The PVs the LV uses.
    pub fn used_pvs(&self) -> &[String] {
        &self.used
    }

    /// The pieces of `len` bytes at `offset` (checked against the LV's size).
    pub fn pieces(&self, offset: u64, len: usize) -> Result<Vec<Piece>, DeviceError> {
        if offset.checked_add(len as u64).is_none_or(|e| e > self.size) {
            return Err(DeviceError::OutOfRange { offset, len, size: self.size });
        }
        map(&self.vg, &self.lv, offset, len as u64)
            .map_err(|e| DeviceError::Io { offset, source: std::io::Error::other(e.to_string()) })
    }

    fn all_legs_failed(offset: u64) -> DeviceError {
        DeviceError::Io { offset, source: std::io::Error::other("every leg of the mirror has failed") }
    }

    /// Probes each failed mirror leg; one that answers again is written from now on and read
    /// once resynced. Returns the legs that came back.
    pub fn check_legs(&self) -> Vec<String> {
        let Some(m) = &self.mirror else { return vec![] };
        let mut back = Vec::new();
        for pv in m.failed_pvs() {
            let Some(dev) = self.pvs.get(&pv) else { continue };
            let mut b = [0u8; 512];
            if dev.read_at(&mut b, 0).is_ok() {
                tracing::info!("{}/{}: the mirror leg on {pv} answers again", self.vg.name, self.lv);
                m.returned(&pv);
                back.push(pv);
            }
        }
        back
    }

    /// Copies every stale region from a healthy leg to the others (a leg that came back, or
    /// regions a crash left marked). Returns the regions copied.
    pub fn resync(&self) -> Result<u64, DeviceError> {
        let Some(m) = &self.mirror else { return Ok(0) };
        let copy = |off: u64, len: u64| -> Result<(), DeviceError> {
            for p in self.pieces(off, len as usize)? {
                let src = p
                    .copies
                    .iter()
                    .find(|(pv, _)| !m.is_failed(pv) && !m.is_recovering(pv))
                    .ok_or_else(|| Self::all_legs_failed(off))?;
                let mut buf = vec![0u8; p.len as usize];
                self.pvs[&src.0].read_at(&mut buf, src.1)?;
                for (pv, o) in &p.copies {
                    if pv != &src.0 && !m.is_failed(pv) {
                        self.pvs[pv].write_at(&buf, *o)?;
                    }
                }
            }
            for (pv, dev) in &self.pvs {
                if self.legs.contains(pv) && !m.is_failed(pv) {
                    dev.sync()?;
                }
            }
            Ok(())
        };
        let n = m.resync(self.size, &copy)?;
        if m.failed_pvs().is_empty() {
            self.degraded.store(false, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// A thread that, every `interval`, probes failed legs and resyncs stale regions while no
    /// leg is failed; it ends when the device is dropped.
    pub fn start_monitor(self: &Arc<Self>, interval: std::time::Duration) {
        if self.mirror.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new().name("clvm-mirror".into()).spawn(move || loop {
            let Some(dev) = weak.upgrade() else { return };
            dev.check_legs();
            if dev.failed_pvs().is_empty() && dev.stale_regions() > 0 {
                match dev.resync() {
                    Ok(n) if n > 0 => tracing::info!("{}/{}: {n} regions resynced", dev.vg.name, dev.lv),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("{}/{}: resync: {e}", dev.vg.name, dev.lv),
                }
            }
            drop(dev);
            std::thread::sleep(interval);
        });
    }
}

/// The buffer of a request on a linear or striped LV.
enum Io<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// A run of a request on one PV: the PV's bytes `[dev_off, dev_off + len)` and where each
/// part sits in the request's buffer (`(offset in the buffer, length)`, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub pv: String,
    pub dev_off: u64,
    pub len: u64,
    pub parts: Vec<(usize, usize)>,
}

/// The pieces of a linear or striped request grouped into runs: pieces contiguous on one PV
/// become one run (consecutive stripe rows are).
pub fn runs(pieces: &[Piece]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut at = 0usize;
    for p in pieces {
        let (pv, off) = &p.copies[0];
        match runs.iter_mut().rev().find(|r| &r.pv == pv) {
            Some(r) if r.dev_off + r.len == *off => {
                r.len += p.len;
                r.parts.push((at, p.len as usize));
            }
            _ => runs.push(Run { pv: pv.clone(), dev_off: *off, len: p.len, parts: vec![(at, p.len as usize)] }),
        }
        at += p.len as usize;
    }
    runs
}

impl LvDevice {
    /// Linear and striped I/O: the pieces that are contiguous on one PV become one request
    /// (consecutive stripe rows are), and the PVs are worked on at the same time.
    fn plain_io(&self, pieces: &[Piece], io: Io<'_>) -> Result<(), DeviceError> {
        let runs = runs(pieces);
        let one_part = |r: &Run| r.parts.len() == 1;
        match io {
            Io::Read(buf) => {
                if runs.len() == 1 && one_part(&runs[0]) {
                    return self.pvs[&runs[0].pv].read_at(buf, runs[0].dev_off);
                }
                let done: Vec<Result<Vec<u8>, DeviceError>> = std::thread::scope(|s| {
                    let hs: Vec<_> = runs
                        .iter()
                        .map(|r| {
                            let dev = &self.pvs[&r.pv];
                            s.spawn(move || {
                                let mut b = vec![0u8; r.len as usize];
                                dev.read_at(&mut b, r.dev_off).map(|()| b)
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(io_panic()))).collect()
                });
                for (r, d) in runs.iter().zip(done) {
                    let d = d?;
                    let mut o = 0usize;
                    for &(at, len) in &r.parts {
                        buf[at..at + len].copy_from_slice(&d[o..o + len]);
                        o += len;
                    }
                }
                Ok(())
            }
            Io::Write(buf) => {
                if runs.len() == 1 && one_part(&runs[0]) {
                    return self.pvs[&runs[0].pv].write_at(buf, runs[0].dev_off);
                }
                let done: Vec<Result<(), DeviceError>> = std::thread::scope(|s| {
                    let hs: Vec<_> = runs
                        .iter()
                        .map(|r| {
                            let dev = &self.pvs[&r.pv];
                            s.spawn(move || {
                                let mut b = Vec::with_capacity(r.len as usize);
                                for &(at, len) in &r.parts {
                                    b.extend_from_slice(&buf[at..at + len]);
                                }
                                dev.write_at(&b, r.dev_off)
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(io_panic()))).collect()
                });
                done.into_iter().collect()
            }
        }
    }
}

fn io_panic() -> DeviceError {
    DeviceError::Io { offset: 0, source: std::io::Error::other("an I/O thread panicked") }
}

impl Device for LvDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        let pieces = self.pieces(offset, buf.len())?;
        let Some(m) = &self.mirror else {
            return self.plain_io(&pieces, Io::Read(buf));
        };
        let mut at = 0usize;
        for p in pieces {
            let dst = &mut buf[at..at + p.len as usize];
            let stale = m.is_stale(offset + at as u64);
            let mut last = None;
            let mut ok = false;
            // In-sync regions are read from either leg, spread by region; stale ones from the
            // first healthy leg.
            let first = if stale { 0 } else { (m.region_of(offset + at as u64) as usize) % p.copies.len() };
            let order = p.copies.iter().cycle().skip(first).take(p.copies.len());
            for (pv, off) in order {
                if m.is_failed(pv) || (m.is_recovering(pv) && stale) {
                    continue;
                }
                match self.pvs[pv].read_at(dst, *off) {
                    Ok(()) => {
                        ok = true;
                        break;
                    }
                    Err(e) => {
                        self.fail(pv, &e);
                        last = Some(e);
                    }
                }
            }
            if !ok {
                return Err(last.unwrap_or_else(|| Self::all_legs_failed(offset)));
            }
            at += p.len as usize;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
        let pieces = self.pieces(offset, buf.len())?;
        let Some(m) = &self.mirror else {
            return self.plain_io(&pieces, Io::Write(buf));
        };
        let _guard = m.begin_write(offset, buf.len() as u64)?;
        let mut at = 0usize;
        let mut everywhere = true;
        let mut result = Ok(());
        for p in pieces {
            let src = &buf[at..at + p.len as usize];
            let mut written = 0;
            let mut last = None;
            for (pv, off) in &p.copies {
                if m.is_failed(pv) {
                    everywhere = false;
                    continue;
                }
                match self.pvs[pv].write_at(src, *off) {
                    Ok(()) => written += 1,
                    Err(e) => {
                        self.fail(pv, &e);
                        everywhere = false;
                        last = Some(e);
                    }
                }
            }
            if written == 0 {
                result = Err(last.unwrap_or_else(|| Self::all_legs_failed(offset)));
                break;
            }
            at += p.len as usize;
        }
        m.end_write(offset, buf.len() as u64, everywhere && result.is_ok());
        result
    }

    fn sync(&self) -> Result<(), DeviceError> {
        let Some(m) = &self.mirror else {
            for pv in &self.used {
                self.pvs[pv].sync()?;
            }
            return Ok(());
        };
        let mut synced = 0;
        let mut last = None;
        for (pv, dev) in &self.pvs {
            if m.is_failed(pv) {
                continue;
            }
            match dev.sync() {
                Ok(()) => synced += 1,
                Err(e) if self.legs.contains(pv) => {
                    // A leg that cannot make its writes stable is no longer a copy.
                    self.fail(pv, &e);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if synced == 0 {
            return Err(last.unwrap_or_else(|| Self::all_legs_failed(0)));
        }
        m.after_sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{self, Layout, NewLv, NewPv};
    use blockdev::MemDevice;
    use proptest::prelude::*;

    fn vg_with(pvs: usize, extents: u64) -> VolumeGroup {
        let es = 8 * 512; // 4 KiB extents keep the test images small
        let newpvs: Vec<NewPv> = (0..pvs)
            .map(|i| NewPv {
                id: format!("pv-uuid-{i}"),
                device: format!("/dev/test{i}"),
                dev_size: 1024 * 1024 + extents * es,
                pe_start: 1024 * 1024,
                data_end: 1024 * 1024 + extents * es,
            })
            .collect();
        ops::vgcreate("vg", "vg-uuid".into(), 8, false, &newpvs).unwrap()
    }

    type Devices = BTreeMap<String, Arc<dyn Device>>;

    fn devices(vg: &VolumeGroup) -> (Devices, Vec<Arc<MemDevice>>) {
        let mut m: Devices = BTreeMap::new();
        let mut mems = Vec::new();
        for p in &vg.physical_volumes {
            let d = Arc::new(MemDevice::new(vec![0u8; p.dev_size.unwrap() as usize * 512]));
            m.insert(p.name.clone(), d.clone());
            mems.push(d);
        }
        (m, mems)
    }

    fn create(vg: &mut VolumeGroup, name: &str, extents: u64, layout: Layout) {
        let mut n = 0;
        ops::lvcreate(
            vg,
            NewLv { name: name.into(), id: name.into(), extents, layout, allowed: vec![], host: "h".into(), time: 0 },
            &mut || {
                n += 1;
                format!("sub{n}")
            },
        )
        .unwrap();
    }

    #[test]
    fn striped_offsets_follow_the_chunks() {
        let mut vg = vg_with(2, 64);
        create(&mut vg, "s", 8, Layout::Striped { stripes: 2, stripe_size: 2 });
        // 1 KiB chunks alternate between the PVs.
        let p = map(&vg, "s", 0, 4096).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].copies, vec![("pv0".into(), 1 << 20)]);
        assert_eq!(p[1].copies, vec![("pv1".into(), 1 << 20)]);
        assert_eq!(p[2].copies, vec![("pv0".into(), (1 << 20) + 1024)]);
        assert!(p.iter().all(|x| x.len == 1024));
    }

    proptest! {
        /// Whatever is written through the LV reads back through it, for every layout, and
        /// lands on the PVs exactly where the map says.
        #[test]
        fn lv_device_round_trips(stripes in 1usize..4, mirror in any::<bool>(),
                                 writes in proptest::collection::vec((0u64..60_000, 1usize..9000, any::<u8>()), 1..12)) {
            let mut vg = vg_with(4, 64);
            let layout = if mirror {
                Layout::Mirror { copies: 1, region_size: 16, disk_log: true }
            } else {
                Layout::Striped { stripes, stripe_size: 2 }
            };
            create(&mut vg, "lv", 16 * stripes as u64, layout);
            let (pvs, _mems) = devices(&vg);
            let dev = LvDevice::new(vg.clone(), "lv", pvs.clone()).unwrap();
            let size = dev.size() as usize;
            let mut model = vec![0u8; size];
            for (off, len, b) in writes {
                let off = off as usize % size;
                let len = len.min(size - off);
                dev.write_at(&vec![b; len], off as u64).unwrap();
                model[off..off + len].fill(b);
            }
            let mut back = vec![0u8; size];
            dev.read_at(&mut back, 0).unwrap();
            prop_assert!(back == model);
            // And on every copy, where the raw map says.
            let mut at = 0usize;
            for p in map(&vg, "lv", 0, size as u64).unwrap() {
                for (pv, off) in &p.copies {
                    let mut b = vec![0u8; p.len as usize];
                    pvs[pv].read_at(&mut b, *off).unwrap();
                    prop_assert!(b[..] == model[at..at + p.len as usize], "{} at {}", pv, off);
                }
                at += p.len as usize;
            }
            prop_assert_eq!(at, size);
        }
    }

    #[test]
    fn a_failed_leg_is_dropped_and_the_mirror_keeps_serving() {
        let mut vg = vg_with(3, 64);
        create(&mut vg, "m", 8, Layout::Mirror { copies: 1, region_size: 16, disk_log: true });
        let (mut pvs, _mems) = devices(&vg);
        let leg1 = vg.lv("m_mimage_1").unwrap().segments[0].stripes[0].name.clone();
        // A device that errors on every access: a MemDevice too short for any extent.
        pvs.insert(leg1.clone(), Arc::new(MemDevice::new(vec![0u8; 16])));
        let dev = LvDevice::new(vg, "m", pvs).unwrap();
        dev.write_at(&[7u8; 4096], 0).unwrap();
        assert!(dev.degraded());
        assert_eq!(dev.failed_pvs(), vec![leg1]);
        let mut b = [0u8; 4096];
        dev.read_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 7));
    }

    /// Fails every access while `down`.
    #[derive(Debug)]
    struct Flaky {
        inner: Arc<MemDevice>,
        down: AtomicBool,
    }

    impl Device for Flaky {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(DeviceError::Io { offset, source: std::io::Error::other("down") });
            }
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(DeviceError::Io { offset, source: std::io::Error::other("down") });
            }
            self.inner.write_at(buf, offset)
        }
        fn sync(&self) -> Result<(), DeviceError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(DeviceError::Io { offset: 0, source: std::io::Error::other("down") });
            }
            Ok(())
        }
    }

    proptest! {
        /// A leg that goes away mid-run and comes back: every write acknowledged meanwhile
        /// reads back, and after the resync both legs hold exactly the data written.
        #[test]
        fn a_leg_that_returns_is_resynced(writes in proptest::collection::vec((0u64..65_536, 1usize..9000, any::<u8>()), 3..20),
                                          down_at in 0usize..10, up_at in 0usize..20) {
            let mut vg = vg_with(3, 64);
            create(&mut vg, "m", 16, Layout::Mirror { copies: 1, region_size: 16, disk_log: true });
            let (mut pvs, mems) = devices(&vg);
            let leg1 = vg.lv("m_mimage_1").unwrap().segments[0].stripes[0].name.clone();
            let k: usize = leg1[2..].parse().unwrap();
            let flaky = Arc::new(Flaky { inner: mems[k].clone(), down: AtomicBool::new(false) });
            pvs.insert(leg1.clone(), flaky.clone());
            let log = LvDevice::new(vg.clone(), "m_mlog", pvs.clone()).unwrap();
            crate::mirror::init_log(&log, 16, 16 * 4096, true).unwrap();
            let dev = LvDevice::new(vg.clone(), "m", pvs.clone()).unwrap();
            let size = dev.size() as usize;
            let mut model = vec![0u8; size];
            for (i, (off, len, b)) in writes.iter().enumerate() {
                if i == down_at { flaky.down.store(true, Ordering::SeqCst); }
                if i == up_at.max(down_at + 1) { flaky.down.store(false, Ordering::SeqCst); }
                let off = *off as usize % size;
                let len = (*len).min(size - off);
                dev.write_at(&vec![*b; len], off as u64).unwrap();
                model[off..off + len].fill(*b);
                dev.sync().unwrap();
            }
            flaky.down.store(false, Ordering::SeqCst);
            let mut back = vec![0u8; size];
            dev.read_at(&mut back, 0).unwrap();
            prop_assert!(back == model, "reads while degraded");
            dev.check_legs();
            dev.resync().unwrap();
            prop_assert!(!dev.degraded());
            prop_assert_eq!(dev.stale_regions(), 0);
            // Each leg on its own holds the model.
            for img in ["m_mimage_0", "m_mimage_1"] {
                let leg = LvDevice::new(vg.clone(), img, pvs.clone()).unwrap();
                let mut b = vec![0u8; size];
                leg.read_at(&mut b, 0).unwrap();
                prop_assert!(b == model, "{} differs after the resync", img);
            }
        }
    }
}
