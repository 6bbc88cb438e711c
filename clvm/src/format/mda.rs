//! A metadata area: the 512-byte `mda_header` at its start and the circular buffer of metadata
//! texts behind it.
//!
//! ```text
//! mda_header  0: checksum_xl u32 (CRC of bytes 4..512)   4: magic " LVM2 x[5A%r0N*>"
//!            20: version u32 (1)   24: start u64 (byte offset of the area on the device)
//!            32: size u64 (bytes in the area, header included)
//!            40: raw_locn { offset u64, size u64, checksum u32, flags u32 }... then a zero entry
//! ```
//!
//! `raw_locns[0]` is the committed text, `raw_locns[1]` (while a change is in flight) the
//! precommitted one. A text's offset is relative to the area start; a text that runs past the
//! end of the area continues right after the header (at [`MDA_HEADER_SIZE`]). Its size counts
//! the terminating NUL, and its checksum is LVM2's CRC over those `size` bytes.
//!
//! A new text goes after the committed one, its start aligned to [`MDA_ORIGINAL_ALIGNMENT`]
//! bytes of the device, back to [`MDA_HEADER_SIZE`] when that is past the end; it must not
//! overlap the committed text, which stays readable until the new header is written.

use super::crc::{calc_crc, INITIAL_CRC};
use super::{le32, le64};

/// Size of the mda_header.
pub const MDA_HEADER_SIZE: usize = 512;
/// The mda_header magic (`FMTT_MAGIC`).
pub const FMTT_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// The mda_header version (`FMTT_VERSION`).
pub const FMTT_VERSION: u32 = 1;
/// Alignment of a new text's start on the device (`MDA_ORIGINAL_ALIGNMENT`).
pub const MDA_ORIGINAL_ALIGNMENT: u64 = 512;
/// raw_locn flag: the metadata area is ignored (`pvchange --metadataignore y`).
pub const RAW_LOCN_IGNORED: u32 = 0x1;
/// Bytes of one raw_locn.
pub const RAW_LOCN_SIZE: usize = 24;
/// Offset of the first raw_locn in the header.
const LOCNS_AT: usize = 40;
/// Most raw_locns the header holds.
pub const MAX_RAW_LOCNS: usize = (MDA_HEADER_SIZE - LOCNS_AT) / RAW_LOCN_SIZE;

/// A failure to decode a metadata area or to place a text in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MdaError {
    /// Fewer bytes than the decoder needs were given.
    #[error("metadata area: need {need} bytes, got {got}")]
    Short { need: usize, got: usize },
    /// The header checksum does not match.
    #[error("mda_header: checksum {stored:#010x} stored, {computed:#010x} computed (corrupt metadata area header)")]
    BadChecksum { stored: u32, computed: u32 },
    /// The magic is wrong: not an LVM2 text metadata area.
    #[error("mda_header: wrong magic (not an LVM2 text-format metadata area)")]
    BadMagic,
    /// An unknown header version.
    #[error("mda_header: version {version} unsupported (only {FMTT_VERSION})")]
    BadVersion { version: u32 },
    /// The header's area size cannot hold a text.
    #[error("mda_header: area size {size} is smaller than its header")]
    BadSize { size: u64 },
    /// Too many raw_locns for one header.
    #[error("mda_header: {count} raw_locns, at most {MAX_RAW_LOCNS} fit")]
    TooManyLocns { count: usize },
    /// A raw_locn points outside the area.
    #[error("raw_locn offset {offset} size {size} lies outside the {area} byte metadata area")]
    LocnOutside { offset: u64, size: u64, area: u64 },
    /// The text's checksum does not match.
    #[error("metadata text at offset {offset}: checksum {stored:#010x} stored, {computed:#010x} computed (torn or corrupt write)")]
    BadTextChecksum { offset: u64, stored: u32, computed: u32 },
    /// The text does not fit beside the committed one.
    #[error("metadata text of {size} bytes does not fit in the {room} bytes free in the metadata area (enlarge it with pvcreate --metadatasize)")]
    NoRoom { size: u64, room: u64 },
}

/// Where a metadata text is (`raw_locn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawLocn {
    /// Byte offset from the start of the metadata area.
    pub offset: u64,
    /// Bytes of text, terminating NUL included.
    pub size: u64,
    /// LVM2 CRC of the text.
    pub checksum: u32,
    /// [`RAW_LOCN_IGNORED`] or 0.
    pub flags: u32,
}

impl RawLocn {
    fn is_zero(&self) -> bool {
        *self == RawLocn::default()
    }
}

