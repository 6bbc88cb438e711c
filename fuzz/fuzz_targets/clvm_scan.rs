//! clvm's whole read path against a PV whose metadata text is arbitrary (as a corrupt disk or
//! a hostile node could leave it): the scan, the VG model, the consistency check, the reports
//! and the LV mapping (every LV opened through the map and read) never panic.
#![no_main]

use blockdev::{Device, MemDevice};
use clvm::crc::{calc_crc, INITIAL_CRC};
use clvm::disk::{self, PvcreateOptions};
use clvm::mda::{MdaHeader, RawLocn, MDA_HEADER_SIZE};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const DEV: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let mem = Arc::new(MemDevice::new(vec![0u8; DEV]));
    let opts = PvcreateOptions { metadata_size: Some(64 << 10), data_alignment: 128 << 10, ..Default::default() };
    let Ok(pv) = disk::pvcreate("fuzz0", mem.clone(), &opts) else { return };
    let locn = pv.label.pv_header.metadata_areas[0];
    let ring = locn.size as usize - MDA_HEADER_SIZE;
    // The fuzz bytes as the committed text (NUL added), placed at the start of the ring.
    let mut text = data[..data.len().min(ring - 1)].to_vec();
    text.push(0);
    let _ = mem.write_at(&text, locn.offset + MDA_HEADER_SIZE as u64);
    let r = RawLocn {
        offset: MDA_HEADER_SIZE as u64,
        size: text.len() as u64,
        checksum: calc_crc(INITIAL_CRC, &text),
        flags: 0,
    };
    let h = MdaHeader::new(locn.offset, locn.size).commit(r);
    if let Ok(b) = h.encode() {
        let _ = mem.write_at(&b, locn.offset);
    }
    let scan = clvm::scan::scan(vec![("fuzz0".into(), mem.clone() as Arc<dyn Device>)]);
    let src = clvm::cli::reports_source(&scan);
    for cmd in [clvm::report::Command::Pvs, clvm::report::Command::Vgs, clvm::report::Command::Lvs] {
        let mut args = clvm::report::ReportArgs::new(cmd);
        args.all = true;
        args.segments = cmd == clvm::report::Command::Lvs;
        let _ = clvm::report::report(&args, &src, &|_, _| clvm::report::LvState::Inactive);
    }
    for found in scan.vgs.values() {
        let _ = clvm::cli::vg_check(&found.vg);
        let _ = clvm::alloc::vg_free(&found.vg);
        for lv in &found.vg.logical_volumes {
            let pvs = found
                .vg
                .physical_volumes
                .iter()
                .map(|p| (p.name.clone(), mem.clone() as Arc<dyn Device>))
                .collect();
            if let Ok(dev) = clvm::map::LvDevice::new(found.vg.clone(), &lv.name, pvs) {
                let mut b = vec![0u8; (dev.size().min(8192)) as usize];
                let _ = dev.read_at(&mut b, 0);
            }
        }
    }
});
