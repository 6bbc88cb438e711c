//! `cman_tool` operations: join (generate corosync.conf, start corosync and fenced), leave,
//! status and nodes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::conf::{self, ClusterConf};
use crate::corosync;
use crate::corosync_conf::{self, LOG_DIR};

/// Default cluster.conf.
pub const DEFAULT_CONF: &str = "/etc/cluster/cluster.conf";
/// Run directory: generated corosync.conf, pid files, the fenced socket.
pub const RUN_DIR: &str = "/run/cluster";

/// What can go wrong in a cman_tool operation.
#[derive(Debug, thiserror::Error)]
pub enum CmanError {
    /// cluster.conf is invalid (every problem listed).
    #[error("{path}: invalid cluster.conf:\n{errors}")]
    Conf { path: String, errors: conf::ConfErrors },
    /// The corosync configuration cannot be generated.
    #[error("{0}")]
    Generate(#[from] corosync_conf::GenerateError),
    /// Corosync is not reachable or failed.
    #[error("{0}")]
    Corosync(#[from] corosync::CorosyncError),
    /// fenced already answers on this node.
    #[error("fenced is already running on this node")]
    FencedRunning,
    /// The node is already a member.
    #[error("corosync is already running on this node; run cman_tool leave first")]
    AlreadyJoined,
    /// A program could not be started.
    #[error("cannot start {program}: {error}")]
    Spawn { program: String, error: std::io::Error },
    /// A daemon did not come up.
    #[error("{what} exited or did not become ready within {secs} s; see {log}")]
    NotReady { what: &'static str, secs: u64, log: String },
    /// fenced said why it could not start.
    #[error("fenced did not start: {message} (see {log})")]
    FencedFailed { message: String, log: String },
    /// File system trouble.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CmanError + '_ {
    move |error| CmanError::Io { path: path.display().to_string(), error }
}

/// Loads and validates a cluster.conf.
pub fn load(path: &Path) -> Result<ClusterConf, CmanError> {
    conf::load(path).map_err(|errors| CmanError::Conf { path: path.display().to_string(), errors })
}

/// Options of `cman_tool join`.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// cluster.conf to use.
    pub conf: PathBuf,
    /// Where the generated corosync.conf goes.
    pub corosync_conf: PathBuf,
    /// Start fenced after corosync.
    pub fenced: bool,
    /// How long to wait for each daemon.
    pub wait: Duration,
}

/// Validates `path` and returns the corosync configuration `join` would start with.
pub fn dry_run(path: &Path) -> Result<String, CmanError> {
    let c = load(path)?;
    Ok(corosync_conf::generate(&c)?)
}

/// A program next to the running executable (our binaries are installed together), else
/// found on PATH.
pub fn sibling(program: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join(program);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(program)
}

fn spawn_daemon(program: &Path, args: &[&std::ffi::OsStr], log: &Path) -> Result<u32, CmanError> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    use std::os::unix::process::CommandExt;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|error| CmanError::Spawn { program: program.display().to_string(), error })?;
    // The daemon outlives us; it is reparented to init (or the namespace's reaper).
    Ok(child.id())
}

