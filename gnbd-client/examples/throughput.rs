//! Sequential throughput of the client library against one export, plain or over TLS:
//! writes then reads `MIB` MiB in 1 MiB requests with 8 in flight, and prints MB/s.
//!
//! ```sh
//! cargo run -p gnbd-client --example throughput -- 127.0.0.1:10809 disk0 [CERT_DIR] [MIB]
//! ```
//!
//! `CERT_DIR` (libnbd layout: ca-cert.pem, client-cert.pem, client-key.pem) turns on TLS;
//! `-` means plain text.

use std::time::Instant;

use gnbd_client::{Client, ClientOptions, TlsOptions};

const REQ: usize = 1 << 20;
const DEPTH: usize = 8;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        anyhow::bail!("usage: throughput ADDR EXPORT [CERT_DIR|-] [MIB]");
    }
    let mut opts = ClientOptions::new(args[1].clone(), args[2].clone());
    if let Some(dir) = args.get(3).filter(|d| d.as_str() != "-") {
        opts.tls = Some(TlsOptions::from_dir(dir.as_ref()));
    }
    let mib: usize = args.get(4).map_or(Ok(256), |m| m.parse())?;
    let c = Client::connect(opts).await?;
    let total = (mib * REQ).min(c.size() as usize / REQ * REQ);
    let data: std::sync::Arc<[u8]> = (0..REQ).map(|i| (i * 7 + 1) as u8).collect::<Vec<u8>>().into();

    let t = Instant::now();
    let mut tasks = std::collections::VecDeque::new();
    for off in (0..total).step_by(REQ) {
        if tasks.len() >= DEPTH {
            let h: tokio::task::JoinHandle<Result<(), gnbd_client::ClientError>> =
                tasks.pop_front().expect("depth > 0");
            h.await??;
        }
        let (c, d) = (c.clone(), data.clone());
        tasks.push_back(tokio::spawn(async move { c.write(off as u64, &d, false).await }));
    }
    for h in tasks.drain(..) {
        h.await??;
    }
    c.flush().await?;
    let write = total as f64 / t.elapsed().as_secs_f64() / 1e6;

    let t = Instant::now();
    let mut reads = std::collections::VecDeque::new();
    for off in (0..total).step_by(REQ) {
        if reads.len() >= DEPTH {
            let h: tokio::task::JoinHandle<Result<Vec<u8>, gnbd_client::ClientError>> =
                reads.pop_front().expect("depth > 0");
            h.await??;
        }
        let c = c.clone();
        reads.push_back(tokio::spawn(async move { c.read(off as u64, REQ).await }));
    }
    for h in reads.drain(..) {
        h.await??;
    }
    let read = total as f64 / t.elapsed().as_secs_f64() / 1e6;
    println!("{} MiB: write {write:.0} MB/s, read {read:.0} MB/s", total >> 20);
    c.close().await;
    Ok(())
}
