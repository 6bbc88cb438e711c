//! The report engine: lvm2's option handling (`tools/reporter.c`) and libdevmapper's report
//! output (`libdm-report.c`): field lists, sort keys, selection, column widths, alignment,
//! headings, `--rows`, `--nameprefixes`, JSON.

use super::data::{is_visible, process_order, pv_process_order, pv_segments, LvState, PvSeg, Source, VgFacts};
use super::fields::{all_fields, all_match, help_text, lookup, FieldDef, FieldRef, Kind, Obj};
use super::select::{self, Op, SelectError, Selection};
use super::units::{Units, UnitsError};
use super::values::{value, Cell, Ctx, RowCtx, SortVal};

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `pvs`
    Pvs,
    /// `vgs`
    Vgs,
    /// `lvs`
    Lvs,
}

/// `--reportformat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// `basic` (the default).
    Basic,
    /// `json`: every value a string.
    Json,
    /// `json_std` (lvm2 2.03.17 and later; 2.03.16 refuses it): numbers and binary values
    /// unquoted (empty = `null`), string lists as arrays.
    JsonStd,
}

/// A report command line, as lvm2 parses it. Fields mirror the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportArgs {
    /// pvs, vgs or lvs.
    pub command: Command,
    /// `--segments`.
    pub segments: bool,
    /// `-a/--all` (lvs: also hidden LVs, in brackets).
    pub all: bool,
    /// `-v`: the verbose default columns.
    pub verbose: bool,
    /// Each `-o/--options` in order (`a,b`, `+a`, `-a`).
    pub options: Vec<String>,
    /// Each `-O/--sort` in order (the last one counts).
    pub sort: Vec<String>,
    /// `--units`.
    pub units: Option<String>,
    /// `--nosuffix`.
    pub nosuffix: bool,
    /// `--noheadings`.
    pub noheadings: bool,
    /// `--separator`.
    pub separator: Option<String>,
    /// `--aligned`.
    pub aligned: bool,
    /// `--unbuffered`.
    pub unbuffered: bool,
    /// `--nameprefixes`.
    pub nameprefixes: bool,
    /// `--unquoted`.
    pub unquoted: bool,
    /// `--rows`.
    pub rows: bool,
    /// `--binary`: binary fields as 1/0 (-1 unknown).
    pub binary: bool,
    /// `--reportformat` as given.
    pub reportformat: Option<String>,
    /// `-S/--select`.
    pub select: Option<String>,
    /// Positional arguments: PV device names (pvs), VG names (vgs), VG or VG/LV (lvs).
    pub names: Vec<String>,
}

impl ReportArgs {
    /// The command with no flags.
    pub fn new(command: Command) -> ReportArgs {
        ReportArgs {
            command,
            segments: false,
            all: false,
            verbose: false,
            options: Vec::new(),
            sort: Vec::new(),
            units: None,
            nosuffix: false,
            noheadings: false,
            separator: None,
            aligned: false,
            unbuffered: false,
            nameprefixes: false,
            unquoted: false,
            rows: false,
            binary: false,
            reportformat: None,
            select: None,
            names: Vec::new(),
        }
    }

    /// Parses lvm2's report flags (after the command name): `-o`, `-O`, `-S`, `-a`, `-v`,
    /// `--segments`, `--units`, `--nosuffix`, `--noheadings`, `--separator`, `--aligned`,
    /// `--unbuffered`, `--nameprefixes`, `--unquoted`, `--rows`, `--reportformat`, long forms
    /// with `=VALUE` too; anything else not starting with `-` is a name.
    pub fn parse<S: AsRef<str>>(command: Command, argv: &[S]) -> Result<ReportArgs, ReportError> {
        let mut a = ReportArgs::new(command);
        let mut it = argv.iter().map(AsRef::as_ref);
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
                _ => (arg, None),
            };
            let mut val = |name: &str| -> Result<String, ReportError> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it.next().map(str::to_owned).ok_or_else(|| ReportError::BadArgument(name.to_owned())),
                }
            };
            match flag {
                "-o" | "--options" => a.options.push(val(flag)?),
                "-O" | "--sort" => a.sort.push(val(flag)?),
                "-S" | "--select" => a.select = Some(val(flag)?),
                "--units" => a.units = Some(val(flag)?),
                "--separator" => a.separator = Some(val(flag)?),
                "--reportformat" => a.reportformat = Some(val(flag)?),
                "-a" | "--all" => a.all = true,
                "-v" | "--verbose" => a.verbose = true,
                "--segments" => a.segments = true,
                "--nosuffix" => a.nosuffix = true,
                "--noheadings" => a.noheadings = true,
                "--aligned" => a.aligned = true,
                "--unbuffered" => a.unbuffered = true,
                "--nameprefixes" => a.nameprefixes = true,
                "--unquoted" => a.unquoted = true,
                "--rows" => a.rows = true,
                "--binary" => a.binary = true,
                f if f.starts_with('-') && f.len() > 1 => return Err(ReportError::BadArgument(f.to_owned())),
                name => a.names.push(name.to_owned()),
            }
        }
        Ok(a)
    }
}

