//! The client library's side of a cancelled plock wait, against a scripted daemon on a real
//! Unix socket that injects the race a real one cannot be made to show on demand: the grant
//! crosses the cancel. The library must then unlock the range it will never report.

use std::time::Duration;

use dlm::{decode_request, encode_response, DlmClient, Frame, PlockArgs, PlockKind, PlockOpCode, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Read one request frame.
async fn next(s: &mut UnixStream, buf: &mut Vec<u8>) -> (Request, u32) {
    loop {
        if let Frame::Done(req, seq, used) = decode_request(buf).expect("valid request") {
            buf.drain(..used);
            return (req, seq);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "client closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn send(s: &mut UnixStream, r: Response) {
    let mut out = Vec::new();
    encode_response(&r, &mut out);
    s.write_all(&out).await.expect("write");
}

#[tokio::test]
async fn a_grant_that_crosses_the_cancel_is_unlocked_again() {
    let dir = std::env::temp_dir().join(format!("dlm-plock-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let test = async {
        let client = DlmClient::connect(&path).await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let args = PlockArgs { owner: 7, pid: 70, start: 10, end: 19, kind: PlockKind::Write };
        let c = client.clone();
        let waiting = tokio::spawn(async move { c.plock_set(1, b"file", args, true).await });
        let (req, seq) = next(&mut s, &mut buf).await;
        assert_eq!(req, Request::Plock { ls: 1, op: PlockOpCode::Set, name: b"file".to_vec(), args, wait: true });
        send(&mut s, Response::Reply { seq, status: 0, ls: 1, lkid: u64::from(seq) }).await;
        // The caller gives up while the request waits.
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        let (cancel, cseq) = next(&mut s, &mut buf).await;
        assert_eq!(cancel, Request::PlockCancel { ls: 1, reqid: seq });
        // The grant was already on its way: the cancel finds nothing.
        send(&mut s, Response::Plock { seq, status: 0, ls: 1, conflict: None }).await;
        send(&mut s, Response::Reply { seq: cseq, status: 1, ls: 1, lkid: u64::from(seq) }).await;
        let (unlock, useq) = next(&mut s, &mut buf).await;
        let want = PlockArgs { kind: PlockKind::Unlock, ..args };
        assert_eq!(
            unlock,
            Request::Plock { ls: 1, op: PlockOpCode::Set, name: b"file".to_vec(), args: want, wait: false }
        );
        send(&mut s, Response::Reply { seq: useq, status: 0, ls: 1, lkid: u64::from(useq) }).await;
        send(&mut s, Response::Plock { seq: useq, status: 0, ls: 1, conflict: None }).await;
        // The connection still works.
        let c = client.clone();
        let get = tokio::spawn(async move { c.plock_get(1, b"file", args).await });
        let (req, gseq) = next(&mut s, &mut buf).await;
        assert!(matches!(req, Request::Plock { op: PlockOpCode::Get, .. }), "{req:?}");
        send(&mut s, Response::Reply { seq: gseq, status: 0, ls: 1, lkid: 0 }).await;
        send(&mut s, Response::Plock { seq: gseq, status: 0, ls: 1, conflict: None }).await;
        assert_eq!(get.await.unwrap().unwrap(), None);
    };
    tokio::time::timeout(Duration::from_secs(20), test).await.expect("test finished in time");
    let _ = std::fs::remove_dir_all(&dir);
}
