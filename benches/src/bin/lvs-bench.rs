//! `lvs-bench`: the userspace LVS director side by side with haproxy (TCP mode) and with
//! no proxy at all, on loopback, in one run, against the same backends and the same load:
//!
//! - HTTP requests per second with keep-alive (`wrk`),
//! - HTTP requests per second with a new connection per request (`wrk`, `Connection: close`),
//! - bulk throughput (`iperf3`).
//!
//! The HTTP backend is in this process (tokio, fixed small response); the bulk backend is
//! `iperf3 -s`. Every child is killed on exit. `--smoke` runs each row for one second.
//!
//! Run: `cargo build --release -p lvs --bins && cargo run --release -p gnbd-benches --bin lvs-bench`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[path = "../net.rs"]
mod net;
use net::free_port;

/// Side-by-side benchmark: direct vs haproxy vs lvsd.
#[derive(Debug, Parser)]
#[command(name = "lvs-bench")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Concurrent connections for wrk.
    #[arg(long, default_value_t = 50)]
    conns: u32,
    /// One second per row, for CI.
    #[arg(long)]
    smoke: bool,
    /// Directory with lvsd (default: the directory of this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Only these targets (direct, haproxy, lvsd, nft), comma-separated. `nft` (lvsd's
    /// nftables fast path) makes the whole run happen in a network namespace of its own,
    /// so that the NAT rules touch nothing else.
    #[arg(long, default_value = "direct,haproxy,lvsd,nft")]
    targets: String,
    /// Rounds; each cell is the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Data-plane threads of the proxying lvsd.
    #[arg(long, default_value_t = 2)]
    lvsd_threads: usize,
    /// Internal: already inside the benchmark's namespace.
    #[arg(long, hide = true)]
    in_netns: bool,
}

/// Re-runs this benchmark inside a fresh network namespace (loopback up), then removes it.
fn rerun_in_netns() -> Result<()> {
    let ns = format!("lvsbench{}", std::process::id());
    let ip = |args: &[&str]| -> Result<()> {
        let st = Command::new("ip").args(args).status().context("ip")?;
        if !st.success() {
            bail!("ip {args:?} failed");
        }
        Ok(())
    };
    ip(&["netns", "add", &ns])?;
    let r = (|| -> Result<()> {
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let me = std::env::current_exe()?;
        let st = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(me)
            .args(std::env::args_os().skip(1))
            .arg("--in-netns")
            .status()?;
        if !st.success() {
            bail!("the benchmark failed inside namespace {ns}");
        }
        Ok(())
    })();
    let _ = Command::new("ip").args(["netns", "pids", &ns]).output().map(|o| {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    });
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    r
}

struct Guard(Vec<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 20 s")
}

/// The HTTP backend: answers every request with a 6-byte body; closes after the response
/// when asked to.
fn start_backend(port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((mut s, _)) = l.accept().await else { continue };
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    let mut have = 0;
                    loop {
                        let Ok(n) = s.read(&mut buf[have..]).await else { return };
                        if n == 0 {
                            return;
                        }
                        have += n;
                        // Answer every complete request in the buffer (pipelining-safe).
                        let mut out = Vec::new();
                        let mut close = false;
                        while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                            let req = &buf[..end];
                            close |= req.windows(17).any(|w| w.eq_ignore_ascii_case(b"connection: close"));
                            out.extend_from_slice(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nhello\n",
                            );
                            buf.copy_within(end + 4..have, 0);
                            have -= end + 4;
                        }
                        if have == buf.len() {
                            return;
                        }
                        if !out.is_empty() && s.write_all(&out).await.is_err() {
                            return;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
    });
    wait_port(port)
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let f = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    cmd.spawn().with_context(|| format!("cannot start {cmd:?}"))
}

fn wrk(port: u16, secs: u64, conns: u32, close: bool) -> Result<f64> {
    let mut c = Command::new("wrk");
    c.args(["-t", "1", "-c", &conns.to_string(), "-d", &format!("{secs}s")]);
    if close {
        c.args(["-H", "Connection: close"]);
    }
    c.arg(format!("http://127.0.0.1:{port}/"));
    let out = c.output().context("wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    if let Some(l) = text.lines().find(|l| l.contains("Non-2xx") || l.contains("Socket errors")) {
        eprintln!("  wrk: {}", l.trim());
    }
    Ok(rps)
}

