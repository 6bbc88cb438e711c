//! Micro-benchmarks of the hot codec paths: request decoding, reply header encoding, and a
//! whole handshake. No external harness: `cargo bench -p nbd-proto` prints ns per operation;
//! `-- --test` runs each once (the CI smoke run).

use std::hint::black_box;
use std::time::Instant;

use nbd_proto::*;

fn bench(name: &str, iters: u64, mut f: impl FnMut()) {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    println!("{name:<40} {ns:>10.1} ns/op");
}

struct Cat;
impl ExportCatalog for Cat {
    fn lookup(&self, _: &str, _: bool) -> Result<ExportInfo, Refusal> {
        Ok(ExportInfo {
            name: "disk".into(),
            description: String::new(),
            size: 1 << 30,
            flags: 1,
            min_block: 1,
            preferred_block: 4096,
            max_block: 1 << 26,
        })
    }
    fn list(&self, _: bool) -> Vec<ServerEntry> {
        Vec::new()
    }
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let n = |full: u64| if smoke { 1 } else { full };

    let mut reqs = Vec::new();
    for i in 0..64u64 {
        let r = Request { flags: 0, command: Command::Read, cookie: i, offset: i * 4096, length: 4096 };
        encode_request(&mut reqs, &r, ReplyMode::Structured);
    }
    bench("decode 64 compact requests", n(200_000), || {
        let mut at = 0;
        while let Ok(Decode::Done { value, consumed }) = decode_request(black_box(&reqs[at..]), ReplyMode::Structured) {
            black_box(value);
            at += consumed;
        }
    });

    let mut out = Vec::with_capacity(64);
    for (name, mode) in
        [("simple", ReplyMode::Simple), ("structured", ReplyMode::Structured), ("extended", ReplyMode::Extended)]
    {
        bench(&format!("encode read reply header ({name})"), n(5_000_000), || {
            out.clear();
            encode_read_reply_header(&mut out, mode, black_box(7), black_box(4096), 4096);
            black_box(&out);
        });
    }

    bench("full server+client handshake (GO, ext)", n(50_000), || {
        let mut server = ServerHandshake::new(ServerConfig::default());
        let mut client = ClientHandshake::new(ClientConfig::open("disk"));
        let mut to_client = server.take_output();
        loop {
            let (used, st) = client.feed(&to_client).expect("client");
            to_client.drain(..used);
            if st != ClientStatus::Continue {
                break;
            }
            let to_server = client.take_output();
            let (_, st) = server.feed(&to_server, &Cat).expect("server");
            to_client.extend(server.take_output());
            if let ServerStatus::Done(n) = st {
                black_box(n);
            }
        }
    });
}
