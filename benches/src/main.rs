//! `nbd-bench`: side-by-side benchmark of `gnbd_serv` against nbd-server, qemu-nbd and
//! nbdkit.
//!
//! # What is measured
//!
//! Every server exports the same backing file (default 1 GiB, on a real disk, fully written
//! with incompressible data so that reads are never sparse) on 127.0.0.1, in two modes:
//!
//! - **direct**: gnbd's uncached default (O_DIRECT) against `qemu-nbd --cache=none` and
//!   `nbdkit file cache=none`; nbd-server has no direct-I/O option and runs with its default
//!   (the table says so);
//! - **cached**: `gnbd_export -c` against `qemu-nbd --cache=writeback` and the other peers'
//!   defaults.
//!
//! Each server is then driven, alone, by the same clients:
//!
//! - `nbdcopy` of the whole export, write (local file -> nbd://) and read (nbd:// -> null:),
//!   in MB/s; after the write, sampled regions of the backing file are compared with the
//!   source (they are overwritten with a filler beforehand), so a server that drops writes
//!   fails instead of looking fast;
//! - `fio --ioengine=nbd`: 4 KiB random read and write at queue depth 32 (IOPS), 1 MiB
//!   sequential read and write at depth 16 (MB/s), 4 KiB random read at depth 1 (mean
//!   latency in µs);
//! - `iperf3` over loopback, once per run, as the ceiling for sequential reads.
//!
//! Before every phase (server start and each test) the page cache is put in the state the
//! mode is about: in direct mode it is dropped (`sync; echo 1 > /proc/sys/vm/drop_caches`,
//! when permitted), so peers that read through it start cold; in cached mode dirty pages are
//! written back (`sync`) and the whole backing file is read once, so each test starts with
//! the export in the page cache.
//!
//! The result is a table, one row per (mode, test), with the best peer and the ratio gnbd /
//! best peer (inverted for latency, so above 1 always means gnbd is better), and optionally
//! a JSON file. In direct mode a second ratio compares gnbd with the best peer that was seen
//! (in /proc/PID/fdinfo) with the backing file open with O_DIRECT, as only such a peer does
//! the same thing as gnbd's O_DIRECT export; nbd-server and nbdkit `cache=none` serve from
//! the page cache.
//!
//! # How
//!
//! One server runs at a time. Every child process sits in a guard that sends SIGTERM, then
//! SIGKILL, and reaps it on every exit path (errors, panics, SIGINT/SIGTERM, which are turned
//! into an orderly unwind); children also get `PR_SET_PDEATHSIG`. Every wait has a deadline.
//! Peers listen on free ports of 127.0.0.1; gnbd_serv picks its own (`-p 0`) and reports it
//! on its readiness line.
//!
//! Modules: [`servers`] starts and stops servers, [`clients`] runs nbdcopy, fio and iperf3,
//! [`data`] makes the files, [`report`] prints the table and JSON, [`proc`] holds the
//! process guards and [`sys`] the few raw syscalls.
//!
//! # Results
//!
//! 2026-11-22, workspace at 0ef7709, on a 2-vCPU VM (kernel 6.18, ext4 on a virtio disk that
//! the host caches), produced by `cargo build --release --workspace --bins &&
//! target/release/nbd-bench` (1 GiB, 10 s per fio job, about 9 minutes; the load average
//! reached 2.4 during the cached phases, as other builds shared the machine). Every server
//! advertised multi-conn, so nbdcopy used several connections with each. Run-to-run variation
//! on this VM is large (10-30% on a row is common): compare rows within one run only.
//!
//! ```text
//! mode    test                   unit        gnbd nbd-server   qemu-nbd     nbdkit  best peer              ratio vs any peer  ratio vs O_DIRECT peers
//! ---------------------------------------------------------------------------------------------------------------------------------------------------
//! direct  nbdcopy write          MB/s        1594        402        714       1638  1638 (nbdkit)                       0.97  2.23 (qemu-nbd)
//! direct  nbdcopy read           MB/s        1465       1183        907       1545  1545 (nbdkit)                       0.95  1.62 (qemu-nbd)
//! direct  fio randread 4k qd32   IOPS       47709      24831      32117      32052  32117 (qemu-nbd)                    1.49  1.49 (qemu-nbd)
//! direct  fio randwrite 4k qd32  IOPS       23339      71729      22123      23561  71729 (nbd-server)                  0.33  1.06 (qemu-nbd)
//! direct  fio seqread 1M qd16    MB/s        1779       2694       1264       3703  3703 (nbdkit)                       0.48  1.41 (qemu-nbd)
//! direct  fio seqwrite 1M qd16   MB/s        3764       3794       2708       2927  3794 (nbd-server)                   0.99  1.39 (qemu-nbd)
//! direct  fio randread 4k qd1    us           120        174        186        141  141 (nbdkit)                        1.18  1.56 (qemu-nbd)
//! cached  nbdcopy write          MB/s        2399       2173        901       2019  2173 (nbd-server)                   1.10  -
//! cached  nbdcopy read           MB/s        2888       2352       2005       2843  2843 (nbdkit)                       1.02  -
//! cached  fio randread 4k qd32   IOPS      104382      46442      65058      99821  99821 (nbdkit)                      1.05  -
//! cached  fio randwrite 4k qd32  IOPS       32235      23555      29489      24007  29489 (qemu-nbd)                    1.09  -
//! cached  fio seqread 1M qd16    MB/s        2825       2431       2680       3645  3645 (nbdkit)                       0.77  -
//! cached  fio seqwrite 1M qd16   MB/s        4205       2877       3036       4436  4436 (nbdkit)                       0.95  -
//! cached  fio randread 4k qd1    us          89.5       88.6       77.5       62.4  62.4 (nbdkit)                       0.70  -
//!
//! sequential read (fio 1M qd16) as a share of the loopback TCP ceiling (iperf3, 2881 MB/s): direct: gnbd 62% (best peer nbdkit 129%); cached: gnbd 98% (best peer nbdkit 127%)
//! ```

