//! Changes to a volume group (sans-IO): each takes the VG model and changes it as the LVM2
//! command of the same name would, or refuses with the reason. The caller bumps `seqno` once
//! per command and commits the text ([`crate::disk::commit`]).

use crate::alloc::{self, AllocError, Request};
use crate::vg::{Area, Extra, LogicalVolume, PhysicalVolume, Segment, VolumeGroup};

/// LVM2's default extent size: 4 MiB in sectors.
pub const DEFAULT_EXTENT_SIZE: u64 = 8192;
/// LVM2's default stripe size: 64 KiB in sectors.
pub const DEFAULT_STRIPE_SIZE: u64 = 128;
/// The default mirror region size: 2 MiB in sectors (lvm2 2.03's `raid_region_size`).
pub const DEFAULT_REGION_SIZE: u64 = 4096;
/// Longest VG or LV name.
pub const NAME_MAX: usize = 127;

/// A refused change: one line, as the command prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Alloc(#[from] AllocError),
}

fn refuse<T>(msg: impl Into<String>) -> Result<T, OpError> {
    Err(OpError::Refused(msg.into()))
}

/// Whether `name` is a valid VG or LV name (LVM2's rules): `[a-zA-Z0-9+_.-]`, not starting with
/// `-`, not `.` or `..`, at most 127 characters.
pub fn check_name(kind: &str, name: &str) -> Result<(), OpError> {
    if name.is_empty() {
        return refuse(format!("{kind} name is empty"));
    }
    if name.len() > NAME_MAX {
        return refuse(format!("{kind} name \"{name}\" is too long (at most {NAME_MAX} characters)"));
    }
    if name == "." || name == ".." || name.starts_with('-') {
        return refuse(format!("Name \"{name}\" is invalid."));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "+_.-".contains(*c))) {
        return refuse(format!("{kind} name \"{name}\" has invalid characters ({c:?}): use a-z A-Z 0-9 + _ . -"));
    }
    Ok(())
}

/// LV names LVM2 reserves for its own sub-volumes.
pub fn check_lv_name(name: &str) -> Result<(), OpError> {
    check_name("Logical volume", name)?;
    for reserved in ["snapshot", "pvmove"] {
        if name.starts_with(reserved) {
            return refuse(format!("Names starting \"{reserved}\" are reserved. Please choose a different LV name."));
        }
    }
    for suffix in [
        "_cdata", "_cmeta", "_corig", "_mimage", "_mlog", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta",
        "_vorigin", "_vdata",
    ] {
        if name.contains(suffix) {
            return refuse(format!("Names including \"{suffix}\" are reserved. Please choose a different LV name."));
        }
    }
    Ok(())
}

/// What a PV brings to a VG.
#[derive(Debug, Clone)]
pub struct NewPv {
    /// PV UUID (dashed).
    pub id: String,
    /// Device path hint.
    pub device: String,
    /// Device size in bytes.
    pub dev_size: u64,
    /// First data byte (pv_header data area offset).
    pub pe_start: u64,
    /// Where the data area ends (a second metadata area at the end), in bytes.
    pub data_end: u64,
}

/// A new VG over `pvs` (vgcreate), seqno 1.
pub fn vgcreate(
    name: &str,
    id: String,
    extent_size: u64,
    clustered: bool,
    pvs: &[NewPv],
) -> Result<VolumeGroup, OpError> {
    check_name("Volume group", name)?;
    if extent_size == 0 || !extent_size.is_power_of_two() || extent_size < 8 {
        return refuse(format!(
            "Physical extent size must be a power of 2 of at least 4 KiB, not {} KiB",
            extent_size / 2
        ));
    }
    let mut status = vec!["RESIZEABLE".to_owned(), "READ".into(), "WRITE".into()];
    if clustered {
        status.push("CLUSTERED".into());
    }
    let mut vg = VolumeGroup {
        name: name.to_owned(),
        id,
        seqno: 1,
        format: Some("lvm2".into()),
        status,
        flags: vec![],
        extent_size,
        max_lv: 0,
        max_pv: 0,
        metadata_copies: Some(0),
        physical_volumes: vec![],
        logical_volumes: vec![],
        extra: Extra::default(),
    };
    for p in pvs {
        vgextend(&mut vg, p)?;
    }
    Ok(vg)
}

