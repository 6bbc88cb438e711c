//! lvcreate, lvextend / lvreduce / lvresize, lvremove, lvrename.

use super::env::{display_size, failed, parse_size, split_lv_path, Env, EXIT_USAGE};
use super::pv::finish_many;
use super::tx::Tx;
use crate::alloc;
use crate::disk;
use crate::label::format_uuid;
use crate::map::LvDevice;
use crate::ops::{self, Layout, NewLv};
use crate::scan::FoundVg;
use crate::vg::VolumeGroup;
use blockdev::Device;
use std::collections::BTreeMap;
use std::sync::Arc;

fn usage(msg: impl Into<String>) -> anyhow::Error {
    daemon::Failure::new(EXIT_USAGE, msg.into()).into()
}

/// `-l` as LVM2 takes it: `[+|-]N[%FREE|%VG|%PVS|%LV]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extents {
    Abs(u64),
    Percent(u64, Of),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Of {
    Free,
    Vg,
    Pvs,
    Lv,
}

/// A sign in front of -L / -l (lvextend +, lvreduce -).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    None,
    Plus,
    Minus,
}

fn split_sign(s: &str) -> (Sign, &str) {
    if let Some(r) = s.strip_prefix('+') {
        (Sign::Plus, r)
    } else if let Some(r) = s.strip_prefix('-') {
        (Sign::Minus, r)
    } else {
        (Sign::None, s)
    }
}

fn parse_extents(s: &str) -> anyhow::Result<Extents> {
    let bad = || usage(format!("Invalid argument for --extents: {s}"));
    match s.split_once('%') {
        None => Ok(Extents::Abs(s.parse().map_err(|_| bad())?)),
        Some((n, of)) => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            let of = match of.to_ascii_uppercase().as_str() {
                "FREE" => Of::Free,
                "VG" => Of::Vg,
                "PVS" => Of::Pvs,
                "LV" => Of::Lv,
                _ => return Err(bad()),
            };
            if n == 0 || (n > 100 && of != Of::Lv) {
                return Err(usage(format!("Percentage {n} out of range in {s}")));
            }
            Ok(Extents::Percent(n, of))
        }
    }
}

/// Extents for `-l` against the VG (`pvs` = PV indices named on the command line).
fn resolve(vg: &VolumeGroup, e: Extents, pvs: &[usize], lv_extents: u64) -> u64 {
    match e {
        Extents::Abs(n) => n,
        Extents::Percent(p, of) => {
            let base = match of {
                Of::Free => alloc::vg_free(vg),
                Of::Vg => alloc::vg_extents(vg),
                Of::Pvs if pvs.is_empty() => alloc::vg_extents(vg),
                Of::Pvs => pvs.iter().map(|&i| vg.physical_volumes[i].pe_count).sum(),
                Of::Lv => lv_extents,
            };
            base * p / 100
        }
    }
}

/// PV indices in the VG for devices named on the command line (allocation restricted there).
fn named_pvs(tx: &Tx<'_>, found: &FoundVg, specs: &[String]) -> anyhow::Result<Vec<usize>> {
    specs
        .iter()
        .map(|s| {
            let i =
                tx.scan.pv_by_device(s).ok_or_else(|| failed(format!("Failed to find physical volume \"{s}\".")))?;
            let id = tx.scan.pvs[i].uuid();
            found.vg.physical_volumes.iter().position(|p| p.id == id).ok_or_else(|| {
                failed(format!("Physical Volume \"{s}\" not found in Volume Group \"{}\".", found.vg.name))
            })
        })
        .collect()
}

/// The devices of a VG's PVs by their names in the VG.
fn pv_devices(tx: &Tx<'_>, found: &FoundVg) -> BTreeMap<String, Arc<dyn Device>> {
    found
        .vg
        .physical_volumes
        .iter()
        .filter_map(|p| tx.scan.pv_by_uuid(&p.id).map(|i| (p.name.clone(), tx.scan.pvs[i].dev.clone())))
        .collect()
}

