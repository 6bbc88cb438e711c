//! `fence_ack_manual`: confirm that a node awaiting manual fencing is off.

use std::process::ExitCode;

use clap::Parser;
use daemon::log::{LogArgs, LogConfig};

const AFTER_HELP: &str = "\
DESCRIPTION
    When a node is fenced with the fence_manual agent, fenced waits until an operator has
    made sure the node is off (powered down, or cut from storage and network) and says so
    with fence_ack_manual. The acknowledgement reaches every member of the fence domain, so
    it can be given on any node; the waiting fence_manual then succeeds.

    Acknowledging a node that is still running risks corrupting shared storage.

EXAMPLES
    fence_ack_manual node3

FILES
    /run/cluster/fenced.sock        fenced's local API
    /run/cluster/fence_manual/      acknowledgements read by fence_manual

LOGGING
    --log-level LEVEL overrides $RUST_LOG; the default is warn.

EXIT STATUS
    0   acknowledgement sent
    1   unknown node, or fenced not running
    2   bad usage";

/// Confirm a manual fence.
#[derive(Debug, Parser)]
#[command(name = "fence_ack_manual", version, after_long_help = AFTER_HELP)]
struct Args {
    /// Node name from cluster.conf.
    node: String,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    daemon::finish("fence_ack_manual", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("warn", &args.log))?;
    cluster::api::Client::connect_default()?.ack_manual(&args.node)?;
    println!("fence_ack_manual: {} acknowledged", args.node);
    Ok(())
}
