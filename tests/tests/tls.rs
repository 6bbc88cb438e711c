//! TLS end to end: `gnbd_serv --tls-*` with certificates made by `openssl` for each test;
//! our client and libnbd's tools over STARTTLS; plain-text clients refused where TLS is
//! required (per server and per export); certificates not signed by the CA refused; node
//! identity from the client certificate (CN or DNS name), checked against the node table and
//! the client's address; a fenced TLS node cut off and refused until unfenced.

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gnbd_client::{Client, ClientError, ClientOptions, TlsOptions};
use gnbd_tests::cluster::{control, NODE1, NODE2};
use gnbd_tests::pki::Pki;
use gnbd_tests::{pattern, require_tool, run, OutputExt, Server};
use nbd_proto::consts::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const SIZE: u64 = 64 << 20;

fn bounded<F: Future<Output = ()>>(body: F) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, body).await.expect("test body timed out");
    });
}

/// A TLS server (`--tls MODE` plus the PKI's certificates and `extra`) with a zeroed export
/// `disk` of [`SIZE`] bytes.
fn tls_server(pki: &Pki, mode: &str, extra: &[&str], unix: bool) -> Server {
    // The control channel (fence orders over TLS) opens with --tls-ca: on a free port.
    let mut b = Server::builder().arg("--tls").arg(mode).arg("--control-port").arg("0");
    for a in pki.server_args() {
        b = b.arg(a);
    }
    for a in extra {
        b = b.arg(*a);
    }
    if unix {
        b = b.unix_socket();
    }
    let server = b.start();
    let disk = server.path("disk.img");
    std::fs::File::create(&disk).and_then(|f| f.set_len(SIZE)).expect("backing file");
    server.export("disk", &disk, &[]);
    server
}

fn plain_opts(server: &Server, export: &str) -> ClientOptions {
    let mut o = ClientOptions::new(server.addr().to_string(), export);
    o.connect_timeout = Duration::from_secs(30);
    o
}

fn tls_opts(server: &Server, export: &str, certs: &Path) -> ClientOptions {
    let mut o = plain_opts(server, export);
    o.tls = Some(TlsOptions::from_dir(certs));
    o
}

fn is_policy(e: &ClientError, needle: &str) -> bool {
    matches!(e, ClientError::Fenced { message } if message.contains(needle))
}

