//! The service manager's command lines: man-page style `--help`, clean failures without a
//! running rgmanager, and `rg_test` running real resource agents (ip, script, fs) inside a
//! node namespace without any cluster, and the lvm agent activating an LV through clvm.

use std::process::Command;

use gnbd_tests::bin_dir;
use gnbd_tests::corosync::Nodes;
use gnbd_tests::OutputExt;

#[test]
fn help_reads_like_a_man_page() {
    for tool in ["rgmanager", "clusvcadm", "clustat", "rg_test"] {
        let out = Command::new(bin_dir().join(tool)).arg("--help").output().expect("run --help");
        assert!(out.status.success(), "{tool} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        for section in ["DESCRIPTION", "EXAMPLES", "EXIT STATUS"] {
            assert!(text.contains(section), "{tool} --help lacks {section}:\n{text}");
        }
    }
}

#[test]
fn tools_fail_cleanly_without_rgmanager() {
    let nodes = Nodes::new(1);
    nodes.write_conf(&nodes.simple_conf("solo", 1, 1000, ""));
    let out = nodes.run(0, "clusvcadm", &["-e", "www"]);
    out.assert_code(1, "clusvcadm without rgmanager");
    assert!(out.stderr_str().contains("clusvcadm: cannot reach rgmanager on this node"), "{}", out.describe());
    let out = nodes.run(0, "rgmanager", &["-f", "--pid-file", "/run/rg.pid"]);
    out.assert_code(1, "rgmanager without fenced");
    assert!(out.stderr_str().contains("cannot reach fenced"), "{}", out.describe());
    nodes.run(0, "clusvcadm", &["-m", "node1"]).assert_code(2, "no action");
    nodes.run(0, "clusvcadm", &["-d", "www", "-m", "node1"]).assert_code(2, "-m with -d");
}

