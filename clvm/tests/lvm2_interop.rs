//! Interop with Debian's lvm2 (2.03) at the metadata level, on loop devices over sparse files.
//!
//! (a) stock pvcreate + vgcreate + `lvcreate -an -Zn -L 8M -i 2`: our decoders read the label,
//!     the pv_header, the mda_header and the committed text from the raw devices and find the
//!     VG, LVs and segments that stock `vgs` / `lvs` report;
//! (b) our encoder writes a new text (two more LVs, seqno + 1) into the circular buffer of both
//!     PVs: stock `vgs`, `lvs -o +seg_pe_ranges,stripes`, `vgck` and `pvck` accept it, and a stock
//!     change on top of it is read back by us;
//! (c) a `vgcfgbackup` file parses, re-serialises to the same tree, and the re-serialised file
//!     is accepted by `vgcfgrestore`.
//!
//! lvm2 cannot activate here (no device-mapper), so every command runs with activation off.
//! The tests need root (losetup) and lvm2; without them they fail, saying what is missing.

mod common;

use anyhow::{bail, ensure, Context, Result};
use clvm::label::{format_uuid, DiskLocn, Label, LABEL_SCAN_SIZE};
use clvm::mda::{MdaHeader, MDA_HEADER_SIZE};
use clvm::text::{self, Node, Section, Value};
use clvm::vg::{Area, Extra, LogicalVolume, Segment, VolumeGroup};
use common::{require_lvm2, unique, LoopDev, CMD_TIMEOUT_S, DEV_SIZE, LVM_CONFIG};
use std::path::PathBuf;
use std::process::Command;

/// Runs an lvm2 command restricted to `devs`; its stdout, or an error with its output.
fn lvm(devs: &[LoopDev], args: &[&str]) -> Result<String> {
    let list: Vec<&str> = devs.iter().map(|d| d.dev.as_str()).collect();
    let out = Command::new("timeout")
        .arg(CMD_TIMEOUT_S)
        .args(args)
        .args(["--config", LVM_CONFIG, "--devices", &list.join(",")])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{} failed ({}):\n{stdout}\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(stdout)
}

/// A report as rows of fields (`--noheadings --separator |`).
fn report(devs: &[LoopDev], args: &[&str]) -> Result<Vec<Vec<String>>> {
    let mut full = args.to_vec();
    full.extend(["--noheadings", "--separator", "|", "--units", "s", "--nosuffix"]);
    let out = lvm(devs, &full)?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('|').map(|f| f.trim().to_owned()).collect())
        .collect())
}

/// Two PVs and a VG with a 2-way striped LV, all made by stock lvm2.
struct StockVg {
    devs: Vec<LoopDev>,
    vg: String,
}

impl StockVg {
    fn new() -> Result<StockVg> {
        StockVg::with_pvcreate_args(&[])
    }

    /// As [`StockVg::new`], with extra pvcreate flags (a small metadata area, say).
    fn with_pvcreate_args(extra: &[&str]) -> Result<StockVg> {
        require_lvm2();
        let devs = vec![LoopDev::new()?, LoopDev::new()?];
        let vg = unique("clvmit");
        let (a, b) = (devs[0].dev.clone(), devs[1].dev.clone());
        let mut pvcreate = vec!["pvcreate", "-q"];
        pvcreate.extend(extra);
        pvcreate.extend([a.as_str(), b.as_str()]);
        lvm(&devs, &pvcreate)?;
        lvm(&devs, &["vgcreate", "-q", &vg, &a, &b])?;
        lvm(&devs, &["lvcreate", "-q", "-an", "-Zn", "-L", "8M", "-i", "2", "-n", "lv0", &vg])?;
        Ok(StockVg { devs, vg })
    }
}

impl Drop for StockVg {
    fn drop(&mut self) {
        let _ = lvm(&self.devs, &["vgremove", "-q", "-f", &self.vg]);
    }
}

/// What our decoders read from one PV.
struct OnDisk {
    label: Label,
    /// (area on the device, its header, its bytes)
    mdas: Vec<(DiskLocn, MdaHeader, Vec<u8>)>,
    root: Section,
    vg: VolumeGroup,
}

