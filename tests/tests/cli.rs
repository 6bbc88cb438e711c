//! The admin CLI `gnbd_export` and the server's command line: error cases, listing (table
//! and JSON), removal with connected clients, persistence of exports across restarts,
//! SIGTERM, and `--help`.

use gnbd_tests::rawclient::{RawClient, NBD_FLAG_READ_ONLY};
use gnbd_tests::{gnbd_export_cmd, pattern, run, serv_bin, write_pattern_file, OutputExt, Server, TempDir};
use serde_json::Value;
use std::io::ErrorKind;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn entry<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|e| e["name"] == name)
}

fn same_path(reported: &Value, path: &Path) -> bool {
    let Some(reported) = reported.as_str() else {
        return false;
    };
    Path::new(reported) == path || Path::new(reported).canonicalize().ok() == path.canonicalize().ok()
}

#[track_caller]
fn assert_failed_with_message(out: &Output, what: &str) {
    out.assert_code(1, what);
    assert!(!out.stderr_str().trim().is_empty(), "{what}: exit status 1 but no message on stderr: {}", out.describe());
    println!("{what}: {}", out.stderr_str().trim());
}

/// Polls `gnbd_export -l --json` (bounded) until `pred` holds for the listing.
fn wait_for_listing(server: &Server, what: &str, pred: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = server.list_json();
        if pred(&list) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; listing is {list:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn gnbd_export_fails_cleanly_without_a_server() {
    let tmp = TempDir::new();
    let state = tmp.join("state");
    std::fs::create_dir(&state).expect("mkdir state");
    let file = tmp.join("disk.img");
    write_pattern_file(&file, MIB, 1);
    let out = run(gnbd_export_cmd(&state).arg("-l"));
    assert_failed_with_message(&out, "gnbd_export -l with no server");
    let out = run(gnbd_export_cmd(&state).args(["-e", "disk", "-d"]).arg(&file));
    assert_failed_with_message(&out, "gnbd_export -e with no server");
    // A state directory that never existed.
    let out = run(gnbd_export_cmd(&tmp.join("nonexistent")).arg("-l"));
    assert_failed_with_message(&out, "gnbd_export -l with a missing state dir");
}

#[test]
fn gnbd_export_fails_cleanly_after_the_server_was_killed() {
    let mut server = Server::start();
    server.kill();
    // The control socket may still exist in the state dir, but nobody listens.
    let out = server.gnbd_export(["-l"]);
    assert_failed_with_message(&out, "gnbd_export -l with a dead server");
}

#[test]
fn export_of_a_missing_path_is_refused() {
    let server = Server::start();
    let missing = server.path("missing.img");
    let out = server.gnbd_export(["-e".as_ref(), "disk".as_ref(), "-d".as_ref(), missing.as_os_str()]);
    assert_failed_with_message(&out, "export of a nonexistent path");
    assert!(out.stderr_str().contains("missing.img"), "the message should name the path: {}", out.describe());
    assert!(server.list_json().is_empty(), "a failed export was listed");
}

#[test]
fn duplicate_export_name_is_refused() {
    let server = Server::start();
    let first = server.path("first.img");
    let second = server.path("second.img");
    write_pattern_file(&first, MIB, 1);
    write_pattern_file(&second, 2 * MIB, 2);
    server.export("disk", &first, &[]);
    let out = server.gnbd_export(["-e".as_ref(), "disk".as_ref(), "-d".as_ref(), second.as_os_str()]);
    assert_failed_with_message(&out, "duplicate export name");
    let list = server.list_json();
    assert_eq!(list.len(), 1, "{list:#?}");
    let e = entry(&list, "disk").expect("disk listed");
    assert!(same_path(&e["path"], &first), "the first export was replaced: {e:#}");
    assert_eq!(e["size"], MIB, "{e:#}");
    let mut c = RawClient::connect(server.addr(), "disk").expect("handshake");
    assert_eq!(c.size(), MIB);
    assert!(c.read_ok(0, 4096) == pattern(1, 0, 4096), "served the wrong file");
    c.disconnect();
}

#[test]
fn list_table_and_json_describe_exports() {
    let server = Server::start();
    let alpha = server.path("alpha.img");
    let beta = server.path("beta.img");
    write_pattern_file(&alpha, 4 * MIB, 1);
    write_pattern_file(&beta, MIB, 2);
    server.export("alpha", &alpha, &[]);
    server.export("beta", &beta, &["-c", "-o"]);
    let client = RawClient::connect(server.addr(), "beta").expect("handshake");
    let client_addr = client.local_addr().expect("local addr").to_string();

    // JSON
    let list = server.list_json();
    println!("{list:#?}");
    assert_eq!(list.len(), 2, "{list:#?}");
    let a = entry(&list, "alpha").expect("alpha listed");
    assert!(same_path(&a["path"], &alpha), "{a:#}");
    assert_eq!(a["size"], 4 * MIB, "{a:#}");
    assert_eq!(a["cached"], false, "{a:#}");
    assert_eq!(a["readonly"], false, "{a:#}");
    assert_eq!(a["clients"], serde_json::json!([]), "{a:#}");
    let b = entry(&list, "beta").expect("beta listed");
    assert!(same_path(&b["path"], &beta), "{b:#}");
    assert_eq!(b["size"], MIB, "{b:#}");
    assert_eq!(b["cached"], true, "{b:#}");
    assert_eq!(b["readonly"], true, "{b:#}");
    assert_eq!(b["clients"], serde_json::json!([client_addr]), "{b:#}");

    // Table: header, then NAME SIZE MODE ACCESS CLIENTS PATH per export.
    let out = server.gnbd_export(["-l"]);
    out.assert_success("gnbd_export -l");
    let text = out.stdout_str();
    println!("{text}");
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("header line").split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "MODE", "ACCESS", "CLIENTS", "PATH"], "{text}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    for (name, path, size, mode, access, clients) in
        [("alpha", &alpha, 4 * MIB, "uncached", "rw", "0"), ("beta", &beta, MIB, "cached", "ro", "1")]
    {
        let row = rows
            .iter()
            .find(|r| r.first() == Some(&name))
            .unwrap_or_else(|| panic!("{name} missing from the table:\n{text}"));
        assert!(row.len() >= 6, "short row {row:?}");
        let n = row.len();
        assert!(same_path(&Value::from(row[n - 1]), path), "PATH of {name}: {row:?}");
        assert_eq!(row[n - 2], clients, "CLIENTS of {name}: {row:?}");
        assert_eq!(row[n - 3], access, "ACCESS of {name}: {row:?}");
        assert_eq!(row[n - 4], mode, "MODE of {name}: {row:?}");
        let size_text = row[1..n - 4].join(" ");
        match size_text.parse::<u64>() {
            Ok(bytes) => assert_eq!(bytes, size, "SIZE of {name}: {row:?}"),
            // A human-readable size: not specified further by the contract.
            Err(_) => assert!(size_text.starts_with(|c: char| c.is_ascii_digit()), "SIZE of {name}: {row:?}"),
        }
    }
    client.disconnect();
    wait_for_listing(&server, "the client count did not drop to 0", |l| {
        entry(l, "beta").is_some_and(|b| b["clients"] == serde_json::json!([]))
    });
}

#[test]
fn remove_is_refused_while_a_client_is_connected_unless_forced() {
    let server = Server::start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, 2 * MIB, 3);
    server.export("disk", &disk, &[]);
    let mut client = RawClient::connect(server.addr(), "disk").expect("handshake");
    assert!(client.read_ok(0, 4096) == pattern(3, 0, 4096), "wrong data");

    let out = server.gnbd_export(["-r", "disk"]);
    assert_failed_with_message(&out, "remove with a connected client");
    let list = server.list_json();
    let e = entry(&list, "disk").expect("still listed after a refused remove");
    assert_eq!(e["clients"].as_array().map(Vec::len), Some(1), "{e:#}");
    assert!(client.read_ok(4096, 4096) == pattern(3, 4096, 4096), "client cut off");

    server.gnbd_export(["-r", "disk", "-O"]).assert_success("gnbd_export -r -O");
    assert!(entry(&server.list_json(), "disk").is_none(), "still listed after -r -O");
    match client.read(0, 4096) {
        Ok(Ok(_)) => panic!("the client of a removed export can still read"),
        Ok(Err(e)) => println!("after -O: error reply {e}"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("after -O the connection is neither closed nor answered: {e}")
        }
        Err(e) => println!("after -O: connection closed ({e})"),
    }
    let err = RawClient::connect(server.addr(), "disk").expect_err("GO for a removed export");
    println!("GO after removal: {err}");
}