/// The mda_header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdaHeader {
    /// Header version (1).
    pub version: u32,
    /// Byte offset of the area on the device (the metadata area's `disk_locn.offset`).
    pub start: u64,
    /// Size of the area in bytes, header included.
    pub size: u64,
    /// Text locations: `[0]` committed, `[1]` precommitted while a commit is in flight.
    pub raw_locns: Vec<RawLocn>,
}

impl MdaHeader {
    /// An empty header (as pvcreate writes it) for an area at `start` of `size` bytes.
    pub fn new(start: u64, size: u64) -> MdaHeader {
        MdaHeader { version: FMTT_VERSION, start, size, raw_locns: Vec::new() }
    }

    /// Decodes the header from the first 512 bytes of the area.
    pub fn decode(b: &[u8]) -> Result<MdaHeader, MdaError> {
        if b.len() < MDA_HEADER_SIZE {
            return Err(MdaError::Short { need: MDA_HEADER_SIZE, got: b.len() });
        }
        let b = &b[..MDA_HEADER_SIZE];
        let stored = le32(b, 0);
        let computed = calc_crc(INITIAL_CRC, &b[4..]);
        if stored != computed {
            return Err(MdaError::BadChecksum { stored, computed });
        }
        if &b[4..20] != FMTT_MAGIC {
            return Err(MdaError::BadMagic);
        }
        let version = le32(b, 20);
        if version != FMTT_VERSION {
            return Err(MdaError::BadVersion { version });
        }
        let start = le64(b, 24);
        let size = le64(b, 32);
        let mut raw_locns = Vec::new();
        for i in 0..MAX_RAW_LOCNS {
            let p = LOCNS_AT + i * RAW_LOCN_SIZE;
            let r =
                RawLocn { offset: le64(b, p), size: le64(b, p + 8), checksum: le32(b, p + 16), flags: le32(b, p + 20) };
            if r.is_zero() {
                break;
            }
            raw_locns.push(r);
        }
        Ok(MdaHeader { version, start, size, raw_locns })
    }

    /// Encodes the header (512 bytes, checksum filled in).
    pub fn encode(&self) -> Result<[u8; MDA_HEADER_SIZE], MdaError> {
        if self.raw_locns.len() > MAX_RAW_LOCNS {
            return Err(MdaError::TooManyLocns { count: self.raw_locns.len() });
        }
        let mut b = [0u8; MDA_HEADER_SIZE];
        b[4..20].copy_from_slice(FMTT_MAGIC);
        b[20..24].copy_from_slice(&self.version.to_le_bytes());
        b[24..32].copy_from_slice(&self.start.to_le_bytes());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        for (i, r) in self.raw_locns.iter().enumerate() {
            let p = LOCNS_AT + i * RAW_LOCN_SIZE;
            b[p..p + 8].copy_from_slice(&r.offset.to_le_bytes());
            b[p + 8..p + 16].copy_from_slice(&r.size.to_le_bytes());
            b[p + 16..p + 20].copy_from_slice(&r.checksum.to_le_bytes());
            b[p + 20..p + 24].copy_from_slice(&r.flags.to_le_bytes());
        }
        let crc = calc_crc(INITIAL_CRC, &b[4..]);
        b[..4].copy_from_slice(&crc.to_le_bytes());
        Ok(b)
    }

    /// The committed text's location, if the area holds one.
    pub fn committed(&self) -> Option<&RawLocn> {
        self.raw_locns.first().filter(|r| r.offset != 0)
    }

    /// The precommitted text's location, if a commit is in flight.
    pub fn precommitted(&self) -> Option<&RawLocn> {
        self.raw_locns.get(1).filter(|r| r.offset != 0)
    }

    /// The header LVM2 writes at precommit: the committed text stays `[0]`, `new` is `[1]`.
    pub fn precommit(&self, new: RawLocn) -> MdaHeader {
        let old = self.committed().copied().unwrap_or_default();
        MdaHeader { raw_locns: vec![old, new], ..self.clone() }
    }

    /// The header LVM2 writes at commit: `new` is the committed text, no precommitted one.
    pub fn commit(&self, new: RawLocn) -> MdaHeader {
        MdaHeader { raw_locns: vec![new], ..self.clone() }
    }

    /// The byte ranges of the area (offset from the area start, length) that hold the text at
    /// `r`: one range, or two when the text wraps past the end of the area.
    pub fn text_extents(&self, r: &RawLocn) -> Result<Vec<(u64, u64)>, MdaError> {
        let hdr = MDA_HEADER_SIZE as u64;
        let outside = || MdaError::LocnOutside { offset: r.offset, size: r.size, area: self.size };
        if self.size <= hdr {
            return Err(MdaError::BadSize { size: self.size });
        }
        if r.offset < hdr || r.offset >= self.size || r.size > self.size - hdr {
            return Err(outside());
        }
        let to_end = self.size - r.offset;
        if r.size <= to_end {
            Ok(vec![(r.offset, r.size)])
        } else {
            Ok(vec![(r.offset, to_end), (hdr, r.size - to_end)])
        }
    }

