//! The LVM2 on-disk format, sans-IO: every function here decodes from byte slices or encodes
//! into buffers; reading and writing devices is the caller's business.

pub mod crc;
pub mod label;
pub mod mda;
pub mod text;
pub mod vg;

/// Reads a little-endian u32 at `off`; the caller has checked the bounds.
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4-byte slice"))
}

/// Reads a little-endian u64 at `off`; the caller has checked the bounds.
pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8-byte slice"))
}
