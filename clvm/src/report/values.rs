//! Field values: what lvm2's `_*_disp` functions print for each field, from our model.

use super::data::{area_len, dm_name, has, is_visible, mda_free_sectors, LvState, PvSeg, PvSource, Role, VgFacts};
use super::fields::{FieldDef, Obj};
use super::units::{SuffixType, Units};
use crate::vg::{LogicalVolume, PhysicalVolume, Segment};

/// One report cell: the text and the value it sorts and selects by.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cell {
    pub text: String,
    pub sort: SortVal,
    /// The items of a string-list field (json_std prints them as an array).
    pub items: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SortVal {
    Num(f64),
    Str(String),
}

/// The objects one report row stands for.
#[derive(Clone, Default)]
pub(crate) struct RowCtx<'a> {
    pub pv_src: Option<&'a PvSource>,
    pub pv: Option<&'a PhysicalVolume>,
    pub vg: Option<&'a VgFacts<'a>>,
    pub lv: Option<&'a LogicalVolume>,
    pub seg: Option<&'a Segment>,
    pub pvseg: Option<PvSeg<'a>>,
    pub state: Option<LvState>,
}

pub(crate) struct Ctx {
    pub units: Units,
    /// `--binary` or json_std: binary fields as 1/0/-1.
    pub binary_numeric: bool,
    /// json_std: strict types (vg_mda_copies unmanaged shows 0).
    pub strict: bool,
}

fn s(t: impl Into<String>) -> Cell {
    let t = t.into();
    Cell { sort: SortVal::Str(t.clone()), text: t, items: Vec::new() }
}

fn n(v: u64) -> Cell {
    Cell { text: v.to_string(), sort: SortVal::Num(v as f64), items: Vec::new() }
}

fn i(v: i64) -> Cell {
    Cell { text: v.to_string(), sort: SortVal::Num(v as f64), items: Vec::new() }
}

fn size(cx: &Ctx, sectors: u64) -> Cell {
    Cell { text: cx.units.size(sectors, SuffixType::Unit), sort: SortVal::Num(sectors as f64), items: Vec::new() }
}

fn bin(cx: &Ctx, v: bool, word: &str) -> Cell {
    let text = match (cx.binary_numeric, v) {
        (true, true) => "1".to_owned(),
        (true, false) => "0".to_owned(),
        (false, true) => word.to_owned(),
        (false, false) => String::new(),
    };
    Cell { text, sort: SortVal::Num(if v { 1.0 } else { 0.0 }), items: Vec::new() }
}

fn blank() -> Cell {
    s("")
}

fn list(mut items: Vec<String>, sorted: bool, sep: &str) -> Cell {
    if sorted {
        items.sort();
    }
    let mut c = s(items.join(sep));
    c.items = items;
    c
}

