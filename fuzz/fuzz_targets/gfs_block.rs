//! gfs metadata blocks (read from a shared device any node can scribble on) against arbitrary
//! bytes: decoding never panics; with the checksum fixed up so the body parsers run, whatever
//! decodes re-encodes to the same bytes' meaning.
#![no_main]

use gfs::format::{Header, MetaBlock, BLOCK_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = [0u8; BLOCK_SIZE];
    let n = data.len().min(BLOCK_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    let blkno = if n >= 16 { u64::from_le_bytes(b[8..16].try_into().unwrap()) } else { 0 };
    let _ = MetaBlock::decode(&b, blkno);
    Header::seal(&mut b);
    if let Ok(m) = MetaBlock::decode(&b, blkno) {
        let again = m.encode(blkno);
        assert_eq!(MetaBlock::decode(&again[..], blkno).expect("re-encoded block decodes"), m);
    }
});
