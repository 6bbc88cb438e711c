//! The cluster filesystem on the real cluster stack: three nodes in network and mount
//! namespaces (corosync and fenced through `cman_tool join`, `dlm_controld` in cluster mode),
//! a fourth host running `gnbd_serv` with ONE export, and every node mounting that export as
//! `gnbd://STORAGE/shared` (lock_dlm, one journal per node) at `/run/gfs` in its own mount
//! namespace. Fencing goes through `fence_gnbd` against the storage host.
//!
//! - coherence: changes made on one node are seen on the others as soon as the command
//!   returns; concurrent creates in one directory from three nodes; clean unmount, then
//!   `gfs_fsck -n` finds nothing; concurrent O_APPEND appends from two nodes lose nothing
//!   (ignored for now: records are lost, see the test);
//! - recovery: node 3 runs an fsync-ed metadata workload and is SIGKILLed entirely; it is
//!   fenced through fence_gnbd, a survivor replays its journal, every step node 3 logged
//!   (outside the filesystem, after its fsync) is there, and nodes 1 and 2 keep working;
//! - locks: fcntl byte-range locks and flocks taken on one node exclude the others.
//!
//! `GFS_NSCLUSTER_VIA=import` runs the same tests with every node mounting its own
//! `gnbd_import` of the export instead of `gnbd://`.
//!
//! Needs root (namespaces, FUSE), corosync and python3 (scripts/deps.sh installs them).

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use gnbd_tests::cluster::control;
use gnbd_tests::corosync::{fenced_by, node_addr, Nodes, StorageHost};
use gnbd_tests::{gnbd_export_cmd, require_tool, run_timeout, OutputExt};

const TOKEN_MS: u32 = 1000;
const MEMBERS: usize = 3;
/// Index of the storage host (after the three members).
const STORAGE: usize = 3;
/// Where every node mounts the filesystem (inside its private /run).
const MNT: &str = "/run/gfs";
/// The node's private log directory as seen inside its mount namespace.
const NODE_LOG: &str = "/var/log/cluster";

/// How the nodes reach the export.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    /// `mount_gfs gnbd://STORAGE/shared`: the client library inside the mount server.
    Url,
    /// `gnbd_import` on each node, and `mount_gfs` on the import's file (its FUSE file,
    /// direct I/O, not the loop device: a loop device's page cache would be stale when
    /// another node writes).
    Import,
}

/// [`Via::Url`] unless `GFS_NSCLUSTER_VIA=import` asks for [`Via::Import`] (mkfs and fsck
/// use `gnbd://` either way).
fn via() -> Via {
    match std::env::var("GFS_NSCLUSTER_VIA").as_deref() {
        Ok("import") => Via::Import,
        _ => Via::Url,
    }
}

/// `gnbd_import`'s directories inside a node (its private /run).
const IMPORT_DIRS: [&str; 4] = ["--state-dir", "/run/gnbd", "--dev-dir", "/run/gnbd/dev"];
/// The file `gnbd_import` serves the export as (FUSE, direct I/O).
const IMPORT_FILE: &str = "/run/gnbd/imports/shared.mnt/device";

/// The process names of every mount server (`mount_gfs -f`) of node `i`.
fn mount_servers(nodes: &Nodes, i: usize) -> Vec<String> {
    nodes
        .pids(i)
        .into_iter()
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "mount_gfs"))
        .collect()
}