mod clients;
mod data;
mod fiojson;
mod net;
mod proc;
mod report;
mod servers;
mod sys;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

use crate::clients::{Clients, Test};
use crate::proc::Ended;
use crate::report::{Cell, Results};
use crate::servers::{Env, Mode, ServerKind};

const ABOUT: &str = "Benchmark gnbd_serv side by side with nbd-server, qemu-nbd and nbdkit";

const HELP_TEMPLATE: &str = "\
NAME
    {name} - {about}

SYNOPSIS
    {usage}

{before-help}OPTIONS
{options}{after-help}";

const DESCRIPTION: &str = "\
DESCRIPTION
    Starts each NBD server in turn on 127.0.0.1 over the same backing file and drives it
    with the same clients, one server at a time:

      nbdcopy   whole-export write (local file -> nbd://) and read (nbd:// -> null:), MB/s
      fio       nbd engine: 4k randread and randwrite at iodepth 32 (IOPS), 1M sequential
                read and write at iodepth 16 (MB/s), 4k randread at iodepth 1 (mean
                latency, us)
      iperf3    loopback TCP throughput, measured once, as the ceiling

    Two modes: 'direct' compares gnbd's uncached default (O_DIRECT) with qemu-nbd
    --cache=none and nbdkit cache=none (nbd-server has no such option and runs with its
    default); 'cached' compares gnbd_export -c with qemu-nbd --cache=writeback and the other
    peers' defaults.

    Prints a table with one row per (mode, test): the value for each server, the best peer
    and the ratio gnbd / best peer (best peer / gnbd for latency), so a ratio above 1 always
    means gnbd is better. In direct mode a second ratio compares gnbd with the best peer seen
    (in /proc/PID/fdinfo) with the backing file open with O_DIRECT, the only like-for-like
    peers; in cached mode that column shows '-'.

    The backing file is fully written with incompressible data first. Before every phase
    (server start and each test) the page cache is dropped in direct mode, when the kernel
    allows it, and warmed in cached mode: dirty pages are written back (sync) and the whole
    backing file is read once.

    gnbd_serv and gnbd_export are taken from the directory of this executable (target/release
    when run from a release build) unless --bin-dir is given; the peers and clients from PATH.
    A full run with the defaults takes about 10 minutes.

";

const AFTER_LONG_HELP: &str = "\
EXAMPLES
    Full run (about 10 minutes), from the workspace root:
        cargo build --release --workspace --bins && target/release/nbd-bench

    Prove the harness works (32 MiB, 1 s jobs; what CI runs):
        cargo run -p gnbd-benches --bin nbd-bench -- --smoke

    Only direct I/O, gnbd against qemu-nbd, 20 s per fio job, results kept as JSON:
        nbd-bench --modes direct --servers gnbd,qemu-nbd --runtime 20 --json bench.json

FILES
    DIR/nbd-bench.PID/        scratch directory (backing file, source file, server state,
                              configs, logs); removed at exit, except the logs, configs and
                              state when a measurement failed
    /proc/sys/vm/drop_caches  written (as root) to start each direct-mode phase with a cold
                              page cache

EXIT STATUS
    0    every measurement succeeded
    1    a measurement or the setup failed (the table still shows what was measured)
    2    bad command line
    130  interrupted (SIGINT, SIGTERM or SIGHUP); every child process was stopped";

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "nbd-bench", version, about = ABOUT, help_template = HELP_TEMPLATE)]
#[command(before_long_help = DESCRIPTION, after_long_help = AFTER_LONG_HELP)]
struct Cli {
    /// Size of the backing file and of each nbdcopy (K, M, G suffixes, powers of 1024;
    /// a multiple of 1 MiB). Default 1G, or 32M with --smoke.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,