/// `lvcreate -L SIZE | -l N[%FREE|%VG|%PVS] [-n NAME] [-i N [-I SIZE]] [-m N] VG [PV...]`
#[derive(Debug, clap::Args)]
pub struct Lvcreate {
    /// VG (or VG/LV, then -n is not needed), then PVs to allocate from.
    #[arg(value_name = "VG", required = true)]
    pub args: Vec<String>,
    /// Size (default unit MiB; units b s k m g t p e), rounded up to whole extents.
    #[arg(short = 'L', long = "size", value_name = "SIZE", allow_hyphen_values = true)]
    pub size: Option<String>,
    /// Extents, or a percentage: N%FREE, N%VG, N%PVS.
    #[arg(short = 'l', long = "extents", value_name = "N", allow_hyphen_values = true)]
    pub extents: Option<String>,
    /// Name of the new LV (default lvolN).
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,
    /// Stripes: spread the LV over N PVs.
    #[arg(short = 'i', long = "stripes", value_name = "N")]
    pub stripes: Option<usize>,
    /// Stripe size (default unit KiB; a power of two from 4 KiB up to the extent size).
    #[arg(short = 'I', long = "stripesize", value_name = "SIZE")]
    pub stripesize: Option<String>,
    /// Mirror copies beyond the original (1 = two legs on different PVs).
    #[arg(short = 'm', long = "mirrors", value_name = "N")]
    pub mirrors: Option<usize>,
    /// linear, striped or mirror (raid1 is not made by this version).
    #[arg(long = "type", value_name = "TYPE")]
    pub segtype: Option<String>,
    /// Mirror log: disk (a 1-extent log LV) or core (none on disk).
    #[arg(long = "mirrorlog", value_name = "disk|core")]
    pub mirrorlog: Option<String>,
    /// Mirror region size (default 2 MiB).
    #[arg(short = 'R', long = "regionsize", value_name = "SIZE")]
    pub regionsize: Option<String>,
    /// Activate the new LV (y, ey, sy, ly: /dev/VG/LV, see lvchange) or not (n, the
    /// default here: each active LV costs a device process, so activation is asked for).
    #[arg(short = 'a', long = "activate", value_name = "y|n|ey|sy|ly")]
    pub activate: Option<String>,
    /// Zero the first 4 KiB of the new LV (y, the default) or not (n).
    #[arg(short = 'Z', long = "zero", value_name = "y|n")]
    pub zero: Option<String>,
    /// Wipe signatures: accepted for LVM2 compatibility.
    #[arg(short = 'W', long = "wipesignatures", value_name = "y|n")]
    pub wipesignatures: Option<String>,
    /// Mirror: skip the initial copy of the first leg to the others (the legs' contents are
    /// not yet meaningful, e.g. a filesystem will be made on it).
    #[arg(long = "nosync")]
    pub nosync: bool,
}

