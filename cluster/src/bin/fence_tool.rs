//! `fence_tool`: show the fence domain.

use std::process::ExitCode;

use std::time::Duration;

use clap::{Parser, Subcommand};
use daemon::log::{LogArgs, LogConfig};

const AFTER_HELP: &str = "\
DESCRIPTION
    fence_tool join starts fenced on a node whose corosync runs (cman_tool join does this;
    use it after fenced was stopped with fence_tool leave). fence_tool leave makes fenced
    leave the fence domain cleanly and exit: the other members do not fence this node.
    fence_tool ls shows the fence domain as this node's fenced sees it: quorum, the node
    that fences (master), and for every configured node whether it is a cluster member, a
    domain member, waiting to be fenced (with failed attempts), and its last fence.

EXAMPLES
    fence_tool ls
    fence_tool leave; fence_tool join
    fence_tool ls --json

FILES
    /run/cluster/fenced.sock        fenced's local API

LOGGING
    --log-level LEVEL overrides $RUST_LOG; the default is warn.

EXIT STATUS
    0   done
    1   fenced not running (ls), already running or not starting (join)
    2   bad usage";

/// Fence domain information.
#[derive(Debug, Parser)]
#[command(name = "fence_tool", version, after_long_help = AFTER_HELP)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start fenced (corosync must be running).
    Join {
        /// cluster.conf to use.
        #[arg(short = 'c', long = "config", default_value = cluster::cman::DEFAULT_CONF)]
        conf: std::path::PathBuf,
    },
    /// Make fenced leave the fence domain cleanly and exit.
    Leave,
    /// List the fence domain.
    Ls {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    daemon::finish("fence_tool", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("warn", &args.log))?;
    let json = match args.cmd {
        Cmd::Ls { json } => json,
        Cmd::Join { conf } => return Ok(cluster::cman::start_fenced(&conf, Duration::from_secs(60))?),
        Cmd::Leave => return Ok(cluster::cman::stop_fenced(Duration::from_secs(30))?),
    };
    let s = cluster::api::Client::connect_default()?.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("fence domain \"default\" of cluster {} (config_version {})", s.cluster, s.config_version);
    println!("local node id {}, quorate: {}", s.local_nodeid, if s.quorate { "yes" } else { "no" });
    println!("master: {}", s.master.map(|m| m.to_string()).unwrap_or_else(|| "none".into()));
    println!("{:<6} {:<12} {:<7} {:<7} {:<16} last fence", "nodeid", "name", "member", "domain", "pending");
    for n in &s.nodes {
        let pending = if n.pending { format!("yes ({} failed)", n.failures) } else { "no".into() };
        let last = n
            .last_fence
            .as_ref()
            .map(|f| format!("by {} with {} at {} ms", f.by, f.method, f.at_unix_ms))
            .unwrap_or_else(|| "never".into());
        println!(
            "{:<6} {:<12} {:<7} {:<7} {:<16} {last}",
            n.nodeid,
            n.name,
            if n.member { "yes" } else { "no" },
            if n.in_domain { "yes" } else { "no" },
            pending
        );
    }
    Ok(())
}
