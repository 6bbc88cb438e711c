//! `gnbd_import` end to end: listing, importing as loop devices over FUSE, I/O through the
//! device reaching the export, a filesystem surviving a re-import, refusing to remove a
//! mounted device, reconnecting across a SIGKILL of the server, the I/O timeout, the
//! fencing verbs, and the device process's control socket and signals. Mounts happen
//! inside `unshare -m --propagation private`.

use gnbd_tests::import::Imports;
use gnbd_tests::{file_checksum, require_tool, run_timeout, write_pattern_file, OutputExt, Server, TempDir};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn import_one(imports: &Imports, server: &Server, name: &str, extra: &[&str]) {
    let port = server.port().to_string();
    let mut args = vec!["-i", "127.0.0.1", "-p", &port, "-n", name];
    args.extend_from_slice(extra);
    let out = imports.run(&args);
    assert!(out.status.success(), "gnbd_import -i failed: {}\n{}", text(&out.stderr), imports.log(name));
}

fn sh(script: &str, args: &[&str], limit: Duration) -> std::process::Output {
    run_timeout(
        Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-euc", script, "sh"]).args(args),
        limit,
    )
}

#[test]
fn lists_imports_uses_and_removes() {
    let server = Server::start();
    let a = server.path("a.img");
    let b = server.path("b.img");
    write_pattern_file(&a, 8 << 20, 1);
    std::fs::write(&b, vec![0u8; 4 << 20]).unwrap();
    server.export("alpha", &a, &["--description", "first disk"]);
    server.export("beta", &b, &[]);
    let imports = Imports::new();
    let port = server.port().to_string();

    let out = imports.run(&["-e", "127.0.0.1", "-p", &port]);
    out.assert_success("gnbd_import -e");
    let listed = text(&out.stdout);
    assert!(listed.contains("alpha\tfirst disk") && listed.lines().any(|l| l == "beta"), "{listed}");

    // Import everything the server offers.
    let out = imports.run(&["-i", "127.0.0.1", "-p", &port]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), imports.log("alpha"));
    let devs = imports.list();
    assert_eq!(devs.len(), 2, "{devs:?}");
    for d in &devs {
        assert_eq!(d["state"], "connected", "{d}");
        let dev = imports.device(d["name"].as_str().unwrap());
        let target = std::fs::read_link(&dev).unwrap();
        assert!(target.to_string_lossy().starts_with("/dev/loop"), "{} -> {}", dev.display(), target.display());
    }
    assert_eq!(devs.iter().find(|d| d["name"] == "alpha").unwrap()["size"], 8 << 20);
    let table = text(&imports.run(&["-l"]).stdout);
    assert!(table.contains("alpha") && table.contains("connected") && table.contains("/dev/loop"), "{table}");

    // Reads through the device see the export; writes (with fsync) reach the backing file.
    let alpha = imports.device("alpha");
    let out = run_timeout(Command::new("cmp").arg(&alpha).arg(&a), Duration::from_secs(60));
    out.assert_success("cmp device with the backing file");
    let beta = imports.device("beta");
    let out = run_timeout(
        Command::new("dd").arg(format!("if={}", a.display())).arg(format!("of={}", beta.display())).args([
            "bs=1M",
            "count=4",
            "oflag=direct",
            "conv=fsync",
        ]),
        Duration::from_secs(60),
    );
    out.assert_success("dd onto the device");
    let written = std::fs::read(&b).unwrap();
    let source = std::fs::read(&a).unwrap();
    assert!(written == source[..4 << 20], "the backing file holds what was written through the device");
    // Discard passes through as a trim: the range reads back as zeroes.
    let out =
        run_timeout(Command::new("blkdiscard").args(["-o", "0", "-l", "1048576"]).arg(&beta), Duration::from_secs(30));
    out.assert_success("blkdiscard");
    assert!(std::fs::read(&b).unwrap()[..1 << 20].iter().all(|&x| x == 0), "discarded range is zero");

    // A name in use is refused; removal detaches and cleans up.
    let out = imports.run(&["-i", "127.0.0.1", "-p", &port, "-n", "alpha"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already imported"), "{}", text(&out.stderr));
    let loop_alpha = std::fs::read_link(&alpha).unwrap();
    imports.run(&["-r", "alpha"]).assert_success("gnbd_import -r");
    assert!(!alpha.exists(), "the device name is gone");
    let back = std::fs::read_to_string(format!(
        "/sys/block/{}/loop/backing_file",
        loop_alpha.file_name().unwrap().to_string_lossy()
    ))
    .unwrap_or_default();
    assert!(!back.contains("alpha.mnt"), "loop device detached, still backed by {back}");
    assert_eq!(imports.list().len(), 1);
    imports.run(&["-R"]).assert_success("gnbd_import -R");
    assert!(imports.list().is_empty());
    let out = imports.run(&["-r", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no import named 'nosuch'"), "{}", text(&out.stderr));
}

#[test]
fn ext4_on_the_device_survives_a_reimport_and_busy_devices_stay() {
    require_tool("mkfs.ext4");
    let server = Server::start();
    let disk = server.path("disk.img");
    std::fs::write(&disk, vec![0u8; 64 << 20]).unwrap();
    let name = format!("t{}e", std::process::id());
    server.export(&name, &disk, &[]);
    // The real /dev/gnbd, as operators use it; the name is unique to this run.
    let imports = Imports::with_dev_dir(Path::new("/dev/gnbd"));
    let work = TempDir::new();
    let src = work.join("src");
    write_pattern_file(&src, 3 << 20, 9);
    import_one(&imports, &server, &name, &[]);
    let dev = imports.device(&name);
    assert!(dev.starts_with("/dev/gnbd"));
    let mnt = work.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let import_bin = gnbd_tests::import::import_bin();
    let state = imports.state_dir();

    // mkfs, mount, write, and while mounted, removal is refused; then unmount.
    let script = r#"
        dev=$1; mnt=$2; src=$3; imp=$4; state=$5; name=$6
        mkfs.ext4 -q -F "$dev"
        mount "$dev" "$mnt"
        mkdir "$mnt/d"; cp "$src" "$mnt/d/file"; echo hello > "$mnt/d/small"
        sync
        if "$imp" --state-dir "$state" -r "$name" 2> "$mnt/../refused"; then echo "removed while mounted" >&2; exit 1; fi
        umount "$mnt"
    "#;
    let out = sh(
        script,
        &[
            dev.to_str().unwrap(),
            mnt.to_str().unwrap(),
            src.to_str().unwrap(),
            import_bin.to_str().unwrap(),
            state.to_str().unwrap(),
            &name,
        ],
        Duration::from_secs(180),
    );
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), imports.log(&name));
    let refused = std::fs::read_to_string(work.join("refused")).unwrap();
    assert!(refused.contains("in use"), "{refused}");

    // Re-import and read the files back through a fresh connection.
    imports.run(&["-r", &name]).assert_success("gnbd_import -r");
    import_one(&imports, &server, &name, &[]);
    let script = r#"
        dev=$1; mnt=$2; src=$3
        e2fsck -fn "$dev"
        mount -o ro "$dev" "$mnt"
        cmp "$src" "$mnt/d/file"
        grep -qx hello "$mnt/d/small"
        umount "$mnt"
    "#;
    let out =
        sh(script, &[dev.to_str().unwrap(), mnt.to_str().unwrap(), src.to_str().unwrap()], Duration::from_secs(180));
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), imports.log(&name));
    imports.run(&["-r", &name]).assert_success("gnbd_import -r");
}