pub fn lvcreate(env: &Env, a: Lvcreate) -> anyhow::Result<()> {
    let (vg_name, mut lv_name) = match split_lv_path(&a.args[0]) {
        Some((v, l)) => (v, Some(l)),
        None => (a.args[0].trim_start_matches("/dev/").to_owned(), None),
    };
    if let Some(n) = &a.name {
        lv_name = Some(n.clone());
    }
    let pv_specs: Vec<String> = a.args[1..].to_vec();
    if a.size.is_some() == a.extents.is_some() {
        return Err(usage("Please specify either size or extents (not both)."));
    }
    let activate = match &a.activate {
        Some(v) => super::activate::parse_activate(v)?,
        None => None,
    };
    let zero = match &a.zero {
        Some(z) => super::vg::yes_no("-Z", z)?,
        None => true,
    };
    let layout_kind = a.segtype.clone().unwrap_or_else(|| {
        if a.mirrors.unwrap_or(0) > 0 {
            "mirror".into()
        } else if a.stripes.unwrap_or(1) > 1 {
            "striped".into()
        } else {
            "linear".into()
        }
    });
    let mut tx = Tx::begin(env, false, &[vg_name.as_str()], true, &pv_specs)?;
    let found = tx.vg_for_change(&vg_name)?;
    let mut vg = found.vg.clone();
    let allowed = named_pvs(&tx, &found, &pv_specs)?;
    let es_bytes = vg.extent_size * 512;
    let mut extents = match (&a.size, &a.extents) {
        (Some(s), _) => {
            let bytes = parse_size(s, 'm').map_err(usage)?;
            let e = bytes.div_ceil(es_bytes);
            if bytes % es_bytes != 0 {
                env.say(format!("Rounding up size to full physical extent {}", display_size(e * es_bytes)));
            }
            e
        }
        (_, Some(l)) => resolve(&vg, parse_extents(l)?, &allowed, 0),
        _ => 0,
    };
    let layout = match layout_kind.as_str() {
        "linear" | "striped" => {
            let stripes = a.stripes.unwrap_or(1).max(1);
            let stripe_size = match &a.stripesize {
                Some(s) => parse_size(s, 'k').map_err(usage)? / 512,
                None => {
                    if stripes > 1 {
                        env.say("Using default stripesize 64.00 KiB.");
                    }
                    ops::DEFAULT_STRIPE_SIZE
                }
            };
            if stripes > 1 && (!stripe_size.is_power_of_two() || stripe_size < 8 || stripe_size > vg.extent_size) {
                return Err(failed(format!(
                    "Invalid stripe size {}: a power of two from 4.00 KiB up to the extent size",
                    display_size(stripe_size * 512)
                )));
            }
            if stripes > 1 && extents % stripes as u64 != 0 {
                let up = extents.div_ceil(stripes as u64) * stripes as u64;
                let percent = a.extents.as_deref().is_some_and(|l| l.contains('%'));
                let new = if percent { extents / stripes as u64 * stripes as u64 } else { up };
                env.say(format!(
                    "Rounding size {} ({extents} extents) {} to stripe boundary size {} ({new} extents).",
                    display_size(extents * es_bytes),
                    if new > extents { "up" } else { "down" },
                    display_size(new * es_bytes)
                ));
                extents = new;
            }
            Layout::Striped { stripes, stripe_size }
        }
        "mirror" => {
            let copies = a.mirrors.unwrap_or(1);
            if copies == 0 {
                return Err(usage("--type mirror needs -m 1 or more"));
            }
            let region_size = match &a.regionsize {
                Some(s) => parse_size(s, 'm').map_err(usage)? / 512,
                None => ops::DEFAULT_REGION_SIZE,
            };
            if !region_size.is_power_of_two() || region_size < 8 {
                return Err(failed("Region size must be a power of two of at least 4 KiB"));
            }
            let disk_log = match a.mirrorlog.as_deref() {
                None | Some("disk") => true,
                Some("core") => false,
                Some(o) => return Err(usage(format!("Unknown mirror log type: {o} (disk or core)"))),
            };
            Layout::Mirror { copies, region_size, disk_log }
        }
        other => {
            return Err(failed(format!(
                "Segment type {other} is not supported by this version (linear, striped or mirror)"
            )))
        }
    };
    let name = match lv_name {
        Some(n) => n,
        None => (0..).map(|i| format!("lvol{i}")).find(|n| vg.lv(n).is_none()).unwrap_or_default(),
    };
    if vg.max_lv != 0
        && vg.logical_volumes.iter().filter(|l| l.status.iter().any(|s| s == "VISIBLE")).count() as u64 >= vg.max_lv
    {
        return Err(failed(format!(
            "Maximum number of logical volumes ({}) reached in volume group {}",
            vg.max_lv, vg.name
        )));
    }
    let new = NewLv {
        name: name.clone(),
        id: format_uuid(&disk::random_id()),
        extents,
        layout,
        allowed,
        host: env.host.clone(),
        time: env.now(),
    };
    ops::lvcreate(&mut vg, new, &mut || format_uuid(&disk::random_id())).map_err(|e| failed(e.to_string()))?;
    let devs = pv_devices(&tx, &found);
    tx.commit(&found, vg.clone(), &[])?;
    if let Some(log) = vg.lv(&format!("{name}_mlog")).map(|l| l.name.clone()) {
        // The region log: every region to copy, or none with --nosync.
        let seg = vg.lv(&name).and_then(|l| l.segments.first()).cloned();
        let region = seg.and_then(|s| s.region_size).unwrap_or(ops::DEFAULT_REGION_SIZE);
        let bytes = crate::map::lv_size(&vg, vg.lv(&name).ok_or_else(|| failed("LV vanished"))?);
        let dev = LvDevice::new(vg.clone(), &log, devs.clone()).map_err(|e| failed(e.to_string()))?;
        crate::mirror::init_log(&dev, region, bytes, a.nosync)
            .map_err(|e| failed(format!("Failed to initialise the mirror log of {vg_name}/{name}: {e}")))?;
    }
    if zero {
        let dev = LvDevice::new(vg.clone(), &name, devs).map_err(|e| failed(e.to_string()))?;
        let n = dev.size().min(4096) as usize;
        dev.write_at(&vec![0u8; n], 0)
            .and_then(|()| dev.sync())
            .map_err(|e| failed(format!("Failed to zero the start of {vg_name}/{name}: {e}")))?;
    }
    env.say(format!("Logical volume \"{name}\" created."));
    if let Some(mode) = activate {
        // The change's locks go first (the VG lock's value block gets the new seqno).
        drop(tx);
        let tx = Tx::begin(env, false, &[vg_name.as_str()], false, &[])?;
        super::activate::activate(env, &tx, &vg_name, &name, mode)?;
    }
    Ok(())
}

