//! `rg_test`: run a service's resources on this node without the cluster, for debugging
//! scripts and resource definitions.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daemon::log::{LogArgs, LogConfig};
use rgmanager::agent::{self, Env};
use rgmanager::tree::Tree;

const AFTER_HELP: &str = "\
DESCRIPTION
    rg_test reads cluster.conf's <rm> section and runs one service's resources on this
    node, in the order rgmanager would, without corosync, fenced, the DLM or rgmanager:
    nothing is coordinated with other nodes, so only use it on a node that does not run
    the service under rgmanager.

    test CONF                          print every service's resource tree in start order
    test CONF start service NAME       start NAME's resources (parents first; on a failure
                                       what started is stopped again)
    test CONF stop service NAME        stop them (children first; goes on after failures)
    test CONF status service NAME      check every resource's status
    noop CONF start|stop service NAME  print what start or stop would run, run nothing

    Resource actions are logged on stderr (info) as they run.

EXAMPLES
    rg_test test /etc/cluster/cluster.conf
    rg_test test /etc/cluster/cluster.conf start service www
    rg_test test /etc/cluster/cluster.conf status service www
    rg_test noop /etc/cluster/cluster.conf stop service www

EXIT STATUS
    0   done (status: every resource is healthy)
    1   a resource failed (its action, type, name and error are printed), or cluster.conf
        is invalid or has no such service
    2   bad usage";

/// Run a service's resources locally, without the cluster.
#[derive(Debug, Parser)]
#[command(name = "rg_test", version, after_long_help = AFTER_HELP)]
struct Args {
    /// test (run) or noop (print only).
    #[arg(value_parser = ["test", "noop"])]
    mode: String,
    /// cluster.conf.
    conf: PathBuf,
    /// start, stop or status.
    #[arg(value_parser = ["start", "stop", "status"])]
    action: Option<String>,
    /// The word `service`.
    #[arg(value_parser = ["service"], requires = "name")]
    what: Option<String>,
    /// Service name.
    name: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    daemon::finish("rg_test", run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("info", &args.log))?;
    let conf = cluster::conf::load(&args.conf)?;
    let rm = conf.rm.clone().unwrap_or_default();
    let env = Env::default();
    let Some(action) = args.action.as_deref() else {
        for s in &rm.services {
            let t = Tree::build(&rm, s)?;
            println!("service {}:", s.name);
            print_tree(&t, &t.roots, 1);
        }
        return Ok(());
    };
    let name = match (&args.what, &args.name) {
        (Some(_), Some(n)) => n.clone(),
        _ => anyhow::bail!("usage: rg_test {} CONF {action} service NAME", args.mode),
    };
    let tree = Tree::for_service(&rm, &name)?;
    let order = if action == "stop" { tree.stop_order() } else { tree.start_order() };
    if args.mode == "noop" {
        anyhow::ensure!(action != "status", "noop runs nothing; use: rg_test test CONF status service {name}");
        for i in order {
            println!("{action} {}", tree.nodes[i].label());
        }
        return Ok(());
    }
    match action {
        "start" => {
            agent::start_list(&env, &tree, &order).map_err(|f| anyhow::anyhow!("{f}"))?;
            println!("service {name} started");
        }
        "stop" => {
            agent::stop_list(&env, &tree, &order)
                .map_err(|errs| anyhow::anyhow!(errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
            println!("service {name} stopped");
        }
        _ => {
            agent::status_all(&env, &tree)?;
            println!("service {name} is running");
        }
    }
    Ok(())
}

fn print_tree(t: &Tree, level: &[usize], depth: usize) {
    for &i in level {
        let n = &t.nodes[i];
        let mut extra = format!(" (status every {} s", n.status_interval.as_secs());
        if n.independent {
            extra.push_str(", independent subtree");
        }
        extra.push(')');
        let attrs: Vec<String> = n.res.attrs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        println!("{}{} {}{extra}", "  ".repeat(depth), n.label(), attrs.join(" "));
        print_tree(t, &n.children, depth + 1);
    }
}
