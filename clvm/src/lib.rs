//! clvm: the cluster volume manager, LVM2-compatible. Layers, bottom up:
//!
//! - the on-disk format, byte-compatible with what Debian's lvm2 2.03 reads and writes
//!   (sans-IO, below);
//! - [`disk`]: PVs on `blockdev` devices (files, block devices, `gnbd://` exports): reading
//!   labels and texts, pvcreate's layout, the three-step commit;
//! - [`scan`]: which devices are PVs and which text of each VG is current;
//! - [`alloc`] and [`ops`]: extent allocation and the changes each command makes to a VG
//!   (sans-IO);
//! - [`map`]: LV offsets to PV offsets, and an LV as a device ([`map::LvDevice`]);
//!
//! The format layer:
//!
//! - [`label`]: the `LABELONE` label in one of the first four sectors and its `pv_header`
//!   (PV UUID, device size, data / metadata / bootloader area lists).
//! - [`mda`]: a metadata area's `mda_header` (magic, version, `raw_locn` slots) and its
//!   circular buffer of metadata texts: reading the text at a slot with its checksum, placing a
//!   new text after the committed one as LVM2 does, the precommit and commit headers.
//! - [`text`]: LVM2's configuration-text grammar (sections, keys, integers, floats, strings
//!   with escapes, arrays, comments), a tree, and a writer in LVM2's layout.
//! - [`vg`]: the volume group model over that tree (PVs, LVs, striped / mirror / raid1
//!   segments), keeping every key it does not model so a stock VG round-trips losslessly.
//!
//! Everything is sans-IO: decoders take byte slices, encoders return buffers; reading and
//! writing devices belongs to the callers. The byte layout is in `clvm/docs/format.md`.
//!
//! ```
//! use clvm::{mda::MdaHeader, text, vg::VolumeGroup};
//!
//! // A fresh metadata area of 1 MiB at byte 4096 of a PV, as pvcreate leaves it.
//! let header = MdaHeader::new(4096, 1 << 20);
//! let mut area = vec![0u8; 1 << 20];
//! let vg_text = "vg0 {\n\tid = \"x\"\n\tseqno = 1\n\textent_size = 8192\n\tphysical_volumes {\n\t}\n}\n";
//! let planned = header.plan_write(vg_text.as_bytes()).unwrap();
//! planned.apply(&mut area).unwrap();
//! let header = header.commit(planned.locn);
//! area[..512].copy_from_slice(&header.encode().unwrap());
//!
//! // Reading it back: header, text (checksum checked), tree, VG.
//! let header = MdaHeader::decode(&area).unwrap();
//! let raw = header.read_text(&area, header.committed().unwrap()).unwrap();
//! let tree = text::parse(raw.strip_suffix(&[0]).unwrap()).unwrap();
//! assert_eq!(VolumeGroup::from_root(&tree).unwrap().seqno, 1);
//! ```
#![forbid(unsafe_code)]

mod format;
pub mod report;

pub mod activate;
pub mod alloc;
pub mod cli;
pub mod clvmd;
pub mod disk;
pub mod lock;
pub mod map;
pub mod mirror;
pub mod ops;
pub mod scan;
pub mod serve;

pub use format::{crc, label, mda, text, vg};