/// Adds a PV (vgextend).
pub fn vgextend(vg: &mut VolumeGroup, p: &NewPv) -> Result<(), OpError> {
    if vg.physical_volumes.iter().any(|q| q.id == p.id) {
        return refuse(format!("Physical volume '{}' is already in volume group '{}'", p.device, vg.name));
    }
    let es = vg.extent_size * 512;
    let pe_count = p.data_end.saturating_sub(p.pe_start) / es;
    if pe_count == 0 {
        return refuse(format!("Physical volume {} is too small for one extent of {} KiB", p.device, es / 1024));
    }
    vg.physical_volumes.push(PhysicalVolume {
        name: String::new(),
        id: p.id.clone(),
        device: Some(p.device.clone()),
        status: vec!["ALLOCATABLE".into()],
        flags: vec![],
        dev_size: Some(p.dev_size / 512),
        pe_start: p.pe_start / 512,
        pe_count,
        extra: Extra::default(),
    });
    renumber_pvs(vg);
    Ok(())
}

/// LVM2 names PVs `pv0`, `pv1`, ... in list order every time it writes; so do we, rewriting
/// the LV areas that name them.
pub fn renumber_pvs(vg: &mut VolumeGroup) {
    let map: Vec<(String, String)> =
        vg.physical_volumes.iter().enumerate().map(|(i, p)| (p.name.clone(), format!("pv{i}"))).collect();
    for (p, (_, new)) in vg.physical_volumes.iter_mut().zip(&map) {
        p.name = new.clone();
    }
    for lv in &mut vg.logical_volumes {
        for seg in &mut lv.segments {
            for a in &mut seg.stripes {
                if let Some((_, new)) = map.iter().find(|(old, _)| !old.is_empty() && *old == a.name) {
                    a.name = new.clone();
                }
            }
        }
    }
}

/// Removes an unused PV (vgreduce).
pub fn vgreduce(vg: &mut VolumeGroup, pv_id: &str, device: &str) -> Result<(), OpError> {
    let Some(i) = vg.physical_volumes.iter().position(|p| p.id == pv_id) else {
        return refuse(format!("Physical volume \"{device}\" not found in volume group \"{}\".", vg.name));
    };
    if alloc::pv_free(vg, i) != vg.physical_volumes[i].pe_count {
        return refuse(format!("Physical volume \"{device}\" still in use"));
    }
    if vg.physical_volumes.len() == 1 {
        return refuse(format!("Can't remove final physical volume \"{device}\" from volume group \"{}\"", vg.name));
    }
    vg.physical_volumes.remove(i);
    renumber_pvs(vg);
    Ok(())
}

/// Whether the VG is clustered.
pub fn is_clustered(vg: &VolumeGroup) -> bool {
    vg.status.iter().any(|s| s == "CLUSTERED")
}

/// vgchange -c y|n.
pub fn set_clustered(vg: &mut VolumeGroup, on: bool) {
    vg.status.retain(|s| s != "CLUSTERED");
    if on {
        vg.status.push("CLUSTERED".into());
    }
}

/// How an LV is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `-i N -I SIZE` (N = 1: linear).
    Striped { stripes: usize, stripe_size: u64 },
    /// `-m N --type mirror`: N+1 linear legs on distinct PVs, a 1-extent disk log (on a PV no
    /// leg uses when there is one, else beside a leg), `region_size` sectors per log bit.
    Mirror { copies: usize, region_size: u64, disk_log: bool },
}

