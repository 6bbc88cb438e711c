//! `gfs-bench`: gfs (lock_nolock, FUSE) against ext4 on the same loop device, same run.
//!
//! One backing file becomes one loop device (direct I/O). Each filesystem in turn is made on
//! it, mounted, and driven by the same workloads:
//!
//! - fio, O_DIRECT, psync: sequential 1 MiB write then read, 4 KiB random write then read;
//! - metadata, from this program: creates, stats, a full directory listing and unlinks of
//!   `--files` empty files in one directory (operations per second).
//!
//! The table gives both figures and the ratio gfs / ext4. Then two lock_dlm nodes (two
//! `dlm_controld` on 127.0.0.1 and 127.0.0.2, two mounts of the device) create files in one
//! shared directory at the same time, against one node alone. Runs as root, inside its own
//! private mount namespace (it re-executes itself under `unshare -m`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[path = "../fiojson.rs"]
mod fiojson;

const AFTER_HELP: &str = "\
EXAMPLES
    # mkfs_gfs, mount_gfs and dlm_controld are found beside gfs-bench (or in --bin-dir)
    CARGO_TARGET_DIR=/work/perf-target cargo build --release -p gfs -p dlm --bins -p gnbd-benches
    /work/perf-target/release/gfs-bench
    target/debug/gfs-bench --smoke

EXIT STATUS
    0   every cell measured
    1   a step failed (the message says which); nothing is left mounted or attached";

