//! LVM2's checksum: CRC-32 with the reflected polynomial 0xEDB88320, started from
//! [`INITIAL_CRC`] and with no final inversion (unlike zlib's `crc32`, which starts from
//! 0xFFFFFFFF and inverts the result). Chained calls continue a checksum over split buffers,
//! which is how the text of a metadata area that wraps around is checked.

/// The value every LVM2 checksum starts from (`INITIAL_CRC` in LVM2's `crc.h`).
pub const INITIAL_CRC: u32 = 0xf597_a6cf;

/// Continues the checksum `initial` over `buf`.
pub fn calc_crc(initial: u32, buf: &[u8]) -> u32 {
    let mut crc = initial;
    for &b in buf {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_zlib_crc32_when_started_inverted() {
        // zlib's crc32("123456789") = 0xCBF43926 = !calc_crc(!0, ..).
        assert_eq!(!calc_crc(0xffff_ffff, b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn chains_over_split_buffers() {
        let whole = calc_crc(INITIAL_CRC, b"hello, volume group");
        let first = calc_crc(INITIAL_CRC, b"hello, ");
        assert_eq!(calc_crc(first, b"volume group"), whole);
    }
}
