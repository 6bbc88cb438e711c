//! Starting and stopping the four servers under test, all on 127.0.0.1, one at a time.
//!
//! | server     | direct mode                          | cached mode                  |
//! |------------|--------------------------------------|------------------------------|
//! | gnbd       | `gnbd_export` default (O_DIRECT)     | `gnbd_export -c`             |
//! | nbd-server | no direct-I/O option: default        | default                      |
//! | qemu-nbd   | `--cache=none` (O_DIRECT)            | `--cache=writeback`          |
//! | nbdkit     | file plugin `cache=none` (evicts)    | file plugin default          |

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crate::proc::{self, ChildGuard, DaemonGuard, Ended};

/// The export name used with every server.
pub const EXPORT: &str = "bench";

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum ServerKind {
    /// Our gnbd_serv (admin via gnbd_export).
    Gnbd,
    /// nbd-server (the reference NBD server).
    NbdServer,
    /// qemu-nbd with io_uring AIO.
    QemuNbd,
    /// nbdkit with the file plugin.
    Nbdkit,
}

impl ServerKind {
    pub const ALL: [ServerKind; 4] = [Self::Gnbd, Self::NbdServer, Self::QemuNbd, Self::Nbdkit];

    pub fn name(self) -> &'static str {
        match self {
            Self::Gnbd => "gnbd",
            Self::NbdServer => "nbd-server",
            Self::QemuNbd => "qemu-nbd",
            Self::Nbdkit => "nbdkit",
        }
    }

    /// The executable to look for (ours in the bin dir, peers on PATH).
    pub fn program(self) -> &'static str {
        match self {
            Self::Gnbd => "gnbd_serv",
            Self::NbdServer => "nbd-server",
            Self::QemuNbd => "qemu-nbd",
            Self::Nbdkit => "nbdkit",
        }
    }

    /// Arguments that make the program print its version.
    pub fn version_args(self) -> &'static [&'static str] {
        match self {
            Self::NbdServer => &["-V"],
            _ => &["--version"],
        }
    }
}

/// Direct I/O (bypassing the page cache) or cached I/O on the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Mode {
    /// gnbd's uncached default (O_DIRECT) against the peers' direct-I/O settings.
    Direct,
    /// gnbd's `-c` against the peers' page-cache settings.
    Cached,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Cached => "cached",
        }
    }
}

/// Where things are, shared by every server start.
#[derive(Debug)]
pub struct Env {
    /// Scratch directory for configs, state dirs, pid files and logs.
    pub work: PathBuf,
    /// The file every server exports.
    pub backing: PathBuf,
    pub size: u64,
    /// Directory holding gnbd_serv and gnbd_export.
    pub bin_dir: PathBuf,
    /// Resolved peer executables.
    pub nbd_server: PathBuf,
    pub qemu_nbd: PathBuf,
    pub nbdkit: PathBuf,
    pub nbdinfo: PathBuf,
}

#[derive(Debug)]
enum Guard {
    Child(ChildGuard),
    Daemon(DaemonGuard),
}

/// A started server, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Running {
    pub uri: String,
    /// The command lines used to start and configure it.
    pub commands: Vec<String>,
    /// Whether it advertises NBD_FLAG_CAN_MULTI_CONN (nbdcopy then opens several
    /// connections).
    pub multi_conn: bool,
    pub log: PathBuf,
    guard: Guard,
}

impl Running {
    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        match &mut self.guard {
            Guard::Child(c) => matches!(c.try_wait(), Ok(None)),
            Guard::Daemon(d) => d.alive(),
        }
    }

    /// How the server exited, if it died by itself.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        match &mut self.guard {
            Guard::Child(c) => c.try_wait().ok().flatten(),
            Guard::Daemon(d) => d.exited(),
        }
    }

    /// The server's (main) pid.
    pub fn pid(&self) -> i32 {
        match &self.guard {
            Guard::Child(c) => c.pid(),
            Guard::Daemon(d) => d.pid(),
        }
    }

    /// Stop it; how it ended tells whether SIGTERM was honoured.
    pub fn stop(&mut self) -> Ended {
        let grace = Duration::from_secs(10);
        match &mut self.guard {
            Guard::Child(c) => c.stop(grace),
            Guard::Daemon(d) => d.stop(grace),
        }
    }
}

