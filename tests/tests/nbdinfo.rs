//! libnbd's `nbdinfo` against gnbd_serv: plain, `--list`, `--map`, `--json`, read-only
//! exports, the Unix socket and the default export.

use gnbd_tests::{require_tool, run, write_pattern_file, OutputExt, Server};
use serde_json::Value;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn nbdinfo(args: &[&str]) -> std::process::Output {
    let out = run(Command::new(require_tool("nbdinfo")).args(args));
    out.assert_success(&format!("nbdinfo {args:?}"));
    out
}

fn nbdinfo_json(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = nbdinfo(&all);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nbdinfo --json printed invalid JSON ({e}): {}", out.describe()))
}

/// The single export in `nbdinfo --json URI` output.
fn only_export(v: &Value) -> &Value {
    let exports = v["exports"].as_array().expect("nbdinfo JSON has an exports array");
    assert_eq!(exports.len(), 1, "one export expected: {v:#}");
    &exports[0]
}

fn server_with_disk(size: u64, flags: &[&str]) -> Server {
    let server = Server::start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, size, 1);
    server.export("disk", &disk, flags);
    server
}

#[test]
fn plain_output_shows_size_and_writability() {
    let server = server_with_disk(4 * MIB, &[]);
    let out = nbdinfo(&[&server.uri("disk")]).stdout_str();
    println!("{out}");
    assert!(out.contains("export-size: 4194304"), "size missing:\n{out}");
    assert!(out.contains("is_read_only: false"), "writability missing:\n{out}");
    assert!(out.contains("newstyle-fixed"), "protocol missing:\n{out}");
}

#[test]
fn json_reports_every_advertised_capability() {
    let server = server_with_disk(4 * MIB, &[]);
    let v = nbdinfo_json(&[&server.uri("disk")]);
    println!("{v:#}");
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["structured"], true, "structured replies not negotiated");
    let e = only_export(&v);
    assert_eq!(e["export-name"], "disk");
    assert_eq!(e["export-size"], 4 * MIB);
    assert_eq!(e["is_read_only"], false);
    for cap in
        ["can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_df", "can_cache", "can_multi_conn"]
    {
        assert_eq!(e[cap], true, "{cap} should be true: {e:#}");
    }
    assert_eq!(e["block_size_minimum"], 1, "{e:#}");
    assert_eq!(e["block_size_preferred"], 4096, "{e:#}");
    assert_eq!(e["block_size_maximum"], 64 * MIB, "{e:#}");
    let contexts = e["contexts"].as_array().expect("contexts array");
    assert!(contexts.iter().any(|c| c == "base:allocation"), "base:allocation not offered: {e:#}");
}

#[test]
fn read_only_export_is_reported_read_only() {
    let server = server_with_disk(MIB, &["-o"]);
    let v = nbdinfo_json(&[&server.uri("disk")]);
    let e = only_export(&v);
    assert_eq!(e["is_read_only"], true, "{e:#}");
    assert_eq!(e["export-size"], MIB);
    let out = nbdinfo(&[&server.uri("disk")]).stdout_str();
    assert!(out.contains("is_read_only: true"), "{out}");
}

#[test]
fn cached_export_looks_the_same_to_clients() {
    let server = server_with_disk(2 * MIB, &["-c"]);
    let v = nbdinfo_json(&[&server.uri("disk")]);
    let e = only_export(&v);
    assert_eq!(e["export-size"], 2 * MIB);
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["can_flush"], true);
}