fn read_pv(dev: &LoopDev) -> Result<OnDisk> {
    let label = Label::find(&dev.read(0, LABEL_SCAN_SIZE)?).with_context(|| format!("label of {}", dev.dev))?;
    ensure!(label.pv_header.device_size == DEV_SIZE, "pv_header device size {}", label.pv_header.device_size);
    let mut mdas = Vec::new();
    let mut best: Option<(u64, Section, VolumeGroup)> = None;
    for &locn in &label.pv_header.metadata_areas {
        let area = dev.read(locn.offset, usize::try_from(locn.size)?)?;
        let hdr = MdaHeader::decode(&area).with_context(|| format!("mda_header of {}", dev.dev))?;
        ensure!(hdr.start == locn.offset && hdr.size == locn.size, "mda_header does not describe its area: {hdr:?}");
        let committed = hdr.committed().context("metadata area holds no committed text")?;
        let raw = hdr.read_text(&area, committed)?;
        let body = raw.strip_suffix(&[0]).context("text not NUL-terminated")?;
        let root = text::parse(body)?;
        let vg = VolumeGroup::from_root(&root)?;
        // The highest seqno wins.
        if best.as_ref().is_none_or(|(s, _, _)| vg.seqno > *s) {
            best = Some((vg.seqno, root, vg));
        }
        mdas.push((locn, hdr, area));
    }
    let (_, root, vg) = best.context("no metadata area")?;
    Ok(OnDisk { label, mdas, root, vg })
}

/// The device a VG's PV name stands for, by UUID from the labels (not the device hint).
fn device_of<'a>(vg: &VolumeGroup, pv_name: &str, devs: &'a [LoopDev], disks: &[OnDisk]) -> Result<&'a str> {
    let pv = vg.pv(pv_name).with_context(|| format!("no {pv_name} in VG"))?;
    let i = disks
        .iter()
        .position(|d| d.label.pv_header.uuid_string() == pv.id)
        .with_context(|| format!("no label with UUID {}", pv.id))?;
    Ok(&devs[i].dev)
}

/// `seg_pe_ranges` as lvs prints it, computed from our model.
fn pe_ranges(vg: &VolumeGroup, seg: &Segment, devs: &[LoopDev], disks: &[OnDisk]) -> Result<String> {
    let per = seg.extent_count / seg.stripes.len().max(1) as u64;
    let mut parts = Vec::new();
    for a in &seg.stripes {
        parts.push(format!("{}:{}-{}", device_of(vg, &a.name, devs, disks)?, a.start, a.start + per - 1));
    }
    Ok(parts.join(" "))
}

/// Checks that stock `vgs` and `lvs` report what our model of the VG says.
fn stock_agrees(devs: &[LoopDev], vg: &VolumeGroup, disks: &[OnDisk]) -> Result<()> {
    let vgs = report(devs, &["vgs", "-o", "vg_name,vg_uuid,vg_seqno,vg_extent_size,pv_count,lv_count", &vg.name])?;
    let want = [
        vg.name.clone(),
        vg.id.clone(),
        vg.seqno.to_string(),
        vg.extent_size.to_string(),
        vg.physical_volumes.len().to_string(),
        vg.logical_volumes.len().to_string(),
    ];
    ensure!(vgs == [want.to_vec()], "vgs says {vgs:?}, we read {want:?}");
    let mut lvs = report(
        devs,
        &["lvs", "-o", "lv_name,lv_uuid,seg_start_pe,seg_size_pe,stripes,stripe_size,seg_pe_ranges", &vg.name],
    )?;
    let mut ours = Vec::new();
    for lv in &vg.logical_volumes {
        for seg in &lv.segments {
            ours.push(vec![
                lv.name.clone(),
                lv.id.clone(),
                seg.start_extent.to_string(),
                seg.extent_count.to_string(),
                seg.stripes.len().to_string(),
                seg.stripe_size.unwrap_or(0).to_string(),
                pe_ranges(vg, seg, devs, disks)?,
            ]);
        }
    }
    lvs.sort();
    ours.sort();
    ensure!(lvs == ours, "lvs says\n{lvs:?}\nwe read\n{ours:?}");
    Ok(())
}

