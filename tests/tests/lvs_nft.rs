//! The nftables fast path, in a network namespace of its own (its nftables tables and
//! loopback are private): lvsd --nft DNATs a wrr service in the kernel; a weight change
//! re-programs the table atomically; the proxy never sees those connections.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use gnbd_tests::{bin_dir, require_tool, run, OutputExt, TempDir};

struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("lvsnft{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name])).assert_success("ip netns add");
        let ns = Netns { name, children: Vec::new() };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"])).assert_success("lo up");
        ns
    }

    fn sh(&self, cmd: &str) -> std::process::Output {
        run(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", cmd]))
    }

    fn spawn(&mut self, args: &[&str], log: &std::path::Path) -> mpsc::Receiver<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("spawn");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let mut r = BufReader::new(out);
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("ready") {
                    let _ = tx.send(());
                }
                line.clear();
            }
        });
        self.children.push(child);
        rx
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[test]
fn nftables_fast_path_spreads_in_the_kernel() {
    for tool in ["ip", "nft", "curl", "python3"] {
        require_tool(tool);
    }
    let dir = TempDir::new();
    let mut ns = Netns::new();
    for (i, name) in ["A", "B", "C"].iter().enumerate() {
        let root = dir.join(name);
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("index.html"), name).unwrap();
        let addr = format!("127.0.0.{}", 11 + i);
        ns.spawn(
            &["/usr/bin/python3", "-m", "http.server", "8080", "--bind", &addr, "--directory", root.to_str().unwrap()],
            &dir.join(format!("{name}.log")),
        );
    }
    for i in 11..=13 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ns.sh(&format!("curl -s -m 1 http://127.0.0.{i}:8080/")).status.success() {
            assert!(Instant::now() < deadline, "backend 127.0.0.{i} never answered");
            thread::sleep(Duration::from_millis(50));
        }
    }
    let rules = dir.join("rules");
    std::fs::write(
        &rules,
        "-A -t 127.0.0.10:80 -s wrr\n-a -t 127.0.0.10:80 -r 127.0.0.11:8080 -w 2\n\
         -a -t 127.0.0.10:80 -r 127.0.0.12:8080 -w 1\n-a -t 127.0.0.10:80 -r 127.0.0.13:8080 -w 1\n",
    )
    .unwrap();
    let sock = dir.join("lvsd.sock");
    let lvsd = bin_dir().join("lvsd");
    let ready = ns.spawn(
        &[
            lvsd.to_str().unwrap(),
            "--foreground",
            "--nft",
            "--rules",
            rules.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
        ],
        &dir.join("lvsd.log"),
    );
    ready.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
        panic!("lvsd did not start:\n{}", std::fs::read_to_string(dir.join("lvsd.log")).unwrap_or_default())
    });
    let table = ns.sh("nft list table ip lvs");
    table.assert_success("nft list table ip lvs");
    assert!(table.stdout_str().contains("numgen inc mod 4"), "{}", table.stdout_str());
    let get = |n: usize| -> String {
        (0..n)
            .map(|_| {
                let out = ns.sh("curl -s -m 5 http://127.0.0.10/");
                out.assert_success("curl through the kernel path");
                out.stdout_str()
            })
            .collect()
    };
    // The kernel's wrr cycle for weights 2,1,1: A A B C.
    assert_eq!(get(8), "AABCAABC");
    let adm = format!("LVSD_SOCKET={} {}", sock.display(), bin_dir().join("lvsadm").display());
    // The proxy saw none of them.
    let stats = ns.sh(&format!("{adm} -L -n --stats --exact"));
    stats.assert_success("lvsadm --stats");
    let line = stats.stdout_str().lines().find(|l| l.starts_with("TCP")).unwrap_or_default().to_string();
    assert_eq!(line.split_whitespace().nth(2), Some("0"), "{}", stats.stdout_str());
    // Quiesce A: the table is replaced at once (lvsadm returns after nft ran).
    ns.sh(&format!("{adm} -e -t 127.0.0.10:80 -r 127.0.0.11:8080 -w 0")).assert_success("lvsadm -e");
    let got = get(4);
    assert!(!got.contains('A') && got.len() == 4, "{got}");
    // lvsd removes its table when it stops.
    for c in &mut ns.children {
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    }
    let _ = ns.children.pop().map(|mut c| c.wait());
    let deadline = Instant::now() + Duration::from_secs(20);
    while ns.sh("nft list table ip lvs").status.success() {
        assert!(Instant::now() < deadline, "the lvs table outlived lvsd");
        thread::sleep(Duration::from_millis(50));
    }
}