/// Start `kind` in `mode` over the backing file and check that it serves the export.
pub fn start(kind: ServerKind, mode: Mode, env: &Env) -> Result<Running> {
    let log = env.work.join(format!("{}-{}.log", kind.name(), mode.name()));
    let mut last_err = None;
    // A peer gets a port from free_port(); another process could grab it before the peer
    // binds, so retry with a new port if the peer dies early.
    for _ in 0..3 {
        let r = match kind {
            ServerKind::Gnbd => start_gnbd(mode, env, &log),
            ServerKind::NbdServer => start_nbd_server(env, &log),
            ServerKind::QemuNbd => start_qemu_nbd(mode, env, &log),
            ServerKind::Nbdkit => start_nbdkit(mode, env, &log),
        };
        match r {
            Ok(mut run) => {
                run.multi_conn = probe(env, &run.uri)?;
                return Ok(run);
            }
            Err(e) => {
                proc::check_stop()?;
                if kind == ServerKind::Gnbd {
                    return Err(e);
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.expect("loop ran"))
}

fn uri(port: u16) -> String {
    format!("nbd://127.0.0.1:{port}/{EXPORT}")
}

fn start_gnbd(mode: Mode, env: &Env, log: &Path) -> Result<Running> {
    let state = env.work.join(format!("gnbd-state-{}", mode.name()));
    if state.exists() {
        fs::remove_dir_all(&state).with_context(|| format!("cannot clear {}", state.display()))?;
    }
    fs::create_dir_all(&state)?;
    let mut cmd = Command::new(env.bin_dir.join("gnbd_serv"));
    cmd.arg("--state-dir").arg(&state);
    cmd.args(["-p", "0", "--bind", "127.0.0.1", "--foreground"]);
    let mut commands = vec![proc::cmdline(&cmd)];
    // stdout carries only the ready line; stderr is the server's log.
    let out = log.with_extension("stdout");
    let mut child = proc::spawn_split("gnbd_serv", &mut cmd, &out, log)?;
    let mut alive = || Ok(child.try_wait()?.is_none());
    let line = proc::wait_log_line("gnbd_serv", &out, "gnbd_serv: ready tcp=", START_TIMEOUT, &mut alive)
        .with_context(|| format!("gnbd_serv log:\n{}", proc::log_tail(log)))?;
    let addr = line["gnbd_serv: ready tcp=".len()..].split_whitespace().next().unwrap_or_default();
    let addr: SocketAddr =
        addr.parse().with_context(|| format!("gnbd_serv printed an unparsable ready line: {line:?}"))?;
    if addr.ip().to_string() != "127.0.0.1" || addr.port() == 0 {
        bail!("gnbd_serv is ready on {addr}, expected 127.0.0.1 and a non-zero port: {line:?}");
    }
    let mut exp = Command::new(env.bin_dir.join("gnbd_export"));
    exp.arg("--state-dir").arg(&state).args(["-e", EXPORT, "-d"]).arg(&env.backing);
    if mode == Mode::Cached {
        exp.arg("-c");
    }
    commands.push(proc::cmdline(&exp));
    proc::run_ok("gnbd_export", &mut exp, Duration::from_secs(30))?;
    Ok(Running { uri: uri(addr.port()), commands, multi_conn: false, log: log.to_owned(), guard: Guard::Child(child) })
}

fn start_nbd_server(env: &Env, log: &Path) -> Result<Running> {
    let port = proc::free_port()?;
    let conf = env.work.join("nbd-server.conf");
    let pidfile = env.work.join("nbd-server.pid");
    let _ = fs::remove_file(&pidfile);
    proc::write_file(
        &conf,
        &format!(
            "[generic]\nlistenaddr = 127.0.0.1\nport = {port}\nallowlist = true\n\n\
             [{EXPORT}]\nexportname = {}\n",
            env.backing.display()
        ),
    )?;
    // Not `-d`: nbd-server's "do not fork" mode serves a single connection and exits, which
    // fits neither fio job after nbdcopy nor nbdcopy's multi-conn. It daemonizes instead;
    // the bench is a subreaper, so the daemon stays our child to stop and reap.
    let mut cmd = Command::new(&env.nbd_server);
    cmd.arg("-C").arg(&conf).arg("-p").arg(&pidfile);
    let commands = vec![proc::cmdline(&cmd)];
    let mut launcher = proc::spawn_logged("nbd-server", &mut cmd, log)?;
    match launcher.wait_for(START_TIMEOUT)? {
        Some(st) if st.success() => {}
        Some(st) => bail!("nbd-server failed to start ({st}); log:\n{}", proc::log_tail(log)),
        None => bail!("nbd-server did not daemonize within {} s", START_TIMEOUT.as_secs()),
    }
    let mut daemon = DaemonGuard::from_pidfile("nbd-server", &pidfile, START_TIMEOUT)?;
    proc::wait_listening("nbd-server", port, START_TIMEOUT, || Ok(daemon.alive()))?;
    Ok(Running { uri: uri(port), commands, multi_conn: false, log: log.to_owned(), guard: Guard::Daemon(daemon) })
}

fn start_qemu_nbd(mode: Mode, env: &Env, log: &Path) -> Result<Running> {
    let port = proc::free_port()?;
    let mut cmd = Command::new(&env.qemu_nbd);
    cmd.args(["--aio=io_uring", "--persistent", "--shared=16", "-x", EXPORT, "-f", "raw"]);
    cmd.args(["-b", "127.0.0.1", "-p", &port.to_string()]);
    cmd.arg(match mode {
        Mode::Direct => "--cache=none",
        Mode::Cached => "--cache=writeback",
    });
    cmd.arg(&env.backing);
    foreground_peer(ServerKind::QemuNbd, cmd, port, log)
}

fn start_nbdkit(mode: Mode, env: &Env, log: &Path) -> Result<Running> {
    let port = proc::free_port()?;
    let mut cmd = Command::new(&env.nbdkit);
    cmd.args(["--foreground", "--exit-with-parent", "-i", "127.0.0.1", "-p", &port.to_string()]);
    cmd.args(["--exportname", EXPORT, "file"]);
    cmd.arg(format!("file={}", env.backing.display()));
    if mode == Mode::Direct {
        cmd.arg("cache=none");
    }
    foreground_peer(ServerKind::Nbdkit, cmd, port, log)
}

fn foreground_peer(kind: ServerKind, mut cmd: Command, port: u16, log: &Path) -> Result<Running> {
    let commands = vec![proc::cmdline(&cmd)];
    let mut child = proc::spawn_logged(kind.name(), &mut cmd, log)?;
    proc::wait_listening(kind.name(), port, START_TIMEOUT, || Ok(child.try_wait()?.is_none()))
        .with_context(|| format!("log:\n{}", proc::log_tail(log)))?;
    Ok(Running { uri: uri(port), commands, multi_conn: false, log: log.to_owned(), guard: Guard::Child(child) })
}

/// Check with nbdinfo that the export is served with the right size; returns whether the
/// server advertises multi-conn. (`nbdinfo --size`, not `nbdinfo --json`: the latter's
/// NBD_OPT_INFO path reports size 0 for nbd-server 3.24 exports.)
fn probe(env: &Env, uri: &str) -> Result<bool> {
    let mut last = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            proc::sleep_checked(Duration::from_millis(300))?;
        }
        let mut cmd = Command::new(&env.nbdinfo);
        cmd.arg("--size").arg(uri);
        let size = match proc::run_ok("nbdinfo", &mut cmd, Duration::from_secs(20)) {
            Ok(o) => o.stdout.trim().parse::<u64>().unwrap_or(0),
            Err(e) => {
                last = format!("{e:#}");
                continue;
            }
        };
        if size != env.size {
            last = format!("{uri} has size {size}, expected {}", env.size);
            continue;
        }
        // Exit status 0: it can; 2: it cannot.
        let mut cmd = Command::new(&env.nbdinfo);
        cmd.args(["--can", "multi-conn"]).arg(uri);
        let out = proc::run_bounded("nbdinfo", &mut cmd, Duration::from_secs(20))?;
        return match out.status.code() {
            Some(0) => Ok(true),
            Some(2) => Ok(false),
            _ => bail!("nbdinfo --can multi-conn {uri} failed ({}): {}", out.status, out.tail()),
        };
    }
    bail!("the export is not usable: {last}")
}
