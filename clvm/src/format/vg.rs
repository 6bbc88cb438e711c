//! The volume group model over the text tree: what LVM2 writes in a metadata area or a
//! `vgcfgbackup` file, typed where we use it, and every other key kept as it was so that a VG
//! stock LVM2 wrote survives a round trip through us.
//!
//! Known keys are written in LVM2's order; an unknown key is written right after the known key
//! it followed when read (or first, when it came before all of them), so a text LVM2 wrote
//! comes back in the same order.

use super::text::{Node, Section, Value};

/// A VG text that does not describe a VG we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VgError {
    /// No section that looks like a VG (one with `id` and `seqno`) at the top level.
    #[error("metadata text holds no volume group section")]
    NoVg,
    /// A required key is missing.
    #[error("{place}: required key {key:?} is missing")]
    Missing { place: String, key: &'static str },
    /// A key has a value of the wrong type or range.
    #[error("{place}: key {key:?} must be {expected}")]
    BadValue { place: String, key: &'static str, expected: &'static str },
    /// An area list (`stripes`, `mirrors`) is not name/extent pairs.
    #[error("{place}: {key:?} must be pairs of a PV or LV name and a starting extent")]
    BadAreas { place: String, key: &'static str },
}

/// Keys that are not modelled, each with the known key it followed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extra {
    /// `(known key it came after, node)`; `None` = before every known key.
    pub nodes: Vec<(Option<String>, Node)>,
}

/// A volume group.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeGroup {
    /// VG name (the section's name).
    pub name: String,
    /// UUID in dashed form.
    pub id: String,
    /// Sequence number: the highest valid one on the PVs wins.
    pub seqno: u64,
    /// `"lvm2"`.
    pub format: Option<String>,
    /// Status flags (`RESIZEABLE`, `READ`, `WRITE`, `CLUSTERED`, ...).
    pub status: Vec<String>,
    /// Flags (usually empty).
    pub flags: Vec<String>,
    /// Extent size in 512-byte sectors.
    pub extent_size: u64,
    /// Maximum LVs, 0 = unlimited.
    pub max_lv: u64,
    /// Maximum PVs, 0 = unlimited.
    pub max_pv: u64,
    /// Metadata copies wanted, 0 = unmanaged.
    pub metadata_copies: Option<u64>,
    /// `physical_volumes { pv0 { ... } ... }`.
    pub physical_volumes: Vec<PhysicalVolume>,
    /// `logical_volumes { lv { ... } ... }`.
    pub logical_volumes: Vec<LogicalVolume>,
    /// Unmodelled keys and sections.
    pub extra: Extra,
}

/// A physical volume entry of a VG.
#[derive(Debug, Clone, PartialEq)]
pub struct PhysicalVolume {
    /// Name inside the VG (`pv0`, `pv1`, ...).
    pub name: String,
    /// PV UUID in dashed form.
    pub id: String,
    /// Device path hint.
    pub device: Option<String>,
    /// Status flags (`ALLOCATABLE`).
    pub status: Vec<String>,
    /// Flags.
    pub flags: Vec<String>,
    /// Device size in sectors.
    pub dev_size: Option<u64>,
    /// First extent's sector.
    pub pe_start: u64,
    /// Number of extents.
    pub pe_count: u64,
    /// Unmodelled keys.
    pub extra: Extra,
}

/// A logical volume entry of a VG.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalVolume {
    /// LV name.
    pub name: String,
    /// LV UUID in dashed form.
    pub id: String,
    /// Status flags (`READ`, `WRITE`, `VISIBLE`).
    pub status: Vec<String>,
    /// Flags.
    pub flags: Vec<String>,
    /// Seconds since the epoch.
    pub creation_time: Option<i64>,
    /// Host that created it.
    pub creation_host: Option<String>,
    /// Segments `segment1`, `segment2`, ... (`segment_count` is their number).
    pub segments: Vec<Segment>,
    /// Unmodelled keys.
    pub extra: Extra,
}

