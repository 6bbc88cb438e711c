//! `mount.gfs`: mount a gfs filesystem through FUSE.

use clap::Parser;
use gfs::mount::{run, MountOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

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
    /// Internal: report readiness on stdout (used by the background launch).
    #[arg(long, hide = true)]
    notify_ready: bool,
}

fn init_tracing(log: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GFS_LOG").unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    match log.and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok()) {
        Some(f) => b.with_writer(std::sync::Mutex::new(f)).init(),
        None => b.with_writer(std::io::stderr).init(),
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    let opts = match MountOptions::parse(&a.options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mount.gfs: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if a.foreground {
        init_tracing(opts.log.as_deref());
        let notify = a.notify_ready;
        let r = run(&a.device, &a.mountpoint, &opts, || {
            if notify {
                let mut out = std::io::stdout();
                let _ = writeln!(out, "ready");
                let _ = out.flush();
            } else {
                tracing::info!(device = %a.device, mountpoint = %a.mountpoint.display(), "mounted");
            }
        });
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                if notify {
                    println!("error: {e:#}");
                }
                eprintln!("mount.gfs: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Background: start the server in its own process group and wait for it to be mounted.
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mount.gfs: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let child = Command::new(exe)
        .arg(&a.device)
        .arg(&a.mountpoint)
        .arg("-o")
        .arg(&a.options)
        .arg("-f")
        .arg("--notify-ready")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mount.gfs: cannot start the server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    if line.trim() == "ready" {
        return ExitCode::SUCCESS;
    }
    let _ = child.wait();
    let msg = line.trim().strip_prefix("error: ").unwrap_or(line.trim()).to_string();
    eprintln!("mount.gfs: {}", if msg.is_empty() { "the server exited before mounting".into() } else { msg });
    ExitCode::FAILURE
}
