//! clvm on three nodes: a dlm_controld mesh on 127.0.0.1-3, one clvmd per node, and one
//! clustered VG on two exports of one gnbd_serv, reached by every command through the client
//! library (`gnbd://`). Nodes create, extend and remove LVs in the VG at the same time: every
//! change lands, every commit starts from the seqno the previous one wrote (none is lost or
//! made twice), every node lists the same metadata, and stock lvm2's `vgck` is clean on the
//! result (read through loop devices over the export files). A command that holds the VG lock
//! on one node blocks the others until its connection goes away.

use gnbd_tests::{bin_dir, gnbd_export_cmd, require_tool, run, run_timeout, DlmDaemon, OutputExt, Server, TempDir};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const EXPORT_SIZE: u64 = 128 << 20;
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// One clvmd, stopped on drop (its log printed if the test fails).
struct Clvmd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Clvmd {
    fn start(dir: &Path, i: usize, dlm: &Path) -> Clvmd {
        let socket = dir.join(format!("clvmd{i}.sock"));
        let log = dir.join(format!("clvmd{i}.log"));
        let mut child = Command::new(bin_dir().join("clvmd"))
            .arg("--dlm-socket")
            .arg(dlm)
            .arg("--socket")
            .arg(&socket)
            .arg("--log-level")
            .arg("debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("clvmd runs (cargo build --workspace --bins)");
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        assert!(line.starts_with("clvmd: ready mode dlm"), "clvmd {i} did not get ready: {line:?}");
        Clvmd { child, socket, log }
    }
}

impl Drop for Clvmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {}\n{}", self.log.display(), std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

struct Cluster {
    // Dropped in this order: clvmds, then the DLM, then the server.
    clvmds: Vec<Clvmd>,
    _dlms: Vec<DlmDaemon>,
    server: Server,
    devices: String,
    files: Vec<PathBuf>,
    dir: TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let server = Server::start();
        let mut files = Vec::new();
        let mut uris = Vec::new();
        for k in 0..2 {
            let f = server.path(format!("pv{k}.img"));
            std::fs::File::create(&f).and_then(|h| h.set_len(EXPORT_SIZE)).expect("export file");
            run(gnbd_export_cmd(server.state_dir()).args(["-e", &format!("pv{k}"), "-d"]).arg(&f))
                .assert_success("gnbd_export");
            uris.push(server.uri(&format!("pv{k}")).replace("nbd://", "gnbd://"));
            files.push(f);
        }
        let dir = TempDir::new();
        let dlms = DlmDaemon::start_mesh(dir.path(), NODES as u32);
        let clvmds = (0..NODES).map(|i| Clvmd::start(dir.path(), i, &dlms[i].socket)).collect();
        Cluster { clvmds, _dlms: dlms, server, devices: uris.join(","), files, dir }
    }

    fn cmd(&self, node: usize, args: &[&str]) -> Command {
        let mut c = Command::new(bin_dir().join("clvm"));
        c.args(args)
            .arg("--devices")
            .arg(&self.devices)
            .arg("--clvmd-socket")
            .arg(&self.clvmds[node].socket)
            .env("LVM_SYSTEM_DIR", self.dir.join(format!("etc{node}")));
        c
    }

    fn clvm(&self, node: usize, args: &[&str]) -> Output {
        run_timeout(&mut self.cmd(node, args), CMD_TIMEOUT)
    }