/// A new LV.
#[derive(Debug, Clone)]
pub struct NewLv {
    pub name: String,
    pub id: String,
    pub extents: u64,
    pub layout: Layout,
    /// PVs (by index) the LV may use; all when empty.
    pub allowed: Vec<usize>,
    pub host: String,
    pub time: i64,
}

fn lv(name: &str, id: String, visible: bool, host: &str, time: i64, segments: Vec<Segment>) -> LogicalVolume {
    let mut status = vec!["READ".to_owned(), "WRITE".into()];
    if visible {
        status.push("VISIBLE".into());
    }
    LogicalVolume {
        name: name.to_owned(),
        id,
        status,
        flags: vec![],
        creation_time: Some(time),
        creation_host: Some(host.to_owned()),
        segments,
        extra: Extra::default(),
    }
}

/// Creates an LV (lvcreate); returns the extents it got (rounded up to the stripes).
pub fn lvcreate(vg: &mut VolumeGroup, new: NewLv, sub_id: &mut dyn FnMut() -> String) -> Result<u64, OpError> {
    check_lv_name(&new.name)?;
    if vg.lv(&new.name).is_some() {
        return refuse(format!("Logical Volume \"{}\" already exists in volume group \"{}\"", new.name, vg.name));
    }
    if new.extents == 0 {
        return refuse("Unable to create new logical volume with no extents.");
    }
    match new.layout {
        Layout::Striped { stripes, stripe_size } => {
            let stripes = stripes.max(1);
            let extents = new.extents.div_ceil(stripes as u64) * stripes as u64;
            let segs = alloc::allocate(
                vg,
                &Request {
                    le: 0,
                    extents,
                    stripes,
                    stripe_size: (stripes > 1).then_some(stripe_size),
                    allowed: new.allowed.clone(),
                    ..Default::default()
                },
            )?;
            vg.logical_volumes.push(lv(&new.name, new.id, true, &new.host, new.time, segs));
            Ok(extents)
        }
        Layout::Mirror { copies, region_size, disk_log } => {
            let legs = copies + 1;
            let mut taken: Vec<usize> = vec![];
            let mut images = Vec::new();
            let mut trial = vg.clone();
            for k in 0..legs {
                let exclude: Vec<usize> = taken.clone();
                let segs = alloc::allocate(
                    &trial,
                    &Request { extents: new.extents, allowed: new.allowed.clone(), exclude, ..Default::default() },
                )
                .map_err(|_| AllocError::NoParallel {
                    what: format!("mirror {}", new.name),
                    need: new.extents,
                    legs,
                })?;
                taken.extend(alloc::pvs_of(&trial, &segs));
                let name = format!("{}_mimage_{k}", new.name);
                trial.logical_volumes.push(lv(&name, sub_id(), false, &new.host, new.time, segs));
                images.push(name);
            }
            let log = if disk_log {
                // A PV no leg uses, else any with room (LVM2 would need --alloc anywhere).
                let segs =
                    alloc::allocate(&trial, &Request { extents: 1, exclude: taken.clone(), ..Default::default() })
                        .or_else(|_| alloc::allocate(&trial, &Request { extents: 1, ..Default::default() }))?;
                let name = format!("{}_mlog", new.name);
                trial.logical_volumes.push(lv(&name, sub_id(), false, &new.host, new.time, segs));
                Some(name)
            } else {
                None
            };
            let seg = Segment {
                start_extent: 0,
                extent_count: new.extents,
                segtype: "mirror".into(),
                stripe_count: None,
                stripe_size: None,
                stripes: vec![],
                mirror_count: Some(legs as u64),
                region_size: Some(region_size),
                mirror_log: log,
                mirrors: images.iter().map(|n| Area { name: n.clone(), start: 0 }).collect(),
                device_count: None,
                raids: vec![],
                extra: Extra::default(),
            };
            let top = lv(&new.name, new.id, true, &new.host, new.time, vec![seg]);
            // LVM2 lists the top LV before its sub-LVs.
            let at = vg.logical_volumes.len();
            *vg = trial;
            vg.logical_volumes.insert(at, top);
            Ok(new.extents)
        }
    }
}

