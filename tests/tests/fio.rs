//! fio's NBD engine (libnbd): random writes verified with crc32c, then a verify-only pass
//! on a fresh connection.

use gnbd_tests::{require_tool, run_timeout, OutputExt, Server};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;

const SIZE: u64 = 64 << 20;

fn fio(server: &Server, uri: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new(require_tool("fio"));
    // fio drops verify state files (local-*-verify.state) into its working directory.
    cmd.current_dir(server.dir())
        .args([
            "--name=gnbd",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=64M",
            "--iodepth=16",
            "--verify=crc32c",
            "--randseed=4242",
            "--output-format=json",
        ])
        .args(extra);
    run_timeout(&mut cmd, Duration::from_secs(180))
}

/// fio prints "fio: connected to NBD server" before its JSON on stdout.
fn parse_json(out: &Output) -> Value {
    let text = out.stdout_str();
    let start = text
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| text.starts_with('{').then_some(0))
        .unwrap_or_else(|| panic!("no JSON in fio output: {}", out.describe()));
    serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("bad fio JSON ({e}): {}", out.describe()))
}

fn check_jobs(v: &Value, want_write: u64, want_read: u64) {
    let jobs = v["jobs"].as_array().expect("fio JSON has jobs");
    assert!(!jobs.is_empty(), "no jobs in {v:#}");
    for job in jobs {
        assert_eq!(job["error"], 0, "fio job reported an error: {job:#}");
        if want_write > 0 {
            assert_eq!(job["write"]["io_bytes"], want_write, "write bytes: {job:#}");
        }
        assert_eq!(job["read"]["io_bytes"], want_read, "verify read bytes: {job:#}");
    }
}

#[test]
fn fio_randwrite_then_verify() {
    let server = Server::start();
    let disk = server.path("fio.img");
    std::fs::File::create(&disk).and_then(|f| f.set_len(SIZE)).expect("create backing file");
    server.export("fio", &disk, &[]);
    let uri = server.uri("fio");

    let out = fio(&server, &uri, &[]);
    out.assert_success("fio randwrite + verify");
    check_jobs(&parse_json(&out), SIZE, SIZE);

    // Read everything back on a new connection and check the crc32c headers.
    let out = fio(&server, &uri, &["--verify_only"]);
    out.assert_success("fio --verify_only");
    check_jobs(&parse_json(&out), 0, SIZE);
}