fn wait_until(wait: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cman_tool join`: generates corosync.conf, starts corosync, waits for it, starts fenced.
pub fn join(opts: &JoinOptions) -> Result<ClusterConf, CmanError> {
    let c = load(&opts.conf)?;
    let text = corosync_conf::generate(&c)?;
    if corosync::is_running() {
        return Err(CmanError::AlreadyJoined);
    }
    for dir in [Path::new(RUN_DIR), Path::new(LOG_DIR)] {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    if let Some(parent) = opts.corosync_conf.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    ::daemon::write_atomic(&opts.corosync_conf, text.as_bytes()).map_err(io(&opts.corosync_conf))?;
    let log = Path::new(LOG_DIR).join("corosync.stderr");
    let pid = spawn_daemon(
        &PathBuf::from("corosync"),
        &["-f".as_ref(), "-c".as_ref(), opts.corosync_conf.as_os_str()],
        &log,
    )?;
    let pidfile = Path::new(RUN_DIR).join("corosync.pid");
    std::fs::write(&pidfile, format!("{pid}\n")).map_err(io(&pidfile))?;
    // Fails fast when corosync exits (a bad address, a port in use): its log says why.
    let corosync_log = Path::new(LOG_DIR).join("corosync.log");
    let ready = || corosync::local_nodeid().is_ok() && corosync::is_running();
    if !wait_until(opts.wait, || !pid_alive(pid) || ready()) || !pid_alive(pid) {
        return Err(CmanError::NotReady {
            what: "corosync",
            secs: opts.wait.as_secs(),
            log: format!("{} and {}", log.display(), corosync_log.display()),
        });
    }
    if opts.fenced {
        start_fenced(&opts.conf, opts.wait)?;
    }
    Ok(c)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
}

fn stop_pidfile(name: &str, wait: Duration) -> Result<bool, CmanError> {
    let pidfile = Path::new(RUN_DIR).join(format!("{name}.pid"));
    let Ok(text) = std::fs::read_to_string(&pidfile) else { return Ok(false) };
    let Ok(pid) = text.trim().parse::<u32>() else { return Ok(false) };
    // A stale pid file may name an unrelated process that reused the pid.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if pid_alive(pid) && comm.trim() == name {
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).stderr(Stdio::null()).status();
        if !wait_until(wait, || !pid_alive(pid)) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).stderr(Stdio::null()).status();
        }
    }
    let _ = std::fs::remove_file(&pidfile);
    Ok(true)
}

/// Where fenced writes its pid (and holds its instance lock).
pub const FENCED_PID: &str = "/run/cluster/fenced.pid";

/// Starts fenced (corosync must be running) and waits until it is ready. fenced puts itself
/// in the background ([`::daemon::background`]): the command started here returns once the
/// daemon printed its ready line (exit 0), or with the daemon's error (exit 1), which is
/// passed on.
pub fn start_fenced(conf: &Path, wait: Duration) -> Result<(), CmanError> {
    if crate::api::Client::connect_default().and_then(|mut c| c.status()).is_ok() {
        return Err(CmanError::FencedRunning);
    }
    if !corosync::is_running() {
        return Err(CmanError::Corosync(corosync::CorosyncError::NotRunning {
            call: "votequorum_initialize",
            error: "not running".into(),
        }));
    }
    std::fs::create_dir_all(RUN_DIR).map_err(io(Path::new(RUN_DIR)))?;
    std::fs::create_dir_all(LOG_DIR).map_err(io(Path::new(LOG_DIR)))?;
    let log = Path::new(LOG_DIR).join("fenced.log");
    let fenced = sibling("fenced");
    let mut child = Command::new(&fenced)
        .arg("-c")
        .arg(conf)
        .arg("--log-file")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| CmanError::Spawn { program: fenced.display().to_string(), error })?;
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let deadline = Instant::now() + wait;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                // Only the waiting parent is killed: a daemon still starting goes on.
                let _ = child.kill();
                let _ = child.wait();
                return Err(CmanError::NotReady {
                    what: "fenced",
                    secs: wait.as_secs(),
                    log: log.display().to_string(),
                });
            }
        }
    };
    let err = reader.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let message = err.trim().lines().map(|l| l.strip_prefix("fenced: ").unwrap_or(l)).collect::<Vec<_>>().join("; ");
    if message.is_empty() {
        return Err(CmanError::NotReady { what: "fenced", secs: wait.as_secs(), log: log.display().to_string() });
    }
    Err(CmanError::FencedFailed { message, log: log.display().to_string() })
}

/// Stops fenced cleanly: it leaves the fence group (so no one fences this node) and exits.
pub fn stop_fenced(wait: Duration) -> Result<(), CmanError> {
    if let Ok(mut c) = crate::api::Client::connect_default() {
        let _ = c.set_timeout(Some(wait));
        if c.shutdown().is_ok() {
            let pidfile = Path::new(FENCED_PID);
            if let Some(pid) = std::fs::read_to_string(pidfile).ok().and_then(|t| t.trim().parse::<u32>().ok()) {
                wait_until(wait, || !pid_alive(pid));
            }
        }
    }
    stop_pidfile("fenced", wait)?;
    Ok(())
}

/// `cman_tool leave`: stops fenced, then corosync (the others see a clean leave).
pub fn leave(wait: Duration) -> Result<(), CmanError> {
    // fenced leaves the fence group itself when asked: a fenced that just died would be
    // fenced by the others.
    stop_fenced(wait)?;
    if !stop_pidfile("corosync", wait)? && corosync::is_running() {
        // Started by someone else: ask through the init system's usual signal path.
        let _ = Command::new("corosync-cfgtool").arg("-H").stderr(Stdio::null()).status();
    }
    Ok(())
}

/// `cman_tool status`.
pub fn status(path: &Path) -> Result<String, CmanError> {
    let c = load(path)?;
    let s = corosync::status(&c)?;
    Ok(corosync::render_status(&c, &s))
}

/// `cman_tool nodes`: one line per configured node.
pub fn nodes(path: &Path) -> Result<String, CmanError> {
    let c = load(path)?;
    let s = corosync::status(&c)?;
    let mut out = format!("{:<6} {:<3} {:<5} {}\n", "Node", "Sts", "Votes", "Name");
    for n in &s.nodes {
        out.push_str(&format!("{:<6} {:<3} {:<5} {}\n", n.nodeid, if n.member { "M" } else { "X" }, n.votes, n.name));
    }
    Ok(out)
}

/// `cman_tool version -r`: sends the edited cluster.conf to every member through fenced.
/// Returns the version in force afterwards; an older or equal version is refused.
pub fn propagate(path: &Path) -> Result<u64, PropagateError> {
    let text =
        std::fs::read_to_string(path).map_err(|error| CmanError::Io { path: path.display().to_string(), error })?;
    conf::parse(&text).map_err(|errors| CmanError::Conf { path: path.display().to_string(), errors })?;
    let mut client = crate::api::Client::connect_default()?;
    client.set_timeout(Some(Duration::from_secs(60)))?;
    Ok(client.config_update(text)?)
}

/// Why `cman_tool version -r` failed.
#[derive(Debug, thiserror::Error)]
pub enum PropagateError {
    /// Reading or validating the file.
    #[error("{0}")]
    Cman(#[from] CmanError),
    /// fenced refused or could not be reached.
    #[error("{0}")]
    Api(#[from] crate::api::ApiError),
}
