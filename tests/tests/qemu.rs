//! QEMU's NBD client (qemu-img, qemu-io) against gnbd_serv, including a session that
//! negotiates extended headers (qemu 10 asks for them when the server offers them).

use gnbd_tests::{file_checksum, require_tool, run, write_pattern_file, OutputExt, Server};
use serde_json::Value;
use std::process::{Command, Output};

const MIB: u64 = 1 << 20;

fn qemu_img(args: &[&str]) -> Output {
    run(Command::new(require_tool("qemu-img")).args(args))
}

/// Runs `qemu-io -f raw [extra] -c CMD... URI`; panics unless every command succeeded.
fn qemu_io(extra: &[&str], cmds: &[&str], uri: &str) -> Output {
    let mut cmd = Command::new(require_tool("qemu-io"));
    cmd.args(["-f", "raw"]).args(extra);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    cmd.arg(uri);
    let out = run(&mut cmd);
    out.assert_success(&format!("qemu-io {cmds:?}"));
    // qemu-io exits non-zero when a command fails; also look for its messages, ignoring
    // trace lines (`-T`), which start with the trace event name.
    let text = out.stdout_str() + &out.stderr_str();
    let failure = text.lines().filter(|l| !l.starts_with("nbd_")).find(|l| l.contains("failed") || l.contains("rror"));
    assert!(failure.is_none(), "qemu-io reported a failure ({failure:?}): {}", out.describe());
    out
}

fn zero_file(server: &Server, name: &str, size: u64) -> std::path::PathBuf {
    let path = server.path(name);
    let f = std::fs::File::create(&path).expect("create backing file");
    f.set_len(size).expect("set_len");
    path
}

#[test]
fn qemu_img_info_reports_size() {
    let server = Server::start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, 6 * MIB, 9);
    server.export("disk", &disk, &[]);
    let out = qemu_img(&["info", "--output=json", "-f", "raw", &server.uri("disk")]);
    out.assert_success("qemu-img info");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", out.describe()));
    println!("{v:#}");
    assert_eq!(v["virtual-size"], 6 * MIB, "{v:#}");
    assert_eq!(v["format"], "raw", "{v:#}");
}

#[test]
fn qemu_img_convert_both_ways_and_compare() {
    let server = Server::start();
    let src = server.path("src.img");
    let sum = write_pattern_file(&src, 16 * MIB, 21);
    let target = zero_file(&server, "target.img", 16 * MIB);
    server.export("target", &target, &[]);
    let uri = server.uri("target");

    // local -> nbd (-n: the target exists, do not create it)
    qemu_img(&["convert", "-n", "-f", "raw", "-O", "raw", src.to_str().unwrap(), &uri])
        .assert_success("qemu-img convert file -> nbd");
    qemu_img(&["compare", "-f", "raw", "-F", "raw", src.to_str().unwrap(), &uri])
        .assert_success("qemu-img compare after upload");
    assert_eq!(file_checksum(&target), sum, "backing file differs from the source");

    // nbd -> local
    let back = server.path("back.img");
    qemu_img(&["convert", "-f", "raw", "-O", "raw", &uri, back.to_str().unwrap()])
        .assert_success("qemu-img convert nbd -> file");
    assert_eq!(file_checksum(&back), sum, "downloaded copy differs from the source");

    // compare is not vacuous: change one byte through the server and expect a difference.
    qemu_io(&[], &["write -P 0x5a 12345 1"], &uri);
    let out = qemu_img(&["compare", "-f", "raw", "-F", "raw", src.to_str().unwrap(), &uri]);
    out.assert_code(1, "qemu-img compare after changing a byte");
    // qemu-img reports the first differing block (e.g. "Content mismatch at offset 12288!").
    assert!(out.stdout_str().contains("Content mismatch"), "{}", out.describe());
}

