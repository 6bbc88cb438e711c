//! `fence_gnbd`: fence agent for gnbd exports (standard fence agent interface).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gnbd_fence::agent::{parse, run, AgentArgs};
use gnbd_fence::DEFAULT_KEY;

const AFTER_HELP: &str = "\
DESCRIPTION
    fence_gnbd fences a cluster node from gnbd servers: each server persists a ban on the node,
    cuts its connections and answers only when none of the node's I/O can reach an export any
    more; its new connections are refused until it is unfenced. Orders travel to each server's
    network control channel (gnbd_serv --cluster-key, port 10810 by default) signed with the
    cluster key.

    Without options it reads the standard fence agent input on stdin, one key=value per line:
        action=off|on|reboot|status|monitor|list|metadata   (reboot = off)
        nodename=NODE                                       (also port=, plug=)
        servers=HOST[:PORT] ...                             (space or comma separated)
        cluster_key=FILE                                    (default /etc/cluster/gnbd.key)
        tls_certificates=DIR                                (orders over TLS instead, see below)

    With tls_certificates=DIR (or --tls-certificates DIR) the orders travel over TLS instead,
    authenticated by this node's certificate (DIR/client-cert.pem and DIR/client-key.pem,
    signed by the CA the servers were given with --tls-ca; DIR/ca-cert.pem verifies the
    servers). The certificate must name a node of the cluster that is not itself fenced.

EXAMPLES
    echo -e 'action=off\\nnodename=node2\\nservers=gnbd1 gnbd2' | fence_gnbd
    fence_gnbd -o on -n node2 -s gnbd1,gnbd2
    fence_gnbd -o off -n node2 -s gnbd1 --tls-certificates /etc/gnbd/tls
    fence_gnbd -o metadata

EXIT STATUS
    0   done (status: the node is not fenced)
    1   failed: at least one server did not confirm; the message says which and why
    2   status: the node is fenced";

/// Fence agent for gnbd exports.
#[derive(Debug, Parser)]
#[command(name = "fence_gnbd", version, after_long_help = AFTER_HELP)]
struct Args {
    /// Action: off, on, reboot, status, monitor, list, metadata (default: read stdin).
    #[arg(short = 'o', long)]
    action: Option<String>,
    /// Node to fence or unfence.
    #[arg(short = 'n', long)]
    nodename: Option<String>,
    /// gnbd servers, HOST[:PORT], comma or space separated.
    #[arg(short = 's', long)]
    servers: Option<String>,
    /// Cluster key file.
    #[arg(short = 'k', long)]
    cluster_key: Option<PathBuf>,
    /// Send the orders over TLS, authenticated by this node's certificate: a directory with
    /// ca-cert.pem, client-cert.pem and client-key.pem (instead of the cluster key).
    #[arg(long, value_name = "DIR")]
    tls_certificates: Option<PathBuf>,
}

fn main() -> ExitCode {
    daemon::finish("fence_gnbd", agent(Args::parse()))
}

fn agent(args: Args) -> anyhow::Result<()> {
    let agent = if args.action.is_none() && args.nodename.is_none() && args.servers.is_none() {
        let mut text = String::new();
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(|e| anyhow::anyhow!("cannot read the agent's options from stdin: {e}"))?;
        let mut a = parse(&text).map_err(|e| anyhow::anyhow!(e))?;
        if let Some(k) = args.cluster_key {
            a.key = k;
        }
        if let Some(d) = args.tls_certificates {
            a.tls = Some(d);
        }
        a
    } else {
        let mut text = String::new();
        text.push_str(&format!("action={}\n", args.action.unwrap_or_else(|| "reboot".into())));
        if let Some(n) = args.nodename {
            text.push_str(&format!("nodename={n}\n"));
        }
        if let Some(s) = args.servers {
            text.push_str(&format!("servers={s}\n"));
        }
        let mut a: AgentArgs = parse(&text).map_err(|e| anyhow::anyhow!(e))?;
        a.key = args.cluster_key.unwrap_or_else(|| DEFAULT_KEY.into());
        a.tls = args.tls_certificates;
        a
    };
    // The agent writes its own report (one line per server); its code is the agent
    // interface's (0 done, 1 failed, 2 status: fenced).
    let out = run(&agent);
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    match u8::try_from(out.code) {
        Ok(0) => Ok(()),
        Ok(code) => Err(daemon::Failure::quiet(code).into()),
        Err(_) => Err(daemon::Failure::quiet(1).into()),
    }
}
