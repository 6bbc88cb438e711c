//! Scanning: which devices are PVs, which VGs their metadata areas describe, and which text
//! of each VG is current (the highest seqno among the committed texts whose checksums are
//! right). Areas holding an older text are reported as stale; the next change rewrites them.

use crate::disk::{self, MdaText, Pv};
use crate::text::Section;
use crate::vg::VolumeGroup;
use blockdev::Device;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A VG as found on the scanned devices.
#[derive(Debug, Clone)]
pub struct FoundVg {
    /// The current VG (highest seqno).
    pub vg: VolumeGroup,
    /// The whole text it came in (top-level keys included).
    pub root: Section,
    /// Indices into [`Scan::pvs`] of the PVs the VG lists and that were found.
    pub pvs: Vec<usize>,
    /// UUIDs of PVs the VG lists that were not found.
    pub missing: Vec<String>,
    /// `(pv index, mda index, seqno)` of areas holding an older text.
    pub stale: Vec<(usize, usize, u64)>,
}

impl FoundVg {
    /// Whether a PV of the VG is missing.
    pub fn partial(&self) -> bool {
        !self.missing.is_empty()
    }
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every device with an LVM2 label.
    pub pvs: Vec<Pv>,
    /// VGs by name.
    pub vgs: BTreeMap<String, FoundVg>,
    /// Devices that could not be read, corrupt areas, duplicate VG names: one line each.
    pub warnings: Vec<String>,
}

impl Scan {
    /// The PV on device `spec` (as named when scanned, or by its canonical path).
    pub fn pv_by_device(&self, spec: &str) -> Option<usize> {
        let canon = |s: &str| std::fs::canonicalize(s).ok();
        self.pvs.iter().position(|p| p.spec == spec).or_else(|| {
            let c = canon(spec)?;
            self.pvs.iter().position(|p| canon(&p.spec).as_ref() == Some(&c))
        })
    }

    /// The PV with UUID `id`.
    pub fn pv_by_uuid(&self, id: &str) -> Option<usize> {
        self.pvs.iter().position(|p| p.uuid() == id)
    }

    /// The VG a PV belongs to.
    pub fn vg_of(&self, pv: usize) -> Option<&FoundVg> {
        self.vgs.values().find(|v| v.pvs.contains(&pv))
    }

    /// The PV index of a VG's PV entry.
    pub fn pv_index_of(&self, found: &FoundVg, name_in_vg: &str) -> Option<usize> {
        let id = &found.vg.pv(name_in_vg)?.id;
        found.pvs.iter().copied().find(|&i| &self.pvs[i].uuid() == id)
    }
}

/// Scans `devices` (already opened): reads every label and every committed text.
pub fn scan(devices: Vec<(String, Arc<dyn Device>)>) -> Scan {
    let mut out = Scan::default();
    for (spec, dev) in devices {
        match disk::read_pv(&spec, dev) {
            Ok(Some(pv)) => {
                if let Some(j) = out.pvs.iter().position(|q| q.uuid() == pv.uuid()) {
                    out.warnings.push(format!(
                        "WARNING: Not using device {} for PV {}: it is also on {}.",
                        pv.spec,
                        pv.uuid(),
                        out.pvs[j].spec
                    ));
                    continue;
                }
                out.pvs.push(pv);
            }
            Ok(None) => {}
            Err(e) => out.warnings.push(format!("WARNING: {e}")),
        }
    }
    // Every committed text, by VG UUID.
    let mut texts: BTreeMap<String, Vec<(usize, usize, MdaText)>> = BTreeMap::new();
    for (i, pv) in out.pvs.iter().enumerate() {
        for (m, mda) in pv.mdas.iter().enumerate() {
            if let Err(e) = &mda.header {
                out.warnings.push(format!("WARNING: {}: metadata area at byte {}: {e}", pv.spec, mda.locn.offset));
                continue;
            }
            match pv.read_text(m, false) {
                Ok(Some(t)) => texts.entry(t.vg.id.clone()).or_default().push((i, m, t)),
                Ok(None) => {}
                Err(e) => out.warnings.push(format!("WARNING: {e}")),
            }
        }
    }
    for (_, mut found) in texts {
        found.sort_by_key(|f| std::cmp::Reverse(f.2.vg.seqno));
        let best = found[0].2.clone();
        let stale = found
            .iter()
            .filter(|(_, _, t)| t.vg.seqno < best.vg.seqno)
            .map(|(i, m, t)| (*i, *m, t.vg.seqno))
            .collect::<Vec<_>>();
        if let Some((i, _, t)) = found.iter().find(|(_, _, t)| t.vg.seqno == best.vg.seqno && t.root != best.root) {
            out.warnings.push(format!(
                "WARNING: {}: VG {} seqno {} differs from another copy with the same seqno; using the first.",
                out.pvs[*i].spec, t.vg.name, t.vg.seqno
            ));
        }
        let mut pvs = Vec::new();
        let mut missing = Vec::new();
        for p in &best.vg.physical_volumes {
            match out.pvs.iter().position(|q| q.uuid() == p.id) {
                Some(i) => pvs.push(i),
                None => missing.push(p.id.clone()),
            }
        }
        let name = best.vg.name.clone();
        if let Some(other) = out.vgs.get(&name) {
            out.warnings.push(format!(
                "WARNING: VG name {name} is used by VGs {} and {}: ignoring the second.",
                other.vg.id, best.vg.id
            ));
            continue;
        }
        out.vgs.insert(name, FoundVg { vg: best.vg, root: best.root, pvs, missing, stale });
    }
    out
}