    /// Every seqno the nodes archived before a change (each change archives the text it
    /// started from).
    fn archived_seqnos(&self, vg: &str) -> Vec<u64> {
        let mut out = Vec::new();
        for n in 0..NODES {
            let Ok(rd) = std::fs::read_dir(self.dir.join(format!("etc{n}/archive"))) else { continue };
            for e in rd.flatten() {
                let text = std::fs::read(e.path()).expect("archive file");
                let root = clvm::text::parse(&text).expect("archive parses");
                let g = clvm::vg::VolumeGroup::from_root(&root).expect("archive holds a VG");
                if g.name == vg {
                    out.push(g.seqno);
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// The VG section as node `n` reads it (vgcfgbackup, minus the header lines that name
    /// the command and time).
    fn listed(&self, n: usize, vg: &str) -> String {
        let file = self.dir.join(format!("listed{n}.vg"));
        self.clvm(n, &["vgcfgbackup", "-f", file.to_str().expect("utf-8 path"), vg]).assert_success("vgcfgbackup");
        let root = clvm::text::parse(&std::fs::read(&file).expect("backup file")).expect("backup parses");
        let g = clvm::vg::VolumeGroup::from_root(&root).expect("backup holds the VG");
        clvm::text::write(&{
            let mut s = clvm::text::Section::new("");
            s.nodes.push(clvm::text::Node::Section(g.to_section()));
            s
        })
    }
}

#[test]
fn three_nodes_change_one_clustered_vg_at_once() {
    let c = Cluster::start();
    let vg = "shared";
    let devs: Vec<String> = c.devices.split(',').map(str::to_owned).collect();
    let out = c.clvm(0, &["vgcreate", vg, &devs[0], &devs[1]]);
    out.assert_success("vgcreate");
    // Clustered by default while clvmd runs.
    let listed = c.listed(1, vg);
    assert!(listed.contains("CLUSTERED"), "VG made while clvmd runs is clustered:\n{listed}");

    // Each node: six rounds of create, extend, and every other round a remove.
    let changes = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for n in 0..NODES {
            let (c, changes) = (&c, &changes);
            s.spawn(move || {
                for k in 0..6 {
                    let name = format!("n{n}k{k}");
                    let stripes = if k % 2 == 0 { "1" } else { "2" };
                    c.clvm(n, &["lvcreate", "-L", "8M", "-i", stripes, "-n", &name, vg]).assert_success("lvcreate");
                    c.clvm(n, &["lvextend", "-L", "+8M", &format!("{vg}/{name}")]).assert_success("lvextend");
                    changes.fetch_add(2, std::sync::atomic::Ordering::SeqCst);
                    if k % 2 == 1 {
                        c.clvm(n, &["lvremove", "-f", &format!("{vg}/n{n}k{}", k - 1)]).assert_success("lvremove");
                        changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let changes = changes.load(std::sync::atomic::Ordering::SeqCst) as u64;

    // Every node lists the same metadata, with every change in it.
    let first = c.listed(0, vg);
    for n in 1..NODES {
        assert_eq!(c.listed(n, vg), first, "node {n} lists other metadata than node 0");
    }
    let root = clvm::text::parse(first.as_bytes()).expect("listing parses");
    let g = clvm::vg::VolumeGroup::from_root(&root).expect("VG");
    assert_eq!(g.seqno, 1 + changes, "seqno counts every change exactly once");
    for n in 0..NODES {
        for k in 0..6 {
            let lv = g.lv(&format!("n{n}k{k}"));
            if k % 2 == 0 {
                assert!(lv.is_none(), "n{n}k{k} was removed");
            } else {
                assert_eq!(lv.map(|l| l.extent_count()), Some(4), "n{n}k{k} created and extended to 16 MiB");
            }
        }
    }
    // Each commit started from the one before: the archived seqnos are 1..seqno, each once.
    let archived = c.archived_seqnos(vg);
    assert_eq!(archived, (1..g.seqno).collect::<Vec<_>>(), "every change started from the latest seqno");
    assert!(clvm::cli::vg_check(&g).is_empty(), "allocations consistent: {:?}", clvm::cli::vg_check(&g));

    // Stock lvm2 agrees, through loop devices over copies of the export files. Stock 2.03
    // refuses clustered VGs outright ("Cannot access clustered VG"; clvmd support is gone
    // from it), so the copies are made local first with our vgchange -c n (one more commit).
    require_tool("vgck");
    let copies: Vec<PathBuf> = c
        .files
        .iter()
        .enumerate()
        .map(|(k, f)| {
            let to = c.dir.join(format!("copy{k}.img"));
            std::fs::copy(f, &to).expect("copy export file");
            to
        })
        .collect();
    let list: Vec<&str> = copies.iter().map(|p| p.to_str().expect("utf-8 path")).collect();
    run_timeout(
        Command::new(bin_dir().join("clvm"))
            .args(["vgchange", "--nolocking", "-c", "n", "--devices", &list.join(","), vg])
            .env("LVM_SYSTEM_DIR", c.dir.join("etc-copies")),
        CMD_TIMEOUT,
    )
    .assert_success("vgchange -c n on the copies");
    let loops: Vec<String> = copies
        .iter()
        .map(|f| {
            let o = run(Command::new("losetup").args(["-f", "--show", "-r"]).arg(f));
            o.assert_success("losetup");
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        })
        .collect();
    let stock = run(Command::new("vgck")
        .args(["--config", "global/activation=0", "--devices", &loops.join(","), vg])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1"));
    let lvs = run(Command::new("lvs")
        .args(["--config", "global/activation=0", "--devices", &loops.join(","), "--noheadings", "-o", "lv_name", vg])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1"));
    for l in &loops {
        let _ = run(Command::new("losetup").args(["-d", l]));
    }
    stock.assert_success("stock vgck");
    lvs.assert_success("stock lvs");
    let names: Vec<&str> = std::str::from_utf8(&lvs.stdout).unwrap_or("").split_whitespace().collect();
    assert_eq!(names.len(), NODES * 3, "stock lvs lists {names:?}");
    let _ = &c.server;
}

#[test]
fn a_vg_lock_held_on_one_node_blocks_the_others_until_its_holder_goes() {
    let c = Cluster::start();
    let vg = "held";
    let devs: Vec<String> = c.devices.split(',').map(str::to_owned).collect();
    c.clvm(0, &["vgcreate", vg, &devs[0], &devs[1]]).assert_success("vgcreate");

    // Node 1 holds the VG lock, as a command in the middle of a change would.
    let mut holder = std::os::unix::net::UnixStream::connect(&c.clvmds[1].socket).expect("connect clvmd 1");
    holder.write_all(b"{\"op\":\"lock\",\"scope\":\"vg:held\",\"mode\":\"ex\"}\n").expect("send");
    let mut line = String::new();
    BufReader::new(holder.try_clone().expect("clone")).read_line(&mut line).expect("reply");
    assert!(line.starts_with("{\"ok\""), "lock granted: {line}");

    // Node 2's lvcreate waits.
    let mut waiting = c
        .cmd(2, &["lvcreate", "-L", "4M", "-n", "late", vg])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(waiting.try_wait().expect("poll").is_none(), "lvcreate on node 2 went ahead while node 1 held the VG lock");

    // The holder goes away (a command killed mid-change): its lock is released.
    drop(holder);
    let deadline = Instant::now() + CMD_TIMEOUT;
    let status = loop {
        if let Some(s) = waiting.try_wait().expect("poll") {
            break s;
        }
        assert!(Instant::now() < deadline, "lvcreate still blocked after the holder went away");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "lvcreate after the release: {status:?}");
    let listed = c.listed(0, vg);
    assert!(listed.contains("late {"), "the waiting change landed:\n{listed}");
}
