//! End to end: `lvsd` and `lvsadm` with real backends on loopback addresses.
//!
//! Each test uses its own 127.0.N.0/24 range: the VIP is 127.0.N.10 and real servers are
//! 127.0.N.11, .12, .13, each a small HTTP/1.1 server (keep-alive) that answers with its
//! name, or a UDP echo server that prefixes its name.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use gnbd_tests::{bin_dir, free_port, run, OutputExt, TempDir};

/// A tiny HTTP/1.1 server answering every request with its name.
struct Backend {
    name: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    fn start(name: &str, ip: &str, port: u16) -> Backend {
        let listener = TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (st, nm) = (stop.clone(), name.to_string());
        let thread = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let nm = nm.clone();
                        thread::spawn(move || serve_http(s, &nm));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend { name: name.to_string(), addr, stop, thread: Some(thread) }
    }

    /// Closes the listener: new connections are refused.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_http(s: TcpStream, name: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        // request line + headers
        let mut got_any = false;
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            got_any = true;
        }
        if !got_any {
            continue;
        }
        let body = format!("{name}\n");
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// One HTTP request on an open connection; returns the body's first line.
fn request(s: &mut TcpStream) -> std::io::Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}

fn connect(vip: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&vip, Duration::from_secs(10)).unwrap_or_else(|e| panic!("connect {vip}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s
}

/// A new connection, one request, close: which backend answered.
fn one_shot(vip: SocketAddr) -> String {
    let mut s = connect(vip);
    request(&mut s).unwrap_or_else(|e| panic!("request through {vip}: {e}"))
}

/// A free TCP port on `ip` (released before use; each test has its own addresses).
/// `lvsd --foreground` guarded by Drop.
struct Lvsd {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
}

impl Lvsd {
    fn start(args: &[&str]) -> Lvsd {
        let dir = TempDir::new();
        let socket = dir.join("lvsd.sock");
        let log = std::fs::File::create(dir.join("lvsd.log")).expect("log file");
        let mut child = Command::new(bin_dir().join("lvsd"))
            .arg("--foreground")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start lvsd (build it with cargo build --workspace --bins)");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut d = Lvsd { child, dir, socket };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l.contains("ready") => d,
            other => {
                let _ = d.child.kill();
                panic!("lvsd did not get ready ({other:?}); log:\n{}", d.log());
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lvsd.log")).unwrap_or_default()
    }

    fn adm(&self, args: &str) -> std::process::Output {
        self.adm_stdin(args, None)
    }

    fn adm_stdin(&self, args: &str, stdin: Option<&Path>) -> std::process::Output {
        let mut c = Command::new(bin_dir().join("lvsadm"));
        c.env("LVSD_SOCKET", &self.socket).args(args.split_whitespace());
        if let Some(p) = stdin {
            // run() gives the child /dev/null; feed rules through a shell redirection.
            let line = format!("exec {} {} < {}", bin_dir().join("lvsadm").display(), args, p.display());
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(line).env("LVSD_SOCKET", &self.socket);
            return run(&mut sh);
        }
        run(&mut c)
    }

    fn ok(&self, args: &str) -> String {
        let out = self.adm(args);
        out.assert_success(&format!("lvsadm {args}"));
        out.stdout_str()
    }

    /// `(server, weight, active, inactive)` rows of one service's `-L -n`.
    fn rows(&self, svc: &str) -> Vec<(SocketAddr, i32, u32, u32)> {
        let text = self.ok(&format!("-L -n {svc}"));
        lvs::admin::parse_listing(&text).into_iter().next().map(|(_, v)| v).unwrap_or_default()
    }
}

impl Drop for Lvsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- lvsd log ---\n{}", self.log());
        }
    }
}

/// Polls `f` until it is true or `limit` passes (then fails with `what`).
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

