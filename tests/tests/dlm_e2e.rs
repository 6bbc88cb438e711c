//! End-to-end: real `dlm_controld` daemons (one, or three on 127.0.0.1-3 talking TCP),
//! driven by the async client library and by `dlm_tool`.

use std::io::{Read, Write};
use std::time::Duration;

use dlm::{ClientError, DlmClient, Flags, Mode, SbFlags, Status};
use gnbd_tests::{free_addr, DlmDaemon, OutputExt, TempDir};

const STEP: Duration = Duration::from_secs(20);

async fn step<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.expect("step finished in time")
}

#[tokio::test]
async fn single_node_locks_value_blocks_callbacks_and_tool() {
    let dir = TempDir::new();
    let d = DlmDaemon::start(dir.path(), 1, None, &[]);
    let a = step(DlmClient::connect(&d.socket)).await.unwrap();
    let b = step(DlmClient::connect(&d.socket)).await.unwrap();
    let ls = step(a.join(b"app", 0)).await.unwrap();
    assert_eq!(step(b.join(b"app", 0)).await.unwrap(), ls);

    // EX with a value block written on the way down to NL.
    let mut la = step(a.lock(ls, b"res", Mode::Ex, Flags::VALBLK, None)).await.unwrap();
    assert_eq!(la.mode(), Some(Mode::Ex));
    assert_eq!(la.lvb(), Some(&[0u8; 32][..]));
    step(la.convert(Mode::Pw, Flags::VALBLK, None)).await.unwrap();
    // NOQUEUE conflict from another client.
    let err = step(b.lock(ls, b"res", Mode::Pr, Flags::NOQUEUE, None)).await.unwrap_err();
    assert!(matches!(err, ClientError::Status(Status::WouldBlock)), "{err}");
    // A queued PR: the holder gets a blocking callback for PR.
    let mut lb = step(b.request(ls, b"res", Mode::Pr, Flags::VALBLK, None)).await.unwrap();
    assert_eq!(step(la.blocked()).await, Some(Mode::Pr));
    step(la.convert(Mode::Nl, Flags::VALBLK, Some(&[9; 32]))).await.unwrap();
    let c = step(lb.wait()).await.unwrap();
    assert_eq!((c.status, c.mode), (Status::Granted, Some(Mode::Pr)));
    assert_eq!(c.lvb.as_deref(), Some(&[9u8; 32][..]));
    assert!(!c.sbflags.contains(SbFlags::VALNOTVALID));

    // Cancel a queued conversion.
    step(la.start_convert(Mode::Ex, Flags::empty(), None)).await.unwrap();
    assert!(step(la.cancel()).await.unwrap());
    let err = step(la.wait()).await.unwrap_err();
    assert!(matches!(err, ClientError::Status(Status::Canceled)), "{err}");
    assert_eq!(la.mode(), Some(Mode::Nl));

    // A client that goes away loses its locks: the waiter behind it is granted.
    step(lb.unlock(Flags::empty(), None)).await.unwrap();
    let c3 = step(DlmClient::connect(&d.socket)).await.unwrap();
    let _held = step(c3.lock(ls, b"other", Mode::Ex, Flags::empty(), None)).await.unwrap();
    let mut waiting = step(a.request(ls, b"other", Mode::Ex, Flags::empty(), None)).await.unwrap();
    drop(_held);
    drop(c3);
    assert_eq!(step(waiting.wait()).await.unwrap().mode, Some(Mode::Ex));

    // A client gone while holding EX with a value block leaves the value block not valid
    // (what it protected may be half-changed, as when a node dies); PR holders leave it be.
    let c4 = step(DlmClient::connect(&d.socket)).await.unwrap();
    let _ex = step(c4.lock(ls, b"vb", Mode::Ex, Flags::VALBLK, None)).await.unwrap();
    let mut next = step(a.request(ls, b"vb", Mode::Pr, Flags::VALBLK, None)).await.unwrap();
    drop(_ex);
    drop(c4);
    let c = step(next.wait()).await.unwrap();
    assert_eq!(c.mode, Some(Mode::Pr));
    assert!(c.sbflags.contains(SbFlags::VALNOTVALID), "value block must be flagged not valid");
    let c5 = step(DlmClient::connect(&d.socket)).await.unwrap();
    let _pr = step(c5.lock(ls, b"vb2", Mode::Pr, Flags::VALBLK, None)).await.unwrap();
    drop(_pr);
    drop(c5);
    let c = step(a.lock(ls, b"vb2", Mode::Ex, Flags::VALBLK, None)).await.unwrap();
    assert!(!c.sbflags().contains(SbFlags::VALNOTVALID), "a reader going away invalidates nothing");

    // dlm_tool: a lock that outlives the command, then released by another command.
    let out = d.tool(&["lock", "app", "job", "EX"]);
    out.assert_success("dlm_tool lock");
    let out = d.tool(&["lock", "app", "job", "PR", "--noqueue"]);
    assert!(!out.status.success(), "the job lock is still held");
    let dump = d.tool(&["lockdump", "app"]);
    dump.assert_success("dlm_tool lockdump");
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(text.contains("resource \"job\" master 1") && text.contains("granted gr EX"), "{text}");
    d.tool(&["unlock", "app", "job"]).assert_success("dlm_tool unlock");
    d.tool(&["lock", "app", "job", "PR", "--noqueue"]).assert_success("dlm_tool lock after unlock");
    d.tool(&["unlock", "app", "job"]).assert_success("dlm_tool unlock");
    let ls_out = d.tool(&["ls"]);
    ls_out.assert_success("dlm_tool ls");
    let text = String::from_utf8_lossy(&ls_out.stdout);
    assert!(text.contains("name app") && text.contains("members 1") && text.contains("slots 1:1"), "{text}");
    d.tool(&["join", "other", "--lvb-len", "64"]).assert_success("dlm_tool join");
    d.tool(&["leave", "other"]).assert_success("dlm_tool leave");
}