fn read_all(devs: &[LoopDev]) -> Result<Vec<OnDisk>> {
    devs.iter().map(read_pv).collect()
}

#[test]
fn a_stock_vg_is_read_from_raw_devices() -> Result<()> {
    let s = StockVg::new()?;
    let disks = read_all(&s.devs)?;
    for d in &disks {
        ensure!(d.label.sector == 1, "label in sector {}", d.label.sector);
        ensure!(d.mdas.len() == 1 && d.mdas[0].2.len() > MDA_HEADER_SIZE, "one metadata area");
        ensure!(d.vg.seqno == disks[0].vg.seqno && d.vg == disks[0].vg, "both PVs hold the same VG");
    }
    // Byte-exact: our encoders reproduce the label and mda_header stock lvm2 wrote.
    for (dev, d) in s.devs.iter().zip(&disks) {
        let raw = dev.read(d.label.sector * 512, 512)?;
        ensure!(d.label.encode()?[..] == raw[..], "label re-encodes byte-exact on {}", dev.dev);
        let (_, hdr, area) = &d.mdas[0];
        ensure!(hdr.encode()?[..] == area[..MDA_HEADER_SIZE], "mda_header re-encodes byte-exact on {}", dev.dev);
    }
    let vg = &disks[0].vg;
    ensure!(vg.name == s.vg, "VG name {}", vg.name);
    let lv = vg.lv("lv0").context("lv0")?;
    ensure!(lv.segments.len() == 1, "one segment");
    let seg = &lv.segments[0];
    ensure!(seg.segtype == "striped" && seg.stripe_count == Some(2) && seg.extent_count == 2, "{seg:?}");
    let mut uuids: Vec<String> = disks.iter().map(|d| d.label.pv_header.uuid_string()).collect();
    let mut pv_ids: Vec<String> = vg.physical_volumes.iter().map(|p| p.id.clone()).collect();
    uuids.sort();
    pv_ids.sort();
    ensure!(uuids == pv_ids, "labels {uuids:?} vs VG PVs {pv_ids:?}");
    stock_agrees(&s.devs, vg, &disks)?;
    // The model loses nothing: the VG section comes back identical.
    let section = disks[0].root.sections().next().context("VG section")?;
    ensure!(&vg.to_section() == section, "VG model round trip changed the tree");
    Ok(())
}

fn new_lv(name: &str, segments: Vec<Segment>) -> LogicalVolume {
    let raw = format!("{:0>32}", format!("clvm{name}"));
    LogicalVolume {
        name: name.to_owned(),
        id: format_uuid(&raw.as_bytes()[raw.len() - 32..]),
        status: vec!["READ".into(), "WRITE".into(), "VISIBLE".into()],
        flags: vec![],
        creation_time: Some(1_700_000_000),
        creation_host: Some("clvm-test".into()),
        segments,
        extra: Extra::default(),
    }
}

/// Commits `root` as LVM2 does: the text into every metadata area, then the precommit
/// headers, then the commit headers.
fn commit(devs: &[LoopDev], disks: &[OnDisk], root: &Section) -> Result<()> {
    let text = text::write(root);
    let mut planned = Vec::new();
    for (dev, d) in devs.iter().zip(disks) {
        for (locn, hdr, _) in &d.mdas {
            let p = hdr.plan_write(text.as_bytes())?;
            for (off, bytes) in &p.writes {
                dev.write(locn.offset + off, bytes)?;
            }
            planned.push((dev, locn.offset, hdr, p.locn));
        }
    }
    for (dev, at, hdr, new) in &planned {
        dev.write(*at, &hdr.precommit(*new).encode()?)?;
    }
    for (dev, at, hdr, new) in &planned {
        dev.write(*at, &hdr.commit(*new).encode()?)?;
    }
    Ok(())
}