/// Benchmark gfs against ext4 on the same device.
#[derive(Debug, Parser)]
#[command(name = "gfs-bench", after_long_help = AFTER_HELP)]
struct Cli {
    /// Device (backing file) size in MiB.
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Size of the sequential file in MiB.
    #[arg(long, default_value_t = 512)]
    seq_mib: u64,
    /// Seconds per random I/O measurement.
    #[arg(long, default_value_t = 5)]
    runtime: u32,
    /// Files for the metadata rows.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Tiny sizes: checks the machinery, not the speed.
    #[arg(long)]
    smoke: bool,
    /// Directory for the backing file (default: a new directory under /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Directory holding mkfs_gfs, mount_gfs and dlm_controld (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

const ROWS: [(&str, &str); 8] = [
    ("seqwrite", "sequential write 1 MiB (MiB/s)"),
    ("seqread", "sequential read 1 MiB (MiB/s)"),
    ("randwrite", "random write 4 KiB (IOPS)"),
    ("randread", "random read 4 KiB (IOPS)"),
    ("create", "creates (ops/s)"),
    ("stat", "stats (ops/s)"),
    ("readdir", "listing N entries (entries/s)"),
    ("unlink", "unlinks (ops/s)"),
];

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn fio(file: &Path, rw: &str, bs: &str, size_mib: u64, runtime: Option<u32>) -> Result<f64> {
    let mut c = Command::new("fio");
    c.args(["--name=bench", "--ioengine=psync", "--direct=1", "--output-format=json"])
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--size={size_mib}M"));
    if let Some(r) = runtime {
        c.args(["--time_based", &format!("--runtime={r}")]);
    }
    if rw.contains("write") {
        c.arg("--end_fsync=1");
    }
    let out = run(&mut c, &format!("fio {rw}"))?;
    let side = fiojson::first_job_side(&out, rw.contains("read"))?;
    Ok(if bs == "1M" {
        side["bw_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
    } else {
        side["iops"].as_f64().unwrap_or(0.0)
    })
}

fn rate(n: usize, t: Duration) -> f64 {
    n as f64 / t.as_secs_f64().max(1e-9)
}

/// All rows on the filesystem mounted at `mnt`.
fn workloads(mnt: &Path, cli: &Cli) -> Result<Vec<f64>> {
    let file = mnt.join("seq");
    let mut v = vec![
        fio(&file, "write", "1M", cli.seq_mib, None)?,
        fio(&file, "read", "1M", cli.seq_mib, None)?,
        fio(&file, "randwrite", "4k", cli.seq_mib, Some(cli.runtime))?,
        fio(&file, "randread", "4k", cli.seq_mib, Some(cli.runtime))?,
    ];
    let dir = mnt.join("meta");
    std::fs::create_dir(&dir)?;
    let names: Vec<PathBuf> = (0..cli.files).map(|i| dir.join(format!("file-{i:07}"))).collect();
    let t = Instant::now();
    for n in &names {
        std::fs::File::create(n).with_context(|| format!("create {}", n.display()))?;
    }
    v.push(rate(names.len(), t.elapsed()));
    let t = Instant::now();
    for n in &names {
        std::fs::symlink_metadata(n)?;
    }
    v.push(rate(names.len(), t.elapsed()));
    let t = Instant::now();
    let listed = std::fs::read_dir(&dir)?.count();
    if listed != names.len() {
        bail!("listing found {listed} entries, expected {}", names.len());
    }
    v.push(rate(listed, t.elapsed()));
    let t = Instant::now();
    for n in &names {
        std::fs::remove_file(n)?;
    }
    v.push(rate(names.len(), t.elapsed()));
    Ok(v)
}

/// Unmounts on drop (and waits for the gfs server to exit).
struct Mounted {
    mnt: PathBuf,
    server: Option<Child>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        if let Some(mut c) = self.server.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct LoopDev(String);

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn is_mounted(mnt: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = format!(" {} ", mnt.display());
    m.lines().any(|l| l.contains(&want))
}

fn bench(cli: &Cli) -> Result<()> {
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("no parent")?.to_path_buf(),
    };
    let work = match &cli.dir {
        Some(d) => d.clone(),
        None => PathBuf::from(format!("/tmp/gfs-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)?;
    let backing = work.join("backing.img");
    std::fs::File::create(&backing)?.set_len(cli.size_mib << 20)?;
    let dev = run(Command::new("losetup").args(["-f", "--show", "--direct-io=on"]).arg(&backing), "losetup")?
        .trim()
        .to_string();
    let _loop = LoopDev(dev.clone());
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let mut results: Vec<Vec<f64>> = Vec::new();
    for fs in ["ext4", "gfs"] {
        let mounted = if fs == "ext4" {
            run(Command::new("mkfs.ext4").args(["-q", "-F", &dev]), "mkfs.ext4")?;
            run(Command::new("mount").arg(&dev).arg(&mnt), "mount ext4")?;
            Mounted { mnt: mnt.clone(), server: None }
        } else {
            run(
                Command::new(bin_dir.join("mkfs_gfs")).args([
                    "-q",
                    "-O",
                    "-p",
                    "lock_nolock",
                    "-t",
                    "bench:gfs",
                    "-j",
                    "1",
                    &dev,
                ]),
                "mkfs.gfs",
            )?;
            let child = Command::new(bin_dir.join("mount_gfs"))
                .arg(&dev)
                .arg(&mnt)
                .arg("-f")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("mount.gfs")?;
            let m = Mounted { mnt: mnt.clone(), server: Some(child) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while !is_mounted(&mnt) {
                if Instant::now() > deadline {
                    bail!("mount.gfs did not mount within 20 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            m
        };
        eprintln!("gfs-bench: {fs} on {dev}");
        results.push(workloads(&mnt, cli)?);
        drop(mounted);
    }
    println!("| test | ext4 | gfs | gfs / ext4 |");
    println!("|---|---:|---:|---:|");
    for (i, (_, label)) in ROWS.iter().enumerate() {
        let (e, g) = (results[0][i], results[1][i]);
        println!("| {label} | {e:.0} | {g:.0} | {:.2} |", g / e.max(1e-9));
    }
    shared_directory(cli, &bin_dir, &work, &dev)?;
    if cli.dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

/// Kills a child on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn create_files(dir: &Path, prefix: &str, n: usize) -> Result<()> {
    for i in 0..n {
        std::fs::File::create(dir.join(format!("{prefix}{i}")))?;
    }
    Ok(())
}

/// Creates per second in one directory: one lock_dlm node alone, then two nodes at once.
fn shared_directory(cli: &Cli, bin_dir: &Path, work: &Path, dev: &str) -> Result<()> {
    run(
        Command::new(bin_dir.join("mkfs_gfs")).args([
            "-q",
            "-O",
            "-p",
            "lock_dlm",
            "-t",
            "bench:shared",
            "-j",
            "2",
            dev,
        ]),
        "mkfs.gfs lock_dlm",
    )?;
    let port = |ip: &str| -> Result<u16> { Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port()) };
    let (p1, p2) = (port("127.0.0.1")?, port("127.0.0.2")?);
    let mut daemons = Vec::new();
    for (id, me, peer) in [
        (1, format!("127.0.0.1:{p1}"), format!("2=127.0.0.2:{p2}")),
        (2, format!("127.0.0.2:{p2}"), format!("1=127.0.0.1:{p1}")),
    ] {
        let sock = work.join(format!("dlm{id}.sock"));
        let child = Command::new(bin_dir.join("dlm_controld"))
            .args(["--node-id", &id.to_string(), "--listen", &me, "--peer", &peer])
            .arg("--socket")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("dlm_controld")?;
        daemons.push(Killed(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline {
                bail!("dlm_controld {id} did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut mounts = Vec::new();
    for slot in 0..2u32 {
        let mnt = work.join(format!("node{slot}"));
        std::fs::create_dir_all(&mnt)?;
        let opts = format!("journal={slot},dlm_socket={}", work.join(format!("dlm{}.sock", slot + 1)).display());
        let child = Command::new(bin_dir.join("mount_gfs"))
            .arg(dev)
            .arg(&mnt)
            .args(["-f", "-o", &opts])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("mount.gfs")?;
        mounts.push(Mounted { mnt: mnt.clone(), server: Some(child) });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&mnt) {
            if Instant::now() > deadline {
                bail!("mount.gfs (lock_dlm, slot {slot}) did not mount");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let n = cli.files.min(5000);
    let (a, b) = (mounts[0].mnt.clone(), mounts[1].mnt.clone());
    std::fs::create_dir(a.join("alone"))?;
    std::fs::create_dir(a.join("shared"))?;
    let t = Instant::now();
    create_files(&a.join("alone"), "f", n)?;
    let one = rate(n, t.elapsed());
    let t = Instant::now();
    let (da, db) = (a.join("shared"), b.join("shared"));
    let h = std::thread::spawn(move || create_files(&da, "a", n / 2));
    create_files(&db, "b", n - n / 2)?;
    h.join().map_err(|_| anyhow::anyhow!("creator thread panicked"))??;
    let two = rate(n, t.elapsed());
    drop(mounts);
    drop(daemons);
    println!();
    println!("| lock_dlm, one shared directory | creates/s |");
    println!("|---|---:|");
    println!("| one node | {one:.0} |");
    println!("| two nodes at once | {two:.0} ({:.2}x one node) |", two / one.max(1e-9));
    Ok(())
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.smoke {
        cli.size_mib = cli.size_mib.min(256);
        cli.seq_mib = cli.seq_mib.min(16);
        cli.runtime = 1;
        cli.files = cli.files.min(300);
    }
    // Mounts stay in a private mount namespace.
    if std::env::var_os("GFS_BENCH_IN_NS").is_none() {
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("gfs-bench: {e}");
                return ExitCode::FAILURE;
            }
        };
        let status = Command::new("unshare")
            .args(["-m", "--propagation", "private"])
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env("GFS_BENCH_IN_NS", "1")
            .status();
        return match status {
            Ok(s) if s.success() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("gfs-bench: cannot run unshare: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match bench(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gfs-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