#[tokio::test]
async fn three_daemons_over_tcp_share_locks_and_value_blocks() {
    let dir = TempDir::new();
    let daemons = DlmDaemon::start_mesh(dir.path(), 3);
    let mut clients = Vec::new();
    for d in &daemons {
        clients.push(step(DlmClient::connect(&d.socket)).await.unwrap());
    }
    let mut ls = 0;
    for c in &clients {
        ls = step(c.join(b"shared", 0)).await.unwrap();
    }
    // Node 1 writes, node 2 and node 3 read, on several resources so masters differ.
    for r in 0..6u8 {
        let name = [b'r', b'0' + r];
        let mut w = step(clients[0].lock(ls, &name, Mode::Ex, Flags::VALBLK, None)).await.unwrap();
        let mut waiter = step(clients[1].request(ls, &name, Mode::Pr, Flags::VALBLK, None)).await.unwrap();
        assert_eq!(step(w.blocked()).await, Some(Mode::Pr), "blocking callback across nodes");
        step(w.convert(Mode::Nl, Flags::VALBLK, Some(&[r + 1; 32]))).await.unwrap();
        let c = step(waiter.wait()).await.unwrap();
        assert_eq!(c.lvb.as_deref(), Some(&[r + 1; 32][..]));
        let l3 = step(clients[2].lock(ls, &name, Mode::Pr, Flags::VALBLK, None)).await.unwrap();
        assert_eq!(l3.lvb(), Some(&[r + 1; 32][..]));
        step(l3.unlock(Flags::empty(), None)).await.unwrap();
        step(waiter.unlock(Flags::empty(), None)).await.unwrap();
        step(w.unlock(Flags::empty(), None)).await.unwrap();
    }
    // An EX ping-pong between nodes 2 and 3.
    for i in 0..20 {
        let c = &clients[1 + i % 2];
        let l = step(c.lock(ls, b"ping", Mode::Ex, Flags::empty(), None)).await.unwrap();
        step(l.unlock(Flags::empty(), None)).await.unwrap();
    }
    // Every node lists the same members and slots.
    let mut seen = None;
    for d in &daemons {
        let out = d.tool(&["ls"]);
        out.assert_success("dlm_tool ls");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<String> =
            text.lines().filter(|l| l.starts_with("members") || l.starts_with("slots")).map(String::from).collect();
        assert_eq!(lines, vec!["members 1 2 3".to_string(), "slots 1:1 2:2 3:3".to_string()], "{text}");
        if let Some(s) = &seen {
            assert_eq!(s, &lines);
        }
        seen = Some(lines);
    }
}