#[test]
fn b_our_commit_is_listed_by_stock_lvm2() -> Result<()> {
    let s = StockVg::new()?;
    let disks = read_all(&s.devs)?;
    let mut vg = disks[0].vg.clone();
    let old_seqno = vg.seqno;
    vg.seqno += 1;
    let area = |pv: &str, start| Area { name: pv.to_owned(), start };
    vg.logical_volumes
        .push(new_lv("lv1", vec![Segment::striped(0, 4, Some(128), vec![area("pv0", 1), area("pv1", 1)])]));
    vg.logical_volumes.push(new_lv(
        "lv2",
        vec![Segment::striped(0, 2, None, vec![area("pv1", 3)]), Segment::striped(2, 1, None, vec![area("pv0", 3)])],
    ));
    let mut root = with_vg(&disks[0].root, &vg);
    root.set("description", Value::Str("Write from the clvm interop test.".into()));
    commit(&s.devs, &disks, &root)?;

    // We read back what we wrote, at the place LVM2 would have put it.
    let ours = read_all(&s.devs)?;
    ensure!(ours[0].vg == vg, "our own commit reads back");
    for (before, after) in disks.iter().zip(&ours) {
        let old = before.mdas[0].1.committed().context("old text")?;
        let new = after.mdas[0].1.committed().context("new text")?;
        ensure!(new.offset == (old.offset + old.size).next_multiple_of(512), "placed after the old text: {new:?}");
        ensure!(after.mdas[0].1.precommitted().is_none(), "no precommitted slot after commit");
    }
    stock_agrees(&s.devs, &vg, &ours)?;
    let listed = lvm(&s.devs, &["lvs", "-o", "+seg_pe_ranges,stripes", &vg.name])?;
    ensure!(listed.contains("lv1") && listed.contains("lv2"), "lvs -o +seg_pe_ranges,stripes:\n{listed}");
    let seqno = report(&s.devs, &["vgs", "-o", "vg_seqno", &vg.name])?;
    ensure!(seqno == [[(old_seqno + 1).to_string()]], "seqno {seqno:?}");
    lvm(&s.devs, &["vgck", &vg.name])?;
    for d in &s.devs {
        lvm(&s.devs, &["pvck", &d.dev])?;
    }

    // A stock change on top of ours, read back by us.
    lvm(&s.devs, &["lvcreate", "-q", "-an", "-Zn", "-L", "4M", "-n", "lv3", &vg.name])?;
    let after = read_all(&s.devs)?;
    ensure!(after[0].vg.seqno == old_seqno + 2, "stock commit has seqno {}", after[0].vg.seqno);
    for name in ["lv0", "lv1", "lv2", "lv3"] {
        ensure!(after[0].vg.lv(name).is_some(), "{name} listed after the stock change");
    }
    ensure!(after[0].vg.lv("lv2") == vg.lv("lv2"), "stock lvm2 kept our lv2 as we wrote it");
    stock_agrees(&s.devs, &after[0].vg, &after)?;
    Ok(())
}

