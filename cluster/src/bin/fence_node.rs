//! `fence_node`: fence a node by hand.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use daemon::log::{LogArgs, LogConfig};

const AFTER_HELP: &str = "\
DESCRIPTION
    fence_node asks the local fenced to fence NODE now with its methods from cluster.conf, in
    order, until one succeeds; every member of the fence domain records the fence. It waits
    for the result.

EXAMPLES
    fence_node node3

FILES
    /run/cluster/fenced.sock        fenced's local API

LOGGING
    --log-level LEVEL overrides $RUST_LOG; the default is warn.

EXIT STATUS
    0   NODE is fenced
    1   every method failed, NODE is unknown, or fenced is not running
    2   bad usage";

/// Fence a node by hand.
#[derive(Debug, Parser)]
#[command(name = "fence_node", version, after_long_help = AFTER_HELP)]
struct Args {
    /// Node name from cluster.conf.
    node: String,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    daemon::finish("fence_node", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("warn", &args.log))?;
    let method = cluster::api::Client::connect_default()
        .and_then(|mut c| c.fence(&args.node))
        .with_context(|| format!("fence {} failed", args.node))?;
    println!("fence {} success (method {method})", args.node);
    Ok(())
}
