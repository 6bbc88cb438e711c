//! `lvsd`: the userspace LVS director. Flags only; the daemon is `lvs::daemon::run`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

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
    /run/lvsd/lvsd.sock         admin socket used by lvsadm

SIGNALS
    SIGTERM, SIGINT   stop listening and exit 0 (established connections are cut).

EXIT STATUS
    0   stopped cleanly
    1   could not start (bad configuration, address or socket unusable): the message says why";

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
    /// Admin socket for lvsadm (lvsadm finds it through $LVSD_SOCKET).
    #[arg(short, long, value_name = "PATH", default_value = lvs::daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Stay in the foreground and print `lvsd: ready` on stdout once listening (lvsd never
    /// daemonises itself; the flag is accepted for symmetry with pulse).
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The control plane (admin socket, health checks, ageing) runs here; the data plane
    // has worker threads of its own.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lvsd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = lvs::daemon::DaemonOptions {
        socket: args.socket,
        config: args.config,
        rules: args.rules,
        no_checks: args.no_checks,
        expire_quiescent_template: args.expire_quiescent_template,
        threads: args.threads,
        nft: args.nft,
    };
    let r = rt.block_on(lvs::daemon::run(opts, shutdown(), |sock| {
        println!("lvsd: ready socket={}", sock.display());
        let _ = std::io::stdout().flush();
    }));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lvsd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