/// Polls `pred` every 100 ms for at most `secs` seconds; panics with `what()` on timeout.
fn wait_until(secs: u64, mut pred: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out after {secs} s: {}", what());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three members, a storage host with one export, dlm_controld everywhere, the filesystem
/// made and mounted on every member. Drop unmounts what is still mounted (lazily), stops
/// the daemons and the server, then the harness tears the namespaces down.
struct Cluster {
    dlms: Vec<Child>,
    mounted: [bool; MEMBERS],
    /// Nodes with a `gnbd_import` of the export ([`Via::Import`]).
    imported: [bool; MEMBERS],
    /// Background workloads started with [`Cluster::spawn`]; killed on drop.
    jobs: Vec<Child>,
    /// `gnbd://STORAGE/shared`.
    dev: String,
    /// Stopped (on drop) after the daemons, before the namespaces go.
    storage: StorageHost,
    /// Dropped last: kills whatever is left in the namespaces and removes them.
    nodes: Nodes,
}

impl Cluster {
    fn start() -> Cluster {
        require_tool("python3");
        require_tool("corosync");
        let nodes = Nodes::with_hosts(MEMBERS, 1);
        let dir = nodes.dir().join("storage");
        let storage = StorageHost::start(&nodes, STORAGE);
        let mut c = Cluster {
            dlms: Vec::new(),
            mounted: [false; MEMBERS],
            imported: [false; MEMBERS],
            jobs: Vec::new(),
            dev: format!("gnbd://{}/shared", storage.addr),
            storage,
            nodes,
        };
        let img = dir.join("shared.img");
        std::fs::File::create(&img).unwrap().set_len(256 << 20).unwrap();
        run_timeout(gnbd_export_cmd(&c.storage.state).args(["-e", "shared", "-d"]).arg(&img), Duration::from_secs(60))
            .assert_success("gnbd_export -e shared");

        c.nodes.form_fenced_by("alpha", TOKEN_MS, &c.storage);
        for i in 0..MEMBERS {
            c.dlms.push(c.nodes.spawn(i, "dlm_controld", &[], "dlm.log"));
        }
        for i in 0..MEMBERS {
            let sock = c.nodes.path(i, "run/dlm/dlm.sock");
            wait_until(
                30,
                || sock.exists(),
                || format!("node{}: dlm_controld never listened:\n{}", i + 1, c.dlm_log(i)),
            );
        }
        c.nodes.must(0, "mkfs_gfs", &["-q", "-p", "lock_dlm", "-t", "alpha:shared", "-j", "3", &c.dev]);
        for i in 0..MEMBERS {
            c.mount(i);
        }
        c
    }

    fn dlm_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes.path(i, "log/dlm.log")).unwrap_or_default()
    }

    fn gfs_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes.path(i, "log/gfs.log")).unwrap_or_default()
    }

    /// Mounts the export on node `i` with journal `i`, through [`via`].
    fn mount(&mut self, i: usize) {
        self.nodes.must(i, "mkdir", &["-p", MNT]);
        let dev = match via() {
            Via::Url => self.dev.clone(),
            Via::Import => {
                let src = node_addr(i);
                let mut args = IMPORT_DIRS.to_vec();
                args.extend(["-i", &self.storage.addr, "-n", "shared", "--source", &src]);
                self.imported[i] = true;
                self.nodes.must(i, "gnbd_import", &args);
                IMPORT_FILE.to_owned()
            }
        };
        let opts = format!("journal={i},log={NODE_LOG}/gfs.log");
        self.nodes.must(i, "mount_gfs", &[&dev, MNT, "-o", &opts]);
        self.mounted[i] = true;
    }

    /// Removes node `i`'s import (by force: also after the node was killed).
    fn unimport(&mut self, i: usize) {
        if std::mem::take(&mut self.imported[i]) {
            let mut args = IMPORT_DIRS.to_vec();
            args.extend(["-R", "-f"]);
            let out = self.nodes.run(i, "gnbd_import", &args);
            if !out.status.success() {
                eprintln!("node{}: gnbd_import -R -f: {}", i + 1, out.describe());
            }
        }
    }

    /// Unmounts node `i` cleanly and waits until its mount server has finished.
    fn umount(&mut self, i: usize) {
        self.nodes.must(i, "umount", &[MNT]);
        self.mounted[i] = false;
        wait_until(
            60,
            || mount_servers(&self.nodes, i).is_empty(),
            || format!("node{}: mount server still running after umount:\n{}", i + 1, self.gfs_log(i)),
        );
        self.unimport(i);
    }

    /// Runs `script` with sh on node `i` in the mount point (`set -e`); panics on failure.
    fn sh(&self, i: usize, script: &str) -> String {
        self.nodes.must(i, "sh", &["-c", &format!("set -e; cd {MNT}; {script}")])
    }

    /// Runs a python3 program on node `i` in the mount point; panics on failure.
    fn py(&self, i: usize, program: &str) -> String {
        self.nodes.must(i, "python3", &["-c", &format!("import os\nos.chdir('{MNT}')\n{program}")])
    }

    /// Starts a python3 program on node `i` in the background (output in `log/NAME`).
    fn spawn_py(&mut self, i: usize, program: &str, name: &str) -> usize {
        let p = format!("import os\nos.chdir('{MNT}')\n{program}");
        self.jobs.push(self.nodes.spawn(i, "python3", &["-c", &p], name));
        self.jobs.len() - 1
    }

    /// `gfs_fsck -n` on the export from node 1; panics unless it finds the filesystem clean.
    fn fsck_clean(&self) {
        let out = self.nodes.run(0, "gfs_fsck", &["-n", &self.dev]);
        assert_eq!(out.status.code(), Some(0), "gfs_fsck -n {}: {}", self.dev, out.describe());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..MEMBERS {
                eprintln!("--- node{} gfs.log\n{}", i + 1, self.gfs_log(i));
                eprintln!("--- node{} dlm.log\n{}", i + 1, self.dlm_log(i));
            }
            let s = std::fs::read_to_string(self.nodes.path(STORAGE, "log/gnbd_serv.log")).unwrap_or_default();
            eprintln!("--- storage gnbd_serv.log\n{s}");
        }
        for j in &mut self.jobs {
            let _ = j.kill();
            let _ = j.wait();
        }
        for i in 0..MEMBERS {
            if self.mounted[i] {
                let _ = self.nodes.run(i, "umount", &["-l", MNT]);
            }
            self.unimport(i);
        }
        for d in &mut self.dlms {
            let _ = d.kill();
            let _ = d.wait();
        }
        // Then the fields drop: the storage server stops, and the harness SIGKILLs every
        // process left in the namespaces (mount servers included) and removes the mount
        // namespaces, which takes their FUSE mounts along.
    }
}

