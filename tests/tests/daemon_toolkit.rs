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