    /// Seconds per fio job, after a 1 s ramp. Default 10, or 1 (and no ramp) with --smoke.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=3600))]
    runtime: Option<u32>,

    /// Modes to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "direct,cached")]
    modes: Vec<Mode>,

    /// Servers to run, comma-separated (the table keeps the canonical order).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "gnbd,nbd-server,qemu-nbd,nbdkit")]
    servers: Vec<ServerKind>,

    /// Directory for the backing and source files (needs 2 x SIZE free; must be a real disk,
    /// not tmpfs, because of O_DIRECT).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    dir: PathBuf,

    /// Directory holding gnbd_serv and gnbd_export [default: this executable's directory].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,

    /// Also write the results as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,

    /// Tiny run that only proves the harness works (32 MiB, 1 s jobs, 1 s iperf3); servers
    /// whose binary is missing are skipped with a note instead of failing the run.
    #[arg(long)]
    smoke: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?} (try 1G or 512M)"))?;
    let bytes = n.checked_mul(mult).ok_or_else(|| format!("size too large: {s}"))?;
    if bytes < 4 << 20 || bytes % (1 << 20) != 0 {
        return Err(format!("size must be a multiple of 1 MiB and at least 4M, got {s}"));
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = run(&cli);
    // Every guard has been dropped: reap anything a server left orphaned to us.
    proc::reap_strays();
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("nbd-bench: error: {e:#}");
            if sys::stop_signal().is_some() {
                ExitCode::from(130)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Find a required program on PATH.
fn need(prog: &str) -> Result<PathBuf> {
    proc::which(prog)
        .with_context(|| format!("{prog} is not installed (on PATH); run scripts/deps.sh to install the bench tools"))
}

/// The client command lines, with the server's URI as a placeholder (for the JSON file).
fn client_commands(clients: &Clients, source: &Path) -> serde_json::Value {
    let uri = format!("nbd://127.0.0.1:PORT/{}", servers::EXPORT);
    let mut m = serde_json::Map::new();
    let copy = |args: [&std::ffi::OsStr; 2]| {
        let mut c = std::process::Command::new(&clients.nbdcopy);
        c.args(args);
        proc::cmdline(&c)
    };
    m.insert(Test::CopyWrite.key().into(), json!(copy([source.as_os_str(), uri.as_ref()])));
    m.insert(Test::CopyRead.key().into(), json!(copy([uri.as_ref(), "null:".as_ref()])));
    for t in Test::ALL {
        if let Some(c) = clients.fio_command(t, &uri) {
            m.insert(t.key().into(), json!(proc::cmdline(&c)));
        }
    }
    m.insert("iperf3-server".into(), json!("iperf3 -s -1 -p PORT -B 127.0.0.1"));
    m.insert("iperf3-client".into(), json!(format!("iperf3 -c 127.0.0.1 -p PORT -t {} -J", clients.iperf_s)));
    m.into()
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Run the whole benchmark; `Ok(true)` if every measurement succeeded.
fn run(cli: &Cli) -> Result<bool> {
    sys::install_stop_handlers().context("cannot install signal handlers")?;
    sys::become_subreaper().context("cannot become a child subreaper")?;

    let size = cli.size.unwrap_or(if cli.smoke { 32 << 20 } else { 1 << 30 });
    let runtime_s = cli.runtime.unwrap_or(if cli.smoke { 1 } else { 10 });
    let ramp_s = if cli.smoke { 0 } else { 1 };
    let iperf_s = if cli.smoke { 1 } else { 5 };
    let modes: Vec<Mode> = cli.modes.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
    let wanted: BTreeSet<ServerKind> = cli.servers.iter().copied().collect();

    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("cannot find this executable's path")?
            .parent()
            .context("this executable has no parent directory")?
            .to_owned(),
    };

    let mut res = Results { modes: modes.clone(), ..Default::default() };
    let missing_peer = |prog: &str| -> Result<Option<PathBuf>> {
        match proc::which(prog) {
            Some(p) => Ok(Some(p)),
            None if cli.smoke => Ok(None),
            None => bail!("{prog} is not installed (on PATH): a full run needs every server; run scripts/deps.sh"),
        }
    };
    let nbd_server = if wanted.contains(&ServerKind::NbdServer) { missing_peer("nbd-server")? } else { None };
    let qemu_nbd = if wanted.contains(&ServerKind::QemuNbd) { missing_peer("qemu-nbd")? } else { None };
    let nbdkit = if wanted.contains(&ServerKind::Nbdkit) { missing_peer("nbdkit")? } else { None };
    let gnbd_ok = ["gnbd_serv", "gnbd_export"].iter().all(|b| bin_dir.join(b).is_file());
    for kind in ServerKind::ALL.into_iter().filter(|k| wanted.contains(k)) {
        let present = match kind {
            ServerKind::Gnbd => gnbd_ok,
            ServerKind::NbdServer => nbd_server.is_some(),
            ServerKind::QemuNbd => qemu_nbd.is_some(),
            ServerKind::Nbdkit => nbdkit.is_some(),
        };
        if present {
            res.servers.push(kind);
        } else if cli.smoke {
            let where_ = if kind == ServerKind::Gnbd { bin_dir.display().to_string() } else { "PATH".into() };
            let note = format!("{} skipped: {} not found in {where_} (smoke mode)", kind.name(), kind.program());
            eprintln!("nbd-bench: {note}");
            res.notes.push(note);
        } else {
            bail!(
                "gnbd_serv or gnbd_export not found in {} (build them: cargo build --release \
                 --workspace --bins, or pass --bin-dir)",
                bin_dir.display()
            );
        }
    }
    if res.servers.is_empty() {
        bail!("no server to benchmark");
    }

    let clients = Clients {
        nbdcopy: need("nbdcopy")?,
        fio: need("fio")?,
        iperf3: if cli.smoke { proc::which("iperf3") } else { Some(need("iperf3")?) },
        size,
        runtime_s,
        ramp_s,
        iperf_s,
    };
    let nbdinfo = need("nbdinfo")?;

    let dir = cli.dir.canonicalize().with_context(|| format!("--dir {}: no such directory", cli.dir.display()))?;
    let fs = sys::fs_info(&dir).with_context(|| format!("statfs {}", dir.display()))?;
    if fs.is_tmpfs {
        bail!("--dir {} is on tmpfs; O_DIRECT needs a real disk: use /var/tmp or /work", dir.display());
    }
    let need_bytes = 2 * size + (64 << 20);
    if fs.avail_bytes < need_bytes {
        bail!("--dir {} has {} MiB free, {} MiB needed", dir.display(), fs.avail_bytes >> 20, need_bytes >> 20);
    }

    // Declared before any process guard, so it is removed after they have all stopped.
    let mut work = proc::TempDir::create(&dir)?;
    let backing = work.path.join("backing.img");
    let source = work.path.join("source.img");
    let env = Env {
        work: work.path.clone(),
        backing: backing.clone(),
        size,
        bin_dir: bin_dir.clone(),
        nbd_server: nbd_server.unwrap_or_default(),
        qemu_nbd: qemu_nbd.unwrap_or_default(),
        nbdkit: nbdkit.unwrap_or_default(),
        nbdinfo,
    };

    for &kind in &res.servers {
        let prog = match kind {
            ServerKind::Gnbd => bin_dir.join("gnbd_serv"),
            ServerKind::NbdServer => env.nbd_server.clone(),
            ServerKind::QemuNbd => env.qemu_nbd.clone(),
            ServerKind::Nbdkit => env.nbdkit.clone(),
        };
        if let Some(v) = proc::version_of(&prog, kind.version_args()) {
            res.versions.insert(kind.name().into(), v);
        }
    }
    for (name, prog) in [("nbdcopy", &clients.nbdcopy), ("fio", &clients.fio)] {
        if let Some(v) = proc::version_of(prog, &["--version"]) {
            res.versions.insert(name.into(), v);
        }
    }
    if let Some(v) = clients.iperf3.as_ref().and_then(|p| proc::version_of(p, &["--version"])) {
        res.versions.insert("iperf3".into(), v);
    }
    res.config = json!({
        "size_bytes": size,
        "fio_runtime_s": runtime_s,
        "fio_ramp_s": ramp_s,
        "iperf3_s": iperf_s,
        "modes": modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "servers": res.servers.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "dir": dir,
        "bin_dir": bin_dir,
        "smoke": cli.smoke,
        "client_commands": client_commands(&clients, &source),
    });

    eprintln!(
        "nbd-bench: {} MiB backing file in {}, fio {runtime_s} s per job, modes {}, servers {}",
        size >> 20,
        work.path.display(),
        modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(","),
        res.servers.iter().map(|s| s.name()).collect::<Vec<_>>().join(",")
    );
    eprintln!("nbd-bench: writing the backing and source files");
    data::create_random_file(&backing, size, 0x6e62_6462_656e_6368)?;
    data::create_random_file(&source, size, 0x736f_7572_6365_2121)?;
    res.cache_dropped = sys::drop_page_cache();
    if !res.cache_dropped {
        eprintln!("nbd-bench: cannot drop the page cache (not root?): direct-mode phases start with a warm cache");
    }

    res.load_before = load_average();
    match clients.iperf3(&work.path) {
        Ok(v) => {
            eprintln!("nbd-bench: loopback ceiling (iperf3): {v:.0} MB/s");
            res.ceiling = Some(v);
        }
        Err(e) => {
            proc::check_stop()?;
            let note = format!("no loopback ceiling: {e:#}");
            eprintln!("nbd-bench: {note}");
            res.notes.push(note);
        }
    }

    for &mode in &modes {
        for kind in res.servers.clone() {
            bench_server(kind, mode, &env, &clients, &source, &mut res)?;
        }
    }

    res.load_after = load_average();
    let failed = res.any_failed();
    if failed {
        work.keep = true;
        res.notes.push(format!("logs, configs and state kept in {}", work.path.display()));
    }
    print!("{}", res.table());
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&res.to_json()).expect("JSON values serialize");
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("nbd-bench: results written to {}", path.display());
    }
    Ok(!failed)
}

