//! `fence_node`: fence a node by hand.

use std::process::ExitCode;

use clap::Parser;

const AFTER_HELP: &str = "\
DESCRIPTION
    fence_node asks the local fenced to fence NODE now with its methods from cluster.conf, in
    order, until one succeeds; every member of the fence domain records the fence. It waits
    for the result.

EXAMPLES
    fence_node node3

FILES
    /run/cluster/fenced.sock        fenced's local API

EXIT STATUS
    0   NODE is fenced
    1   every method failed, NODE is unknown, or fenced is not running";

/// Fence a node by hand.
#[derive(Debug, Parser)]
#[command(name = "fence_node", version, after_long_help = AFTER_HELP)]
struct Args {
    /// Node name from cluster.conf.
    node: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = cluster::api::Client::connect_default().and_then(|mut c| c.fence(&args.node));
    match r {
        Ok(method) => {
            println!("fence {} success (method {method})", args.node);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fence_node: fence {} failed: {e}", args.node);
            ExitCode::FAILURE
        }
    }
}
