//! `gfs_fsck`: check and repair a gfs filesystem (offline).

use std::process::ExitCode;

use clap::Parser;
use fsck::{exit, run, Mode, Options};

const AFTER_HELP: &str = "\
DESCRIPTION
    gfs_fsck checks a gfs filesystem that is not mounted anywhere, in passes: superblock and
    resource groups, journals (dirty ones are replayed first), directories from the root,
    connectivity (unreachable inodes go to lost+found), inode block maps (bad pointers, blocks
    claimed twice), then link counts, bitmaps, resource group counters and statfs totals.
    Every repaired block is re-encoded, so its checksum is rewritten. Nothing is written
    before the analysis is complete (journal replay excepted).

    Without -n, -y or -p it behaves as -n.

EXAMPLES
    gfs_fsck -n /dev/vg0/gfs          report only
    gfs_fsck -y -v /tmp/gfs.img       repair everything, with progress
    gfs_fsck -p gnbd://server/disk1   preen: safe repairs only (boot-time check)

FILES
    /proc/self/mountinfo    local mounts of the device (refused unless -f)

EXIT STATUS
    0    no problems found
    1    problems found and corrected
    4    problems left uncorrected (-n, or -p found something that needs -y)
    8    operational error (device unreadable, superblock damaged, mounted)
    16   usage error";

/// Check and repair a gfs filesystem.
#[derive(Debug, Parser)]
#[command(name = "gfs_fsck", version, after_long_help = AFTER_HELP)]
struct Args {
    /// Report only: open the filesystem read-only in spirit, change nothing.
    #[arg(short = 'n', conflicts_with_all = ["yes", "preen"])]
    no: bool,
    /// Repair every problem found.
    #[arg(short = 'y', conflicts_with = "preen")]
    yes: bool,
    /// Preen: repair only what is safe without a human (journal replay, counters, bitmaps,
    /// link counts); anything else exits 4 with nothing written.
    #[arg(short = 'p', short_alias = 'a')]
    preen: bool,
    /// Progress per pass and more detail.
    #[arg(short = 'v')]
    verbose: bool,
    /// Check even if the filesystem looks mounted.
    #[arg(short = 'f')]
    force: bool,
    /// File, block device or gnbd://SERVER[:PORT]/NAME.
    device: String,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::CLEAN });
        }
    };
    let mode = if args.yes {
        Mode::Yes
    } else if args.preen {
        Mode::Preen
    } else {
        Mode::No
    };
    let opts = Options { mode, verbose: args.verbose, force: args.force };
    let mut out = std::io::stdout().lock();
    match run(&args.device, &opts, &mut out) {
        Ok(s) => {
            let n = s.problems.len();
            let verdict = match s.exit_code() {
                exit::CLEAN => "clean".to_string(),
                exit::CORRECTED => format!("{n} problems corrected"),
                _ => format!("{n} problems left uncorrected"),
            };
            println!("{}: {verdict}", args.device);
            ExitCode::from(s.exit_code())
        }
        Err(e) => {
            let msg = format!("{}: {}", args.device, daemon::exit::report(&e));
            daemon::exit::fail("gfs_fsck", &daemon::Failure::new(exit::OPERATIONAL, msg))
        }
    }
}
