//! `clustat`: cluster status (membership and quorum; services come with the service manager).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

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

EXIT STATUS
    0   shown
    1   corosync is not running on this node, or cluster.conf is invalid";

/// Cluster status.
#[derive(Debug, Parser)]
#[command(name = "clustat", version, after_long_help = AFTER_HELP)]
struct Args {
    /// cluster.conf to use.
    #[arg(short = 'c', long = "config", default_value = cluster::cman::DEFAULT_CONF)]
    conf: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = cluster::cman::load(&args.conf).map_err(|e| e.to_string()).and_then(|c| {
        cluster::corosync::status(&c).map(|s| cluster::corosync::render_clustat(&c, &s)).map_err(|e| e.to_string())
    });
    match r {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("clustat: {e}");
            ExitCode::FAILURE
        }
    }
}
