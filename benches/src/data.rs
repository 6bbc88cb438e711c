//! The backing file and the nbdcopy source file: fully written with incompressible,
//! non-zero data (so no server or client can take a sparse or zero shortcut), plus a cheap
//! check that an nbdcopy write really landed in the backing file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::proc::check_stop;

const CHUNK: usize = 1 << 20;
/// Size of each region checked after an nbdcopy write.
const SAMPLE: u64 = 64 << 10;
/// Number of regions checked (spread over the file, the last one ending at its end).
const SAMPLES: u64 = 16;
/// Filler written over the sample regions before a server's write phase.
const SCRIBBLE: u8 = 0xEE;

/// Write `size` bytes of xorshift data seeded with `seed` to `path`, then fsync.
pub fn create_random_file(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut state = seed | 1;
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        check_stop()?;
        for w in buf.chunks_exact_mut(8) {
            // xorshift64*: fast, never all-zero, incompressible enough for any server.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            w.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(CHUNK as u64) as usize;
        f.write_all(&buf[..n]).with_context(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all().with_context(|| format!("cannot fsync {}", path.display()))?;
    Ok(())
}

/// Read all of `path` so that it sits in the page cache: the nbdcopy source, so that the
/// write test measures the server and not the local disk, and in cached mode the backing
/// file, so that each test starts with the export cached.
pub fn warm(path: &Path) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        check_stop()?;
        if f.read(&mut buf)? == 0 {
            return Ok(());
        }
    }
}

fn sample_offsets(size: u64) -> Vec<u64> {
    let span = size.saturating_sub(SAMPLE);
    let mut v: Vec<u64> = (0..SAMPLES).map(|i| (span / (SAMPLES - 1) * i) & !4095).collect();
    v.dedup();
    v
}

/// Overwrite the sample regions of the backing file with a filler (while no server runs),
/// so that [`verify_copied`] proves the next server's nbdcopy write reached the file.
pub fn scribble(backing: &Path, size: u64) -> Result<()> {
    let f =
        OpenOptions::new().write(true).open(backing).with_context(|| format!("cannot open {}", backing.display()))?;
    let fill = vec![SCRIBBLE; SAMPLE as usize];
    for off in sample_offsets(size) {
        f.write_all_at(&fill, off)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Check that the sample regions of the backing file now equal the source file.
pub fn verify_copied(source: &Path, backing: &Path, size: u64) -> Result<()> {
    let mut s = File::open(source)?;
    let mut b = File::open(backing)?;
    let mut sb = vec![0u8; SAMPLE as usize];
    let mut bb = vec![0u8; SAMPLE as usize];
    for off in sample_offsets(size) {
        s.seek(SeekFrom::Start(off))?;
        s.read_exact(&mut sb)?;
        b.seek(SeekFrom::Start(off))?;
        b.read_exact(&mut bb)?;
        if sb != bb {
            let first = sb.iter().zip(&bb).position(|(x, y)| x != y).unwrap_or(0) as u64;
            let how = if bb.iter().all(|&x| x == SCRIBBLE) { " (never written)" } else { "" };
            bail!(
                "after nbdcopy wrote the source to the export, the backing file differs from it \
                 at byte {}{how}",
                off + first
            );
        }
    }
    Ok(())
}
