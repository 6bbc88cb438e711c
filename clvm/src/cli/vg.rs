//! vgcreate, vgextend, vgreduce, vgremove, vgrename, vgchange, vgck, vgcfgbackup, vgcfgrestore.

use super::env::{failed, parse_size, Env};
use super::pv::finish_many;
use super::tx::{self, Tx};
use crate::alloc;
use crate::disk::{self, Pv, PvcreateOptions};
use crate::label::format_uuid;
use crate::ops::{self, NewPv};
use crate::scan::Scan;
use crate::text;
use crate::vg::VolumeGroup;

/// What a PV brings to a VG.
pub(super) fn new_pv(pv: &Pv) -> NewPv {
    let data_end = pv.mdas.iter().map(|m| m.locn.offset).filter(|&o| o > pv.pe_start()).min().unwrap_or(pv.dev_size());
    NewPv { id: pv.uuid(), device: pv.spec.clone(), dev_size: pv.dev_size(), pe_start: pv.pe_start(), data_end }
}

/// The PVs for devices named on the command line: existing orphan PVs, or devices made PVs
/// now (as LVM2 2.03's vgcreate and vgextend do).
fn orphans_for(env: &Env, tx: &mut Tx<'_>, specs: &[String]) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for spec in specs {
        let i = match tx.scan.pv_by_device(spec) {
            Some(i) => {
                if let Some(f) = tx.scan.vg_of(i) {
                    return Err(failed(format!("Physical volume '{spec}' is already in volume group '{}'", f.vg.name)));
                }
                i
            }
            None => {
                let dev = env.open(spec)?;
                let pv = disk::pvcreate(spec, dev, &PvcreateOptions::default())
                    .map_err(|e| failed(format!("Cannot create physical volume {e}")))?;
                env.say(format!("Physical volume \"{spec}\" successfully created."));
                tx.scan.pvs.push(pv);
                tx.scan.pvs.len() - 1
            }
        };
        if out.contains(&i) {
            return Err(failed(format!("Physical volume {spec} is listed twice")));
        }
        out.push(i);
    }
    Ok(out)
}

/// `vgcreate [-s SIZE] [-c y|n] VG DEV...`
#[derive(Debug, clap::Args)]
pub struct Vgcreate {
    #[arg(value_name = "VG")]
    pub vg: String,
    #[arg(value_name = "DEV", required = true)]
    pub devices: Vec<String>,
    /// Physical extent size (default 4 MiB; a power of two).
    #[arg(short = 's', long = "physicalextentsize", value_name = "SIZE")]
    pub extent_size: Option<String>,
    /// Clustered: changes go through clvmd under DLM locks on every node.
    #[arg(short = 'c', long = "clustered", value_name = "y|n")]
    pub clustered: Option<String>,
    /// Maximum LVs (0 = no limit).
    #[arg(short = 'l', long = "maxlogicalvolumes", value_name = "N", default_value_t = 0)]
    pub max_lv: u64,
    /// Maximum PVs (0 = no limit).
    #[arg(short = 'p', long = "maxphysicalvolumes", value_name = "N", default_value_t = 0)]
    pub max_pv: u64,
}

pub(super) fn yes_no(flag: &str, v: &str) -> anyhow::Result<bool> {
    match v {
        "y" | "Y" | "yes" => Ok(true),
        "n" | "N" | "no" => Ok(false),
        _ => Err(daemon::Failure::new(super::env::EXIT_USAGE, format!("{flag}: expected y or n, not {v:?}")).into()),
    }
}

