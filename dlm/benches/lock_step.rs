//! Micro-benchmarks of the lock step: one resource's request/unlock, a contended
//! conversion, a whole local lock+unlock through the node (the `lock_nolock` path), and the
//! wire codec. No external harness: `cargo bench -p dlm --bench lock_step` prints ns per
//! operation; `-- --test` runs each once (the CI smoke run).

use std::hint::black_box;
use std::time::Instant;

use dlm::{decode, encode, Flags, Lkb, Message, Mode, Node, Resource};

fn bench(name: &str, iters: u64, mut f: impl FnMut()) {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    println!("{name:<44} {ns:>10.1} ns/op {:>12.0} ops/s", 1e9 / ns);
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let n = |full: u64| if smoke { 1 } else { full };

    let mut res = Resource::new(32);
    let mut out = Vec::with_capacity(16);
    let mut id = 0u64;
    bench("resource: request EX + unlock (uncontended)", n(2_000_000), || {
        id += 1;
        res.request(Lkb::new(id, Mode::Ex, Flags::empty(), None), &mut out);
        res.unlock(id, Flags::empty(), None, &mut out).expect("granted");
        out.clear();
    });

    let mut res = Resource::new(32);
    for i in 0..8 {
        res.request(Lkb::new(1000 + i, Mode::Pr, Flags::empty(), None), &mut out);
    }
    out.clear();
    bench("resource: request PR + unlock (8 PR holders)", n(1_000_000), || {
        id += 1;
        res.request(Lkb::new(id, Mode::Pr, Flags::VALBLK, None), &mut out);
        res.unlock(id, Flags::empty(), None, &mut out).expect("granted");
        out.clear();
    });

    let mut res = Resource::new(32);
    res.request(Lkb::new(1, Mode::Ex, Flags::VALBLK, None), &mut out);
    out.clear();
    bench("resource: EX->NL->EX with value block write", n(1_000_000), || {
        res.convert(1, Mode::Nl, Flags::VALBLK, Some(&[7; 32]), &mut out).expect("granted");
        res.convert(1, Mode::Ex, Flags::VALBLK, None, &mut out).expect("granted");
        out.clear();
    });

    let mut node = Node::single();
    let ls = node.join(b"bench", 32).expect("lockspace");
    let mut outs = Vec::with_capacity(16);
    bench("node: local lock EX + unlock (lock_nolock)", n(1_000_000), || {
        let l = node.lock(ls, 1, b"resource-name", Mode::Ex, Flags::empty(), None).expect("lock");
        node.unlock(ls, 1, l, Flags::empty(), None).expect("unlock");
        node.drain_output_into(&mut outs);
        black_box(&outs);
        outs.clear();
    });

    let msg = Message::Request {
        ls: 1,
        epoch: 1,
        name: b"resource-name".to_vec(),
        lkid: 1 << 32 | 7,
        mode: Mode::Ex,
        flags: Flags::VALBLK,
        lvb: vec![0; 32],
    };
    let mut buf = Vec::with_capacity(128);
    bench("wire: encode + decode Request", n(2_000_000), || {
        buf.clear();
        encode(black_box(&msg), &mut buf);
        black_box(decode(&buf).expect("valid"));
    });
}
