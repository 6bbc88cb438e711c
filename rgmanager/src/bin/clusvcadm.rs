//! `clusvcadm`: operator requests on services (enable, disable, relocate, restart, stop,
//! freeze, unfreeze) and the local lock.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Parser};
use daemon::log::{LogArgs, LogConfig};
use daemon::Failure;
use rgmanager::api::{Client, ServiceStatus};
use rgmanager::record::{State, Want};
use rgmanager::request::{Op, RgError};

const AFTER_HELP: &str = "\
DESCRIPTION
    clusvcadm asks rgmanager (on this node) to change a service, and waits until the
    change is carried out cluster-wide: the request is written into the service's record
    and its owner (or the node the placement rule picks) acts on it.

    -e SERVICE [-m NODE]   enable and start it (on NODE if given, else where its failover
                           domain places it); on a running service with -m: relocate
    -d SERVICE             stop it and disable it (also clears a failed service)
    -r SERVICE [-m NODE]   relocate: stop it on its owner and start it on NODE (or the next
                           node the placement rule picks)
    -R SERVICE             restart it in place
    -s SERVICE             stop it and keep it stopped until -e
    -Z SERVICE             freeze: no status checks, no recovery, no moves
    -U SERVICE             unfreeze
    -l                     lock this node: it takes no more services (before maintenance)
    -u                     unlock it

    SERVICE is NAME or service:NAME.

EXAMPLES
    clusvcadm -e www
    clusvcadm -r www -m node2
    clusvcadm -d www
    clusvcadm -Z www

FILES
    /run/cluster/rgmanager.sock     rgmanager's control socket

EXIT STATUS
    0   success
    1   failure (RG_EFAIL), or rgmanager is not running on this node
    2   bad usage
    4   service does not exist (RG_ENOSERVICE)
    6   timed out waiting for the outcome (RG_EAGAIN)
    8   invalid operation for the service's state (RG_EINVAL; a failed service needs -d)
    9   no quorum (RG_EQUORUM)
    10  already running there (RG_ERUN)
    11  frozen (RG_EFROZEN)
    12  target node dead or unknown (RG_ENODE)
    15  restricted failover domain has no member up (RG_EDOMAIN)
    16  exclusive service: the node runs something else (RG_EEXCL)
    17  relocation failed; running on its original owner (RG_ERELO)
    The message printed is rgmanager's for the code.";

/// Operator requests on HA services.
#[derive(Debug, Parser)]
#[command(name = "clusvcadm", version, after_long_help = AFTER_HELP)]
#[command(group(ArgGroup::new("action").required(true).args(["enable", "disable", "relocate", "restart", "stop", "freeze", "unfreeze", "lock", "unlock"])))]
struct Args {
    /// Enable SERVICE.
    #[arg(short = 'e', value_name = "SERVICE")]
    enable: Option<String>,
    /// Disable SERVICE.
    #[arg(short = 'd', value_name = "SERVICE")]
    disable: Option<String>,
    /// Relocate SERVICE.
    #[arg(short = 'r', value_name = "SERVICE")]
    relocate: Option<String>,
    /// Restart SERVICE in place.
    #[arg(short = 'R', value_name = "SERVICE")]
    restart: Option<String>,
    /// Stop SERVICE (held stopped).
    #[arg(short = 's', value_name = "SERVICE")]
    stop: Option<String>,
    /// Freeze SERVICE.
    #[arg(short = 'Z', value_name = "SERVICE")]
    freeze: Option<String>,
    /// Unfreeze SERVICE.
    #[arg(short = 'U', value_name = "SERVICE")]
    unfreeze: Option<String>,
    /// Lock this node against taking services.
    #[arg(short = 'l')]
    lock: bool,
    /// Unlock this node.
    #[arg(short = 'u')]
    unlock: bool,
    /// Target member for -e and -r.
    #[arg(short = 'm', value_name = "NODE")]
    member: Option<String>,
    /// Print nothing but errors.
    #[arg(short = 'q')]
    quiet: bool,
    /// Seconds to wait for the outcome.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    timeout: u64,
    /// rgmanager's control socket.
    #[arg(long, default_value = rgmanager::api::SOCKET)]
    rg_socket: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    daemon::finish("clusvcadm", run(Args::parse()))
}

fn fail(e: RgError) -> anyhow::Error {
    Failure::new(e.exit_status(), e.to_string()).into()
}

