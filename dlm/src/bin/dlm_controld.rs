//! dlm_controld: the per-node lock daemon.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use daemon::log::{LogArgs, LogConfig};

/// Host this node's lockspaces: serve local programs on a Unix socket and exchange lock
/// traffic with the other nodes' daemons over TCP.
///
/// Cluster mode (--cluster, or the default when neither --node-id nor --peer is given and
/// fenced's socket exists): the node id comes from fenced, every node of cluster.conf is a
/// peer at its address and --port, and members, quorum and fences come from fenced's
/// subscription. The locks of a node that failed are recovered only after fenced declares
/// it fenced (wait_fenced); meanwhile the resources it mastered or held wait.
///
/// Static mode: this node and the --peer nodes are the members, always quorate. Without
/// --peer the daemon runs a single node (lock_nolock).
///
/// EXAMPLES:
///   cman_tool join && dlm_controld            # cluster mode on a joined node
///   dlm_controld --node-id 1 --socket /run/dlm/dlm.sock
///   dlm_controld --node-id 1 --socket /run/dlm1.sock --listen 127.0.0.1:21064 \
///       --peer 2=127.0.0.2:21064 --peer 3=127.0.0.3:21064
///
/// FILES:
///   /run/dlm/dlm.sock            default local socket
///   /run/cluster/fenced.sock     fenced's local API (cluster mode)
///   /etc/cluster/cluster.conf    node ids and addresses (cluster mode)
///
/// SIGNALS:
///   TERM, INT   stop (exit 0)
///   HUP         reopen the log file (--log-file); nothing else: dlm_controld has no
///               configuration file of its own (cluster mode follows fenced, which
///               reloads cluster.conf). Never exits.
///
/// LOGGING:
///   To stderr, or appended to --log-file FILE. --log-level LEVEL (error, warn, info, debug,
///   trace, or a filter such as info,dlm=debug) overrides $RUST_LOG; the default is info.
///   The ready line "dlm_controld: ready node N socket PATH" goes to stdout.
///
/// EXIT STATUS:
///   0 stopped by SIGTERM/SIGINT; 1 could not start (address in use, fenced not reachable
///   in cluster mode), printed as "dlm_controld: ..."; 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "dlm_controld", version, verbatim_doc_comment)]
struct Args {
    /// This node's id (static mode; default 1).
    #[arg(long, conflicts_with = "cluster")]
    node_id: Option<u32>,
    /// Unix socket for local programs.
    #[arg(long, default_value = "/run/dlm/dlm.sock")]
    socket: PathBuf,
    /// TCP address for the other daemons (required with --peer).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Another node: ID=ADDR:PORT (repeatable).
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(u32, SocketAddr)>,
    /// Cluster mode: membership from fenced (see above).
    #[arg(long)]
    cluster: bool,
    /// fenced's socket (cluster mode).
    #[arg(long, default_value = cluster::api::SOCKET)]
    fenced_socket: PathBuf,
    /// cluster.conf (cluster mode).
    #[arg(long, default_value = "/etc/cluster/cluster.conf")]
    config: PathBuf,
    /// DLM port on every node's address (cluster mode).
    #[arg(long, default_value_t = dlm::cluster::DEFAULT_PORT)]
    port: u16,
    #[command(flatten)]
    log: LogArgs,
}

fn parse_peer(s: &str) -> Result<(u32, SocketAddr), String> {
    let (id, addr) = s.split_once('=').ok_or("expected ID=ADDR:PORT")?;
    Ok((id.parse().map_err(|e| format!("bad node id: {e}"))?, addr.parse().map_err(|e| format!("bad address: {e}"))?))
}

fn main() -> ExitCode {
    daemon::finish("dlm_controld", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let signals = daemon::signals::install()?;
    daemon::log::init(&LogConfig::new("info", &args.log))?;
    if let Some(dir) = args.socket.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let clustered = args.cluster || (args.node_id.is_none() && args.peers.is_empty() && args.fenced_socket.exists());
    let cfg = if clustered {
        if !args.peers.is_empty() {
            anyhow::bail!("--peer is for static mode; cluster mode takes the nodes from cluster.conf");
        }
        let d = dlm::cluster::discover(&args.fenced_socket, &args.config, args.port)?;
        dlm::DaemonConfig {
            node_id: d.node_id,
            socket: args.socket,
            listen: Some(args.listen.unwrap_or(d.listen)),
            peers: d.peers,
            cluster: Some(dlm::cluster::ClusterSource { fenced: args.fenced_socket }),
        }
    } else {
        dlm::DaemonConfig {
            node_id: args.node_id.unwrap_or(1),
            socket: args.socket,
            listen: args.listen,
            peers: args.peers,
            cluster: None,
        }
    };
    dlm::run_daemon(cfg, &signals, |r| {
        daemon::ready::ready(&format!("dlm_controld: ready node {} socket {}", r.node_id, r.socket.display()));
    })?;
    Ok(())
}