/// A PV or LV name and the extent it starts at, an element of `stripes` or `mirrors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Area {
    /// `pv0` or a sub-LV's name.
    pub name: String,
    /// First extent on it.
    pub start: u64,
}

/// One segment of an LV.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// First logical extent.
    pub start_extent: u64,
    /// Number of logical extents.
    pub extent_count: u64,
    /// `striped`, `mirror`, `raid1`, ...
    pub segtype: String,
    /// Stripes (`striped`).
    pub stripe_count: Option<u64>,
    /// Stripe size in sectors (only with more than one stripe).
    pub stripe_size: Option<u64>,
    /// `stripes = ["pv0", 0, ...]`.
    pub stripes: Vec<Area>,
    /// Legs (`mirror`).
    pub mirror_count: Option<u64>,
    /// Region size in sectors (`mirror`, `raid1`).
    pub region_size: Option<u64>,
    /// Log LV (`mirror`).
    pub mirror_log: Option<String>,
    /// `mirrors = ["lv_mimage_0", 0, ...]`.
    pub mirrors: Vec<Area>,
    /// Images (`raid1`).
    pub device_count: Option<u64>,
    /// `raids = ["lv_rmeta_0", "lv_rimage_0", ...]`.
    pub raids: Vec<String>,
    /// Unmodelled keys.
    pub extra: Extra,
}

/// Reads a section's keys: the known ones through getters, the rest into [`Extra`].
struct Reader<'a> {
    s: &'a Section,
    place: String,
    known: &'static [&'static str],
}

impl<'a> Reader<'a> {
    fn new(s: &'a Section, place: String, known: &'static [&'static str]) -> Self {
        Reader { s, place, known }
    }

    fn bad(&self, key: &'static str, expected: &'static str) -> VgError {
        VgError::BadValue { place: self.place.clone(), key, expected }
    }

    fn opt_u64(&self, key: &'static str) -> Result<Option<u64>, VgError> {
        match self.s.get(key) {
            None => Ok(None),
            Some(Value::Int(i)) => u64::try_from(*i).map(Some).map_err(|_| self.bad(key, "a non-negative integer")),
            Some(_) => Err(self.bad(key, "a non-negative integer")),
        }
    }

    fn u64(&self, key: &'static str) -> Result<u64, VgError> {
        self.opt_u64(key)?.ok_or_else(|| VgError::Missing { place: self.place.clone(), key })
    }

    fn opt_str(&self, key: &'static str) -> Result<Option<String>, VgError> {
        match self.s.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(key, "a string")),
        }
    }

    fn str(&self, key: &'static str) -> Result<String, VgError> {
        self.opt_str(key)?.ok_or_else(|| VgError::Missing { place: self.place.clone(), key })
    }

    fn strings(&self, key: &'static str) -> Result<Vec<String>, VgError> {
        match self.s.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s.clone()),
                    _ => Err(self.bad(key, "an array of strings")),
                })
                .collect(),
            Some(_) => Err(self.bad(key, "an array of strings")),
        }
    }

    fn areas(&self, key: &'static str) -> Result<Vec<Area>, VgError> {
        let bad = || VgError::BadAreas { place: self.place.clone(), key };
        match self.s.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) if items.len() % 2 == 0 => items
                .chunks(2)
                .map(|p| match p {
                    [Value::Str(name), Value::Int(start)] => {
                        Ok(Area { name: name.clone(), start: u64::try_from(*start).map_err(|_| bad())? })
                    }
                    _ => Err(bad()),
                })
                .collect(),
            Some(_) => Err(bad()),
        }
    }

    /// The nodes that are neither known keys nor (for `skip_sections`) subsections.
    fn extra(&self, skip_section: impl Fn(&str) -> bool) -> Extra {
        let mut after: Option<String> = None;
        let mut nodes = Vec::new();
        for n in &self.s.nodes {
            let name = match n {
                Node::Pair { key, .. } => key.as_str(),
                Node::Section(s) => s.name.as_str(),
            };
            let known = match n {
                Node::Pair { key, .. } => self.known.contains(&key.as_str()),
                Node::Section(s) => skip_section(&s.name),
            };
            if known {
                after = Some(name.to_owned());
            } else {
                nodes.push((after.clone(), n.clone()));
            }
        }
        Extra { nodes }
    }
}