#[test]
fn rr_and_wrr_spread_connections_as_the_scheduler_says() {
    let port = free_port("127.0.5.10");
    let b: Vec<Backend> =
        ["A", "B", "C"].iter().enumerate().map(|(i, n)| Backend::start(n, &format!("127.0.5.{}", 11 + i), 0)).collect();
    let d = Lvsd::start(&[]);
    let vip: SocketAddr = format!("127.0.5.10:{port}").parse().unwrap();
    d.ok(&format!("-A -t {vip} -s rr"));
    for x in &b {
        d.ok(&format!("-a -t {vip} -r {} -m -w 1", x.addr));
    }
    let got: Vec<String> = (0..9).map(|_| one_shot(vip)).collect();
    assert_eq!(got.join(""), "ABCABCABC");
    // Weights 4,3,2 (rr ignores them), then switch to wrr at run time: a fresh wrr state
    // gives the kernel's sequence A A B A B C A B C.
    for (x, w) in b.iter().zip([4, 3, 2]) {
        d.ok(&format!("-e -t {vip} -r {} -w {w}", x.addr));
    }
    assert_eq!((0..3).map(|_| one_shot(vip)).collect::<String>(), "ABC");
    d.ok(&format!("-E -t {vip} -s wrr"));
    let got: Vec<String> = (0..9).map(|_| one_shot(vip)).collect();
    assert_eq!(got.join(""), "AABABCABC");
    // Stats count every connection.
    let stats = d.ok("-L -n --stats --exact");
    let line = stats.lines().find(|l| l.starts_with("TCP")).expect("service line");
    let conns: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(conns, 21, "{stats}");
}

#[test]
fn wlc_follows_active_connections_and_changes_keep_established_ones() {
    let port = free_port("127.0.6.10");
    let b: Vec<Backend> =
        ["A", "B"].iter().enumerate().map(|(i, n)| Backend::start(n, &format!("127.0.6.{}", 11 + i), 0)).collect();
    let d = Lvsd::start(&[]);
    let vip: SocketAddr = format!("127.0.6.10:{port}").parse().unwrap();
    d.ok(&format!("-A -t {vip}"));
    d.ok(&format!("-a -t {vip} -r {} -w 3", b[0].addr));
    d.ok(&format!("-a -t {vip} -r {} -w 1", b[1].addr));
    // Hold 8 connections open: wlc (256*active/weight, cross-multiplied) gives A B A A A B A A.
    let mut held = Vec::new();
    let mut seq = String::new();
    for _ in 0..8 {
        let mut s = connect(vip);
        seq.push_str(&request(&mut s).unwrap());
        held.push(s);
    }
    assert_eq!(seq, "ABAAABAA");
    let rows = d.rows(&format!("-t {vip}"));
    assert_eq!(rows.iter().map(|r| (r.2, r.3)).collect::<Vec<_>>(), vec![(6, 0), (2, 0)], "{rows:?}");
    // Quiesce A: new connections go to B; A's six connections keep working.
    d.ok(&format!("-e -t {vip} -r {} -w 0", b[0].addr));
    for _ in 0..3 {
        assert_eq!(one_shot(vip), "B");
    }
    // Delete B: no dropped connection either; new ones find nobody (A is quiesced).
    d.ok(&format!("-d -t {vip} -r {}", b[1].addr));
    for s in held.iter_mut() {
        let who = request(s).expect("an established connection survives the change");
        assert!(who == "A" || who == "B");
    }
    let mut s = connect(vip);
    assert!(request(&mut s).is_err(), "no real server should take a new connection");
    // Save, clear, restore: same table.
    let saved = d.ok("-S -n");
    assert_eq!(saved, format!("-A -t {vip} -s wlc\n-a -t {vip} -r {} -m -w 0\n", b[0].addr));
    let rules = d.dir.join("rules");
    std::fs::write(&rules, &saved).unwrap();
    d.ok("-C");
    assert_eq!(d.ok("-S -n"), "");
    d.adm_stdin("-R", Some(&rules)).assert_success("lvsadm -R");
    assert_eq!(d.ok("-S -n"), saved);
    // Closing the held connections: active → inactive (lingering), never negative.
    drop(held);
    wait_for(Duration::from_secs(20), "connections to close", || {
        d.rows(&format!("-t {vip}")).first().is_some_and(|r| r.2 == 0)
    });
    let c = d.ok("-L -n -c");
    assert!(c.contains("TIME_WAIT"), "{c}");
    // Usage errors exit 2, refused changes 1.
    assert_eq!(d.adm("-A -t nonsense").status.code(), Some(2));
    assert_eq!(d.adm(&format!("-A -t {vip}")).status.code(), Some(1));
}

