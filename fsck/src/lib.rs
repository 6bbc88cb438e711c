//! gfs_fsck: offline checker and repairer for the gfs cluster filesystem.
//!
//! The format is read only through [`gfs::format`] (one definition of every structure). The
//! check runs in passes, in the spirit of e2fsck and fsck.gfs2:
//!
//! 1. superblock and resource groups (headers rebuilt from the geometry if damaged, bitmaps
//!    read);
//! 2. journals (journal index rebuilt from the geometry if damaged, damaged journal headers
//!    reset, committed transactions replayed, or reported with `-n`);
//! 3. directories, from the root: hash tables, leaves and their chains, entries (bad
//!    pointers, bad names, entries in the wrong leaf, links to directories), `..`; a directory
//!    whose structure is damaged is rebuilt from the entries that survive;
//! 4. connectivity: inodes marked in the bitmaps but unreachable go to `lost+found` (or are
//!    freed when their link count is zero: open-unlinked files of a crashed node);
//! 5. inode block maps: extent leaves, bad pointers, blocks claimed twice, xattr blocks,
//!    block counts;
//! 6. link counts, bitmaps (used-but-free and free-but-used), resource group counters and the
//!    statfs totals.
//!
//! Nothing is written during the analysis: every repair is staged as a new image of a block
//! (encoded, so its checksum is rewritten) and written at the end with `-y` (or `-p` when
//! every repair is a safe one); `-n` discards them.
#![forbid(unsafe_code)]

mod check;

pub use check::{check_device, Problem};

use thiserror::Error;

/// What to do about problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `-n`: report only, open nothing for writing.
    No,
    /// `-y`: repair everything.
    Yes,
    /// `-p`: preen: repair what is safe (journal replay, counters, bitmaps, link counts,
    /// orphans with no links); anything else leaves the filesystem untouched and exits 4.
    Preen,
}

/// Options of one run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub mode: Mode,
    pub verbose: bool,
    pub force: bool,
}

/// fsck(8) exit codes.
pub mod exit {
    pub const CLEAN: u8 = 0;
    pub const CORRECTED: u8 = 1;
    pub const UNCORRECTED: u8 = 4;
    pub const OPERATIONAL: u8 = 8;
    pub const USAGE: u8 = 16;
}

/// Why a check could not run at all (exit status 8).
#[derive(Debug, Error)]
pub enum FsckError {
    #[error(transparent)]
    Device(#[from] gfs::DeviceError),
    #[error("{0}")]
    Mounted(String),
    #[error("superblock unreadable: {0}; cannot check this device")]
    Superblock(gfs::format::FormatError),
    #[error("the device ({dev} blocks) is smaller than the filesystem ({fs} blocks)")]
    Truncated { dev: u64, fs: u64 },
}

/// What a run found and did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub problems: Vec<Problem>,
    /// Whether the repairs were written.
    pub written: bool,
    pub inodes: u64,
    pub directories: u64,
    pub blocks_in_use: u64,
    pub data_blocks: u64,
    pub journals_replayed: u64,
}

impl Summary {
    /// The fsck(8) exit status for this run.
    pub fn exit_code(&self) -> u8 {
        if self.problems.is_empty() {
            exit::CLEAN
        } else if self.written {
            exit::CORRECTED
        } else {
            exit::UNCORRECTED
        }
    }
}

/// Opens `device` (a path or `gnbd://SERVER[:PORT]/NAME`) and checks it.
pub fn run(device: &str, opts: &Options, out: &mut dyn std::io::Write) -> Result<Summary, FsckError> {
    let dev = gfs::open_device(device)?;
    if !opts.force {
        if let Some(why) = mounted(device, &*dev) {
            return Err(FsckError::Mounted(why));
        }
    }
    check_device(dev, opts, out)
}

/// Whether the filesystem is mounted: a mount on this host holds the device's claim (any
/// mount namespace; a mount process finishing its unmount gets 3 s to let go), or
/// /proc/self/mountinfo lists it as a mount source.
fn mounted(device: &str, dev: &dyn gfs::Device) -> Option<String> {
    if let Err(gfs::DeviceError::Busy) = dev.claim(std::time::Duration::from_secs(3), false) {
        return Some(format!("{device} is mounted (a mount on this host holds it); unmount it or use -f"));
    }
    let canon = std::fs::canonicalize(device).ok();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in info.lines() {
        let Some((_, post)) = line.split_once(" - ") else { continue };
        let mut f = post.split_whitespace();
        let (_, Some(src)) = (f.next(), f.next()) else { continue };
        let hit = src == device || canon.as_deref().is_some_and(|c| std::path::Path::new(src) == c);
        if hit {
            let mp = line.split_whitespace().nth(4).unwrap_or("?");
            return Some(format!("{device} is mounted on {mp}; unmount it or use -f"));
        }
    }
    None
}
