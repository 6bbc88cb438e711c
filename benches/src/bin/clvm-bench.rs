//! `clvm-bench`: the volume manager side by side with what it replaces.
//!
//! - **metadata rows**: `lvcreate` latency. Stock lvm2 (`lvcreate -an -Zn`, activation off) on
//!   a VG over two loop devices, against `clvm lvcreate -Zn` on the same kind of VG (local
//!   locks), and against `clvm lvcreate -Zn` on a 2-node cluster (a dlm_controld mesh and a
//!   clvmd per node, a clustered VG over two gnbd exports, the nodes taking turns), in
//!   interleaved rounds; medians.
//! - **I/O rows**: the mapping layer's cost and the stripe's gain, through the library: N
//!   threads of 1 MiB sequential and 4 KiB random reads and writes through a linear LV on one
//!   gnbd export against the export itself, and through a 2-way striped LV over two gnbd
//!   servers against one export; interleaved rounds, medians.
//!
//! - **fio rows**: fio (io_uring, direct I/O) on `/dev/VG/LV` of the activated linear and
//!   striped LVs against fio on a `gnbd_import` of the export itself (the same FUSE + loop
//!   path), interleaved rounds, medians.
//!
//! Prints the 1-minute load average before and after. Runs as root (losetup).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use blockdev::Device;
use clap::Parser;

const AFTER_HELP: &str = "\
EXAMPLES
        cargo build --release --workspace --bins
        target/release/clvm-bench
        target/release/clvm-bench --smoke

EXIT STATUS
    0   every row measured
    1   a tool or server failed (the message says which)";

/// Benchmark clvm against stock lvm2 (metadata) and the raw exports (I/O).
#[derive(Debug, Parser)]
#[command(name = "clvm-bench", after_long_help = AFTER_HELP)]
struct Cli {
    /// lvcreate calls per row and round.
    #[arg(long, default_value_t = 10)]
    creates: usize,
    /// Rounds (rows alternate within each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per I/O measurement.
    #[arg(long, default_value_t = 3)]
    runtime: u64,
    /// Threads per I/O measurement.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// For the I/O rows, each gnbd server sits in its own network namespace behind a link of
    /// this many Mbit/s each way (as two servers with their own NICs); 0 puts them on
    /// loopback, where they share this machine's CPUs and a stripe cannot gain.
    #[arg(long, default_value_t = 1000)]
    link_mbit: u32,
    /// Quick run: checks the machinery, not the speed.
    #[arg(long)]
    smoke: bool,
    /// Directory holding clvm, clvmd, dlm_controld, gnbd_serv, gnbd_export (default: beside
    /// this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clvm-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_owned()
}

/// A child killed and reaped on drop.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loop device over a sparse file, detached on drop.
struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn loop_dev(file: &Path, size: u64) -> Result<Loop> {
    std::fs::File::create(file)?.set_len(size)?;
    Ok(Loop(sh(Command::new("losetup").args(["-f", "--show"]).arg(file))?.trim().to_owned()))
}

/// Waits for a daemon's first stdout line.
fn spawn_ready(cmd: &mut Command, what: &str) -> Result<Guard> {
    use std::io::BufRead;
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().with_context(|| format!("starting {what}"))?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let g = Guard(child);
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) if l.contains("ready") => Ok(g),
        other => bail!("{what} did not get ready: {other:?}"),
    }
}

/// A network namespace holding one server behind a veth link shaped to `mbit` each way
/// (host side 198.18.50.N*4+1, server side +2); removed on drop.
struct NetHost {
    ns: String,
    veth: String,
    addr: String,
}

impl NetHost {
    fn new(n: u32, mbit: u32) -> Result<NetHost> {
        let ns = format!("clvmbench{}-{n}", std::process::id());
        let veth = format!("cvb{n}h{}", std::process::id() % 10000);
        let peer = format!("cvb{n}s{}", std::process::id() % 10000);
        let (host, srv) = (format!("198.18.50.{}", n * 4 + 1), format!("198.18.50.{}", n * 4 + 2));
        sh(Command::new("ip").args(["netns", "add", &ns]))?;
        let h = NetHost { ns: ns.clone(), veth: veth.clone(), addr: srv.clone() };
        sh(Command::new("ip").args(["link", "add", &veth, "type", "veth", "peer", "name", &peer]))?;
        sh(Command::new("ip").args(["link", "set", &peer, "netns", &ns]))?;
        sh(Command::new("ip").args(["addr", "add", &format!("{host}/30"), "dev", &veth]))?;
        sh(Command::new("ip").args(["link", "set", &veth, "up"]))?;
        let inns = |args: &[&str]| sh(Command::new("ip").args(["netns", "exec", &ns]).args(args));
        inns(&["ip", "addr", "add", &format!("{srv}/30"), "dev", &peer])?;
        inns(&["ip", "link", "set", &peer, "up"])?;
        inns(&["ip", "link", "set", "lo", "up"])?;
        let rate = format!("{mbit}mbit");
        let tbf = ["root", "tbf", "rate", rate.as_str(), "burst", "512kb", "latency", "50ms"];
        sh(Command::new("tc").args(["qdisc", "add", "dev", &veth]).args(tbf))?;
        inns(&[&["tc", "qdisc", "add", "dev", peer.as_str()][..], &tbf[..]].concat())?;
        Ok(h)
    }
}

