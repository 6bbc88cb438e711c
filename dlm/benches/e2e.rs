//! Side-by-side, end to end, on loopback: lock+unlock of one exclusive lock through
//! `dlm_controld` (local master; remote master, one round trip; two nodes ping-ponging an
//! EX lock; many clients in parallel) against what users would otherwise pick: etcd's lock
//! API (Debian etcd-server, through its HTTP gateway) and Redis (SET NX / DEL). Also the
//! loopback TCP round trip, the unit for "a remote grant within 1.5x a round trip".
//!
//! `cargo bench -p dlm --bench e2e` prints the table; `-- --test` is a quick smoke run.
//! etcd and redis-server are skipped (with a note) when not installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dlm::{DlmClient, Flags, Mode, PlockArgs, PlockKind};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: &str) -> SocketAddr {
    TcpListener::bind(format!("{ip}:0")).expect("bind").local_addr().expect("addr")
}

fn daemon(dir: &Path, id: u32, listen: Option<SocketAddr>, peers: &[(u32, SocketAddr)]) -> (Proc, PathBuf) {
    let socket = dir.join(format!("d{id}.sock"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dlm_controld"));
    cmd.arg("--node-id").arg(id.to_string()).arg("--socket").arg(&socket).env("RUST_LOG", "warn");
    if let Some(l) = listen {
        cmd.arg("--listen").arg(l.to_string());
    }
    for (p, a) in peers {
        cmd.arg("--peer").arg(format!("{p}={a}"));
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("dlm_controld");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("ready line");
    assert!(line.contains("ready"), "{line}");
    (Proc(child), socket)
}

struct Row {
    name: String,
    ops: f64,
    us: f64,
}

fn row(rows: &mut Vec<Row>, name: &str, n: u64, t: Duration) {
    let ops = n as f64 / t.as_secs_f64();
    let us = t.as_secs_f64() * 1e6 / n as f64;
    println!("  {name:<52} {ops:>10.0} pairs/s {us:>9.1} us/pair");
    rows.push(Row { name: name.into(), ops, us });
}

fn tcp_rtt(n: u64) -> Duration {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut b = [0u8; 16];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut b = [7u8; 16];
    for _ in 0..100 {
        s.write_all(&b).expect("write");
        s.read_exact(&mut b).expect("read");
    }
    let start = Instant::now();
    for _ in 0..n {
        s.write_all(&b).expect("write");
        s.read_exact(&mut b).expect("read");
    }
    let d = start.elapsed() / n as u32;
    drop(s);
    let _ = t.join();
    d
}

fn redis(dir: &Path, n: u64, rows: &mut Vec<Row>) {
    let Ok(bin) = which("redis-server") else {
        println!("  redis-server not installed: skipped (scripts/deps.sh installs it)");
        return;
    };
    let port = free_port("127.0.0.1").port();
    let _p = Proc(
        Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let mut s = retry_connect(port);
    s.set_nodelay(true).expect("nodelay");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    let mut cmd = |s: &mut TcpStream, c: &str, line: &mut String| {
        s.write_all(c.as_bytes()).expect("write");
        line.clear();
        r.read_line(line).expect("read");
    };
    let set = "*4\r\n$3\r\nSET\r\n$4\r\nlock\r\n$1\r\n1\r\n$2\r\nNX\r\n";
    let del = "*2\r\n$3\r\nDEL\r\n$4\r\nlock\r\n";
    let start = Instant::now();
    for _ in 0..n {
        cmd(&mut s, set, &mut line);
        assert!(line.starts_with("+OK"), "{line}");
        cmd(&mut s, del, &mut line);
    }
    row(rows, "redis SET NX + DEL (1 connection)", n, start.elapsed());
}

fn etcd(dir: &Path, n: u64, rows: &mut Vec<Row>) {
    let Ok(bin) = which("etcd") else {
        println!("  etcd not installed: skipped (scripts/deps.sh installs etcd-server)");
        return;
    };
    let cport = free_port("127.0.0.1").port();
    let pport = free_port("127.0.0.1").port();
    let _p = Proc(
        Command::new(bin)
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{cport}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{cport}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{pport}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{pport}"))
            .arg("--initial-cluster")
            .arg(format!("default=http://127.0.0.1:{pport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd"),
    );
    let mut s = retry_connect(cport);
    s.set_nodelay(true).expect("nodelay");
    // "lock" in base64 is "bG9jaw==".
    let post = |s: &mut TcpStream, path: &str, body: &str| -> String {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("write");
        read_http(s)
    };
    // Wait until etcd serves.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(&mut s, "/v3/kv/range", "{\"key\":\"eA==\"}");
        if r.contains("header") {
            break;
        }
        assert!(Instant::now() < deadline, "etcd did not come up: {r}");
        std::thread::sleep(Duration::from_millis(100));
        s = retry_connect(cport);
    }
    let start = Instant::now();
    for _ in 0..n {
        let r = post(&mut s, "/v3/lock/lock", "{\"name\":\"bG9jaw==\"}");
        let key = r.split("\"key\":\"").nth(1).and_then(|x| x.split('"').next()).expect("lock key").to_string();
        post(&mut s, "/v3/lock/unlock", &format!("{{\"key\":\"{key}\"}}"));
    }
    row(rows, "etcd v3 lock + unlock (HTTP gateway, 1 connection)", n, start.elapsed());
}

fn read_http(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = s.read(&mut b).expect("read");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&b[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(h) = text.find("\r\n\r\n") {
            let len = text[..h]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= h + 4 + len {
                return String::from_utf8_lossy(&buf[h + 4..h + 4 + len]).into_owned();
            }
        }
    }
}

fn retry_connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot connect to 127.0.0.1:{port}: {e}"),
        }
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    for d in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/sbin"]) {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(())
}

async fn pairs(c: &DlmClient, ls: u32, name: &[u8], n: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        let l = c.lock(ls, name, Mode::Ex, Flags::empty(), None).await.expect("lock");
        l.unlock(Flags::empty(), None).await.expect("unlock");
    }
    start.elapsed()
}

/// `n` fcntl-style write lock + unlock pairs on byte 0 of `name`.
async fn plock_pairs(c: &DlmClient, ls: u32, name: &[u8], n: u64) -> Duration {
    let w = PlockArgs { owner: 1, pid: 1, start: 0, end: 0, kind: PlockKind::Write };
    let u = PlockArgs { kind: PlockKind::Unlock, ..w };
    let start = Instant::now();
    for _ in 0..n {
        c.plock_set(ls, name, w, true).await.expect("plock");
        c.plock_set(ls, name, u, false).await.expect("unlock");
    }
    start.elapsed()
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let n = |full: u64| if smoke { 10 } else { full };
    let dir = std::env::temp_dir().join(format!("dlm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut rows = Vec::new();
    let rtt = tcp_rtt(n(20_000));
    println!("loopback TCP round trip: {:.1} us", rtt.as_secs_f64() * 1e6);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut remote_grant = Duration::ZERO;
    rt.block_on(async {
        // Local master: one daemon.
        let (_d, sock) = daemon(&dir, 1, None, &[]);
        let c = DlmClient::connect(&sock).await.expect("connect");
        let ls = c.join(b"bench", 0).await.expect("join");
        let t = pairs(&c, ls, b"local", n(20_000)).await;
        row(&mut rows, "dlm local master, 1 client, sequential", n(20_000), t);
        let t = plock_pairs(&c, ls, b"local", n(20_000)).await;
        row(&mut rows, "dlm plock (fcntl) local master, 1 client", n(20_000), t);
        // Many clients and resources in parallel.
        let conns = 4;
        let per_conn = 32;
        let each = n(2_000);
        let mut handles = Vec::new();
        let start = Instant::now();
        for ci in 0..conns {
            let c = DlmClient::connect(&sock).await.expect("connect");
            for k in 0..per_conn {
                let c = c.clone();
                let name = format!("par-{ci}-{k}").into_bytes();
                handles.push(tokio::spawn(async move { pairs(&c, ls, &name, each).await }));
            }
        }
        for h in handles {
            h.await.expect("task");
        }
        row(
            &mut rows,
            &format!("dlm local master, {} clients x {per_conn} in flight", conns),
            each * conns * per_conn,
            start.elapsed(),
        );

        // Two nodes: the resource is mastered on node 1, used from node 2.
        let a1 = free_port("127.0.0.1");
        let a2 = free_port("127.0.0.2");
        let (_d1, s1) = daemon(&dir, 11, Some(a1), &[(12, a2)]);
        let (_d2, s2) = daemon(&dir, 12, Some(a2), &[(11, a1)]);
        let c1 = DlmClient::connect(&s1).await.expect("connect");
        let c2 = DlmClient::connect(&s2).await.expect("connect");
        let ls1 = c1.join(b"bench2", 0).await.expect("join");
        let ls2 = c2.join(b"bench2", 0).await.expect("join");
        pairs(&c1, ls1, b"remote", 1).await;
        pairs(&c2, ls2, b"remote", 10).await;
        let count = n(10_000);
        let mut grant = Duration::ZERO;
        let start = Instant::now();
        for _ in 0..count {
            let g = Instant::now();
            let l = c2.lock(ls2, b"remote", Mode::Ex, Flags::empty(), None).await.expect("lock");
            grant += g.elapsed();
            l.unlock(Flags::empty(), None).await.expect("unlock");
        }
        row(&mut rows, "dlm remote master (1 round trip per op)", count, start.elapsed());
        remote_grant = grant / count as u32;
        let on_1 = (0..).map(|i| format!("file{i}").into_bytes()).find(|f| dlm::dir_node(f, &[11, 12]) == 11);
        let on_1 = on_1.expect("some name is mastered by node 11");
        let t = plock_pairs(&c2, ls2, &on_1, count).await;
        row(&mut rows, "dlm plock (fcntl) remote master (1 round trip)", count, t);
        // Ping-pong: nodes 1 and 2 take EX in turn.
        let count = n(5_000);
        let start = Instant::now();
        for i in 0..count {
            let (c, ls) = if i % 2 == 0 { (&c1, ls1) } else { (&c2, ls2) };
            let l = c.lock(ls, b"pingpong", Mode::Ex, Flags::empty(), None).await.expect("lock");
            l.unlock(Flags::empty(), None).await.expect("unlock");
        }
        row(&mut rows, "dlm two nodes ping-ponging EX", count, start.elapsed());
    });
    println!(
        "dlm remote grant latency: {:.1} us = {:.2}x the loopback TCP round trip",
        remote_grant.as_secs_f64() * 1e6,
        remote_grant.as_secs_f64() / rtt.as_secs_f64()
    );
    redis(&dir, n(20_000), &mut rows);
    etcd(&dir, n(1_000), &mut rows);
    if let Some(e) = rows.iter().find(|r| r.name.starts_with("etcd")) {
        println!();
        for r in &rows {
            println!("  {:<52} {:>8.1}x etcd", r.name, r.ops / e.ops);
        }
    }
    let _ = rows.iter().map(|r| r.us).sum::<f64>();
    let _ = std::fs::remove_dir_all(&dir);
}