#[test]
fn rg_test_runs_ip_script_and_fs_agents_in_order() {
    let nodes = Nodes::new(1);
    let dir = nodes.dir().join("svc");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("app.sh");
    let state = dir.join("app.state");
    let order = dir.join("order");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase $1 in\n start) ip -o addr show | grep -q 198.18.0.50 || exit 1; echo start >> {o}; touch {s};;\n \
             stop) echo stop >> {o}; rm -f {s};;\n status) [ -e {s} ] || exit 3;;\nesac\n",
            o = order.display(),
            s = state.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod").args(["+x", script.to_str().unwrap()]).status().unwrap();
    let extra = format!(
        r#"<rm><service name="www">
             <ip address="198.18.0.50" monitor_link="1"><script name="app" file="{}"/></ip>
             <fs name="scratch" device="tmpfs" fstype="tmpfs" mountpoint="/run/www-data" force_unmount="1"/>
           </service></rm>"#,
        script.display()
    );
    nodes.write_conf(&nodes.simple_conf("solo", 1, 1000, &extra));
    let conf = "/etc/cluster/cluster.conf";
    let tree = nodes.must(0, "rg_test", &["test", conf]);
    assert!(tree.contains("service www:\n  fs:scratch"), "{tree}");
    let noop = nodes.must(0, "rg_test", &["noop", conf, "start", "service", "www"]);
    assert_eq!(noop, "start fs:scratch\nstart ip:198.18.0.50\nstart script:app\n");
    nodes.run(0, "rg_test", &["test", conf, "status", "service", "www"]).assert_code(1, "status before start");
    nodes.must(0, "rg_test", &["test", conf, "start", "service", "www"]);
    // The address went on eth0 with the subnet's prefix, the filesystem is mounted.
    let addrs = nodes.must(0, "ip", &["-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("inet 198.18.0.50/24"), "{addrs}");
    let mounts = nodes.must(0, "cat", &["/proc/self/mountinfo"]);
    assert!(mounts.contains(" /run/www-data "), "{mounts}");
    nodes.must(0, "rg_test", &["test", conf, "status", "service", "www"]);
    // Starting twice is harmless (agents are idempotent).
    nodes.must(0, "rg_test", &["test", conf, "start", "service", "www"]);
    // A process using the filesystem is killed by force_unmount.
    let mut busy = nodes.cmd(0, "sh").args(["-c", "cd /run/www-data && exec sleep 600"]).spawn().unwrap();
    let cwd = format!("/proc/{}/cwd", busy.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_link(&cwd).map(|p| p != std::path::Path::new("/run/www-data")).unwrap_or(true) {
        assert!(std::time::Instant::now() < deadline, "the busy process never entered the mount");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nodes.must(0, "rg_test", &["test", conf, "stop", "service", "www"]);
    let killed = busy.try_wait().unwrap().is_some() || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        busy.try_wait().unwrap().is_some()
    };
    if !killed {
        let _ = busy.kill();
        let _ = busy.wait();
        panic!("force_unmount did not kill the process using the filesystem");
    }
    let addrs = nodes.must(0, "ip", &["-o", "addr", "show", "dev", "eth0"]);
    assert!(!addrs.contains("198.18.0.50"), "{addrs}");
    let mounts = nodes.must(0, "cat", &["/proc/self/mountinfo"]);
    assert!(!mounts.contains(" /run/www-data "), "{mounts}");
    let out = nodes.run(0, "rg_test", &["test", conf, "status", "service", "www"]);
    out.assert_code(1, "status after stop");
    assert!(
        out.stderr_str().contains("status of fs:scratch failed: nothing is mounted at /run/www-data"),
        "{}",
        out.describe()
    );
    // The script ran after the address came up and stopped before it went.
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "start\nstart\nstop\n");
    let out = nodes.run(0, "rg_test", &["test", conf, "start", "service", "nope"]);
    out.assert_code(1, "unknown service");
    assert!(out.stderr_str().contains("no service named \"nope\""), "{}", out.describe());
}

#[test]
fn rg_test_activates_a_logical_volume_exclusively() {
    // A local VG on a file: clvm finds it through $LVM_SYSTEM_DIR/clvm.conf, which rg_test's
    // lvm agent inherits. The VG name is our own: activation links /dev/VG/LV.
    let dir = gnbd_tests::TempDir::new();
    let pv = dir.join("pv.img");
    std::fs::File::create(&pv).unwrap().set_len(64 << 20).unwrap();
    std::fs::write(dir.join("clvm.conf"), format!("devices {{\n devices = [ \"{}\" ]\n}}\n", pv.display())).unwrap();
    let vg = format!("rgt{}", std::process::id());
    let clvm = |args: &[&str]| {
        gnbd_tests::run(Command::new(bin_dir().join("clvm")).env("LVM_SYSTEM_DIR", dir.path()).args(args))
    };
    clvm(&["pvcreate", pv.to_str().unwrap()]).assert_success("pvcreate");
    clvm(&["vgcreate", "-c", "n", &vg, pv.to_str().unwrap()]).assert_success("vgcreate");
    clvm(&["lvcreate", "-L", "16M", "-n", "data", &vg]).assert_success("lvcreate");
    let conf = dir.join("cluster.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<cluster name="c" config_version="1"><clusternodes><clusternode name="n" nodeid="1"/></clusternodes>
               <rm><service name="vol"><lvm name="vol" vg_name="{vg}" lv_name="data"/></service></rm></cluster>"#
        ),
    )
    .unwrap();
    let rg_test = |args: &[&str]| {
        let mut c = Command::new(bin_dir().join("rg_test"));
        c.env("LVM_SYSTEM_DIR", dir.path()).arg("test").arg(&conf).args(args);
        gnbd_tests::run(&mut c)
    };
    let link = std::path::PathBuf::from(format!("/dev/{vg}/data"));
    rg_test(&["status", "service", "vol"]).assert_code(1, "status before start");
    rg_test(&["start", "service", "vol"]).assert_success("rg_test start");
    let active = std::fs::read_link(&link);
    let status = rg_test(&["status", "service", "vol"]);
    let attrs = clvm(&["lvs", "--noheadings", "-o", "lv_attr", &format!("{vg}/data")]).stdout_str();
    rg_test(&["stop", "service", "vol"]).assert_success("rg_test stop");
    assert!(active.is_ok_and(|t| t.to_string_lossy().starts_with("/dev/loop")), "/dev/{vg}/data after start");
    status.assert_success("status while active");
    assert!(attrs.trim().starts_with("-wi-a"), "{attrs}");
    assert!(!link.exists(), "{} left after stop", link.display());
    let out = rg_test(&["status", "service", "vol"]);
    out.assert_code(1, "status after stop");
    assert!(out.stderr_str().contains("not active"), "{}", out.describe());
    let _ = std::fs::remove_dir(format!("/dev/{vg}"));
}
