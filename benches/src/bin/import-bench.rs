//! `import-bench`: the import path side by side with libnbd's.
//!
//! One `gnbd_serv` serves one export; two clients import it in turn:
//!
//! - **device rows**: `gnbd_import` (FUSE file + loop device) against `nbdfuse` + `losetup`
//!   (both loop devices in direct-I/O mode), driven by the same fio job on the loop device;
//! - **library rows**: our client library (`gnbd_client::Client`, N tasks) against libnbd
//!   (fio's `nbd` engine), straight at the export.
//!
//! Rows: 4 KiB random read and write at depth 32, 1 MiB sequential read and write at depth 8.
//! Each cell is run `--rounds` times, alternating ours and the peer's, and the mean is
//! reported with the ratio ours / peer. Runs as root (losetup, FUSE).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[path = "../fiojson.rs"]
mod fiojson;

const AFTER_HELP: &str = "\
EXAMPLES
    Full run (about 6 minutes), then a quick smoke run:
        cargo build --release --workspace --bins
        target/release/import-bench
        target/release/import-bench --smoke

EXIT STATUS
    0   every cell measured
    1   a client or server failed (the message says which); nothing is left mounted";

/// Benchmark gnbd_import and the client library against nbdfuse and libnbd.
#[derive(Debug, Parser)]
#[command(name = "import-bench", after_long_help = AFTER_HELP)]
struct Cli {
    /// Export size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 8)]
    runtime: u32,
    /// Measurements per cell (alternating ours and the peer's).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Tiny sizes and 1-second runs: checks the machinery, not the speed.
    #[arg(long)]
    smoke: bool,
    /// Run only the rows whose name contains this text (e.g. `library`, `seqread`).
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Also print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Directory holding gnbd_serv, gnbd_export and gnbd_import (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
struct Job {
    key: &'static str,
    rw: &'static str,
    bs: u64,
    qd: usize,
}

const JOBS: [Job; 4] = [
    Job { key: "randread 4k qd32", rw: "randread", bs: 4096, qd: 32 },
    Job { key: "randwrite 4k qd32", rw: "randwrite", bs: 4096, qd: 32 },
    Job { key: "seqread 1M qd8", rw: "read", bs: 1 << 20, qd: 8 },
    Job { key: "seqwrite 1M qd8", rw: "write", bs: 1 << 20, qd: 8 },
];

impl Job {
    fn unit(&self) -> &'static str {
        if self.bs < 65536 {
            "IOPS"
        } else {
            "MB/s"
        }
    }
    fn value(&self, ops: u64, bytes: u64, secs: f64) -> f64 {
        if self.bs < 65536 {
            ops as f64 / secs
        } else {
            bytes as f64 / secs / 1e6
        }
    }
}

/// A child killed (and reaped) on drop.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Undoes an nbdfuse + loop setup on drop.
struct NbdFuse {
    _child: Guard,
    mnt: PathBuf,
    loop_dev: Option<String>,
}

impl Drop for NbdFuse {
    fn drop(&mut self) {
        if let Some(l) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
        for _ in 0..50 {
            let ok = Command::new("fusermount3").arg("-u").arg(&self.mnt).stderr(Stdio::null()).status();
            if ok.is_ok_and(|s| s.success()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Removes a gnbd_import on drop.
struct Import {
    bin: PathBuf,
    state: PathBuf,
    dev_dir: PathBuf,
}

impl Drop for Import {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--dev-dir")
            .arg(&self.dev_dir)
            .args(["-R", "-f"])
            .status();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("import-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn need(prog: &str) -> Result<()> {
    let ok = Command::new("sh").args(["-c", &format!("command -v {prog}")]).stdout(Stdio::null()).status()?;
    if !ok.success() {
        bail!("{prog} is not installed (scripts/deps.sh installs it)");
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<()> {
    for p in ["fio", "nbdfuse", "losetup", "fusermount3"] {
        need(p)?;
    }
    let (size, runtime, rounds) =
        if cli.smoke { (64u64 << 20, 1, 1) } else { (cli.size_mib << 20, cli.runtime, cli.rounds) };
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("program has no directory")?.to_path_buf(),
    };
    let work = tempdir()?;
    let result = bench(cli, &bin_dir, &work, size, runtime, rounds);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tempdir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("import-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn bench(cli: &Cli, bin: &Path, work: &Path, size: u64, runtime: u32, rounds: u32) -> Result<()> {
    // The export: a cached export of a fully written file (no holes), kept in the page
    // cache, so the disk does not set the pace and both clients see the same server.
    let disk = work.join("disk.img");
    {
        let mut f = std::fs::File::create(&disk)?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..size >> 20 {
            for b in chunk.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&chunk)?;
        }
    }
    let state = work.join("serv");
    let mut serv = Command::new(bin.join("gnbd_serv"));
    serv.arg("--state-dir").arg(&state).args(["-p", "0", "--bind", "127.0.0.1", "--foreground"]);
    serv.stdout(Stdio::piped()).stderr(std::fs::File::create(work.join("serv.log"))?);
    let mut child = serv.spawn().context("cannot start gnbd_serv")?;
    let stdout = child.stdout.take().expect("piped");
    let _serv = Guard(Some(child));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line
        .split("tcp=127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("gnbd_serv did not start: {line}"))?;
    let ok = Command::new(bin.join("gnbd_export"))
        .arg("--state-dir")
        .arg(&state)
        .args(["-e", "bench", "-c", "-d"])
        .arg(&disk)
        .stdout(Stdio::null())
        .status()?;
    if !ok.success() {
        bail!("gnbd_export failed");
    }
    let addr = format!("127.0.0.1:{port}");
    let uri = format!("nbd://{addr}/bench");
    eprintln!("import-bench: export of {} MiB at {uri}; {runtime} s per run, {rounds} round(s)", size >> 20);

    let mut rows: Vec<(String, &'static str, f64, f64)> = vec![];
    // Device rows: gnbd_import against nbdfuse, each on its own loop device.
    if JOBS.iter().any(|j| wanted(cli, &format!("device {}", j.key))) {
        let imp = Import { bin: bin.join("gnbd_import"), state: work.join("imp"), dev_dir: work.join("dev") };
        let out = Command::new(&imp.bin)
            .arg("--state-dir")
            .arg(&imp.state)
            .arg("--dev-dir")
            .arg(&imp.dev_dir)
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-n", "bench"])
            .output()?;
        if !out.status.success() {
            bail!("gnbd_import failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let ours = std::fs::read_link(imp.dev_dir.join("bench"))?.to_string_lossy().into_owned();
        let nf = nbdfuse(work, &uri)?;
        let theirs = nf.loop_dev.clone().expect("attached");
        for job in JOBS {
            if !wanted(cli, &format!("device {}", job.key)) {
                continue;
            }
            let (mut a, mut b) = (0.0, 0.0);
            for _ in 0..rounds {
                a += fio_device(&job, &ours, runtime)?;
                b += fio_device(&job, &theirs, runtime)?;
            }
            rows.push((format!("device {}", job.key), job.unit(), a / rounds as f64, b / rounds as f64));
            eprintln!("  {:<28} {:>10.0} vs {:>10.0}", rows.last().unwrap().0, a / rounds as f64, b / rounds as f64);
        }
    }
    // Library rows: gnbd_client against libnbd (fio's nbd engine).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let client = rt.block_on(gnbd_client::Client::connect(gnbd_client::ClientOptions::new(&addr, "bench")))?;
    let client = Arc::new(client);
    for job in JOBS {
        if !wanted(cli, &format!("library {}", job.key)) {
            continue;
        }
        let (mut a, mut b) = (0.0, 0.0);
        for _ in 0..rounds {
            a += rt.block_on(library(&job, client.clone(), size, runtime))?;
            b += fio_nbd(&job, &uri, runtime)?;
        }
        rows.push((format!("library {}", job.key), job.unit(), a / rounds as f64, b / rounds as f64));
        eprintln!("  {:<28} {:>10.0} vs {:>10.0}", rows.last().unwrap().0, a / rounds as f64, b / rounds as f64);
    }

    println!();
    println!("| {:<28} | {:>5} | {:>12} | {:>12} | {:>6} |", "test", "unit", "gnbd", "peer", "ratio");
    println!("|{:-<30}|{:-<7}|{:-<14}|{:-<14}|{:-<8}|", "", "", "", "", "");
    for (name, unit, a, b) in &rows {
        println!("| {name:<28} | {unit:>5} | {a:>12.0} | {b:>12.0} | {:>5.2}x |", a / b);
    }
    println!();
    println!("peers: device rows = nbdfuse + losetup --direct-io=on; library rows = fio --ioengine=nbd (libnbd)");
    if cli.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, u, a, b)| serde_json::json!({"test": n, "unit": u, "gnbd": a, "peer": b, "ratio": a / b}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

fn wanted(cli: &Cli, row: &str) -> bool {
    cli.only.as_deref().is_none_or(|o| row.contains(o))
}

fn nbdfuse(work: &Path, uri: &str) -> Result<NbdFuse> {
    let mnt = work.join("nbdfuse");
    std::fs::create_dir_all(&mnt)?;
    let child = Command::new("nbdfuse")
        .arg(&mnt)
        .arg(uri)
        .stderr(std::fs::File::create(work.join("nbdfuse.log"))?)
        .spawn()
        .context("cannot start nbdfuse")?;
    let mut nf = NbdFuse { _child: Guard(Some(child)), mnt: mnt.clone(), loop_dev: None };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mnt.join("nbd").exists() {
        if Instant::now() > deadline {
            bail!("nbdfuse did not expose {}/nbd", mnt.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("losetup").args(["-f", "--show", "--direct-io=on"]).arg(mnt.join("nbd")).output()?;
    if !out.status.success() {
        bail!("losetup on nbdfuse's file failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    nf.loop_dev = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
    Ok(nf)
}

fn fio_args(job: &Job, runtime: u32) -> Vec<String> {
    vec![
        format!("--name={}", job.rw),
        format!("--rw={}", job.rw),
        format!("--bs={}", job.bs),
        format!("--iodepth={}", job.qd),
        "--time_based".into(),
        format!("--runtime={runtime}"),
        "--output-format=json".into(),
    ]
}

fn fio_device(job: &Job, dev: &str, runtime: u32) -> Result<f64> {
    let mut cmd = Command::new("fio");
    cmd.args(fio_args(job, runtime)).args(["--ioengine=io_uring", "--direct=1", &format!("--filename={dev}")]);
    fio(job, &mut cmd)
}

fn fio_nbd(job: &Job, uri: &str, runtime: u32) -> Result<f64> {
    let mut cmd = Command::new("fio");
    cmd.args(fio_args(job, runtime)).args(["--ioengine=nbd", &format!("--uri={uri}")]);
    fio(job, &mut cmd)
}

fn fio(job: &Job, cmd: &mut Command) -> Result<f64> {
    let out = cmd.output().context("cannot run fio")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("fio failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    }
    let side = fiojson::first_job_side(&stdout, job.rw.contains("read")).with_context(|| format!("fio: {stdout}"))?;
    Ok(if job.bs < 65536 {
        side["iops"].as_f64().context("no iops")?
    } else {
        side["bw_bytes"].as_f64().context("no bw_bytes")? / 1e6
    })
}

/// `job.qd` tasks issuing requests back to back through one client for `runtime` seconds.
async fn library(job: &Job, client: Arc<gnbd_client::Client>, size: u64, runtime: u32) -> Result<f64> {
    let ops = Arc::new(AtomicU64::new(0));
    let cursor = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(runtime as u64);
    let blocks = size / job.bs;
    let mut tasks = vec![];
    for t in 0..job.qd {
        let (client, ops, cursor, job) = (client.clone(), ops.clone(), cursor.clone(), *job);
        tasks.push(tokio::spawn(async move {
            let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9);
            let data: Arc<[u8]> = vec![0x5Au8; job.bs as usize].into();
            while Instant::now() < deadline {
                let block = if job.rw.starts_with("rand") {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % blocks
                } else {
                    cursor.fetch_add(1, Ordering::Relaxed) % blocks
                };
                let off = block * job.bs;
                if job.rw.contains("read") {
                    let data = client.read(off, job.bs as usize).await?;
                    client.recycle(data);
                } else {
                    client.write_shared(off, data.clone(), false).await?;
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), gnbd_client::ClientError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = ops.load(Ordering::Relaxed);
    Ok(job.value(n, n * job.bs, secs))
}