/// Which way lvextend, lvreduce and lvresize may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Grow,
    Shrink,
    Either,
}

/// `lvextend|lvreduce|lvresize -L [+|-]SIZE | -l [+|-]N[%...] VG/LV [PV...]`
#[derive(Debug, clap::Args)]
pub struct Lvresize {
    /// VG/LV, then PVs to allocate from.
    #[arg(value_name = "VG/LV", required = true)]
    pub args: Vec<String>,
    /// New size, or +SIZE / -SIZE (default unit MiB).
    #[arg(short = 'L', long = "size", value_name = "SIZE", allow_hyphen_values = true)]
    pub size: Option<String>,
    /// New extents, or +N / -N, or a percentage (N%FREE, N%VG, N%PVS, N%LV).
    #[arg(short = 'l', long = "extents", value_name = "N", allow_hyphen_values = true)]
    pub extents: Option<String>,
    /// Shrink without asking.
    #[arg(short = 'f', long = "force", action = clap::ArgAction::Count)]
    pub force: u8,
    /// Resize the filesystem too: not done by this version (resize it with its own tool).
    #[arg(short = 'r', long = "resizefs")]
    pub resizefs: bool,
}

pub fn lvresize(env: &Env, a: Lvresize, dir: Direction) -> anyhow::Result<()> {
    let (vg_name, lv_name) = split_lv_path(&a.args[0])
        .ok_or_else(|| usage(format!("Please specify a logical volume path, not {}", a.args[0])))?;
    if a.size.is_some() == a.extents.is_some() {
        return Err(usage("Please specify either size or extents (not both)."));
    }
    if a.resizefs {
        return Err(failed("--resizefs is not supported by this version: resize the filesystem with its own tool"));
    }
    let pv_specs: Vec<String> = a.args[1..].to_vec();
    super::activate::refuse_if_active(env, &vg_name, &lv_name, "resizing it (online resize is not supported yet)")?;
    let mut tx = Tx::begin(env, false, &[vg_name.as_str()], true, &pv_specs)?;
    let found = tx.vg_for_change(&vg_name)?;
    let mut vg = found.vg.clone();
    let allowed = named_pvs(&tx, &found, &pv_specs)?;
    let cur = vg
        .lv(&lv_name)
        .filter(|l| l.status.iter().any(|s| s == "VISIBLE"))
        .ok_or_else(|| failed(format!("Logical volume {lv_name} not found in volume group {vg_name}.")))?
        .extent_count();
    let es_bytes = vg.extent_size * 512;
    let (sign, target) = match (&a.size, &a.extents) {
        (Some(s), _) => {
            let (sign, rest) = split_sign(s);
            let bytes = parse_size(rest, 'm').map_err(usage)?;
            (sign, bytes.div_ceil(es_bytes))
        }
        (_, Some(l)) => {
            let (sign, rest) = split_sign(l);
            (sign, resolve(&vg, parse_extents(rest)?, &allowed, cur))
        }
        _ => unreachable!("checked above"),
    };
    let want = match sign {
        Sign::None => target,
        Sign::Plus => cur + target,
        Sign::Minus => cur.saturating_sub(target),
    };
    let grow = want > cur;
    match (dir, grow) {
        (Direction::Grow, false) => {
            return Err(failed(format!(
                "New size given ({want} extents) not larger than existing size ({cur} extents)"
            )))
        }
        (Direction::Shrink, true) => {
            return Err(failed(format!("New size given ({want} extents) not less than existing size ({cur} extents)")))
        }
        _ => {}
    }
    if want == cur {
        return Err(failed(format!("New size ({want} extents) matches existing size ({cur} extents).")));
    }
    let got = if grow {
        ops::lvextend(&mut vg, &lv_name, want, &allowed).map_err(|e| failed(e.to_string()))?
    } else {
        env.say(format!("WARNING: Reducing {vg_name}/{lv_name} to {}.", display_size(want * es_bytes)));
        env.say("THIS MAY DESTROY YOUR DATA (filesystem etc.)");
        if a.force == 0 && !env.confirm(&format!("Do you really want to reduce {vg_name}/{lv_name}?")) {
            return Err(failed(format!("Logical volume {lv_name} NOT reduced (use -f to reduce without asking).")));
        }
        ops::lvreduce(&mut vg, &lv_name, want).map_err(|e| failed(e.to_string()))?
    };
    tx.commit(&found, vg, &[])?;
    env.say(format!(
        "Size of logical volume {vg_name}/{lv_name} changed from {} ({cur} extents) to {} ({got} extents).",
        display_size(cur * es_bytes),
        display_size(got * es_bytes)
    ));
    env.say(format!("Logical volume {vg_name}/{lv_name} successfully resized."));
    Ok(())
}

