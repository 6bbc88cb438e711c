//! End to end in network namespaces: a client, two directors running pulse, three real
//! servers running a small HTTP server, all on one bridge in 198.18.0.0/24. The VIP
//! 198.18.0.50 lives on the active director. We check the spread, then power the active
//! director off and measure how long the client's requests fail before the backup serves
//! them; the old primary then comes back and stays standby.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use gnbd_tests::{bin_dir, require_tool, run, run_timeout, OutputExt, TempDir};

const VIP: &str = "198.18.0.50";

/// Namespaces, a bridge and processes, all removed on Drop.
struct Topology {
    prefix: String,
    names: Vec<String>,
    children: Vec<Child>,
}

impl Topology {
    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }

    fn ip(&self, args: &str) {
        let out = run(Command::new("ip").args(args.split_whitespace()));
        out.assert_success(&format!("ip {args}"));
    }

    fn exec(&self, node: &str, cmd: &str) -> std::process::Output {
        run_timeout(
            Command::new("ip").args(["netns", "exec", &self.ns(node), "sh", "-c", cmd]),
            Duration::from_secs(30),
        )
    }

    fn new(nodes: &[(&str, &str)]) -> Topology {
        let prefix = format!("lvsp{}-", std::process::id());
        let mut t = Topology { prefix, names: Vec::new(), children: Vec::new() };
        let sw = t.ns("sw");
        t.ip(&format!("netns add {sw}"));
        t.names.push(sw.clone());
        t.ip(&format!("-n {sw} link add br0 type bridge"));
        t.ip(&format!("-n {sw} link set br0 up"));
        for (i, (node, addr)) in nodes.iter().enumerate() {
            let ns = t.ns(node);
            t.ip(&format!("netns add {ns}"));
            t.names.push(ns.clone());
            t.ip(&format!("-n {sw} link add p{i} type veth peer name eth0 netns {ns}"));
            t.ip(&format!("-n {sw} link set p{i} master br0 up"));
            t.ip(&format!("-n {ns} link set lo up"));
            t.ip(&format!("-n {ns} addr add {addr}/24 dev eth0"));
            t.ip(&format!("-n {ns} link set eth0 up"));
        }
        t
    }

    /// Starts `cmd` inside `node`; waits for a line containing `ready` when asked.
    fn spawn(&mut self, node: &str, args: &[&str], log: &Path, ready: bool) -> usize {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(node)]).args(args);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(log).expect("log"));
        let mut child = c.spawn().unwrap_or_else(|e| panic!("start {args:?}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("ready") {
                    let _ = tx.send(());
                }
                line.clear();
            }
        });
        self.children.push(child);
        if ready && rx.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!("{args:?} in {node} did not get ready:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        self.children.len() - 1
    }

    /// Kills every process in a namespace (the node loses power).
    fn kill_all(&self, node: &str) {
        let out = run(Command::new("ip").args(["netns", "pids", &self.ns(node)]));
        for pid in out.stdout_str().split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in self.names.clone() {
            let out = Command::new("ip").args(["netns", "pids", &n]).output();
            if let Ok(out) = out {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// One request from the client namespace; the server's name, or None.
fn get(t: &Topology, max_time: &str) -> Option<String> {
    let out = t.exec("client", &format!("curl -s --connect-timeout {max_time} --max-time {max_time} http://{VIP}/"));
    out.status.success().then(|| out.stdout_str().trim().to_string()).filter(|s| !s.is_empty())
}

fn has_vip(t: &Topology, node: &str) -> bool {
    t.exec(node, "ip -4 addr show dev eth0").stdout_str().contains(&format!("{VIP}/32"))
}

#[test]
fn director_pair_fails_over_to_the_backup() {
    for tool in ["ip", "curl", "arping", "python3"] {
        require_tool(tool);
    }
    let dir = TempDir::new();
    let nodes = [
        ("client", "198.18.0.100"),
        ("dir1", "198.18.0.1"),
        ("dir2", "198.18.0.2"),
        ("rs1", "198.18.0.11"),
        ("rs2", "198.18.0.12"),
        ("rs3", "198.18.0.13"),
    ];
    let mut t = Topology::new(&nodes);
    for (i, rs) in ["rs1", "rs2", "rs3"].iter().enumerate() {
        let root = dir.join(rs);
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("index.html"), format!("{rs}\n")).unwrap();
        let log = dir.join(format!("{rs}.log"));
        let addr = format!("198.18.0.{}", 11 + i);
        t.spawn(
            rs,
            &["/usr/bin/python3", "-m", "http.server", "80", "--bind", &addr, "--directory", root.to_str().unwrap()],
            &log,
            false,
        );
    }
    // Wait until the three real servers answer, so that the first health checks pass.
    for i in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !t.exec("client", &format!("curl -s -m 1 http://198.18.0.1{i}/")).status.success() {
            assert!(Instant::now() < deadline, "real server rs{i} never answered");
            thread::sleep(Duration::from_millis(50));
        }
    }
    let cf = dir.join("lvs.cf");
    let mut text = String::from(
        "serial_no = 7\nprimary = 198.18.0.1\nbackup = 198.18.0.2\nbackup_active = 1\nheartbeat_port = 539\n\
         keepalive = 0.25\ndeadtime = 2\nnetwork = nat\n\
         virtual web {\n address = 198.18.0.50 eth0:1\n port = 80\n protocol = tcp\n scheduler = rr\n \
         send = \"GET / HTTP/1.0\\r\\n\\r\\n\"\n expect = \"HTTP/1.0 200\"\n timeout = 1\n reentry = 1\n",
    );
    for i in 1..=3 {
        text.push_str(&format!(" server rs{i} {{\n  address = 198.18.0.1{i}\n  weight = 1\n }}\n"));
    }
    text.push_str("}\n");
    std::fs::write(&cf, text).unwrap();
    let pulse = bin_dir().join("pulse");
    let lvsd = bin_dir().join("lvsd");
    run(Command::new(&pulse).arg("--config").arg(&cf).arg("--check")).assert_success("pulse --check");
    let start_pulse = |t: &mut Topology, node: &str| {
        let sock = dir.join(format!("{node}.sock"));
        let log = dir.join(format!("pulse-{node}-{}.log", t.children.len()));
        let args = [
            pulse.to_str().unwrap(),
            "--foreground",
            "--config",
            cf.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "--lvsd",
            lvsd.to_str().unwrap(),
        ];
        t.spawn(node, &args, &log, true);
    };
    start_pulse(&mut t, "dir1");
    start_pulse(&mut t, "dir2");
    // The primary takes the VIP; requests are spread round robin over the three servers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&t, "1").is_none() {
        assert!(Instant::now() < deadline, "the VIP never answered");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(has_vip(&t, "dir1") && !has_vip(&t, "dir2"));
    // Round robin: any three consecutive requests reach the three servers, in a fixed cycle.
    let seen: Vec<String> = (0..6).filter_map(|_| get(&t, "2")).collect();
    assert_eq!(seen.len(), 6, "{seen:?}");
    let mut cycle = seen[..3].to_vec();
    cycle.sort();
    assert_eq!(cycle, ["rs1", "rs2", "rs3"], "{seen:?}");
    assert_eq!(seen[..3], seen[3..], "{seen:?}");

    // Power off dir1: every process dies, its link goes down, its VIP is gone with it.
    let last_ok = Instant::now();
    t.kill_all("dir1");
    t.ip(&format!("-n {} link set p1 down", t.ns("sw")));
    t.ip(&format!("-n {} addr flush dev eth0", t.ns("dir1")));
    let first_ok = loop {
        // Short attempts, back to back: a SYN sent to the dead director's MAC would only be
        // retried after TCP's 1 s initial timeout, so each attempt starts afresh.
        if get(&t, "0.1").is_some() {
            break Instant::now();
        }
        assert!(last_ok.elapsed() < Duration::from_secs(30), "the backup never served the VIP");
    };
    let gap = first_ok - last_ok;
    eprintln!("failover gap: {} ms (deadtime 2000 ms, keepalive 250 ms)", gap.as_millis());
    assert!(has_vip(&t, "dir2"));
    let names: Vec<String> = (0..3).filter_map(|_| get(&t, "2")).collect();
    assert_eq!(names.len(), 3, "every request after failover succeeds: {names:?}");

    // dir1 boots again: it hears the active backup and stays standby.
    t.ip(&format!("-n {} addr add 198.18.0.1/24 dev eth0", t.ns("dir1")));
    t.ip(&format!("-n {} link set p1 up", t.ns("sw")));
    start_pulse(&mut t, "dir1");
    // Longer than a deadtime: a returning director that wrongly took over would have by now.
    thread::sleep(Duration::from_millis(3000));
    assert!(!has_vip(&t, "dir1"), "the returning primary must stay standby");
    assert!(has_vip(&t, "dir2"));
    assert!(get(&t, "2").is_some());
}

/// Whether the lvsd behind `sock` answers.
fn director_up(sock: &Path) -> bool {
    run(Command::new(bin_dir().join("lvsadm")).env("LVSD_SOCKET", sock).args(["-L", "-n"])).status.success()
}

#[test]
fn told_to_take_over_the_standby_wins_and_the_active_steps_down() {
    // Two pulses on loopback addresses (no VIP devices: nothing to bring up), same port.
    let dir = TempDir::new();
    let hb = std::net::UdpSocket::bind("127.0.13.1:0").unwrap().local_addr().unwrap().port();
    let cf = dir.join("lvs.cf");
    std::fs::write(
        &cf,
        format!(
            "primary = 127.0.13.1\nbackup = 127.0.13.2\nheartbeat_port = {hb}\nkeepalive = 0.25\ndeadtime = 2\n\
             virtual web {{\n address = 127.0.13.10\n port = {}\n scheduler = rr\n}}\n",
            hb.wrapping_add(1).max(1024)
        ),
    )
    .unwrap();
    let pulse = bin_dir().join("pulse");
    let lvsd = bin_dir().join("lvsd");
    let mut children = Guard(Vec::new());
    let mut start = |role: &str| -> (u32, std::path::PathBuf) {
        let sock = dir.join(format!("{role}.sock"));
        let mut c = Command::new(&pulse)
            .args(["--foreground", "--role", role, "--config"])
            .arg(&cf)
            .arg("--socket")
            .arg(&sock)
            .arg("--lvsd")
            .arg(&lvsd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(format!("{role}.log"))).unwrap())
            .spawn()
            .expect("start pulse");
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("ready"), "{line}");
        let pid = c.id();
        children.0.push(c);
        (pid, sock)
    };
    let (primary_pid, primary) = start("primary");
    let (backup_pid, backup) = start("backup");
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(50));
        }
    };
    wait("the primary to become active", &|| director_up(&primary));
    assert!(!director_up(&backup));
    // SIGHUP: pulse rereads lvs.cf and passes the reload on to its lvsd; nobody exits.
    let text = std::fs::read_to_string(&cf).unwrap().replace("scheduler = rr", "scheduler = wrr");
    std::fs::write(&cf, text).unwrap();
    run(Command::new("kill").args(["-HUP", &primary_pid.to_string()])).assert_success("kill -HUP");
    let listing =
        || run(Command::new(bin_dir().join("lvsadm")).env("LVSD_SOCKET", &primary).args(["-L", "-n"])).stdout_str();
    wait("lvsd to apply the reloaded lvs.cf", &|| listing().contains(" wrr"));
    assert!(director_up(&primary), "the active director survives SIGHUP");
    // SIGUSR1: the backup takes over with a higher generation; the primary steps down.
    run(Command::new("kill").args(["-USR1", &backup_pid.to_string()])).assert_success("kill -USR1");
    wait("the backup to become active", &|| director_up(&backup));
    wait("the primary to step down", &|| !director_up(&primary));
}

struct Guard(Vec<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        for c in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