pub fn vgcreate(env: &Env, a: Vgcreate) -> anyhow::Result<()> {
    let clvmd = if env.common.nolocking {
        None
    } else {
        crate::lock::ClvmdSession::connect(&env.common.clvmd_socket).map_err(|e| failed(e.to_string()))?
    };
    // As LVM2 with clvmd: new VGs are clustered by default while clvmd runs.
    let clustered = match &a.clustered {
        Some(v) => yes_no("-c", v)?,
        None => clvmd.is_some(),
    };
    drop(clvmd);
    let extent_size = match &a.extent_size {
        Some(s) => parse_size(s, 'm').map_err(failed)? / 512,
        None => ops::DEFAULT_EXTENT_SIZE,
    };
    ops::check_name("Volume group", &a.vg).map_err(|e| failed(e.to_string()))?;
    let mut tx = Tx::begin(env, true, &[a.vg.as_str()], true, &a.devices)?;
    if tx.scan.vgs.contains_key(&a.vg) {
        return Err(failed(format!("A volume group called {} already exists.", a.vg)));
    }
    if clustered && !env.common.nolocking && tx.clvmd_mode().is_none() {
        return Err(failed(format!(
            "Cannot create clustered volume group {}: clvmd is not running (start clvmd, or use --nolocking)",
            a.vg
        )));
    }
    let idx = orphans_for(env, &mut tx, &a.devices)?;
    let pvs: Vec<NewPv> = idx.iter().map(|&i| new_pv(&tx.scan.pvs[i])).collect();
    let mut vg = ops::vgcreate(&a.vg, format_uuid(&disk::random_id()), extent_size, clustered, &pvs)
        .map_err(|e| failed(e.to_string()))?;
    vg.max_lv = a.max_lv;
    vg.max_pv = a.max_pv;
    tx.write(&vg)?;
    tx.backup(&vg)?;
    env.say(format!("Volume group \"{}\" successfully created", a.vg));
    Ok(())
}

/// `vgextend VG DEV...`
#[derive(Debug, clap::Args)]
pub struct Vgextend {
    #[arg(value_name = "VG")]
    pub vg: String,
    #[arg(value_name = "DEV", required = true)]
    pub devices: Vec<String>,
}

pub fn vgextend(env: &Env, a: Vgextend) -> anyhow::Result<()> {
    let mut tx = Tx::begin(env, true, &[a.vg.as_str()], true, &a.devices)?;
    let old = tx.vg_for_change(&a.vg)?;
    let idx = orphans_for(env, &mut tx, &a.devices)?;
    let mut vg = old.vg.clone();
    for &i in &idx {
        ops::vgextend(&mut vg, &new_pv(&tx.scan.pvs[i])).map_err(|e| failed(e.to_string()))?;
    }
    if vg.max_pv != 0 && vg.physical_volumes.len() as u64 > vg.max_pv {
        return Err(failed(format!("Volume group {} allows at most {} physical volumes", a.vg, vg.max_pv)));
    }
    tx.commit(&old, vg, &[])?;
    env.say(format!("Volume group \"{}\" successfully extended", a.vg));
    Ok(())
}

/// `vgreduce VG DEV... | vgreduce -a VG | vgreduce --removemissing VG`
#[derive(Debug, clap::Args)]
pub struct Vgreduce {
    #[arg(value_name = "VG")]
    pub vg: String,
    #[arg(value_name = "DEV")]
    pub devices: Vec<String>,
    /// Remove every empty PV.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Remove PVs that are missing (only when no LV uses them).
    #[arg(long = "removemissing")]
    pub removemissing: bool,
}

