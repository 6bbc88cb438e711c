//! `clvmd`: cluster locking for the LVM commands on this node.
#![forbid(unsafe_code)]

use clap::Parser;
use daemon::log::{LogArgs, LogConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Cluster locking for clvm's LVM commands on this node.
///
/// DESCRIPTION:
///   clvmd takes the cluster-wide locks that keep LVM metadata on shared storage consistent
///   when several nodes change it: the global lock (PV and VG names) and one lock per VG
///   whose value block carries the VG's metadata sequence number, so a node that sees older
///   metadata on disk than the lock says re-reads it. The commands (vgcreate -c y, lvcreate,
///   lvextend, ...) ask clvmd for these locks through its control socket; when a command
///   exits, even killed, its locks are released. Lock names and modes: clvm/docs/locking.md.
///
/// MODES:
///   --cluster   DLM locks through dlm_controld, and quorum from fenced: while the cluster
///               is inquorate, no exclusive lock is granted, so no metadata changes. A node
///               that dies holding a VG lock is fenced before the DLM gives the lock to
///               another node; its half-written commit is then read as the old or the new
///               metadata (the highest valid seqno) and repaired by the next change.
///   (default)   cluster mode when fenced's socket exists, else DLM locks through
///               dlm_controld with no quorum check (a static DLM mesh).
///   --single    no cluster: locks inside clvmd, for one node with clustered VGs.
///
/// LOGGING:
///   To stderr, or appended to --log-file FILE (reopened on SIGHUP); --log-level LEVEL
///   overrides $RUST_LOG (default info). The line "clvmd: ready ..." goes to stdout, and
///   READY=1 to systemd when started as a Type=notify service.
///
/// EXIT STATUS:
///   0 stopped by SIGTERM/SIGINT; 1 could not start (dlm_controld or fenced not reachable,
///   socket in use by a running clvmd); 2 bad usage.
#[derive(Debug, Parser)]
#[command(name = "clvmd", version, verbatim_doc_comment)]
struct Args {
    /// Control socket for the commands.
    #[arg(long, value_name = "PATH", default_value = clvm::lock::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// No cluster: keep the locks inside clvmd.
    #[arg(long, conflicts_with_all = ["cluster", "dlm_socket"])]
    single: bool,
    /// Cluster mode: refuse changes while fenced reports the cluster inquorate (the default
    /// when fenced's socket exists).
    #[arg(long)]
    cluster: bool,
    /// dlm_controld's socket.
    #[arg(long, value_name = "PATH", default_value = "/run/dlm/dlm.sock")]
    dlm_socket: PathBuf,
    /// fenced's socket (--cluster).
    #[arg(long, value_name = "PATH", default_value = cluster::api::SOCKET)]
    fenced_socket: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    daemon::finish("clvmd", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let signals = daemon::signals::install()?;
    daemon::log::init(&LogConfig::new("info", &args.log))?;
    // As dlm_controld: cluster mode when asked, or when fenced is there to ask.
    let cluster = args.cluster || args.fenced_socket.exists();
    let backend = if args.single {
        clvm::clvmd::Backend::Single
    } else {
        clvm::clvmd::Backend::Dlm { socket: args.dlm_socket, fenced: cluster.then_some(args.fenced_socket) }
    };
    let cfg = clvm::clvmd::Config { socket: args.socket, backend };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(clvm::clvmd::run(cfg, signals, |c| {
        let mode = match &c.backend {
            clvm::clvmd::Backend::Single => "single",
            clvm::clvmd::Backend::Dlm { fenced: None, .. } => "dlm",
            clvm::clvmd::Backend::Dlm { fenced: Some(_), .. } => "cluster",
        };
        daemon::ready::ready(&format!("clvmd: ready mode {mode} socket {}", c.socket.display()));
    }))
}
