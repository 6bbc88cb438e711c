//! The physical volume label: a 512-byte sector, one of the first four of the device, that
//! starts with `LABELONE` and carries the `pv_header` (PV UUID, device size, data and metadata
//! area lists, and the header extension of LVM2 2.02.110 and later).
//!
//! Layout (little-endian; the full table is in `docs/format.md`):
//!
//! ```text
//! label_header  0: id "LABELONE"   8: sector_xl u64   16: crc_xl u32   20: offset_xl u32
//!              24: type "LVM2 001"
//! pv_header    at offset_xl: pv_uuid [32]  device_size_xl u64
//!              disk_locn { offset u64, size u64 }... data areas, then a zero entry
//!              disk_locn... metadata areas, then a zero entry
//!              pv_header_extension: version u32, flags u32, disk_locn... bootloader areas, zero entry
//! ```
//!
//! The CRC covers the sector from `offset_xl` (byte 20) to its end.

use super::crc::{calc_crc, INITIAL_CRC};
use super::{le32, le64};

/// Sector size of the label (`SECTOR_SIZE`, `LABEL_SIZE`).
pub const SECTOR_SIZE: usize = 512;
/// The label is looked for in this many sectors from the start of the device.
pub const LABEL_SCAN_SECTORS: usize = 4;
/// Bytes to read from the start of a device to find a label.
pub const LABEL_SCAN_SIZE: usize = SECTOR_SIZE * LABEL_SCAN_SECTORS;
/// The label's identifier (`LABEL_ID`).
pub const LABEL_ID: &[u8; 8] = b"LABELONE";
/// The label type of the text format (`LVM2_LABEL`).
pub const LVM2_LABEL: &[u8; 8] = b"LVM2 001";
/// Size of `label_header`; `offset_xl` normally points right after it.
pub const LABEL_HEADER_SIZE: usize = 32;
/// Length of a UUID without dashes (`ID_LEN`).
pub const ID_LEN: usize = 32;
/// Bytes the CRC covers start here (the `offset_xl` field).
const CRC_FROM: usize = 20;
/// `pv_header_extension` version LVM2 2.03 writes.
pub const PV_HEADER_EXTENSION_VSN: u32 = 2;
/// `pv_header_extension` flag: the PV belongs to a VG (`PV_EXT_USED`).
pub const PV_EXT_USED: u32 = 0x1;
/// The sector LVM2 writes its label to by default.
pub const DEFAULT_LABEL_SECTOR: u64 = 1;

/// A failure to find or decode a label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// Fewer bytes than the decoder needs were given.
    #[error("label: need {need} bytes from the start of the device, got {got}")]
    Short { need: usize, got: usize },
    /// None of the first four sectors holds a label.
    #[error("no LVM2 label (LABELONE) in the first {LABEL_SCAN_SECTORS} sectors: not a physical volume")]
    NotFound,
    /// The sector does not start with `LABELONE`.
    #[error("sector {sector}: no LABELONE identifier")]
    BadId { sector: u64 },
    /// The label names a sector other than the one it was found in.
    #[error("label found in sector {found} claims to be in sector {claimed} (stale or moved label)")]
    WrongSector { found: u64, claimed: u64 },
    /// The CRC over the label does not match.
    #[error("label in sector {sector}: checksum {stored:#010x} stored, {computed:#010x} computed (corrupt label)")]
    BadCrc { sector: u64, stored: u32, computed: u32 },
    /// The pv_header offset points outside the sector.
    #[error("label in sector {sector}: pv_header offset {offset} outside the sector")]
    BadOffset { sector: u64, offset: u32 },
    /// The label type is not the text format's.
    #[error("label in sector {sector}: type {found:?} is not \"LVM2 001\" (not an LVM2 text-format PV)")]
    BadType { sector: u64, found: String },
    /// An area list runs past the end of the sector.
    #[error("pv_header: {list} area list runs past the end of the label sector")]
    Truncated { list: &'static str },
    /// An area to encode has offset 0, which would end its list early.
    #[error("pv_header: {list} area {index} has offset 0 (a zero offset terminates the list)")]
    ZeroOffset { list: &'static str, index: usize },
    /// The pv_header does not fit in the label sector.
    #[error("pv_header: {bytes} bytes do not fit in the {room} bytes left in the label sector")]
    TooBig { bytes: usize, room: usize },
}

/// A data, metadata or bootloader area: byte offset and size on the device (`disk_locn`).
/// A size of 0 for a data area means "to the end of the device".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiskLocn {
    /// Byte offset from the start of the device; never 0 (0 ends a list).
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// `pv_header_extension`, present when its version is non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvHeaderExtension {
    /// Extension version (2 in LVM2 2.03).
    pub version: u32,
    /// Flags: [`PV_EXT_USED`].
    pub flags: u32,
    /// Bootloader areas (`pvcreate --bootloaderareasize`).
    pub bootloader_areas: Vec<DiskLocn>,
}

