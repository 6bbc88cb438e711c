//! The reference client `nbd-client -l` lists the exports (no kernel driver needed).

use gnbd_tests::{require_tool, run, write_pattern_file, OutputExt, Server};
use std::process::Command;

#[test]
fn nbd_client_lists_exports() {
    let nbd_client = require_tool("nbd-client");
    let server = Server::start();
    let names = ["first", "second-export", "third_one"];
    for (i, name) in names.iter().enumerate() {
        let path = server.path(format!("{name}.img"));
        write_pattern_file(&path, 1 << 20, i as u64);
        server.export(name, &path, &[]);
    }
    // nbd-client's own usage is `-l host [port]`; the port is positional.
    let out = run(Command::new(nbd_client).args(["-l", "127.0.0.1"]).arg(server.port().to_string()));
    out.assert_success("nbd-client -l");
    let stdout = out.stdout_str();
    println!("{}", out.describe());
    let listed: Vec<&str> = stdout.lines().map(str::trim).collect();
    for name in names {
        assert!(listed.contains(&name), "{name} not listed: {listed:?}");
    }
}