/// Writes 4 MiB of pattern `seed` in 64 KiB requests, all in flight at once, flushes, and
/// reads it back.
async fn round_trip(c: &Client, seed: u64) {
    const CHUNK: usize = 64 << 10;
    let data = pattern(seed, 0, 4 << 20);
    let tasks: Vec<_> = data
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, d)| {
            let (c, d) = (c.clone(), d.to_vec());
            tokio::spawn(async move { c.write((i * CHUNK) as u64, &d, false).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task").expect("write over TLS");
    }
    c.flush().await.expect("flush over TLS");
    let back = c.read(0, data.len()).await.expect("read over TLS");
    assert!(back == data, "data read back over TLS differs from what was written");
}

fn file_range(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let all = std::fs::read(path).expect("read backing file");
    all[offset as usize..offset as usize + len].to_vec()
}

#[test]
fn our_client_reads_writes_and_reconnects_over_tls() {
    let pki = Pki::new();
    let node1 = pki.client("node1");
    let mut server = tls_server(&pki, "required", &[], true);
    let disk = server.path("disk.img");
    bounded(async {
        let c = Client::connect(tls_opts(&server, "disk", &node1)).await.expect("TLS connect");
        assert_eq!(c.size(), SIZE);
        round_trip(&c, 7).await;
        assert!(file_range(&disk, 0, 4 << 20) == pattern(7, 0, 4 << 20), "the backing file holds the TLS writes");
        // The whole export in 1 MiB requests, 16 in flight each way: the relay's buffers fill
        // up in both directions (a lost wake-up there would stall this past the time limit).
        let block: Arc<[u8]> = pattern(8, 0, 1 << 20).into();
        let writes: Vec<_> = (0..SIZE >> 20)
            .map(|i| {
                let (c, b) = (c.clone(), block.clone());
                tokio::spawn(async move { c.write(i << 20, &b, false).await })
            })
            .collect();
        for w in writes {
            w.await.expect("write task").expect("1 MiB write over TLS");
        }
        let reads: Vec<_> = (0..SIZE >> 20)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.read(i << 20, 1 << 20).await })
            })
            .collect();
        for r in reads {
            assert!(r.await.expect("read task").expect("1 MiB read over TLS")[..] == block[..], "1 MiB read back");
        }
        c.close().await;

        // Over the Unix socket (its path survives restarts): the server is killed and
        // restarted, and the client reconnects with a new TLS session.
        let unix = server.unix_socket().expect("unix socket").to_path_buf();
        let mut o = ClientOptions::new(format!("unix:{}", unix.display()), "disk");
        let mut t = TlsOptions::from_dir(&node1);
        t.server_name = Some("localhost".into());
        o.tls = Some(t);
        o.connect_timeout = Duration::from_secs(30);
        let c = Client::connect(o).await.expect("TLS over the Unix socket");
        c.write(0, &[0x5a; 4096], true).await.expect("FUA write");
        let before = c.reconnects();
        server.restart();
        c.write(4096, &[0xa5; 4096], true).await.expect("write after the restart");
        assert_eq!(c.read(0, 8192).await.expect("read after the restart")[..4096], [0x5a; 4096]);
        assert!(c.reconnects() > before, "the client must have reconnected");
        c.close().await;
    });
    assert_eq!(file_range(&disk, 4096, 4096), vec![0xa5; 4096]);
}

#[test]
fn nbdinfo_and_nbdcopy_over_tls_with_a_certificate_directory() {
    let nbdinfo = require_tool("nbdinfo");
    let nbdcopy = require_tool("nbdcopy");
    let pki = Pki::new();
    let node1 = pki.client("node1");
    let server = tls_server(&pki, "required", &[], false);
    let uri = format!("nbds://127.0.0.1:{}/disk?tls-certificates={}", server.port(), node1.display());
    let out = run(Command::new(&nbdinfo).arg("--json").arg(&uri));
    out.assert_success("nbdinfo over TLS");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nbdinfo --json output");
    assert_eq!(v["TLS"], true, "{v}");
    assert_eq!(v["exports"][0]["export-size"], SIZE, "{v}");

    let src = server.path("src.bin");
    std::fs::write(&src, pattern(3, 0, 2 << 20)).expect("source file");
    run(Command::new(&nbdcopy).arg(&src).arg(&uri)).assert_success("nbdcopy to the export over TLS");
    let back = server.path("back.bin");
    run(Command::new(&nbdcopy).arg(&uri).arg(&back)).assert_success("nbdcopy from the export over TLS");
    let back = std::fs::read(&back).expect("copied back");
    assert!(back[..2 << 20] == pattern(3, 0, 2 << 20)[..], "nbdcopy read back other data");

    // Plain text is refused by a server that requires TLS.
    let plain = run(Command::new(&nbdinfo).arg(server.uri("disk")));
    assert!(!plain.status.success(), "plain nbdinfo must be refused: {}", plain.describe());
    // So is a client whose certificate the CA did not sign.
    let rogue = pki.rogue_client("node1");
    let uri = format!("nbds://127.0.0.1:{}/disk?tls-certificates={}", server.port(), rogue.display());
    let out = run(Command::new(&nbdinfo).arg(&uri));
    assert!(!out.status.success(), "a certificate from another CA must be refused: {}", out.describe());
}