/// Writes known keys in order, each followed by the extras that followed it when read.
struct Writer<'a> {
    out: Section,
    extra: &'a Extra,
}

impl<'a> Writer<'a> {
    fn new(name: &str, extra: &'a Extra) -> Self {
        let mut out = Section::new(name);
        out.nodes.extend(extra.nodes.iter().filter(|(a, _)| a.is_none()).map(|(_, n)| n.clone()));
        Writer { out, extra }
    }

    fn node(&mut self, key: &str, node: Node) {
        self.out.nodes.push(node);
        let follow = self.extra.nodes.iter().filter(|(a, _)| a.as_deref() == Some(key)).map(|(_, n)| n.clone());
        self.out.nodes.extend(follow);
    }

    fn put(&mut self, key: &str, value: Value) {
        self.node(key, Node::Pair { key: key.to_owned(), value });
    }

    fn put_opt(&mut self, key: &str, value: Option<Value>) {
        if let Some(v) = value {
            self.put(key, v);
        }
    }

    fn finish(self) -> Section {
        // Extras after a known key that is no longer written go last, so nothing is lost.
        let mut out = self.out;
        let written: Vec<String> = out
            .nodes
            .iter()
            .map(|n| match n {
                Node::Pair { key, .. } => key.clone(),
                Node::Section(s) => s.name.clone(),
            })
            .collect();
        for (after, n) in &self.extra.nodes {
            if let Some(a) = after {
                if !written.contains(a) {
                    out.nodes.push(n.clone());
                }
            }
        }
        out
    }
}

fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn strs(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::Str).collect())
}

fn areas(v: &[Area]) -> Value {
    Value::Array(v.iter().flat_map(|a| [Value::Str(a.name.clone()), int(a.start)]).collect())
}

const VG_KEYS: &[&str] =
    &["id", "seqno", "format", "status", "flags", "extent_size", "max_lv", "max_pv", "metadata_copies"];
const PV_KEYS: &[&str] = &["id", "device", "status", "flags", "dev_size", "pe_start", "pe_count"];
const LV_KEYS: &[&str] = &["id", "status", "flags", "creation_time", "creation_host", "segment_count"];
const SEG_KEYS: &[&str] = &[
    "start_extent",
    "extent_count",
    "type",
    "stripe_count",
    "stripe_size",
    "stripes",
    "mirror_count",
    "region_size",
    "mirror_log",
    "mirrors",
    "device_count",
    "raids",
];

impl VolumeGroup {
    /// Finds the VG section in a parsed metadata text or backup file (the top-level section
    /// that has `id` and `seqno`) and reads it.
    pub fn from_root(root: &Section) -> Result<VolumeGroup, VgError> {
        let s = root.sections().find(|s| s.get("id").is_some() && s.get("seqno").is_some()).ok_or(VgError::NoVg)?;
        VolumeGroup::from_section(s)
    }

    /// Reads a VG section.
    pub fn from_section(s: &Section) -> Result<VolumeGroup, VgError> {
        let r = Reader::new(s, format!("volume group {}", s.name), VG_KEYS);
        let physical_volumes = match s.section("physical_volumes") {
            None => Vec::new(),
            Some(pvs) => pvs.sections().map(PhysicalVolume::from_section).collect::<Result<_, _>>()?,
        };
        let logical_volumes = match s.section("logical_volumes") {
            None => Vec::new(),
            Some(lvs) => lvs.sections().map(LogicalVolume::from_section).collect::<Result<_, _>>()?,
        };
        Ok(VolumeGroup {
            name: s.name.clone(),
            id: r.str("id")?,
            seqno: r.u64("seqno")?,
            format: r.opt_str("format")?,
            status: r.strings("status")?,
            flags: r.strings("flags")?,
            extent_size: r.u64("extent_size")?,
            max_lv: r.opt_u64("max_lv")?.unwrap_or(0),
            max_pv: r.opt_u64("max_pv")?.unwrap_or(0),
            metadata_copies: r.opt_u64("metadata_copies")?,
            physical_volumes,
            logical_volumes,
            extra: r.extra(|n| n == "physical_volumes" || n == "logical_volumes"),
        })
    }

