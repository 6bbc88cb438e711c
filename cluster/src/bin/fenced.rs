//! `fenced`: the fence daemon (started by `cman_tool join`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cluster::daemon::{run, Options};

const AFTER_HELP: &str = "\
DESCRIPTION
    fenced joins the corosync process group \"fenced\" (the fence domain) and tracks quorum.
    When a domain member fails and this partition is quorate, the member with the lowest node
    id fences it with the node's methods from cluster.conf in order (a method succeeds when
    all its devices succeed), looping until one succeeds, after post_fail_delay seconds. When
    it starts the domain alone it fences, after post_join_delay seconds, configured nodes
    that are not members. An inquorate partition fences no one. The fence is reported (to
    every member, and to local clients) only after the agent succeeded.

    Agents are programs named by <fencedevice agent=...>, found as absolute paths, in the
    agent directory, next to fenced, or on PATH; they get the device's and the node's
    options as key=value lines on stdin (plus action=off and nodename=NODE unless given).

    fenced runs in the foreground and logs to stderr; cman_tool join starts it with its log
    in /var/log/cluster/fenced.log. cman_tool leave stops it cleanly.

EXAMPLES
    fenced -c /etc/cluster/cluster.conf
    RUST_LOG=debug fenced

FILES
    /etc/cluster/cluster.conf       configuration (rewritten when a newer version arrives)
    /run/cluster/fenced.sock        local API (see the cluster crate's api module)
    /run/cluster/fence_manual/      acknowledgements for fence_manual

EXIT STATUS
    0   left the group on request
    1   could not start (invalid cluster.conf, corosync not running, socket in use)";

/// The fence daemon.
#[derive(Debug, Parser)]
#[command(name = "fenced", version, after_long_help = AFTER_HELP)]
struct Args {
    /// cluster.conf to use.
    #[arg(short = 'c', long = "config", default_value = cluster::cman::DEFAULT_CONF)]
    conf: PathBuf,
    /// Local API socket.
    #[arg(short = 's', long, default_value = cluster::api::SOCKET)]
    socket: PathBuf,
    /// Directory searched first for fence agents.
    #[arg(short = 'a', long, default_value = cluster::agent::AGENT_DIR)]
    agent_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cluster::init_tracing("info");
    match run(Options { conf: args.conf, socket: args.socket, agent_dir: args.agent_dir }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fenced: {e}");
            ExitCode::FAILURE
        }
    }
}