/// One fixed-size (64 byte) append record.
const APPEND_PY: &str = r#"
import sys
tag, n = sys.argv[1], int(sys.argv[2])
fd = os.open('app', os.O_WRONLY | os.O_APPEND)
for i in range(n):
    rec = ('%s %06d ' % (tag, i)).ljust(63, '.') + '\n'
    assert os.write(fd, rec.encode()) == 64
os.close(fd)
"#;

#[test]
fn three_nodes_see_each_others_changes_at_once() {
    let mut c = Cluster::start();
    let others = |i: usize| (0..MEMBERS).filter(move |&j| j != i);

    // Each change, made on one node, is visible on the other two as soon as it returns.
    c.sh(0, "printf hello > a");
    for j in others(0) {
        assert_eq!(c.sh(j, "cat a"), "hello", "node{}", j + 1);
    }
    c.sh(1, "mkdir d");
    for j in others(1) {
        c.sh(j, "test -d d");
    }
    c.sh(2, "mv a d/b");
    for j in others(2) {
        assert_eq!(c.sh(j, "test ! -e a; cat d/b"), "hello", "node{}", j + 1);
    }
    c.sh(0, "chmod 640 d/b");
    for j in others(0) {
        assert_eq!(c.sh(j, "stat -c %a d/b"), "640\n", "node{}", j + 1);
    }
    c.sh(1, "printf ' world' >> d/b");
    for j in others(1) {
        assert_eq!(c.sh(j, "cat d/b"), "hello world", "node{}", j + 1);
    }
    // A 600 kB file written on node 3, read back byte for byte on nodes 1 and 2.
    let data = c.nodes.dir().join("data");
    let bytes: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&data, &bytes).unwrap();
    let data = data.display().to_string();
    c.sh(2, &format!("cp {data} big"));
    for j in others(2) {
        c.sh(j, &format!("cmp {data} big"));
    }
    // Overwrite in the middle, truncate, rename over an existing name.
    c.sh(0, "printf XYZ | dd of=big bs=1 seek=300000 conv=notrunc status=none; truncate -s 400000 big");
    for j in others(0) {
        let out = c.sh(j, "stat -c %s big; dd if=big bs=1 skip=300000 count=3 status=none");
        assert_eq!(out, "400000\nXYZ", "node{}", j + 1);
    }
    c.sh(1, "printf new > d/c; mv d/c d/b; ln -s d/b link");
    for j in others(1) {
        assert_eq!(c.sh(j, "cat d/b; readlink link"), "newd/b\n", "node{}", j + 1);
    }
    // Hard link, extended attribute, a directory renamed into another with its contents.
    c.sh(2, "ln d/b hard; mkdir -p e/f; printf deep > e/f/g");
    c.py(2, "os.setxattr('hard', 'user.colour', b'blue')");
    for j in others(2) {
        let out = c.sh(j, "stat -c %h d/b; cat hard; cat e/f/g");
        assert_eq!(out, "2\nnewdeep", "node{}", j + 1);
        assert_eq!(c.py(j, "print(os.getxattr('d/b', 'user.colour'))"), "b'blue'\n", "node{}", j + 1);
    }
    c.sh(0, "mv e/f d/f; rm hard; rmdir e");
    for j in others(0) {
        assert_eq!(c.sh(j, "test ! -e e; stat -c %h d/b; cat d/f/g"), "1\ndeep", "node{}", j + 1);
    }
    c.sh(2, "rm big link d/b d/f/g; rmdir d/f d");
    for j in others(2) {
        assert_eq!(c.sh(j, "ls -A"), "", "node{}", j + 1);
    }

    // Creates: node 1 alone, then all three nodes at once in one directory. Each node creates
    // up to FILES files, for at most CREATE_SECS (the work is bounded, whatever the rate), and
    // times its own loop (python's start-up and nsenter left out): count, start and end,
    // wall-clock seconds (one machine, one clock).
    const FILES: usize = 300;
    const CREATE_SECS: f64 = 8.0;
    let create = |i: usize, dir: &str| -> (usize, f64, f64) {
        let out = c.py(
            i,
            &format!(
                "import time\nt = time.time()\nn = 0\n\
                 while n < {FILES} and time.time() - t < {CREATE_SECS}:\n    \
                 os.close(os.open('{dir}/n{}_%d' % n, os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n    \
                 n += 1\n\
                 print(n, t, time.time())",
                i + 1
            ),
        );
        let v: Vec<f64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        assert!(v.len() == 3 && v[0] >= 1.0, "node{} printed {out:?}", i + 1);
        (v[0] as usize, v[1], v[2])
    };
    let rate = |n: usize, start: f64, end: f64| n as f64 / (end - start);
    c.sh(0, "mkdir solo shared");
    let (n, start, end) = create(0, "solo");
    eprintln!("MEASURE node1 alone: {n} creates, {:.0}/s", rate(n, start, end));
    let runs: Vec<(usize, f64, f64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..MEMBERS).map(|i| s.spawn(move || create(i, "shared"))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, &(n, start, end)) in runs.iter().enumerate() {
        eprintln!(
            "MEASURE node{} with 3 nodes creating in one directory: {n} creates in {:.3} s, {:.0}/s",
            i + 1,
            end - start,
            rate(n, start, end)
        );
    }
    let total: usize = runs.iter().map(|r| r.0).sum();
    let first = runs.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    let last = runs.iter().map(|r| r.2).fold(0.0, f64::max);
    eprintln!(
        "MEASURE 3 nodes together: {total} creates in {:.3} s, {:.0}/s in all",
        last - first,
        rate(total, first, last)
    );
    let mut want: Vec<String> =
        runs.iter().enumerate().flat_map(|(i, r)| (0..r.0).map(move |k| format!("n{}_{k}", i + 1))).collect();
    want.sort();
    for i in 0..MEMBERS {
        let got: Vec<String> = c.sh(i, "LC_ALL=C ls shared").lines().map(str::to_owned).collect();
        assert_eq!(got, want, "node{}: directory listing", i + 1);
    }

    for i in 0..MEMBERS {
        c.umount(i);
    }
    c.fsck_clean();
}