/// `lvremove [-f] VG/LV... | VG`
#[derive(Debug, clap::Args)]
pub struct Lvremove {
    #[arg(value_name = "VG/LV", required = true)]
    pub lvs: Vec<String>,
    /// Remove without asking.
    #[arg(short = 'f', long = "force", action = clap::ArgAction::Count)]
    pub force: u8,
}

pub fn lvremove(env: &Env, a: Lvremove) -> anyhow::Result<()> {
    // Group the names by VG: one commit per VG.
    let mut by_vg: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for s in &a.lvs {
        match split_lv_path(s) {
            Some((v, l)) => by_vg.entry(v).or_default().push(Some(l)),
            None => by_vg.entry(s.trim_start_matches("/dev/").to_owned()).or_default().push(None),
        }
    }
    let names: Vec<&str> = by_vg.keys().map(String::as_str).collect();
    let mut tx = Tx::begin(env, false, &names, true, &[])?;
    let mut errors = Vec::new();
    for (vg_name, lvs) in &by_vg {
        let found = match tx.vg_for_change(vg_name) {
            Ok(f) => f,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let mut vg = found.vg.clone();
        let targets: Vec<String> = if lvs.iter().any(Option::is_none) {
            vg.logical_volumes
                .iter()
                .filter(|l| l.status.iter().any(|s| s == "VISIBLE"))
                .map(|l| l.name.clone())
                .collect()
        } else {
            lvs.iter().flatten().cloned().collect()
        };
        let mut removed = Vec::new();
        for lv in &targets {
            if vg.lv(lv).is_none_or(|l| !l.status.iter().any(|s| s == "VISIBLE")) {
                errors.push(format!("Failed to find logical volume \"{vg_name}/{lv}\""));
                continue;
            }
            if super::activate::active_record(env, vg_name, lv).is_some() {
                if a.force == 0 {
                    errors.push(format!(
                        "Logical volume {vg_name}/{lv} is active: deactivate it first (lvchange -an), or use -f"
                    ));
                    continue;
                }
                if let Err(e) = super::activate::deactivate(env, vg_name, lv, false) {
                    errors.push(e.to_string());
                    continue;
                }
            }
            ops::lvremove(&mut vg, lv).map_err(|e| failed(e.to_string()))?;
            removed.push(lv.clone());
        }
        if removed.is_empty() {
            continue;
        }
        tx.commit(&found, vg, &[])?;
        for lv in removed {
            env.say(format!("Logical volume \"{lv}\" successfully removed."));
        }
    }
    finish_many(errors)
}

/// `lvrename VG OLD NEW | lvrename VG/OLD VG/NEW`
#[derive(Debug, clap::Args)]
pub struct Lvrename {
    #[arg(value_name = "ARGS", num_args = 2..=3, required = true)]
    pub args: Vec<String>,
}

pub fn lvrename(env: &Env, a: Lvrename) -> anyhow::Result<()> {
    let (vg_name, old, new) = match a.args.as_slice() {
        [vg, old, new] => (vg.clone(), old.clone(), new.clone()),
        [old, new] => {
            let (v1, o) = split_lv_path(old).ok_or_else(|| usage(format!("Please specify VG/LV, not {old}")))?;
            let (v2, n) = match split_lv_path(new) {
                Some(p) => p,
                None => (v1.clone(), new.clone()),
            };
            if v1 != v2 {
                return Err(failed(format!(
                    "Logical volume names must have the same volume group (\"{v1}\" or \"{v2}\")."
                )));
            }
            (v1, o, n)
        }
        _ => return Err(usage("lvrename VG OLD NEW, or lvrename VG/OLD VG/NEW")),
    };
    super::activate::refuse_if_active(env, &vg_name, &old, "renaming it")?;
    let mut tx = Tx::begin(env, false, &[vg_name.as_str()], true, &[])?;
    let found = tx.vg_for_change(&vg_name)?;
    let mut vg = found.vg.clone();
    if vg.lv(&old).is_none_or(|l| !l.status.iter().any(|s| s == "VISIBLE")) {
        return Err(failed(format!("Existing logical volume \"{old}\" not found in volume group \"{vg_name}\"")));
    }
    ops::lvrename(&mut vg, &old, &new).map_err(|e| failed(e.to_string()))?;
    tx.commit(&found, vg, &[])?;
    env.say(format!("Renamed \"{old}\" to \"{new}\" in volume group \"{vg_name}\""));
    Ok(())
}
