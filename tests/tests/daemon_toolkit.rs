//! Every daemon on the shared toolkit path: readiness over sd_notify and the ready line,
//! SIGHUP keeps it running and reopens its log file, SIGTERM stops it cleanly.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use gnbd_tests::toolkit::{assert_hup_reopens_log, spawn_until_ready, stop, NotifySocket, READY_TIMEOUT};
use gnbd_tests::{bin_dir, run, OutputExt, TempDir};

fn is_mounted(mnt: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mnt = mnt.to_string_lossy();
    m.lines().any(|l| l.split_whitespace().nth(1) == Some(&*mnt))
}

/// Unmounts on drop if a test failed half-way.
struct Unmount<'a>(&'a Path);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if is_mounted(self.0) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
}

fn gfs_image(dir: &TempDir) -> std::path::PathBuf {
    let img = dir.join("gfs.img");
    gnbd_tests::gfs_harness::mkfs_image(&img, 128, "lock_nolock", "t:t", 1);
    img
}

#[test]
fn mount_gfs_notifies_survives_hup_and_unmounts_on_term() {
    let dir = TempDir::new();
    let img = gfs_image(&dir);
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _u = Unmount(&mnt);
    let log = dir.join("mount.log");
    let notify = NotifySocket::new(dir.path());
    let (mut child, line) = spawn_until_ready(
        Command::new(bin_dir().join("mount_gfs"))
            .arg(&img)
            .arg(&mnt)
            .arg("-f")
            .arg("--log-file")
            .arg(&log)
            .env("NOTIFY_SOCKET", &notify.path)
            .stderr(Stdio::null()),
        READY_TIMEOUT,
    );
    assert!(line.starts_with("mount.gfs: ready"), "{line}");
    let n = notify.wait_ready(Duration::from_secs(5));
    assert!(n.contains("STATUS=mount.gfs: ready"), "{n}");
    assert!(is_mounted(&mnt));
    std::fs::write(mnt.join("f"), b"x").unwrap();
    assert_hup_reopens_log(child.id(), &log);
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"x", "the mount still serves after SIGHUP");
    let status = stop(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mnt), "SIGTERM unmounts");
    run(Command::new(bin_dir().join("gfs_fsck")).arg("-n").arg(&img)).assert_success("gfs_fsck after SIGTERM");
}

#[test]
fn mount_gfs_background_start_reports_errors_once() {
    let dir = TempDir::new();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = run(Command::new(bin_dir().join("mount_gfs")).arg(dir.join("missing.img")).arg(&mnt));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(err.matches("mount.gfs").count(), 1, "the name once: {err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "each cause once: {err}");
}

#[test]
fn gnbd_serv_notifies_survives_hup_and_stops_on_term() {
    let dir = TempDir::new();
    let log = dir.join("serv.log");
    let notify = NotifySocket::new(dir.path());
    let (mut child, line) = spawn_until_ready(
        Command::new(gnbd_tests::serv_bin())
            .args(["-p", "0", "--bind", "127.0.0.1", "--foreground", "--state-dir"])
            .arg(dir.join("state"))
            .arg("--log-file")
            .arg(&log)
            .env("NOTIFY_SOCKET", &notify.path)
            .stderr(Stdio::null()),
        READY_TIMEOUT,
    );
    assert!(line.starts_with("gnbd_serv: ready tcp=127.0.0.1:"), "{line}");
    let n = notify.wait_ready(Duration::from_secs(5));
    assert!(n.contains(&format!("STATUS={line}")), "{n}");
    assert_hup_reopens_log(child.id(), &log);
    let status = stop(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

#[test]
fn gnbd_serv_background_start_waits_for_ready_and_refuses_a_second_instance() {
    let dir = TempDir::new();
    let state = dir.join("state");
    let start = || {
        run(Command::new(gnbd_tests::serv_bin()).args(["-p", "0", "--bind", "127.0.0.1", "--state-dir"]).arg(&state))
    };
    let out = start();
    out.assert_success("gnbd_serv in the background");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("gnbd_serv: ready tcp="), "{out:?}");
    let pid: u32 = std::fs::read_to_string(state.join("gnbd_serv.pid")).unwrap().trim().parse().unwrap();
    let second = start();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains(&format!("pid {pid}")) && err.lines().count() == 1, "{err}");
    assert_hup_reopens_log(pid, &state.join("gnbd_serv.log"));
    run(Command::new("kill").arg(pid.to_string())).assert_success("kill");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!state.join("gnbd_serv.pid").exists(), "the pid file goes with the server");
}

