//! The driver against an in-process NBD server built from nbd-proto's server side, which can
//! misbehave on purpose: wrong cookies, silence, dropped connections, fencing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gnbd_client::{Client, ClientError, ClientOptions, ConnectionState};
use nbd_proto::consts::*;
use nbd_proto::{
    decode_request, encode_done, encode_read_reply_header, Command, Decode, ExportCatalog, ExportInfo, Refusal,
    ServerConfig, ServerEntry, ServerHandshake, ServerStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SIZE: u64 = 1 << 20;

/// How the server treats one connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behave {
    /// Serves requests from the shared disk.
    Good,
    /// Answers the first request with a cookie nobody sent.
    BadCookie,
    /// Completes the handshake, then never answers.
    Silent,
    /// Completes the handshake, then closes at once.
    DropAfterHandshake,
    /// Refuses the export by policy (a fenced node).
    Fenced,
}

struct Catalog {
    fenced: bool,
}

impl ExportCatalog for Catalog {
    fn lookup(&self, _name: &str, _tls: bool) -> Result<ExportInfo, Refusal> {
        if self.fenced {
            return Err(Refusal::Policy("node is fenced".into()));
        }
        Ok(ExportInfo {
            name: "disk".into(),
            description: String::new(),
            size: SIZE,
            flags: NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA,
            min_block: 1,
            preferred_block: 4096,
            max_block: 64 * 1024,
        })
    }
    fn list(&self, _tls: bool) -> Vec<ServerEntry> {
        vec![ServerEntry { name: "disk".into(), description: String::new() }]
    }
}

struct Fake {
    addr: String,
    /// Behaviours for the next connections, in order; `Good` once empty.
    plan: Arc<Mutex<VecDeque<Behave>>>,
    disk: Arc<Mutex<Vec<u8>>>,
}

async fn start(plan: &[Behave]) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("local addr").to_string();
    let plan = Arc::new(Mutex::new(plan.iter().copied().collect::<VecDeque<_>>()));
    let disk = Arc::new(Mutex::new(vec![0u8; SIZE as usize]));
    let (p, d) = (plan.clone(), disk.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let how = p.lock().unwrap().pop_front().unwrap_or(Behave::Good);
            tokio::spawn(serve(s, how, d.clone()));
        }
    });
    Fake { addr, plan, disk }
}

