//! A power cut at every write of a metadata commit: the devices keep the first N writes of
//! the commit (N = 0, 1, 2, ... up to all of them) and lose the rest, on every PV at once.
//! Whatever N, a scan finds the VG with the old or the new text (never a torn one, never
//! none), every metadata area's committed text has a valid checksum, and the next commit
//! brings every area to the same new text.

use blockdev::{Device, DeviceError, MemDevice};
use clvm::disk::{self, PvcreateOptions};
use clvm::label::format_uuid;
use clvm::ops::{self, Layout, NewLv, NewPv};
use clvm::scan::{self, Scan};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const DEV: usize = 8 << 20;

/// Passes the first `limit` writes (counted across every device sharing `count`) and drops the
/// rest, as a power cut would.
#[derive(Debug)]
struct PowerCut {
    inner: Arc<MemDevice>,
    count: Arc<AtomicU64>,
    limit: u64,
}

impl Device for PowerCut {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
        if self.count.fetch_add(1, Ordering::SeqCst) < self.limit {
            self.inner.write_at(buf, offset)
        } else {
            Ok(())
        }
    }
    fn sync(&self) -> Result<(), DeviceError> {
        Ok(())
    }
}

fn scan_mem(devs: &[Arc<MemDevice>]) -> Scan {
    scan::scan(devs.iter().enumerate().map(|(i, d)| (format!("mem{i}"), d.clone() as Arc<dyn Device>)).collect())
}

/// Two PVs and a VG at seqno 1 with one LV.
fn setup() -> (Vec<Arc<MemDevice>>, clvm::vg::VolumeGroup) {
    let devs: Vec<Arc<MemDevice>> = (0..2).map(|_| Arc::new(MemDevice::new(vec![0u8; DEV]))).collect();
    let opts = PvcreateOptions { metadata_size: Some(64 << 10), data_alignment: 128 << 10, ..Default::default() };
    let mut pvs = Vec::new();
    for (i, d) in devs.iter().enumerate() {
        pvs.push(disk::pvcreate(&format!("mem{i}"), d.clone(), &opts).unwrap());
    }
    let newpvs: Vec<NewPv> = pvs
        .iter()
        .map(|p| NewPv {
            id: p.uuid(),
            device: p.spec.clone(),
            dev_size: DEV as u64,
            pe_start: p.pe_start(),
            data_end: DEV as u64,
        })
        .collect();
    let mut vg = ops::vgcreate("vg0", format_uuid(&disk::random_id()), 2048, false, &newpvs).unwrap();
    add_lv(&mut vg, "lv0");
    let refs: Vec<&disk::Pv> = pvs.iter().collect();
    disk::commit(&refs, &disk::vg_text(&vg, "setup", "test", 0)).unwrap();
    (devs, vg)
}

fn add_lv(vg: &mut clvm::vg::VolumeGroup, name: &str) {
    ops::lvcreate(
        vg,
        NewLv {
            name: name.into(),
            id: format_uuid(&disk::random_id()),
            extents: 2,
            layout: Layout::Striped { stripes: 2, stripe_size: 128 },
            allowed: vec![],
            host: "test".into(),
            time: 0,
        },
        &mut || format_uuid(&disk::random_id()),
    )
    .unwrap();
}

#[test]
fn a_power_cut_at_every_write_leaves_old_or_new_metadata() {
    // How many writes one commit makes (texts + precommit headers + commit headers).
    let (devs, vg) = setup();
    let count = Arc::new(AtomicU64::new(0));
    let s = scan_mem(&devs);
    let counting: Vec<disk::Pv> = s
        .pvs
        .iter()
        .map(|p| {
            let dev: Arc<dyn Device> = Arc::new(PowerCut {
                inner: devs[p.spec[3..].parse::<usize>().unwrap()].clone(),
                count: count.clone(),
                limit: u64::MAX,
            });
            disk::Pv { dev, ..p.clone() }
        })
        .collect();
    let mut next = vg.clone();
    next.seqno = 2;
    add_lv(&mut next, "lv1");
    disk::commit(&counting.iter().collect::<Vec<_>>(), &disk::vg_text(&next, "next", "test", 0)).unwrap();
    let writes = count.load(Ordering::SeqCst);
    assert!(writes >= 6, "a commit on two PVs makes at least 6 writes, saw {writes}");

    let mut seen = [0u32; 2];
    for limit in 0..=writes {
        let (devs, vg) = setup();
        let count = Arc::new(AtomicU64::new(0));
        let s = scan_mem(&devs);
        let cut: Vec<disk::Pv> = s
            .pvs
            .iter()
            .map(|p| {
                let i = p.spec[3..].parse::<usize>().unwrap();
                let dev: Arc<dyn Device> = Arc::new(PowerCut { inner: devs[i].clone(), count: count.clone(), limit });
                disk::Pv { dev, ..p.clone() }
            })
            .collect();
        let mut next = vg.clone();
        next.seqno = 2;
        add_lv(&mut next, "lv1");
        disk::commit(&cut.iter().collect::<Vec<_>>(), &disk::vg_text(&next, "next", "test", 0)).unwrap();

        // After the cut: old or new, never torn, never gone.
        let after = scan_mem(&devs);
        assert!(after.warnings.is_empty(), "limit {limit}: {:?}", after.warnings);
        let found = after.vgs.get("vg0").unwrap_or_else(|| panic!("limit {limit}: VG lost"));
        match found.vg.seqno {
            1 => {
                assert_eq!(found.vg.logical_volumes, vg.logical_volumes, "limit {limit}");
                seen[0] += 1;
            }
            2 => {
                assert_eq!(found.vg.logical_volumes, next.logical_volumes, "limit {limit}");
                seen[1] += 1;
            }
            other => panic!("limit {limit}: seqno {other}"),
        }
        for (i, pv) in after.pvs.iter().enumerate() {
            for m in 0..pv.mdas.len() {
                let t = pv.read_text(m, false).unwrap_or_else(|e| panic!("limit {limit}: PV {i} area {m}: {e}"));
                let t = t.unwrap_or_else(|| panic!("limit {limit}: PV {i} area {m} lost its text"));
                assert!(t.vg.seqno == 1 || t.vg.seqno == 2);
            }
        }
        // The next writer repairs: every area at the new seqno.
        let mut repaired = found.vg.clone();
        repaired.seqno = found.vg.seqno + 1;
        let pvs: Vec<&disk::Pv> = after.pvs.iter().collect();
        disk::commit(&pvs, &disk::vg_text(&repaired, "repair", "test", 0)).unwrap();
        let fixed = scan_mem(&devs);
        let f = &fixed.vgs["vg0"];
        assert_eq!(f.vg.seqno, repaired.seqno);
        assert!(f.stale.is_empty(), "limit {limit}: stale after repair: {:?}", f.stale);
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both outcomes happen across the cut points: {seen:?}");
}