#[test]
fn list_shows_every_export() {
    let server = Server::start();
    let sizes = [("alpha", MIB), ("beta", 3 * MIB), ("gamma", 512 * 1024)];
    for (i, (name, size)) in sizes.iter().enumerate() {
        let path = server.path(format!("{name}.img"));
        write_pattern_file(&path, *size, i as u64);
        let flags: &[&str] = if *name == "beta" { &["-o"] } else { &[] };
        server.export(name, &path, flags);
    }
    let base = format!("nbd://127.0.0.1:{}/", server.port());
    let text = nbdinfo(&["--list", &base]).stdout_str();
    println!("{text}");
    for (name, _) in sizes {
        assert!(text.contains(&format!("export=\"{name}\"")), "{name} not listed:\n{text}");
    }
    let v = nbdinfo_json(&["--list", &base]);
    let exports = v["exports"].as_array().expect("exports array");
    assert_eq!(exports.len(), sizes.len(), "{v:#}");
    for (name, size) in sizes {
        let e =
            exports.iter().find(|e| e["export-name"] == name).unwrap_or_else(|| panic!("{name} missing from {v:#}"));
        assert_eq!(e["export-size"], size, "{e:#}");
        assert_eq!(e["is_read_only"], name == "beta", "{e:#}");
    }
}

#[test]
fn map_shows_data_and_holes() {
    let server = Server::start();
    let path = server.path("sparse.img");
    {
        // data [0, 1 MiB), hole [1 MiB, 3 MiB), data [3 MiB, 3.5 MiB), hole to 4 MiB.
        let f = OpenOptions::new().create(true).write(true).truncate(true).open(&path).expect("create sparse file");
        f.set_len(4 * MIB).expect("set_len");
        f.write_all_at(&vec![0x5a; MIB as usize], 0).expect("write data");
        f.write_all_at(&vec![0xa5; (MIB / 2) as usize], 3 * MIB).expect("write data");
        f.sync_all().expect("fsync");
    }
    server.export("sparse", &path, &[]);
    let uri = server.uri("sparse");
    let text = nbdinfo(&["--map", &uri]).stdout_str();
    println!("nbdinfo --map:\n{text}");
    assert!(text.contains("data"), "no data extent:\n{text}");
    assert!(text.contains("hole"), "no hole extent:\n{text}");

    let out = nbdinfo(&["--map", "--json", &uri]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", out.describe()));
    let extents: Vec<(u64, u64, u64)> = v
        .as_array()
        .expect("--map --json prints an array")
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().expect("offset"),
                e["length"].as_u64().expect("length"),
                e["type"].as_u64().expect("type"),
            )
        })
        .collect();
    // Contiguous and covering the whole export.
    let mut next = 0;
    for &(off, len, _) in &extents {
        assert_eq!(off, next, "extents not contiguous: {extents:?}");
        next = off + len;
    }
    assert_eq!(next, 4 * MIB, "extents do not cover the export: {extents:?}");
    let type_at = |pos: u64| extents.iter().find(|(o, l, _)| (*o..o + l).contains(&pos)).map(|e| e.2).expect("covered");
    // base:allocation: bit 0 = hole, bit 1 = zero.
    for pos in [0, MIB - 1, 3 * MIB, 3 * MIB + MIB / 2 - 1] {
        assert_eq!(type_at(pos) & 1, 0, "offset {pos} should be data: {extents:?}");
    }
    for pos in [MIB, 2 * MIB, 3 * MIB - 1] {
        assert_eq!(type_at(pos) & 1, 1, "offset {pos} should be a hole: {extents:?}");
    }
}

#[test]
fn unix_socket_serves_the_same_exports() {
    let server = Server::builder().unix_socket().start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, 2 * MIB, 3);
    server.export("disk", &disk, &[]);
    let sock = server.unix_socket().expect("started with a unix socket");
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let v = nbdinfo_json(&[&uri]);
    assert_eq!(only_export(&v)["export-size"], 2 * MIB, "{v:#}");
}

#[test]
fn default_export_answers_the_empty_name() {
    let server = Server::builder().arg("--default-export").arg("disk").start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, 3 * MIB, 4);
    server.export("disk", &disk, &[]);
    let uri = format!("nbd://127.0.0.1:{}", server.port());
    let v = nbdinfo_json(&[&uri]);
    assert_eq!(only_export(&v)["export-size"], 3 * MIB, "{v:#}");
}