async fn serve(mut s: TcpStream, how: Behave, disk: Arc<Mutex<Vec<u8>>>) {
    let catalog = Catalog { fenced: how == Behave::Fenced };
    let mut hs = ServerHandshake::new(ServerConfig::default());
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 1 << 16];
    let mode = loop {
        let out = hs.take_output();
        if s.write_all(&out).await.is_err() {
            return;
        }
        let n = match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        let Ok((used, status)) = hs.feed(&buf, &catalog) else { return };
        buf.drain(..used);
        match status {
            ServerStatus::Continue => {}
            ServerStatus::Done(neg) => {
                let _ = s.write_all(&hs.take_output()).await;
                break neg.mode;
            }
            _ => {
                let _ = s.write_all(&hs.take_output()).await;
                return;
            }
        }
    };
    match how {
        Behave::DropAfterHandshake => return,
        Behave::Silent => {
            // Swallow everything, answer nothing.
            while let Ok(n) = s.read(&mut tmp).await {
                if n == 0 {
                    return;
                }
            }
            return;
        }
        _ => {}
    }
    let mut first = true;
    loop {
        let req = loop {
            match decode_request(&buf, mode) {
                Ok(Decode::Done { value, consumed }) => {
                    buf.drain(..consumed);
                    break value;
                }
                Ok(Decode::NeedMore { .. }) => {}
                Err(_) => return,
            }
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let mut out = Vec::new();
        let cookie = if how == Behave::BadCookie && first { req.cookie + 1000 } else { req.cookie };
        first = false;
        let (off, len) = (req.offset as usize, req.length as usize);
        match req.command {
            Command::Read => {
                encode_read_reply_header(&mut out, mode, cookie, req.offset, req.length);
                out.extend_from_slice(&disk.lock().unwrap()[off..off + len]);
            }
            Command::Write => {
                while buf.len() < len {
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                disk.lock().unwrap()[off..off + len].copy_from_slice(&buf[..len]);
                buf.drain(..len);
                encode_done(&mut out, mode, cookie, req.offset);
            }
            Command::Disc => return,
            _ => encode_done(&mut out, mode, cookie, req.offset),
        }
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn opts(fake: &Fake) -> ClientOptions {
    let mut o = ClientOptions::new(fake.addr.clone(), "disk");
    o.reconnect_min = Duration::from_millis(10);
    o
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f).await.expect("test body timed out")
}

#[tokio::test]
async fn requests_are_split_at_the_servers_maximum() {
    bounded(async {
        let fake = start(&[]).await;
        let c = Client::connect(opts(&fake)).await.expect("connect");
        assert_eq!(c.max_request(), 64 * 1024);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        c.write(1000, &data, true).await.expect("write");
        assert_eq!(&fake.disk.lock().unwrap()[1000..301_000], &data[..]);
        assert_eq!(c.read(1000, data.len()).await.expect("read"), data);
        c.close().await;
    })
    .await;
}

#[tokio::test]
async fn protocol_violation_fails_in_flight_requests_then_reconnects() {
    bounded(async {
        let fake = start(&[Behave::BadCookie]).await;
        let c = Client::connect(opts(&fake)).await.expect("connect");
        match c.read(0, 512).await {
            Err(ClientError::Protocol(msg)) => assert!(msg.contains("cookie"), "{msg}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        // The next request goes over a new connection.
        c.write(0, &[7u8; 512], false).await.expect("write after reconnect");
        assert_eq!(c.read(0, 512).await.expect("read"), vec![7u8; 512]);
        assert_eq!(c.reconnects(), 1);
    })
    .await;
}

#[tokio::test]
async fn silent_server_times_out() {
    bounded(async {
        let fake = start(&[Behave::Silent; 64]).await;
        let mut o = opts(&fake);
        o.io_timeout = Some(Duration::from_millis(300));
        let c = Client::connect(o).await.expect("connect");
        match c.read(0, 512).await {
            Err(ClientError::TimedOut(_)) => {}
            other => panic!("expected TimedOut, got {other:?}"),
        }
        assert!(!fake.plan.lock().unwrap().is_empty(), "the test needs the server to stay silent");
    })
    .await;
}

#[tokio::test]
async fn fenced_on_reconnect_fails_everything_for_good() {
    bounded(async {
        let fake = start(&[Behave::DropAfterHandshake, Behave::Fenced]).await;
        let c = Client::connect(opts(&fake)).await.expect("connect");
        match c.read(0, 512).await {
            Err(ClientError::Fenced { message }) => assert!(message.contains("fenced"), "{message}"),
            other => panic!("expected Fenced, got {other:?}"),
        }
        assert!(matches!(c.state(), ConnectionState::Failed(ClientError::Fenced { .. })), "{:?}", c.state());
        assert!(matches!(c.flush().await, Err(ClientError::Fenced { .. })));
    })
    .await;
}

#[tokio::test]
async fn fenced_at_connect() {
    bounded(async {
        let fake = start(&[Behave::Fenced]).await;
        assert!(matches!(Client::connect(opts(&fake)).await, Err(ClientError::Fenced { .. })));
    })
    .await;
}

#[tokio::test]
async fn list_exports_names_the_export() {
    bounded(async {
        let fake = start(&[]).await;
        let v = gnbd_client::list_exports(&fake.addr, Duration::from_secs(5)).await.expect("list");
        assert_eq!(v.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["disk"]);
    })
    .await;
}
