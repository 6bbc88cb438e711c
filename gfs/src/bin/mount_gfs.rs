//! `mount.gfs`: mount a gfs filesystem through FUSE.

use clap::Parser;
use daemon::background::Background;
use daemon::log::{LogArgs, LogConfig};
use gfs::mount::{run, MountOptions};
use std::path::PathBuf;
use std::process::ExitCode;

const NAME: &str = "mount.gfs";

const AFTER_HELP: &str = "\
DESCRIPTION
    mount.gfs mounts the gfs filesystem on DEVICE at MOUNTPOINT through FUSE and returns
    once it is mounted; a background process (this program with -f) serves it until
    `umount MOUNTPOINT`, which leaves the filesystem clean (journal checkpointed, statfs
    changes folded). Metadata changes are journaled: after a crash the next mount replays
    the journal. fsync and fdatasync reach the device's stable storage.

    DEVICE is a regular file, a block device, or gnbd://SERVER[:PORT]/NAME (a gnbd export
    used directly through the client library, no kernel device needed).

    Run as root, the mount lets every user in, with the kernel checking permissions
    (allow_other, default_permissions), as for a kernel filesystem.

    lock_nolock: one node. lock_dlm: every node runs dlm_controld and mounts with its own
    journal (-o journal=N, 0 <= N < the journal count given to mkfs.gfs); the nodes share the
    filesystem through glocks in the DLM (one per inode and resource group: a node writes back
    and forgets what a glock covers when another node asks for it), fcntl and flock locks
    are cluster-wide, and the journals of nodes that are gone are replayed by a survivor
    once the DLM releases their locks (after fencing).

OPTIONS (-o, comma separated)
    journal=N        use journal (node slot) N (default 0)
    dlm_socket=PATH  dlm_controld's socket (lock_dlm; default /run/dlm/dlm.sock)
    glock_limit=N    glocks kept before idle ones go back to the DLM (lock_dlm; default
                     8192; NL ones first, then PR ones unused for 10 s)
    log=FILE         where the background server logs (default: nowhere)
    lockproto=lock_nolock|lock_dlm
                     override the superblock's lock protocol (lock_nolock: one node only!)
    rw, defaults, noatime, relatime, dev, suid, exec, nodev, nosuid
                     accepted and ignored

EXAMPLES
    mkfs.gfs -p lock_nolock -t local:data -j 1 /srv/gfs.img
    mount.gfs /srv/gfs.img /mnt/gfs
    mount.gfs gnbd://storage1/shared /mnt/shared -o journal=2,log=/var/log/gfs.log
    umount /mnt/gfs

SIGNALS
    SIGTERM, SIGINT  unmount (lazily if the filesystem is busy), leave it clean and exit 0
    SIGHUP           reopen the log file (log=FILE); never stops the mount

    Logging: --log-level LEVEL or RUST_LOG (default info).

FILES
    /proc/self/mounts   the mount shows as type fuse.gfs with DEVICE as its source

EXIT STATUS
    0  mounted (with -f: unmounted cleanly)
    1  not mounted (bad device, dirty or unsupported filesystem, FUSE error)
";

/// Mount a gfs filesystem.
#[derive(Debug, Parser)]
#[command(name = "mount.gfs", version, after_help = AFTER_HELP)]
struct Args {
    /// File, block device or gnbd://SERVER[:PORT]/NAME.
    device: String,
    /// Where to mount it.
    mountpoint: PathBuf,
    /// Mount options (see OPTIONS).
    #[arg(short = 'o', value_name = "OPTS", default_value = "")]
    options: String,
    /// Stay in the foreground (serve until unmounted).
    #[arg(short = 'f')]
    foreground: bool,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let opts = match MountOptions::parse(&a.options) {
        Ok(o) => o,
        Err(e) => return daemon::exit::fail(NAME, e.as_ref()),
    };
    // Without -f the command returns once the background server has mounted (or failed).
    let mut bg = Background::new(NAME, opts.log.as_ref().map(PathBuf::from));
    bg.echo_ready = false;
    if let Some(code) = daemon::background::daemonize(a.foreground, &bg) {
        return code;
    }
    daemon::finish(NAME, serve(&a, &opts))
}

fn serve(a: &Args, opts: &MountOptions) -> anyhow::Result<()> {
    let signals = daemon::signals::install()?;
    daemon::log::init(&LogConfig::new("info", &a.log).with_file(opts.log.as_ref().map(PathBuf::from)))?;
    let line = format!("mount.gfs: ready {} on {}", a.device, a.mountpoint.display());
    run(&a.device, &a.mountpoint, opts, signals, || daemon::ready::ready(&line))
}
