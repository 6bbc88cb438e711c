//! What the reports read: the PVs found on devices and the VGs decoded from them, plus the
//! activation state lvm2 would ask device-mapper for; and the derived facts lvm2 computes
//! (which device a VG's `pvN` is, extents in use per PV, PV segments, LV roles).

use crate::label::Label;
use crate::mda::MdaHeader;
use crate::vg::{LogicalVolume, Segment, VolumeGroup};
use std::collections::HashMap;

/// One labelled PV as the scan found it.
#[derive(Debug, Clone, PartialEq)]
pub struct PvSource {
    /// Device path (`/dev/loop0`).
    pub device: String,
    /// Device size in bytes, as the device reports it now.
    pub dev_size: u64,
    /// Device major and minor (`pv_major`, `pv_minor`), when known.
    pub devno: Option<(u32, u32)>,
    /// The label and its pv_header.
    pub label: Label,
    /// The metadata area headers, in the pv_header's order.
    pub mdas: Vec<MdaHeader>,
    /// Name of the VG whose metadata this PV belongs to (None = orphan).
    pub vg: Option<String>,
}

/// Everything a report looks at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Source {
    /// Every labelled PV.
    pub pvs: Vec<PvSource>,
    /// Every VG (the winning metadata of each).
    pub vgs: Vec<VolumeGroup>,
}

/// Activation state of an LV, as lvm2 learns it from device-mapper.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LvState {
    /// lvm2 cannot tell (activation disabled, no device-mapper): attr `XX`, lv_active
    /// `unknown`; what stock lvm2 shows here with `global/activation=0`.
    Unknown,
    /// Not active.
    Inactive,
    /// Active locally.
    Active(ActiveLv),
}

/// What the kernel says about an active LV.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ActiveLv {
    /// The device is open (`o` in lv_attr, `# open` 1).
    pub open: bool,
    /// Activated read-only although the metadata allows writing (`R` in lv_attr).
    pub read_only: bool,
    /// Suspended (`s` in lv_attr).
    pub suspended: bool,
    /// Block device major:minor (`lv_kernel_major`, lvdisplay's `Block device`).
    pub devno: Option<(u32, u32)>,
    /// Read-ahead in use, in sectors (`lv_kernel_read_ahead`, lvdisplay's `- currently set to`).
    pub read_ahead: Option<u64>,
    /// For mirrors: the in-sync percentage (`copy_percent`); images count as in sync when
    /// their mirror is at 100.
    pub sync_percent: Option<f64>,
}

impl LvState {
    /// The kernel facts when active.
    pub fn active(&self) -> Option<&ActiveLv> {
        match self {
            LvState::Active(a) => Some(a),
            _ => None,
        }
    }
}

/// Tells the report each LV's state: `(vg name, lv name) -> state`.
pub type StateFn<'a> = &'a dyn Fn(&str, &str) -> LvState;

/// Facts about one VG that several fields need.
pub(crate) struct VgFacts<'a> {
    pub vg: &'a VolumeGroup,
    /// `pvN` -> device name (`[unknown]` when no PV with that UUID was found).
    pub dev_of: HashMap<&'a str, String>,
    /// `pvN` -> the PvSource.
    pub src_of: HashMap<&'a str, &'a PvSource>,
    /// `pvN` -> extents allocated on it.
    pub alloc: HashMap<&'a str, u64>,
    /// LV name -> (the mirror LV it is an image or log of, role).
    pub role: HashMap<&'a str, Role>,
}

/// What an LV is inside a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Image,
    Log,
}

impl<'a> VgFacts<'a> {
    pub fn new(vg: &'a VolumeGroup, src: &'a Source) -> VgFacts<'a> {
        let mut dev_of = HashMap::new();
        let mut src_of = HashMap::new();
        for pv in &vg.physical_volumes {
            match src.pvs.iter().find(|p| p.label.pv_header.uuid_string() == pv.id) {
                Some(p) => {
                    dev_of.insert(pv.name.as_str(), p.device.clone());
                    src_of.insert(pv.name.as_str(), p);
                }
                None => {
                    dev_of.insert(pv.name.as_str(), "[unknown]".to_owned());
                }
            }
        }
        let mut alloc: HashMap<&str, u64> = HashMap::new();
        let mut role = HashMap::new();
        for lv in &vg.logical_volumes {
            for seg in &lv.segments {
                for a in &seg.stripes {
                    if dev_of.contains_key(a.name.as_str()) {
                        *alloc.entry(a.name.as_str()).or_default() += area_len(seg);
                    }
                }
                for a in &seg.mirrors {
                    role.insert(a.name.as_str(), Role::Image);
                }
                if let Some(l) = &seg.mirror_log {
                    role.insert(l.as_str(), Role::Log);
                }
            }
        }
        VgFacts { vg, dev_of, src_of, alloc, role }
    }

    pub fn extent_count(&self) -> u64 {
        self.vg.physical_volumes.iter().map(|p| p.pe_count).sum()
    }

    pub fn free_count(&self) -> u64 {
        self.vg
            .physical_volumes
            .iter()
            .map(|p| p.pe_count.saturating_sub(self.alloc.get(p.name.as_str()).copied().unwrap_or(0)))
            .sum()
    }

    pub fn mdas(&self) -> impl Iterator<Item = &'a MdaHeader> + '_ {
        self.vg.physical_volumes.iter().filter_map(|p| self.src_of.get(p.name.as_str())).flat_map(|s| s.mdas.iter())
    }

    /// Visible LVs (lv_count).
    pub fn visible_lvs(&self) -> u64 {
        self.vg.logical_volumes.iter().filter(|l| is_visible(l)).count() as u64
    }

    /// The area name as lvm2 lists it: the device of a PV, or the LV's name.
    pub fn area_name(&self, name: &str) -> String {
        self.dev_of.get(name).cloned().unwrap_or_else(|| name.to_owned())
    }

    /// Extents of the LV an area names (for LV areas).
    pub fn lv_extents(&self, name: &str) -> u64 {
        self.vg.lv(name).map(|l| l.extent_count()).unwrap_or(0)
    }
}