#[test]
fn qemu_io_write_read_zero_discard_flush_unaligned() {
    let server = Server::start();
    let disk = zero_file(&server, "disk.img", 4 * MIB);
    server.export("disk", &disk, &[]);
    let uri = server.uri("disk");
    qemu_io(
        &[],
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            // unaligned
            "write -P 0x11 513 1000",
            "read -P 0x11 513 1000",
            "read -P 0xab 0 513",
            "read -P 0xab 1513 1047063",
            // write zeroes, with and without permission to unmap
            "write -P 0xcd 1M 256k",
            "write -z 1M 64k",
            "read -P 0 1M 64k",
            "read -P 0xcd 1088k 192k",
            "write -z -u 1152k 64k",
            "read -P 0 1152k 64k",
            "read -P 0xcd 1216k 64k",
            "discard 2M 128k",
            "flush",
        ],
        &uri,
    );
    // A second session sees the same data.
    qemu_io(&[], &["read -P 0x11 513 1000", "read -P 0 1M 64k", "read -P 0xcd 1216k 64k"], &uri);
    // And so does the backing file.
    let data = std::fs::read(&disk).expect("read backing file");
    let check = |range: std::ops::Range<usize>, byte: u8| {
        if let Some(i) = data[range.clone()].iter().position(|&b| b != byte) {
            panic!("backing file byte {} is {:#04x}, want {byte:#04x}", range.start + i, data[range.start + i]);
        }
    };
    check(0..513, 0xab);
    check(513..1513, 0x11);
    check(1513..1 << 20, 0xab);
    check(1 << 20..(1 << 20) + (64 << 10), 0);
    check((1 << 20) + (64 << 10)..(1 << 20) + (128 << 10), 0xcd);
    check((1 << 20) + (128 << 10)..(1 << 20) + (192 << 10), 0);
    check((1 << 20) + (192 << 10)..(1 << 20) + (256 << 10), 0xcd);
}

#[test]
fn qemu_io_negotiates_extended_headers() {
    let server = Server::start();
    let disk = zero_file(&server, "disk.img", 8 * MIB);
    server.export("disk", &disk, &[]);
    let out = qemu_io(
        &["-T", "nbd_*"],
        &[
            "write -P 0x5c 0 64k",
            "read -P 0x5c 0 64k",
            "write -P 0x3c 4M 2M",
            "read -P 0x3c 4M 2M",
            "write -z 64k 64k",
            "map",
        ],
        &server.uri("disk"),
    );
    // The trace goes to stderr; show the negotiation so a human can check it.
    let trace = out.stderr_str();
    let interesting: Vec<&str> = trace
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("extended") || l.contains("mode") || l.contains("option")
        })
        .collect();
    println!("--- qemu-io negotiation trace ---\n{}", interesting.join("\n"));
    println!("--- qemu-io stdout ---\n{}", out.stdout_str());
    assert!(
        trace.contains("Received option reply 11 (extended headers), type 1 (ack)"),
        "qemu did not get extended headers acknowledged (server advertises them):\n{trace}"
    );
    // Block status over extended headers: 64-bit extents, holes reported as such.
    let out = run(Command::new(require_tool("qemu-img")).args([
        "--trace",
        "nbd_*",
        "map",
        "--output=json",
        "-f",
        "raw",
        &server.uri("disk"),
    ]));
    out.assert_success("qemu-img map");
    let trace = out.stderr_str();
    let status_lines: Vec<&str> = trace.lines().filter(|l| l.contains("block status")).collect();
    println!("--- qemu-img map trace (block status) ---\n{}", status_lines.join("\n"));
    assert!(
        trace.contains("block status (64-bit)"),
        "block status replies were not 64-bit (extended) chunks:\n{trace}"
    );
    let map: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad qemu-img map JSON ({e}): {}", out.describe()));
    println!("{map}");
    let data_at = |pos: u64| {
        map.as_array()
            .expect("map is an array")
            .iter()
            .find(|e| {
                let start = e["start"].as_u64().expect("start");
                (start..start + e["length"].as_u64().expect("length")).contains(&pos)
            })
            .map(|e| e["data"] == true)
            .unwrap_or_else(|| panic!("offset {pos} not covered by {map}"))
    };
    assert!(data_at(0), "written data at 0 reported as a hole: {map}");
    assert!(data_at(5 * MIB), "written data at 5 MiB reported as a hole: {map}");
    assert!(!data_at(7 * MIB), "never-written 7 MiB reported as data: {map}");

    let data = std::fs::read(&disk).expect("read backing file");
    assert!(data[..64 << 10].iter().all(|&b| b == 0x5c));
    assert!(data[64 << 10..128 << 10].iter().all(|&b| b == 0));
    assert!(data[4 << 20..6 << 20].iter().all(|&b| b == 0x3c));
}

#[test]
fn qemu_io_cannot_write_a_read_only_export() {
    let server = Server::start();
    let disk = server.path("ro.img");
    let sum = write_pattern_file(&disk, 2 * MIB, 5);
    server.export("ro", &disk, &["-o"]);
    let uri = server.uri("ro");
    let mut cmd = Command::new(require_tool("qemu-io"));
    cmd.args(["-f", "raw", "-c", "write -P 0x77 0 4k", &uri]);
    let out = run(&mut cmd);
    println!("{}", out.describe());
    assert!(!out.status.success(), "writing a read-only export succeeded: {}", out.describe());
    // Reading it read-only works.
    qemu_io(&["-r"], &["read -v 0 16"], &uri);
    assert_eq!(file_checksum(&disk), sum, "read-only backing file changed");
}