/// What the command prints. Every line already has lvm2's two-space prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// The report.
    pub stdout: String,
    /// Help (`-o help`) and per-object errors (`Volume group "x" not found`).
    pub stderr: String,
    /// lvm2's exit status: 0, or 5 when a named object was not found.
    pub status: i32,
}

/// Refusals, with lvm2's message (printed after its two-space prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// `-o` names a field lvm2 does not have. lvm2 prints [`ReportError::help`] first.
    #[error("Unrecognised field: {0}")]
    UnknownField(String),
    /// `-O` names a field lvm2 does not have.
    #[error("dm_report: Unrecognised field: {0}")]
    UnknownSortField(String),
    /// `-O +` or `-O -` without a name (lvm2 then also reports the key as unrecognised).
    #[error("dm_report: Missing sort field name")]
    MissingSortField(String),
    /// LV and PV fields in one lvs or vgs report.
    #[error("Can't report LV and PV fields at the same time in report type \"{0}\".")]
    MixedFields(String),
    /// An empty `-o`.
    #[error("Invalid options string: {0}")]
    InvalidOptions(String),
    /// `--units`.
    #[error("{0}")]
    Units(#[from] UnitsError),
    /// `--reportformat`.
    #[error("Invalid argument for --reportformat: {0}")]
    ReportFormat(String),
    /// `-S`.
    #[error("{0}")]
    Select(#[from] SelectError),
    /// A flag this report does not know, or a flag without its value.
    #[error("{0}: unrecognised option or missing value")]
    BadArgument(String),
}

impl ReportError {
    /// Exit status lvm2 uses: 3 for a bad command line, 5 for a failed report.
    pub fn exit_code(&self) -> i32 {
        match self {
            ReportError::Units(_) | ReportError::ReportFormat(_) | ReportError::BadArgument(_) => 3,
            _ => 5,
        }
    }

    /// Text lvm2 prints on stderr before the message (the field list, for unknown fields),
    /// lines already prefixed.
    pub fn help(&self) -> String {
        match self {
            ReportError::UnknownField(_) | ReportError::UnknownSortField(_) => prefix_lines(&help_text()),
            _ => String::new(),
        }
    }

    /// Everything lvm2 prints on stderr for this refusal (help, message, follow-up lines),
    /// each line with the two-space prefix. Print this and exit with [`ReportError::exit_code`].
    pub fn stderr(&self) -> String {
        match self {
            ReportError::MissingSortField(key) => {
                format!("  {self}\n{}  dm_report: Unrecognised field: {key}\n", prefix_lines(&help_text()))
            }
            ReportError::Select(e) => e.stderr(),
            _ => format!("{}  {self}\n", self.help()),
        }
    }
}

fn prefix_lines(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// The row type a report ends up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowType {
    Pv,
    PvSeg,
    Vg,
    Lv,
    Seg,
}

struct Prop {
    field: FieldRef,
    hidden: bool,
    sort: Option<(usize, bool)>, // (position, descending)
    width: usize,
}

fn defaults(cmd: Command, segments: bool, verbose: bool) -> (&'static str, &'static str, Obj) {
    match (cmd, segments, verbose) {
        (Command::Pvs, false, false) => ("pv_name,vg_name,pv_fmt,pv_attr,pv_size,pv_free", "pv_name", Obj::Pvs),
        (Command::Pvs, false, true) => {
            ("pv_name,vg_name,pv_fmt,pv_attr,pv_size,pv_free,dev_size,pv_uuid", "pv_name", Obj::Pvs)
        }
        (Command::Pvs, true, false) => (
            "pv_name,vg_name,pv_fmt,pv_attr,pv_size,pv_free,pvseg_start,pvseg_size",
            "pv_name,pvseg_start",
            Obj::PvSegs,
        ),
        (Command::Pvs, true, true) => (
            "pv_name,vg_name,pv_fmt,pv_attr,pv_size,pv_free,pvseg_start,pvseg_size,lv_name,seg_start_pe,segtype,seg_pe_ranges",
            "pv_name,pvseg_start",
            Obj::PvSegs,
        ),
        (Command::Vgs, _, false) => ("vg_name,pv_count,lv_count,snap_count,vg_attr,vg_size,vg_free", "vg_name", Obj::Vgs),
        (Command::Vgs, _, true) => (
            "vg_name,vg_attr,vg_extent_size,pv_count,lv_count,snap_count,vg_size,vg_free,vg_uuid,vg_profile",
            "vg_name",
            Obj::Vgs,
        ),
        (Command::Lvs, false, false) => (
            "lv_name,vg_name,lv_attr,lv_size,pool_lv,origin,data_percent,metadata_percent,move_pv,mirror_log,copy_percent,convert_lv",
            "vg_name,lv_name",
            Obj::Lvs,
        ),
        (Command::Lvs, false, true) => (
            "lv_name,vg_name,seg_count,lv_attr,lv_size,lv_major,lv_minor,lv_kernel_major,lv_kernel_minor,pool_lv,origin,data_percent,metadata_percent,move_pv,copy_percent,mirror_log,convert_lv,lv_uuid,lv_profile",
            "vg_name,lv_name",
            Obj::Lvs,
        ),
        (Command::Lvs, true, false) => {
            ("lv_name,vg_name,lv_attr,stripes,segtype,seg_size", "vg_name,lv_name,seg_start", Obj::Segs)
        }
        (Command::Lvs, true, true) => (
            "lv_name,vg_name,lv_attr,seg_start,seg_size,stripes,segtype,stripesize,chunksize",
            "vg_name,lv_name,seg_start",
            Obj::Segs,
        ),
    }
}

/// `_get_report_options`: the final comma-separated field list.
fn final_options(args: &ReportArgs, default: &str, prefix: &str) -> Result<Vec<String>, ReportError> {
    let split = |s: &str| -> Vec<String> { s.split(',').filter(|x| !x.is_empty()).map(str::to_owned).collect() };
    let mut list = split(default);
    for o in &args.options {
        if o.is_empty() {
            return Err(ReportError::InvalidOptions(o.clone()));
        }
        if let Some(add) = o.strip_prefix('+') {
            list.extend(split(add));
        } else if let Some(del) = o.strip_prefix('-') {
            for d in split(del) {
                del_option(&mut list, prefix, &d);
            }
        } else if o.starts_with('#') {
            // compaction: accepted, not applied
        } else {
            list = split(o);
        }
    }
    Ok(list)
}

/// `_del_option_from_list`: the last entry equal to `name`, with or without the prefix.
fn del_option(list: &mut Vec<String>, prefix: &str, name: &str) {
    let bare = prefix.trim_end_matches('_');
    let strip = |s: &str| -> String {
        match s.strip_prefix(bare) {
            Some(r) => r.strip_prefix('_').unwrap_or(r).to_owned(),
            None => s.to_owned(),
        }
    };
    for i in (0..list.len()).rev() {
        if list[i] == name || strip(&list[i]) == strip(name) {
            list.remove(i);
            return;
        }
    }
}

/// Renders a report.
pub fn report(args: &ReportArgs, src: &Source, state: &dyn Fn(&str, &str) -> LvState) -> Result<Output, ReportError> {
    let mut units = match &args.units {
        Some(u) => Units::parse(u)?,
        None => Units::default(),
    };
    if args.nosuffix {
        units.suffix = false;
    }
    let format = match args.reportformat.as_deref() {
        None | Some("basic") => ReportFormat::Basic,
        Some("json") => ReportFormat::Json,
        Some("json_std") => ReportFormat::JsonStd,
        Some(other) => return Err(ReportError::ReportFormat(other.to_owned())),
    };
    let (default_cols, default_keys, base) = defaults(args.command, args.segments, args.verbose);
    let prefix = base.prefix();
    let cols = final_options(args, default_cols, prefix)?;
    let keys = args.sort.last().map(String::as_str).unwrap_or(default_keys);

    // Fields, as _parse_fields: each name, or a section's "all".
    let mut props: Vec<Prop> = Vec::new();
    let mut help = false;
    for c in &cols {
        if let Some(f) = lookup(c, prefix) {
            if matches!(f, FieldRef::Special(1) | FieldRef::Special(2)) {
                help = true;
            }
            props.push(Prop { field: f, hidden: false, sort: None, width: f.def().width });
            continue;
        }
        let types = all_match(c, prefix, &[base]);
        if types.is_empty() {
            return Err(ReportError::UnknownField(c.clone()));
        }
        for (i, f) in all_fields().iter().enumerate() {
            if types.contains(&f.obj) {
                props.push(Prop { field: FieldRef::Table(i), hidden: false, sort: None, width: f.width });
            }
        }
    }
    if help {
        return Ok(Output { stdout: String::new(), stderr: prefix_lines(&help_text()), status: 0 });
    }
    // Sort keys, as _parse_keys: a key not displayed becomes a hidden field.
    let mut nkeys = 0;
    for k in keys.split(',').filter(|k| !k.is_empty()) {
        let (name, desc) = match k.as_bytes()[0] {
            b'+' => (&k[1..], false),
            b'-' => (&k[1..], true),
            _ => (k, false),
        };
        if name.is_empty() {
            return Err(ReportError::MissingSortField(k.to_owned()));
        }
        let f = lookup(name, prefix).ok_or_else(|| ReportError::UnknownSortField(k.to_owned()))?;
        match props.iter_mut().find(|p| p.field == f) {
            Some(p) if p.sort.is_some() => {}
            Some(p) => {
                p.sort = Some((nkeys, desc));
                nkeys += 1;
            }
            None => {
                props.insert(0, Prop { field: f, hidden: true, sort: Some((nkeys, desc)), width: f.def().width });
                nkeys += 1;
            }
        }
    }
    let selection = match &args.select {
        Some(s) => Some(select::parse(s, prefix)?),
        None => None,
    };

    // The report type, as _get_final_report_type: the command's, widened by the fields asked
    // for (displayed, sort keys and selection).
    let mut objs: Vec<Obj> = vec![base];
    objs.extend(props.iter().map(|p| p.field.def().obj));
    if let Some(sel) = &selection {
        sel_fields(sel, &mut |f| objs.push(f.def().obj));
    }
    let any = |set: &[Obj]| objs.iter().any(|o| set.contains(o));
    let lv_types = [Obj::Lvs, Obj::LvsInfo, Obj::LvsStatus, Obj::LvsInfoStatus, Obj::Segs];
    let pv_types = [Obj::Pvs, Obj::Label, Obj::PvSegs];
    let args_are_pvs = args.command == Command::Pvs;
    if any(&lv_types) && any(&pv_types) && !args_are_pvs {
        return Err(ReportError::MixedFields(prefix.trim_end_matches('_').to_owned()));
    }
    let row_type = if any(&[Obj::PvSegs]) || (any(&pv_types) && any(&lv_types)) {
        RowType::PvSeg
    } else if any(&[Obj::Pvs]) || (any(&[Obj::Label]) && any(&[Obj::Vgs])) || any(&[Obj::Label]) {
        RowType::Pv
    } else if any(&[Obj::Segs]) {
        RowType::Seg
    } else if any(&lv_types) {
        RowType::Lv
    } else {
        RowType::Vg
    };

    // Rows.
    let facts: Vec<VgFacts<'_>> = src.vgs.iter().map(|v| VgFacts::new(v, src)).collect();
    let mut out = Output::default();
    let mut ctxs: Vec<RowCtx<'_>> = Vec::new();
    let vg_order: Vec<&VgFacts<'_>> = process_order(src, &facts);
    match row_type {
        RowType::Pv | RowType::PvSeg => {
            let pvs = pv_process_order(src, &facts);
            for name in &args.names {
                if !pvs.iter().any(|p| &p.device == name) {
                    out.stderr.push_str(&format!("  Failed to find physical volume \"{name}\".\n"));
                    out.status = 5;
                }
            }
            for p in pvs {
                if !args.names.is_empty() && !args.names.contains(&p.device) {
                    continue;
                }
                let uuid = p.label.pv_header.uuid_string();
                let vgf = facts.iter().find(|f| f.vg.physical_volumes.iter().any(|x| x.id == uuid));
                let pv = vgf.and_then(|f| f.vg.physical_volumes.iter().find(|x| x.id == uuid));
                let base = RowCtx { pv_src: Some(p), pv, vg: vgf, ..RowCtx::default() };
                if row_type == RowType::Pv {
                    ctxs.push(base);
                } else {
                    let segs: Vec<PvSeg<'_>> = match (vgf, pv) {
                        (Some(f), Some(pv)) => pv_segments(f, &pv.name, pv.pe_count),
                        _ => vec![PvSeg { start: 0, len: 0, used: None }],
                    };
                    for ps in segs {
                        let mut c = base.clone();
                        if let (Some((lv, seg)), Some(f)) = (ps.used, vgf) {
                            c.lv = Some(lv);
                            c.seg = Some(seg);
                            c.state = Some(state(&f.vg.name, &lv.name));
                        }
                        c.pvseg = Some(ps);
                        ctxs.push(c);
                    }
                }
            }
        }
        RowType::Vg => {
            for name in &args.names {
                if !facts.iter().any(|f| &f.vg.name == name) {
                    out.stderr.push_str(&format!(
                        "  Volume group \"{name}\" not found\n  Cannot process volume group {name}\n"
                    ));
                    out.status = 5;
                }
            }
            for f in &vg_order {
                if args.names.is_empty() || args.names.contains(&f.vg.name) {
                    ctxs.push(RowCtx { vg: Some(f), ..RowCtx::default() });
                }
            }
        }
        RowType::Lv | RowType::Seg => {
            for name in &args.names {
                let (vgn, lvn) = match name.split_once('/') {
                    Some((v, l)) => (v, Some(l)),
                    None => (name.as_str(), None),
                };
                match facts.iter().find(|f| f.vg.name == vgn) {
                    None => {
                        out.stderr.push_str(&format!(
                            "  Volume group \"{vgn}\" not found\n  Cannot process volume group {vgn}\n"
                        ));
                        out.status = 5;
                    }
                    Some(f) => {
                        if let Some(l) = lvn {
                            if f.vg.lv(l).is_none() {
                                out.stderr.push_str(&format!("  Failed to find logical volume \"{vgn}/{l}\"\n"));
                                out.status = 5;
                            }
                        }
                    }
                }
            }
            for f in &vg_order {
                for lv in &f.vg.logical_volumes {
                    let named = args.names.is_empty()
                        || args.names.iter().any(|n| match n.split_once('/') {
                            Some((v, l)) => v == f.vg.name && l == lv.name,
                            None => *n == f.vg.name,
                        });
                    let explicit =
                        args.names.iter().any(|n| n.split_once('/') == Some((f.vg.name.as_str(), lv.name.as_str())));
                    if !named || !(is_visible(lv) || args.all || explicit) {
                        continue;
                    }
                    let st = state(&f.vg.name, &lv.name);
                    let base = RowCtx { vg: Some(f), lv: Some(lv), state: Some(st), ..RowCtx::default() };
                    if row_type == RowType::Lv {
                        ctxs.push(base);
                    } else {
                        for seg in &lv.segments {
                            let mut c = base.clone();
                            c.seg = Some(seg);
                            ctxs.push(c);
                        }
                    }
                }
            }
        }
    }

    let strict = format == ReportFormat::JsonStd;
    let cx = Ctx { units, binary_numeric: args.binary || strict, strict };
    struct Row {
        cells: Vec<Cell>,
    }
    let mut rows: Vec<Row> = Vec::new();
    for c in &ctxs {
        let selected = match &selection {
            Some(sel) => eval(sel, c, &cx),
            None => true,
        };
        let show_selected = props.iter().any(|p| p.field == FieldRef::Special(0) && !p.hidden);
        if !selected && !show_selected {
            continue;
        }
        let cells = props
            .iter()
            .map(|p| match p.field {
                FieldRef::Special(_) => Cell {
                    text: if selected { "1" } else { "0" }.to_owned(),
                    sort: SortVal::Num(if selected { 1.0 } else { 0.0 }),
                    items: Vec::new(),
                },
                FieldRef::Table(_) => value(p.field.def(), c, &cx),
            })
            .collect();
        rows.push(Row { cells });
    }

    let json = format != ReportFormat::Basic;
    let buffered = !args.unbuffered || !args.sort.is_empty() || json || args.rows;
    if buffered && nkeys > 0 {
        let mut order: Vec<(usize, bool, usize)> =
            props.iter().enumerate().filter_map(|(i, p)| p.sort.map(|(pos, d)| (pos, d, i))).collect();
        order.sort();
        rows.sort_by(|a, b| {
            for &(_, desc, i) in &order {
                let o = cmp_sort(&a.cells[i].sort, &b.cells[i].sort);
                if o != std::cmp::Ordering::Equal {
                    return if desc { o.reverse() } else { o };
                }
            }
            std::cmp::Ordering::Equal
        });
    }

    // Output.
    let sep = args.separator.clone().unwrap_or_else(|| " ".to_owned());
    let mut aligned = args.separator.is_none() || args.aligned;
    if args.nameprefixes {
        aligned = false;
    }
    let headings = !args.noheadings;
    let visible: Vec<usize> = (0..props.len()).filter(|&i| !props[i].hidden).collect();
    let w = &mut out.stdout;

    if json {
        let name = match row_type {
            RowType::Pv => "pv",
            RowType::PvSeg => "pvseg",
            RowType::Vg => "vg",
            RowType::Lv => "lv",
            RowType::Seg => "seg",
        };
        w.push_str("  {\n      \"report\": [\n          {\n");
        w.push_str(&format!("              \"{name}\": [\n"));
        for (ri, row) in rows.iter().enumerate() {
            let body: Vec<String> = visible
                .iter()
                .map(|&i| {
                    let def = props[i].field.def();
                    let cell = &row.cells[i];
                    let q = |t: &str| format!("\"{}\"", t.replace('"', "\\\""));
                    let v = match (format, def.kind) {
                        (ReportFormat::JsonStd, Kind::StrList) => {
                            format!("[{}]", cell.items.iter().map(|t| q(t)).collect::<Vec<_>>().join(","))
                        }
                        (ReportFormat::JsonStd, Kind::Num | Kind::Bin | Kind::SNum | Kind::Pct) => {
                            if cell.text.is_empty() {
                                "null".to_owned()
                            } else {
                                cell.text.clone()
                            }
                        }
                        _ => q(&cell.text),
                    };
                    format!("\"{}\":{v}", def.id)
                })
                .collect();
            let comma = if ri + 1 < rows.len() { "," } else { "" };
            w.push_str(&format!("                  {{{}}}{comma}\n", body.join(", ")));
        }
        w.push_str("              ]\n          }\n      ]\n  }\n");
        return Ok(out);
    }

    if rows.is_empty() {
        return Ok(out);
    }

    let field_text = |p: &Prop, text: &str, width: usize, aligned: bool| -> String {
        let mut s = String::new();
        if args.nameprefixes {
            s.push_str("LVM2_");
            s.push_str(&p.field.def().id.to_ascii_uppercase());
            s.push('=');
            if !args.unquoted {
                s.push('\'');
            }
        }
        if aligned {
            if p.field.def().kind.right_aligned() {
                s.push_str(&format!("{text:>width$}"));
            } else {
                s.push_str(&format!("{text:<width$}"));
            }
        } else {
            s.push_str(text);
        }
        if args.nameprefixes && !args.unquoted {
            s.push('\'');
        }
        s
    };

    if args.rows {
        // Columns as rows: never aligned.
        for &i in &visible {
            let mut line = String::new();
            if headings {
                line.push_str(props[i].field.def().heading);
                line.push_str(&sep);
            }
            let vals: Vec<String> = rows.iter().map(|r| field_text(&props[i], &r.cells[i].text, 0, false)).collect();
            line.push_str(&vals.join(&sep));
            w.push_str(&format!("  {line}\n"));
        }
        return Ok(out);
    }

    let heading_line = |widths: &[usize]| -> String {
        let parts: Vec<String> = visible
            .iter()
            .map(|&i| {
                let h = props[i].field.def().heading;
                if aligned {
                    let wd = widths[i];
                    let t: String = h.chars().take(wd).collect();
                    format!("{t:<wd$}")
                } else {
                    h.to_owned()
                }
            })
            .collect();
        parts.join(&sep)
    };
    let row_line = |row: &Row, widths: &[usize]| -> String {
        let parts: Vec<String> =
            visible.iter().map(|&i| field_text(&props[i], &row.cells[i].text, widths[i], aligned)).collect();
        parts.join(&sep)
    };
    let initial: Vec<usize> = props.iter().map(|p| p.width).collect();
    if buffered {
        let mut widths = initial.clone();
        for r in &rows {
            for (i, c) in r.cells.iter().enumerate() {
                widths[i] = widths[i].max(c.text.len());
            }
        }
        if headings {
            w.push_str(&format!("  {}\n", heading_line(&widths)));
        }
        for r in &rows {
            w.push_str(&format!("  {}\n", row_line(r, &widths)));
        }
    } else {
        for (ri, r) in rows.iter().enumerate() {
            let mut widths = initial.clone();
            for (i, c) in r.cells.iter().enumerate() {
                widths[i] = widths[i].max(c.text.len());
            }
            if ri == 0 && headings {
                w.push_str(&format!("  {}\n", heading_line(&widths)));
            }
            w.push_str(&format!("  {}\n", row_line(r, &widths)));
        }
    }
    Ok(out)
}

