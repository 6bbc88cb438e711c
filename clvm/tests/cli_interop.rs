//! The clvm commands against Debian's lvm2 (2.03) on loop devices, metadata level (no
//! device-mapper here, so stock commands run with activation off):
//!
//! - what our commands create, extend, rename, reduce and remove is listed by stock `pvs`,
//!   `vgs` and `lvs -a -o +seg_pe_ranges,stripes` exactly as our scan reads it, and passes
//!   stock `vgck` and `pvck`;
//! - a VG stock `vgcreate` + `lvcreate -an -Zn -L 8M -i 2` made is read, extended and added to
//!   by us, and read back by stock tools (and a stock change on top of ours by us);
//! - `vgcfgbackup` files go both ways through `vgcfgrestore`;
//! - refusals are one line and exit code 5.

mod common;

use anyhow::{bail, ensure, Context, Result};
use clvm::scan::Scan;
use clvm::vg::{Segment, VolumeGroup};
use common::{require_lvm2, unique, LoopDev, CMD_TIMEOUT_S as TIMEOUT, LVM_CONFIG};
use std::path::PathBuf;
use std::process::{Command, Output};

/// Loop devices plus a private LVM_SYSTEM_DIR for our commands.
struct Rig {
    devs: Vec<LoopDev>,
    etc: PathBuf,
}

impl Rig {
    fn new(n: usize) -> Result<Rig> {
        require_lvm2();
        let devs = (0..n).map(|_| LoopDev::new()).collect::<Result<Vec<_>>>()?;
        let etc = std::env::temp_dir().join(unique("clvm-cli-etc-"));
        std::fs::create_dir_all(&etc)?;
        Ok(Rig { devs, etc })
    }

    fn dev(&self, i: usize) -> &str {
        &self.devs[i].dev
    }

