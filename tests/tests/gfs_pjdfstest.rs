//! The pjdfstest POSIX conformance suite (crates.io 0.2.2, installed by scripts/deps.sh) on a
//! lock_nolock gfs mount and on a lock_dlm mount (one `dlm_controld`). Target: no failures. Skipped by the suite itself (and listed in the
//! README): the 13 EROFS tests (they remount read-only; not allowed here), the 2 tests that
//! need a secondary filesystem, and the LINK_MAX test (FUSE reports no LINK_MAX).

use gnbd_tests::gfs_harness::mkfs_image;
use gnbd_tests::{bin_dir, require_tool, run_timeout, OutputExt, TempDir};
use std::process::Command;
use std::time::Duration;

const CONFIG: &str = r#"
[features]
posix_fallocate = {}
rename_ctime = {}
utimensat = {}
utime_now = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [
   ["nobody", "nogroup"],
   ["daemon", "daemon"],
]
"#;

/// Runs the suite on a fresh filesystem made with `lockproto` (lock_dlm: one dlm_controld).
fn pjdfstest_on(lockproto: &str) {
    let pjd = require_tool("pjdfstest");
    require_tool("unshare");
    let work = TempDir::new();
    let img = work.join("fs.img");
    mkfs_image(&img, 1024, lockproto, "test:pjd", 1);
    std::fs::write(work.join("pjdfstest.toml"), CONFIG).unwrap();
    let mnt = work.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let sock = work.join("dlm.sock");
    let (dlm_start, dlm_opt) = if lockproto == "lock_dlm" {
        (
            format!(
                "{dlm} --node-id 1 --socket {sock} >/dev/null 2>{log} &\nD=$!\n\
                 for i in $(seq 1 100); do [ -S {sock} ] && break; sleep 0.1; done\n",
                dlm = bin_dir().join("dlm_controld").display(),
                sock = sock.display(),
                log = work.join("dlm.log").display(),
            ),
            format!(",dlm_socket={}", sock.display()),
        )
    } else {
        ("D=\n".to_string(), String::new())
    };
    let script = format!(
        "set -u\n{dlm_start}trap 'cd /; umount {mnt} 2>/dev/null || umount -l {mnt}; sleep 0.2; [ -n \"$D\" ] && kill $D' EXIT\n\
         {mount} {img} {mnt} -o log={log}{dlm_opt} || exit 1\n\
         cd {mnt} && {pjd} -c {conf} -p {mnt} > {out} 2>&1\necho pjdfstest exit $?\n",
        mnt = mnt.display(),
        mount = bin_dir().join("mount_gfs").display(),
        img = img.display(),
        log = work.join("mount.log").display(),
        pjd = pjd.display(),
        conf = work.join("pjdfstest.toml").display(),
        out = work.join("out").display(),
    );
    let out = run_timeout(
        Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]),
        Duration::from_secs(300),
    );
    let report = std::fs::read_to_string(work.join("out")).unwrap_or_default();
    let count = |w: &str| report.lines().filter(|l| l.trim_end().ends_with(w)).count();
    let (ok, failed, skipped) = (count(" ok"), count("FAILED"), count("skipped"));
    println!("pjdfstest on {lockproto}: {ok} ok, {failed} failed, {skipped} skipped");
    let failures: Vec<&str> = report.lines().filter(|l| l.trim_end().ends_with("FAILED")).collect();
    assert!(out.status.success(), "{}", out.describe());
    assert!(failures.is_empty(), "pjdfstest failures: {failures:#?}\n{report}");
    assert!(ok >= 380 && skipped <= 16, "pjdfstest: {ok} ok, {skipped} skipped\n{report}");
    let dev = gfs::open_device(&img.display().to_string()).unwrap();
    let mut fs = gfs::Fs::mount(dev, 0).unwrap();
    let r = fs.check().unwrap();
    assert!(r.problems.is_empty(), "after pjdfstest: {:#?}", r.problems);
}

#[test]
fn pjdfstest_on_lock_nolock_mount() {
    pjdfstest_on("lock_nolock");
}

#[test]
fn pjdfstest_on_lock_dlm_mount() {
    pjdfstest_on("lock_dlm");
}