#[tokio::test]
async fn bad_client_input_gets_an_error_and_disturbs_nobody() {
    let dir = TempDir::new();
    let d = DlmDaemon::start(dir.path(), 1, None, &[]);
    let good = step(DlmClient::connect(&d.socket)).await.unwrap();
    let ls = step(good.join(b"app", 0)).await.unwrap();
    let held = step(good.lock(ls, b"res", Mode::Ex, Flags::empty(), None)).await.unwrap();

    // Garbage: an error reply, then the connection is closed.
    let mut raw = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    raw.set_read_timeout(Some(STEP)).unwrap();
    raw.write_all(&[0, 0, 0, 9, 99, 0, 0, 0, 1, 1, 2, 3, 4]).unwrap();
    let mut buf = Vec::new();
    raw.read_to_end(&mut buf).unwrap();
    match dlm::decode_response(&buf).unwrap() {
        dlm::Frame::Done(dlm::Response::Reply { status, .. }, _, _) => assert_eq!(status, -22),
        other => panic!("{other:?}"),
    }
    // An oversized frame.
    let mut raw = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    raw.set_read_timeout(Some(STEP)).unwrap();
    raw.write_all(&[0x7f, 0xff, 0xff, 0xff]).unwrap();
    let mut buf = Vec::new();
    raw.read_to_end(&mut buf).unwrap();
    assert!(!buf.is_empty());

    // Another client forging the lock id, or naming an unknown lockspace.
    let evil = step(DlmClient::connect(&d.socket)).await.unwrap();
    step(evil.join(b"app", 0)).await.unwrap();
    let mut forged = step(evil.request(ls, b"x", Mode::Nl, Flags::empty(), None)).await.unwrap();
    step(forged.wait()).await.unwrap();
    let err = step(evil.cancel(ls, held.id())).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(-2)), "{err}");
    let err = step(evil.lock(0x1234, b"x", Mode::Ex, Flags::empty(), None)).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(-2)), "{err}");
    let err = step(evil.lock(ls, &[b'n'; 65], Mode::Ex, Flags::empty(), None)).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(_)), "{err}");
    let err = step(evil.lock(ls, b"x", Mode::Ex, Flags::VALBLK, Some(&[1; 7]))).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(-22)), "{err}");

    // The good client is undisturbed.
    let mut held = held;
    step(held.convert(Mode::Pr, Flags::empty(), None)).await.unwrap();
    step(held.unlock(Flags::empty(), None)).await.unwrap();
}