#[test]
fn concurrent_appends_from_two_nodes_lose_nothing() {
    let mut c = Cluster::start();
    // Concurrent O_APPEND appends of 64-byte records from nodes 1 and 2.
    const RECS: usize = 200;
    c.sh(2, ": > app");
    std::thread::scope(|s| {
        for (i, tag) in [(0, "n1"), (1, "n2")] {
            let c = &c;
            s.spawn(move || {
                let out = c.nodes.run(
                    i,
                    "python3",
                    &["-c", &format!("import os\nos.chdir('{MNT}')\n{APPEND_PY}"), tag, &RECS.to_string()],
                );
                assert!(out.status.success(), "node{} appends: {}", i + 1, out.describe());
            });
        }
    });
    let app = c.sh(2, "cat app");
    let summary = |app: &str| {
        let recs: Vec<&[u8]> = app.as_bytes().chunks(64).collect();
        let whole = |t: &str| recs.iter().filter(|r| r.starts_with(t.as_bytes()) && r.ends_with(b".\n")).count();
        format!("{} bytes: {} whole n1 records, {} whole n2 records", app.len(), whole("n1 "), whole("n2 "))
    };
    assert_eq!(app.len(), 2 * RECS * 64, "appended records lost: {}", summary(&app));
    let mut next = BTreeMap::from([("n1", 0usize), ("n2", 0usize)]);
    for rec in app.as_bytes().chunks(64) {
        let rec = std::str::from_utf8(rec).unwrap();
        let tag = &rec[..2];
        let n = next.get_mut(tag).unwrap_or_else(|| panic!("torn record {rec:?}"));
        let want = format!("{:.<63}\n", format!("{tag} {:06} ", *n));
        assert_eq!(rec, want, "records of one node out of order");
        *n += 1;
    }
    assert_eq!(next, BTreeMap::from([("n1", RECS), ("n2", RECS)]));

    for i in 0..MEMBERS {
        c.umount(i);
    }
    c.fsck_clean();
}