/// The `pv_header` that follows the label header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvHeader {
    /// The PV UUID, 32 characters without dashes.
    pub uuid: [u8; ID_LEN],
    /// Device size in bytes as pvcreate saw it.
    pub device_size: u64,
    /// Data areas (LVM2 writes one: pe_start to the end, size 0).
    pub data_areas: Vec<DiskLocn>,
    /// Metadata areas (0, 1 or 2).
    pub metadata_areas: Vec<DiskLocn>,
    /// The extension, `None` when its version is 0 (written by LVM2 before 2.02.110).
    pub extension: Option<PvHeaderExtension>,
}

/// A decoded label: where it is, its pv_header offset, and the pv_header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Sector (0..4) the label is in.
    pub sector: u64,
    /// Offset of the pv_header in the sector (32).
    pub offset: u32,
    /// The pv_header.
    pub pv_header: PvHeader,
}

impl PvHeader {
    /// The UUID in LVM2's display form, `xxxxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx`.
    pub fn uuid_string(&self) -> String {
        format_uuid(&self.uuid)
    }

    /// Decodes a pv_header from `b` (the rest of the label sector from `offset_xl`).
    pub fn decode(b: &[u8]) -> Result<PvHeader, LabelError> {
        if b.len() < ID_LEN + 8 {
            return Err(LabelError::Truncated { list: "uuid" });
        }
        let mut uuid = [0u8; ID_LEN];
        uuid.copy_from_slice(&b[..ID_LEN]);
        let device_size = le64(b, ID_LEN);
        let mut pos = ID_LEN + 8;
        let data_areas = decode_list(b, &mut pos, "data")?;
        let metadata_areas = decode_list(b, &mut pos, "metadata")?;
        let extension = if pos + 8 <= b.len() && le32(b, pos) != 0 {
            let version = le32(b, pos);
            let flags = le32(b, pos + 4);
            pos += 8;
            let bootloader_areas = decode_list(b, &mut pos, "bootloader")?;
            Some(PvHeaderExtension { version, flags, bootloader_areas })
        } else {
            None
        };
        Ok(PvHeader { uuid, device_size, data_areas, metadata_areas, extension })
    }

    /// Bytes the encoding takes (terminators included).
    pub fn encoded_len(&self) -> usize {
        let mut n = ID_LEN + 8 + 16 * (self.data_areas.len() + 1) + 16 * (self.metadata_areas.len() + 1);
        if let Some(ext) = &self.extension {
            n += 8 + 16 * (ext.bootloader_areas.len() + 1);
        }
        n
    }

    /// Encodes into `out`, which must be at least [`Self::encoded_len`] long.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<(), LabelError> {
        let need = self.encoded_len();
        if out.len() < need {
            return Err(LabelError::TooBig { bytes: need, room: out.len() });
        }
        out[..ID_LEN].copy_from_slice(&self.uuid);
        out[ID_LEN..ID_LEN + 8].copy_from_slice(&self.device_size.to_le_bytes());
        let mut pos = ID_LEN + 8;
        encode_list(out, &mut pos, &self.data_areas, "data")?;
        encode_list(out, &mut pos, &self.metadata_areas, "metadata")?;
        if let Some(ext) = &self.extension {
            out[pos..pos + 4].copy_from_slice(&ext.version.to_le_bytes());
            out[pos + 4..pos + 8].copy_from_slice(&ext.flags.to_le_bytes());
            pos += 8;
            encode_list(out, &mut pos, &ext.bootloader_areas, "bootloader")?;
        }
        Ok(())
    }
}

fn decode_list(b: &[u8], pos: &mut usize, list: &'static str) -> Result<Vec<DiskLocn>, LabelError> {
    let mut v = Vec::new();
    loop {
        if *pos + 16 > b.len() {
            return Err(LabelError::Truncated { list });
        }
        let offset = le64(b, *pos);
        let size = le64(b, *pos + 8);
        *pos += 16;
        if offset == 0 {
            return Ok(v);
        }
        v.push(DiskLocn { offset, size });
    }
}

fn encode_list(out: &mut [u8], pos: &mut usize, v: &[DiskLocn], list: &'static str) -> Result<(), LabelError> {
    for (index, d) in v.iter().enumerate() {
        if d.offset == 0 {
            return Err(LabelError::ZeroOffset { list, index });
        }
        out[*pos..*pos + 8].copy_from_slice(&d.offset.to_le_bytes());
        out[*pos + 8..*pos + 16].copy_from_slice(&d.size.to_le_bytes());
        *pos += 16;
    }
    out[*pos..*pos + 16].fill(0);
    *pos += 16;
    Ok(())
}