#[test]
fn remove_then_export_again() {
    let server = Server::start();
    let one = server.path("one.img");
    let two = server.path("two.img");
    write_pattern_file(&one, MIB, 1);
    write_pattern_file(&two, 2 * MIB, 2);
    server.export("disk", &one, &[]);
    server.gnbd_export(["-r", "disk"]).assert_success("remove idle export");
    assert!(server.list_json().is_empty());
    RawClient::connect(server.addr(), "disk").expect_err("GO for a removed export");
    server.export("disk", &two, &[]);
    let mut c = RawClient::connect(server.addr(), "disk").expect("handshake");
    assert_eq!(c.size(), 2 * MIB);
    assert!(c.read_ok(MIB, 4096) == pattern(2, MIB, 4096), "wrong data");
    c.disconnect();
    let out = server.gnbd_export(["-r", "nonexistent"]);
    assert_failed_with_message(&out, "remove of an unknown export");
}

fn check_persisted(server: &Server, alpha: &Path, beta: &Path) {
    let list = server.list_json();
    assert_eq!(list.len(), 2, "{list:#?}");
    let a = entry(&list, "alpha").expect("alpha persisted");
    assert!(same_path(&a["path"], alpha), "{a:#}");
    assert_eq!((&a["cached"], &a["readonly"]), (&Value::Bool(false), &Value::Bool(false)));
    let b = entry(&list, "beta").expect("beta persisted");
    assert!(same_path(&b["path"], beta), "{b:#}");
    assert_eq!((&b["cached"], &b["readonly"]), (&Value::Bool(true), &Value::Bool(true)));
    let mut c = RawClient::connect(server.addr(), "alpha").expect("alpha served");
    assert!(c.read_ok(MIB, 65536) == pattern(1, MIB, 65536), "alpha data");
    c.disconnect();
    let mut c = RawClient::connect(server.addr(), "beta").expect("beta served");
    assert!(c.flags() & NBD_FLAG_READ_ONLY != 0, "beta lost read-only");
    assert!(c.read_ok(0, 65536) == pattern(2, 0, 65536), "beta data");
    c.disconnect();
}

