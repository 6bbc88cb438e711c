//! `gfs_tool`: look at a gfs filesystem (superblock, journals, free space).

use anyhow::Context;
use clap::{Parser, Subcommand};
use gfs::tool::{df_report, jindex_report, lockdump_report, sb_report};
use std::process::ExitCode;

const NAME: &str = "gfs_tool";

const AFTER_HELP: &str = "\
DESCRIPTION
    gfs_tool reads a gfs filesystem's metadata and prints it. TARGET is the device (a
    file, a block device or gnbd://SERVER[:PORT]/NAME) or the mount point of a mounted
    gfs filesystem (its device is found in /proc/self/mounts). On a mounted filesystem
    the figures are those of the last journal checkpoint.

EXAMPLES
    gfs_tool sb /srv/gfs.img
    gfs_tool jindex gnbd://storage1/shared
    gfs_tool journals /mnt/gfs        # the same, after gfs_jadd
    gfs_tool df /mnt/gfs
    gfs_tool lockdump /mnt/shared --dlm-socket /run/dlm/dlm.sock
    gfs_tool glocks /mnt/shared       # this node's glocks, from the mount process

FILES
    /proc/self/mounts   to find the device of a mount point

EXIT STATUS
    0  success
    1  the target could not be read or holds no valid gfs filesystem
";

/// Inspect a gfs filesystem.
#[derive(Debug, Parser)]
#[command(name = "gfs_tool", version, after_help = AFTER_HELP)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    log: daemon::log::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the superblock.
    Sb { target: String },
    /// Print the journal index: each journal's place, size, sequence and whether it is dirty
    /// (also `gfs_tool journals`).
    #[command(alias = "journals")]
    Jindex { target: String },
    /// Print space and inode usage (from the statfs blocks; cheap).
    Df { target: String },
    /// Print the DLM resources of a lock_dlm filesystem this node's dlm_controld masters
    /// (glocks `inode-*`, `rgrp-*`, `layout`, `statfs`, `rename`, locks `journal-N`,
    /// `recovery`), with queues and modes of every node.
    Lockdump {
        target: String,
        /// dlm_controld's socket.
        #[arg(long, default_value = "/run/dlm/dlm.sock")]
        dlm_socket: String,
    },
    /// Print this node's glocks as its mount process holds them (mode, local holders,
    /// state, hold time); MOUNTPOINT must be a mounted gfs filesystem.
    Glocks { mountpoint: std::path::PathBuf },
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Err(e) = daemon::log::init(&daemon::log::LogConfig::new("warn", &a.log)) {
        return daemon::exit::fail(NAME, &e);
    }
    let r = match &a.cmd {
        Cmd::Sb { target } => sb_report(target).with_context(|| target.clone()),
        Cmd::Jindex { target } => jindex_report(target).with_context(|| target.clone()),
        Cmd::Df { target } => df_report(target).with_context(|| target.clone()),
        Cmd::Lockdump { target, dlm_socket } => lockdump_report(target, dlm_socket).with_context(|| target.clone()),
        Cmd::Glocks { mountpoint } => gfs::grow::request(mountpoint, &gfs::grow::CtlRequest::Glocks)
            .with_context(|| mountpoint.display().to_string()),
    };
    daemon::finish(NAME, r.map(|s| print!("{s}")))
}