fn tags(extra: &crate::vg::Extra) -> Vec<String> {
    use crate::text::{Node, Value};
    for (_, node) in &extra.nodes {
        if let Node::Pair { key, value: Value::Array(items) } = node {
            if key == "tags" {
                return items
                    .iter()
                    .filter_map(|v| match v {
                        Value::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
            }
        }
    }
    Vec::new()
}

fn extra_str(extra: &crate::vg::Extra, want: &str) -> Option<String> {
    use crate::text::{Node, Value};
    extra.nodes.iter().find_map(|(_, node)| match node {
        Node::Pair { key, value: Value::Str(s) } if key == want => Some(s.clone()),
        _ => None,
    })
}

fn alloc_char(policy: Option<&str>) -> char {
    match policy {
        Some("contiguous") => 'c',
        Some("cling") | Some("cling_by_tags") => 'l',
        Some("normal") => 'n',
        Some("anywhere") => 'a',
        Some("inherit") | None => 'i',
        Some(_) => '-',
    }
}

/// `lv_attr` (lvm2's `lv_attr_dup_with_info_and_seg_status`) for the LVs we model.
pub(crate) fn lv_attr(f: &VgFacts<'_>, lv: &LogicalVolume, state: LvState) -> String {
    let mirror = lv.segments.iter().any(|s| s.segtype == "mirror");
    let raid = lv.segments.iter().any(|s| s.segtype.starts_with("raid"));
    let role = f.role.get(lv.name.as_str()).copied();
    let c0 = if has(&lv.status, "PVMOVE") {
        'p'
    } else if has(&lv.status, "CONVERTING") {
        'c'
    } else if raid {
        if has(&lv.flags, "NOTSYNCED") {
            'R'
        } else {
            'r'
        }
    } else if mirror {
        if has(&lv.flags, "NOTSYNCED") {
            'M'
        } else {
            'm'
        }
    } else if role == Some(Role::Image) {
        // lv_mirror_image_in_sync: only an active mirror can say so.
        match state.active() {
            Some(a) if a.sync_percent.is_none_or(|p| p >= 100.0) => 'i',
            _ => 'I',
        }
    } else if role == Some(Role::Log) {
        'l'
    } else {
        '-'
    };
    let mut c1 = if has(&lv.status, "WRITE") {
        'w'
    } else if has(&lv.status, "READ") {
        'r'
    } else {
        '-'
    };
    if c1 != 'r' && state.active().is_some_and(|a| a.read_only) {
        c1 = 'R';
    }
    let mut c2 = alloc_char(extra_str(&lv.extra, "allocation_policy").as_deref());
    if has(&lv.status, "LOCKED") {
        c2 = c2.to_ascii_uppercase();
    }
    let c3 = if has(&lv.status, "FIXED_MINOR") { 'm' } else { '-' };
    let (c4, c5) = match state {
        LvState::Unknown => ('X', 'X'),
        LvState::Inactive => ('-', '-'),
        LvState::Active(a) => (if a.suspended { 's' } else { 'a' }, if a.open { 'o' } else { '-' }),
    };
    let c6 = if raid {
        'r'
    } else if mirror || role.is_some() || has(&lv.status, "PVMOVE") {
        'm'
    } else {
        '-'
    };
    let partial = lv
        .segments
        .iter()
        .any(|s| s.stripes.iter().any(|a| f.dev_of.get(a.name.as_str()).is_some_and(|d| d == "[unknown]")));
    let c8 = if partial {
        'p'
    } else if raid && state == LvState::Unknown {
        'X'
    } else {
        '-'
    };
    let c9 = if has(&lv.flags, "ACTIVATION_SKIP") { 'k' } else { '-' };
    [c0, c1, c2, c3, c4, c5, c6, '-', c8, c9].iter().collect()
}

fn vg_attr(f: &VgFacts<'_>) -> String {
    let vg = f.vg;
    let missing = f.dev_of.values().any(|d| d == "[unknown]");
    let c5 = if has(&vg.status, "CLUSTERED") {
        'c'
    } else if extra_str(&vg.extra, "lock_type").is_some_and(|t| t != "none" && t != "clvm") {
        's'
    } else {
        '-'
    };
    [
        if has(&vg.status, "WRITE") { 'w' } else { 'r' },
        if has(&vg.status, "RESIZEABLE") { 'z' } else { '-' },
        if has(&vg.status, "EXPORTED") { 'x' } else { '-' },
        if missing { 'p' } else { '-' },
        alloc_char(Some(extra_str(&vg.extra, "allocation_policy").as_deref().unwrap_or("normal"))),
        c5,
    ]
    .iter()
    .collect()
}

fn seg_type_name(seg: &Segment) -> String {
    if seg.segtype == "striped" && seg.stripes.len() == 1 {
        "linear".to_owned()
    } else {
        seg.segtype.clone()
    }
}

fn seg_areas(f: &VgFacts<'_>, seg: &Segment, range: bool) -> Vec<String> {
    let mut out = Vec::new();
    for a in &seg.stripes {
        let len = area_len(seg);
        out.push(if range {
            format!("{}:{}-{}", f.area_name(&a.name), a.start, (a.start + len).saturating_sub(1))
        } else {
            format!("{}({})", f.area_name(&a.name), a.start)
        });
    }
    for a in &seg.mirrors {
        let len = f.lv_extents(&a.name);
        out.push(if range {
            format!("{}:{}-{}", a.name, 0, len.saturating_sub(1))
        } else {
            format!("{}({})", a.name, 0)
        });
    }
    out
}

/// `seg_le_ranges`: like `seg_pe_ranges`, hidden LVs in brackets.
fn seg_le_ranges(f: &VgFacts<'_>, seg: &Segment) -> Vec<String> {
    let mut out: Vec<String> = seg
        .stripes
        .iter()
        .map(|a| format!("{}:{}-{}", f.area_name(&a.name), a.start, (a.start + area_len(seg)).saturating_sub(1)))
        .collect();
    for a in &seg.mirrors {
        let name = f.vg.lv(&a.name).map(lv_display_name).unwrap_or_else(|| a.name.clone());
        out.push(format!("{name}:0-{}", f.lv_extents(&a.name).saturating_sub(1)));
    }
    out
}

fn lv_display_name(lv: &LogicalVolume) -> String {
    if is_visible(lv) {
        lv.name.clone()
    } else {
        format!("[{}]", lv.name)
    }
}

fn mirror_log_of(lv: &LogicalVolume) -> Option<&str> {
    lv.segments.iter().find_map(|s| s.mirror_log.as_deref())
}

/// The value of `f` for a row, or None when the row has no object the field needs (lvm2 then
/// reports the orphan/empty form, which we render blank).
pub(crate) fn value(f: &FieldDef, r: &RowCtx<'_>, cx: &Ctx) -> Cell {
    let ext = r.vg.map(|v| v.vg.extent_size).unwrap_or(0);
    let pv_size_sectors = |r: &RowCtx<'_>| -> u64 {
        match (r.pv, r.pv_src) {
            (Some(p), _) if p.pe_count > 0 => p.pe_count * ext,
            (Some(p), _) => p.dev_size.unwrap_or(0),
            (None, Some(src)) => src.label.pv_header.device_size / 512,
            (None, None) => 0,
        }
    };
    let pv_alloc = |r: &RowCtx<'_>| -> u64 {
        match (r.pv, r.vg) {
            (Some(p), Some(v)) => v.alloc.get(p.name.as_str()).copied().unwrap_or(0),
            _ => 0,
        }
    };
    match f.id {
        // ---- label / PV
        "pv_name" => s(r
            .pv_src
            .map(|p| p.device.clone())
            .or_else(|| r.pv.and_then(|p| r.vg.map(|v| v.dev_of.get(p.name.as_str()).cloned().unwrap_or_default())))
            .unwrap_or_default()),
        "pv_fmt" => s(if r.pv_src.is_some() || r.pv.is_some() { "lvm2" } else { "" }),
        "pv_uuid" => s(r
            .pv
            .map(|p| p.id.clone())
            .or_else(|| r.pv_src.map(|p| p.label.pv_header.uuid_string()))
            .unwrap_or_default()),
        "dev_size" => size(cx, r.pv_src.map(|p| p.dev_size / 512).unwrap_or(0)),
        "pv_major" => s(r.pv_src.and_then(|p| p.devno).map(|d| d.0.to_string()).unwrap_or_default()),
        "pv_minor" => s(r.pv_src.and_then(|p| p.devno).map(|d| d.1.to_string()).unwrap_or_default()),
        "pv_mda_free" => size(cx, r.pv_src.and_then(|p| p.mdas.iter().map(mda_free_sectors).min()).unwrap_or(0)),
        "pv_mda_size" => size(cx, r.pv_src.and_then(|p| p.mdas.iter().map(|m| m.size / 512).min()).unwrap_or(0)),
        "pv_ext_vsn" => match r.pv_src {
            Some(p) => n(p.label.pv_header.extension.as_ref().map(|e| u64::from(e.version)).unwrap_or(0)),
            None => blank(),
        },
        "pe_start" => size(
            cx,
            r.pv.map(|p| p.pe_start)
                .or_else(|| r.pv_src.and_then(|p| p.label.pv_header.data_areas.first().map(|d| d.offset / 512)))
                .unwrap_or(0),
        ),
        "pv_size" => size(cx, pv_size_sectors(r)),
        "pv_free" => size(
            cx,
            match r.pv {
                Some(p) => p.pe_count.saturating_sub(pv_alloc(r)) * ext,
                None => pv_size_sectors(r),
            },
        ),
        "pv_used" => size(cx, pv_alloc(r) * ext),
        "pv_attr" => s(match r.pv {
            Some(p) => format!(
                "{}{}{}",
                if has(&p.status, "ALLOCATABLE") { 'a' } else { '-' },
                if r.vg.is_some_and(|v| has(&v.vg.status, "EXPORTED")) { 'x' } else { '-' },
                if has(&p.flags, "MISSING") || r.pv_src.is_none() { 'm' } else { '-' }
            ),
            None => "---".to_owned(),
        }),
        "pv_allocatable" => bin(cx, r.pv.is_some_and(|p| has(&p.status, "ALLOCATABLE")), "allocatable"),
        "pv_exported" => bin(cx, r.vg.is_some_and(|v| has(&v.vg.status, "EXPORTED")), "exported"),
        "pv_missing" => bin(cx, r.pv.is_some() && r.pv_src.is_none(), "missing"),
        "pv_pe_count" => n(r.pv.map(|p| p.pe_count).unwrap_or(0)),
        "pv_pe_alloc_count" => n(pv_alloc(r)),
        "pv_tags" => list(r.pv.map(|p| tags(&p.extra)).unwrap_or_default(), true, ","),
        "pv_mda_count" => n(r.pv_src.map(|p| p.mdas.len() as u64).unwrap_or(0)),
        "pv_mda_used_count" => n(r.pv_src.map(|p| p.mdas.len() as u64).unwrap_or(0)),
        "pv_ba_start" => size(cx, 0),
        "pv_ba_size" => size(cx, 0),
        "pv_in_use" => bin(cx, r.pv.is_some(), "used"),
        "pv_duplicate" => bin(cx, false, "duplicate"),
        "pv_device_id" | "pv_device_id_type" => blank(),
        // ---- VG
        "vg_fmt" => s("lvm2"),
        "vg_uuid" => s(r.vg.map(|v| v.vg.id.clone()).unwrap_or_default()),
        "vg_name" => s(r.vg.map(|v| v.vg.name.clone()).unwrap_or_default()),
        "vg_attr" => s(r.vg.map(vg_attr).unwrap_or_else(|| "r-----".to_owned())),
        "vg_permissions" => s(match r.vg {
            Some(v) if has(&v.vg.status, "WRITE") => "writeable",
            Some(_) | None => "read-only",
        }),
        "vg_extendable" => bin(cx, r.vg.is_some_and(|v| has(&v.vg.status, "RESIZEABLE")), "extendable"),
        "vg_exported" => bin(cx, r.vg.is_some_and(|v| has(&v.vg.status, "EXPORTED")), "exported"),
        "vg_autoactivation" => bin(cx, r.vg.is_none_or(|v| !has(&v.vg.flags, "NOAUTOACTIVATE")), "enabled"),
        "vg_partial" => bin(cx, r.vg.is_some_and(|v| v.dev_of.values().any(|d| d == "[unknown]")), "partial"),
        "vg_allocation_policy" => s(r
            .vg
            .map(|v| extra_str(&v.vg.extra, "allocation_policy").unwrap_or_else(|| "normal".into()))
            .unwrap_or_else(|| "unknown".into())),
        "vg_clustered" => bin(cx, r.vg.is_some_and(|v| has(&v.vg.status, "CLUSTERED")), "clustered"),
        "vg_shared" => bin(
            cx,
            r.vg.is_some_and(|v| extra_str(&v.vg.extra, "lock_type").is_some_and(|t| t != "none" && t != "clvm")),
            "shared",
        ),
        "vg_size" => size(cx, r.vg.map(|v| v.extent_count() * v.vg.extent_size).unwrap_or(0)),
        "vg_free" => size(cx, r.vg.map(|v| v.free_count() * v.vg.extent_size).unwrap_or(0)),
        "vg_sysid" | "vg_systemid" => s(r.vg.and_then(|v| extra_str(&v.vg.extra, "system_id")).unwrap_or_default()),
        "vg_lock_type" => s(r.vg.and_then(|v| extra_str(&v.vg.extra, "lock_type")).unwrap_or_default()),
        "vg_lock_args" => s(r.vg.and_then(|v| extra_str(&v.vg.extra, "lock_args")).unwrap_or_default()),
        "vg_extent_size" => size(cx, ext),
        "vg_extent_count" => n(r.vg.map(|v| v.extent_count()).unwrap_or(0)),
        "vg_free_count" => n(r.vg.map(|v| v.free_count()).unwrap_or(0)),
        "max_lv" => n(r.vg.map(|v| v.vg.max_lv).unwrap_or(0)),
        "max_pv" => n(r.vg.map(|v| v.vg.max_pv).unwrap_or(0)),
        "pv_count" => n(r.vg.map(|v| v.vg.physical_volumes.len() as u64).unwrap_or(0)),
        "vg_missing_pv_count" => {
            n(r.vg.map(|v| v.dev_of.values().filter(|d| *d == "[unknown]").count() as u64).unwrap_or(0))
        }
        "lv_count" => n(r.vg.map(|v| v.visible_lvs()).unwrap_or(0)),
        "snap_count" => n(0),
        "vg_seqno" => n(r.vg.map(|v| v.vg.seqno).unwrap_or(0)),
        "vg_tags" => list(r.vg.map(|v| tags(&v.vg.extra)).unwrap_or_default(), true, ","),
        "vg_profile" => blank(),
        "vg_mda_count" => n(r.vg.map(|v| v.mdas().count() as u64).unwrap_or(0)),
        "vg_mda_used_count" => n(r.vg.map(|v| v.mdas().count() as u64).unwrap_or(0)),
        "vg_mda_free" => size(cx, r.vg.and_then(|v| v.mdas().map(mda_free_sectors).min()).unwrap_or(0)),
        "vg_mda_size" => size(cx, r.vg.and_then(|v| v.mdas().map(|m| m.size / 512).min()).unwrap_or(0)),
        "vg_mda_copies" => match r.vg.and_then(|v| v.vg.metadata_copies) {
            Some(c) if c > 0 => n(c),
            _ if cx.strict => n(0),
            _ => s("unmanaged"),
        },
        _ => lv_value(f, r, cx),
    }
}

