//! mkfs.gfs and gfs_tool on a file and on a gnbd export reached through the client library.

use gnbd_tests::{bin, run, OutputExt, Server, TempDir};
use std::path::Path;
use std::process::Command;

fn make_image(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
}

#[test]
fn mkfs_refuses_existing_filesystem_without_overwrite() {
    let dir = TempDir::new();
    let img = dir.join("fs.img");
    make_image(&img, 128);
    let mkfs = bin("mkfs_gfs");
    let out = run(Command::new(&mkfs).args(["-p", "lock_nolock", "-t", "c1:fs1", "-j", "3"]).arg(&img));
    out.assert_success("mkfs.gfs");
    assert!(out.stdout_str().contains("Journals:          3"), "{}", out.describe());

    let again = run(Command::new(&mkfs).args(["-p", "lock_dlm", "-t", "c1:fs2", "-j", "1"]).arg(&img));
    again.assert_code(1, "mkfs.gfs over an existing filesystem");
    assert!(again.stderr_str().contains("-O"), "{}", again.describe());
    // The old filesystem is untouched.
    let sb = run(Command::new(bin("gfs_tool")).arg("sb").arg(&img));
    sb.assert_success("gfs_tool sb");
    assert!(sb.stdout_str().contains("sb_locktable = c1:fs1"), "{}", sb.describe());

    run(Command::new(&mkfs).args(["-O", "-p", "lock_dlm", "-t", "c1:fs2", "-j", "2"]).arg(&img))
        .assert_success("mkfs.gfs -O");
    let sb = run(Command::new(bin("gfs_tool")).arg("sb").arg(&img));
    let s = sb.stdout_str();
    assert!(s.contains("sb_lockproto = lock_dlm") && s.contains("sb_locktable = c1:fs2"), "{s}");
    assert!(s.contains("sb_journals = 2") && s.contains("sb_bsize = 4096"), "{s}");

    let ji = run(Command::new(bin("gfs_tool")).arg("jindex").arg(&img));
    ji.assert_success("gfs_tool jindex");
    let lines: Vec<_> = ji.stdout_str().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.ends_with("clean")), "{lines:?}");

    let df = run(Command::new(bin("gfs_tool")).arg("df").arg(&img));
    df.assert_success("gfs_tool df");
    let data = df.stdout_str().lines().find(|l| l.trim_start().starts_with("data")).unwrap().to_string();
    let nums: Vec<u64> = data.split_whitespace().skip(1).take(3).map(|n| n.parse().unwrap()).collect();
    assert_eq!(nums[0], nums[1] + nums[2], "{data}");
    assert_eq!(nums[1], 2, "fresh filesystem uses the root dinode and its leaf: {data}");
}

#[test]
fn mkfs_rejects_bad_arguments() {
    let dir = TempDir::new();
    let img = dir.join("fs.img");
    make_image(&img, 64);
    let mkfs = bin("mkfs_gfs");
    for args in [
        &["-p", "lock_nolock", "-t", "nocolon", "-j", "1"][..],
        &["-p", "lock_foo", "-t", "c:f", "-j", "1"],
        &["-p", "lock_nolock", "-t", "c:f", "-j", "0"],
    ] {
        run(Command::new(&mkfs).args(args).arg(&img)).assert_code(1, &format!("mkfs.gfs {args:?}"));
    }
    let tiny = dir.join("tiny.img");
    std::fs::File::create(&tiny).unwrap().set_len(256 << 10).unwrap();
    let out = run(Command::new(&mkfs).args(["-p", "lock_nolock", "-t", "c:f"]).arg(&tiny));
    out.assert_code(1, "mkfs.gfs on 256 KiB");
    assert!(out.stderr_str().contains("too small"), "{}", out.describe());
    let out = run(Command::new(bin("gfs_tool")).arg("sb").arg(&img));
    out.assert_code(1, "gfs_tool sb on a blank device");
}

#[test]
fn mkfs_and_gfs_tool_over_gnbd() {
    let server = Server::start();
    let disk = server.path("disk.img");
    make_image(&disk, 96);
    server.export("shared", &disk, &[]);
    let url = format!("gnbd://127.0.0.1:{}/shared", server.port());
    run(Command::new(bin("mkfs_gfs")).args(["-p", "lock_dlm", "-t", "alpha:gfs1", "-j", "3"]).arg(&url))
        .assert_success("mkfs.gfs over gnbd");
    // What went over the wire is on the exported file.
    let sb = run(Command::new(bin("gfs_tool")).arg("sb").arg(&disk));
    sb.assert_success("gfs_tool sb on the exported file");
    assert!(sb.stdout_str().contains("sb_locktable = alpha:gfs1"), "{}", sb.describe());
    let ji = run(Command::new(bin("gfs_tool")).arg("jindex").arg(&url));
    ji.assert_success("gfs_tool jindex over gnbd");
    assert_eq!(ji.stdout_str().lines().count(), 3, "{}", ji.describe());
}
