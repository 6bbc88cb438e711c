//! `pvdisplay`, `vgdisplay`, `lvdisplay` (lvm2's `lib/display/display.c`): the full layout,
//! `-c` (colon-separated) and `-s` (short).

use super::data::{area_len, has, is_visible, process_order, pv_process_order, pv_segments, LvState, Source, VgFacts};
use super::engine::{Output, ReportError};
use super::units::{SuffixType, Units};
use crate::vg::LogicalVolume;

/// Which display command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayCommand {
    /// `pvdisplay`
    Pv,
    /// `vgdisplay`
    Vg,
    /// `lvdisplay`
    Lv,
}

/// A display command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayArgs {
    /// pvdisplay, vgdisplay or lvdisplay.
    pub command: DisplayCommand,
    /// `-c/--colon`.
    pub colon: bool,
    /// `-s/--short`.
    pub short: bool,
    /// `--units`.
    pub units: Option<String>,
    /// PV devices, VG names, or VG / VG/LV names.
    pub names: Vec<String>,
    /// `-a` for lvdisplay: hidden LVs too.
    pub all: bool,
    /// `-m/--maps` (pvdisplay, lvdisplay): the segment maps after each block.
    pub maps: bool,
    /// `-v` (vgdisplay): each LV and a short block per PV after the VG.
    pub verbose: bool,
}

impl DisplayArgs {
    /// The command with no flags.
    pub fn new(command: DisplayCommand) -> DisplayArgs {
        DisplayArgs {
            command,
            colon: false,
            short: false,
            units: None,
            names: Vec::new(),
            all: false,
            maps: false,
            verbose: false,
        }
    }

    /// Parses `-c/--colon`, `-s/--short`, `-a/--all`, `--units U`; other words are names.
    pub fn parse<S: AsRef<str>>(command: DisplayCommand, argv: &[S]) -> Result<DisplayArgs, ReportError> {
        let mut a = DisplayArgs::new(command);
        let mut it = argv.iter().map(AsRef::as_ref);
        while let Some(arg) = it.next() {
            match arg {
                "-c" | "--colon" => a.colon = true,
                "-s" | "--short" => a.short = true,
                "-a" | "--all" => a.all = true,
                "-m" | "--maps" => a.maps = true,
                "-v" | "--verbose" => a.verbose = true,
                "--units" => {
                    a.units = Some(it.next().ok_or_else(|| ReportError::BadArgument(arg.to_owned()))?.to_owned())
                }
                f if f.starts_with("--units=") => a.units = Some(f["--units=".len()..].to_owned()),
                f if f.starts_with('-') && f.len() > 1 => return Err(ReportError::BadArgument(f.to_owned())),
                name => a.names.push(name.to_owned()),
            }
        }
        Ok(a)
    }
}

const LVM_READ: u64 = 0x100;
const LVM_WRITE: u64 = 0x200;
const EXPORTED_VG: u64 = 0x2;
const RESIZEABLE_VG: u64 = 0x4;
const ALLOCATABLE_PV: u64 = 0x8;
const CLUSTERED: u64 = 0x400;

fn vg_status_bits(status: &[String]) -> u64 {
    let mut b = 0;
    for s in status {
        b |= match s.as_str() {
            "READ" => LVM_READ,
            "WRITE" => LVM_WRITE,
            "EXPORTED" => EXPORTED_VG,
            "RESIZEABLE" => RESIZEABLE_VG,
            "CLUSTERED" => CLUSTERED,
            _ => 0,
        };
    }
    b
}

/// `%Y-%m-%d %T %z` in UTC.
pub(crate) fn format_time(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} +0000", secs / 3600, secs / 60 % 60, secs % 60)
}