#[test]
fn server_sigkill_during_writes_is_invisible_to_the_writer() {
    // A Unix socket keeps its path across restarts (the TCP port changes).
    let mut server = Server::builder().unix_socket().start();
    let disk = server.path("disk.img");
    std::fs::write(&disk, vec![0u8; 96 << 20]).unwrap();
    server.export("d", &disk, &[]);
    let imports = Imports::new();
    let sock = format!("unix:{}", server.unix_socket().unwrap().display());
    let out = imports.run(&["-i", &sock, "-n", "d"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), imports.log("d"));
    let work = TempDir::new();
    let src = work.join("src");
    write_pattern_file(&src, 96 << 20, 3);

    let dev = imports.device("d");
    let mut writer = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", dev.display()))
        .args(["bs=64k", "oflag=direct,sync", "conv=fsync", "status=none"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let some writes land, then cut the server's power twice.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read(&disk).unwrap()[4 << 20..(4 << 20) + 4096].iter().all(|&x| x == 0) {
        assert!(Instant::now() < deadline, "no write reached the export");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..2 {
        assert!(writer.try_wait().unwrap().is_none(), "the writer finished before the server was killed");
        server.restart();
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(s) = writer.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = writer.kill();
            panic!("the writer did not finish; import log:\n{}", imports.log("d"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(writer.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "dd failed across the restarts: {err}\n{}", imports.log("d"));
    assert_eq!(file_checksum(&disk), file_checksum(&src), "every acknowledged write is on the export");
    let d = imports.list().into_iter().find(|d| d["name"] == "d").unwrap();
    assert_eq!(d["state"], "connected");
    assert!(d["status"]["reconnects"].as_u64().unwrap() >= 1, "{d}");
}

#[test]
fn with_a_timeout_an_absent_server_means_eio() {
    let mut server = Server::start();
    let disk = server.path("disk.img");
    std::fs::write(&disk, vec![7u8; 4 << 20]).unwrap();
    server.export("t", &disk, &[]);
    let imports = Imports::new();
    import_one(&imports, &server, "t", &["-t", "2"]);
    server.kill();
    let started = Instant::now();
    let out = run_timeout(
        Command::new("dd").arg(format!("if={}", imports.device("t").display())).args([
            "of=/dev/null",
            "bs=4k",
            "count=1",
            "skip=17",
            "iflag=direct",
        ]),
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "a read from an absent server must fail");
    assert!(text(&out.stderr).contains("Input/output error"), "{}", text(&out.stderr));
    eprintln!("read failed after {:?}", started.elapsed());
    assert_eq!(imports.state("t").as_deref(), Some("reconnecting"));
    imports.run(&["-r", "t"]).assert_success("gnbd_import -r with the server gone");
}

#[test]
fn bad_usage_and_unreachable_servers_get_clear_errors() {
    let imports = Imports::new();
    let out = imports.run(&["-i", "127.0.0.1", "-p", "1", "-n", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot import 'x'"), "{}", text(&out.stderr));
    // One line, `gnbd_import: what: why`, the program named once.
    let err = text(&out.stderr);
    assert!(err.starts_with("gnbd_import: ") && err.lines().count() == 1, "{err}");
    assert_eq!(err.matches("gnbd_import").count(), 1, "{err}");
    assert!(imports.list().is_empty(), "a failed import leaves no record");
    let out = imports.run(&["-e", "127.0.0.1", "-p", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot reach"), "{}", text(&out.stderr));
    let out = imports.run(&["-i", "127.0.0.1", "-n", "../etc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot name a device"), "{}", text(&out.stderr));
    let out = imports.run(&["-i", "127.0.0.1", "-t", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    let out = imports.run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let help = imports.run(&["--help"]);
    let help = text(&help.stdout);
    assert!(help.contains("EXAMPLES") && help.contains("EXIT STATUS") && help.contains("/dev/gnbd/NAME"));
    assert!(help.contains("SIGNALS") && help.contains("SIGHUP") && help.contains("--log-level"), "{help}");
}

#[test]
fn fencing_verbs_cut_an_imported_device_and_let_it_back() {
    use gnbd_tests::cluster::key_file;
    let dir = TempDir::new();
    let nodes = dir.join("nodes");
    // The import connects from 127.0.0.1: that is node1.
    std::fs::write(&nodes, "node1 127.0.0.1\nnode2 127.0.0.3\n").unwrap();
    let key = key_file(dir.path(), "cluster.key", 0x42);
    let server = Server::builder()
        .arg("--nodes")
        .arg(&nodes)
        .arg("--cluster-key")
        .arg(&key)
        .arg("--control-port")
        .arg("0")
        .start();
    let ctl = format!("127.0.0.1:{}", server.control_addr().expect("control channel").port());
    let disk = server.path("disk.img");
    std::fs::write(&disk, vec![1u8; 4 << 20]).unwrap();
    server.export("f", &disk, &[]);
    let imports = Imports::new();
    import_one(&imports, &server, "f", &[]);
    let dev = imports.device("f");
    let key = key.to_str().unwrap();

    let out = imports.run(&["-c", &ctl, "-k", key]);
    out.assert_success("gnbd_import -c");
    assert_eq!(text(&out.stdout), "", "no bans yet");
    imports.run(&["-s", "node1", "-t", &ctl, "-k", key]).assert_success("gnbd_import -s");
    assert_eq!(text(&imports.run(&["-c", &ctl, "-k", key]).stdout), "node1\n");

    // The fenced node's device fails at once, and -l says why.
    let dd = |flag: &str| {
        run_timeout(
            Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", dev.display())).args([
                "bs=4k",
                "count=1",
                "seek=5",
                "oflag=direct",
                flag,
            ]),
            Duration::from_secs(60),
        )
    };
    let out = dd("conv=fsync");
    assert!(!out.status.success(), "a fenced node's write must fail");
    assert!(text(&out.stderr).contains("error"), "{}", text(&out.stderr));
    assert!(std::fs::read(&disk).unwrap()[5 * 4096..6 * 4096].iter().all(|&b| b == 1), "nothing reached the export");
    let state = imports.state("f").unwrap();
    assert!(state.starts_with("failed"), "{state}");

    // A wrong key is refused; the right one unfences; a re-import works again.
    let wrong = key_file(dir.path(), "wrong.key", 0x11);
    let out = imports.run(&["-u", "node1", "-t", &ctl, "-k", wrong.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    imports.run(&["-u", "node1", "-t", &ctl, "-k", key]).assert_success("gnbd_import -u");
    assert_eq!(text(&imports.run(&["-c", &ctl, "-k", key]).stdout), "");
    imports.run(&["-r", "f"]).assert_success("gnbd_import -r");
    import_one(&imports, &server, "f", &[]);
    dd("conv=fsync").assert_success("write after unfencing");
    assert!(std::fs::read(&disk).unwrap()[5 * 4096..6 * 4096].iter().all(|&b| b == 0));
}

#[test]
fn imports_over_tls_with_a_certificate_directory() {
    let pki = gnbd_tests::pki::Pki::new();
    let node1 = pki.client("node1");
    // --tls-ca opens the network control channel: on a free port, never the shared default.
    let mut b = Server::builder().arg("--tls").arg("required").arg("--control-port").arg("0");
    for a in pki.server_args() {
        b = b.arg(a);
    }
    let server = b.start();
    let disk = server.path("disk.img");
    write_pattern_file(&disk, 4 << 20, 5);
    server.export("s", &disk, &[]);
    let imports = Imports::new();
    let port = server.port().to_string();
    let certs = node1.to_str().unwrap();

    // Plain text is refused, listing and importing alike; with the certificates both work.
    let out = imports.run(&["-e", "127.0.0.1", "-p", &port]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = imports.run(&["-i", "127.0.0.1", "-p", &port, "-n", "s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = imports.run(&["-e", "127.0.0.1", "-p", &port, "--tls-certificates", certs]);
    out.assert_success("gnbd_import -e over TLS");
    assert_eq!(text(&out.stdout).trim(), "s");
    let out = imports.run(&["-i", "127.0.0.1", "-p", &port, "-n", "s", "--tls-certificates", certs]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), imports.log("s"));
    let out = run_timeout(Command::new("cmp").arg(imports.device("s")).arg(&disk), Duration::from_secs(60));
    out.assert_success("reading the export through a TLS import");
    imports.run(&["-r", "s"]).assert_success("gnbd_import -r");
}

#[test]
fn a_killed_device_process_shows_dead_and_is_cleaned_up() {
    let server = Server::start();
    let disk = server.path("disk.img");
    std::fs::write(&disk, vec![3u8; 4 << 20]).unwrap();
    server.export("k", &disk, &[]);
    let imports = Imports::new();
    import_one(&imports, &server, "k", &[]);
    let d = imports.list().into_iter().find(|d| d["name"] == "k").unwrap();
    let pid = d["pid"].as_u64().unwrap();
    let loop_dev = d["loop_device"].as_str().unwrap().to_string();
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z")
    {
        assert!(Instant::now() < deadline, "the device process did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(imports.state("k").as_deref(), Some("dead"));
    // I/O on the orphaned device fails instead of hanging.
    let out = run_timeout(
        Command::new("dd").arg(format!("if={}", imports.device("k").display())).args([
            "of=/dev/null",
            "bs=4k",
            "count=1",
            "iflag=direct",
        ]),
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "a read through a dead import must fail");
    imports.run(&["-r", "k"]).assert_success("gnbd_import -r of a dead import");
    assert!(imports.list().is_empty());
    assert!(!imports.device("k").exists());
    let back = std::fs::read_to_string(format!("/sys/block/{}/loop/backing_file", &loop_dev[5..])).unwrap_or_default();
    assert!(!back.contains("k.mnt"), "the loop device was detached (still backed by {back})");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&format!("{}/imports/k.mnt", imports.state_dir().display())), "FUSE mount left behind");
}

#[test]
fn the_device_process_speaks_the_control_protocol_and_takes_signals() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let server = Server::start();
    let disk = server.path("disk.img");
    std::fs::write(&disk, vec![7u8; 4 << 20]).unwrap();
    server.export("g", &disk, &[]);
    let imports = Imports::new();
    import_one(&imports, &server, "g", &[]);
    let d = imports.list().into_iter().find(|d| d["name"] == "g").unwrap();
    let pid = d["pid"].as_u64().unwrap().to_string();
    let loop_dev = d["loop_device"].as_str().unwrap().to_string();

    // The control socket: JSON lines, requests tagged `op`, `ok`/`error` replies.
    let socket = imports.state_dir().join("imports/g.sock");
    let s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut ask = |line: &str| {
        writeln!(w, "{line}").unwrap();
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        serde_json::from_str::<serde_json::Value>(&reply).unwrap()
    };
    let status = ask(r#"{"op":"status"}"#);
    assert_eq!(status["ok"]["state"], "connected", "{status}");
    assert!(status["ok"]["reads"].is_u64(), "{status}");
    let bad = ask("status");
    assert_eq!(bad["error"]["kind"], "bad_request", "{bad}");
    let bad = ask(r#"{"op":"dance"}"#);
    assert_eq!(bad["error"]["kind"], "bad_request", "{bad}");

    // SIGHUP only reopens the log: the device stays.
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(imports.state("g").as_deref(), Some("connected"), "{}", imports.log("g"));
    assert!(imports.log("g").contains("SIGHUP"), "{}", imports.log("g"));

    // SIGTERM removes the device as a forced stop does.
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z")
    {
        assert!(Instant::now() < deadline, "SIGTERM did not stop the device process");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(imports.list().is_empty(), "the record is removed");
    assert!(!imports.device("g").exists(), "the device name is removed");
    assert!(!socket.exists(), "the control socket is removed");
    let back = std::fs::read_to_string(format!("/sys/block/{}/loop/backing_file", &loop_dev[5..])).unwrap_or_default();
    assert!(!back.contains("g.mnt"), "the loop device was detached (still backed by {back})");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&format!("{}/imports/g.mnt", imports.state_dir().display())), "FUSE mount left behind");
    assert!(imports.log("g").contains("removed"), "{}", imports.log("g"));
}

#[test]
fn fencing_verbs_over_tls_use_the_node_certificate() {
    use gnbd_tests::cluster::{NODE1, NODE2};
    let pki = gnbd_tests::pki::Pki::new();
    let dir = TempDir::new();
    let nodes = dir.join("nodes");
    std::fs::write(&nodes, format!("node1 {NODE1}\nnode2 {NODE2}\n")).unwrap();
    let mut b = Server::builder()
        .arg("--tls")
        .arg("required")
        .arg("--nodes")
        .arg(&nodes)
        .arg("--cluster")
        .arg("--control-port")
        .arg("0");
    for a in pki.server_args() {
        b = b.arg(a);
    }
    let server = b.start();
    let ctl = format!("127.0.0.1:{}", server.control_addr().expect("control channel").port());
    let imports = Imports::new();
    let node2 = pki.client("node2");
    let rogue = pki.rogue_client("node2");
    let via = |certs: &Path, args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--tls-certificates", certs.to_str().unwrap()]);
        imports.run(&all)
    };
    via(&node2, &["-s", "node1", "-t", &ctl]).assert_success("gnbd_import -s over TLS");
    assert_eq!(text(&via(&node2, &["-c", &ctl]).stdout), "node1\n");
    let out = via(&rogue, &["-u", "node1", "-t", &ctl]);
    assert_eq!(out.status.code(), Some(1), "a certificate from another CA gives no orders: {}", text(&out.stderr));
    via(&node2, &["-u", "node1", "-t", &ctl]).assert_success("gnbd_import -u over TLS");
    assert_eq!(text(&via(&node2, &["-c", &ctl]).stdout), "");
}