    /// The VG section.
    pub fn to_section(&self) -> Section {
        let mut w = Writer::new(&self.name, &self.extra);
        w.put("id", Value::Str(self.id.clone()));
        w.put("seqno", int(self.seqno));
        w.put_opt("format", self.format.clone().map(Value::Str));
        w.put("status", strs(&self.status));
        w.put("flags", strs(&self.flags));
        w.put("extent_size", int(self.extent_size));
        w.put("max_lv", int(self.max_lv));
        w.put("max_pv", int(self.max_pv));
        w.put_opt("metadata_copies", self.metadata_copies.map(int));
        let mut pvs = Section::new("physical_volumes");
        pvs.nodes.extend(self.physical_volumes.iter().map(|p| Node::Section(p.to_section())));
        w.node("physical_volumes", Node::Section(pvs));
        if !self.logical_volumes.is_empty() {
            let mut lvs = Section::new("logical_volumes");
            lvs.nodes.extend(self.logical_volumes.iter().map(|l| Node::Section(l.to_section())));
            w.node("logical_volumes", Node::Section(lvs));
        }
        w.finish()
    }

    /// A PV by its name in the VG (`pv0`).
    pub fn pv(&self, name: &str) -> Option<&PhysicalVolume> {
        self.physical_volumes.iter().find(|p| p.name == name)
    }

    /// An LV by name.
    pub fn lv(&self, name: &str) -> Option<&LogicalVolume> {
        self.logical_volumes.iter().find(|l| l.name == name)
    }
}

impl PhysicalVolume {
    /// Reads a `pvN { ... }` section.
    pub fn from_section(s: &Section) -> Result<PhysicalVolume, VgError> {
        let r = Reader::new(s, format!("physical volume {}", s.name), PV_KEYS);
        Ok(PhysicalVolume {
            name: s.name.clone(),
            id: r.str("id")?,
            device: r.opt_str("device")?,
            status: r.strings("status")?,
            flags: r.strings("flags")?,
            dev_size: r.opt_u64("dev_size")?,
            pe_start: r.u64("pe_start")?,
            pe_count: r.u64("pe_count")?,
            extra: r.extra(|_| false),
        })
    }

    /// The `pvN` section.
    pub fn to_section(&self) -> Section {
        let mut w = Writer::new(&self.name, &self.extra);
        w.put("id", Value::Str(self.id.clone()));
        w.put_opt("device", self.device.clone().map(Value::Str));
        w.put("status", strs(&self.status));
        w.put("flags", strs(&self.flags));
        w.put_opt("dev_size", self.dev_size.map(int));
        w.put("pe_start", int(self.pe_start));
        w.put("pe_count", int(self.pe_count));
        w.finish()
    }
}

impl LogicalVolume {
    /// Reads an LV section.
    pub fn from_section(s: &Section) -> Result<LogicalVolume, VgError> {
        let place = format!("logical volume {}", s.name);
        let r = Reader::new(s, place.clone(), LV_KEYS);
        let count = r.u64("segment_count")?;
        let mut segments = Vec::new();
        for i in 1..=count {
            let name = format!("segment{i}");
            let seg = s.section(&name).ok_or(VgError::BadValue {
                place: place.clone(),
                key: "segment_count",
                expected: "the number of segmentN sections",
            })?;
            segments.push(Segment::from_section(seg, &place)?);
        }
        let creation_time = match s.get("creation_time") {
            None => None,
            Some(Value::Int(t)) => Some(*t),
            Some(_) => return Err(r.bad("creation_time", "an integer")),
        };
        Ok(LogicalVolume {
            name: s.name.clone(),
            id: r.str("id")?,
            status: r.strings("status")?,
            flags: r.strings("flags")?,
            creation_time,
            creation_host: r.opt_str("creation_host")?,
            segments,
            extra: r.extra(|n| is_segment_name(n, count)),
        })
    }

