//! A block device as the backing store: a loop device over a file, exported uncached
//! (O_DIRECT on the device) and read, written, zeroed and trimmed through qemu-io, with the
//! bytes checked on the device itself.

use gnbd_tests::{require_tool, run, write_pattern_file, OutputExt, Server};
use std::process::Command;

/// Detaches the loop device however the test ends.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn loop_device_export_serves_reads_writes_zeroes_and_trims() {
    require_tool("losetup");
    let qemu_io = require_tool("qemu-io");
    let server = Server::start();
    let img = server.path("backing.img");
    write_pattern_file(&img, 16 << 20, 7);
    let out = run(Command::new("losetup").args(["-f", "--show"]).arg(&img));
    out.assert_success("losetup -f --show");
    let dev = Loop(out.stdout_str().trim().to_string());
    assert!(dev.0.starts_with("/dev/loop"), "losetup printed {:?}", dev.0);

    server.export("blk", dev.0.as_ref(), &[]);
    let listed = server.list_json();
    let blk = listed.iter().find(|e| e["name"] == "blk").expect("export listed");
    assert_eq!(blk["size"], 16 << 20);

    let out = run(Command::new(&qemu_io).args(["-f", "raw"]).arg(server.uri("blk")).args([
        "-c",
        "write -P 0xab 0 1M",
        "-c",
        "read -P 0xab 0 1M",
        "-c",
        "write -P 0x11 513 1000",
        "-c",
        "read -P 0x11 513 1000",
        "-c",
        "write -z 2M 1M",
        "-c",
        "read -P 0 2M 1M",
        "-c",
        "discard 4M 1M",
        "-c",
        "flush",
    ]));
    out.assert_success("qemu-io on a loop device export");
    assert!(!out.stdout_str().contains("Pattern verification failed"), "{}", out.describe());

    // What the client wrote is on the device (the loop device writes through to the file).
    let out = run(Command::new("blockdev").args(["--flushbufs", &dev.0]));
    out.assert_success("blockdev --flushbufs");
    let data = std::fs::read(&img).expect("read backing file");
    assert!(data[..513].iter().all(|&b| b == 0xab));
    assert!(data[513..1513].iter().all(|&b| b == 0x11));
    assert!(data[1513..1 << 20].iter().all(|&b| b == 0xab));
    assert!(data[2 << 20..3 << 20].iter().all(|&b| b == 0));
    // Untouched regions keep their pattern.
    let mut expect = vec![0u8; 1 << 20];
    gnbd_tests::fill_pattern(&mut expect, 7, 8 << 20);
    assert_eq!(&data[8 << 20..9 << 20], &expect[..]);
}
