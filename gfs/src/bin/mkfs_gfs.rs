//! `mkfs.gfs`: make a gfs filesystem on a file, a block device or a gnbd export.

use clap::Parser;
use gfs::{mkfs, open_device, uuid_string, LockProto, MkfsError, MkfsOptions};
use std::process::ExitCode;

const NAME: &str = "mkfs.gfs";

const AFTER_HELP: &str = "\
DESCRIPTION
    mkfs.gfs writes a new, empty gfs filesystem: the superblock (lock protocol, lock
    table, journal count), one journal and one statfs change block per node slot, and
    the resource groups with their allocation bitmaps. Every node that mounts the
    filesystem at the same time needs its own journal (-j).

    DEVICE is a regular file, a block device (/dev/gnbd/NAME, /dev/loopN) or a gnbd
    export reached directly through the client library: gnbd://SERVER[:PORT]/NAME.

    A device that already holds a gfs filesystem is refused unless -O is given.

EXAMPLES
    One node, no cluster (the embedded default):
        truncate -s 1G /srv/gfs.img
        mkfs.gfs -p lock_nolock -t local:data -j 1 /srv/gfs.img

    Three nodes sharing a gnbd export:
        mkfs.gfs -p lock_dlm -t alpha:gfs1 -j 3 gnbd://storage1/shared

FILES
    None. Everything lives on DEVICE; gfs/docs/format.md describes the layout.

EXIT STATUS
    0  the filesystem was made
    1  it was not (bad arguments, an existing filesystem without -O, I/O errors)
";

/// Make a gfs cluster filesystem.
#[derive(Debug, Parser)]
#[command(name = "mkfs.gfs", version, after_help = AFTER_HELP)]
struct Args {
    /// Lock protocol: lock_dlm (cluster) or lock_nolock (one node).
    #[arg(short = 'p', value_name = "LOCKPROTO", default_value = "lock_dlm")]
    lockproto: String,
    /// Lock table: CLUSTER:FSNAME (the cluster's name and a name unique in it).
    #[arg(short = 't', value_name = "CLUSTER:FS")]
    locktable: String,
    /// Number of journals (node slots).
    #[arg(short = 'j', value_name = "JOURNALS", default_value_t = 1)]
    journals: u32,
    /// Journal size in MiB (default: 8, less on small devices).
    #[arg(short = 'J', value_name = "MB")]
    journal_mb: Option<u32>,
    /// Resource group size in MiB (default: 64, less on small devices).
    #[arg(short = 'r', value_name = "MB")]
    rg_mb: Option<u32>,
    /// Overwrite an existing filesystem.
    #[arg(short = 'O')]
    overwrite: bool,
    /// Print nothing but errors.
    #[arg(short = 'q')]
    quiet: bool,
    /// File, block device or gnbd://SERVER[:PORT]/NAME.
    device: String,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let Some(lockproto) = LockProto::parse(&a.lockproto) else {
        let e = format!("unknown lock protocol {:?} (use lock_dlm or lock_nolock)", a.lockproto);
        return daemon::finish(NAME, Err(anyhow::anyhow!(e)));
    };
    let opts = MkfsOptions {
        lockproto,
        locktable: a.locktable.clone(),
        journals: a.journals,
        journal_blocks: a.journal_mb.map(|m| m.saturating_mul(256)),
        rg_blocks: a.rg_mb.map(|m| m.saturating_mul(256)),
        overwrite: a.overwrite,
    };
    let run = || -> Result<gfs::Superblock, MkfsError> {
        let dev = open_device(&a.device)?;
        mkfs(&*dev, &opts)
    };
    let r = run().map(|sb| {
        if !a.quiet {
            println!("Device:            {}", a.device);
            println!("Blocksize:         {}", sb.block_size);
            println!("Filesystem Size:   {} blocks", sb.block_count);
            println!("Journals:          {}", sb.journal_count);
            println!("Resource Groups:   {}", sb.rg_count);
            println!("Locking Protocol:  {}", sb.lockproto);
            println!("Lock Table:        {}", sb.locktable);
            println!("UUID:              {}", uuid_string(&sb.uuid));
        }
    });
    daemon::finish(NAME, anyhow::Context::with_context(r, || a.device.clone()))
}