/// An undefined binary value.
fn unknown(cx: &Ctx) -> Cell {
    let text = if cx.binary_numeric { "-1" } else { "unknown" };
    Cell { text: text.to_owned(), sort: SortVal::Num(-1.0), items: Vec::new() }
}

fn lv_value(f: &FieldDef, r: &RowCtx<'_>, cx: &Ctx) -> Cell {
    let (Some(v), Some(lv)) = (r.vg, r.lv) else {
        return match &r.pvseg {
            Some(ps) if r.seg.is_none() && !f.id.starts_with("pvseg_") => free_value(f, ps.len, r, cx),
            _ => seg_value(f, r, cx),
        };
    };
    let state = r.state.unwrap_or(LvState::Unknown);
    let act = state.active();
    let vgname = &v.vg.name;
    let mirror = lv.segments.iter().any(|sg| sg.segtype == "mirror");
    let role = v.role.get(lv.name.as_str()).copied();
    // A binary kernel fact: "unknown" unless the LV is active.
    let kbin = |val: bool, word: &str| match act {
        Some(_) => bin(cx, val, word),
        None => unknown(cx),
    };
    // A binary activation fact: "unknown" only when activation is off.
    let abin = |val: bool, word: &str| match state {
        LvState::Unknown => unknown(cx),
        _ => bin(cx, val, word),
    };
    match f.id {
        "lv_uuid" => s(lv.id.clone()),
        "lv_name" => Cell { text: lv_display_name(lv), sort: SortVal::Str(lv.name.clone()), items: Vec::new() },
        "lv_full_name" => s(format!("{vgname}/{}", lv.name)),
        "lv_path" => s(if is_visible(lv) { format!("/dev/{vgname}/{}", lv.name) } else { String::new() }),
        "lv_dm_path" => s(format!("/dev/mapper/{}", dm_name(vgname, &lv.name))),
        "lv_parent" => s(v
            .vg
            .logical_volumes
            .iter()
            .find(|p| {
                p.segments.iter().any(|sg| {
                    sg.mirrors.iter().any(|a| a.name == lv.name) || sg.mirror_log.as_deref() == Some(&lv.name)
                })
            })
            .map(|p| p.name.clone())
            .unwrap_or_default()),
        "lv_layout" => {
            let striped = lv.segments.iter().any(|sg| sg.stripes.len() > 1);
            s(if mirror {
                "mirror"
            } else if striped {
                "striped"
            } else {
                "linear"
            })
        }
        "lv_role" => s(match role {
            Some(Role::Image) => "private,mirror,image",
            Some(Role::Log) => "private,mirror,log",
            None => "public",
        }),
        "lv_initial_image_sync" => bin(cx, mirror && !has(&lv.flags, "NOTSYNCED"), "initial image sync"),
        "lv_image_synced" => bin(
            cx,
            role == Some(Role::Image) && act.is_some_and(|a| a.sync_percent.is_none_or(|p| p >= 100.0)),
            "image synced",
        ),
        "lv_merging" => bin(cx, false, "merging"),
        "lv_converting" => bin(cx, has(&lv.status, "CONVERTING"), "converting"),
        "lv_allocation_policy" => s(extra_str(&lv.extra, "allocation_policy").unwrap_or_else(|| "inherit".into())),
        "lv_allocation_locked" => bin(cx, has(&lv.status, "LOCKED"), "allocation locked"),
        "lv_fixed_minor" => bin(cx, has(&lv.status, "FIXED_MINOR"), "fixed minor"),
        "lv_skip_activation" => bin(cx, has(&lv.flags, "ACTIVATION_SKIP"), "skip activation"),
        "lv_autoactivation" => bin(cx, !has(&lv.flags, "NOAUTOACTIVATE"), "enabled"),
        "lv_when_full" => blank(),
        "lv_attr" => s(lv_attr(v, lv, state)),
        "lv_active" => s(match state {
            LvState::Unknown => "unknown",
            LvState::Inactive => "",
            LvState::Active(_) => "active",
        }),
        "lv_active_locally" => abin(act.is_some(), "active locally"),
        "lv_active_remotely" => abin(false, "active remotely"),
        "lv_active_exclusively" => abin(act.is_some(), "active exclusively"),
        "lv_major" | "lv_minor" => i(-1),
        "lv_read_ahead" => Cell { text: "auto".into(), sort: SortVal::Num(u64::MAX as f64), items: Vec::new() },
        "lv_size" => size(cx, lv.extent_count() * v.vg.extent_size),
        "seg_count" => n(lv.segments.len() as u64),
        "raidintegrityblocksize" | "writecache_block_size" => i(-1),
        "lv_kernel_major" => i(act.and_then(|a| a.devno).map(|d| i64::from(d.0)).unwrap_or(-1)),
        "lv_kernel_minor" => i(act.and_then(|a| a.devno).map(|d| i64::from(d.1)).unwrap_or(-1)),
        "lv_kernel_read_ahead" => match act.and_then(|a| a.read_ahead) {
            Some(ra) => size(cx, ra),
            None => i(-1),
        },
        "lv_permissions" => s(if has(&lv.status, "WRITE") {
            match act {
                None => "unknown",
                Some(a) if a.read_only => "read-only-override",
                Some(_) => "writeable",
            }
        } else if has(&lv.status, "READ") {
            "read-only"
        } else {
            "unknown"
        }),
        "lv_suspended" => kbin(act.is_some_and(|a| a.suspended), "suspended"),
        "lv_live_table" => kbin(act.is_some(), "live table present"),
        "lv_inactive_table" => kbin(false, "inactive table present"),
        "lv_device_open" => kbin(act.is_some_and(|a| a.open), "open"),
        "lv_check_needed" | "lv_merge_failed" | "lv_snapshot_invalid" => unknown(cx),
        "lv_tags" => list(tags(&lv.extra), true, ","),
        "lv_time" => match lv.creation_time.filter(|t| *t != 0) {
            Some(t) => Cell { text: super::display::format_time(t), sort: SortVal::Num(t as f64), items: Vec::new() },
            None => blank(),
        },
        "lv_host" => s(lv.creation_host.clone().unwrap_or_default()),
        "lv_modules" => {
            let mut m: Vec<String> = lv
                .segments
                .iter()
                .filter_map(|sg| match sg.segtype.as_str() {
                    "mirror" => Some("mirror".to_owned()),
                    t if t.starts_with("raid") => Some("raid".to_owned()),
                    _ => None,
                })
                .collect();
            m.dedup();
            list(m, true, ",")
        }
        "lv_historical" => bin(cx, false, "historical"),
        "mirror_log" => s(mirror_log_of(lv)
            .map(|l| v.vg.lv(l).map(lv_display_name).unwrap_or_else(|| l.to_owned()))
            .unwrap_or_default()),
        "mirror_log_uuid" => s(mirror_log_of(lv).and_then(|l| v.vg.lv(l)).map(|l| l.id.clone()).unwrap_or_default()),
        "copy_percent" | "sync_percent" => match act.and_then(|a| a.sync_percent) {
            Some(p) if mirror => Cell { text: format!("{p:.2}"), sort: SortVal::Num(p), items: Vec::new() },
            _ => blank(),
        },
        id if f.obj == Obj::Lvs || f.obj == Obj::LvsInfo || f.obj == Obj::LvsStatus => {
            let _ = id;
            blank()
        }
        _ => seg_value(f, r, cx),
    }
}