fn lv_index(vg: &VolumeGroup, name: &str) -> Result<usize, OpError> {
    vg.logical_volumes
        .iter()
        .position(|l| l.name == name)
        .ok_or_else(|| OpError::Refused(format!("Failed to find logical volume \"{}/{name}\"", vg.name)))
}

/// Sub-LVs of a mirror LV (images and log), by name.
pub fn sub_lvs(vg: &VolumeGroup, name: &str) -> Vec<String> {
    let Some(l) = vg.lv(name) else { return vec![] };
    let mut out = Vec::new();
    for s in &l.segments {
        out.extend(s.mirrors.iter().map(|a| a.name.clone()));
        out.extend(s.mirror_log.iter().cloned());
        out.extend(s.raids.iter().cloned());
    }
    out
}

/// Removes an LV and its sub-LVs (lvremove).
pub fn lvremove(vg: &mut VolumeGroup, name: &str) -> Result<(), OpError> {
    lv_index(vg, name)?;
    let mut gone = sub_lvs(vg, name);
    gone.push(name.to_owned());
    vg.logical_volumes.retain(|l| !gone.contains(&l.name));
    Ok(())
}

/// Renames an LV (lvrename), and its sub-LVs with it.
pub fn lvrename(vg: &mut VolumeGroup, old: &str, new: &str) -> Result<(), OpError> {
    check_lv_name(new)?;
    lv_index(vg, old)?;
    if vg.lv(new).is_some() {
        return refuse(format!("Logical Volume \"{new}\" already exists in volume group \"{}\"", vg.name));
    }
    let subs = sub_lvs(vg, old);
    let rename = |n: &str| -> String {
        if n == old {
            new.to_owned()
        } else if subs.iter().any(|s| s == n) {
            format!("{new}{}", &n[old.len()..])
        } else {
            n.to_owned()
        }
    };
    for l in &mut vg.logical_volumes {
        l.name = rename(&l.name);
        for s in &mut l.segments {
            for a in &mut s.mirrors {
                a.name = rename(&a.name);
            }
            s.mirror_log = s.mirror_log.as_deref().map(rename);
            for r in &mut s.raids {
                *r = rename(r);
            }
        }
    }
    Ok(())
}

