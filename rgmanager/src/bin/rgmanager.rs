//! `rgmanager`: the HA service manager daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use daemon::background::{daemonize, Background};
use daemon::log::{LogArgs, LogConfig};

const AFTER_HELP: &str = "\
DESCRIPTION
    rgmanager keeps the services of cluster.conf's <rm> section running. Each service is a
    tree of resources (ip, script, fs, clusterfs, gnbd_export, lvm) started parents first and
    stopped children first. Every service has one owner in the cluster: its state (owner,
    last owner, started/stopped/disabled/failed/...) lives in the value block of a DLM lock
    per service and changes only under that lock, so every node sees the same owner.

    Placement follows the service's failover domain: ordered domains run it on the member
    with the best priority (1) that is up and fail back when a better one returns (unless
    nofailback); unordered ones on any member; restricted ones never outside the domain
    (stopped when no member is up); unrestricted ones anywhere when no member is up.
    exclusive services run only on a node running nothing else.

    The owner checks each resource's status at its interval (<action name=\"status\"
    interval=\"S\"/>, else the agent's default). A failure restarts the service in place
    (recovery=\"restart\", the default) until more than max_restarts restarts happen within
    restart_expire_time seconds, then relocates it (or disables it with restart-disable);
    recovery=\"relocate\" and \"disable\" do that at once. A failure inside an
    __independent_subtree restarts only that subtree. A resource that cannot be stopped
    leaves the service failed: nobody starts it until clusvcadm -d.

    When a node dies, its services are started elsewhere only after fenced reports it
    fenced. A node that loses quorum stops its services. Restarting rgmanager on a running
    node keeps its services running: the new daemon finds itself their owner in the DLM,
    checks their status and adopts them.

    Needs fenced (cman_tool join) and dlm_controld on the node. clusvcadm and clustat talk
    to it through its control socket.

EXAMPLES
    cman_tool join && dlm_controld & rgmanager
    rgmanager -f --log-level debug

FILES
    /etc/cluster/cluster.conf       services, resources, failover domains
    /run/cluster/rgmanager.sock     control socket (clusvcadm, clustat)
    /run/cluster/fenced.sock        fenced's local API (membership, quorum, fencing)
    /run/dlm/dlm.sock               dlm_controld (service records)
    /run/cluster/rgmanager.pid      pid file and lock against a second rgmanager
    /var/log/cluster/rgmanager.log  log when in the background

SIGNALS
    TERM, INT   stop: this node takes no more services, stops its services and hands them
                to the other nodes, then exits 0
    HUP         reopen the log file and reread cluster.conf (never stops the daemon)

LOGGING
    --log-level LEVEL overrides $RUST_LOG; the default is info. The ready line
    \"rgmanager: ready node N socket PATH\" goes to stdout.

EXIT STATUS
    0   stopped by SIGTERM/SIGINT (in the background: the daemon is ready)
    1   could not start (cluster.conf invalid, fenced or dlm_controld not reachable,
        another rgmanager running)
    2   bad usage";

/// Where the background daemon logs unless --log-file says otherwise.
const DEFAULT_LOG: &str = "/var/log/cluster/rgmanager.log";

/// The HA service manager.
#[derive(Debug, Parser)]
#[command(name = "rgmanager", version, after_long_help = AFTER_HELP)]
struct Args {
    /// cluster.conf to use.
    #[arg(short = 'c', long = "config", default_value = cluster::cman::DEFAULT_CONF)]
    conf: PathBuf,
    /// Control socket.
    #[arg(short = 's', long, default_value = rgmanager::api::SOCKET)]
    socket: PathBuf,
    /// fenced's socket.
    #[arg(long, default_value = cluster::api::SOCKET)]
    fenced_socket: PathBuf,
    /// dlm_controld's socket.
    #[arg(long, default_value = "/run/dlm/dlm.sock")]
    dlm_socket: PathBuf,
    /// Evaluation period in milliseconds (services are placed and requests carried out
    /// within about this long).
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60000))]
    tick_ms: u64,
    /// Stay in the foreground (logging to stderr unless --log-file is given).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Pid file, also the lock against a second rgmanager.
    #[arg(long, value_name = "PATH", default_value = "/run/cluster/rgmanager.pid")]
    pid_file: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log = args.log.log_file.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_LOG));
    if let Some(code) = daemonize(args.foreground, &Background::new("rgmanager", Some(log))) {
        return code;
    }
    daemon::finish("rgmanager", run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let signals = daemon::signals::install()?;
    daemon::log::init(&LogConfig::new("info", &args.log))?;
    if let Some(dir) = args.pid_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _pid = daemon::lock::PidFile::lock(&args.pid_file, "rgmanager")?;
    let cfg = rgmanager::daemon::Config {
        conf: args.conf,
        fenced: args.fenced_socket,
        dlm: args.dlm_socket,
        socket: args.socket,
        tick: Duration::from_millis(args.tick_ms),
    };
    rgmanager::daemon::run(cfg, &signals, |r| {
        daemon::ready::ready(&format!("rgmanager: ready node {} socket {}", r.node_id, r.socket.display()));
    })?;
    Ok(())
}
