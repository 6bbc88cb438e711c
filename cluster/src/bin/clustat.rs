//! `clustat`: cluster status (membership and quorum; services come with the service manager).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daemon::log::{LogArgs, LogConfig};

const AFTER_HELP: &str = "\
DESCRIPTION
    clustat shows whether the cluster is quorate and, for every node in cluster.conf,
    whether it is a member (Online) and which one is this node (Local), as corosync's
    votequorum sees it from here.

EXAMPLES
    clustat
    clustat -c /etc/cluster/cluster.conf

FILES
    /etc/cluster/cluster.conf       node names and ids

LOGGING
    --log-level LEVEL overrides $RUST_LOG; the default is warn.

EXIT STATUS
    0   shown
    1   corosync is not running on this node, or cluster.conf is invalid
    2   bad usage";

/// Cluster status.
#[derive(Debug, Parser)]
#[command(name = "clustat", version, after_long_help = AFTER_HELP)]
struct Args {
    /// cluster.conf to use.
    #[arg(short = 'c', long = "config", default_value = cluster::cman::DEFAULT_CONF)]
    conf: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    daemon::finish("clustat", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("warn", &args.log))?;
    let c = cluster::cman::load(&args.conf)?;
    let s = cluster::corosync::status(&c)?;
    print!("{}", cluster::corosync::render_clustat(&c, &s));
    Ok(())
}
