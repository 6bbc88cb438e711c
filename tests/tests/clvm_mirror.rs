//! A clvm mirror (`lvcreate -m 1 --type mirror`) with its two legs on two gnbd servers and
//! its region log on a third export: a writer keeps writing and syncing through the LV while
//! one leg's server is SIGKILLed; every acknowledged write reads back while the mirror runs
//! on one leg, and when the server returns (same port, same file) the leg is resynced: both
//! legs then hold exactly what was written.

use clvm::cli::{Common, Env};
use gfs::Device;
use gnbd_tests::{bin_dir, gnbd_export_cmd, run, run_timeout, OutputExt, Server, TempDir};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const EXPORT: u64 = 64 << 20;
const BLOCK: usize = 64 << 10;

fn export(server: &Server, name: &str) -> String {
    let f = server.path(format!("{name}.img"));
    if !f.exists() {
        std::fs::File::create(&f).and_then(|h| h.set_len(EXPORT)).expect("export file");
    }
    run(gnbd_export_cmd(server.state_dir()).args(["-e", name, "-d"]).arg(&f)).assert_success("gnbd_export");
    server.uri(name).replace("nbd://", "gnbd://")
}

fn block(i: usize) -> Vec<u8> {
    (0..BLOCK).map(|k| (i * 31 + k / 512) as u8).collect()
}

#[test]
fn a_mirror_survives_a_leg_server_killed_mid_write_and_resyncs_it() {
    let a = Server::start();
    let port_b = gnbd_tests::free_port("127.0.0.1");
    let mut b = Server::builder().port(port_b).start();
    let leg_a = export(&a, "lega");
    let log = export(&a, "log");
    let leg_b = export(&b, "legb");
    let work = TempDir::new();
    let etc: PathBuf = work.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let clvm = |args: &[&str]| {
        run_timeout(
            Command::new(bin_dir().join("clvm")).args(args).env("LVM_SYSTEM_DIR", &etc),
            Duration::from_secs(60),
        )
        .assert_success(&format!("clvm {}", args.join(" ")));
    };
    let devices = format!("{leg_a},{leg_b},{log}");
    clvm(&["vgcreate", "--devices", &devices, "mvg", &leg_a, &leg_b, &log]);
    clvm(&[
        "lvcreate",
        "--devices",
        &devices,
        "-L",
        "32M",
        "-m",
        "1",
        "--type",
        "mirror",
        "--nosync",
        "-n",
        "m",
        "mvg",
    ]);

    // The writer's view: a 2-second I/O timeout on gnbd PVs, so a dead leg is dropped.
    let common = Common {
        devices: devices.split(',').map(str::to_owned).collect(),
        config: Some("devices/gnbd_io_timeout=2".into()),
        ..Default::default()
    };
    std::env::set_var("LVM_SYSTEM_DIR", &etc);
    let env = Env::new(common).expect("env");
    let lv = clvm::activate::open_lv_in(&env, "lvm:mvg/m").expect("open the mirror");
    let blocks = lv.size() as usize / BLOCK;
    let mut model: Vec<Option<usize>> = vec![None; blocks];
    let write = |i: usize, slot: usize, model: &mut Vec<Option<usize>>| {
        lv.write_at(&block(i), (slot * BLOCK) as u64).expect("a write the mirror must take");
        lv.sync().expect("a sync the mirror must take");
        model[slot] = Some(i);
    };
    for i in 0..100 {
        write(i, i % blocks, &mut model);
    }
    b.kill();
    let t = Instant::now();
    for i in 100..250 {
        write(i, (i * 7) % blocks, &mut model);
    }
    assert!(lv.degraded(), "the leg on the killed server was dropped (writes took {:?})", t.elapsed());
    assert!(lv.stale_regions() > 0, "regions written while degraded are marked");
    // Every acknowledged write reads back from the surviving leg.
    for (slot, w) in model.iter().enumerate() {
        let mut buf = vec![0u8; BLOCK];
        lv.read_at(&mut buf, (slot * BLOCK) as u64).expect("read while degraded");
        let want = w.map_or_else(|| vec![0u8; BLOCK], block);
        assert!(buf == want, "slot {slot} lost its acknowledged write while degraded");
    }

    // The server comes back on the same port with the same file: the monitor notices the
    // leg, copies the stale regions, and the mirror is whole again.
    b.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lv.degraded() || lv.stale_regions() > 0 {
        assert!(
            Instant::now() < deadline,
            "no resync within 60 s: degraded {}, stale {}",
            lv.degraded(),
            lv.stale_regions()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 250..270 {
        write(i, (i * 3) % blocks, &mut model);
    }
    // Each leg on its own holds every acknowledged write.
    let scan_pvs = |vg: &str| {
        let s = env.scan();
        let found = s.vgs[vg].clone();
        let pvs: std::collections::BTreeMap<String, std::sync::Arc<dyn Device>> = found
            .vg
            .physical_volumes
            .iter()
            .filter_map(|p| s.pv_by_uuid(&p.id).map(|i| (p.name.clone(), s.pvs[i].dev.clone())))
            .collect();
        (found.vg, pvs)
    };
    let (vg, pvs) = scan_pvs("mvg");
    for img in ["m_mimage_0", "m_mimage_1"] {
        let leg = clvm::map::LvDevice::new(vg.clone(), img, pvs.clone()).expect("leg");
        for (slot, w) in model.iter().enumerate() {
            let mut buf = vec![0u8; BLOCK];
            leg.read_at(&mut buf, (slot * BLOCK) as u64).expect("read a leg");
            let want = w.map_or_else(|| vec![0u8; BLOCK], block);
            assert!(buf == want, "{img} slot {slot} differs after the resync");
        }
    }
    drop(lv);
    let _ = (&a, &work);
}