#[test]
fn udp_sessions_are_scheduled_and_answered() {
    let port = free_port("127.0.7.10");
    let mut echo = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut addrs = Vec::new();
    for (i, n) in ["A", "B"].iter().enumerate() {
        let s = UdpSocket::bind((format!("127.0.7.{}", 11 + i).as_str(), 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        addrs.push(s.local_addr().unwrap());
        let (stop, n) = (stop.clone(), n.to_string());
        echo.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((len, from)) = s.recv_from(&mut buf) {
                    let mut reply = n.clone().into_bytes();
                    reply.extend_from_slice(&buf[..len]);
                    let _ = s.send_to(&reply, from);
                }
            }
        }));
    }
    let d = Lvsd::start(&[]);
    let vip: SocketAddr = format!("127.0.7.10:{port}").parse().unwrap();
    d.ok(&format!("-A -u {vip} -s rr"));
    for a in &addrs {
        d.ok(&format!("-a -u {vip} -r {a}"));
    }
    let mut seen = String::new();
    for i in 0..4 {
        let c = UdpSocket::bind("127.0.7.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Two datagrams per client: the session keeps them on one server.
        for k in 0..2 {
            c.send_to(format!("ping{i}{k}").as_bytes(), vip).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = c.recv_from(&mut buf).expect("reply through the forwarder");
            assert_eq!(from, vip, "replies come from the VIP");
            let r = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(r.ends_with(&format!("ping{i}{k}")), "{r}");
            if k == 0 {
                seen.push_str(&r[..1]);
            } else {
                assert_eq!(&r[..1], &seen[seen.len() - 1..]);
            }
        }
    }
    assert_eq!(seen, "ABAB");
    // UDP sessions count as inactive connections.
    let rows = d.rows(&format!("-u {vip}"));
    assert_eq!(rows.iter().map(|r| (r.2, r.3)).collect::<Vec<_>>(), vec![(0, 2), (0, 2)]);
    stop.store(true, Ordering::SeqCst);
    for t in echo {
        let _ = t.join();
    }
}

#[test]
fn health_checks_remove_a_dead_server_and_readmit_it_after_reentry() {
    let port = free_port("127.0.8.10");
    let mut b: Vec<Backend> =
        ["A", "B", "C"].iter().enumerate().map(|(i, n)| Backend::start(n, &format!("127.0.8.{}", 11 + i), 0)).collect();
    let dir = TempDir::new();
    let cf = dir.join("lvs.cf");
    let mut text = format!(
        "serial_no = 1\nkeepalive = 0.2\ndeadtime = 1\nvirtual web {{\n address = 127.0.8.10\n port = {port}\n scheduler = rr\n \
         send = \"GET / HTTP/1.0\\r\\n\\r\\n\"\n expect = \"HTTP/1.1 200\"\n timeout = 1\n reentry = 1\n"
    );
    for x in &b {
        text.push_str(&format!(
            " server {} {{\n  address = {}\n  port = {}\n  weight = 1\n }}\n",
            x.name,
            x.addr.ip(),
            x.addr.port()
        ));
    }
    text.push_str("}\n");
    std::fs::write(&cf, text).unwrap();
    let d = Lvsd::start(&["--config", cf.to_str().unwrap()]);
    let vip: SocketAddr = format!("127.0.8.10:{port}").parse().unwrap();
    let svc = format!("-t {vip}");
    assert_eq!(d.rows(&svc).len(), 3);
    let b_addr = b[1].addr;
    b[1].stop();
    wait_for(Duration::from_secs(15), "B to be removed", || d.rows(&svc).len() == 2);
    assert!(d.rows(&svc).iter().all(|r| r.0 != b_addr));
    for _ in 0..4 {
        assert_ne!(one_shot(vip), "B");
    }
    // B comes back on the same address; it returns after `reentry` of good checks.
    b[1] = Backend::start("B", &b_addr.ip().to_string(), b_addr.port());
    wait_for(Duration::from_secs(15), "B to be re-admitted", || d.rows(&svc).len() == 3);
    let got: Vec<String> = (0..6).map(|_| one_shot(vip)).collect();
    assert!(got.iter().any(|g| g == "B"), "{got:?}");
}