impl Label {
    /// A label in sector 1 (where LVM2 puts it) for `pv_header`.
    pub fn new(pv_header: PvHeader) -> Label {
        Label { sector: DEFAULT_LABEL_SECTOR, offset: LABEL_HEADER_SIZE as u32, pv_header }
    }

    /// Finds and decodes the label in the first [`LABEL_SCAN_SIZE`] bytes of a device, as LVM2
    /// does: the first sector that starts with `LABELONE` and decodes wins.
    pub fn find(start: &[u8]) -> Result<Label, LabelError> {
        if start.len() < LABEL_SCAN_SIZE {
            return Err(LabelError::Short { need: LABEL_SCAN_SIZE, got: start.len() });
        }
        let mut first_error = None;
        for s in 0..LABEL_SCAN_SECTORS {
            let sector = &start[s * SECTOR_SIZE..(s + 1) * SECTOR_SIZE];
            match Label::decode(sector, s as u64) {
                Ok(l) => return Ok(l),
                Err(LabelError::BadId { .. }) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(LabelError::NotFound))
    }

    /// Decodes the 512-byte `sector`, which was read from sector number `sector_no`.
    pub fn decode(sector: &[u8], sector_no: u64) -> Result<Label, LabelError> {
        if sector.len() < SECTOR_SIZE {
            return Err(LabelError::Short { need: SECTOR_SIZE, got: sector.len() });
        }
        let sector = &sector[..SECTOR_SIZE];
        if &sector[..8] != LABEL_ID {
            return Err(LabelError::BadId { sector: sector_no });
        }
        let claimed = le64(sector, 8);
        if claimed != sector_no {
            return Err(LabelError::WrongSector { found: sector_no, claimed });
        }
        let stored = le32(sector, 16);
        let computed = calc_crc(INITIAL_CRC, &sector[CRC_FROM..]);
        if stored != computed {
            return Err(LabelError::BadCrc { sector: sector_no, stored, computed });
        }
        let offset = le32(sector, 20);
        if (offset as usize) < LABEL_HEADER_SIZE || offset as usize >= SECTOR_SIZE {
            return Err(LabelError::BadOffset { sector: sector_no, offset });
        }
        if &sector[24..32] != LVM2_LABEL {
            let found = String::from_utf8_lossy(&sector[24..32]).into_owned();
            return Err(LabelError::BadType { sector: sector_no, found });
        }
        let pv_header = PvHeader::decode(&sector[offset as usize..])?;
        Ok(Label { sector: sector_no, offset, pv_header })
    }

    /// Encodes the label sector (to be written at byte `sector * 512` of the device).
    pub fn encode(&self) -> Result<[u8; SECTOR_SIZE], LabelError> {
        let off = self.offset as usize;
        if !(LABEL_HEADER_SIZE..SECTOR_SIZE).contains(&off) {
            return Err(LabelError::BadOffset { sector: self.sector, offset: self.offset });
        }
        let mut s = [0u8; SECTOR_SIZE];
        s[..8].copy_from_slice(LABEL_ID);
        s[8..16].copy_from_slice(&self.sector.to_le_bytes());
        s[20..24].copy_from_slice(&self.offset.to_le_bytes());
        s[24..32].copy_from_slice(LVM2_LABEL);
        self.pv_header.encode_into(&mut s[off..])?;
        let crc = calc_crc(INITIAL_CRC, &s[CRC_FROM..]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        Ok(s)
    }
}

/// Formats a 32-character UUID with LVM2's dashes (6-4-4-4-4-4-6).
pub fn format_uuid(id: &[u8]) -> String {
    let mut s = String::with_capacity(38);
    for (i, &c) in id.iter().enumerate() {
        if matches!(i, 6 | 10 | 14 | 18 | 22 | 26) {
            s.push('-');
        }
        s.push(if c.is_ascii_graphic() { c as char } else { '?' });
    }
    s
}

/// Parses LVM2's dashed UUID form back to 32 bytes; `None` when it is not 32 alphanumerics.
pub fn parse_uuid(s: &str) -> Option<[u8; ID_LEN]> {
    let raw: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if raw.len() != ID_LEN || !raw.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&raw);
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sector 1 of a PV that stock pvcreate + vgcreate (LVM2 2.03.16) wrote, first 0x90 bytes
    /// (the rest of the sector is zero).
    const STOCK: [u8; 0x90] = [
        0x4c, 0x41, 0x42, 0x45, 0x4c, 0x4f, 0x4e, 0x45, 0x01, 0, 0, 0, 0, 0, 0, 0, //
        0x22, 0x93, 0x60, 0xec, 0x20, 0, 0, 0, 0x4c, 0x56, 0x4d, 0x32, 0x20, 0x30, 0x30, 0x31, //
        b'4', b'4', b'v', b'A', b'T', b'h', b'c', b'o', b'C', b'h', b'f', b'p', b'y', b'T', b'T', b'H', //
        b't', b'x', b'Q', b'B', b'I', b'u', b'C', b'Y', b'2', b'Y', b't', b'7', b'C', b'w', b'4', b'R', //
        0, 0, 0, 0x04, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, //
        0, 0xf0, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0x01, 0, 0, 0, //
    ];

    fn stock_device() -> Vec<u8> {
        let mut dev = vec![0u8; LABEL_SCAN_SIZE];
        dev[512..512 + STOCK.len()].copy_from_slice(&STOCK);
        dev
    }

    #[test]
    fn decodes_stock_label_and_reencodes_byte_exact() {
        let dev = stock_device();
        let l = Label::find(&dev).expect("stock label decodes");
        assert_eq!(l.sector, 1);
        assert_eq!(l.pv_header.uuid_string(), "44vATh-coCh-fpyT-THtx-QBIu-CY2Y-t7Cw4R");
        assert_eq!(l.pv_header.device_size, 64 << 20);
        assert_eq!(l.pv_header.data_areas, vec![DiskLocn { offset: 1 << 20, size: 0 }]);
        assert_eq!(l.pv_header.metadata_areas, vec![DiskLocn { offset: 4096, size: 0xff000 }]);
        let ext = l.pv_header.extension.as_ref().expect("2.03 writes the extension");
        assert_eq!((ext.version, ext.flags), (PV_HEADER_EXTENSION_VSN, PV_EXT_USED));
        assert_eq!(&l.encode().expect("encodes")[..], &dev[512..1024]);
    }

    #[test]
    fn corrupt_label_is_refused() {
        let mut dev = stock_device();
        dev[512 + 40] ^= 1;
        assert!(matches!(Label::find(&dev), Err(LabelError::BadCrc { sector: 1, .. })));
        assert_eq!(Label::find(&[0u8; LABEL_SCAN_SIZE]), Err(LabelError::NotFound));
        assert!(matches!(Label::find(&[0u8; 100]), Err(LabelError::Short { .. })));
    }

    #[test]
    fn uuid_forms() {
        let id = *b"44vAThcoChfpyTTHtxQBIuCY2Yt7Cw4R";
        assert_eq!(parse_uuid(&format_uuid(&id)), Some(id));
        assert_eq!(parse_uuid("short"), None);
    }

    fn locn() -> impl Strategy<Value = DiskLocn> {
        (1u64.., any::<u64>()).prop_map(|(offset, size)| DiskLocn { offset, size })
    }

    fn pv_header() -> impl Strategy<Value = PvHeader> {
        let ext = proptest::option::of(
            (1u32.., any::<u32>(), proptest::collection::vec(locn(), 0..3))
                .prop_map(|(version, flags, bootloader_areas)| PvHeaderExtension { version, flags, bootloader_areas }),
        );
        (
            proptest::array::uniform32(any::<u8>()),
            any::<u64>(),
            proptest::collection::vec(locn(), 0..6),
            proptest::collection::vec(locn(), 0..6),
            ext,
        )
            .prop_map(|(uuid, device_size, data_areas, metadata_areas, extension)| PvHeader {
                uuid,
                device_size,
                data_areas,
                metadata_areas,
                extension,
            })
    }

    proptest! {
        #[test]
        fn label_roundtrips(sector in 0u64..4, pv in pv_header()) {
            let l = Label { sector, offset: LABEL_HEADER_SIZE as u32, pv_header: pv };
            let s = l.encode().expect("fits: at most 17 areas");
            prop_assert_eq!(Label::decode(&s, sector).expect("decodes"), l.clone());
            let mut dev = vec![0u8; LABEL_SCAN_SIZE];
            dev[sector as usize * 512..][..512].copy_from_slice(&s);
            prop_assert_eq!(Label::find(&dev).expect("found"), l);
        }

        #[test]
        fn pv_header_roundtrips(pv in pv_header()) {
            let mut b = vec![0u8; pv.encoded_len()];
            pv.encode_into(&mut b).expect("room");
            prop_assert_eq!(PvHeader::decode(&b).expect("decodes"), pv);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..2200), fix in any::<bool>()) {
            let mut b = b;
            if fix && b.len() >= 1024 {
                // A valid id, sector and CRC so the pv_header decoder runs on the garbage.
                b[512..520].copy_from_slice(LABEL_ID);
                b[520..528].copy_from_slice(&1u64.to_le_bytes());
                let crc = calc_crc(INITIAL_CRC, &b[532..1024]);
                b[528..532].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = Label::find(&b);
            let _ = PvHeader::decode(&b);
        }
    }
}