fn iperf(port: u16, secs: u64) -> Result<f64> {
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", &secs.to_string(), "-J"])
        .output()
        .context("iperf3")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("no throughput in iperf3 output: {}", String::from_utf8_lossy(&out.stdout)))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.targets.split(',').any(|t| t == "nft") && !args.in_netns {
        return rerun_in_netns();
    }
    let secs = if args.smoke { 1 } else { args.duration };
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default()
    });
    let tmp = std::env::temp_dir().join(format!("lvs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut guard = Guard(Vec::new());

    let http = free_port()?;
    start_backend(http)?;
    let bulk = free_port()?;
    guard.0.push(spawn(Command::new("iperf3").args(["-s", "-p", &bulk.to_string()]), &tmp.join("iperf3.log"))?);
    wait_port(bulk)?;

    let targets: Vec<&str> = args.targets.split(',').collect();
    let mut ports: Vec<(&str, u16, u16)> = Vec::new();
    if targets.contains(&"direct") {
        ports.push(("direct", http, bulk));
    }
    if targets.contains(&"haproxy") {
        let (h1, h2) = (free_port()?, free_port()?);
        let cfg = tmp.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 4000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  \
                 timeout server 60s\nfrontend http\n  bind 127.0.0.1:{h1}\n  default_backend http\nbackend http\n  \
                 server s1 127.0.0.1:{http}\nfrontend bulk\n  bind 127.0.0.1:{h2}\n  default_backend bulk\nbackend bulk\n  \
                 server s1 127.0.0.1:{bulk}\n"
            ),
        )?;
        guard.0.push(spawn(Command::new("haproxy").arg("-db").arg("-f").arg(&cfg), &tmp.join("haproxy.log"))?);
        wait_port(h1)?;
        ports.push(("haproxy", h1, h2));
    }
    if targets.contains(&"lvsd") {
        let (l1, l2) = (free_port()?, free_port()?);
        let rules = tmp.join("rules");
        std::fs::write(
            &rules,
            format!(
                "-A -t 127.0.0.1:{l1} -s rr\n-a -t 127.0.0.1:{l1} -r 127.0.0.1:{http} -m -w 1\n\
                 -A -t 127.0.0.1:{l2} -s rr\n-a -t 127.0.0.1:{l2} -r 127.0.0.1:{bulk} -m -w 1\n"
            ),
        )?;
        let lvsd = bin_dir.join("lvsd");
        guard.0.push(spawn(
            Command::new(&lvsd)
                .arg("--rules")
                .arg(&rules)
                .arg("--socket")
                .arg(tmp.join("lvsd.sock"))
                .arg("--threads")
                .arg(args.lvsd_threads.to_string())
                .env("RUST_LOG", "warn"),
            &tmp.join("lvsd.log"),
        )?);
        wait_port(l1)?;
        ports.push(("lvsd", l1, l2));
    }
    if targets.contains(&"nft") {
        let (n1, n2) = (free_port()?, free_port()?);
        let rules = tmp.join("rules-nft");
        std::fs::write(
            &rules,
            format!(
                "-A -t 127.0.0.1:{n1} -s rr\n-a -t 127.0.0.1:{n1} -r 127.0.0.1:{http} -m -w 1\n\
                 -A -t 127.0.0.1:{n2} -s rr\n-a -t 127.0.0.1:{n2} -r 127.0.0.1:{bulk} -m -w 1\n"
            ),
        )?;
        guard.0.push(spawn(
            Command::new(bin_dir.join("lvsd"))
                .arg("--nft")
                .arg("--rules")
                .arg(&rules)
                .arg("--socket")
                .arg(tmp.join("lvsd-nft.sock"))
                .env("RUST_LOG", "warn"),
            &tmp.join("lvsd-nft.log"),
        )?);
        wait_port(n1)?;
        // lvsd programs nftables before it listens; a request through the port now goes
        // through the kernel path.
        ports.push(("nft", n1, n2));
    }

    let rows = ["HTTP keep-alive (req/s)", "HTTP new conn/request (req/s)", "bulk TCP (Gbit/s)"];
    // Rounds interleave the targets row by row, and each cell is the median of its rounds,
    // so that load from elsewhere on the machine hits every column alike.
    let rounds = if args.smoke { 1 } else { args.rounds.max(1) };
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); ports.len()]; rows.len()];
    for round in 0..rounds {
        for (row, cells) in samples.iter_mut().enumerate() {
            for (t, (name, p_http, p_bulk)) in ports.iter().enumerate() {
                eprintln!("round {}/{rounds}: {} via {name}", round + 1, rows[row]);
                cells[t].push(match row {
                    0 => wrk(*p_http, secs, args.conns, false)?,
                    1 => wrk(*p_http, secs, args.conns, true)?,
                    _ => iperf(*p_bulk, secs)?,
                });
            }
        }
    }
    let results: Vec<Vec<f64>> = samples
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|mut v| {
                    v.sort_by(|a, b| a.total_cmp(b));
                    v[v.len() / 2]
                })
                .collect()
        })
        .collect();
    let mut out = std::io::stdout().lock();
    write!(out, "| {:<31} |", "")?;
    for (n, _, _) in &ports {
        write!(out, " {n:>10} |")?;
    }
    let idx = |n: &str| ports.iter().position(|p| p.0 == n);
    let (d, h, l, n) = (idx("direct"), idx("haproxy"), idx("lvsd"), idx("nft"));
    let ratios: Vec<(&str, usize, usize)> =
        [("lvsd/haproxy", l, h), ("haproxy/direct", h, d), ("lvsd/direct", l, d), ("nft/direct", n, d)]
            .into_iter()
            .filter_map(|(n, a, b)| Some((n, a?, b?)))
            .collect();
    for (n, _, _) in &ratios {
        write!(out, " {n:>14} |")?;
    }
    writeln!(out)?;
    for (i, r) in rows.iter().enumerate() {
        write!(out, "| {r:<31} |")?;
        for v in &results[i] {
            if i == 2 {
                write!(out, " {v:>10.2} |")?;
            } else {
                write!(out, " {v:>10.0} |")?;
            }
        }
        for (_, a, b) in &ratios {
            write!(out, " {:>14.2} |", results[i][*a] / results[i][*b])?;
        }
        writeln!(out)?;
    }
    drop(guard);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
