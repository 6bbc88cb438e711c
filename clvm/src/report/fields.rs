//! Field names as libdevmapper's report engine resolves them: underscores do not count, case
//! does not count, and the report's prefix (`pv_`, `vg_`, `lv_`, `seg_`, `pvseg_`) may be left
//! out (`name` = `pv_name` in pvs); `all` and `<prefix>all` expand to a whole section.

use super::table::FIELDS;

/// Value kind of a field: decides alignment (numbers and sizes right), sorting (numeric or
/// string) and selection parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text.
    Str,
    /// Unsigned number.
    Num,
    /// Binary flag (a word or blank).
    Bin,
    /// Signed number.
    SNum,
    /// A size in the current units.
    Size,
    /// A percentage.
    Pct,
    /// A time.
    Time,
    /// A list of strings.
    StrList,
}

impl Kind {
    /// Numbers and sizes are right-aligned.
    pub fn right_aligned(self) -> bool {
        matches!(self, Kind::Num | Kind::Bin | Kind::SNum | Kind::Size)
    }

    /// Sorted as numbers.
    pub fn numeric(self) -> bool {
        matches!(self, Kind::Num | Kind::Bin | Kind::SNum | Kind::Size | Kind::Time)
    }
}

/// The object a field describes (lvm2's report types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Obj {
    /// Logical volume.
    Lvs,
    /// LV device info (kernel).
    LvsInfo,
    /// LV device status (kernel).
    LvsStatus,
    /// LV info and status combined.
    LvsInfoStatus,
    /// PV label.
    Label,
    /// Physical volume.
    Pvs,
    /// Volume group.
    Vgs,
    /// LV segment.
    Segs,
    /// PV segment.
    PvSegs,
    /// `selected`, `help`, `?`.
    Special,
}

impl Obj {
    /// lvm2's section title in `-o help`.
    pub fn desc(self) -> &'static str {
        match self {
            Obj::Lvs => "Logical Volume",
            Obj::LvsInfo => "Logical Volume Device Info",
            Obj::LvsStatus => "Logical Volume Device Status",
            Obj::LvsInfoStatus => "Logical Volume Device Info and Status Combined",
            Obj::Label => "Physical Volume Label",
            Obj::Pvs => "Physical Volume",
            Obj::Vgs => "Volume Group",
            Obj::Segs => "Logical Volume Segment",
            Obj::PvSegs => "Physical Volume Segment",
            Obj::Special => "Special",
        }
    }

    /// The field prefix of the report type.
    pub fn prefix(self) -> &'static str {
        match self {
            Obj::Lvs | Obj::LvsInfo | Obj::LvsStatus | Obj::LvsInfoStatus => "lv_",
            Obj::Label | Obj::Pvs => "pv_",
            Obj::Vgs => "vg_",
            Obj::Segs => "seg_",
            Obj::PvSegs => "pvseg_",
            Obj::Special => "special_",
        }
    }

    /// Report type order (lvm2's `_report_types`), used for `all` expansion order.
    pub(crate) const ORDER: [Obj; 9] = [
        Obj::Vgs,
        Obj::Lvs,
        Obj::LvsInfo,
        Obj::LvsStatus,
        Obj::LvsInfoStatus,
        Obj::Pvs,
        Obj::Label,
        Obj::Segs,
        Obj::PvSegs,
    ];
}

/// One field of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDef {
    /// Field name (`pv_name`).
    pub id: &'static str,
    /// Column heading (`PV`).
    pub heading: &'static str,
    /// Minimum column width.
    pub width: usize,
    /// Value kind.
    pub kind: Kind,
    /// Object type.
    pub obj: Obj,
    /// `-o help` text.
    pub desc: &'static str,
}

/// The implicit fields every lvm2 report has (with selection support).
pub(crate) static SPECIAL: &[FieldDef] = &[
    FieldDef {
        id: "selected",
        heading: "Selected",
        width: 8,
        kind: Kind::Num,
        obj: Obj::Special,
        desc: "Set if item passes selection criteria.",
    },
    FieldDef { id: "help", heading: "Help", width: 8, kind: Kind::Num, obj: Obj::Special, desc: "Show help." },
    FieldDef { id: "?", heading: "Help", width: 8, kind: Kind::Num, obj: Obj::Special, desc: "Show help." },
];

/// All of lvm2's report fields, in its order.
pub fn all_fields() -> &'static [FieldDef] {
    FIELDS
}

fn canonical(s: &str) -> String {
    s.chars().filter(|&c| c != '_').collect()
}

fn same_field(canon_given: &str, canon_id: &str, prefix: &str) -> bool {
    if canon_given.eq_ignore_ascii_case(canon_id) {
        return true;
    }
    // lvm2: the field's canonical id starts with the prefix (without its underscore) and the
    // rest of it equals the given name.
    let p = &prefix[..prefix.len().saturating_sub(1)];
    canon_id.len() >= p.len()
        && canon_id.is_char_boundary(p.len())
        && canon_id[..p.len()].eq_ignore_ascii_case(p)
        && canon_id[p.len()..].eq_ignore_ascii_case(canon_given)
}

/// A field reference: an entry of [`all_fields`] or of the special fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldRef {
    /// Index into [`all_fields`].
    Table(usize),
    /// Index into the special fields (`selected`, `help`, `?`).
    Special(usize),
}

impl FieldRef {
    /// Its definition.
    pub fn def(self) -> &'static FieldDef {
        match self {
            FieldRef::Table(i) => &FIELDS[i],
            FieldRef::Special(i) => &SPECIAL[i],
        }
    }
}

