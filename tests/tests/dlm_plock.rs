//! End-to-end: cluster-wide POSIX byte-range locks (fcntl) through real `dlm_controld`
//! daemons — one daemon with several clients ("processes"), two or three daemons on
//! 127.0.0.1-3 talking TCP including a node that dies holding locks, and three nodes in
//! cluster mode (corosync and fenced in network namespaces) where a dead holder's locks go
//! only after it is fenced.

use std::time::Duration;

use dlm::{dir_node, ClientError, DlmClient, MemberEvent, PlockArgs, PlockKind, Status};
use gnbd_tests::corosync::Nodes;
use gnbd_tests::dlmd::ClusterDlms;
use gnbd_tests::{DlmDaemon, OutputExt, TempDir};

const STEP: Duration = Duration::from_secs(20);

/// `dlm_tool plocks LS` on daemon `d`.
fn plocks(d: &DlmDaemon, ls: &str) -> String {
    let out = d.tool(&["plocks", ls]);
    out.assert_success("dlm_tool plocks");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn step<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.expect("step finished in time")
}

fn args(owner: u64, pid: u32, kind: PlockKind, start: u64, end: u64) -> PlockArgs {
    PlockArgs { owner, pid, start, end, kind }
}

use PlockKind::{Read, Unlock, Write};

/// Start `plock_set(.., wait = true)` in a task; the handle says when it was granted.
fn waiter(c: &DlmClient, ls: u32, name: &[u8], a: PlockArgs) -> tokio::task::JoinHandle<Result<(), ClientError>> {
    let (c, name) = (c.clone(), name.to_vec());
    tokio::spawn(async move { c.plock_set(ls, &name, a, true).await })
}