fn alloc_string(lv: &LogicalVolume) -> String {
    use crate::text::{Node, Value};
    lv.extra
        .nodes
        .iter()
        .find_map(|(_, n)| match n {
            Node::Pair { key, value: Value::Str(s) } if key == "allocation_policy" => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "inherit".to_owned())
}

/// `lvdisplay_full` for one LV (without its trailing blank line).
fn lv_full(p: &mut dyn FnMut(&str), f: &VgFacts<'_>, lv: &LogicalVolume, st: LvState, sz: &dyn Fn(u64) -> String) {
    let vg = f.vg;
    let inkernel = st.active().is_some();
    let size = lv.extent_count() * vg.extent_size;
    p("--- Logical volume ---");
    if is_visible(lv) {
        p(&format!("LV Path                /dev/{}/{}", vg.name, lv.name));
        p(&format!("LV Name                {}", lv.name));
    } else {
        p(&format!("Internal LV Name       {}", lv.name));
    }
    p(&format!("VG Name                {}", vg.name));
    p(&format!("LV UUID                {}", lv.id));
    let access = match (has(&lv.status, "WRITE"), st.active().is_some_and(|a| a.read_only)) {
        (true, true) => "read/write (activated read only)",
        (true, false) => "read/write",
        _ => "read only",
    };
    p(&format!("LV Write Access        {access}"));
    p(&format!(
        "LV Creation host, time {}, {}",
        lv.creation_host.clone().unwrap_or_default(),
        lv.creation_time.filter(|t| *t != 0).map(format_time).unwrap_or_default()
    ));
    let partial = lv
        .segments
        .iter()
        .any(|s| s.stripes.iter().any(|a| f.dev_of.get(a.name.as_str()).is_some_and(|d| d == "[unknown]")));
    if let Some(a) = st.active().filter(|a| a.suspended) {
        let _ = a;
        p("LV Status              suspended");
    } else if st != LvState::Unknown {
        p(&format!(
            "LV Status              {}available{}",
            if inkernel { "" } else { "NOT " },
            if partial { " (partial)" } else { "" }
        ));
    }
    if let Some(a) = st.active() {
        p(&format!("# open                 {}", u8::from(a.open)));
    }
    p(&format!("LV Size                {}", sz(size)));
    p(&format!("Current LE             {}", lv.extent_count()));
    if let Some(m) = lv.segments.iter().find(|s| s.segtype == "mirror") {
        p(&format!("Mirrored volumes       {}", m.mirrors.len()));
    }
    p(&format!("Segments               {}", lv.segments.len()));
    p(&format!("Allocation             {}", alloc_string(lv)));
    p("Read ahead sectors     auto");
    if let Some(a) = st.active() {
        if let Some(ra) = a.read_ahead {
            p(&format!("- currently set to     {ra}"));
        }
        if let Some((ma, mi)) = a.devno {
            p(&format!("Block device           {ma}:{mi}"));
        }
    }
}

/// `lvdisplay_segments`: the `--- Segments ---` map of one LV.
fn lv_segments(p: &mut dyn FnMut(&str), f: &VgFacts<'_>, lv: &LogicalVolume, st: LvState, sz: &dyn Fn(u64) -> String) {
    p("--- Segments ---");
    for seg in &lv.segments {
        p(&format!(
            "Logical extents {} to {}:",
            seg.start_extent,
            (seg.start_extent + seg.extent_count).saturating_sub(1)
        ));
        let stripe = |p: &mut dyn FnMut(&str), i: usize, pre: &str| {
            if let Some(a) = seg.stripes.get(i) {
                let dev = f.dev_of.get(a.name.as_str()).cloned().unwrap_or_else(|| "Missing".to_owned());
                p(&format!("{pre}Physical volume\t{dev}"));
                p(&format!("{pre}Physical extents\t{} to {}", a.start, (a.start + area_len(seg)).saturating_sub(1)));
            } else if let Some(a) = seg.mirrors.get(i) {
                p(&format!("{pre}Logical volume\t{}", a.name));
                p(&format!("{pre}Logical extents\t{} to {}", a.start, (a.start + area_len(seg)).saturating_sub(1)));
            }
        };
        if seg.segtype == "mirror" {
            p("  Type\t\tmirror");
            p(&format!(
                "  Monitoring\t\t{}",
                match st {
                    LvState::Unknown => "",
                    LvState::Inactive => "not monitored",
                    LvState::Active(_) => "monitored",
                }
            ));
            p(&format!("  Mirrors\t\t{}", seg.mirrors.len()));
            p(&format!("  Mirror size\t\t{}", seg.extent_count));
            if let Some(l) = &seg.mirror_log {
                p(&format!("  Mirror log volume\t{l}"));
            }
            if let Some(r) = seg.region_size.filter(|r| *r > 0) {
                p(&format!("  Mirror region size\t{}", sz(r)));
            }
            p("  Mirror original:");
            stripe(p, 0, "    ");
            p("  Mirror destinations:");
            for i in 1..seg.mirrors.len() {
                stripe(p, i, "    ");
            }
        } else if seg.segtype == "striped" {
            p(&format!("  Type\t\t{}", if seg.stripes.len() == 1 { "linear" } else { "striped" }));
            if seg.stripes.len() == 1 {
                stripe(p, 0, "  ");
            } else {
                p(&format!("  Stripes\t\t{}", seg.stripes.len()));
                p(&format!("  Stripe size\t\t{}", sz(seg.stripe_size.unwrap_or(0))));
                for i in 0..seg.stripes.len() {
                    p(&format!("  Stripe {i}:"));
                    stripe(p, i, "    ");
                }
            }
        } else {
            p(&format!("  Type\t\t{}", seg.segtype));
        }
        p(" ");
    }
    p(" ");
}

/// Renders a display command.
pub fn display(args: &DisplayArgs, src: &Source, state: &dyn Fn(&str, &str) -> LvState) -> Result<Output, ReportError> {
    let units = match &args.units {
        Some(u) => Units::parse(u)?,
        None => Units::default(),
    };
    let sz = |sectors: u64| units.size(sectors, SuffixType::Short);
    let facts: Vec<VgFacts<'_>> = src.vgs.iter().map(|v| VgFacts::new(v, src)).collect();
    let vg_order: Vec<&VgFacts<'_>> = process_order(src, &facts);
    let mut out = Output::default();
    let mut p = |s: &str| {
        out.stdout.push_str("  ");
        out.stdout.push_str(s);
        out.stdout.push('\n');
    };
    match args.command {
        DisplayCommand::Pv => {
            for pv_src in pv_process_order(src, &facts) {
                if !args.names.is_empty() && !args.names.contains(&pv_src.device) {
                    continue;
                }
                let uuid = pv_src.label.pv_header.uuid_string();
                let f = facts.iter().find(|f| f.vg.physical_volumes.iter().any(|x| x.id == uuid));
                let pv = f.and_then(|f| f.vg.physical_volumes.iter().find(|x| x.id == uuid));
                let dev_sectors = pv_src.label.pv_header.device_size / 512;
                let (vg_name, size, pe_size, pe_count, alloc, allocatable, pe_start) = match (f, pv) {
                    (Some(f), Some(pv)) => (
                        f.vg.name.clone(),
                        pv.dev_size.unwrap_or(dev_sectors),
                        f.vg.extent_size,
                        pv.pe_count,
                        f.alloc.get(pv.name.as_str()).copied().unwrap_or(0),
                        has(&pv.status, "ALLOCATABLE"),
                        pv.pe_start,
                    ),
                    _ => (String::new(), dev_sectors, 0, 0, 0, false, 0),
                };
                let exported = f.is_some_and(|f| has(&f.vg.status, "EXPORTED"));
                if args.short {
                    let free = if pe_size == 0 { size } else { (pe_count - alloc) * pe_size };
                    p(&format!("Device \"{}\" has a capacity of {}", pv_src.device, sz(free)));
                    continue;
                }
                if pe_size == 0 {
                    p(&format!("\"{}\" is a new physical volume of \"{}\"", pv_src.device, sz(size)));
                }
                if args.colon {
                    let status = if allocatable { ALLOCATABLE_PV } else { 0 } | if exported { EXPORTED_VG } else { 0 };
                    p(&format!(
                        "{}:{}:{}:-1:{}:{}:-1:{}:{}:{}:{}:{}",
                        pv_src.device,
                        vg_name,
                        size,
                        status,
                        status & ALLOCATABLE_PV,
                        pe_size / 2,
                        pe_count,
                        pe_count - alloc,
                        alloc,
                        uuid
                    ));
                    continue;
                }
                p(&format!("--- {}Physical volume ---", if pe_size > 0 { "" } else { "NEW " }));
                p(&format!("PV Name               {}", pv_src.device));
                p(&format!("VG Name               {}{}", vg_name, if exported { " (exported)" } else { "" }));
                let data = pe_count * pe_size;
                let (pvsize, unusable) = if size > data + pe_start {
                    (size, size - data)
                } else {
                    (data + pe_start, data + pe_start - size)
                };
                if data > 0 {
                    p(&format!("PV Size               {} / not usable {}", sz(pvsize), sz(unusable)));
                } else {
                    p(&format!("PV Size               {}", sz(pvsize)));
                }
                let free = pe_count - alloc;
                if pe_count > 0 && allocatable {
                    p(&format!("Allocatable           yes {}", if free == 0 { "(but full)" } else { "" }));
                } else {
                    p("Allocatable           NO");
                }
                p(&format!("PE Size               {}", sz(pe_size)));
                p(&format!("Total PE              {pe_count}"));
                p(&format!("Free PE               {free}"));
                p(&format!("Allocated PE          {alloc}"));
                p(&format!("PV UUID               {uuid}"));
                p(" ");
                if args.maps {
                    if pe_size > 0 {
                        p("--- Physical Segments ---");
                    }
                    if let (Some(f), Some(pv)) = (f, pv) {
                        for ps in pv_segments(f, &pv.name, pv.pe_count) {
                            p(&format!("Physical extent {} to {}:", ps.start, (ps.start + ps.len).saturating_sub(1)));
                            match ps.used {
                                Some((lv, seg)) => {
                                    p(&format!("  Logical volume\t/dev/{}/{}", f.vg.name, lv.name));
                                    p(&format!(
                                        "  Logical extents\t{} to {}",
                                        seg.start_extent,
                                        (seg.start_extent + seg.extent_count).saturating_sub(1)
                                    ));
                                }
                                None => p("  FREE"),
                            }
                        }
                    }
                    p(" ");
                }
            }
        }
        DisplayCommand::Vg => {
            for f in &vg_order {
                let vg = f.vg;
                if !args.names.is_empty() && !args.names.contains(&vg.name) {
                    continue;
                }
                let missing = f.dev_of.values().filter(|d| *d == "[unknown]").count() as u64;
                let pv_count = vg.physical_volumes.len() as u64;
                let total = f.extent_count();
                let free = f.free_count();
                let open = vg
                    .logical_volumes
                    .iter()
                    .filter(|l| is_visible(l) && state(&vg.name, &l.name).active().is_some_and(|a| a.open))
                    .count();
                if args.short {
                    p(&format!(
                        "\"{}\" {} [{} used / {} free]",
                        vg.name,
                        sz(total * vg.extent_size),
                        sz((total - free) * vg.extent_size),
                        sz(free * vg.extent_size)
                    ));
                    continue;
                }
                if args.colon {
                    let bits = vg_status_bits(&vg.status);
                    let access = match bits & (LVM_READ | LVM_WRITE) {
                        x if x == LVM_READ | LVM_WRITE => "r/w",
                        LVM_READ => "r",
                        LVM_WRITE => "w",
                        _ => "",
                    };
                    p(&format!(
                        "{}:{}:{}:-1:{}:{}:{}:-1:{}:{}:{}:{}:{}:{}:{}:{}:{}",
                        vg.name,
                        access,
                        bits,
                        vg.max_lv,
                        f.visible_lvs(),
                        open,
                        vg.max_pv,
                        pv_count,
                        pv_count - missing,
                        total * vg.extent_size / 2,
                        vg.extent_size / 2,
                        total,
                        total - free,
                        free,
                        vg.id
                    ));
                    continue;
                }
                let bits = vg_status_bits(&vg.status);
                p("--- Volume group ---");
                p(&format!("VG Name               {}", vg.name));
                p("System ID             ");
                p("Format                lvm2");
                p(&format!("Metadata Areas        {}", f.mdas().count()));
                p(&format!("Metadata Sequence No  {}", vg.seqno));
                let access = bits & (LVM_READ | LVM_WRITE);
                p(&format!(
                    "VG Access             {}",
                    match access {
                        x if x == LVM_READ | LVM_WRITE => "read/write",
                        LVM_READ => "read",
                        LVM_WRITE => "write",
                        _ => "error",
                    }
                ));
                p(&format!(
                    "VG Status             {}{}resizable",
                    if bits & EXPORTED_VG != 0 { "exported/" } else { "" },
                    if bits & RESIZEABLE_VG != 0 { "" } else { "NOT " }
                ));
                if bits & CLUSTERED != 0 {
                    p("Clustered             yes");
                    p("Shared                no");
                }
                p(&format!("MAX LV                {}", vg.max_lv));
                p(&format!("Cur LV                {}", f.visible_lvs()));
                p(&format!("Open LV               {open}"));
                p(&format!("Max PV                {}", vg.max_pv));
                p(&format!("Cur PV                {pv_count}"));
                p(&format!("Act PV                {}", pv_count - missing));
                p(&format!("VG Size               {}", sz(total * vg.extent_size)));
                p(&format!("PE Size               {}", sz(vg.extent_size)));
                p(&format!("Total PE              {total}"));
                p(&format!("Alloc PE / Size       {} / {}", total - free, sz((total - free) * vg.extent_size)));
                p(&format!("Free  PE / Size       {} / {}", free, sz(free * vg.extent_size)));
                p(&format!("VG UUID               {}", vg.id));
                p(" ");
                if args.verbose {
                    for lv in vg.logical_volumes.iter().filter(|l| is_visible(l)) {
                        lv_full(&mut p, f, lv, state(&vg.name, &lv.name), &sz);
                        p(" ");
                    }
                    p("--- Physical volumes ---");
                    for pv in &vg.physical_volumes {
                        let dev = f.dev_of.get(pv.name.as_str()).cloned().unwrap_or_default();
                        let alloc = f.alloc.get(pv.name.as_str()).copied().unwrap_or(0);
                        p(&format!("PV Name               {dev}     "));
                        p(&format!("PV UUID               {}", pv.id));
                        p(&format!(
                            "PV Status             {}allocatable",
                            if has(&pv.status, "ALLOCATABLE") { "" } else { "NOT " }
                        ));
                        p(&format!("Total PE / Free PE    {} / {}", pv.pe_count, pv.pe_count - alloc));
                        p(" ");
                    }
                }
            }
        }
        DisplayCommand::Lv => {
            for f in &vg_order {
                let vg = f.vg;
                for lv in &vg.logical_volumes {
                    let named = args.names.is_empty()
                        || args.names.iter().any(|n| match n.split_once('/') {
                            Some((v, l)) => v == vg.name && l == lv.name,
                            None => *n == vg.name,
                        });
                    if !named || !(is_visible(lv) || args.all) {
                        continue;
                    }
                    let st = state(&vg.name, &lv.name);
                    let inkernel = st.active().is_some();
                    let size = lv.extent_count() * vg.extent_size;
                    let rw = (if has(&lv.status, "READ") { LVM_READ } else { 0 }
                        | if has(&lv.status, "WRITE") { LVM_WRITE } else { 0 })
                        >> 8;
                    if args.colon {
                        let open = st.active().is_some_and(|a| a.open);
                        p(&format!(
                            "/dev/{}/{}:{}:{}:{}:-1:{}:{}:{}:-1:{}:-1:-1:-1",
                            vg.name,
                            lv.name,
                            vg.name,
                            rw,
                            u8::from(inkernel),
                            u8::from(open),
                            size,
                            lv.extent_count(),
                            if alloc_string(lv) == "contiguous" { 2 } else { 0 }
                        ));
                        continue;
                    }
                    lv_full(&mut p, f, lv, st, &sz);
                    p(" ");
                    if args.maps {
                        lv_segments(&mut p, f, lv, st, &sz);
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::format_time;

    #[test]
    fn times_are_lvm2_iso() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 +0000");
        assert_eq!(format_time(1_796_626_602), "2026-12-07 06:56:42 +0000");
    }
}