    fn list(&self) -> String {
        self.devs.iter().map(|d| d.dev.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Runs `clvm ARGS --devices ...`.
    fn clvm_out(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg(TIMEOUT)
            .arg(env!("CARGO_BIN_EXE_clvm"))
            .args(args)
            .args(["--devices", &self.list()])
            .env("LVM_SYSTEM_DIR", &self.etc)
            .output()
            .expect("running clvm")
    }

    fn clvm(&self, args: &[&str]) -> Result<String> {
        let out = self.clvm_out(args);
        ensure!(
            out.status.success(),
            "clvm {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a stock lvm2 command restricted to our devices.
    fn lvm(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("timeout")
            .arg(TIMEOUT)
            .args(args)
            .args(["--config", LVM_CONFIG, "--devices", &self.list()])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .env_remove("LVM_SYSTEM_DIR")
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("{} failed ({}):\n{stdout}\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(stdout)
    }

    fn report(&self, args: &[&str]) -> Result<Vec<Vec<String>>> {
        let mut full = args.to_vec();
        full.extend(["--noheadings", "--separator", "|", "--units", "s", "--nosuffix"]);
        let out = self.lvm(&full)?;
        let mut rows: Vec<Vec<String>> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split('|').map(|f| f.trim().to_owned()).collect())
            .collect();
        rows.sort();
        Ok(rows)
    }

    fn scan(&self) -> Scan {
        let devs = self
            .devs
            .iter()
            .map(|d| (d.dev.clone(), blockdev::open_device(&d.dev).expect("open loop device")))
            .collect();
        clvm::scan::scan(devs)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

fn pe_ranges(vg: &VolumeGroup, scan: &Scan, seg: &Segment) -> String {
    let dev_of = |name: &str| -> String {
        match vg.pv(name) {
            Some(p) => scan.pvs[scan.pv_by_uuid(&p.id).expect("PV found")].spec.clone(),
            None => name.to_owned(),
        }
    };
    if seg.segtype == "mirror" {
        return seg
            .mirrors
            .iter()
            .map(|a| format!("{}:{}-{}", a.name, a.start, a.start + seg.extent_count - 1))
            .collect::<Vec<_>>()
            .join(" ");
    }
    let per = seg.extent_count / seg.stripes.len().max(1) as u64;
    seg.stripes
        .iter()
        .map(|a| format!("{}:{}-{}", dev_of(&a.name), a.start, a.start + per - 1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stock pvs / vgs / lvs say what our scan of the disks says; stock vgck and pvck are clean.
fn stock_agrees(rig: &Rig, vg_name: &str) -> Result<VolumeGroup> {
    let scan = rig.scan();
    ensure!(scan.warnings.is_empty(), "our scan warns: {:?}", scan.warnings);
    let found = scan.vgs.get(vg_name).with_context(|| format!("we find no VG {vg_name}"))?;
    ensure!(found.stale.is_empty(), "stale areas: {:?}", found.stale);
    let vg = &found.vg;
    let vgs = rig.report(&[
        "vgs",
        "-o",
        "vg_name,vg_uuid,vg_seqno,vg_extent_size,pv_count,lv_count,vg_extent_count,vg_free_count",
        vg_name,
    ])?;
    let hidden = |n: &str| vg.lv(n).is_some_and(|l| !l.status.iter().any(|s| s == "VISIBLE"));
    let visible = vg.logical_volumes.iter().filter(|l| !hidden(&l.name)).count();
    let want = vec![vec![
        vg.name.clone(),
        vg.id.clone(),
        vg.seqno.to_string(),
        vg.extent_size.to_string(),
        vg.physical_volumes.len().to_string(),
        visible.to_string(),
        clvm::alloc::vg_extents(vg).to_string(),
        clvm::alloc::vg_free(vg).to_string(),
    ]];
    ensure!(vgs == want, "stock vgs says {vgs:?}, we read {want:?}");
    let pvs = rig.report(&[
        "pvs",
        "-o",
        "pv_name,vg_name,pv_uuid,pe_start,pv_pe_count,pv_pe_alloc_count",
        "-S",
        &format!("vg_name={vg_name}"),
    ])?;
    let mut want = Vec::new();
    for (k, p) in vg.physical_volumes.iter().enumerate() {
        let dev = &scan.pvs[scan.pv_by_uuid(&p.id).context("PV")?].spec;
        let used = p.pe_count - clvm::alloc::pv_free(vg, k);
        want.push(vec![
            dev.clone(),
            vg.name.clone(),
            p.id.clone(),
            p.pe_start.to_string(),
            p.pe_count.to_string(),
            used.to_string(),
        ]);
    }
    want.sort();
    ensure!(pvs == want, "stock pvs says\n{pvs:?}\nwe read\n{want:?}");
    let lvs =
        rig.report(&["lvs", "-a", "-o", "lv_name,lv_uuid,seg_start_pe,seg_size_pe,stripes,seg_pe_ranges", vg_name])?;
    let mut want = Vec::new();
    for lv in &vg.logical_volumes {
        let name = if hidden(&lv.name) { format!("[{}]", lv.name) } else { lv.name.clone() };
        for seg in &lv.segments {
            let stripes = if seg.segtype == "mirror" { seg.mirrors.len() } else { seg.stripes.len() };
            want.push(vec![
                name.clone(),
                lv.id.clone(),
                seg.start_extent.to_string(),
                seg.extent_count.to_string(),
                stripes.to_string(),
                pe_ranges(vg, &scan, seg),
            ]);
        }
    }
    want.sort();
    ensure!(lvs == want, "stock lvs says\n{lvs:#?}\nwe read\n{want:#?}");
    rig.lvm(&["vgck", vg_name])?;
    for d in &rig.devs {
        rig.lvm(&["pvck", &d.dev])?;
    }
    Ok(vg.clone())
}

/// Our `pvs`/`vgs`/`lvs`/`*display` print what stock prints, byte for byte (stock with
/// activation off says `XX` where we say inactive `--`: compared with that one difference).
fn reports_match(rig: &Rig, args: &[&str]) -> Result<()> {
    let ours = rig.clvm(args)?;
    let stock = rig.lvm(args)?;
    let stock = stock.replace("-XX-", "----").replace("XX", "--");
    ensure!(ours == stock, "clvm {} printed\n{ours}\nstock printed\n{stock}", args.join(" "));
    Ok(())
}

#[test]
fn what_we_make_is_listed_by_stock_lvm2() -> Result<()> {
    let rig = Rig::new(3)?;
    let vg = unique("cvg");
    let (a, b, c) = (rig.dev(0).to_owned(), rig.dev(1).to_owned(), rig.dev(2).to_owned());
    rig.clvm(&["pvcreate", &a, &b])?;
    rig.clvm(&["vgcreate", &vg, &a, &b])?; // the third is added below
    let v = stock_agrees(&rig, &vg)?;
    ensure!(v.seqno == 1 && v.extent_size == 8192, "fresh VG: {v:?}");
    rig.clvm(&["vgextend", &vg, &c])?;
    rig.clvm(&["lvcreate", "-L", "8M", "-n", "lin", &vg])?;
    rig.clvm(&["lvcreate", "-L", "12M", "-i", "2", "-I", "32k", "-n", "str", &vg])?;
    rig.clvm(&["lvcreate", "-l", "2", "-m", "1", "--type", "mirror", "-n", "mir", &vg])?;
    rig.clvm(&["lvcreate", "-l", "10%FREE", &vg, &c])?; // lvol0, on the third PV only
    let v = stock_agrees(&rig, &vg)?;
    let lvol0 = v.lv("lvol0").context("lvol0")?;
    ensure!(lvol0.segments.iter().all(|s| s.stripes.iter().all(|a| a.name == "pv2")), "PV restriction: {lvol0:?}");
    rig.clvm(&["lvextend", "-L", "+8M", &format!("{vg}/lin")])?;
    rig.clvm(&["lvextend", "-l", "+2", &format!("{vg}/str")])?;
    rig.clvm(&["lvextend", "-l", "+1", &format!("{vg}/mir")])?;
    stock_agrees(&rig, &vg)?;
    for args in [
        vec!["pvs"],
        vec!["vgs", "-o", "+vg_uuid,vg_seqno", "--units", "s"],
        vec!["lvs", "-a", "-o", "+seg_pe_ranges,stripes,devices", "--segments"],
        vec!["lvs", "--reportformat", "json", "-o", "lv_name,lv_size,lv_attr"],
        vec!["vgdisplay", &vg],
        vec!["pvdisplay", "-c"],
    ] {
        reports_match(&rig, &args)?;
    }
    rig.clvm(&["lvrename", &vg, "lin", "linear"])?;
    rig.clvm(&["lvrename", &format!("{vg}/mir"), &format!("{vg}/mirror")])?;
    rig.clvm(&["lvreduce", "-f", "-L", "4M", &format!("{vg}/linear")])?;
    let v = stock_agrees(&rig, &vg)?;
    ensure!(
        v.lv("mirror_mimage_0").is_some() && v.lv("mirror_mlog").is_some(),
        "sub-LVs renamed: {:?}",
        v.logical_volumes
    );
    ensure!(v.lv("linear").map(|l| l.extent_count()) == Some(1), "reduced");
    rig.clvm(&["lvremove", "-f", &format!("{vg}/mirror"), &format!("{vg}/lvol0")])?;
    let v = stock_agrees(&rig, &vg)?;
    ensure!(v.logical_volumes.len() == 2, "left: {:?}", v.logical_volumes);
    // vgreduce of an empty PV, vgrename, and a stock change on top of ours.
    let empty = v
        .physical_volumes
        .iter()
        .enumerate()
        .find(|(k, p)| clvm::alloc::pv_free(&v, *k) == p.pe_count)
        .map(|(_, p)| p.id.clone());
    if let Some(id) = empty {
        let scan = rig.scan();
        let dev = scan.pvs[scan.pv_by_uuid(&id).context("PV")?].spec.clone();
        rig.clvm(&["vgreduce", &vg, &dev])?;
    }
    let renamed = unique("cvr");
    rig.clvm(&["vgrename", &vg, &renamed])?;
    stock_agrees(&rig, &renamed)?;
    rig.lvm(&["lvcreate", "-q", "-an", "-Zn", "-l", "1", "-n", "stock", &renamed])?;
    let v = stock_agrees(&rig, &renamed)?;
    ensure!(v.lv("stock").is_some(), "stock LV read by us");
    rig.clvm(&["vgremove", "-f", &renamed])?;
    ensure!(rig.scan().vgs.is_empty(), "VG gone");
    ensure!(rig.lvm(&["vgs", "--noheadings"])?.trim().is_empty(), "stock sees no VG");
    for d in &rig.devs {
        rig.clvm(&["pvremove", &d.dev])?;
    }
    ensure!(rig.scan().pvs.is_empty(), "labels wiped");
    Ok(())
}

#[test]
fn a_stock_vg_is_extended_by_us_and_read_back_by_stock() -> Result<()> {
    let rig = Rig::new(3)?;
    let vg = unique("svg");
    let (a, b, c) = (rig.dev(0).to_owned(), rig.dev(1).to_owned(), rig.dev(2).to_owned());
    rig.lvm(&["pvcreate", "-q", &a, &b])?;
    rig.lvm(&["vgcreate", "-q", &vg, &a, &b])?;
    rig.lvm(&["lvcreate", "-q", "-an", "-Zn", "-L", "8M", "-i", "2", "-n", "lv0", &vg])?;
    let before = stock_agrees(&rig, &vg)?;
    rig.clvm(&["lvextend", "-L", "16M", &format!("{vg}/lv0")])?;
    rig.clvm(&["lvcreate", "-l", "1", "-n", "ours", &vg])?;
    rig.clvm(&["vgextend", &vg, &c])?;
    let after = stock_agrees(&rig, &vg)?;
    ensure!(after.seqno == before.seqno + 3, "three commits: {} -> {}", before.seqno, after.seqno);
    ensure!(after.lv("lv0").map(|l| l.extent_count()) == Some(4), "lv0 extended");
    // Stock changes on top of ours.
    rig.lvm(&["lvextend", "-q", "-l", "+2", &format!("{vg}/ours")])?;
    let v = stock_agrees(&rig, &vg)?;
    ensure!(v.lv("ours").map(|l| l.extent_count()) == Some(3), "stock lvextend read by us");
    rig.lvm(&["vgremove", "-q", "-f", &vg])?;
    Ok(())
}

#[test]
fn backup_files_go_both_ways() -> Result<()> {
    let rig = Rig::new(2)?;
    let vg = unique("bvg");
    let (a, b) = (rig.dev(0).to_owned(), rig.dev(1).to_owned());
    rig.clvm(&["vgcreate", &vg, &a, &b])?;
    rig.clvm(&["lvcreate", "-L", "8M", "-i", "2", "-n", "lv0", &vg])?;
    let ours = rig.etc.join("ours.vg");
    rig.clvm(&["vgcfgbackup", "-f", ours.to_str().context("path")?, &vg])?;
    rig.clvm(&["lvremove", "-f", &format!("{vg}/lv0")])?;
    // Stock restores our file: lv0 is back.
    rig.lvm(&["vgcfgrestore", "-f", ours.to_str().context("path")?, &vg])?;
    let v = stock_agrees(&rig, &vg)?;
    ensure!(v.lv("lv0").is_some(), "stock vgcfgrestore of our backup brings lv0 back");
    // A stock backup, restored by us.
    let stock = rig.etc.join("stock.vg");
    rig.lvm(&["vgcfgbackup", "-f", stock.to_str().context("path")?, &vg])?;
    rig.lvm(&["lvremove", "-q", "-f", &format!("{vg}/lv0")])?;
    rig.clvm(&["vgcfgrestore", "-f", stock.to_str().context("path")?, &vg])?;
    let v = stock_agrees(&rig, &vg)?;
    ensure!(v.lv("lv0").is_some(), "our vgcfgrestore of a stock backup brings lv0 back");
    // Our own backup directory is written after every change, the archive before.
    ensure!(rig.etc.join("backup").join(&vg).exists(), "backup/{vg} written");
    let archived = std::fs::read_dir(rig.etc.join("archive"))?.count();
    ensure!(archived >= 2, "archives: {archived}");
    rig.clvm(&["vgremove", "-f", &vg])?;
    Ok(())
}

#[test]
fn refusals_are_one_line_and_exit_5() -> Result<()> {
    let rig = Rig::new(2)?;
    let vg = unique("rvg");
    let (a, b) = (rig.dev(0).to_owned(), rig.dev(1).to_owned());
    rig.clvm(&["vgcreate", &vg, &a])?;
    rig.clvm(&["lvcreate", "-L", "8M", "-n", "lv0", &vg])?;
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["vgcreate".into(), vg.clone(), b.clone()], "already exists"),
        (
            vec!["lvcreate".into(), "-L".into(), "1G".into(), "-n".into(), "big".into(), vg.clone()],
            "Insufficient free space",
        ),
        (vec!["lvcreate".into(), "-L".into(), "4M".into(), "-n".into(), "lv0".into(), vg.clone()], "already exists"),
        (vec!["lvcreate".into(), "-L".into(), "8M".into(), "-i".into(), "2".into(), vg.clone()], "stripes"),
        (vec!["pvremove".into(), a.clone()], "vgreduce"),
        (vec!["vgreduce".into(), vg.clone(), a.clone()], "still in use"),
        (vec!["pvcreate".into(), a.clone()], "without -ff"),
        (vec!["lvextend".into(), "-L".into(), "4M".into(), format!("{vg}/lv0")], "not larger"),
        (vec!["lvremove".into(), format!("{vg}/nope")], "Failed to find"),
        (vec!["vgremove".into(), vg.clone()], "-f"),
        (vec!["lvcreate".into(), "-l".into(), "1".into(), "-n".into(), "x_mimage_0".into(), vg.clone()], "reserved"),
        (vec!["vgs-nonexistent-vg-ck".into()], ""),
    ];
    for (args, needle) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = rig.clvm_out(&refs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if needle.is_empty() {
            ensure!(out.status.code() == Some(2) || out.status.code() == Some(3), "bad usage: {:?}", out.status);
            continue;
        }
        ensure!(out.status.code() == Some(5), "{args:?}: exit {:?}, stderr {stderr}", out.status);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        ensure!(lines.len() == 1, "{args:?}: one line expected, got {lines:?}");
        ensure!(
            lines[0].starts_with("clvm: ") && lines[0].contains(needle),
            "{args:?}: {:?} lacks {needle:?}",
            lines[0]
        );
    }
    // Nothing changed on disk through all those refusals.
    let v = stock_agrees(&rig, &vg)?;
    ensure!(v.seqno == 2, "seqno {}", v.seqno);
    rig.clvm(&["vgremove", "-f", &vg])?;
    Ok(())
}

/// Writes `seed`-derived bytes over the whole LV through the mapping layer, or checks them.
fn lv_pattern(rig: &Rig, vg: &str, lv: &str, seed: u8, check: bool) -> Result<()> {
    use blockdev::Device;
    let scan = rig.scan();
    let found = scan.vgs.get(vg).context("VG")?;
    let pvs = found
        .vg
        .physical_volumes
        .iter()
        .filter_map(|p| scan.pv_by_uuid(&p.id).map(|i| (p.name.clone(), scan.pvs[i].dev.clone())))
        .collect();
    let dev = clvm::map::LvDevice::new(found.vg.clone(), lv, pvs)?;
    let size = dev.size() as usize;
    let want: Vec<u8> = (0..size).map(|i| (i / 4096) as u8 ^ seed).collect();
    if check {
        let mut got = vec![0u8; size];
        dev.read_at(&mut got, 0)?;
        ensure!(got == want, "{vg}/{lv}: data differs after the move");
    } else {
        dev.write_at(&want, 0)?;
        dev.sync()?;
    }
    Ok(())
}

#[test]
fn pvmove_moves_the_data_and_stock_agrees() -> Result<()> {
    let rig = Rig::new(3)?;
    let vg = unique("mvg");
    let (a, b, c) = (rig.dev(0).to_owned(), rig.dev(1).to_owned(), rig.dev(2).to_owned());
    rig.clvm(&["vgcreate", &vg, &a, &b])?;
    rig.clvm(&["lvcreate", "-L", "12M", "-n", "lin", &vg, &a])?;
    rig.clvm(&["lvcreate", "-L", "8M", "-i", "2", "-n", "str", &vg])?;
    rig.clvm(&["vgextend", &vg, &c])?;
    lv_pattern(&rig, &vg, "lin", 0x11, false)?;
    lv_pattern(&rig, &vg, "str", 0x22, false)?;
    let out = rig.clvm(&["pvmove", &a])?;
    ensure!(out.contains("Moved: 100.00%"), "progress: {out}");
    let v = stock_agrees(&rig, &vg)?;
    let src_pv = v
        .physical_volumes
        .iter()
        .position(|p| rig.scan().pv_by_device(&a).is_some_and(|i| rig.scan().pvs[i].uuid() == p.id))
        .context("source PV")?;
    ensure!(clvm::alloc::pv_free(&v, src_pv) == v.physical_volumes[src_pv].pe_count, "the source PV is empty");
    lv_pattern(&rig, &vg, "lin", 0x11, true)?;
    lv_pattern(&rig, &vg, "str", 0x22, true)?;
    // Now it can leave the VG.
    rig.clvm(&["vgreduce", &vg, &a])?;
    stock_agrees(&rig, &vg)?;
    let out = rig.clvm_out(&["pvmove", &a]);
    ensure!(out.status.code() == Some(5), "pvmove of a PV outside any VG is refused");
    rig.clvm(&["vgremove", "-f", &vg])?;
    Ok(())
}

#[test]
fn classic_names_run_their_command() -> Result<()> {
    let rig = Rig::new(1)?;
    let links = rig.etc.join("sbin");
    std::fs::create_dir_all(&links)?;
    for name in ["vgcreate", "lvcreate", "lvs", "vgremove"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_clvm"), links.join(name))?;
    }
    let vg = unique("nvg");
    let run = |args: &[&str]| -> Result<String> {
        let out = Command::new(links.join(args[0]))
            .args(&args[1..])
            .args(["--devices", rig.dev(0)])
            .env("LVM_SYSTEM_DIR", &rig.etc)
            .output()?;
        ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run(&["vgcreate", &vg, rig.dev(0)])?;
    run(&["lvcreate", "-L", "4M", "-n", "x", &vg])?;
    let lvs = run(&["lvs", "--noheadings", "-o", "lv_name,vg_name", &vg])?;
    ensure!(lvs.split_whitespace().collect::<Vec<_>>() == ["x", vg.as_str()], "lvs through its link: {lvs:?}");
    run(&["vgremove", "-f", &vg])?;
    Ok(())
}
