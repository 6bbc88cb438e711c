//! `cman_tool`: join and leave the cluster, show membership and quorum, propagate cluster.conf.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cluster::cman::{self, JoinOptions, DEFAULT_CONF, RUN_DIR};
use daemon::log::{LogArgs, LogConfig};

const AFTER_HELP: &str = "\
DESCRIPTION
    cman_tool manages this node's membership in the cluster described by cluster.conf.
    join generates the corosync configuration from cluster.conf (node list, votes, expected
    votes, two-node mode, token timeout), starts corosync and then fenced, and waits until
    both answer. leave stops fenced (leaving the fence group cleanly, so the node is not
    fenced) and corosync. status and nodes ask corosync's votequorum. version -r sends the
    edited cluster.conf to every member through fenced; each member installs it atomically
    if its config_version is newer, and an older or equal version is refused.

EXAMPLES
    cman_tool join --dry-run -c /etc/cluster/cluster.conf   # validate, print corosync.conf
    cman_tool join
    cman_tool status
    cman_tool nodes
    vi /etc/cluster/cluster.conf && cman_tool version -r     # bump config_version first
    cman_tool leave

FILES
    /etc/cluster/cluster.conf       the cluster configuration
    /run/cluster/corosync.conf      generated corosync configuration
    /run/cluster/*.pid              pids of corosync and fenced started by join
    /run/cluster/fenced.sock        fenced's local API
    /var/log/cluster/               corosync.log, corosync.stderr, fenced.log

LOGGING
    --log-level LEVEL (error, warn, info, debug, trace, or a filter) overrides $RUST_LOG;
    the default is warn.

EXIT STATUS
    0   success
    1   failure: invalid cluster.conf (every error is listed), corosync or fenced not
        running or not starting, a refused configuration version
    2   bad usage";

/// Cluster membership and quorum.
#[derive(Debug, Parser)]
#[command(name = "cman_tool", version, after_long_help = AFTER_HELP)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Generate the corosync configuration, start corosync and fenced.
    Join {
        /// cluster.conf to use.
        #[arg(short = 'c', long = "config", default_value = DEFAULT_CONF)]
        conf: PathBuf,
        /// Only validate cluster.conf and print the corosync configuration.
        #[arg(long)]
        dry_run: bool,
        /// Where to write the generated corosync configuration.
        #[arg(long, default_value_t = format!("{RUN_DIR}/corosync.conf"))]
        corosync_conf: String,
        /// Do not start fenced.
        #[arg(long)]
        no_fenced: bool,
        /// Seconds to wait for each daemon to become ready.
        #[arg(short = 't', long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Stop fenced and corosync on this node.
    Leave {
        /// Seconds to wait for each daemon to exit before killing it.
        #[arg(short = 't', long, default_value_t = 30)]
        timeout_s: u64,
    },
    /// Cluster name, config version, members, votes and quorum.
    Status {
        /// cluster.conf to use.
        #[arg(short = 'c', long = "config", default_value = DEFAULT_CONF)]
        conf: PathBuf,
    },
    /// Every configured node: id, membership (M member, X not), votes, name.
    Nodes {
        /// cluster.conf to use.
        #[arg(short = 'c', long = "config", default_value = DEFAULT_CONF)]
        conf: PathBuf,
    },
    /// Show the config version in force; with -r, propagate cluster.conf to all members.
    Version {
        /// Propagate the (edited, newer) cluster.conf to every member.
        #[arg(short = 'r', long)]
        reload: bool,
        /// cluster.conf to read.
        #[arg(short = 'c', long = "config", default_value = DEFAULT_CONF)]
        conf: PathBuf,
    },
}

fn main() -> ExitCode {
    daemon::finish("cman_tool", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("warn", &args.log))?;
    match args.cmd {
        Cmd::Join { conf, dry_run: true, .. } => print!("{}", cman::dry_run(&conf)?),
        Cmd::Join { conf, corosync_conf, no_fenced, timeout_s, .. } => {
            let opts = JoinOptions {
                conf,
                corosync_conf: corosync_conf.into(),
                fenced: !no_fenced,
                wait: Duration::from_secs(timeout_s),
            };
            let c = cman::join(&opts)?;
            println!("joined cluster {} (config_version {})", c.name, c.config_version);
        }
        Cmd::Leave { timeout_s } => cman::leave(Duration::from_secs(timeout_s))?,
        Cmd::Status { conf } => print!("{}", cman::status(&conf)?),
        Cmd::Nodes { conf } => print!("{}", cman::nodes(&conf)?),
        Cmd::Version { reload: false, conf } => {
            let v = match cluster::api::Client::connect_default().and_then(|mut c| c.status()) {
                Ok(s) => s.config_version,
                Err(_) => cman::load(&conf)?.config_version,
            };
            println!("{v}");
        }
        Cmd::Version { reload: true, conf } => {
            let v = cman::propagate(&conf)?;
            println!("config_version {v} is in force on every member");
        }
    }
    Ok(())
}