/// Node 3's workload: step k creates `w3/f{k}` (content [`step_data`]), and on some steps
/// renames, unlinks, appends to `w3/log`, makes a directory or chmods; every change is
/// fsync-ed (file and directories) before k is appended to the log outside the filesystem.
const STEPS_PY: &str = r#"
os.umask(0)
log = os.open('/var/log/cluster/steps', os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def sync(p):
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
def name(j):
    return 'w3/sub/r%d' % j if (j + 1) % 4 == 0 else 'w3/f%d' % j
k = 0
while True:
    k += 1
    f = 'w3/f%d' % k
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, (('step %d ' % k) * (1 + k % 40)).encode())
    os.fsync(fd)
    os.close(fd)
    if k % 6 == 0:
        os.chmod(f, 0o600)
        sync(f)
    if k % 4 == 0:
        os.rename('w3/f%d' % (k - 1), name(k - 1))
        sync('w3/sub')
    if k % 5 == 0:
        os.unlink(name(k - 2))
        sync('w3/sub')
    if k % 3 == 0:
        fd = os.open('w3/log', os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b'%d\n' % k)
        os.fsync(fd)
        os.close(fd)
    if k % 7 == 0:
        os.mkdir('w3/d%d' % k, 0o755)
    sync('w3')
    os.write(log, b'%d\n' % k)
"#;

