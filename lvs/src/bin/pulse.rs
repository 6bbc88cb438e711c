//! `pulse`: heartbeat and failover of the director pair. Flags only; the logic is
//! `lvs::pulse`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use clap::{Parser, ValueEnum};
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
    /run/lvsd/lvsd.sock         admin socket of the lvsd that pulse starts

SIGNALS
    SIGTERM, SIGINT   stop lvsd, take the VIPs down, exit 0.
    SIGUSR1           take over now.

EXIT STATUS
    0   --check: the configuration is valid; otherwise stopped cleanly
    1   invalid configuration (FILE:LINE: message) or could not start";

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
    /// Stay in the foreground, log to stderr, print `pulse: ready` on stdout.
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
    /// Log file when not in the foreground.
    #[arg(long, value_name = "FILE", default_value = "/var/log/pulse.log")]
    log: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return match lvs::LvsConfig::load(&args.config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} virtual services, {} real servers)",
                    args.config.display(),
                    c.virtuals.len(),
                    c.virtuals.iter().map(|v| v.servers.len()).sum::<usize>()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pulse: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !args.foreground {
        return detach(&args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pulse: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if let Ok(mut usr1) = signal(SignalKind::user_defined1()) {
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    let _ = tx.send(());
                }
            });
        }
        let shutdown = async {
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        lvs::pulse::run(opts, shutdown, Some(rx), |role| {
            println!("pulse: ready role={role:?}");
            let _ = std::io::stdout().flush();
        })
        .await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pulse: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts `pulse --foreground` in its own session, logging to --log, and returns once it
/// is ready.
fn detach(args: &Args) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let log = match std::fs::OpenOptions::new().create(true).append(true).open(&args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pulse: cannot open log {}: {e}", args.log.display());
            return ExitCode::FAILURE;
        }
    };
    let Ok(me) = std::env::current_exe() else {
        eprintln!("pulse: cannot find my own executable");
        return ExitCode::FAILURE;
    };
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    argv.push("--foreground".into());
    let child = std::process::Command::new(me)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pulse: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut line = String::new();
    let out = child.stdout.take().expect("piped");
    let _ = BufReader::new(out).read_line(&mut line);
    if line.contains("ready") {
        ExitCode::SUCCESS
    } else {
        eprintln!("pulse: did not start; see {}", args.log.display());
        ExitCode::FAILURE
    }
}