#[test]
fn quiesce_server_sets_weight_zero_and_program_checks_run() {
    let port = free_port("127.0.9.10");
    let mut b: Vec<Backend> =
        ["A", "B"].iter().enumerate().map(|(i, n)| Backend::start(n, &format!("127.0.9.{}", 11 + i), 0)).collect();
    let dir = TempDir::new();
    let cf = dir.join("lvs.cf");
    // send_program: %h is the server address; nc -z would do, but bash's /dev/tcp needs nothing.
    let flag = dir.join("b-down");
    let text = format!(
        "keepalive = 0.2\ndeadtime = 1\nvirtual web {{\n address = 127.0.9.10\n port = {port}\n scheduler = rr\n \
         quiesce_server = 1\n timeout = 2\n reentry = 0.5\n \
         send_program = \"test %h != {bip} -o ! -e {flag}\"\n \
         server A {{\n  address = {aip}\n  port = {aport}\n }}\n server B {{\n  address = {bip}\n  port = {bport}\n }}\n}}\n",
        aip = b[0].addr.ip(),
        aport = b[0].addr.port(),
        bip = b[1].addr.ip(),
        bport = b[1].addr.port(),
        flag = flag.display()
    );
    std::fs::write(&cf, text).unwrap();
    let d = Lvsd::start(&["--config", cf.to_str().unwrap()]);
    let svc = format!("-t 127.0.9.10:{port}");
    std::fs::write(&flag, "").unwrap();
    wait_for(Duration::from_secs(15), "B quiesced", || d.rows(&svc).iter().any(|r| r.0 == b[1].addr && r.1 == 0));
    assert_eq!(d.rows(&svc).len(), 2, "quiesce keeps the server in the table");
    std::fs::remove_file(&flag).unwrap();
    wait_for(Duration::from_secs(15), "B back at weight 1", || d.rows(&svc).iter().all(|r| r.1 == 1));
    b[1].stop();
}

#[test]
fn lvs_cf_errors_carry_line_numbers() {
    let dir = TempDir::new();
    let cf = dir.join("bad.cf");
    std::fs::write(&cf, "serial_no = 1\nvirtual web {\n address = 10.0.0.1\n port = 80\n scheduler = fastest\n}\n")
        .unwrap();
    let out = run(Command::new(bin_dir().join("lvsd")).arg("--config").arg(&cf).arg("--socket").arg(dir.join("s")));
    out.assert_code(1, "lvsd with a bad lvs.cf");
    let err = out.stderr_str();
    assert!(err.contains("bad.cf:5:") && err.contains("fastest"), "{err}");
    // pulse --check says the same, and accepts a good file.
    let out = run(Command::new(bin_dir().join("pulse")).arg("--config").arg(&cf).arg("--check"));
    out.assert_code(1, "pulse --check with a bad lvs.cf");
    assert!(out.stderr_str().contains("bad.cf:5:"), "{}", out.stderr_str());
    std::fs::write(
        &cf,
        "virtual web {\n address = 10.0.0.1\n port = 80\n server a {\n  address = 10.0.1.1\n  weight = x\n }\n}\n",
    )
    .unwrap();
    let out = run(Command::new(bin_dir().join("pulse")).arg("--config").arg(&cf).arg("--check"));
    out.assert_code(1, "pulse --check with a bad weight");
    assert!(out.stderr_str().contains("bad.cf:6: weight"), "{}", out.stderr_str());
    // The example configuration in the repository is valid.
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lvs/examples/lvs.cf");
    lvs::LvsConfig::load(&example).expect("the example lvs.cf parses");
    run(Command::new(bin_dir().join("pulse")).arg("--config").arg(&example).arg("--check"))
        .assert_success("pulse --check on the example");
}