fn run(args: Args) -> anyhow::Result<()> {
    daemon::log::init(&LogConfig::new("warn", &args.log))?;
    if args.member.is_some() && (args.enable.is_none() && args.relocate.is_none()) {
        return Err(Failure::new(2, "-m goes with -e or -r").into());
    }
    let mut c = Client::connect(&args.rg_socket)
        .map_err(|e| Failure::new(1, format!("cannot reach rgmanager on this node: {e}")))?;
    c.set_timeout(Some(Duration::from_secs(120)))?;
    let say = |s: &str| {
        if !args.quiet {
            print!("{s}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
    };
    if args.lock || args.unlock {
        c.set_locked(args.lock)?;
        say(if args.lock { "Resource groups locked\n" } else { "Resource groups unlocked\n" });
        return Ok(());
    }
    let (op, svc) = [
        (Op::Enable, &args.enable),
        (Op::Disable, &args.disable),
        (Op::Relocate, &args.relocate),
        (Op::Restart, &args.restart),
        (Op::Stop, &args.stop),
        (Op::Freeze, &args.freeze),
        (Op::Unfreeze, &args.unfreeze),
    ]
    .into_iter()
    .find_map(|(op, s)| s.as_ref().map(|s| (op, s.strip_prefix("service:").unwrap_or(s).to_owned())))
    .expect("clap requires one action");
    let who = match &args.member {
        Some(m) => format!("Member {m}"),
        None => "Local machine".to_owned(),
    };
    say(&match op {
        Op::Enable => format!("{who} trying to enable service:{svc}..."),
        Op::Disable => format!("Local machine disabling service:{svc}..."),
        Op::Relocate => match &args.member {
            Some(m) => format!("Trying to relocate service:{svc} to {m}..."),
            None => format!("Trying to relocate service:{svc}..."),
        },
        Op::Restart => format!("Local machine trying to restart service:{svc}..."),
        Op::Stop => format!("Local machine stopping service:{svc}..."),
        Op::Freeze => format!("Local machine freezing service:{svc}..."),
        Op::Unfreeze => format!("Local machine unfreezing service:{svc}..."),
    });
    let before = c.status()?.service(&svc).cloned();
    let reply = c.service(op, &svc, args.member.as_deref())?;
    if reply.code != 0 {
        say("\n");
        let e = rg_error(reply.code);
        return Err(fail(e));
    }
    if matches!(op, Op::Freeze | Op::Unfreeze) {
        say("Success\n");
        return Ok(());
    }
    let gen = reply.service.as_ref().map(|s| s.generation).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let st = c.status()?;
        let Some(s) = st.service(&svc).cloned() else { return Err(fail(RgError::NoService)) };
        if let Some(outcome) = settled(op, &s, gen, before.as_ref(), args.member.as_deref()) {
            match outcome {
                Ok(()) => {
                    say("Success\n");
                    if s.state == State::Started {
                        say(&format!("service:{svc} is now running on {}\n", s.owner.as_deref().unwrap_or("?")));
                    }
                    return Ok(());
                }
                Err(e) => {
                    say("\n");
                    return Err(fail(e));
                }
            }
        }
        if Instant::now() >= deadline {
            say("\n");
            return Err(fail(RgError::Again));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rg_error(code: i32) -> RgError {
    [
        RgError::Fail,
        RgError::Abort,
        RgError::NoService,
        RgError::Depend,
        RgError::Invalid,
        RgError::Quorum,
        RgError::Running,
        RgError::Frozen,
        RgError::Node,
        RgError::Domain,
        RgError::Exclusive,
        RgError::Relocate,
        RgError::Again,
    ]
    .into_iter()
    .find(|e| e.code() == code)
    .unwrap_or(RgError::Fail)
}

/// Whether the request's outcome is known: Ok, or the error to report.
fn settled(
    op: Op,
    s: &ServiceStatus,
    gen: u32,
    before: Option<&ServiceStatus>,
    target: Option<&str>,
) -> Option<Result<(), RgError>> {
    if s.want != Want::None || s.generation == gen && matches!(op, Op::Restart | Op::Relocate) {
        return None;
    }
    match (op, s.state) {
        (_, State::Failed) => Some(Err(RgError::Abort)),
        (Op::Disable, State::Disabled) => Some(Ok(())),
        (Op::Stop, State::Stopped | State::Disabled) => Some(Ok(())),
        (Op::Enable | Op::Restart, State::Started) => Some(Ok(())),
        (Op::Relocate, State::Started) => {
            let from = before.and_then(|b| b.owner.as_deref());
            match (target, s.owner.as_deref()) {
                (Some(t), Some(o)) if o == t => Some(Ok(())),
                (None, o) if o != from => Some(Ok(())),
                _ => Some(Err(RgError::Relocate)),
            }
        }
        (Op::Enable, State::Disabled) => Some(Err(RgError::Fail)),
        _ => None,
    }
}