#[test]
fn plain_text_is_refused_where_tls_is_required() {
    let pki = Pki::new();
    let node1 = pki.client("node1");
    let server = tls_server(&pki, "required", &[], false);
    bounded(async {
        match Client::connect(plain_opts(&server, "disk")).await {
            Err(ClientError::Refused { kind: NBD_REP_ERR_TLS_REQD, .. }) => {}
            other => panic!("a plain-text client must get NBD_REP_ERR_TLS_REQD, got {other:?}"),
        }
        let listed = gnbd_client::list_exports(&server.addr().to_string(), Duration::from_secs(30)).await;
        assert!(
            matches!(listed, Err(ClientError::Refused { kind: NBD_REP_ERR_TLS_REQD, .. })),
            "plain-text listing: {listed:?}"
        );
        let listed = gnbd_client::list_exports_with(&tls_opts(&server, "", &node1)).await.expect("listing over TLS");
        assert_eq!(listed.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["disk"]);
    });

    // Selective: only the export created with `gnbd_export --tls` needs TLS.
    let server = tls_server(&pki, "selective", &[], false);
    let secure = server.path("secure.img");
    std::fs::write(&secure, vec![0u8; 1 << 20]).expect("backing file");
    server.export("secure", &secure, &["--tls"]);
    let listed = server.list_json();
    let tls_flags: Vec<(String, bool)> =
        listed.iter().map(|e| (e["name"].as_str().unwrap_or("").to_string(), e["tls"] == true)).collect();
    assert_eq!(tls_flags, [("disk".to_string(), false), ("secure".to_string(), true)]);
    bounded(async {
        let c = Client::connect(plain_opts(&server, "disk")).await.expect("plain client, plain export");
        c.write(0, &[1; 4096], false).await.expect("plain write");
        c.close().await;
        match Client::connect(plain_opts(&server, "secure")).await {
            Err(ClientError::Refused { kind: NBD_REP_ERR_TLS_REQD, .. }) => {}
            other => panic!("a TLS-only export must refuse a plain client with TLS_REQD, got {other:?}"),
        }
        for export in ["disk", "secure"] {
            let c = Client::connect(tls_opts(&server, export, &node1)).await.expect("TLS client");
            c.write(0, &[2; 4096], true).await.expect("TLS write");
            c.close().await;
        }
    });
    assert_eq!(file_range(&secure, 0, 4096), vec![2; 4096]);
}

#[test]
fn certificates_the_ca_did_not_sign_are_refused() {
    let pki = Pki::new();
    let server = tls_server(&pki, "required", &[], false);
    let good = pki.client("node1");
    let rogue = pki.rogue_client("node1");
    let anonymous = pki.anonymous_client();
    bounded(async {
        for (what, dir) in [("rogue certificate", &rogue), ("no certificate", &anonymous)] {
            match Client::connect(tls_opts(&server, "disk", dir)).await {
                Err(e @ ClientError::Tls { .. }) => assert!(e.is_permanent(), "{what}: {e}"),
                other => panic!("{what}: the server must refuse the TLS session, got {other:?}"),
            }
        }
        // A client that trusts another CA refuses the server.
        let mut o = tls_opts(&server, "disk", &good);
        if let Some(t) = o.tls.as_mut() {
            t.ca = pki.rogue_ca();
        }
        match Client::connect(o).await {
            Err(ClientError::Tls { message }) => assert!(message.to_lowercase().contains("certificate"), "{message}"),
            other => panic!("the server's certificate must not verify against another CA, got {other:?}"),
        }
        let c = Client::connect(tls_opts(&server, "disk", &good)).await.expect("a good certificate still works");
        c.write(0, &[9; 512], false).await.expect("write");
        c.close().await;
    });
}

/// Node table with node1 and node2 on two loopback addresses, cluster mode, TLS required.
fn cluster_server(pki: &Pki, dir: &Path) -> Server {
    let nodes = dir.join("nodes");
    std::fs::write(&nodes, format!("node1 {NODE1}\nnode2 {NODE2}\n")).expect("node table");
    let nodes = nodes.to_string_lossy().into_owned();
    tls_server(pki, "required", &["--nodes", &nodes, "--cluster"], false)
}