pub fn vgreduce(env: &Env, a: Vgreduce) -> anyhow::Result<()> {
    let mut tx = Tx::begin(env, true, &[a.vg.as_str()], true, &a.devices)?;
    if a.removemissing {
        let old = tx.vg(&a.vg)?.clone();
        let mut vg = old.vg.clone();
        for id in &old.missing {
            let dev =
                vg.physical_volumes.iter().find(|p| &p.id == id).and_then(|p| p.device.clone()).unwrap_or_default();
            ops::vgreduce(&mut vg, id, &dev).map_err(|e| failed(format!("{e} (missing PV {id})")))?;
        }
        if old.missing.is_empty() {
            env.say(format!("Volume group \"{}\" is already consistent.", a.vg));
            return Ok(());
        }
        let found = crate::scan::FoundVg { missing: vec![], ..old.clone() };
        tx.commit(&found, vg, &[])?;
        env.say(format!("Wrote out consistent volume group {}.", a.vg));
        return Ok(());
    }
    let old = tx.vg_for_change(&a.vg)?;
    let mut vg = old.vg.clone();
    let mut dropped = Vec::new();
    let targets: Vec<(usize, String)> = if a.all {
        old.pvs
            .iter()
            .copied()
            .filter(|&i| {
                let id = tx.scan.pvs[i].uuid();
                vg.physical_volumes
                    .iter()
                    .position(|p| p.id == id)
                    .is_some_and(|k| alloc::pv_free(&vg, k) == vg.physical_volumes[k].pe_count)
            })
            .map(|i| (i, tx.scan.pvs[i].spec.clone()))
            .collect()
    } else {
        if a.devices.is_empty() {
            return Err(daemon::Failure::new(
                super::env::EXIT_USAGE,
                "Please give the physical volumes to remove, or -a",
            )
            .into());
        }
        a.devices
            .iter()
            .map(|d| {
                tx.scan
                    .pv_by_device(d)
                    .map(|i| (i, d.clone()))
                    .ok_or_else(|| failed(format!("Failed to find physical volume \"{d}\".")))
            })
            .collect::<anyhow::Result<_>>()?
    };
    for (i, spec) in &targets {
        if vg.physical_volumes.len() == 1 && a.all {
            break;
        }
        ops::vgreduce(&mut vg, &tx.scan.pvs[*i].uuid(), spec).map_err(|e| failed(e.to_string()))?;
        dropped.push(*i);
    }
    tx.commit(&old, vg, &dropped)?;
    for (i, spec) in &targets {
        if dropped.contains(i) {
            env.say(format!("Removed \"{spec}\" from volume group \"{}\"", a.vg));
        }
    }
    Ok(())
}

/// `vgremove [-f] VG...`
#[derive(Debug, clap::Args)]
pub struct Vgremove {
    #[arg(value_name = "VG", required = true)]
    pub vgs: Vec<String>,
    /// Remove the VG's logical volumes too, without asking.
    #[arg(short = 'f', long = "force", action = clap::ArgAction::Count)]
    pub force: u8,
}