#[test]
fn lvsd_notifies_survives_hup_and_stops_on_term() {
    let dir = TempDir::new();
    let log = dir.join("lvsd.log");
    let notify = NotifySocket::new(dir.path());
    let (mut child, line) = spawn_until_ready(
        Command::new(bin_dir().join("lvsd"))
            .args(["--foreground", "--no-checks", "--socket"])
            .arg(dir.join("lvsd.sock"))
            .arg("--log-file")
            .arg(&log)
            .env("NOTIFY_SOCKET", &notify.path)
            .stderr(Stdio::null()),
        READY_TIMEOUT,
    );
    assert!(line.starts_with("lvsd: ready"), "{line}");
    notify.wait_ready(Duration::from_secs(5));
    assert_hup_reopens_log(child.id(), &log);
    let status = stop(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

/// Pids of running `comm` processes whose command line mentions `needle`.
fn pids_of(comm: &str, needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if c.trim() == comm && String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn pulse_background_start_notifies_survives_hup_and_stops_on_term() {
    let dir = TempDir::new();
    let hb = std::net::UdpSocket::bind("127.0.14.1:0").unwrap().local_addr().unwrap().port();
    let cf = dir.join("lvs.cf");
    std::fs::write(
        &cf,
        format!("primary = 127.0.14.1\nbackup = 127.0.14.2\nheartbeat_port = {hb}\nkeepalive = 0.25\ndeadtime = 2\n"),
    )
    .unwrap();
    let log = dir.join("pulse.log");
    let notify = NotifySocket::new(dir.path());
    let out = run(Command::new(bin_dir().join("pulse"))
        .args(["--role", "primary", "--config"])
        .arg(&cf)
        .arg("--socket")
        .arg(dir.join("lvsd.sock"))
        .arg("--lvsd")
        .arg(bin_dir().join("lvsd"))
        .arg("--log")
        .arg(&log)
        .env("NOTIFY_SOCKET", &notify.path));
    out.assert_success("pulse in the background");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pulse: ready"), "{out:?}");
    notify.wait_ready(Duration::from_secs(5));
    let pids = pids_of("pulse", &cf.to_string_lossy());
    assert_eq!(pids.len(), 1, "one pulse running: {pids:?}");
    assert_hup_reopens_log(pids[0], &log);
    run(Command::new("kill").arg(pids[0].to_string())).assert_success("kill");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pids_of("pulse", &cf.to_string_lossy()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "pulse did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gnbd_import_device_process_notifies_and_survives_hup() {
    let server = gnbd_tests::Server::start();
    let disk = server.path("disk.img");
    std::fs::write(&disk, vec![3u8; 1 << 20]).unwrap();
    server.export("t", &disk, &[]);
    let imports = gnbd_tests::import::Imports::new();
    let notify = NotifySocket::new(imports.state_dir().parent().unwrap());
    let port = server.port().to_string();
    let out = gnbd_tests::run_timeout(
        imports.cmd().args(["-i", "127.0.0.1", "-p", &port, "-n", "t"]).env("NOTIFY_SOCKET", &notify.path),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "gnbd_import -i: {out:?}\n{}", imports.log("t"));
    let n = notify.wait_ready(Duration::from_secs(5));
    assert!(n.contains("STATUS=gnbd_import: ready"), "{n}");
    let d = imports.list().into_iter().find(|d| d["name"] == "t").expect("listed");
    let pid = d["pid"].as_u64().unwrap() as u32;
    assert_hup_reopens_log(pid, &imports.state_dir().join("imports/t.log"));
    assert_eq!(imports.state("t").as_deref(), Some("connected"));
    imports.run(&["-r", "t"]).assert_success("gnbd_import -r");
}

#[test]
fn dlm_controld_notifies_survives_hup_and_stops_on_term() {
    let dir = TempDir::new();
    let log = dir.join("dlm.log");
    let notify = NotifySocket::new(dir.path());
    let (mut child, line) = spawn_until_ready(
        Command::new(bin_dir().join("dlm_controld"))
            .args(["--node-id", "1", "--socket"])
            .arg(dir.join("dlm.sock"))
            .arg("--log-file")
            .arg(&log)
            .env("NOTIFY_SOCKET", &notify.path)
            .stderr(Stdio::null()),
        READY_TIMEOUT,
    );
    assert!(line.starts_with("dlm_controld: ready"), "{line}");
    notify.wait_ready_status("dlm_controld: ready", Duration::from_secs(5));
    assert_hup_reopens_log(child.id(), &log);
    let status = stop(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

#[test]
fn clvmd_notifies_survives_hup_and_stops_on_term() {
    let dir = TempDir::new();
    let log = dir.join("clvmd.log");
    let sock = dir.join("clvmd.sock");
    let notify = NotifySocket::new(dir.path());
    let (mut child, line) = spawn_until_ready(
        Command::new(bin_dir().join("clvmd"))
            .args(["--single", "--socket"])
            .arg(&sock)
            .arg("--log-file")
            .arg(&log)
            .env("NOTIFY_SOCKET", &notify.path)
            .stderr(Stdio::null()),
        READY_TIMEOUT,
    );
    assert!(line.starts_with("clvmd: ready mode single"), "{line}");
    notify.wait_ready_status("clvmd: ready", Duration::from_secs(5));
    assert_hup_reopens_log(child.id(), &log);
    // A second clvmd on the same socket is refused while the first runs.
    let second = gnbd_tests::run_timeout(
        Command::new(bin_dir().join("clvmd")).args(["--single", "--socket"]).arg(&sock),
        Duration::from_secs(10),
    );
    assert_eq!(second.status.code(), Some(1), "second clvmd: {second:?}");
    let status = stop(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "the socket is removed on stop");
}

#[test]
fn fenced_started_by_cman_tool_notifies_and_survives_hup() {
    let nodes = gnbd_tests::corosync::Nodes::new(1);
    nodes.write_conf(&nodes.simple_conf("toolkit", 1, 1000, ""));
    let notify = NotifySocket::new(nodes.dir());
    let out = gnbd_tests::run_timeout(
        nodes.cmd(0, "cman_tool").args(["join", "-t", "60"]).env("NOTIFY_SOCKET", &notify.path),
        Duration::from_secs(90),
    );
    assert!(out.status.success(), "cman_tool join: {out:?}\n{}", nodes.logs(0));
    notify.wait_ready_status("fenced: ready", Duration::from_secs(10));
    let pid: u32 = std::fs::read_to_string(nodes.path(0, "run/cluster/fenced.pid"))
        .expect("fenced.pid")
        .trim()
        .parse()
        .expect("a pid");
    assert_hup_reopens_log(pid, &nodes.path(0, "log/fenced.log"));
    assert!(nodes.status(0).contains("Quorate: Yes"), "{}", nodes.status(0));
    nodes.must(0, "cman_tool", &["leave"]);
}
