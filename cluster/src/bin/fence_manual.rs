//! `fence_manual`: fence agent that waits for the operator (fence_ack_manual).

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use cluster::daemon::MANUAL_DIR;
use daemon::log::{LogArgs, LogConfig};

const AFTER_HELP: &str = "\
DESCRIPTION
    A fence agent for nodes without a power switch or storage fencing: it logs that NODE
    must be turned off by hand and waits until an operator runs fence_ack_manual NODE on any
    cluster member. Reads the standard agent input on stdin (key=value lines; nodename= or
    port= names the node; action=off, reboot; status, monitor and metadata are answered).

EXAMPLES
    <fencedevice name=\"human\" agent=\"fence_manual\"/>   (in cluster.conf)
    echo nodename=node3 | fence_manual

FILES
    /run/cluster/fence_manual/NODE.ack   written by fenced when the operator acknowledges
                                         (one left from before this fence started is ignored)

LOGGING
    --log-level LEVEL overrides $RUST_LOG; the default is warn. The messages for the
    operator go to stderr, which fenced copies into its log.

EXIT STATUS
    0   acknowledged (or: status/monitor/metadata answered)
    1   bad input
    2   bad usage";

/// Manual fencing agent.
#[derive(Debug, Parser)]
#[command(name = "fence_manual", version, after_long_help = AFTER_HELP)]
struct Args {
    /// Node to fence (instead of stdin).
    #[arg(short = 'n', long)]
    nodename: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    daemon::finish("fence_manual", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("warn", &args.log))?;
    let mut node = args.nodename;
    let mut action = "off".to_owned();
    if node.is_none() {
        let mut text = String::new();
        let _ = std::io::stdin().take(1 << 20).read_to_string(&mut text);
        for line in text.lines() {
            match line.trim().split_once('=') {
                Some(("nodename" | "port" | "plug", v)) => node = Some(v.trim().to_owned()),
                Some(("action" | "option", v)) => action = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    match action.as_str() {
        "metadata" => {
            println!("<resource-agent name=\"fence_manual\" shortdesc=\"wait for fence_ack_manual\"/>");
            return Ok(());
        }
        "status" | "monitor" | "list" => return Ok(()),
        "off" | "reboot" => {}
        other => bail!("action {other} is not supported"),
    }
    let Some(node) = node.filter(|n| !n.is_empty() && !n.contains('/')) else {
        bail!("no valid nodename= given");
    };
    let ack = Path::new(MANUAL_DIR).join(format!("{node}.ack"));
    // An acknowledgement given before this fence started is for an earlier one: only an
    // operator who saw this request may confirm it.
    let _ = std::fs::remove_file(&ack);
    eprintln!("fence_manual: turn {node} off by hand, then run: fence_ack_manual {node}");
    loop {
        if std::fs::remove_file(&ack).is_ok() {
            eprintln!("fence_manual: {node} acknowledged by the operator");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
