//! clvm's LVM2 format decoders (labels, mda_headers, metadata texts: read from shared disks any
//! node or a stock lvm2 can write) against arbitrary bytes: nothing panics; with checksums fixed
//! up so the inner decoders run, whatever decodes re-encodes to an equal value.
#![no_main]

use clvm::crc::{calc_crc, INITIAL_CRC};
use clvm::label::{Label, LABEL_SCAN_SIZE};
use clvm::mda::{MdaHeader, MDA_HEADER_SIZE};
use clvm::{text, vg::VolumeGroup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A label in sector 1, its id, sector number and CRC made right.
    let mut dev = [0u8; LABEL_SCAN_SIZE];
    let n = data.len().min(LABEL_SCAN_SIZE);
    dev[..n].copy_from_slice(&data[..n]);
    let _ = Label::find(&dev);
    dev[512..520].copy_from_slice(b"LABELONE");
    dev[520..528].copy_from_slice(&1u64.to_le_bytes());
    let crc = calc_crc(INITIAL_CRC, &dev[532..1024]);
    dev[528..532].copy_from_slice(&crc.to_le_bytes());
    if let Ok(l) = Label::decode(&dev[512..1024], 1) {
        if let Ok(again) = l.encode() {
            assert_eq!(Label::decode(&again, 1).expect("re-encoded label decodes"), l);
        }
    }

    // An mda_header with magic, version and checksum made right, and a text read through it.
    let mut area = data.to_vec();
    if area.len() >= MDA_HEADER_SIZE {
        area[4..20].copy_from_slice(b" LVM2 x[5A%r0N*>");
        area[20..24].copy_from_slice(&1u32.to_le_bytes());
        let crc = calc_crc(INITIAL_CRC, &area[4..MDA_HEADER_SIZE]);
        area[..4].copy_from_slice(&crc.to_le_bytes());
        if let Ok(h) = MdaHeader::decode(&area) {
            let again = h.encode().expect("a decoded header fits");
            assert_eq!(MdaHeader::decode(&again).expect("re-encoded header decodes"), h);
            if let Some(r) = h.committed() {
                let _ = h.read_text(&area, r);
            }
            let _ = h.plan_write(data);
        }
    }

    // The text grammar and the VG model: what parses re-parses from our writer unchanged.
    if let Ok(root) = text::parse(data) {
        let written = text::write(&root);
        assert_eq!(text::parse(written.as_bytes()).expect("our output parses"), root);
        if let Ok(vg) = VolumeGroup::from_root(&root) {
            let _ = vg.to_section();
        }
    }
});