/// Extents each area of a segment spans.
pub(crate) fn area_len(seg: &Segment) -> u64 {
    if seg.segtype == "striped" {
        seg.extent_count / (seg.stripes.len().max(1) as u64)
    } else {
        seg.extent_count
    }
}

pub(crate) fn is_visible(lv: &LogicalVolume) -> bool {
    lv.status.iter().any(|s| s == "VISIBLE")
}

pub(crate) fn has(flags: &[String], f: &str) -> bool {
    flags.iter().any(|s| s == f)
}

/// The metadata-area free space lvm2 reports for one mda, in sectors.
pub(crate) fn mda_free_sectors(h: &MdaHeader) -> u64 {
    let max = ((h.size.saturating_sub(512)) / 2).saturating_sub(512);
    match h.committed() {
        None => max >> 9,
        Some(r) if r.offset == 0 => max >> 9,
        Some(r) if r.size >= max => 0,
        Some(r) => (max - r.size) >> 9,
    }
}

/// `/dev/mapper` name: `-` doubled in each part.
pub(crate) fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// One PV segment: a run of extents either allocated to an LV segment or free.
#[derive(Debug, Clone)]
pub(crate) struct PvSeg<'a> {
    pub start: u64,
    pub len: u64,
    /// The LV and its segment using it, None = free.
    pub used: Option<(&'a LogicalVolume, &'a Segment)>,
}

/// The PV segments of `pv_name` in the VG, in extent order, free runs included.
pub(crate) fn pv_segments<'a>(f: &VgFacts<'a>, pv_name: &str, pe_count: u64) -> Vec<PvSeg<'a>> {
    let mut used: Vec<PvSeg<'a>> = Vec::new();
    for lv in &f.vg.logical_volumes {
        for seg in &lv.segments {
            for a in &seg.stripes {
                if a.name == pv_name {
                    used.push(PvSeg { start: a.start, len: area_len(seg), used: Some((lv, seg)) });
                }
            }
        }
    }
    used.sort_by_key(|s| s.start);
    let mut out = Vec::new();
    let mut at = 0;
    for s in used {
        if s.start > at {
            out.push(PvSeg { start: at, len: s.start - at, used: None });
        }
        at = s.start + s.len;
        out.push(s);
    }
    if at < pe_count {
        out.push(PvSeg { start: at, len: pe_count - at, used: None });
    }
    out
}

/// The order lvm2 processes VGs in (what unbuffered reports and the display commands show):
/// lvmcache puts each newly found VG at the head of its list, and the label scan meets
/// devices in device-number order, so the VG first seen comes last.
pub(crate) fn process_order<'f, 'a>(src: &Source, facts: &'f [VgFacts<'a>]) -> Vec<&'f VgFacts<'a>> {
    let mut seen: Vec<usize> = Vec::new();
    for p in devices_in_scan_order(src) {
        let uuid = p.label.pv_header.uuid_string();
        if let Some(i) = facts.iter().position(|f| f.vg.physical_volumes.iter().any(|x| x.id == uuid)) {
            if !seen.contains(&i) {
                seen.push(i);
            }
        }
    }
    for i in 0..facts.len() {
        if !seen.contains(&i) {
            seen.push(i);
        }
    }
    seen.into_iter().rev().map(|i| &facts[i]).collect()
}

/// PVs in label-scan order: by device number where known, else by name.
pub(crate) fn devices_in_scan_order(src: &Source) -> Vec<&PvSource> {
    let mut pvs: Vec<&PvSource> = src.pvs.iter().collect();
    pvs.sort_by(|a, b| {
        (a.devno.unwrap_or((u32::MAX, u32::MAX)), &a.device).cmp(&(b.devno.unwrap_or((u32::MAX, u32::MAX)), &b.device))
    });
    pvs
}

/// PVs as process_each_pv meets them: each VG's PVs in metadata order (VGs in
/// [`process_order`]), then the orphans in scan order.
pub(crate) fn pv_process_order<'s>(src: &'s Source, facts: &[VgFacts<'_>]) -> Vec<&'s PvSource> {
    let mut out: Vec<&PvSource> = Vec::new();
    for f in process_order(src, facts) {
        for pv in &f.vg.physical_volumes {
            if let Some(p) = src.pvs.iter().find(|p| p.label.pv_header.uuid_string() == pv.id) {
                out.push(p);
            }
        }
    }
    for p in devices_in_scan_order(src) {
        if !out.iter().any(|o| std::ptr::eq(*o, p)) {
            out.push(p);
        }
    }
    out
}