#[test]
fn node_identity_comes_from_the_certificate_and_must_match_the_address() {
    let pki = Pki::new();
    let tmp = gnbd_tests::TempDir::new();
    let server = cluster_server(&pki, tmp.path());
    let (node1, node2) = (pki.client("node1"), pki.client("node2"));
    let stranger = pki.client("stranger");
    let node2_by_san = pki.client_san_only("node2");
    let from = |o: &mut ClientOptions, a: &str| o.local_addr = Some(a.parse().expect("address"));
    bounded(async {
        // Each node from its own address.
        for (certs, addr) in [(&node1, NODE1), (&node2, NODE2)] {
            let mut o = tls_opts(&server, "disk", certs);
            from(&mut o, addr);
            let c = Client::connect(o).await.unwrap_or_else(|e| panic!("node from {addr}: {e}"));
            c.write(0, &[1; 512], false).await.expect("write");
            c.close().await;
        }
        // From an address outside the node table, the certificate alone names the node.
        let c = Client::connect(tls_opts(&server, "disk", &node1)).await.expect("node1 by certificate");
        // (Connections closed just before may still be listed; this one comes from 127.0.0.1.)
        let listed = server.list_json();
        let sessions = listed[0]["sessions"].as_array().cloned().unwrap_or_default();
        let this = sessions
            .iter()
            .find(|s| s["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")))
            .unwrap_or_else(|| panic!("the connection is listed: {sessions:?}"));
        assert_eq!(this["node"], "node1", "the connection belongs to the certificate's node: {this}");
        assert_eq!(this["tls"], true, "{this}");
        c.close().await;
        // node2's certificate used from node1's address: refused.
        let mut o = tls_opts(&server, "disk", &node2);
        from(&mut o, NODE1);
        match Client::connect(o).await {
            Err(e) if is_policy(&e, "comes from node 'node1'") => {}
            other => panic!("node2's certificate from node1's address must be refused, got {other:?}"),
        }
        // A valid certificate naming no node of the cluster: refused.
        match Client::connect(tls_opts(&server, "disk", &stranger)).await {
            Err(e) if is_policy(&e, "not a node of this cluster") => {}
            other => panic!("a certificate for an unknown node must be refused, got {other:?}"),
        }
        // Without a CN, the DNS name is the node name.
        let c = Client::connect(tls_opts(&server, "disk", &node2_by_san)).await.expect("node2 by DNS name");
        c.close().await;
        // Plain text from a listed address is refused too: TLS is required.
        let mut o = plain_opts(&server, "disk");
        from(&mut o, NODE1);
        assert!(matches!(Client::connect(o).await, Err(ClientError::Refused { kind: NBD_REP_ERR_TLS_REQD, .. })));
    });
    // The DNS-named identity is node2: fencing node2 shuts that certificate out.
    let reply = control(server.state_dir(), r#"{"op":"fence","node":"node2"}"#);
    assert!(reply["ok"].is_object(), "{reply}");
    bounded(async {
        match Client::connect(tls_opts(&server, "disk", &node2_by_san)).await {
            Err(e) if is_policy(&e, "fenced") => {}
            other => panic!("node2 (by DNS name) is fenced, got {other:?}"),
        }
    });
}

