//! nbdcopy round trips of 256 MiB: local file -> export -> another local file, with one
//! connection and with four (multi-conn).

use gnbd_tests::{file_checksum, require_tool, run_timeout, write_pattern_file, OutputExt, Server};
use std::process::Command;
use std::time::Duration;

const SIZE: u64 = 256 << 20;

fn round_trip(connections: &str, seed: u64, cached: bool) {
    let nbdcopy = require_tool("nbdcopy");
    let server = Server::start();
    let src = server.path("src.img");
    let sum = write_pattern_file(&src, SIZE, seed);
    let backing = server.path("export.img");
    std::fs::File::create(&backing).and_then(|f| f.set_len(SIZE)).expect("create backing file");
    let flags: &[&str] = if cached { &["-c"] } else { &[] };
    server.export("copy", &backing, flags);
    let uri = server.uri("copy");
    let timeout = Duration::from_secs(120);

    run_timeout(Command::new(&nbdcopy).args(["--connections", connections, "--flush"]).arg(&src).arg(&uri), timeout)
        .assert_success("nbdcopy file -> nbd");
    assert_eq!(file_checksum(&backing), sum, "backing file differs after upload");

    let dst = server.path("dst.img");
    run_timeout(Command::new(&nbdcopy).args(["--connections", connections]).arg(&uri).arg(&dst), timeout)
        .assert_success("nbdcopy nbd -> file");
    let len = std::fs::metadata(&dst).expect("dst exists").len();
    assert_eq!(len, SIZE, "downloaded copy has the wrong size");
    assert_eq!(file_checksum(&dst), sum, "downloaded copy differs from the source");
}

#[test]
fn round_trip_256mib_one_connection() {
    round_trip("1", 0x1234, false);
}

#[test]
fn round_trip_256mib_four_connections_cached() {
    round_trip("4", 0x5678, true);
}
