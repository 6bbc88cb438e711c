//! Deterministic test content and a fast checksum (no dependencies).
//!
//! The content is position-addressable: the 8-byte word at byte offset `8 * i` of the
//! stream with seed `s` is `splitmix64(s + i * GAMMA)` in little-endian, so any range can
//! be regenerated on its own to check what a server returns for it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn word(seed: u64, index: u64) -> [u8; 8] {
    mix64(seed.wrapping_add(index.wrapping_mul(GAMMA))).to_le_bytes()
}

/// Fills `buf` with the bytes of stream `seed` at absolute offsets `offset..offset+len`.
pub fn fill_pattern(buf: &mut [u8], seed: u64, offset: u64) {
    let mut pos = 0usize;
    let mut off = offset;
    // Head: up to the next 8-byte boundary.
    while pos < buf.len() && off & 7 != 0 {
        buf[pos] = word(seed, off / 8)[(off % 8) as usize];
        pos += 1;
        off += 1;
    }
    let mut index = off / 8;
    let mut chunks = buf[pos..].chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word(seed, index));
        index += 1;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let w = word(seed, index);
        let n = tail.len();
        tail.copy_from_slice(&w[..n]);
    }
}

/// The bytes of stream `seed` at offsets `offset..offset+len`.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(&mut v, seed, offset);
    v
}

/// Creates (or truncates) `path` with `size` bytes of stream `seed`; returns its checksum.
pub fn write_pattern_file(path: &Path, size: u64, seed: u64) -> u64 {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let mut buf = vec![0u8; 4 << 20];
    let mut hasher = Hasher64::new();
    let mut off = 0u64;
    while off < size {
        let n = buf.len().min((size - off) as usize);
        fill_pattern(&mut buf[..n], seed, off);
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        off += n as u64;
    }
    f.sync_all().unwrap_or_else(|e| panic!("cannot fsync {}: {e}", path.display()));
    hasher.finish()
}

const P1: u64 = 0x9e37_79b1_85eb_ca87;
const P2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// A streaming 64-bit checksum over little-endian u64 words (an xxhash-like round per
/// word, length mixed in at the end). Fast and order-sensitive; not cryptographic.
#[derive(Debug, Clone)]
pub struct Hasher64 {
    acc: u64,
    len: u64,
    pending: [u8; 8],
    npending: usize,
}

impl Hasher64 {
    /// A fresh hasher.
    pub fn new() -> Hasher64 {
        Hasher64 { acc: 0x2545_f491_4f6c_dd1d, len: 0, pending: [0; 8], npending: 0 }
    }

    fn round(&mut self, w: u64) {
        self.acc = (self.acc ^ w.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1);
    }

    /// Feeds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npending > 0 {
            let take = (8 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&data[..take]);
            self.npending += take;
            data = &data[take..];
            if self.npending < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.pending);
            self.round(w);
            self.npending = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("chunks_exact gives 8 bytes"));
            self.round(w);
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u64 {
        let mut h = self.clone();
        if h.npending > 0 {
            let mut last = [0u8; 8];
            last[..h.npending].copy_from_slice(&h.pending[..h.npending]);
            h.round(u64::from_le_bytes(last));
        }
        mix64(h.acc ^ h.len.wrapping_mul(GAMMA))
    }
}

impl Default for Hasher64 {
    fn default() -> Self {
        Hasher64::new()
    }
}

/// Checksum of a byte slice.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h = Hasher64::new();
    h.update(data);
    h.finish()
}

/// Checksum of a whole file.
pub fn file_checksum(path: &Path) -> u64 {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut buf = vec![0u8; 4 << 20];
    let mut h = Hasher64::new();
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_position_addressable() {
        let whole = pattern(7, 0, 4096);
        for (off, len) in [(0usize, 1usize), (1, 7), (3, 100), (8, 8), (13, 3000), (4095, 1)] {
            assert_eq!(pattern(7, off as u64, len), whole[off..off + len], "{off}+{len}");
        }
        assert_ne!(pattern(8, 0, 64), whole[..64]);
    }

    #[test]
    fn hasher_is_streaming_and_order_sensitive() {
        let data = pattern(1, 0, 10_000);
        let one = checksum(&data);
        let mut h = Hasher64::new();
        for piece in data.chunks(37) {
            h.update(piece);
        }
        assert_eq!(h.finish(), one);
        let mut swapped = data.clone();
        swapped.swap(0, 8);
        assert_ne!(checksum(&swapped), one);
        assert_ne!(checksum(&data[..9_999]), one);
        assert_ne!(checksum(&[0u8; 16]), checksum(&[0u8; 17]));
    }
}