/// Wait until `dlm_tool plocks` on `d` shows `n` waiting requests (the waiter reached the
/// master), so what follows really happens while it waits.
async fn until_waiting(d: &DlmDaemon, ls: &str, n: usize) {
    step(async {
        loop {
            if plocks(d, ls).matches("WAITING").count() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn one_daemon_two_processes_exclude_wake_and_cancel() {
    let dir = TempDir::new();
    let d = DlmDaemon::start(dir.path(), 1, None, &[]);
    let a = step(DlmClient::connect(&d.socket)).await.unwrap();
    let b = step(DlmClient::connect(&d.socket)).await.unwrap();
    let ls = step(a.join(b"fs", 0)).await.unwrap();
    assert_eq!(step(b.join(b"fs", 0)).await.unwrap(), ls);
    let f = b"inode-42";

    // A write-locks 0..=99; B cannot read-lock inside it, F_GETLK says who holds it.
    step(a.plock_set(ls, f, args(1, 100, Write, 0, 99), false)).await.unwrap();
    let e = step(b.plock_set(ls, f, args(2, 200, Read, 50, 50), false)).await.unwrap_err();
    assert!(matches!(e, ClientError::WouldBlock), "{e}");
    let c = step(b.plock_get(ls, f, args(2, 200, Read, 60, u64::MAX))).await.unwrap().expect("conflict");
    assert_eq!((c.kind, c.start, c.end, c.pid, c.node), (Write, 0, 99, 100, 1));
    assert_eq!(step(a.plock_get(ls, f, args(1, 100, Write, 0, 10))).await.unwrap(), None, "own locks never conflict");
    // B may read-lock past it.
    step(b.plock_set(ls, f, args(2, 200, Read, 100, u64::MAX), false)).await.unwrap();

    // B waits; A unlocks part (still conflicting), then the rest: B is granted.
    let w = waiter(&b, ls, f, args(2, 200, Write, 40, 60));
    until_waiting(&d, "fs", 1).await;
    step(a.plock_set(ls, f, args(1, 100, Unlock, 0, 49), false)).await.unwrap();
    assert_eq!(plocks(&d, "fs").matches("WAITING").count(), 1, "still conflicts with 50..=99");
    step(a.plock_set(ls, f, args(1, 100, Unlock, 50, 99), false)).await.unwrap();
    step(w).await.unwrap().unwrap();
    let text = plocks(&d, "fs");
    assert!(text.contains("WR 40-60 node 1") && text.contains("RD 100-EOF node 1"), "{text}");

    // A waits on B's lock; B's connection closes (the process died): A is granted.
    let w = waiter(&a, ls, f, args(1, 100, Write, 0, u64::MAX));
    until_waiting(&d, "fs", 1).await;
    drop(b);
    step(w).await.unwrap().unwrap();
    let text = plocks(&d, "fs");
    assert!(text.contains("WR 0-EOF") && !text.contains("pid 200"), "{text}");

    // C waits on A; the waiting future is dropped (FUSE interrupt): the request is gone
    // from the daemon, and releasing A's locks grants nothing to C.
    let c = step(DlmClient::connect(&d.socket)).await.unwrap();
    step(c.join(b"fs", 0)).await.unwrap();
    let w = waiter(&c, ls, f, args(3, 300, Read, 5, 5));
    until_waiting(&d, "fs", 1).await;
    w.abort();
    assert!(w.await.unwrap_err().is_cancelled());
    until_waiting(&d, "fs", 0).await;
    step(a.plock_release_owner(ls, f, 1)).await.unwrap();
    assert_eq!(plocks(&d, "fs"), "", "nothing held or waiting");
    // Other resources are independent; C can take what it wanted.
    step(c.plock_set(ls, f, args(3, 300, Read, 5, 5), false)).await.unwrap();
    step(a.plock_set(ls, b"other", args(1, 100, Write, 5, 5), false)).await.unwrap();
    let c2 = step(c.plock_get(ls, f, args(3, 300, Write, 0, u64::MAX))).await.unwrap();
    assert_eq!(c2, None);
    let e = step(c.plock_set(ls, b"other", args(3, 300, Read, 0, 10), false)).await.unwrap_err();
    assert!(matches!(e, ClientError::WouldBlock), "{e}");
    // A range that ends before it starts is refused.
    let e = step(c.plock_set(ls, f, args(3, 300, Read, 9, 1), false)).await.unwrap_err();
    assert!(matches!(e, ClientError::Refused(-22)), "{e}");

    // A waits for C's lock; C asking to wait for A's would deadlock: EDEADLK.
    let dl = b"deadlock";
    step(a.plock_set(ls, dl, args(1, 100, Write, 0, 0), false)).await.unwrap();
    step(c.plock_set(ls, dl, args(3, 300, Write, 1, 1), false)).await.unwrap();
    let w = waiter(&a, ls, dl, args(1, 100, Write, 1, 1));
    until_waiting(&d, "fs", 1).await;
    let e = step(c.plock_set(ls, dl, args(3, 300, Write, 0, 0), true)).await.unwrap_err();
    assert!(matches!(e, ClientError::Status(Status::Deadlock)), "{e}");
    step(c.plock_release_owner(ls, dl, 3)).await.unwrap();
    step(w).await.unwrap().unwrap();
}

#[tokio::test]
async fn two_daemons_over_tcp_share_plocks() {
    let dir = TempDir::new();
    let daemons = DlmDaemon::start_mesh(dir.path(), 2);
    let c1 = step(DlmClient::connect(&daemons[0].socket)).await.unwrap();
    let c2 = step(DlmClient::connect(&daemons[1].socket)).await.unwrap();
    let ls = step(c1.join(b"fs", 0)).await.unwrap();
    step(c2.join(b"fs", 0)).await.unwrap();
    // One name mastered by each node.
    let name_on = |n: u32| (0..).map(|i| format!("ino{i}").into_bytes()).find(|x| dir_node(x, &[1, 2]) == n).unwrap();
    for master in [1u32, 2] {
        let f = name_on(master);
        let md = &daemons[master as usize - 1];
        step(c1.plock_set(ls, &f, args(1, 11, Write, 0, 9), false)).await.unwrap();
        let e = step(c2.plock_set(ls, &f, args(2, 22, Write, 5, 5), false)).await.unwrap_err();
        assert!(matches!(e, ClientError::WouldBlock), "{e}");
        let c = step(c2.plock_get(ls, &f, args(2, 22, Read, 0, 0))).await.unwrap().expect("conflict");
        assert_eq!((c.node, c.pid, c.start, c.end), (1, 11, 0, 9));
        // Node 2 waits; node 1 unlocks: granted across nodes.
        let w = waiter(&c2, ls, &f, args(2, 22, Write, 5, 5));
        until_waiting(md, "fs", 1).await;
        step(c1.plock_set(ls, &f, args(1, 11, Unlock, 0, 9), false)).await.unwrap();
        step(w).await.unwrap().unwrap();
        let text = plocks(md, "fs");
        assert!(text.contains("WR 5-5 node 2"), "{text}");
        // Node 1 waits; node 2 closes the file (releases the owner): granted.
        let w = waiter(&c1, ls, &f, args(1, 11, Read, 0, 100));
        until_waiting(md, "fs", 1).await;
        let c2b = step(DlmClient::connect(&daemons[1].socket)).await.unwrap();
        step(c2b.join(b"fs", 0)).await.unwrap();
        step(c2b.plock_set(ls, &f, args(9, 99, Read, 200, 200), false)).await.unwrap();
        step(c2.plock_release_owner(ls, &f, 2)).await.unwrap();
        step(w).await.unwrap().unwrap();
        // Node 1 waits on another process of node 2, which dies: granted.
        let w = waiter(&c1, ls, &f, args(1, 11, Write, 150, 250));
        until_waiting(md, "fs", 1).await;
        drop(c2b);
        step(w).await.unwrap().unwrap();
        step(c1.plock_release_owner(ls, &f, 1)).await.unwrap();
        assert_eq!(plocks(md, "fs"), "");
    }
}

#[tokio::test]
async fn a_dead_nodes_plocks_go_after_fencing_and_masters_move() {
    let dir = TempDir::new();
    let mut daemons = DlmDaemon::start_mesh(dir.path(), 3);
    let mut clients = Vec::new();
    for d in &daemons {
        clients.push(step(DlmClient::connect(&d.socket)).await.unwrap());
    }
    let mut ls = 0;
    for c in &clients {
        ls = step(c.join(b"fs", 0)).await.unwrap();
    }
    // Files mastered by each node; node 1 write-locks all of them, node 2 read-locks a
    // range of each, node 3 waits behind node 1 on each.
    let names: Vec<Vec<u8>> = (0..6).map(|i| format!("f{i}").into_bytes()).collect();
    assert!([1, 2, 3].iter().all(|n| names.iter().any(|x| dir_node(x, &[1, 2, 3]) == *n)));
    let mut waiters = Vec::new();
    for f in &names {
        step(clients[0].plock_set(ls, f, args(1, 1, Write, 0, 99), false)).await.unwrap();
        step(clients[1].plock_set(ls, f, args(2, 2, Read, 1000, 1999), false)).await.unwrap();
        waiters.push(waiter(&clients[2], ls, f, args(3, 3, Write, 50, 1500)));
    }
    // Every waiter reached its master.
    step(async {
        loop {
            let n: usize = daemons.iter().map(|d| plocks(d, "fs").matches("WAITING").count()).sum();
            if n == names.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Node 1 dies holding its write locks; the survivors learn it and that it is fenced.
    daemons[0].kill();
    for c in &clients[1..] {
        step(c.membership(MemberEvent::Members { epoch: 2, members: vec![2, 3], failed: vec![1] })).await.unwrap();
    }
    for c in &clients[1..] {
        step(c.membership(MemberEvent::Fenced { node: 1 })).await.unwrap();
    }
    // Node 3's waiters still conflict with node 2's read locks: release those, and all
    // of node 3's requests are granted on the new masters.
    for f in &names {
        let c = step(clients[2].plock_get(ls, f, args(3, 3, Write, 0, u64::MAX))).await.unwrap().expect("node 2");
        assert_eq!((c.node, c.start, c.end), (2, 1000, 1999), "node 1's lock is gone, node 2's survived");
        step(clients[1].plock_release_owner(ls, f, 2)).await.unwrap();
    }
    for w in waiters {
        step(w).await.unwrap().unwrap();
    }
    let mut text = String::new();
    for d in &daemons[1..] {
        text.push_str(&plocks(d, "fs"));
    }
    assert_eq!(text.matches("WR 50-1500 node 3").count(), names.len(), "{text}");
    assert!(!text.contains("node 1 ") && !text.contains("WAITING"), "{text}");
}

#[tokio::test]
async fn cluster_mode_dead_holders_plocks_go_only_after_its_fence() {
    let nodes = Nodes::new(3);
    nodes.write_conf(&nodes.manual_fence_conf("alpha", 1, 1000));
    nodes.join_all();
    nodes.wait_formed();
    let dlms = ClusterDlms::start(&nodes);
    let mut clients = Vec::new();
    for i in 0..3 {
        let c = step(async {
            loop {
                if let Ok(c) = DlmClient::connect(dlms.socket(i)).await {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        clients.push(c);
    }
    let mut ls = 0;
    for c in &clients {
        ls = step(c.join(b"gfs", 0)).await.unwrap();
    }
    for i in 0..3 {
        nodes.wait_output(i, "dlm_tool", &["ls"], |s| s.contains("members 1 2 3\n") && s.contains("state running"));
    }
    // Node 3 write-locks files mastered by every node; node 2 read-locks elsewhere in them;
    // node 1 waits for a write lock over both.
    let names: Vec<Vec<u8>> = (0..6).map(|i| format!("ino{i}").into_bytes()).collect();
    let mut waiters = Vec::new();
    for f in &names {
        step(clients[2].plock_set(ls, f, args(3, 3, Write, 0, 99), false)).await.unwrap();
        step(clients[1].plock_set(ls, f, args(2, 2, Read, 500, 599), false)).await.unwrap();
        waiters.push(waiter(&clients[0], ls, f, args(1, 1, Write, 0, 199)));
    }
    step(async {
        loop {
            let n: usize = (0..3)
                .map(|i| {
                    let out = nodes.run(i, "dlm_tool", &["plocks", "gfs"]);
                    String::from_utf8_lossy(&out.stdout).matches("WAITING").count()
                })
                .sum();
            if n == names.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // Power cut on node 3: fenced runs fence_manual and waits for the operator; nothing of
    // node 3's may be released meanwhile.
    nodes.kill(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let log = || std::fs::read_to_string(nodes.path(0, "log/fenced.log")).unwrap_or_default();
    while !log().contains("turn node3 off by hand") {
        assert!(std::time::Instant::now() < deadline, "fence_manual never ran:\n{}", nodes.logs(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..2 {
        nodes.wait_output(i, "dlm_tool", &["ls"], |s| s.contains("members 1 2\n") && s.contains("state recovering"));
    }
    // Any grant now would be a bug, whatever the timing; the wait only gives a wrong grant
    // the chance to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waiters.iter().all(|w| !w.is_finished()), "a plock was granted before the fence");

    // The operator confirms: node 3's locks go, node 1's waiters are granted on the new
    // masters; node 2's read locks (outside the waiters' ranges) are still there.
    nodes.must(1, "fence_ack_manual", &["node3"]);
    for w in waiters {
        step(w).await.unwrap().unwrap();
    }
    for f in &names {
        let c = step(clients[0].plock_get(ls, f, args(1, 1, Write, 0, u64::MAX))).await.unwrap().expect("node 2");
        assert_eq!((c.node, c.kind, c.start, c.end), (2, Read, 500, 599));
        let c = step(clients[1].plock_get(ls, f, args(2, 2, Read, 0, 99))).await.unwrap().expect("node 1");
        assert_eq!((c.node, c.kind, c.start, c.end), (1, Write, 0, 199));
    }
    drop(dlms);
}