pub fn vgremove(env: &Env, a: Vgremove) -> anyhow::Result<()> {
    let names: Vec<&str> = a.vgs.iter().map(String::as_str).collect();
    let mut tx = Tx::begin(env, true, &names, true, &[])?;
    let mut errors = Vec::new();
    for name in &a.vgs {
        let old = match tx.vg_for_change(name) {
            Ok(o) => o,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let visible = old.vg.logical_volumes.iter().filter(|l| l.status.iter().any(|s| s == "VISIBLE")).count();
        if visible > 0
            && a.force == 0
            && !env.confirm(&format!(
                "Do you really want to remove volume group \"{name}\" containing {visible} logical volumes?"
            ))
        {
            errors.push(format!(
                "Volume group \"{name}\" still contains {visible} logical volume(s): use -f to remove them with it"
            ));
            continue;
        }
        let mut busy = None;
        for lv in old.vg.logical_volumes.iter().filter(|l| l.status.iter().any(|s| s == "VISIBLE")) {
            if super::activate::active_record(env, name, &lv.name).is_some() {
                if a.force == 0 {
                    busy = Some(format!(
                        "Logical volume {name}/{} is active: deactivate it first (vgchange -an {name}), or use -f",
                        lv.name
                    ));
                    break;
                }
                if let Err(e) = super::activate::deactivate(env, name, &lv.name, false) {
                    busy = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(b) = busy {
            errors.push(b);
            continue;
        }
        for lv in old.vg.logical_volumes.iter().filter(|l| l.status.iter().any(|s| s == "VISIBLE")) {
            env.say(format!("Logical volume \"{}\" successfully removed.", lv.name));
        }
        for &i in &old.pvs {
            if let Err(e) = tx::orphan(&mut tx.scan.pvs[i]) {
                errors.push(e.to_string());
            }
        }
        env.say(format!("Volume group \"{name}\" successfully removed"));
    }
    finish_many(errors)
}

/// `vgrename OLD NEW`
#[derive(Debug, clap::Args)]
pub struct Vgrename {
    #[arg(value_name = "OLD")]
    pub old: String,
    #[arg(value_name = "NEW")]
    pub new: String,
}

pub fn vgrename(env: &Env, a: Vgrename) -> anyhow::Result<()> {
    ops::check_name("Volume group", &a.new).map_err(|e| failed(e.to_string()))?;
    let mut tx = Tx::begin(env, true, &[a.old.as_str(), a.new.as_str()], true, &[])?;
    // The old name may be the VG's UUID, as LVM2 allows.
    let old_name = if tx.scan.vgs.contains_key(&a.old) {
        a.old.clone()
    } else {
        tx.scan.vgs.values().find(|f| f.vg.id == a.old).map(|f| f.vg.name.clone()).unwrap_or(a.old.clone())
    };
    let old = tx.vg_for_change(&old_name)?;
    for lv in &old.vg.logical_volumes {
        super::activate::refuse_if_active(env, &old_name, &lv.name, "renaming its volume group")?;
    }
    if tx.scan.vgs.contains_key(&a.new) {
        return Err(failed(format!("New volume group \"{}\" already exists", a.new)));
    }
    let mut vg = old.vg.clone();
    vg.name = a.new.clone();
    tx.commit(&old, vg, &[])?;
    env.say(format!("Volume group \"{old_name}\" successfully renamed to \"{}\"", a.new));
    Ok(())
}

/// `vgchange [-a y|n|ey|sy|ly] [-c y|n] [-x y|n] VG...`
#[derive(Debug, clap::Args)]
pub struct Vgchange {
    #[arg(value_name = "VG")]
    pub vgs: Vec<String>,
    /// Activate (y, ey, sy, ly) or deactivate (n) every LV of the VGs.
    #[arg(short = 'a', long = "activate", value_name = "y|n|ey|sy|ly")]
    pub activate: Option<String>,
    /// Clustered or not.
    #[arg(short = 'c', long = "clustered", value_name = "y|n")]
    pub clustered: Option<String>,
    /// Resizeable (PVs may be added and removed) or not.
    #[arg(short = 'x', long = "resizeable", value_name = "y|n")]
    pub resizeable: Option<String>,
}

pub fn vgchange(env: &Env, a: Vgchange) -> anyhow::Result<()> {
    if a.clustered.is_none() && a.resizeable.is_none() && a.activate.is_none() {
        return Err(
            daemon::Failure::new(super::env::EXIT_USAGE, "Need one or more command options: -a, -c or -x").into()
        );
    }
    let mut tx = Tx::begin(env, false, &[], true, &[])?;
    let names: Vec<String> = if a.vgs.is_empty() { tx.scan.vgs.keys().cloned().collect() } else { a.vgs.clone() };
    drop(tx);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    if let Some(act) = &a.activate {
        let mode = super::activate::parse_activate(act)?;
        let tx = Tx::begin(env, false, &refs, false, &[])?;
        for name in &names {
            super::activate::vgchange_activate(env, &tx, name, mode)?;
        }
        if a.clustered.is_none() && a.resizeable.is_none() {
            return Ok(());
        }
    }
    tx = Tx::begin(env, false, &refs, true, &[])?;
    for name in &names {
        let old = tx.vg(name)?.clone();
        let mut vg = old.vg.clone();
        if let Some(c) = &a.clustered {
            let on = yes_no("-c", c)?;
            if on && !env.common.nolocking && tx.clvmd_mode().is_none() {
                return Err(failed(format!(
                    "Cannot make volume group {name} clustered: clvmd is not running (start clvmd, or use --nolocking)"
                )));
            }
            if ops::is_clustered(&vg) && !env.common.nolocking && tx.clvmd_mode().is_none() {
                return Err(failed(format!("Skipping clustered volume group {name}: clvmd is not running")));
            }
            ops::set_clustered(&mut vg, on);
        }
        if let Some(x) = &a.resizeable {
            vg.status.retain(|s| s != "RESIZEABLE");
            if yes_no("-x", x)? {
                vg.status.insert(0, "RESIZEABLE".into());
            }
        }
        if vg == old.vg {
            env.say(format!("Volume group \"{name}\" is already in the state asked for"));
            continue;
        }
        tx.commit(&old, vg, &[])?;
        env.say(format!("Volume group \"{name}\" successfully changed"));
    }
    Ok(())
}

/// `vgck [VG...]`
#[derive(Debug, clap::Args)]
pub struct Vgck {
    #[arg(value_name = "VG")]
    pub vgs: Vec<String>,
}

/// The problems in a VG as found on the disks; empty when it is consistent.
pub fn check_vg(scan: &Scan, name: &str) -> Vec<String> {
    let Some(f) = scan.vgs.get(name) else { return vec![format!("Volume group \"{name}\" not found")] };
    let mut out = Vec::new();
    for id in &f.missing {
        out.push(format!("PV {id} of VG {name} is missing"));
    }
    for (i, m, seqno) in &f.stale {
        out.push(format!(
            "{}: metadata area {} holds seqno {seqno}, older than {} (inconsistent metadata)",
            scan.pvs[*i].spec,
            m + 1,
            f.vg.seqno
        ));
    }
    out.extend(check_model(&f.vg));
    out
}

/// Model-level checks: allocations inside their PVs and not overlapping, segments in order,
/// areas naming existing PVs or LVs.
pub fn check_model(vg: &VolumeGroup) -> Vec<String> {
    let mut out = Vec::new();
    for (k, used) in alloc::used_extents(vg).iter().enumerate() {
        let pv = &vg.physical_volumes[k];
        let mut end = 0;
        for &(s, l) in used {
            if s < end {
                out.push(format!("{}: extents {s}..{} are allocated twice", pv.name, s + l));
            }
            end = end.max(s + l);
        }
        if end > pv.pe_count {
            out.push(format!("{}: allocation past the last extent ({end} > {})", pv.name, pv.pe_count));
        }
    }
    for lv in &vg.logical_volumes {
        let mut le = 0;
        for s in &lv.segments {
            if s.start_extent != le {
                out.push(format!("LV {}: segment at extent {} should start at {le}", lv.name, s.start_extent));
            }
            le = s.start_extent + s.extent_count;
            for a in s.stripes.iter().chain(&s.mirrors) {
                if vg.pv(&a.name).is_none() && vg.lv(&a.name).is_none() {
                    out.push(format!("LV {}: area {} names neither a PV nor an LV", lv.name, a.name));
                }
            }
            if s.segtype == "striped" && (s.stripes.is_empty() || s.extent_count % s.stripes.len() as u64 != 0) {
                out.push(format!(
                    "LV {}: {} extents do not divide over {} stripes",
                    lv.name,
                    s.extent_count,
                    s.stripes.len()
                ));
            }
        }
    }
    out
}

pub fn vgck(env: &Env, a: Vgck) -> anyhow::Result<()> {
    let tx = Tx::begin(env, false, &[], false, &[])?;
    let names: Vec<String> = if a.vgs.is_empty() { tx.scan.vgs.keys().cloned().collect() } else { a.vgs.clone() };
    let mut errors = Vec::new();
    for n in &names {
        errors.extend(check_vg(&tx.scan, n));
    }
    finish_many(errors)
}

/// `vgcfgbackup [-f FILE] [VG...]`
#[derive(Debug, clap::Args)]
pub struct Vgcfgbackup {
    #[arg(value_name = "VG")]
    pub vgs: Vec<String>,
    /// Write to FILE instead of the backup directory (`%s` is replaced by the VG name).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<String>,
}

pub fn vgcfgbackup(env: &Env, a: Vgcfgbackup) -> anyhow::Result<()> {
    let tx = Tx::begin(env, false, &[], false, &[])?;
    let names: Vec<String> = if a.vgs.is_empty() { tx.scan.vgs.keys().cloned().collect() } else { a.vgs.clone() };
    for n in &names {
        let f = tx.vg(n)?;
        match &a.file {
            Some(file) => {
                let path = if file.contains("%s") { file.replace("%s", n) } else { file.clone() };
                let text = tx::backup_text(
                    &f.vg,
                    &format!("Created *after* executing '{}'", tx::cmdline()),
                    &env.host,
                    env.now(),
                );
                daemon::write_atomic(std::path::Path::new(&path), text.as_bytes())
                    .map_err(|e| failed(format!("{path}: {e}")))?;
            }
            None => tx.backup(&f.vg)?,
        }
        env.say(format!("Volume group \"{n}\" successfully backed up."));
    }
    Ok(())
}

/// `vgcfgrestore [-f FILE] VG | vgcfgrestore -l VG`
#[derive(Debug, clap::Args)]
pub struct Vgcfgrestore {
    #[arg(value_name = "VG")]
    pub vg: String,
    /// Restore from FILE (default: the backup directory's file for VG).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<String>,
    /// List the backup and archive files of VG.
    #[arg(short = 'l', long = "list")]
    pub list: bool,
}

pub fn vgcfgrestore(env: &Env, a: Vgcfgrestore) -> anyhow::Result<()> {
    if a.list {
        let mut files = Vec::new();
        if let Ok(rd) = std::fs::read_dir(env.archive_dir()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&format!("{}_", a.vg)) {
                    files.push(e.path());
                }
            }
        }
        files.sort();
        files.push(env.backup_dir().join(&a.vg));
        for p in files {
            let Ok(b) = std::fs::read(&p) else { continue };
            let Ok(root) = text::parse(&b) else { continue };
            let desc = match root.get("description") {
                Some(text::Value::Str(s)) => s.clone(),
                _ => String::new(),
            };
            println!("   ");
            println!("  File:\t\t{}", p.display());
            if let Ok(vg) = VolumeGroup::from_root(&root) {
                println!("  VG name:    \t{}", vg.name);
            }
            println!("  Description:\t{desc}");
        }
        return Ok(());
    }
    let path = a.file.clone().map_or_else(|| env.backup_dir().join(&a.vg), std::path::PathBuf::from);
    let bytes = std::fs::read(&path).map_err(|e| failed(format!("Couldn't read {}: {e}", path.display())))?;
    let root = text::parse(&bytes).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    let mut vg = VolumeGroup::from_root(&root).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    if vg.name != a.vg {
        return Err(failed(format!("{} holds volume group {}, not {}", path.display(), vg.name, a.vg)));
    }
    let mut tx = Tx::begin(env, true, &[a.vg.as_str()], true, &[])?;
    for p in &vg.physical_volumes {
        if tx.scan.pv_by_uuid(&p.id).is_none() {
            return Err(failed(format!(
                "Couldn't find device with uuid {} (pvcreate --uuid {} --restorefile {} DEV first).",
                p.id,
                p.id,
                path.display()
            )));
        }
    }
    let on_disk = tx.scan.vgs.get(&a.vg).map_or(0, |f| f.vg.seqno);
    vg.seqno = vg.seqno.max(on_disk) + 1;
    tx.write(&vg)?;
    env.say(format!("Restored volume group {}.", a.vg));
    Ok(())
}