    /// Reads the text at `r` out of `area` (the metadata area's bytes from its start, at least
    /// `size` long, or at least up to the text's end) and checks its checksum. The returned
    /// bytes are `r.size` long, terminating NUL included.
    pub fn read_text(&self, area: &[u8], r: &RawLocn) -> Result<Vec<u8>, MdaError> {
        let mut text = Vec::with_capacity(usize::try_from(r.size).unwrap_or(0).min(area.len()));
        for (off, len) in self.text_extents(r)? {
            let end = off.saturating_add(len);
            let (Ok(o), Ok(e)) = (usize::try_from(off), usize::try_from(end)) else {
                return Err(MdaError::LocnOutside { offset: r.offset, size: r.size, area: self.size });
            };
            if e > area.len() {
                return Err(MdaError::Short { need: e, got: area.len() });
            }
            text.extend_from_slice(&area[o..e]);
        }
        let computed = calc_crc(INITIAL_CRC, &text);
        if computed != r.checksum {
            return Err(MdaError::BadTextChecksum { offset: r.offset, stored: r.checksum, computed });
        }
        Ok(text)
    }

    /// Places `text` (without its NUL; one is added) after the committed text, as LVM2 does,
    /// and returns the writes to make (area offset, bytes) and the new text's raw_locn. Nothing
    /// is committed until the caller writes [`Self::precommit`] / [`Self::commit`] headers.
    pub fn plan_write(&self, text: &[u8]) -> Result<PlannedWrite, MdaError> {
        let hdr = MDA_HEADER_SIZE as u64;
        if self.size <= hdr {
            return Err(MdaError::BadSize { size: self.size });
        }
        let mut data = Vec::with_capacity(text.len() + 1);
        data.extend_from_slice(text);
        data.push(0);
        let size = data.len() as u64;
        let ring = self.size - hdr;
        let (offset, room) = match self.committed() {
            None => (hdr, ring),
            Some(old) => {
                let ext = self.text_extents(old)?;
                let (last_off, last_len) = *ext.last().expect("one extent at least");
                let mut next = last_off + last_len;
                let abs = self.start.wrapping_add(next);
                let rem = abs % MDA_ORIGINAL_ALIGNMENT;
                if rem != 0 {
                    next += MDA_ORIGINAL_ALIGNMENT - rem;
                }
                if next >= self.size {
                    next = hdr;
                }
                // Free space runs from `next` around to the old text's start.
                let room = if next <= old.offset { old.offset - next } else { ring - (next - old.offset) };
                (next, room)
            }
        };
        if size > room {
            return Err(MdaError::NoRoom { size, room });
        }
        let checksum = calc_crc(INITIAL_CRC, &data);
        let locn = RawLocn { offset, size, checksum, flags: 0 };
        let to_end = (self.size - offset) as usize;
        let writes = if data.len() <= to_end {
            vec![(offset, data)]
        } else {
            let tail = data.split_off(to_end);
            vec![(offset, data), (hdr, tail)]
        };
        Ok(PlannedWrite { locn, writes })
    }
}

/// A text placed in a metadata area, not yet written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWrite {
    /// The raw_locn the text will have.
    pub locn: RawLocn,
    /// Bytes to write at offsets from the area start (two when the text wraps).
    pub writes: Vec<(u64, Vec<u8>)>,
}

