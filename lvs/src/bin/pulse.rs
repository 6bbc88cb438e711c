//! `pulse`: heartbeat and failover of the director pair. Flags only; the logic is
//! `lvs::pulse`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use daemon::background::Background;
use daemon::log::{LogArgs, LogConfig};
use lvs::pulse::{PulseOptions, Role};

const AFTER_HELP: &str = "\
DESCRIPTION
    pulse runs on both directors of an LVS pair, named `primary` and `backup` in lvs.cf.
    The directors exchange heartbeats (UDP, heartbeat_port) every `keepalive` seconds. The
    active one runs lvsd; when the standby hears nothing for `deadtime` seconds it brings the
    virtual addresses up on their interfaces (the device after `address` in each virtual
    block), announces them with gratuitous ARP and starts lvsd. A director that comes back
    stays standby until told to take over (--takeover, or SIGUSR1). If both end up active
    (a healed partition), the one that took over last stays; on a tie, the primary.

EXAMPLES
    Check a configuration (errors carry line numbers):
        pulse --config /etc/sysconfig/ha/lvs.cf --check
    Run attached to the terminal:
        pulse --config /etc/sysconfig/ha/lvs.cf --foreground
    Make this director the active one:
        kill -USR1 $(pidof pulse)

FILES
    /etc/sysconfig/ha/lvs.cf    the configuration (Piranha format)
    /run/lvsd/lvsd.sock         control socket of the lvsd that pulse starts
    /var/log/pulse.log          the log when running in the background (--log)

SIGNALS
    SIGTERM, SIGINT   stop lvsd, take the VIPs down, exit 0.
    SIGUSR1           take over now.
    SIGHUP            reopen the log file, reread and validate lvs.cf. An invalid file is
                      logged and ignored. keepalive, deadtime, serial_no and the virtual
                      addresses take effect at once (on the active director VIPs are brought
                      up or down); a change of primary, backup or heartbeat_port is logged
                      as needing a restart of pulse. The active director passes the reload
                      on to its lvsd, which applies the difference to its running table.
                      Never exits.

LOGGING
    --log-level LEVEL (error, warn, info, debug, trace, or a filter such as info,lvs=debug)
    or else $RUST_LOG sets what is logged; the default is info. In the foreground logs go
    to stderr (the journal under systemd), in the background to --log. lvsd started by
    pulse logs to the same place.

EXIT STATUS
    0   --check: the configuration is valid; otherwise stopped cleanly
    1   invalid configuration (FILE:LINE: message) or could not start
    2   invalid command line";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Primary,
    Backup,
}

/// Heartbeat and failover for an LVS director pair.
#[derive(Debug, Parser)]
#[command(name = "pulse", version, after_long_help = AFTER_HELP)]
struct Args {
    /// lvs.cf to use.
    #[arg(short, long, value_name = "FILE", default_value = "/etc/sysconfig/ha/lvs.cf")]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Stay in the foreground, log to stderr, print `pulse: ready` on stdout. Without it,
    /// pulse starts itself in the background, logging to --log, and returns once it is
    /// ready (printing the same line) or failed (printing why).
    #[arg(short, long)]
    foreground: bool,
    /// Which director this is (default: whichever of primary/backup is a local address).
    #[arg(long, value_enum)]
    role: Option<RoleArg>,
    /// Take over at start instead of waiting.
    #[arg(long)]
    takeover: bool,
    /// The lvsd binary (default: next to pulse).
    #[arg(long, value_name = "PATH")]
    lvsd: Option<PathBuf>,
    /// Admin socket for the lvsd that pulse starts.
    #[arg(long, value_name = "PATH", default_value = lvs::daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Log file when not in the foreground (reopened on SIGHUP, for log rotation).
    #[arg(long, value_name = "FILE", default_value = "/var/log/pulse.log")]
    log: PathBuf,
    #[command(flatten)]
    log_args: LogArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return daemon::finish("pulse", check(&args));
    }
    let bg = Background::new("pulse", Some(args.log.clone()));
    if let Some(code) = daemon::background::daemonize(args.foreground, &bg) {
        return code;
    }
    daemon::finish("pulse", run(args))
}

/// `--check`: validates the configuration.
fn check(args: &Args) -> anyhow::Result<()> {
    let c = lvs::LvsConfig::load(&args.config).map_err(anyhow::Error::msg)?;
    println!(
        "{}: ok ({} virtual services, {} real servers)",
        args.config.display(),
        c.virtuals.len(),
        c.virtuals.iter().map(|v| v.servers.len()).sum::<usize>()
    );
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    let signals = daemon::signals::install().context("cannot install the signal handlers")?;
    // In the background the toolkit logs to --log (the waiting parent said so).
    daemon::log::init(&LogConfig::new("info", &args.log_args))?;
    let lvsd = args.lvsd.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("lvsd"))).unwrap_or_else(|| "lvsd".into())
    });
    let opts = PulseOptions {
        config: args.config.clone(),
        role: args.role.map(|r| match r {
            RoleArg::Primary => Role::Primary,
            RoleArg::Backup => Role::Backup,
        }),
        lvsd,
        socket: args.socket.clone(),
        takeover: args.takeover,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
    rt.block_on(lvs::pulse::run(opts, signals))?;
    Ok(())
}