/// One request on lvsd's control socket, as raw JSON lines: the reply line, parsed.
fn control(socket: &Path, request: &str) -> serde_json::Value {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect to lvsd's control socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(format!("{request}\n").as_bytes()).expect("send request");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("read reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

#[test]
fn sighup_applies_the_changed_config_and_keeps_established_connections() {
    let port = free_port("127.0.12.10");
    let b: Vec<Backend> = ["A", "B", "C"]
        .iter()
        .enumerate()
        .map(|(i, n)| Backend::start(n, &format!("127.0.12.{}", 11 + i), 0))
        .collect();
    let dir = TempDir::new();
    let cf = dir.join("lvs.cf");
    let write_cf = |sched: &str, servers: &[(&Backend, i32)]| {
        let mut text =
            format!("keepalive = 0.5\nvirtual web {{\n address = 127.0.12.10\n port = {port}\n scheduler = {sched}\n");
        for (x, w) in servers {
            text.push_str(&format!(
                " server {} {{\n  address = {}\n  port = {}\n  weight = {w}\n }}\n",
                x.name,
                x.addr.ip(),
                x.addr.port()
            ));
        }
        text.push_str("}\n");
        std::fs::write(&cf, text).unwrap();
    };
    write_cf("rr", &[(&b[0], 1), (&b[1], 1)]);
    let mut d = Lvsd::start(&["--config", cf.to_str().unwrap()]);
    let vip: SocketAddr = format!("127.0.12.10:{port}").parse().unwrap();
    let svc = format!("-t {vip}");
    let mut held = connect(vip);
    assert_eq!(request(&mut held).unwrap(), "A");
    let pid = d.child.id().to_string();
    let hup = || {
        run(Command::new("kill").args(["-HUP", &pid])).assert_success("kill -HUP");
    };
    // B goes, C comes, A's weight and the scheduler change.
    write_cf("wrr", &[(&b[0], 3), (&b[2], 1)]);
    hup();
    wait_for(Duration::from_secs(15), "the reload to reach the table", || {
        let rows = d.rows(&svc);
        rows.len() == 2 && rows[0].0 == b[0].addr && rows[0].1 == 3 && rows[1].0 == b[2].addr
    });
    assert!(d.ok(&format!("-L -n {svc}")).contains("wrr"));
    assert_eq!(request(&mut held).expect("the established connection survives the reload"), "A");
    // An invalid file changes nothing, and lvsd keeps running.
    std::fs::write(&cf, "virtual web {\n address = nowhere\n}\n").unwrap();
    hup();
    wait_for(Duration::from_secs(15), "the warning about the bad file", || d.log().contains("reload failed"));
    assert_eq!(d.rows(&svc).len(), 2);
    assert!(d.child.try_wait().expect("lvsd status").is_none(), "lvsd must survive SIGHUP");
    assert_eq!(request(&mut held).unwrap(), "A");
    // The control protocol, raw.
    let st = control(&d.socket, r#"{"op":"status"}"#);
    assert_eq!(st["ok"]["services"], 1, "{st}");
    assert_eq!(st["ok"]["reloads"], 1, "{st}");
    let r = control(&d.socket, r#"{"op":"reload"}"#);
    assert_eq!(r["error"]["kind"], "failed", "{r}");
    let r = control(&d.socket, &format!(r#"{{"op":"ipvsadm","args":["-d","-t","{vip}","-r","127.0.12.99"]}}"#));
    assert_eq!(r["error"]["kind"], "not_found", "{r}");
    let r = control(&d.socket, &format!(r#"{{"op":"ipvsadm","args":["-A","-t","{vip}"]}}"#));
    assert_eq!(r["error"]["kind"], "exists", "{r}");
    let r = control(&d.socket, r#"{"op":"ipvsadm","args":["-A","-t","nonsense"]}"#);
    assert_eq!(r["error"]["kind"], "bad_request", "{r}");
    let r = control(&d.socket, r#"{"argv":["-L","-n"],"stdin":""}"#);
    assert_eq!(r["error"]["kind"], "bad_request", "the old framing is refused: {r}");
    let r = control(&d.socket, r#"{"op":"ipvsadm","args":["-S","-n"]}"#);
    assert!(r["ok"]["output"].as_str().unwrap().contains("-A -t 127.0.12.10"), "{r}");
}

/// Deterministic pattern byte at `i` (not periodic at any small power of two).
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[test]
fn bulk_transfer_both_ways_is_intact() {
    const LEN: usize = 24 << 20;
    let backend = TcpListener::bind("127.0.10.11:0").unwrap();
    let baddr = backend.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let (mut s, _) = backend.accept().expect("accept from the director");
        // Read everything the client sent, checking it byte by byte.
        let mut buf = vec![0u8; 1 << 16];
        let (mut got, mut bad) = (0usize, 0usize);
        loop {
            let n = s.read(&mut buf).expect("read from the director");
            if n == 0 {
                break;
            }
            bad += buf[..n].iter().enumerate().filter(|(k, b)| **b != pattern(got + k)).count();
            got += n;
        }
        // Then send as much back.
        let data: Vec<u8> = (0..LEN).map(pattern).collect();
        s.write_all(&data).expect("write to the director");
        let _ = tx.send((got, bad));
    });
    let d = Lvsd::start(&[]);
    let port = free_port("127.0.10.10");
    let vip: SocketAddr = format!("127.0.10.10:{port}").parse().unwrap();
    d.ok(&format!("-A -t {vip} -s rr"));
    d.ok(&format!("-a -t {vip} -r {baddr}"));
    let mut c = connect(vip);
    let data: Vec<u8> = (0..LEN).map(pattern).collect();
    c.write_all(&data).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::with_capacity(LEN);
    c.read_to_end(&mut back).unwrap();
    let (got, bad) = rx.recv_timeout(Duration::from_secs(60)).expect("the backend finished");
    server.join().unwrap();
    assert_eq!((got, bad), (LEN, 0), "client → server bytes");
    assert_eq!(back.len(), LEN, "server → client length");
    assert!(back.iter().enumerate().all(|(i, b)| *b == pattern(i)), "server → client bytes");
    // Byte counters reached the table.
    let stats = d.ok("-L -n --stats --exact");
    let line = stats.lines().find(|l| l.starts_with("TCP")).expect("service line");
    let f: Vec<u64> = line.split_whitespace().skip(2).map(|x| x.parse().unwrap()).collect();
    assert_eq!((f[0], f[3], f[4]), (1, LEN as u64, LEN as u64), "{stats}");
}

#[test]
fn http_status_and_weight_program_checks() {
    let b: Vec<Backend> =
        ["A", "B"].iter().enumerate().map(|(i, n)| Backend::start(n, &format!("127.0.11.{}", 11 + i), 0)).collect();
    let dir = TempDir::new();
    let (p1, p2) = (free_port("127.0.11.10"), free_port("127.0.11.10"));
    let wfile = dir.join("weight");
    std::fs::write(&wfile, "103").unwrap();
    let mut text = format!(
        "keepalive = 0.2\ndeadtime = 1\n\
         virtual ok {{\n address = 127.0.11.10\n port = {p1}\n send = \"GET / HTTP/1.0\\r\\n\\r\\n\"\n \
         expect_status = 200\n timeout = 1\n reentry = 0.5\n"
    );
    for x in &b {
        text.push_str(&format!(
            " server {} {{\n  address = {}\n  port = {}\n }}\n",
            x.name,
            x.addr.ip(),
            x.addr.port()
        ));
    }
    text.push_str(&format!(
        "}}\nvirtual weighted {{\n address = 127.0.11.10\n port = {p2}\n timeout = 1\n reentry = 0.5\n \
         weight_program = \"exit $(cat {})\"\n",
        wfile.display()
    ));
    for x in &b {
        text.push_str(&format!(
            " server {} {{\n  address = {}\n  port = {}\n }}\n",
            x.name,
            x.addr.ip(),
            x.addr.port()
        ));
    }
    // The same servers checked for a 404 they never send: both fail.
    let p3 = free_port("127.0.11.10");
    text.push_str(&format!(
        "}}\nvirtual wrong {{\n address = 127.0.11.10\n port = {p3}\n send = \"GET / HTTP/1.0\\r\\n\\r\\n\"\n \
         expect_status = 404\n timeout = 1\n"
    ));
    for x in &b {
        text.push_str(&format!(
            " server {} {{\n  address = {}\n  port = {}\n }}\n",
            x.name,
            x.addr.ip(),
            x.addr.port()
        ));
    }
    text.push_str("}\n");
    let cf = dir.join("lvs.cf");
    std::fs::write(&cf, text).unwrap();
    let d = Lvsd::start(&["--config", cf.to_str().unwrap()]);
    wait_for(Duration::from_secs(15), "servers failing the 404 check removed", || {
        d.rows(&format!("-t 127.0.11.10:{p3}")).is_empty()
    });
    let (ok, weighted) = (format!("-t 127.0.11.10:{p1}"), format!("-t 127.0.11.10:{p2}"));
    // The program's exit status 103 sets weight 3.
    wait_for(Duration::from_secs(15), "weights from the program", || {
        d.rows(&weighted).iter().map(|r| r.1).collect::<Vec<_>>() == [3, 3]
    });
    // HTTP 200 answers keep both servers of the other service.
    assert_eq!(d.rows(&ok).len(), 2);
    // Exit status 1: failed, removed.
    std::fs::write(&wfile, "1").unwrap();
    wait_for(Duration::from_secs(15), "servers removed", || d.rows(&weighted).is_empty());
    // Back to 100 + 5: re-admitted with weight 5 after reentry.
    std::fs::write(&wfile, "105").unwrap();
    wait_for(Duration::from_secs(15), "servers back at weight 5", || {
        d.rows(&weighted).iter().map(|r| r.1).collect::<Vec<_>>() == [5, 5]
    });
    assert_eq!(d.rows(&ok).len(), 2);
}
