//! dlm_tool: inspect and drive the local lock daemon.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use daemon::log::{LogArgs, LogConfig};

/// Inspect lockspaces and locks of the local dlm_controld, and take or release locks from
/// shell scripts.
///
/// EXAMPLES:
///   dlm_tool ls
///   dlm_tool lockdump myapp
///   dlm_tool plocks myfs
///   dlm_tool lock myapp backup EX && run-backup; dlm_tool unlock myapp backup
///   dlm_tool members 2 --members 2,3 --failed 1 && dlm_tool fenced 1
///
/// FILES:
///   /run/dlm/dlm.sock   default daemon socket (--socket)
///
/// LOGGING:
///   --log-level LEVEL (error, warn, info, debug, trace) overrides $RUST_LOG; default warn.
///
/// EXIT STATUS:
///   0 success; 1 the daemon refused or the lock could not be had (printed as
///   "dlm_tool: ..."); 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "dlm_tool", version, verbatim_doc_comment)]
struct Args {
    /// The daemon's socket.
    #[arg(long, global = true, default_value = "/run/dlm/dlm.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List lockspaces with their members and slots.
    Ls,
    /// Show the resources this node masters in a lockspace: queues and modes.
    Lockdump {
        /// Lockspace name.
        lockspace: String,
    },
    /// Show the POSIX byte-range locks (fcntl) this node masters in a lockspace: one line
    /// per lock (RD/WR, range, node, client connection, owner, pid), then WAITING requests.
    Plocks {
        /// Lockspace name.
        lockspace: String,
    },
    /// Join (create) a lockspace on this node.
    Join {
        /// Lockspace name.
        lockspace: String,
        /// Value block size in bytes (multiple of 8; 0 = 32).
        #[arg(long, default_value_t = 0)]
        lvb_len: u16,
    },
    /// Leave a lockspace on this node.
    Leave {
        /// Lockspace name.
        lockspace: String,
    },
    /// Take a lock that stays held after this command exits (until `dlm_tool unlock`).
    Lock {
        /// Lockspace name.
        lockspace: String,
        /// Resource name.
        resource: String,
        /// Mode: NL, CR, CW, PR, PW or EX.
        #[arg(default_value = "EX", value_parser = parse_mode)]
        mode: dlm::Mode,
        /// Fail at once instead of waiting if the lock is not available.
        #[arg(long)]
        noqueue: bool,
    },
    /// Tell the daemon the members changed (the cluster layer's hook). Recovery starts and
    /// waits until every --failed node is reported fenced.
    Members {
        /// Membership generation; must grow.
        epoch: u64,
        /// Member node ids, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<u32>,
        /// Lost node ids that must be fenced first, comma separated.
        #[arg(long, value_delimiter = ',')]
        failed: Vec<u32>,
    },
    /// Tell the daemon a node has been fenced.
    Fenced {
        /// The fenced node id.
        node: u32,
    },
    /// Tell the daemon whether the cluster is quorate (nothing is granted without quorum).
    Quorum {
        /// yes or no.
        #[arg(value_parser = ["yes", "no"])]
        quorate: String,
    },
    /// Release a lock taken with `dlm_tool lock` on this node.
    Unlock {
        /// Lockspace name.
        lockspace: String,
        /// Resource name.
        resource: String,
    },
}

fn parse_mode(s: &str) -> Result<dlm::Mode, String> {
    dlm::Mode::parse(s).ok_or_else(|| format!("unknown mode {s:?}: use NL, CR, CW, PR, PW or EX"))
}

fn main() -> ExitCode {
    daemon::finish("dlm_tool", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("warn", &args.log))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
    let s = &args.socket;
    let r = rt.block_on(async {
        match &args.cmd {
            Cmd::Ls => dlm::tool::ls(s).await,
            Cmd::Lockdump { lockspace } => dlm::tool::lockdump(s, lockspace).await,
            Cmd::Plocks { lockspace } => dlm::tool::plocks(s, lockspace).await,
            Cmd::Join { lockspace, lvb_len } => dlm::tool::join(s, lockspace, *lvb_len).await,
            Cmd::Leave { lockspace } => dlm::tool::leave(s, lockspace).await,
            Cmd::Lock { lockspace, resource, mode, noqueue } => {
                dlm::tool::lock(s, lockspace, resource, *mode, *noqueue).await
            }
            Cmd::Unlock { lockspace, resource } => dlm::tool::unlock(s, lockspace, resource).await,
            Cmd::Members { epoch, members, failed } => {
                let ev = dlm::MemberEvent::Members { epoch: *epoch, members: members.clone(), failed: failed.clone() };
                dlm::tool::member_event(s, ev).await
            }
            Cmd::Fenced { node } => dlm::tool::member_event(s, dlm::MemberEvent::Fenced { node: *node }).await,
            Cmd::Quorum { quorate } => {
                dlm::tool::member_event(s, dlm::MemberEvent::Quorum { quorate: quorate == "yes" }).await
            }
        }
    });
    print!("{}", r?);
    Ok(())
}