/// Grows an LV to `extents` (lvextend / lvresize up); returns the extents it has.
pub fn lvextend(vg: &mut VolumeGroup, name: &str, extents: u64, allowed: &[usize]) -> Result<u64, OpError> {
    let i = lv_index(vg, name)?;
    let cur = vg.logical_volumes[i].extent_count();
    if extents <= cur {
        return refuse(format!("New size given ({extents} extents) not larger than existing size ({cur} extents)"));
    }
    let last = vg.logical_volumes[i].segments.last().cloned();
    let Some(last) = last else { return refuse(format!("Logical volume {name} has no segments")) };
    match last.segtype.as_str() {
        "striped" => {
            let stripes = last.stripes.len().max(1);
            let add = (extents - cur).div_ceil(stripes as u64) * stripes as u64;
            let prefer_after = (stripes == 1).then(|| {
                let a = &last.stripes[0];
                (
                    vg.physical_volumes.iter().position(|p| p.name == a.name).unwrap_or(usize::MAX),
                    a.start + last.extent_count,
                )
            });
            let segs = alloc::allocate(
                vg,
                &Request {
                    le: cur,
                    extents: add,
                    stripes,
                    stripe_size: last.stripe_size,
                    allowed: allowed.to_vec(),
                    prefer_after,
                    ..Default::default()
                },
            )?;
            let lv = &mut vg.logical_volumes[i];
            for s in segs {
                let merge = lv.segments.last_mut().filter(|l| {
                    l.segtype == "striped"
                        && l.stripes.len() == s.stripes.len()
                        && l.stripe_size == s.stripe_size
                        && l.stripes.iter().zip(&s.stripes).all(|(a, b)| {
                            a.name == b.name && a.start + l.extent_count / l.stripes.len() as u64 == b.start
                        })
                });
                match merge {
                    Some(l) => l.extent_count += s.extent_count,
                    None => lv.segments.push(s),
                }
            }
            Ok(cur + add)
        }
        "mirror" => {
            // Each image grows on the PVs it already uses (legs stay apart); the log stays.
            let add = extents - cur;
            let images: Vec<String> = last.mirrors.iter().map(|a| a.name.clone()).collect();
            let mut trial = vg.clone();
            let all_legs: Vec<Vec<usize>> = images
                .iter()
                .map(|n| alloc::pvs_of(&trial, &trial.lv(n).map(|l| l.segments.clone()).unwrap_or_default()))
                .collect();
            for (k, img) in images.iter().enumerate() {
                let others: Vec<usize> =
                    all_legs.iter().enumerate().filter(|(j, _)| *j != k).flat_map(|(_, v)| v.clone()).collect();
                let j = lv_index(&trial, img)?;
                let icur = trial.logical_volumes[j].extent_count();
                let segs = alloc::allocate(
                    &trial,
                    &Request {
                        le: icur,
                        extents: add,
                        exclude: others,
                        allowed: allowed.to_vec(),
                        ..Default::default()
                    },
                )?;
                trial.logical_volumes[j].segments.extend(segs);
            }
            let j = lv_index(&trial, name)?;
            if let Some(s) = trial.logical_volumes[j].segments.last_mut() {
                s.extent_count += add;
            }
            *vg = trial;
            Ok(extents)
        }
        other => refuse(format!("Extending {other} logical volumes is not supported by this version")),
    }
}

/// Shrinks an LV to `extents` (lvreduce / lvresize down); returns the extents it has.
pub fn lvreduce(vg: &mut VolumeGroup, name: &str, extents: u64) -> Result<u64, OpError> {
    let i = lv_index(vg, name)?;
    let cur = vg.logical_volumes[i].extent_count();
    if extents >= cur {
        return refuse(format!("New size ({extents} extents) matches existing size ({cur} extents)."));
    }
    if extents == 0 {
        return refuse("Unable to reduce the logical volume to no extents: use lvremove.");
    }
    let subs: Vec<String> =
        vg.logical_volumes[i].segments.iter().flat_map(|s| s.mirrors.iter().map(|a| a.name.clone())).collect();
    let mut keep = extents;
    {
        let lv = &mut vg.logical_volumes[i];
        let mut segs = Vec::new();
        for s in std::mem::take(&mut lv.segments) {
            if s.start_extent >= keep {
                continue;
            }
            let mut s = s;
            if s.start_extent + s.extent_count > keep {
                let n = s.stripes.len().max(1) as u64;
                let want = keep - s.start_extent;
                let cut = want.div_ceil(n) * n;
                s.extent_count = cut;
            }
            segs.push(s);
        }
        keep = segs.last().map_or(0, |s| s.start_extent + s.extent_count);
        lv.segments = segs;
    }
    for img in subs {
        lvreduce_plain(vg, &img, keep);
    }
    Ok(keep)
}

fn lvreduce_plain(vg: &mut VolumeGroup, name: &str, keep: u64) {
    if let Some(lv) = vg.logical_volumes.iter_mut().find(|l| l.name == name) {
        lv.segments.retain(|s| s.start_extent < keep);
        if let Some(s) = lv.segments.last_mut() {
            s.extent_count = s.extent_count.min(keep - s.start_extent);
        }
    }
}

/// Extents for a size in bytes, rounded up to whole extents.
pub fn extents_for(vg: &VolumeGroup, bytes: u64) -> u64 {
    bytes.div_ceil(vg.extent_size * 512)
}