fn two_exports(server: &Server) -> (std::path::PathBuf, std::path::PathBuf) {
    let alpha = server.path("alpha.img");
    let beta = server.path("beta.img");
    write_pattern_file(&alpha, 4 * MIB, 1);
    write_pattern_file(&beta, MIB, 2);
    server.export("alpha", &alpha, &[]);
    server.export("beta", &beta, &["-c", "-o"]);
    (alpha, beta)
}

#[test]
fn exports_persist_across_a_graceful_restart() {
    let mut server = Server::start();
    let (alpha, beta) = two_exports(&server);
    let status = server.stop();
    assert!(status.success(), "gnbd_serv exited with {status} after SIGTERM");
    server.restart();
    check_persisted(&server, &alpha, &beta);
}

#[test]
fn exports_persist_across_sigkill() {
    let mut server = Server::start();
    let (alpha, beta) = two_exports(&server);
    server.restart();
    check_persisted(&server, &alpha, &beta);
}

#[test]
fn sigterm_with_a_connected_client_exits_zero() {
    let mut server = Server::start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, MIB, 5);
    server.export("disk", &disk, &[]);
    let mut client = RawClient::connect(server.addr(), "disk").expect("handshake");
    let data = pattern(6, 0, 65536);
    client.write_ok(0, &data, 0);
    let status = server.stop();
    assert!(status.success(), "gnbd_serv exited with {status} after SIGTERM");
    assert!(client.read(0, 4096).map_or(true, |r| r.is_err()), "served after exit");
    let on_disk = std::fs::read(&disk).expect("read backing file");
    assert!(on_disk[..65536] == data[..], "acknowledged write lost at SIGTERM");
}

fn help_text(bin: &Path) -> String {
    let out = run(Command::new(bin).arg("--help"));
    out.assert_success(&format!("{} --help", bin.display()));
    out.stdout_str()
}

#[test]
fn gnbd_serv_help_reads_like_a_man_page() {
    let text = help_text(&serv_bin());
    assert!(text.contains("EXAMPLES"), "gnbd_serv --help lacks EXAMPLES:\n{text}");
    for flag in ["--state-dir", "--foreground", "--unix", "--threads", "--default-export"] {
        assert!(text.contains(flag), "gnbd_serv --help does not document {flag}:\n{text}");
    }
}

#[test]
fn gnbd_export_help_reads_like_a_man_page() {
    let text = help_text(&gnbd_tests::export_bin());
    assert!(text.contains("EXAMPLES"), "gnbd_export --help lacks EXAMPLES:\n{text}");
    for flag in ["--state-dir", "--json"] {
        assert!(text.contains(flag), "gnbd_export --help does not document {flag}:\n{text}");
    }
}