/// Start one server in one mode, run every test against it, stop it.
fn bench_server(
    kind: ServerKind,
    mode: Mode,
    env: &Env,
    clients: &Clients,
    source: &Path,
    res: &mut Results,
) -> Result<()> {
    let tag = format!("{}/{}", mode.name(), kind.name());
    data::scribble(&env.backing, env.size)?;
    prepare_cache(mode, &env.backing)?;
    eprintln!("nbd-bench: [{tag}] starting");
    let mut srv = match servers::start(kind, mode, env) {
        Ok(s) => s,
        Err(e) => {
            proc::check_stop()?;
            let msg = format!("{tag}: server did not start: {e:#}");
            eprintln!("nbd-bench: {msg}");
            res.notes.push(msg.clone());
            for test in Test::ALL {
                res.cells.insert((mode, test, kind), Cell::Failed(msg.clone()));
            }
            return Ok(());
        }
    };
    res.commands.insert((kind, mode), srv.commands.clone());
    res.multi_conn.insert((kind, mode), srv.multi_conn);
    eprintln!("nbd-bench: [{tag}] {} (multi-conn: {})", srv.commands.join(" && "), srv.multi_conn);

    // Watch how the server has the backing file open while the tests run (O_DIRECT or not).
    let pid = srv.pid();
    let done = AtomicBool::new(false);
    let seen = Mutex::new((false, false));
    let r = thread::scope(|sc| {
        sc.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let (d, b) = proc::open_modes(pid, &env.backing);
                if let Ok(mut s) = seen.lock() {
                    s.0 |= d;
                    s.1 |= b;
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        let r = run_tests(&tag, kind, mode, &mut srv, env, clients, source, res);
        done.store(true, Ordering::Relaxed);
        r
    });
    let seen = seen.into_inner().unwrap_or_default();
    res.open_modes.insert((kind, mode), seen);
    if kind == ServerKind::Gnbd {
        let wrong = match mode {
            Mode::Direct if !seen.0 => Some("never had the backing file open with O_DIRECT"),
            Mode::Cached if seen.0 => Some("had the backing file open with O_DIRECT"),
            _ => None,
        };
        if let Some(w) = wrong {
            res.notes.push(format!("{tag}: gnbd_serv {w} while the tests ran (from /proc/PID/fdinfo)"));
        }
    }
    let died = r?;
    match srv.stop() {
        Ended::Early(st) if !died => {
            res.notes.push(format!("{tag}: the server exited ({st}) before it was stopped"));
        }
        Ended::OnTerm(st) if st.code().is_some_and(|c| c != 0) => {
            res.notes.push(format!("{tag}: exited with {st} on SIGTERM"));
        }
        Ended::Killed => res.notes.push(format!("{tag}: ignored SIGTERM for 10 s and was killed")),
        _ => {}
    }
    let strays = proc::reap_strays();
    if strays > 0 {
        res.notes.push(format!("{tag}: left {strays} process(es) behind after stopping; killed"));
    }
    eprintln!("nbd-bench: [{tag}] stopped");
    Ok(())
}

/// Put the page cache in the state `mode` is about before a phase: dropped in direct mode
/// (when permitted), so peers that read through it start cold; in cached mode dirty pages
/// left by the previous phase written back and the whole backing file read once, so the
/// export starts in the cache.
fn prepare_cache(mode: Mode, backing: &Path) -> Result<()> {
    match mode {
        Mode::Direct => {
            sys::drop_page_cache();
        }
        Mode::Cached => {
            sys::sync();
            data::warm(backing)?;
        }
    }
    Ok(())
}

/// Run every test against a started server, recording values and failures; true if the
/// server died on the way.
#[allow(clippy::too_many_arguments)]
fn run_tests(
    tag: &str,
    kind: ServerKind,
    mode: Mode,
    srv: &mut servers::Running,
    env: &Env,
    clients: &Clients,
    source: &Path,
    res: &mut Results,
) -> Result<bool> {
    let mut died = None;
    for test in Test::ALL {
        proc::check_stop()?;
        if died.is_none() && !srv.alive() {
            let msg = format!(
                "{tag}: the server exited during the run (before {}, {}); log tail:\n{}",
                test.label(),
                srv.exit_status().map_or("status unknown".into(), |s| s.to_string()),
                proc::log_tail(&srv.log)
            );
            eprintln!("nbd-bench: {msg}");
            res.notes.push(msg);
            died = Some(test);
        }
        if let Some(t) = died {
            let why = format!("server exited before {}", t.label());
            res.cells.insert((mode, test, kind), Cell::Failed(why));
            continue;
        }
        prepare_cache(mode, &env.backing)?;
        if test == Test::CopyWrite {
            data::warm(source)?;
        }
        let r = clients.run(test, &srv.uri, source).and_then(|v| {
            if test == Test::CopyWrite {
                data::verify_copied(source, &env.backing, env.size)?;
            }
            Ok(v)
        });
        match r {
            Ok(v) => {
                eprintln!("nbd-bench: [{tag}] {}: {v:.1} {}", test.label(), test.unit());
                res.cells.insert((mode, test, kind), Cell::Value(v));
            }
            Err(e) => {
                proc::check_stop()?;
                let msg = format!("{tag}: {} failed: {e:#}", test.label());
                eprintln!("nbd-bench: {msg}");
                res.notes.push(msg.clone());
                res.cells.insert((mode, test, kind), Cell::Failed(msg));
            }
        }
    }
    Ok(died.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("32m"), Ok(32 << 20));
        assert_eq!(parse_size("8388608"), Ok(8 << 20));
        assert!(parse_size("1K").is_err()); // below 4 MiB
        assert!(parse_size("5000000").is_err()); // not a multiple of 1 MiB
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