/// Resolves one name as `_get_field` does, with the report's `prefix`.
pub fn lookup(name: &str, prefix: &str) -> Option<FieldRef> {
    if name.is_empty() {
        return None;
    }
    let c = canonical(name);
    if let Some(i) = SPECIAL.iter().position(|f| same_field(&c, &canonical(f.id), prefix)) {
        return Some(FieldRef::Special(i));
    }
    FIELDS.iter().position(|f| same_field(&c, &canonical(f.id), prefix)).map(FieldRef::Table)
}

/// `all` / `<prefix>all` as `_all_match`: the object types it expands to, if it is one.
pub fn all_match(name: &str, prefix: &str, report_types: &[Obj]) -> Vec<Obj> {
    let c = canonical(name);
    let mut types: Vec<Obj> = Vec::new();
    let (field, unprefixed) = if name.eq_ignore_ascii_case("all") {
        if prefix.is_empty() {
            return Obj::ORDER.to_vec();
        }
        types.extend_from_slice(report_types);
        (canonical(prefix), true)
    } else {
        (c, false)
    };
    for t in Obj::ORDER {
        let p = &t.prefix()[..t.prefix().len() - 1];
        let plen = p.len();
        if field.len() >= plen && field.is_char_boundary(plen) && field[..plen].eq_ignore_ascii_case(p) {
            let matched = (unprefixed && field.len() == plen)
                || (field.len() == plen + 3 && field[plen..].eq_ignore_ascii_case("all"));
            if matched && !types.contains(&t) {
                types.push(t);
            }
        }
    }
    types
}

/// The `-o help` listing lvm2 prints (on stderr, each line after its two-space message
/// prefix), without that prefix.
pub fn help_text() -> String {
    listing(true, false)
}

/// The listing lvm2 prints for an unknown selection field: no `all` lines, each field's type.
pub fn help_text_with_types() -> String {
    listing(false, true)
}

fn type_name(k: Kind) -> &'static str {
    match k {
        Kind::Str => "string",
        Kind::Num | Kind::Bin | Kind::SNum => "number",
        Kind::Size => "size",
        Kind::Pct => "percent",
        Kind::Time => "time",
        Kind::StrList => "string list",
    }
}

fn listing(all_item: bool, types: bool) -> String {
    let mut id_len = FIELDS.iter().chain(SPECIAL).map(|f| f.id.len()).max().unwrap_or(0);
    for t in Obj::ORDER {
        id_len = id_len.max(t.prefix().len() + 3);
    }
    let mut out = String::new();
    let section = |fields: &[FieldDef], out: &mut String| {
        let mut last: Option<Obj> = None;
        for f in fields {
            if last != Some(f.obj) {
                if last.is_some() {
                    out.push_str(" \n");
                }
                let desc = f.obj.desc();
                out.push_str(&format!("{desc} Fields\n"));
                out.push_str(&"-".repeat(desc.len() + 7));
                out.push('\n');
                if all_item && f.obj != Obj::Special {
                    let p = f.obj.prefix();
                    out.push_str(&format!(
                        "  {p}all{:w$} - All fields in this section.\n",
                        "",
                        w = id_len - 3 - p.len()
                    ));
                }
            }
            let ty = if types {
                let unselectable = if f.id == "help" || f.id == "?" { "unselectable " } else { "" };
                format!(" [{unselectable}{}]", type_name(f.kind))
            } else {
                String::new()
            };
            out.push_str(&format!("  {:<id_len$} - {}{ty}\n", f.id, f.desc));
            last = Some(f.obj);
        }
    };
    section(FIELDS, &mut out);
    out.push_str(" \n");
    section(SPECIAL, &mut out);
    out.push_str(" \n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, prefix: &str) -> Option<&'static str> {
        lookup(name, prefix).map(|f| f.def().id)
    }

    #[test]
    fn names_resolve_like_lvm2() {
        assert_eq!(id("pv_name", "pv_"), Some("pv_name"));
        assert_eq!(id("name", "pv_"), Some("pv_name"));
        assert_eq!(id("NAME", "lv_"), Some("lv_name"));
        assert_eq!(id("size", "lv_"), Some("lv_size"));
        assert_eq!(id("pvname", "vg_"), Some("pv_name"));
        assert_eq!(id("p_v_n_a_m_e", "vg_"), Some("pv_name"));
        assert_eq!(id("attr", "vg_"), Some("vg_attr"));
        assert_eq!(id("uuid", "pv_"), Some("pv_uuid"));
        assert_eq!(id("seg_start", "lv_"), Some("seg_start"));
        assert_eq!(id("stripesize", "seg_"), Some("stripe_size"));
        assert_eq!(id("foo", "pv_"), None);
        assert_eq!(id("", "pv_"), None);
        assert_eq!(id("?", "pv_"), Some("?"));
    }

    #[test]
    fn all_expands_sections() {
        assert_eq!(all_match("pv_all", "pv_", &[Obj::Pvs]), vec![Obj::Pvs, Obj::Label]);
        assert_eq!(all_match("vgall", "pv_", &[Obj::Pvs]), vec![Obj::Vgs]);
        assert_eq!(all_match("all", "vg_", &[Obj::Vgs]), vec![Obj::Vgs]);
        assert!(all_match("xall", "vg_", &[Obj::Vgs]).is_empty());
    }

    #[test]
    fn help_layout() {
        let h = help_text();
        assert!(h.starts_with("Logical Volume Fields\n---------------------\n  lv_all"));
        assert!(h.contains("\n  pv_name                     - Name.\n"));
        assert!(h.ends_with("  ?                           - Show help.\n \n"));
    }
}