fn seg_value(f: &FieldDef, r: &RowCtx<'_>, cx: &Ctx) -> Cell {
    if let Some(ps) = &r.pvseg {
        match f.id {
            "pvseg_start" => return n(ps.start),
            "pvseg_size" => return n(ps.len),
            _ => {}
        }
    }
    let (Some(v), Some(seg)) = (r.vg, r.seg) else {
        return blank();
    };
    let ext = v.vg.extent_size;
    match f.id {
        "segtype" => s(seg_type_name(seg)),
        "stripes" | "data_stripes" => n((seg.stripes.len() + seg.mirrors.len()) as u64),
        "stripe_size" => size(cx, if seg.stripes.len() > 1 { seg.stripe_size.unwrap_or(0) } else { 0 }),
        "region_size" => size(
            cx,
            if seg.segtype == "mirror" || seg.segtype.starts_with("raid") { seg.region_size.unwrap_or(0) } else { 0 },
        ),
        "chunk_size" => size(cx, 0),
        "seg_start" => size(cx, seg.start_extent * ext),
        "seg_start_pe" => n(seg.start_extent),
        "seg_size" => size(cx, seg.extent_count * ext),
        "seg_size_pe" => n(seg.extent_count),
        "seg_tags" => list(tags(&seg.extra), true, ","),
        "seg_pe_ranges" => list(seg_areas(v, seg, true), false, " "),
        "seg_le_ranges" => list(seg_le_ranges(v, seg), false, ","),
        "data_copies" => n(1),
        "zero" => unknown(cx),
        "devices" => list(seg_areas(v, seg, false), false, ","),
        "seg_monitor" => blank(),
        _ => blank(),
    }
}

/// Fields of a free PV segment: lvm2 reports it through a nameless LV with a `free` segment.
fn free_value(f: &FieldDef, len: u64, r: &RowCtx<'_>, cx: &Ctx) -> Cell {
    let ext = r.vg.map(|v| v.vg.extent_size).unwrap_or(0);
    match f.id {
        "lv_size" | "seg_start" | "stripe_size" | "region_size" | "chunk_size" => size(cx, 0),
        "seg_size" => size(cx, len * ext),
        "seg_size_pe" => n(len),
        "seg_count" | "seg_start_pe" | "stripes" | "data_stripes" => n(0),
        "segtype" => s("free"),
        "lv_major" | "lv_minor" => i(-1),
        _ => blank(),
    }
}