impl PlannedWrite {
    /// Applies the writes to an in-memory copy of the area.
    pub fn apply(&self, area: &mut [u8]) -> Result<(), MdaError> {
        for (off, bytes) in &self.writes {
            let o = usize::try_from(*off).map_err(|_| MdaError::Short { need: usize::MAX, got: area.len() })?;
            let e = o + bytes.len();
            if e > area.len() {
                return Err(MdaError::Short { need: e, got: area.len() });
            }
            area[o..e].copy_from_slice(bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn area(size: usize) -> (MdaHeader, Vec<u8>) {
        let h = MdaHeader::new(4096, size as u64);
        let mut a = vec![0u8; size];
        a[..MDA_HEADER_SIZE].copy_from_slice(&h.encode().expect("encodes"));
        (h, a)
    }

    #[test]
    fn stock_header_decodes_and_reencodes() {
        // The first 64 bytes of an mda_header stock vgcreate + lvcreate wrote (rest zero).
        let mut b = [0u8; MDA_HEADER_SIZE];
        let head: [u8; 64] = [
            0x04, 0x06, 0x28, 0x9f, 0x20, 0x4c, 0x56, 0x4d, 0x32, 0x20, 0x78, 0x5b, 0x35, 0x41, 0x25, 0x72, //
            0x30, 0x4e, 0x2a, 0x3e, 0x01, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, //
            0, 0xf0, 0x0f, 0, 0, 0, 0, 0, 0, 0x06, 0, 0, 0, 0, 0, 0, //
            0xd3, 0x04, 0, 0, 0, 0, 0, 0, 0xfc, 0x49, 0xae, 0x1d, 0, 0, 0, 0, //
        ];
        b[..64].copy_from_slice(&head);
        let h = MdaHeader::decode(&b).expect("stock header decodes");
        assert_eq!((h.start, h.size), (4096, 0xff000));
        assert_eq!(h.committed(), Some(&RawLocn { offset: 0x600, size: 0x4d3, checksum: 0x1dae49fc, flags: 0 }));
        assert_eq!(h.precommitted(), None);
        assert_eq!(h.encode().expect("encodes"), b);
    }

    #[test]
    fn texts_follow_each_other_aligned_and_wrap() {
        let (mut h, mut a) = area(4096);
        let mut offsets = Vec::new();
        for i in 0..20 {
            let text = vec![b'a' + (i % 26) as u8; 700 + i * 13];
            let p = h.plan_write(&text).expect("fits");
            p.apply(&mut a).expect("inside");
            h = h.commit(p.locn);
            let back = h.read_text(&a, &p.locn).expect("reads back");
            assert_eq!(&back[..text.len()], &text[..]);
            assert_eq!(back.last(), Some(&0));
            offsets.push(p.locn.offset);
        }
        assert_eq!(&offsets[..3], &[512, 1536, 2560]);
        assert!(offsets.iter().all(|o| o % 512 == 0));
        assert!(offsets.windows(2).any(|w| w[1] < w[0]), "wrapped at least once");
    }

    #[test]
    fn too_big_and_torn_texts_are_refused() {
        let (h, mut a) = area(2048);
        assert!(matches!(h.plan_write(&[b'x'; 1600]), Err(MdaError::NoRoom { .. })));
        let p = h.plan_write(b"vg { }").expect("fits");
        p.apply(&mut a).expect("inside");
        a[513] ^= 0x20;
        assert!(matches!(h.read_text(&a, &p.locn), Err(MdaError::BadTextChecksum { .. })));
        let mut bad = h.encode().expect("encodes");
        bad[10] ^= 1;
        assert!(matches!(MdaHeader::decode(&bad), Err(MdaError::BadChecksum { .. })));
    }

    fn locn() -> impl Strategy<Value = RawLocn> {
        (1u64.., any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(offset, size, checksum, flags)| RawLocn {
            offset,
            size,
            checksum,
            flags,
        })
    }

    proptest! {
        #[test]
        fn header_roundtrips(start in any::<u64>(), size in any::<u64>(), locns in proptest::collection::vec(locn(), 0..=MAX_RAW_LOCNS)) {
            let h = MdaHeader { version: FMTT_VERSION, start, size, raw_locns: locns };
            let b = h.encode().expect("encodes");
            prop_assert_eq!(MdaHeader::decode(&b).expect("decodes"), h);
        }

        #[test]
        fn wrapping_writes_read_back(sizes in proptest::collection::vec(1usize..1500, 1..30), start in (1u64..64).prop_map(|s| s * 512)) {
            let mut h = MdaHeader::new(start, 4096 + 512);
            let mut a = vec![0u8; 4096 + 512];
            for (i, n) in sizes.into_iter().enumerate() {
                let text = vec![b'0' + (i % 10) as u8; n];
                let p = h.plan_write(&text).expect("1500 + 1500 + alignment fit in 4096");
                p.apply(&mut a).expect("inside");
                h = h.commit(p.locn);
                prop_assert_eq!(&h.read_text(&a, &p.locn).expect("reads")[..n], &text[..]);
            }
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..1200), off in any::<u64>(), size in any::<u64>()) {
            let _ = MdaHeader::decode(&b);
            let mut fixed = b.clone();
            if fixed.len() >= MDA_HEADER_SIZE {
                fixed[4..20].copy_from_slice(FMTT_MAGIC);
                fixed[20..24].copy_from_slice(&1u32.to_le_bytes());
                let crc = calc_crc(INITIAL_CRC, &fixed[4..MDA_HEADER_SIZE]);
                fixed[..4].copy_from_slice(&crc.to_le_bytes());
                if let Ok(h) = MdaHeader::decode(&fixed) {
                    let r = RawLocn { offset: off, size, checksum: 0, flags: 0 };
                    let _ = h.read_text(&fixed, &r);
                    if let Some(c) = h.committed() {
                        let _ = h.read_text(&fixed, c);
                    }
                    let _ = h.plan_write(b"x");
                }
            }
        }
    }
}