impl Drop for NetHost {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// One gnbd_serv on loopback with exports of `size` bytes each; returns their gnbd:// names.
fn server(bin: &Path, work: &Path, name: &str, exports: &[&str], size: u64) -> Result<(Guard, Vec<String>)> {
    server_on(bin, work, name, exports, size, None)
}

/// As [`server`], in `host`'s namespace when given.
fn server_on(
    bin: &Path,
    work: &Path,
    name: &str,
    exports: &[&str],
    size: u64,
    host: Option<&NetHost>,
) -> Result<(Guard, Vec<String>)> {
    let state = work.join(format!("{name}-state"));
    std::fs::create_dir_all(&state)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let addr = host.map_or("127.0.0.1".to_owned(), |h| h.addr.clone());
    let mut cmd = match host {
        Some(h) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &h.ns]).arg(bin.join("gnbd_serv"));
            c
        }
        None => Command::new(bin.join("gnbd_serv")),
    };
    let g = spawn_ready(
        cmd.arg("--state-dir").arg(&state).args(["-p", &port.to_string(), "--bind", &addr, "--foreground"]),
        "gnbd_serv",
    )?;
    let mut uris = Vec::new();
    for e in exports {
        let f = work.join(format!("{name}-{e}.img"));
        // Fully written, so holes do not flatter anyone.
        {
            use std::io::Write;
            let mut h = std::fs::File::create(&f)?;
            let chunk = vec![0x5au8; 1 << 20];
            for _ in 0..size >> 20 {
                h.write_all(&chunk)?;
            }
            h.sync_all()?;
        }
        sh(Command::new(bin.join("gnbd_export")).arg("--state-dir").arg(&state).args(["-e", e, "-d"]).arg(&f))?;
        uris.push(format!("gnbd://{addr}:{port}/{e}"));
    }
    Ok((g, uris))
}

/// The medians of `rounds` interleaved measurements of the four devices of an I/O row
/// (export, linear LV, one export, 2-stripe): `measure(i)` measures device `i`.
fn interleaved(rounds: usize, mut measure: impl FnMut(usize) -> Result<f64>) -> Result<[f64; 4]> {
    let mut v: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        for (i, col) in v.iter_mut().enumerate() {
            col.push(measure(i)?);
        }
    }
    Ok(v.map(|mut x| median(&mut x)))
}

