//! `lvsd`: the userspace LVS director. Flags only; the daemon is `lvs::daemon::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use daemon::log::{LogArgs, LogConfig};

const AFTER_HELP: &str = "\
DESCRIPTION
    lvsd is the director of an LVS cluster on a kernel without IPVS: it listens on every
    virtual service address, schedules each new connection to a real server with the LVS
    schedulers (rr, wrr, lc, wlc, sed, nq, lblc, lblcr, dh, sh, mh), and proxies it
    (NAT-style: clients see the VIP, real servers see the director). UDP services get a
    session table. Health checks from the lvs.cf take failing real servers out and put them
    back after `reentry`. lvsadm changes the table at run time, with ipvsadm's syntax,
    without dropping established connections. pulse starts lvsd on the active director.

EXAMPLES
    lvsd --config /etc/sysconfig/ha/lvs.cf
    lvsd --rules /etc/sysconfig/ipvsadm --socket /tmp/lvsd.sock --foreground
    LVSD_SOCKET=/tmp/lvsd.sock lvsadm -L -n

FILES
    /etc/sysconfig/ha/lvs.cf    Piranha-format configuration (virtual services, servers, checks)
    /run/lvsd/lvsd.sock         control socket used by lvsadm (JSON lines; see lvs/docs/protocols.md)

SIGNALS
    SIGTERM, SIGINT   stop listening and exit 0 (established connections are cut).
    SIGHUP            reread --config and --rules and apply the difference to the running
                      table, as lvsadm edits would: unchanged services and real servers keep
                      their connections, changed ones are edited in place, removed ones let
                      their established connections finish; health checks restart only where
                      their configuration changed. Run-time lvsadm changes not in the files
                      are undone. An invalid file changes nothing (a warning says why); a part
                      that cannot be applied (an address that cannot be bound) is logged as a
                      warning and the rest runs on. Never exits. `lvsadm` has no reload
                      command; the control request {\"op\":\"reload\"} does the same.

LOGGING
    Logs go to stderr (the journal under systemd). --log-level LEVEL (error, warn, info,
    debug, trace, or a filter such as info,lvs=debug) or else $RUST_LOG sets what is
    logged; the default is info.

EXIT STATUS
    0   stopped cleanly
    1   could not start (bad configuration, address or socket unusable): the message says why
    2   invalid command line";

/// Userspace LVS director.
#[derive(Debug, Parser)]
#[command(name = "lvsd", version, after_long_help = AFTER_HELP)]
struct Args {
    /// lvs.cf to load: services, real servers and their health checks.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// ipvsadm-save rules to load (after the config).
    #[arg(short, long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Control socket for lvsadm (lvsadm finds it through $LVSD_SOCKET).
    #[arg(short, long, value_name = "PATH", default_value = lvs::daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Stay in the foreground and print `lvsd: ready` on stdout once listening (lvsd never
    /// daemonises itself; the flag is accepted for symmetry with pulse, which supervises it).
    #[arg(short, long)]
    foreground: bool,
    /// Do not run the lvs.cf health checks.
    #[arg(long)]
    no_checks: bool,
    /// Drop persistence templates pointing at a server of weight 0 (the kernel's
    /// expire_quiescent_template), so persistent clients leave a quiesced server.
    #[arg(long)]
    expire_quiescent_template: bool,
    /// Kernel fast path: DNAT through nftables (table `ip lvs`) for the services it can
    /// express (rr, wrr, sh, dh; not persistent; IPv4); the others stay on the proxy.
    #[arg(long)]
    nft: bool,
    /// Worker threads of the data plane (0: one per CPU).
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    daemon::finish("lvsd", run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let signals = daemon::signals::install().context("cannot install the signal handlers")?;
    daemon::log::init(&LogConfig::new("info", &args.log))?;
    // The control plane (control socket, health checks, ageing, reloads) runs here; the
    // data plane has worker threads of its own.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
    let opts = lvs::daemon::DaemonOptions {
        socket: args.socket,
        config: args.config,
        rules: args.rules,
        no_checks: args.no_checks,
        expire_quiescent_template: args.expire_quiescent_template,
        threads: args.threads,
        nft: args.nft,
    };
    rt.block_on(lvs::daemon::run(opts, signals))?;
    Ok(())
}