#[test]
fn c_vgcfgbackup_files_are_exchangeable() -> Result<()> {
    let s = StockVg::new()?;
    let dir = std::env::temp_dir();
    let stock_file = dir.join(unique("clvm-backup-") + ".vg");
    let our_file = dir.join(unique("clvm-backup-ours-") + ".vg");
    struct Rm(Vec<PathBuf>);
    impl Drop for Rm {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _rm = Rm(vec![stock_file.clone(), our_file.clone()]);
    let path = stock_file.to_str().context("temp path is UTF-8")?;
    lvm(&s.devs, &["vgcfgbackup", "-q", "-f", path, &s.vg])?;
    let stock = std::fs::read(&stock_file)?;
    let tree = text::parse(&stock)?;
    ensure!(tree.get("contents") == Some(&Value::Str("Text Format Volume Group".into())), "contents key");
    let vg = VolumeGroup::from_root(&tree)?;
    ensure!(vg.name == s.vg && vg.lv("lv0").is_some(), "backup describes the VG");
    let section = tree.section(&s.vg).context("VG section")?;
    ensure!(&vg.to_section() == section, "VG model round trip of the backup changed the tree");

    let ours = text::write(&tree);
    ensure!(text::parse(ours.as_bytes())? == tree, "our serialisation parses into the same tree");
    ensure!(ours.contains("\n\tseqno = ") && ours.contains("\n\t\tpv0 {\n"), "LVM2's tab layout");
    std::fs::write(&our_file, &ours)?;
    let seqno: u64 = report(&s.devs, &["vgs", "-o", "vg_seqno", &s.vg])?[0][0].parse()?;
    let our_path = our_file.to_str().context("temp path is UTF-8")?;
    lvm(&s.devs, &["vgcfgrestore", "-q", "-f", our_path, &s.vg])?;
    let after = report(&s.devs, &["vgs", "-o", "vg_seqno", &s.vg])?;
    ensure!(after == [[(seqno + 1).to_string()]], "vgcfgrestore committed seqno {after:?}");
    let disks = read_all(&s.devs)?;
    ensure!(disks[0].vg.logical_volumes == vg.logical_volumes, "restored LVs equal the backup's");
    lvm(&s.devs, &["vgck", &s.vg])?;
    Ok(())
}

/// Replaces the VG section of `root` with `vg`'s.
fn with_vg(root: &Section, vg: &VolumeGroup) -> Section {
    let mut root = root.clone();
    for n in &mut root.nodes {
        if let Node::Section(sec) = n {
            if sec.name == vg.name {
                *sec = vg.to_section();
            }
        }
    }
    root
}

/// In a 32 KiB metadata area our commits come round the circular buffer: a text that wraps past
/// the end of the area (continuing after the header) is read by stock lvm2, and vgck is clean.
#[test]
fn d_our_wrapped_texts_are_read_by_stock_lvm2() -> Result<()> {
    let s = StockVg::with_pvcreate_args(&["--metadatasize", "32k", "--dataalignment", "4k"])?;
    let mut disks = read_all(&s.devs)?;
    ensure!(disks[0].mdas[0].1.size < 64 << 10, "small area: {:?}", disks[0].mdas[0].1);
    let mut wrapped = 0;
    let mut next_pe = 1;
    for i in 0..60 {
        let mut vg = disks[0].vg.clone();
        vg.seqno += 1;
        let pv = if i % 2 == 0 { "pv0" } else { "pv1" };
        let area = Area { name: pv.to_owned(), start: next_pe };
        if i % 2 == 1 {
            next_pe += 1;
        }
        vg.logical_volumes.push(new_lv(&format!("w{i}"), vec![Segment::striped(0, 1, None, vec![area])]));
        // Keep the text a few KiB: drop the oldest of our LVs once there are eight.
        if vg.logical_volumes.len() > 8 {
            vg.logical_volumes.remove(1);
        }
        commit(&s.devs, &disks, &with_vg(&disks[0].root, &vg))?;
        disks = read_all(&s.devs)?;
        ensure!(disks[0].vg == vg, "commit {i} reads back");
        let (hdr, new) = (&disks[0].mdas[0].1, disks[0].mdas[0].1.committed().context("committed")?);
        if new.offset + new.size > hdr.size {
            wrapped += 1;
            stock_agrees(&s.devs, &vg, &disks)?;
            lvm(&s.devs, &["vgck", &vg.name])?;
            if wrapped == 2 {
                break;
            }
        }
        if next_pe >= 14 {
            next_pe = 1;
        }
    }
    ensure!(wrapped > 0, "no text wrapped round the metadata area");
    // A stock commit after a wrapped one.
    lvm(&s.devs, &["lvcreate", "-q", "-an", "-Zn", "-l", "1", "-n", "stock", &s.vg])?;
    let after = read_all(&s.devs)?;
    ensure!(after[0].vg.lv("stock").is_some(), "stock LV listed");
    stock_agrees(&s.devs, &after[0].vg, &after)?;
    Ok(())
}