/// One I/O row: the four medians and the two ratios (linear/export, stripe/one export).
fn print_row(name: &str, width: usize, m: &[f64; 4]) {
    println!(
        "  {name:<width$} {:>10.1} {:>10.1} {:>6.2}x   {:>10.1} {:>10.1} {:>6.2}x",
        m[0],
        m[1],
        m[1] / m[0],
        m[2],
        m[3],
        m[3] / m[2]
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn run(cli: &Cli) -> Result<()> {
    for p in ["lvcreate", "losetup"] {
        if !Command::new("sh").args(["-c", &format!("command -v {p}")]).stdout(Stdio::null()).status()?.success() {
            bail!("{p} is not installed (scripts/deps.sh installs it)");
        }
    }
    let bin = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("program has no directory")?.to_path_buf(),
    };
    let (creates, rounds, runtime) = if cli.smoke { (2, 1, 1) } else { (cli.creates, cli.rounds, cli.runtime) };
    let work = std::env::temp_dir().join(format!("clvm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    println!("load average before: {}", loadavg());
    let r = (|| -> Result<()> {
        metadata(&bin, &work, creates, rounds)?;
        io(&bin, &work, rounds, runtime, cli.threads, cli.smoke, cli.link_mbit)
    })();
    println!("load average after: {}", loadavg());
    let _ = std::fs::remove_dir_all(&work);
    r
}

fn metadata(bin: &Path, work: &Path, creates: usize, rounds: usize) -> Result<()> {
    let lvm_conf = "global/activation=0 backup/backup=0 backup/archive=0";
    // Stock and ours-local: two loop devices each.
    let s = [loop_dev(&work.join("s0.img"), 256 << 20)?, loop_dev(&work.join("s1.img"), 256 << 20)?];
    let o = [loop_dev(&work.join("o0.img"), 256 << 20)?, loop_dev(&work.join("o1.img"), 256 << 20)?];
    let sdevs = format!("{},{}", s[0].0, s[1].0);
    let odevs = format!("{},{}", o[0].0, o[1].0);
    let etc = work.join("etc");
    std::fs::create_dir_all(&etc)?;
    let stock = |args: &[&str]| -> Result<String> {
        sh(Command::new(args[0])
            .args(&args[1..])
            .args(["--config", lvm_conf, "--devices", &sdevs])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .env_remove("LVM_SYSTEM_DIR"))
    };
    let ours = |devs: &str, sock: Option<&Path>, args: &[&str]| -> Result<String> {
        let mut c = Command::new(bin.join("clvm"));
        c.args(args)
            .args(["--devices", devs, "--config", "backup/backup=0 backup/archive=0"])
            .env("LVM_SYSTEM_DIR", &etc);
        match sock {
            Some(p) => c.arg("--clvmd-socket").arg(p),
            None => c.args(["--clvmd-socket", "/nonexistent"]),
        };
        sh(&mut c)
    };
    stock(&["vgcreate", "-q", "bvgs", &s[0].0, &s[1].0])?;
    ours(&odevs, None, &["vgcreate", "-q", "bvgo", &o[0].0, &o[1].0])?;
    // The 2-node cluster.
    let (_srv, uris) = server(bin, work, "meta", &["p0", "p1"], 256 << 20)?;
    let cdevs = uris.join(",");
    let mut daemons = Vec::new();
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    for n in 0..2usize {
        let peer = 1 - n;
        daemons.push(spawn_ready(
            Command::new(bin.join("dlm_controld"))
                .args(["--node-id", &(n + 1).to_string(), "--socket"])
                .arg(work.join(format!("dlm{n}.sock")))
                .args(["--listen", &format!("127.0.0.{}:{}", n + 1, ports[n])])
                .args(["--peer", &format!("{}=127.0.0.{}:{}", peer + 1, peer + 1, ports[peer])]),
            "dlm_controld",
        )?);
    }
    for n in 0..2usize {
        daemons.push(spawn_ready(
            Command::new(bin.join("clvmd"))
                .arg("--dlm-socket")
                .arg(work.join(format!("dlm{n}.sock")))
                .arg("--socket")
                .arg(work.join(format!("clvmd{n}.sock"))),
            "clvmd",
        )?);
    }
    let csock = |n: usize| work.join(format!("clvmd{n}.sock"));
    ours(&cdevs, Some(&csock(0)), &["vgcreate", "-q", "bvgc", &uris[0], &uris[1]])?;

    let (mut t_stock, mut t_local, mut t_cluster) = (Vec::new(), Vec::new(), Vec::new());
    let mut k = 0;
    for _ in 0..rounds {
        for _ in 0..creates {
            k += 1;
            let name = format!("l{k}");
            let t = Instant::now();
            stock(&["lvcreate", "-q", "-an", "-Zn", "-L", "4M", "-n", &name, "bvgs"])?;
            t_stock.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            ours(&odevs, None, &["lvcreate", "-q", "-Zn", "-L", "4M", "-n", &name, "bvgo"])?;
            t_local.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            ours(&cdevs, Some(&csock(k % 2)), &["lvcreate", "-q", "-Zn", "-L", "4M", "-n", &name, "bvgc"])?;
            t_cluster.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (ms, ml, mc) = (median(&mut t_stock), median(&mut t_local), median(&mut t_cluster));
    println!("\nlvcreate latency (median of {} each, ms; lower is better)", t_stock.len());
    println!("  {:<46} {:>8.1} ms", "stock lvm2 lvcreate -an -Zn (local VG, 2 loop PVs)", ms);
    println!("  {:<46} {:>8.1} ms   stock/ours {:.2}x", "clvm lvcreate -Zn (local VG, 2 loop PVs)", ml, ms / ml);
    println!("  {:<46} {:>8.1} ms   stock/ours {:.2}x", "clvm lvcreate -Zn (2-node cluster, gnbd PVs)", mc, ms / mc);
    stock(&["vgremove", "-q", "-f", "bvgs"])?;
    drop(daemons);
    Ok(())
}

/// Bytes per second of `threads` threads doing `op` on `dev` for `secs`.
fn throughput(dev: &Arc<dyn Device>, threads: usize, secs: u64, bs: usize, random: bool, write: bool) -> f64 {
    let size = dev.size();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut hs = Vec::new();
    for t in 0..threads {
        let (dev, stop, bytes) = (dev.clone(), stop.clone(), bytes.clone());
        hs.push(std::thread::spawn(move || {
            let mut buf = vec![t as u8; bs];
            let slots = size / bs as u64;
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t as u64;
            let mut seq = (t as u64 * slots / threads as u64) % slots.max(1);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let slot = if random {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % slots
                } else {
                    seq = (seq + 1) % slots;
                    seq
                };
                let off = slot * bs as u64;
                let ok = if write { dev.write_at(&buf, off).is_ok() } else { dev.read_at(&mut buf, off).is_ok() };
                if ok {
                    bytes.fetch_add(bs as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hs {
        let _ = h.join();
    }
    bytes.load(std::sync::atomic::Ordering::Relaxed) as f64 / secs as f64
}

fn io(bin: &Path, work: &Path, rounds: usize, secs: u64, threads: usize, smoke: bool, mbit: u32) -> Result<()> {
    let size = if smoke { 64u64 << 20 } else { 512 << 20 };
    let hosts = if mbit > 0 { Some((NetHost::new(1, mbit)?, NetHost::new(2, mbit)?)) } else { None };
    let (ha, hb) = match &hosts {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };
    let (_a, ua) = server_on(bin, work, "ioa", &["d0", "d1"], size + (8 << 20), ha)?;
    let (_b, ub) = server_on(bin, work, "iob", &["d0"], size + (8 << 20), hb)?;
    match mbit {
        0 => println!("\nservers on loopback (they share this machine's CPUs)"),
        m => println!("\neach server behind its own {m} Mbit/s link (network namespace, tbf both ways)"),
    }
    let etc = work.join("etc-io");
    std::fs::create_dir_all(&etc)?;
    let clvm = |args: &[&str]| -> Result<String> {
        sh(Command::new(bin.join("clvm"))
            .args(args)
            .args(["--clvmd-socket", "/nonexistent", "--config", "backup/backup=0 backup/archive=0"])
            .env("LVM_SYSTEM_DIR", &etc))
    };
    // vg1: a linear LV on server A's d1. vg2: a 2-way stripe over A's d0 and B's d0.
    let lv_mib = (size >> 20) - 8;
    clvm(&["vgcreate", "-q", "--devices", &ua[1], "bio1", &ua[1]])?;
    clvm(&["lvcreate", "-q", "-Zn", "-L", &format!("{lv_mib}M"), "-n", "lin", "bio1", "--devices", &ua[1]])?;
    let two = format!("{},{}", ua[0], ub[0]);
    clvm(&["vgcreate", "-q", "--devices", &two, "bio2", &ua[0], &ub[0]])?;
    clvm(&[
        "lvcreate",
        "-q",
        "-Zn",
        "-L",
        &format!("{}M", lv_mib * 2 - 16),
        "-i",
        "2",
        "-I",
        "64k",
        "-n",
        "str",
        "bio2",
        "--devices",
        &two,
    ])?;
    let open_lv = |devs: &str, spec: &str| -> Result<Arc<dyn Device>> {
        let common = clvm::cli::Common { devices: devs.split(',').map(str::to_owned).collect(), ..Default::default() };
        let env = clvm::cli::Env::new(common)?;
        Ok(clvm::activate::open_lv_in(&env, spec).map_err(anyhow::Error::msg)?)
    };
    let raw: Arc<dyn Device> = blockdev::open_device(&ua[1])?;
    let lin = open_lv(&ua[1], "lvm:bio1/lin")?;
    let one: Arc<dyn Device> = blockdev::open_device(&ub[0])?;
    let str2 = open_lv(&two, "lvm:bio2/str")?;
    fio_rows(bin, work, &etc, rounds, secs, &ua, &ub)?;
    let rows: [(&str, usize, bool, bool); 4] = [
        ("seqread 1M", 1 << 20, false, false),
        ("seqwrite 1M", 1 << 20, false, true),
        ("randread 4k", 4096, true, false),
        ("randwrite 4k", 4096, true, true),
    ];
    println!(
        "\nI/O through the library, {threads} threads, {secs} s each, median of {rounds} interleaved rounds (MB/s)"
    );
    println!(
        "  {:<14} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "row", "export", "linear LV", "ratio", "1 export", "2-stripe", "ratio"
    );
    for (name, bs, random, write) in rows {
        let m = interleaved(rounds, |i| {
            Ok(throughput([&raw, &lin, &one, &str2][i], threads, secs, bs, random, write) / 1e6)
        })?;
        print_row(name, 14, &m);
    }
    Ok(())
}

/// Removes the bench's imports and deactivates its LVs on drop.
struct Devices<'a> {
    bin: &'a Path,
    work: &'a Path,
    etc: &'a Path,
    lvs: Vec<String>,
}

impl Drop for Devices<'_> {
    fn drop(&mut self) {
        for lv in &self.lvs {
            let _ = Command::new(self.bin.join("clvm"))
                .args(["lvchange", "-an", lv, "--clvmd-socket", "/nonexistent", "--config"])
                .arg(activation_conf(self.work))
                .env("LVM_SYSTEM_DIR", self.etc)
                .status();
        }
        let _ = Command::new(self.bin.join("gnbd_import"))
            .arg("--state-dir")
            .arg(self.work.join("imp"))
            .arg("--dev-dir")
            .arg(self.work.join("impdev"))
            .args(["-R", "-f"])
            .status();
    }
}

fn activation_conf(work: &Path) -> String {
    format!(
        "backup/backup=0 backup/archive=0 activation/run_dir=\"{}\" activation/dev_dir=\"{}\"",
        work.join("act-run").display(),
        work.join("act-dev").display()
    )
}

fn fio(dev: &Path, rw: &str, bs: usize, qd: usize, secs: u64) -> Result<f64> {
    let out = sh(Command::new("fio").args([
        "--name=b",
        &format!("--rw={rw}"),
        &format!("--bs={bs}"),
        &format!("--iodepth={qd}"),
        "--ioengine=io_uring",
        "--direct=1",
        "--time_based",
        &format!("--runtime={secs}"),
        "--output-format=json",
        &format!("--filename={}", dev.display()),
    ]))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("fio JSON")?;
    let side = &v["jobs"][0][if rw.contains("read") { "read" } else { "write" }];
    Ok(side["bw_bytes"].as_f64().context("fio bw_bytes")? / 1e6)
}

fn fio_rows(bin: &Path, work: &Path, etc: &Path, rounds: usize, secs: u64, ua: &[String], ub: &[String]) -> Result<()> {
    if !Command::new("sh").args(["-c", "command -v fio"]).stdout(Stdio::null()).status()?.success() {
        bail!("fio is not installed (scripts/deps.sh installs it)");
    }
    let mut devs = Devices { bin, work, etc, lvs: vec![] };
    // The exports as devices: gnbd_import of A's d1 (the linear LV's PV) and of B's d0.
    let import = |uri: &str| -> Result<PathBuf> {
        let rest = uri.trim_start_matches("gnbd://");
        let (hostport, export) = rest.split_once('/').context("uri")?;
        let (host, port) = hostport.rsplit_once(':').context("port")?;
        sh(Command::new(bin.join("gnbd_import"))
            .arg("--state-dir")
            .arg(work.join("imp"))
            .arg("--dev-dir")
            .arg(work.join("impdev"))
            .args(["-i", host, "-p", port, "-n", export]))?;
        Ok(work.join("impdev").join(export))
    };
    // A's d1 and B's d0: distinct names, so one state directory holds both.
    let raw = import(&ua[1])?;
    let one = import(&ub[0])?;
    for lv in ["bio1/lin", "bio2/str"] {
        sh(Command::new(bin.join("clvm"))
            .args(["lvchange", "-ay", lv, "--clvmd-socket", "/nonexistent", "--devices"])
            .arg(format!("{},{},{}", ua[0], ua[1], ub[0]))
            .arg("--config")
            .arg(activation_conf(work))
            .env("LVM_SYSTEM_DIR", etc))?;
        devs.lvs.push(lv.into());
    }
    let lin = work.join("act-dev/bio1/lin");
    let str2 = work.join("act-dev/bio2/str");
    let jobs: [(&str, &str, usize, usize); 4] = [
        ("seqread 1M qd8", "read", 1 << 20, 8),
        ("seqwrite 1M qd8", "write", 1 << 20, 8),
        ("randread 4k qd32", "randread", 4096, 32),
        ("randwrite 4k qd32", "randwrite", 4096, 32),
    ];
    println!("\nfio on the devices (io_uring, direct), {secs} s each, median of {rounds} interleaved rounds (MB/s)");
    println!(
        "  {:<18} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "row", "export", "linear LV", "ratio", "1 export", "2-stripe", "ratio"
    );
    for (name, rw, bs, qd) in jobs {
        let m = interleaved(rounds, |i| fio([&raw, &lin, &one, &str2][i], rw, bs, qd, secs))?;
        print_row(name, 18, &m);
    }
    drop(devs);
    Ok(())
}