#[tokio::test]
async fn killed_ex_holder_waiter_granted_only_after_fence_with_value_block_invalid() {
    let dir = TempDir::new();
    let mut daemons = DlmDaemon::start_mesh(dir.path(), 3);
    let mut clients = Vec::new();
    for d in &daemons {
        clients.push(step(DlmClient::connect(&d.socket)).await.unwrap());
    }
    let mut ls = 0;
    for c in &clients {
        ls = step(c.join(b"rec", 0)).await.unwrap();
    }
    // Several resources, so that some are mastered by the node that dies and some not.
    let names: Vec<Vec<u8>> = (0..6).map(|i| format!("R{i}").into_bytes()).collect();
    let mut held = Vec::new();
    let mut waiters = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // Node 1 writes a value block, then holds EX again (dirty).
        let mut l = step(clients[0].lock(ls, name, Mode::Ex, Flags::VALBLK, None)).await.unwrap();
        step(l.convert(Mode::Nl, Flags::VALBLK, Some(&[i as u8 + 1; 32]))).await.unwrap();
        step(l.convert(Mode::Ex, Flags::VALBLK, None)).await.unwrap();
        assert_eq!(l.lvb(), Some(&[i as u8 + 1; 32][..]));
        // Node 2 waits for PR.
        let w = step(clients[1].request(ls, name, Mode::Pr, Flags::VALBLK, None)).await.unwrap();
        assert_eq!(step(l.blocked()).await, Some(Mode::Pr));
        held.push(l);
        waiters.push(w);
    }
    // Node 1 dies with its EX locks.
    daemons[0].kill();
    for c in &clients[1..] {
        step(c.membership(dlm::MemberEvent::Members { epoch: 2, members: vec![2, 3], failed: vec![1] })).await.unwrap();
    }
    // Not fenced yet: nothing may be granted. (Any grant now would be a bug, whatever the
    // timing; the wait only gives a wrong grant the chance to show.)
    for w in &mut waiters {
        assert!(tokio::time::timeout(Duration::from_millis(200), w.wait()).await.is_err(), "granted before fencing");
    }
    let out = daemons[1].tool(&["ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("state recovering"), "{out:?}");
    for c in &clients[1..] {
        step(c.membership(dlm::MemberEvent::Fenced { node: 1 })).await.unwrap();
    }
    for w in &mut waiters {
        let c = step(w.wait()).await.unwrap();
        assert_eq!((c.status, c.mode), (Status::Granted, Some(Mode::Pr)));
        assert!(c.sbflags.contains(SbFlags::VALNOTVALID), "value block must be flagged not valid");
    }
    // Members and slots agree on the survivors, and slots did not move.
    for d in &daemons[1..] {
        let out = d.tool(&["ls"]);
        out.assert_success("dlm_tool ls");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains("members 2 3\n") && text.contains("slots 2:2 3:3\n"), "{text}");
        assert!(text.contains("state running"), "{text}");
    }
    // Life goes on: node 3 takes EX once node 2 lets go, and writes a fresh value block.
    for (i, (w, name)) in waiters.into_iter().zip(&names).enumerate() {
        let mut x = step(clients[2].request(ls, name, Mode::Ex, Flags::VALBLK, None)).await.unwrap();
        step(w.unlock(Flags::empty(), None)).await.unwrap();
        step(x.wait()).await.unwrap();
        step(x.convert(Mode::Nl, Flags::VALBLK, Some(&[100 + i as u8; 32]))).await.unwrap();
        let r = step(clients[1].lock(ls, name, Mode::Pr, Flags::VALBLK, None)).await.unwrap();
        assert_eq!(r.lvb(), Some(&[100 + i as u8; 32][..]));
        assert!(!r.sbflags().contains(SbFlags::VALNOTVALID));
    }
    drop(held);
}

#[tokio::test]
async fn bad_peer_input_is_refused_and_disturbs_nobody() {
    let dir = TempDir::new();
    let me = free_addr("127.0.0.1");
    // Node 2 is configured but never started: its address is just a closed port.
    let ghost = free_addr("127.0.0.2");
    let d = DlmDaemon::start(dir.path(), 1, Some(me), &[(2, ghost)]);
    let c = step(DlmClient::connect(&d.socket)).await.unwrap();
    let ls = step(c.join(b"app", 0)).await.unwrap();
    // A resource whose directory node is this one (node 2 never answers).
    let res = (0..).map(|i| format!("res{i}").into_bytes()).find(|n| dlm::dir_node(n, &[1, 2]) == 1).unwrap();
    let mut frame = Vec::new();
    dlm::encode(&dlm::Message::Hello { node: 9 }, &mut frame);
    // A node that is not configured: closed at once.
    let mut s = std::net::TcpStream::connect(me).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s.write_all(&frame).unwrap();
    assert_eq!(s.read(&mut [0u8; 16]).unwrap_or(0), 0, "connection from an unknown node must be closed");
    // A configured node sending garbage, then a lock request with a forged lock id.
    let mut s = std::net::TcpStream::connect(me).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let mut bytes = Vec::new();
    dlm::encode(&dlm::Message::Hello { node: 2 }, &mut bytes);
    dlm::encode(
        &dlm::Message::Request {
            ls,
            epoch: 1,
            name: res.clone(),
            lkid: 7 << 32 | 1,
            mode: Mode::Ex,
            flags: Flags::empty(),
            lvb: vec![],
        },
        &mut bytes,
    );
    bytes.extend_from_slice(b"DL\x01\x63garbage-garbage");
    s.write_all(&bytes).unwrap();
    assert_eq!(s.read(&mut [0u8; 16]).unwrap_or(0), 0, "a malformed frame closes the connection");
    // The daemon still serves: a local lock on the same resource is granted.
    let l = step(c.lock(ls, &res, Mode::Ex, Flags::NOQUEUE, None)).await.unwrap();
    step(l.unlock(Flags::empty(), None)).await.unwrap();
}