/// A survivor's workload in its own directory until the stop file appears outside the
/// filesystem: write a file, rename it, unlink the one from two rounds before.
const ROUNDS_PY: &str = r#"
import sys, time
d = sys.argv[1]
log = os.open('/var/log/cluster/rounds', os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
j = 0
while True:
    j += 1
    with open('%s/a%d' % (d, j), 'wb') as f:
        f.write(b'%d\n' % j * 50)
    os.rename('%s/a%d' % (d, j), '%s/b%d' % (d, j))
    if j > 2:
        os.unlink('%s/b%d' % (d, j - 2))
    os.write(log, b'%d %f\n' % (j, time.time()))
    if os.path.exists('/var/log/cluster/stop'):
        break
print(j)
"#;

/// Every entry under `w3` as JSON: directories as "d", files as [mode, content].
const DUMP_PY: &str = r#"
import json
out = {}
for root, dirs, files in os.walk('w3'):
    for d in dirs:
        out[os.path.join(root, d)] = 'd'
    for f in files:
        p = os.path.join(root, f)
        out[p] = [os.lstat(p).st_mode & 0o7777, open(p, 'rb').read().decode()]
print(json.dumps(out, sort_keys=True))
"#;

/// What `STEPS_PY` wrote to `w3/f{k}`.
fn step_data(k: u64) -> String {
    format!("step {k} ").repeat(1 + (k % 40) as usize)
}

/// The entries under `w3` after steps `1..=last` of `STEPS_PY`, as [`DUMP_PY`] prints them.
fn steps_model(last: u64) -> BTreeMap<String, serde_json::Value> {
    use serde_json::json;
    let name = |j: u64| if (j + 1).is_multiple_of(4) { format!("w3/sub/r{j}") } else { format!("w3/f{j}") };
    let mut m = BTreeMap::new();
    m.insert("w3/sub".to_owned(), json!("d"));
    let mut log = String::new();
    for k in 1..=last {
        let mode = if k.is_multiple_of(6) { 0o600 } else { 0o644 };
        m.insert(format!("w3/f{k}"), json!([mode, step_data(k)]));
        if k.is_multiple_of(4) {
            let v = m.remove(&format!("w3/f{}", k - 1)).expect("renamed file exists");
            m.insert(name(k - 1), v);
        }
        if k.is_multiple_of(5) {
            m.remove(&name(k - 2)).expect("unlinked file exists");
        }
        if k.is_multiple_of(3) {
            log.push_str(&format!("{k}\n"));
            m.insert("w3/log".to_owned(), json!([0o644, log]));
        }
        if k.is_multiple_of(7) {
            m.insert(format!("w3/d{k}"), json!("d"));
        }
    }
    m
}

/// Checks a dump of `w3` against the model: every step up to `done` exactly; step
/// `done + 1` (not logged: it may have been cut anywhere) either not there, fully there, or
/// its new file's content/its log line partly written.
fn check_steps(dump: &str, done: u64) {
    let got: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(dump).unwrap_or_else(|e| panic!("bad dump {e}: {dump}"));
    let before = steps_model(done);
    let after = steps_model(done + 1);
    let keys: std::collections::BTreeSet<&String> = got.keys().chain(before.keys()).chain(after.keys()).collect();
    for k in keys {
        let (g, b, a) = (got.get(k), before.get(k), after.get(k));
        if g == b || g == a {
            continue;
        }
        // The file step done + 1 was writing (its new file, the log): content between the
        // two models' contents; the new file's mode not changed yet or changed.
        let text = |v: Option<&serde_json::Value>| v.and_then(|v| v[1].as_str()).map(str::to_owned);
        let mode = |v: Option<&serde_json::Value>| v.and_then(|v| v[0].as_u64());
        let writing = *k == format!("w3/f{}", done + 1) || k == "w3/log";
        let partial = match (text(g), text(a)) {
            (Some(g_text), Some(a_text)) => {
                writing
                    && a_text.starts_with(&g_text)
                    && text(b).is_none_or(|b| g_text.starts_with(&b))
                    && (mode(g) == Some(0o644) || mode(g) == mode(a))
            }
            _ => false,
        };
        assert!(
            partial,
            "after {done} fsync-ed steps, {k} is {g:?}; expected {b:?} (step {done}) or {a:?} (step {})",
            done + 1
        );
    }
}

/// The time of a log line starting `YYYY-MM-DDTHH:MM:SS.ffffffZ` (tracing's format), in
/// milliseconds since the Unix epoch.
fn log_time_ms(line: &str) -> Option<u64> {
    let (date, rest) = line.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = rest.split_once('Z')?.0;
    let mut t = time.split(':');
    let (h, min, sec) =
        (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let ms = ((days * 86_400 + h * 3600 + min * 60) * 1000) as f64 + sec * 1000.0;
    u64::try_from(ms as i64).ok()
}

/// The number starting the last complete line of node `i`'s outside log `name`.
fn last_logged(c: &Cluster, i: usize, name: &str) -> u64 {
    let t = std::fs::read_to_string(c.nodes.path(i, &format!("log/{name}"))).unwrap_or_default();
    let complete = t.rsplit_once('\n').map_or("", |(head, _)| head);
    complete.lines().last().map_or(0, |l| l.split(' ').next().unwrap_or(l).parse().expect("number"))
}

/// The longest pause between two rounds logged by node `i` (lines "ROUND UNIX_SECONDS").
fn longest_pause(c: &Cluster, i: usize) -> Duration {
    let t = std::fs::read_to_string(c.nodes.path(i, "log/rounds")).unwrap_or_default();
    let times: Vec<f64> = t.lines().filter_map(|l| l.split(' ').nth(1)?.parse().ok()).collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    Duration::from_secs_f64(gap.max(0.0))
}

#[test]
fn killed_node_is_fenced_and_its_fsynced_work_survives() {
    let mut c = Cluster::start();
    c.sh(0, "mkdir w1 w2 w3 w3/sub");
    let mut survivors = Vec::new();
    for i in 0..2 {
        let d = format!("w{}", i + 1);
        let p = format!("import sys\nsys.argv = ['-c', '{d}']\n{ROUNDS_PY}");
        survivors.push(c.spawn_py(i, &p, "rounds.out"));
    }
    c.spawn_py(2, STEPS_PY, "steps.out");
    // Let node 3 get well into its workload while the others work too.
    wait_until(
        60,
        || last_logged(&c, 2, "steps") >= 40 && last_logged(&c, 0, "rounds") >= 5 && last_logged(&c, 1, "rounds") >= 5,
        || {
            format!(
                "workloads too slow: node3 {} steps, node1 {} rounds, node2 {} rounds; node3 output:\n{}",
                last_logged(&c, 2, "steps"),
                last_logged(&c, 0, "rounds"),
                last_logged(&c, 1, "rounds"),
                std::fs::read_to_string(c.nodes.path(2, "log/steps.out")).unwrap_or_default()
            )
        },
    );

    // Power cut on node 3: corosync, fenced, dlm_controld, the mount server and the workload.
    let killed = Instant::now();
    let killed_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    c.nodes.kill(2);
    let done = last_logged(&c, 2, "steps");
    let dump = c.py(0, DUMP_PY);
    let seen = killed.elapsed();
    check_steps(&dump, done);
    eprintln!("MEASURE SIGKILL of node3 -> node1 sees its {done} fsync-ed steps: {seen:?}");

    // fenced on the lowest surviving node fenced node 3 through fence_gnbd; the server bans it.
    let s = c.nodes.wait_fence(0, "node3 fenced", |s| fenced_by(s, "node3").is_some());
    let rec = fenced_by(&s, "node3").unwrap();
    let fenced_ms = rec["at_unix_ms"].as_u64().expect("fence time");
    eprintln!("MEASURE SIGKILL of node3 -> fence recorded: {} ms", fenced_ms.saturating_sub(killed_ms));
    assert_eq!((rec["method"].as_str(), rec["by"].as_str()), (Some("storage"), Some("node1")), "{s:#}");
    let bans = control(&c.storage.state, r#"{"op":"bans"}"#);
    assert!(bans.to_string().contains("node3"), "storage bans: {bans}");
    let key = c.storage.key.display().to_string();
    let listed = c.nodes.must(1, "gnbd_import", &["-c", &node_addr(STORAGE), "-k", &key]);
    assert!(listed.contains("node3"), "{listed}");

    // A survivor replays node 3's journal (slot 2) once the DLM has released it.
    let recovery_line = |c: &Cluster| {
        (0..2).find_map(|i| {
            let log = c.gfs_log(i);
            let line = log.lines().find(|l| l.contains("recovered the journal") && l.contains("slot=2"))?.to_owned();
            Some((i, line))
        })
    };
    wait_until(60, || recovery_line(&c).is_some(), || "no survivor recovered journal 2".into());
    let (by, line) = recovery_line(&c).unwrap();
    eprintln!("MEASURE SIGKILL of node3 -> its journal replayed by node{}: {:?}", by + 1, killed.elapsed());
    // Only after the fence: the replay's log time is not before fenced's record of it.
    let replayed_ms = log_time_ms(&line).unwrap_or_else(|| panic!("no time in {line:?}"));
    assert!(replayed_ms >= fenced_ms, "journal replayed at {replayed_ms} before the fence at {fenced_ms}: {line}");
    // Still exactly the fsync-ed state, on both survivors.
    for i in 0..2 {
        check_steps(&c.py(i, DUMP_PY), done);
    }

    // The survivors kept working through it and still do; then they stop, without errors.
    let at = [last_logged(&c, 0, "rounds"), last_logged(&c, 1, "rounds")];
    wait_until(
        60,
        || last_logged(&c, 0, "rounds") >= at[0] + 10 && last_logged(&c, 1, "rounds") >= at[1] + 10,
        || "survivors stopped making progress after the recovery".into(),
    );
    for i in 0..2 {
        std::fs::write(c.nodes.path(i, "log/stop"), b"").unwrap();
    }
    for i in 0..2 {
        eprintln!(
            "MEASURE node{}: longest pause between two rounds of its workload: {:?}",
            i + 1,
            longest_pause(&c, i)
        );
    }
    for (i, &job) in survivors.iter().enumerate() {
        let child = &mut c.jobs[job];
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "node{} workload did not stop", i + 1);
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = std::fs::read_to_string(c.nodes.path(i, "log/rounds.out")).unwrap_or_default();
        assert!(status.success(), "node{} workload failed ({status}):\n{out}", i + 1);
        let last: u64 = out.trim().parse().unwrap_or_else(|_| panic!("node{} output {out:?}", i + 1));
        // Exactly the last two rounds' files, with their content, seen from the other node.
        let other = 1 - i;
        let listing = c.sh(other, &format!("LC_ALL=C ls w{}", i + 1));
        let mut want = vec![format!("b{}", last - 1), format!("b{last}")];
        want.sort();
        assert_eq!(listing.lines().collect::<Vec<_>>(), want, "node{} directory", i + 1);
        let content = c.sh(other, &format!("cat w{}/b{last}", i + 1));
        assert_eq!(content, format!("{last}\n").repeat(50));
    }

    for i in 0..2 {
        c.umount(i);
    }
    c.fsck_clean();
}

#[test]
fn log_times_parse_to_unix_milliseconds() {
    assert_eq!(log_time_ms("1970-01-01T00:00:01.500000Z  INFO x"), Some(1500));
    assert_eq!(log_time_ms("2026-11-22T07:22:08.624428Z  INFO gfs::fs: recovered"), Some(1_795_332_128_624));
    assert_eq!(log_time_ms("2000-03-01T00:00:00Z"), Some(951_868_800_000));
    assert_eq!(log_time_ms("no time here"), None);
}

#[test]
fn the_step_model_accepts_only_the_fsynced_state() {
    let dump = |m: &BTreeMap<String, serde_json::Value>| serde_json::to_string(m).unwrap();
    let m = steps_model(30);
    check_steps(&dump(&m), 30);
    check_steps(&dump(&steps_model(31)), 30);
    // Step 31 cut while writing its file.
    let mut cut = m.clone();
    cut.insert("w3/f31".into(), serde_json::json!([0o644, "step 31 step"]));
    check_steps(&dump(&cut), 30);
    for bad in ["w3/f29", "w3/sub/r27", "w3/d28", "w3/log"] {
        let mut lost = m.clone();
        lost.remove(bad);
        let r = std::panic::catch_unwind(|| check_steps(&dump(&lost), 30));
        assert!(r.is_err(), "losing {bad} went unnoticed");
    }
    let mut old = m.clone();
    old.insert("w3/f30".into(), serde_json::json!([0o644, step_data(30)]));
    assert!(std::panic::catch_unwind(|| check_steps(&dump(&old), 30)).is_err(), "a lost chmod went unnoticed");
}

/// Node 1 holds an fcntl lock on bytes 0..100 of `lk` and a flock on `fl` until the stop
/// file appears, then appends "release" to the order file and lets go.
const HOLDER_PY: &str = r#"
import fcntl, sys, time
order, stop, ready = sys.argv[1], sys.argv[2], sys.argv[3]
lk = os.open('lk', os.O_RDWR | os.O_CREAT, 0o644)
fl = os.open('fl', os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(lk, fcntl.LOCK_EX, 100, 0)
fcntl.flock(fl, fcntl.LOCK_EX)
open(ready, 'w').close()
while not os.path.exists(stop):
    time.sleep(0.01)
with open(order, 'a') as f:
    f.write('release\n')
fcntl.lockf(lk, fcntl.LOCK_UN, 100, 0)
fcntl.flock(fl, fcntl.LOCK_UN)
"#;

/// Tries locks without waiting; prints one word per attempt: "got" or "busy".
const TRY_PY: &str = r#"
import errno, fcntl
lk = os.open('lk', os.O_RDWR)
fl = os.open('fl', os.O_RDWR)
def attempt(f):
    try:
        f()
        return 'got'
    except OSError as e:
        assert e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK), e
        return 'busy'
print(attempt(lambda: fcntl.lockf(lk, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)),
      attempt(lambda: fcntl.lockf(lk, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 99)),
      attempt(lambda: fcntl.lockf(lk, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 100)),
      attempt(lambda: fcntl.flock(fl, fcntl.LOCK_EX | fcntl.LOCK_NB)))
"#;

/// Waits for an fcntl lock overlapping node 1's, then appends "acquired" to the order file.
const WAITER_PY: &str = r#"
import fcntl, sys
lk = os.open('lk', os.O_RDWR)
fcntl.lockf(lk, fcntl.LOCK_EX, 10, 50)
with open(sys.argv[1], 'a') as f:
    f.write('acquired\n')
"#;

#[test]
fn byte_range_locks_and_flocks_exclude_across_nodes() {
    let mut c = Cluster::start();
    let dir = c.nodes.dir().to_path_buf();
    let (order, stop, ready) = (dir.join("order"), dir.join("stop"), dir.join("ready"));
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let with_args = |prog: &str, args: &[String]| format!("import sys\nsys.argv = ['-c'] + {args:?}\n{prog}");
    let holder = c.spawn_py(0, &with_args(HOLDER_PY, &[arg(&order), arg(&stop), arg(&ready)]), "holder.out");
    wait_until(
        60,
        || ready.exists(),
        || {
            format!(
                "node1 never got its locks:\n{}",
                std::fs::read_to_string(c.nodes.path(0, "log/holder.out")).unwrap_or_default()
            )
        },
    );
    // Overlapping ranges and the flock are busy on the other nodes; a range next to it is free.
    for i in 1..MEMBERS {
        assert_eq!(c.py(i, TRY_PY), "busy busy got busy\n", "node{}: inside, last byte, next range, flock", i + 1);
    }
    // Node 2 waits for an overlapping range; it gets it only after node 1 let go.
    let waiter = c.spawn_py(1, &with_args(WAITER_PY, &[arg(&order)]), "waiter.out");
    std::fs::write(&stop, b"").unwrap();
    for (i, job) in [(0, holder), (1, waiter)] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let st = loop {
            if let Some(st) = c.jobs[job].try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "node{} lock program never finished", i + 1);
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(st.success(), "node{} lock program failed ({st})", i + 1);
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "release\nacquired\n");
    // Everything released: node 3 gets all of it.
    assert_eq!(c.py(2, TRY_PY), "got got got got\n");
    for i in 0..MEMBERS {
        c.umount(i);
    }
    c.fsck_clean();
}
