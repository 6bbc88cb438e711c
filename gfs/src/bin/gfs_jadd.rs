//! `gfs_jadd`: add journals (node slots) to a mounted gfs filesystem.

use clap::Parser;
use gfs::grow::CtlRequest;
use std::path::PathBuf;
use std::process::ExitCode;

const NAME: &str = "gfs_jadd";

const AFTER_HELP: &str = "\
DESCRIPTION
    gfs_jadd adds journals to a mounted gfs filesystem so that more nodes can mount it:
    every node mounts with a journal of its own (mount.gfs -o journal=N). The filesystem
    stays mounted and in use. Each new journal (and its node's statfs change block) takes
    contiguous free space in one resource group; when free space has no room and the device
    was made larger, the filesystem is first grown into the new space (as gfs_grow does).
    The change is one journaled transaction of the running mount: after a crash the
    filesystem has the old journals or all the new ones. gfs_tool jindex lists them.

    New journals are numbered after the existing ones: a filesystem with 2 journals given
    -j 2 gets journals 2 and 3. A filesystem holds at most 127 journals.

    gfs_jadd talks to the mount process through an ioctl on MOUNTPOINT (the mount point
    itself). Only root may add journals.

EXAMPLES
    gfs_jadd -j 1 /mnt/gfs
    gfs_jadd -j 3 -J 32 /mnt/gfs     # three journals of 32 MiB
    gfs_jadd -T -j 2 /mnt/gfs        # say where they would go
    gfs_tool jindex /mnt/gfs

FILES
    /proc/self/mounts   to check that MOUNTPOINT is a gfs mount

EXIT STATUS
    0  the journals were added (or, with -T, could be)
    1  nothing was done: MOUNTPOINT is not a gfs mount, there is no room, too many
       journals, a bad size, or the change failed (the message says which)
    2  bad command line
";

/// Add journals to a mounted gfs filesystem.
#[derive(Debug, Parser)]
#[command(name = "gfs_jadd", version, after_help = AFTER_HELP)]
struct Args {
    /// Number of journals to add.
    #[arg(short = 'j', value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=126))]
    journals: u32,
    /// Size of each new journal in MiB (default: the size of journal 0; at least 3 MiB).
    #[arg(short = 'J', value_name = "MB", value_parser = clap::value_parser!(u32).range(3..=4096))]
    journal_mb: Option<u32>,
    /// Test: print what would be done, change nothing.
    #[arg(short = 'T', long = "test")]
    test: bool,
    /// The mount point of the filesystem.
    mountpoint: PathBuf,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let req = CtlRequest::Jadd { count: a.journals, journal_blocks: a.journal_mb.map(|mb| mb * 256), test: a.test };
    gfs::grow::run_cli(NAME, &a.mountpoint, &req)
}
