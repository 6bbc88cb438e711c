//! `clustat`: cluster status: membership and quorum (corosync) and, where rgmanager runs,
//! the services.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use daemon::log::{LogArgs, LogConfig};
use daemon::Failure;
use rgmanager::clustat::{render_text, render_xml, Filter};

const AFTER_HELP: &str = "\
DESCRIPTION
    clustat shows whether the cluster is quorate and, for every node in cluster.conf,
    whether it is a member (Online), which one is this node (Local) and which run
    rgmanager, as corosync's votequorum sees it from here. When rgmanager runs on this
    node it also shows every service: its owner (or, in parentheses, its last owner) and
    its state: started, starting, stopping, stopped, recovering (between owners), disabled
    or failed (could not be stopped; clear it with clusvcadm -d). Flags: frozen
    (clusvcadm -Z), held (stopped by clusvcadm -s).

EXAMPLES
    clustat
    clustat -i 2                 refresh every 2 seconds
    clustat -s www               one service
    clustat -m node2             one member
    clustat -l                   long form
    clustat -x                   XML

FILES
    /etc/cluster/cluster.conf       node names and ids
    /run/cluster/rgmanager.sock     rgmanager's control socket (services)

LOGGING
    --log-level LEVEL overrides $RUST_LOG; the default is warn.

EXIT STATUS
    0   shown
    1   corosync is not running on this node, cluster.conf is invalid, or the service or
        member asked for with -s/-m does not exist
    2   bad usage";

/// Cluster status.
#[derive(Debug, Parser)]
#[command(name = "clustat", version, after_long_help = AFTER_HELP)]
struct Args {
    /// cluster.conf to use.
    #[arg(short = 'c', long = "config", default_value = cluster::cman::DEFAULT_CONF)]
    conf: PathBuf,
    /// Refresh every SECS seconds until interrupted.
    #[arg(short = 'i', value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval: Option<u64>,
    /// Show only this service (NAME or service:NAME).
    #[arg(short = 's', value_name = "SERVICE")]
    service: Option<String>,
    /// Show only this member.
    #[arg(short = 'm', value_name = "NODE")]
    member: Option<String>,
    /// Long form of the services.
    #[arg(short = 'l')]
    long: bool,
    /// XML.
    #[arg(short = 'x', conflicts_with = "long")]
    xml: bool,
    /// rgmanager's control socket.
    #[arg(long, default_value = rgmanager::api::SOCKET)]
    rg_socket: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    daemon::finish("clustat", run(Args::parse()))
}

fn once(args: &Args, filter: &Filter) -> anyhow::Result<String> {
    let c = cluster::cman::load(&args.conf)?;
    let s = cluster::corosync::status(&c)?;
    let rg = rgmanager::api::Client::connect(&args.rg_socket).ok().and_then(|mut cl| {
        cl.set_timeout(Some(Duration::from_secs(10))).ok()?;
        cl.status().ok()
    });
    if let Some(m) = &filter.member {
        if !s.nodes.iter().any(|n| &n.name == m) {
            return Err(Failure::new(1, format!("member {m} is not in cluster.conf")).into());
        }
    }
    if let Some(svc) = &filter.service {
        if !c.rm.as_ref().is_some_and(|rm| rm.services.iter().any(|x| &x.name == svc)) {
            return Err(Failure::new(1, format!("service {svc} is not in cluster.conf")).into());
        }
        if rg.is_none() {
            return Err(Failure::new(1, "rgmanager is not running on this node").into());
        }
    }
    Ok(if args.xml {
        render_xml(&c.name, c.config_version, &s, rg.as_ref(), filter)
    } else {
        render_text(&c.name, c.config_version, &s, rg.as_ref(), filter)
    })
}

fn run(args: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("warn", &args.log))?;
    let filter = Filter {
        service: args.service.as_ref().map(|s| s.strip_prefix("service:").unwrap_or(s).to_owned()),
        member: args.member.clone(),
        long: args.long,
    };
    let Some(secs) = args.interval else {
        print!("{}", once(&args, &filter)?);
        return Ok(());
    };
    let signals = daemon::signals::install()?;
    loop {
        let out = once(&args, &filter)?;
        // Clear the screen between refreshes on a terminal.
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            print!("\x1b[H\x1b[2J");
        }
        println!("{out}");
        let seen = signals.counts();
        if signals.wait_change(seen, Duration::from_secs(secs)).stop > 0 {
            return Ok(());
        }
    }
}