    /// The LV section.
    pub fn to_section(&self) -> Section {
        let mut w = Writer::new(&self.name, &self.extra);
        w.put("id", Value::Str(self.id.clone()));
        w.put("status", strs(&self.status));
        w.put("flags", strs(&self.flags));
        w.put_opt("creation_time", self.creation_time.map(Value::Int));
        w.put_opt("creation_host", self.creation_host.clone().map(Value::Str));
        w.put("segment_count", int(self.segments.len() as u64));
        for (i, seg) in self.segments.iter().enumerate() {
            let name = format!("segment{}", i + 1);
            w.node(&name, Node::Section(seg.to_section(&name)));
        }
        w.finish()
    }

    /// Extents the LV spans.
    pub fn extent_count(&self) -> u64 {
        self.segments.iter().map(|s| s.extent_count).sum()
    }
}

fn is_segment_name(n: &str, count: u64) -> bool {
    n.strip_prefix("segment").and_then(|d| d.parse::<u64>().ok()).is_some_and(|i| (1..=count).contains(&i))
}

impl Segment {
    /// A striped segment over `stripes` (one area = linear).
    pub fn striped(start_extent: u64, extent_count: u64, stripe_size: Option<u64>, stripes: Vec<Area>) -> Segment {
        Segment {
            start_extent,
            extent_count,
            segtype: "striped".into(),
            stripe_count: Some(stripes.len() as u64),
            stripe_size,
            stripes,
            mirror_count: None,
            region_size: None,
            mirror_log: None,
            mirrors: Vec::new(),
            device_count: None,
            raids: Vec::new(),
            extra: Extra::default(),
        }
    }

    /// Reads a `segmentN` section of the LV at `lv_place`.
    pub fn from_section(s: &Section, lv_place: &str) -> Result<Segment, VgError> {
        let r = Reader::new(s, format!("{lv_place} {}", s.name), SEG_KEYS);
        Ok(Segment {
            start_extent: r.u64("start_extent")?,
            extent_count: r.u64("extent_count")?,
            segtype: r.str("type")?,
            stripe_count: r.opt_u64("stripe_count")?,
            stripe_size: r.opt_u64("stripe_size")?,
            stripes: r.areas("stripes")?,
            mirror_count: r.opt_u64("mirror_count")?,
            region_size: r.opt_u64("region_size")?,
            mirror_log: r.opt_str("mirror_log")?,
            mirrors: r.areas("mirrors")?,
            device_count: r.opt_u64("device_count")?,
            raids: r.strings("raids")?,
            extra: r.extra(|_| false),
        })
    }

    /// The segment section, named `name`.
    pub fn to_section(&self, name: &str) -> Section {
        let mut w = Writer::new(name, &self.extra);
        w.put("start_extent", int(self.start_extent));
        w.put("extent_count", int(self.extent_count));
        w.put("type", Value::Str(self.segtype.clone()));
        w.put_opt("stripe_count", self.stripe_count.map(int));
        w.put_opt("stripe_size", self.stripe_size.map(int));
        if !self.stripes.is_empty() {
            w.put("stripes", areas(&self.stripes));
        }
        // LVM2's order: mirror_count, mirror_log, region_size, mirrors for a mirror;
        // device_count, region_size, raids for raid.
        let raid = self.segtype.starts_with("raid");
        w.put_opt("mirror_count", self.mirror_count.map(int));
        w.put_opt("mirror_log", self.mirror_log.clone().map(Value::Str));
        if raid {
            w.put_opt("device_count", self.device_count.map(int));
        }
        w.put_opt("region_size", self.region_size.map(int));
        if !self.mirrors.is_empty() {
            w.put("mirrors", areas(&self.mirrors));
        }
        if !raid {
            w.put_opt("device_count", self.device_count.map(int));
        }
        if !self.raids.is_empty() {
            w.put("raids", strs(&self.raids));
        }
        w.finish()
    }
}

#[cfg(test)]
#[path = "vg_tests.rs"]
mod tests;
