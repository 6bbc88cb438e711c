//! dlm_controld: the per-node lock daemon.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Host this node's lockspaces: serve local programs on a Unix socket and exchange lock
/// traffic with the other nodes' daemons over TCP.
///
/// Membership is static for now: this node and the --peer nodes are the members, always
/// quorate. Without --peer the daemon runs a single node (lock_nolock).
///
/// EXAMPLES:
///   dlm_controld --node-id 1 --socket /run/dlm/dlm.sock
///   dlm_controld --node-id 1 --socket /run/dlm1.sock --listen 127.0.0.1:21064 \
///       --peer 2=127.0.0.2:21064 --peer 3=127.0.0.3:21064
///
/// FILES:
///   /run/dlm/dlm.sock   default local socket
///
/// EXIT STATUS:
///   0 stopped by SIGTERM/SIGINT; 1 could not start (bad flags, address in use).
#[derive(Parser, Debug)]
#[command(name = "dlm_controld", version, verbatim_doc_comment)]
struct Args {
    /// This node's id (cluster.conf nodeid).
    #[arg(long, default_value_t = 1)]
    node_id: u32,
    /// Unix socket for local programs.
    #[arg(long, default_value = "/run/dlm/dlm.sock")]
    socket: PathBuf,
    /// TCP address for the other daemons (required with --peer).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Another node: ID=ADDR:PORT (repeatable).
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(u32, SocketAddr)>,
}

fn parse_peer(s: &str) -> Result<(u32, SocketAddr), String> {
    let (id, addr) = s.split_once('=').ok_or("expected ID=ADDR:PORT")?;
    Ok((id.parse().map_err(|e| format!("bad node id: {e}"))?, addr.parse().map_err(|e| format!("bad address: {e}"))?))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DLM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(dir) = args.socket.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let cfg = dlm::DaemonConfig { node_id: args.node_id, socket: args.socket, listen: args.listen, peers: args.peers };
    dlm::run_daemon(cfg, |r| {
        println!("dlm_controld: ready node {} socket {}", r.node_id, r.socket.display());
    })?;
    Ok(())
}