fn cmp_sort(a: &SortVal, b: &SortVal) -> std::cmp::Ordering {
    match (a, b) {
        (SortVal::Num(x), SortVal::Num(y)) => x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal),
        (SortVal::Str(x), SortVal::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        (SortVal::Num(_), SortVal::Str(_)) => std::cmp::Ordering::Less,
        (SortVal::Str(_), SortVal::Num(_)) => std::cmp::Ordering::Greater,
    }
}

fn sel_fields(sel: &Selection, f: &mut dyn FnMut(FieldRef)) {
    match sel {
        Selection::Cmp { field, .. } => f(*field),
        Selection::And(a, b) | Selection::Or(a, b) => {
            sel_fields(a, f);
            sel_fields(b, f);
        }
        Selection::Not(a) => sel_fields(a, f),
    }
}

fn eval(sel: &Selection, row: &RowCtx<'_>, cx: &Ctx) -> bool {
    match sel {
        Selection::And(a, b) => eval(a, row, cx) && eval(b, row, cx),
        Selection::Or(a, b) => eval(a, row, cx) || eval(b, row, cx),
        Selection::Not(a) => !eval(a, row, cx),
        Selection::Cmp { field, op, value: want } => {
            let def: &FieldDef = field.def();
            let cell = match field {
                FieldRef::Special(_) => return true,
                FieldRef::Table(_) => value(def, row, cx),
            };
            if matches!(op, Op::Match | Op::NotMatch) {
                let hit = super::regex::Regex::new(want).is_ok_and(|re| re.is_match(&cell.text));
                return hit == (*op == Op::Match);
            }
            let ord = match (&cell.sort, select::parse_number(want, def.kind)) {
                (SortVal::Num(x), Some(y)) if def.kind.numeric() || def.kind == super::fields::Kind::Pct => {
                    x.partial_cmp(&y)
                }
                (SortVal::Str(x), _) => Some(x.as_str().cmp(want.as_str())),
                _ => Some(cell.text.as_str().cmp(want.as_str())),
            };
            let Some(o) = ord else { return false };
            match op {
                Op::Eq => o.is_eq(),
                Op::Ne => o.is_ne(),
                Op::Lt => o.is_lt(),
                Op::Le => o.is_le(),
                Op::Gt => o.is_gt(),
                Op::Ge => o.is_ge(),
                Op::Match | Op::NotMatch => false,
            }
        }
    }
}
