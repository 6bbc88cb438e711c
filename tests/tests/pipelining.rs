//! Deep pipelining: one client writes thousands of requests in one go (far more than the
//! server's io_uring submission queue holds, and more than its per-connection in-flight
//! limit) while a second thread reads the replies. Every request gets exactly one reply with
//! the right data, whatever order the replies come in.

use gnbd_tests::rawclient::{read_simple_reply, request_header, RawClient};
use gnbd_tests::{pattern, write_pattern_file, Server};
use std::collections::HashSet;
use std::io::{Read, Write};

const REQUESTS: u64 = 6000;
const BLOCK: u32 = 4096;
const SIZE: u64 = 16 << 20;

#[test]
fn thousands_of_pipelined_reads_all_get_their_data() {
    let server = Server::builder().arg("--threads").arg("1").start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, SIZE, 3);
    server.export("disk", &disk, &["-c"]);
    let mut client = RawClient::connect(server.addr(), "disk").expect("connect");
    let mut reader = client.stream().try_clone().expect("clone socket");

    let blocks = SIZE / u64::from(BLOCK);
    let offset_of = move |h: u64| (h * 7919 % blocks) * u64::from(BLOCK);
    let replies = std::thread::spawn(move || {
        let mut seen = HashSet::new();
        let mut data = vec![0u8; BLOCK as usize];
        for _ in 0..REQUESTS {
            let r = read_simple_reply(&mut reader).expect("reply header");
            assert_eq!(r.error, 0, "request {} failed", r.handle);
            reader.read_exact(&mut data).expect("reply data");
            assert_eq!(data, pattern(3, offset_of(r.handle), BLOCK as usize), "data of request {}", r.handle);
            assert!(seen.insert(r.handle), "two replies for request {}", r.handle);
        }
        seen.len()
    });

    let mut all = Vec::with_capacity(REQUESTS as usize * 28);
    for h in 0..REQUESTS {
        all.extend_from_slice(&request_header(0, 0, h, offset_of(h), BLOCK));
    }
    client.stream().write_all(&all).expect("send every request at once");
    assert_eq!(replies.join().expect("reader thread"), REQUESTS as usize);
    client.disconnect();
}
