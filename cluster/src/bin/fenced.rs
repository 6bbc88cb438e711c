//! `fenced`: the fence daemon (started by `cman_tool join`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cluster::daemon::Options;
use daemon::background::{daemonize, Background};
use daemon::log::{LogArgs, LogConfig};

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

    fenced puts itself in the background: the command returns once the daemon is ready
    (printing its ready line, \"fenced: ready (node N)\") or with the reason it could not
    start. With -f it stays in the foreground and logs to stderr (or --log-file);
    otherwise it logs to /var/log/cluster/fenced.log (or --log-file). cman_tool join
    starts it and waits for it this way; cman_tool leave (or fence_tool leave) stops it
    cleanly.

EXAMPLES
    fenced -c /etc/cluster/cluster.conf
    fenced -f --log-level debug
    kill -HUP $(cat /run/cluster/fenced.pid)     # after editing cluster.conf

SIGNALS
    TERM, INT   leave the fence group cleanly (as fence_tool leave) and exit
    HUP         reopen the log file; reread cluster.conf and, if its config_version is
                newer than the one in force, propagate it to every member as
                cman_tool version -r does (otherwise log that nothing changed). Never exits.

LOGGING
    --log-level LEVEL (error, warn, info, debug, trace, or a filter such as
    info,cluster=debug) overrides $RUST_LOG; the default is info. --log-file FILE
    chooses the log file (reopened on SIGHUP).

FILES
    /etc/cluster/cluster.conf       configuration (rewritten when a newer version arrives)
    /run/cluster/fenced.sock        local API (see the cluster crate's api module)
    /run/cluster/fenced.pid         pid, and the lock against a second fenced
    /var/log/cluster/fenced.log     log when in the background
    /run/cluster/fence_manual/      acknowledgements for fence_manual

EXIT STATUS
    0   left the group on request (or on SIGTERM/SIGINT); in the background: the daemon is
        ready
    1   could not start (invalid cluster.conf, corosync not running, fenced already
        running, socket in use); the reason is printed as \"fenced: ...\"
    2   bad usage";

/// Where the background daemon logs unless --log-file says otherwise.
const DEFAULT_LOG: &str = "/var/log/cluster/fenced.log";

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
    /// Stay in the foreground (logging to stderr unless --log-file is given).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Pid file, also the lock against a second fenced.
    #[arg(long, value_name = "PATH", default_value = cluster::cman::FENCED_PID)]
    pid_file: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log = args.log.log_file.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_LOG));
    if let Some(code) = daemonize(args.foreground, &Background::new("fenced", Some(log))) {
        return code;
    }
    daemon::finish("fenced", run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let signals = daemon::signals::install()?;
    daemon::log::init(&LogConfig::new("info", &args.log))?;
    let _pid = daemon::lock::PidFile::lock(&args.pid_file, "fenced")?;
    let opts = Options { conf: args.conf, socket: args.socket, agent_dir: args.agent_dir };
    cluster::daemon::run(opts, &signals)?;
    Ok(())
}
