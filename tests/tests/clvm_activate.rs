//! Activation: a clustered VG on two gnbd exports, two nodes (a dlm_controld mesh and a clvmd
//! each, on this host). `lvchange -aey` on node 1 makes `/dev/VG/LV` (a loop device over the
//! LV's FUSE file); data written through it lands on the PVs where the map says and reads
//! back; `lvs` shows it active and open; node 2's exclusive activation is refused while node 1
//! holds it; `gnbd_export -d VG/LV` exports the active LV and nbd clients read the same data;
//! deactivation is refused while the device is in use and then removes everything.

use gnbd_tests::{bin_dir, gnbd_export_cmd, require_tool, run, run_timeout, DlmDaemon, OutputExt, Server, TempDir};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

struct Clvmd(Child, PathBuf);

impl Drop for Clvmd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn clvmd(dir: &Path, i: usize, dlm: &Path) -> Clvmd {
    let socket = dir.join(format!("clvmd{i}.sock"));
    let mut child = Command::new(bin_dir().join("clvmd"))
        .arg("--dlm-socket")
        .arg(dlm)
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("clvmd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("ready line");
    assert!(line.starts_with("clvmd: ready"), "{line}");
    Clvmd(child, socket)
}

#[test]
fn an_lv_is_activated_exported_and_deactivated() {
    require_tool("nbdinfo");
    let server = Server::start();
    let mut uris = Vec::new();
    for k in 0..2 {
        let f = server.path(format!("pv{k}.img"));
        std::fs::File::create(&f).and_then(|h| h.set_len(128 << 20)).expect("export file");
        run(gnbd_export_cmd(server.state_dir()).args(["-e", &format!("pv{k}"), "-d"]).arg(&f))
            .assert_success("gnbd_export");
        uris.push(server.uri(&format!("pv{k}")).replace("nbd://", "gnbd://"));
    }
    let work = TempDir::new();
    let dlms = DlmDaemon::start_mesh(work.path(), 2);
    let nodes = [clvmd(work.path(), 0, &dlms[0].socket), clvmd(work.path(), 1, &dlms[1].socket)];
    // A VG name of our own: activation links /dev/VG/LV (what gnbd_export -d VG/LV reads).
    let vg = format!("clvmact{}", std::process::id());
    let clvm = |node: usize, args: &[&str]| -> Output {
        run_timeout(
            Command::new(bin_dir().join("clvm"))
                .args(args)
                .arg("--devices")
                .arg(uris.join(","))
                .arg("--clvmd-socket")
                .arg(&nodes[node].1)
                .arg("--config")
                .arg(format!("activation/run_dir=\"{}\"", work.join(format!("run{node}")).display()))
                .env("LVM_SYSTEM_DIR", work.join(format!("etc{node}"))),
            Duration::from_secs(60),
        )
    };
    clvm(0, &["vgcreate", &vg, &uris[0], &uris[1]]).assert_success("vgcreate");
    clvm(0, &["lvcreate", "-L", "32M", "-i", "2", "-n", "data", &vg]).assert_success("lvcreate");
    clvm(0, &["lvchange", "-aey", &format!("{vg}/data")]).assert_success("lvchange -aey");
    let link = PathBuf::from(format!("/dev/{vg}/data"));
    let cleanup = scopeguard(|| {
        let _ = clvm(0, &["lvchange", "-an", &format!("{vg}/data")]);
        let _ = std::fs::remove_dir(format!("/dev/{vg}"));
    });
    assert!(std::fs::read_link(&link).is_ok_and(|t| t.to_string_lossy().starts_with("/dev/loop")), "{link:?}");

    // Write through the device (direct I/O), read back.
    let pattern = work.join("pattern");
    let data: Vec<u8> = (0..(4 << 20)).map(|i: u32| (i / 512 % 251) as u8).collect();
    std::fs::write(&pattern, &data).unwrap();
    run(Command::new("dd").arg(format!("if={}", pattern.display())).arg(format!("of={}", link.display())).args([
        "bs=1M",
        "oflag=direct",
        "conv=fsync",
        "status=none",
    ]))
    .assert_success("dd to the LV");
    let back = work.join("back");
    run(Command::new("dd").arg(format!("if={}", link.display())).arg(format!("of={}", back.display())).args([
        "bs=1M",
        "count=4",
        "iflag=direct",
        "status=none",
    ]))
    .assert_success("dd from the LV");
    assert!(std::fs::read(&back).unwrap() == data, "the LV reads back what was written");

    // Reports: active; node 2 cannot take it exclusively meanwhile.
    let lvs = clvm(0, &["lvs", "--noheadings", "-o", "lv_attr", &vg]);
    lvs.assert_success("lvs");
    assert!(String::from_utf8_lossy(&lvs.stdout).contains("-wi-a"), "{}", lvs.describe());
    let other = clvm(1, &["lvchange", "-aey", &format!("{vg}/data")]);
    assert_eq!(other.status.code(), Some(5), "node 2's exclusive activation: {}", other.describe());
    assert!(String::from_utf8_lossy(&other.stderr).contains("active on another node"), "{}", other.describe());

    // Exported by a gnbd_serv as VG/LV: nbd clients read the same bytes.
    let exporter = Server::start();
    run(gnbd_export_cmd(exporter.state_dir()).args(["-e", "lvexp", "-d", &format!("{vg}/data")]))
        .assert_success("gnbd_export -d VG/LV");
    let size = run(Command::new("nbdinfo").args(["--size", &exporter.uri("lvexp")]));
    size.assert_success("nbdinfo --size");
    assert_eq!(String::from_utf8_lossy(&size.stdout).trim(), (32u64 << 20).to_string());
    let copy = work.join("copy");
    run(Command::new("nbdcopy").arg(exporter.uri("lvexp")).arg(&copy)).assert_success("nbdcopy");
    assert!(std::fs::read(&copy).unwrap()[..4 << 20] == data[..], "the export serves the LV's data");
    // Busy while exported: deactivation refused; then freed.
    let busy = clvm(0, &["lvchange", "-an", &format!("{vg}/data")]);
    assert_eq!(busy.status.code(), Some(5), "deactivate while exported: {}", busy.describe());
    run(gnbd_export_cmd(exporter.state_dir()).args(["-r", "lvexp", "-O"])).assert_success("gnbd_export -r");
    drop(exporter);
    clvm(0, &["lvchange", "-an", &format!("{vg}/data")]).assert_success("lvchange -an");
    assert!(!link.exists(), "/dev/VG/LV removed");
    // Now node 2 may take it.
    clvm(1, &["lvchange", "-aey", &format!("{vg}/data")]).assert_success("lvchange -aey on node 2");
    clvm(1, &["vgchange", "-an", &vg]).assert_success("vgchange -an on node 2");
    drop(cleanup);
}

/// Runs `f` on drop.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    G(Some(f))
}