/// Writes `fill` blocks over `[base, base + half)` with many requests in flight until a write
/// fails; counts acknowledged writes. Returns the error that stopped it.
async fn writer(c: Client, base: u64, half: u64, fill: u8, acked: Arc<AtomicU64>) -> ClientError {
    let block = vec![fill; 4096];
    let mut next = 0u64;
    loop {
        let batch: Vec<_> = (0..16)
            .map(|_| {
                let off = base + (next % (half / 4096)) * 4096;
                next += 1;
                let (c, b) = (c.clone(), block.clone());
                tokio::spawn(async move { c.write(off, &b, false).await })
            })
            .collect();
        for t in batch {
            match t.await.expect("write task") {
                Ok(()) => {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => return e,
            }
        }
    }
}

async fn wait_acked(acked: &AtomicU64, more: u64, what: &str) {
    let target = acked.load(Ordering::SeqCst) + more;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < target {
        assert!(tokio::time::Instant::now() < deadline, "{what}: no progress within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn a_fenced_tls_node_is_cut_off_and_refused_until_unfenced() {
    let pki = Pki::new();
    let tmp = gnbd_tests::TempDir::new();
    let server = cluster_server(&pki, tmp.path());
    let disk = server.path("disk.img");
    let half = SIZE / 2;
    let (node1, node2) = (pki.client("node1"), pki.client("node2"));
    let state_dir = server.state_dir().to_path_buf();
    bounded(async {
        // Both connect from 127.0.0.1 (not in the node table): only their certificates tell
        // them apart.
        let mut o1 = tls_opts(&server, "disk", &node1);
        o1.io_timeout = Some(Duration::from_secs(30));
        let c1 = Client::connect(o1).await.expect("node1");
        let c2 = Client::connect(tls_opts(&server, "disk", &node2)).await.expect("node2");
        let (a1, a2) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let w1 = tokio::spawn(writer(c1, 0, half, 0xaa, a1.clone()));
        let w2 = tokio::spawn(writer(c2.clone(), half, half, 0xbb, a2.clone()));
        wait_acked(&a1, 200, "node1 writes").await;
        wait_acked(&a2, 200, "node2 writes").await;

        let sd = state_dir.clone();
        let reply = tokio::task::spawn_blocking(move || control(&sd, r#"{"op":"fence","node":"node1"}"#))
            .await
            .expect("fence order");
        assert!(reply["ok"].is_object(), "fence order: {reply}");
        let at_ack = std::fs::read(&disk).expect("backing file");
        let err = w1.await.expect("node1 writer");
        assert!(matches!(err, ClientError::Fenced { .. }), "node1's writes must fail as fenced, got {err:?}");
        wait_acked(&a2, 200, "node2 after node1 was fenced").await;
        let later = std::fs::read(&disk).expect("backing file");
        assert!(at_ack[..half as usize] == later[..half as usize], "node1's half changed after the fence");
        assert!(at_ack[..half as usize].contains(&0xaa), "node1's acknowledged writes are missing");

        match Client::connect(tls_opts(&server, "disk", &node1)).await {
            Err(ClientError::Fenced { .. }) => {}
            other => panic!("a fenced node's new TLS connection must be refused, got {other:?}"),
        }
        let sd = state_dir.clone();
        let reply = tokio::task::spawn_blocking(move || control(&sd, r#"{"op":"unfence","node":"node1"}"#))
            .await
            .expect("unfence order");
        assert!(reply["ok"].is_object(), "unfence order: {reply}");
        let c1 = Client::connect(tls_opts(&server, "disk", &node1)).await.expect("node1 after unfencing");
        c1.write(0, &[0x11; 4096], true).await.expect("node1 writes again");
        c1.close().await;
        w2.abort();
        c2.close().await;
    });
    assert_eq!(file_range(&disk, 0, 4096), vec![0x11; 4096]);
}

#[test]
fn fence_orders_over_tls_are_authenticated_by_member_certificates() {
    let pki = Pki::new();
    let tmp = gnbd_tests::TempDir::new();
    // No cluster key: the control channel takes orders only over TLS.
    let server = cluster_server(&pki, tmp.path());
    let ctl = server.control_addr().expect("the ready line names the control channel");
    let (node1, node2) = (pki.client("node1"), pki.client("node2"));
    let (rogue, stranger) = (pki.rogue_client("node2"), pki.client("stranger"));
    let key = gnbd_tests::cluster::key_file(tmp.path(), "cluster.key", 0x5a);
    let target = format!("127.0.0.1:{}", ctl.port());
    let agent = |action: &str, node: &str, certs: &Path| {
        run(Command::new(gnbd_tests::fence_gnbd_bin())
            .args(["-o", action, "-n", node, "-s", &target, "--tls-certificates"])
            .arg(certs))
    };
    let bans = || control(server.state_dir(), r#"{"op":"bans"}"#)["ok"]["nodes"].clone();

    // A member (node2's certificate) fences node1.
    agent("off", "node1", &node2).assert_success("fence_gnbd off over TLS");
    assert_eq!(bans(), serde_json::json!(["node1"]));
    bounded(async {
        match Client::connect(tls_opts(&server, "disk", &node1)).await {
            Err(ClientError::Fenced { .. }) => {}
            other => panic!("node1 is fenced, got {other:?}"),
        }
    });
    agent("status", "node1", &node2).assert_code(2, "status of a fenced node");

    // Refused, and nothing changes: the fenced node itself, a certificate from another CA, a
    // certificate for a node outside the cluster, an order signed with a key this server
    // does not have.
    let out = agent("on", "node1", &node1);
    out.assert_code(1, "a fenced node unfencing itself");
    assert!(out.stderr_str().contains("fenced and cannot give orders"), "{}", out.describe());
    agent("on", "node1", &rogue).assert_code(1, "a certificate from another CA");
    let out = agent("on", "node1", &stranger);
    out.assert_code(1, "a certificate naming no node of the cluster");
    assert!(out.stderr_str().contains("not a node of this cluster"), "{}", out.describe());
    let out = run(Command::new(gnbd_tests::fence_gnbd_bin())
        .args(["-o", "on", "-n", "node1", "-s", &target, "-k"])
        .arg(&key));
    out.assert_code(1, "an order signed with a cluster key the server does not have");
    assert!(out.stderr_str().contains("authentication failed"), "{}", out.describe());
    assert_eq!(bans(), serde_json::json!(["node1"]), "refused orders must change nothing");
    let log = server.log();
    assert!(log.contains("refused a control order from a certificate"), "refusals are logged:\n{log}");

    // A member unfences node1, which gets back in.
    agent("on", "node1", &node2).assert_success("fence_gnbd on over TLS");
    assert_eq!(bans(), serde_json::json!([]));
    bounded(async {
        let c = Client::connect(tls_opts(&server, "disk", &node1)).await.expect("node1 after unfencing");
        c.close().await;
    });
}

#[test]
fn misconfigured_tls_stops_the_server_with_a_clear_message() {
    let pki = Pki::new();
    let tmp = gnbd_tests::TempDir::new();
    let node1 = pki.client("node1");
    let nodes = tmp.path().join("nodes");
    std::fs::write(&nodes, format!("node1 {NODE1}\n")).expect("node table");
    let server_args = pki.server_args();
    let (cert, key) = (&server_args[1], &server_args[3]);
    let start = |args: &[&std::ffi::OsStr]| {
        let out = run(Command::new(gnbd_tests::serv_bin())
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .args(["-p", "0", "--bind", "127.0.0.1", "--foreground"])
            .args(args));
        out.assert_code(1, "gnbd_serv with a bad TLS setup");
        out.stderr_str()
    };
    let other_key = node1.join("client-key.pem");
    let missing = tmp.path().join("missing.pem");
    let e = start(&["--tls-cert".as_ref(), cert.as_ref(), "--tls-key".as_ref(), other_key.as_ref()]);
    assert!(e.contains("does not belong to the certificate"), "{e}");
    let e = start(&["--tls-cert".as_ref(), missing.as_ref(), "--tls-key".as_ref(), key.as_ref()]);
    assert!(e.contains("cannot read certificate") && e.contains("missing.pem"), "{e}");
    let e = start(&["--tls-cert".as_ref(), key.as_ref(), "--tls-key".as_ref(), key.as_ref()]);
    assert!(e.contains("holds no certificate"), "{e}");
    let e = start(&[
        "--tls-cert".as_ref(),
        cert.as_ref(),
        "--tls-key".as_ref(),
        key.as_ref(),
        "--nodes".as_ref(),
        nodes.as_ref(),
        "--cluster".as_ref(),
    ]);
    assert!(e.contains("--cluster with TLS needs --tls-ca"), "{e}");
}
