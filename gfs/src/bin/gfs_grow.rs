//! `gfs_grow`: grow a mounted gfs filesystem into new space at the end of its device.

use clap::Parser;
use gfs::grow::CtlRequest;
use std::path::PathBuf;
use std::process::ExitCode;

const NAME: &str = "gfs_grow";

const AFTER_HELP: &str = "\
DESCRIPTION
    gfs_grow grows a mounted gfs filesystem so that it uses the whole of its device, after
    the device was made larger (a longer image file, a resized gnbd export or logical
    volume). The filesystem stays mounted and in use: the running mount process (mount.gfs)
    writes resource groups for the new space and extends the resource group index and the
    free-space totals in one journaled transaction, so a crash in the middle leaves the old
    size or the new one, never a broken filesystem. df shows the new size at once; other
    nodes of a lock_dlm cluster pick it up the next time they take the filesystem.

    A last resource group shorter than the others is first grown in place; new groups have
    the size of the existing ones. A tail too short for a group (under 16 blocks) stays
    unused.

    gfs_grow talks to the mount process through an ioctl on MOUNTPOINT (the mount point
    itself, not a directory below it). Only root may grow a filesystem.

EXAMPLES
    truncate -s 20G /srv/gfs.img && gfs_grow /mnt/gfs
    gfs_grow -T /mnt/gfs          # say what would be done, change nothing
    gfs_tool df /mnt/gfs

FILES
    /proc/self/mounts   to check that MOUNTPOINT is a gfs mount

EXIT STATUS
    0  the filesystem was grown (or, with -T, could be)
    1  nothing was done: MOUNTPOINT is not a gfs mount, the device is not larger than the
       filesystem, a bad value was given, or the change failed (the message says which)
    2  bad command line
";

/// Grow a mounted gfs filesystem into new space at the end of its device.
#[derive(Debug, Parser)]
#[command(name = "gfs_grow", version, after_help = AFTER_HELP)]
struct Args {
    /// Test: print what would be done, change nothing.
    #[arg(short = 'T', long = "test")]
    test: bool,
    /// Size of the new resource groups in MiB. A filesystem's groups all have the size
    /// mkfs.gfs gave them: this must be that size (or be left out).
    #[arg(short = 'r', value_name = "RG_MB", value_parser = clap::value_parser!(u32).range(1..=16384))]
    rg_mb: Option<u32>,
    /// The mount point of the filesystem.
    mountpoint: PathBuf,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let req = CtlRequest::Grow { rg_blocks: a.rg_mb.map(|mb| mb * 256), test: a.test };
    gfs::grow::run_cli(NAME, &a.mountpoint, &req)
}
