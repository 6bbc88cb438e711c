//! Extent allocation (sans-IO): which physical extents of a VG's PVs are free, and where new
//! LV extents go, as LVM2's `normal` policy places them: a linear LV takes the first free
//! range large enough on the PVs in order (else spans ranges in order); a striped LV takes
//! equal ranges on N distinct PVs (one segment per run of ranges); mirror legs go on PVs that
//! no other leg of the same LV uses.

use crate::vg::{Area, Segment, VolumeGroup};
use std::collections::BTreeMap;

/// A run of free physical extents on one PV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeRange {
    /// PV index in the VG's `physical_volumes`.
    pub pv: usize,
    /// First free extent.
    pub start: u64,
    /// Extents in the run.
    pub len: u64,
}

/// Why an allocation cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("Insufficient free space: {need} extents needed, but only {free} available")]
    NoSpace { need: u64, free: u64 },
    #[error("Number of stripes ({stripes}) must not exceed the number of physical volumes ({pvs}) with free space")]
    TooFewPvs { stripes: usize, pvs: usize },
    #[error("Insufficient suitable allocatable extents for {what}: {need} extents needed on {legs} separate physical volumes")]
    NoParallel { what: String, need: u64, legs: usize },
}

/// Physical extents in use on each PV (by index): every `stripes` area of every segment that
/// names a PV (areas naming sub-LVs are counted through those LVs' own segments).
pub fn used_extents(vg: &VolumeGroup) -> Vec<Vec<(u64, u64)>> {
    let index: BTreeMap<&str, usize> =
        vg.physical_volumes.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
    let mut used = vec![Vec::new(); vg.physical_volumes.len()];
    for lv in &vg.logical_volumes {
        for seg in &lv.segments {
            let n = seg.stripes.len().max(1) as u64;
            let per = seg.extent_count / n;
            for a in &seg.stripes {
                if let Some(&i) = index.get(a.name.as_str()) {
                    used[i].push((a.start, per));
                }
            }
        }
    }
    for u in &mut used {
        u.sort_unstable();
    }
    used
}

/// Free ranges of every allocatable PV, in PV order then extent order. `exclude` names PVs
/// (by index) that must not be used.
pub fn free_ranges(vg: &VolumeGroup, exclude: &[usize]) -> Vec<FreeRange> {
    let used = used_extents(vg);
    let mut out = Vec::new();
    for (i, pv) in vg.physical_volumes.iter().enumerate() {
        if exclude.contains(&i) || !pv.status.iter().any(|s| s == "ALLOCATABLE") {
            continue;
        }
        let mut at = 0;
        for &(s, l) in &used[i] {
            if s > at {
                out.push(FreeRange { pv: i, start: at, len: s - at });
            }
            at = at.max(s + l);
        }
        if pv.pe_count > at {
            out.push(FreeRange { pv: i, start: at, len: pv.pe_count - at });
        }
    }
    out
}

/// Free extents on PV `i`.
pub fn pv_free(vg: &VolumeGroup, i: usize) -> u64 {
    let used: u64 = used_extents(vg)[i].iter().map(|&(_, l)| l).sum();
    vg.physical_volumes[i].pe_count.saturating_sub(used)
}

/// Free extents in the VG (allocatable PVs only).
pub fn vg_free(vg: &VolumeGroup) -> u64 {
    free_ranges(vg, &[]).iter().map(|r| r.len).sum()
}

/// Extents of the VG in all.
pub fn vg_extents(vg: &VolumeGroup) -> u64 {
    vg.physical_volumes.iter().map(|p| p.pe_count).sum()
}

/// A request: `extents` logical extents starting at logical extent `le`, over `stripes`
/// stripes of `stripe_size` sectors, on the PVs (by index) in `allowed` (all when empty),
/// never on the PVs in `exclude`.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub le: u64,
    pub extents: u64,
    pub stripes: usize,
    pub stripe_size: Option<u64>,
    pub allowed: Vec<usize>,
    pub exclude: Vec<usize>,
    /// Continue on the PV where the LV's last segment ends when it has room there (lvextend
    /// of a linear LV keeps it contiguous, as LVM2's `contiguous`-first preference does).
    pub prefer_after: Option<(usize, u64)>,
}

/// Places `req`'s extents; returns the new segments (not yet added to any LV).
pub fn allocate(vg: &VolumeGroup, req: &Request) -> Result<Vec<Segment>, AllocError> {
    let stripes = req.stripes.max(1);
    let mut ranges: Vec<FreeRange> = free_ranges(vg, &req.exclude)
        .into_iter()
        .filter(|r| req.allowed.is_empty() || req.allowed.contains(&r.pv))
        .collect();
    let free: u64 = ranges.iter().map(|r| r.len).sum();
    if req.extents == 0 {
        return Ok(Vec::new());
    }
    let name = |i: usize| vg.physical_volumes[i].name.clone();
    if stripes == 1 {
        if free < req.extents {
            return Err(AllocError::NoSpace { need: req.extents, free });
        }
        // Right after the LV's end when that range can take all of it.
        if let Some((pv, next)) = req.prefer_after {
            if let Some(r) = ranges.iter().find(|r| r.pv == pv && r.start == next && r.len >= req.extents) {
                return Ok(vec![Segment::striped(
                    req.le,
                    req.extents,
                    None,
                    vec![Area { name: name(r.pv), start: r.start }],
                )]);
            }
        }
        // One range that holds it all, else the ranges in order.
        if let Some(r) = ranges.iter().find(|r| r.len >= req.extents) {
            return Ok(vec![Segment::striped(
                req.le,
                req.extents,
                None,
                vec![Area { name: name(r.pv), start: r.start }],
            )]);
        }
        let mut segs = Vec::new();
        let (mut le, mut left) = (req.le, req.extents);
        for r in &ranges {
            if left == 0 {
                break;
            }
            let take = r.len.min(left);
            segs.push(Segment::striped(le, take, None, vec![Area { name: name(r.pv), start: r.start }]));
            le += take;
            left -= take;
        }
        return Ok(segs);
    }
    // Striped: the extents are split evenly; each segment takes one range on each of
    // `stripes` distinct PVs (the PVs with the most free space first, as LVM2 sorts areas).
    let per_stripe = req.extents / stripes as u64;
    let mut pvs_with_space: Vec<usize> = ranges.iter().map(|r| r.pv).collect();
    pvs_with_space.dedup();
    if pvs_with_space.len() < stripes {
        return Err(AllocError::TooFewPvs { stripes, pvs: pvs_with_space.len() });
    }
    let mut segs = Vec::new();
    let mut le = req.le;
    let mut left = per_stripe;
    while left > 0 {
        // Largest free range per PV, then the `stripes` largest of those.
        let mut best: BTreeMap<usize, FreeRange> = BTreeMap::new();
        for r in &ranges {
            if r.len == 0 {
                continue;
            }
            let e = best.entry(r.pv).or_insert(*r);
            if r.len > e.len {
                *e = *r;
            }
        }
        let mut cands: Vec<FreeRange> = best.into_values().collect();
        cands.sort_by(|a, b| b.len.cmp(&a.len).then(a.pv.cmp(&b.pv)));
        if cands.len() < stripes {
            let free_now: u64 = ranges.iter().map(|r| r.len).sum();
            return Err(AllocError::NoSpace {
                need: req.extents,
                free: free_now + (per_stripe - left) * stripes as u64,
            });
        }
        let mut chosen: Vec<FreeRange> = cands[..stripes].to_vec();
        chosen.sort_by_key(|r| r.pv);
        let len = chosen.iter().map(|r| r.len).min().unwrap_or(0).min(left);
        segs.push(Segment::striped(
            le,
            len * stripes as u64,
            req.stripe_size,
            chosen.iter().map(|r| Area { name: name(r.pv), start: r.start }).collect(),
        ));
        for c in &chosen {
            if let Some(r) = ranges.iter_mut().find(|r| r.pv == c.pv && r.start == c.start) {
                r.start += len;
                r.len -= len;
            }
        }
        le += len * stripes as u64;
        left -= len;
    }
    Ok(segs)
}

/// The PVs (by index) a list of segments lies on.
pub fn pvs_of(vg: &VolumeGroup, segs: &[Segment]) -> Vec<usize> {
    let mut out: Vec<usize> = segs
        .iter()
        .flat_map(|s| s.stripes.iter())
        .filter_map(|a| vg.physical_volumes.iter().position(|p| p.name == a.name))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vg::{Extra, LogicalVolume, PhysicalVolume};
    use proptest::prelude::*;

    fn vg(pe_counts: &[u64]) -> VolumeGroup {
        VolumeGroup {
            name: "vg".into(),
            id: "x".into(),
            seqno: 1,
            format: Some("lvm2".into()),
            status: vec![],
            flags: vec![],
            extent_size: 8192,
            max_lv: 0,
            max_pv: 0,
            metadata_copies: Some(0),
            physical_volumes: pe_counts
                .iter()
                .enumerate()
                .map(|(i, &n)| PhysicalVolume {
                    name: format!("pv{i}"),
                    id: format!("id{i}"),
                    device: None,
                    status: vec!["ALLOCATABLE".into()],
                    flags: vec![],
                    dev_size: Some(n * 8192 + 2048),
                    pe_start: 2048,
                    pe_count: n,
                    extra: Extra::default(),
                })
                .collect(),
            logical_volumes: vec![],
            extra: Extra::default(),
        }
    }

    fn add(vg: &mut VolumeGroup, name: &str, segs: Vec<Segment>) {
        vg.logical_volumes.push(LogicalVolume {
            name: name.into(),
            id: name.into(),
            status: vec![],
            flags: vec![],
            creation_time: None,
            creation_host: None,
            segments: segs,
            extra: Extra::default(),
        });
    }

    #[test]
    fn linear_takes_first_fit_then_spans() {
        let mut g = vg(&[10, 10]);
        let s = allocate(&g, &Request { extents: 4, ..Default::default() }).unwrap();
        assert_eq!(s[0].stripes, vec![Area { name: "pv0".into(), start: 0 }]);
        add(&mut g, "a", s);
        let s = allocate(&g, &Request { extents: 12, ..Default::default() }).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].extent_count, s[1].extent_count), (6, 6));
        add(&mut g, "b", s);
        assert_eq!(vg_free(&g), 4);
        assert!(matches!(allocate(&g, &Request { extents: 5, ..Default::default() }), Err(AllocError::NoSpace { .. })));
    }

    #[test]
    fn striped_needs_distinct_pvs() {
        let g = vg(&[10, 10, 3]);
        let s =
            allocate(&g, &Request { extents: 8, stripes: 2, stripe_size: Some(128), ..Default::default() }).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].stripes.len(), 2);
        assert_ne!(s[0].stripes[0].name, s[0].stripes[1].name);
        assert!(matches!(
            allocate(&vg(&[10]), &Request { extents: 2, stripes: 2, ..Default::default() }),
            Err(AllocError::TooFewPvs { .. })
        ));
    }

    proptest! {
        /// Whatever is allocated never overlaps what is in use, never runs past a PV's end,
        /// and covers exactly the extents asked for.
        #[test]
        fn allocations_never_overlap(pes in proptest::collection::vec(1u64..40, 1..5),
                                     reqs in proptest::collection::vec((1u64..30, 1usize..4), 1..12)) {
            let mut g = vg(&pes);
            for (i, (extents, stripes)) in reqs.into_iter().enumerate() {
                let extents = extents / stripes as u64 * stripes as u64;
                if extents == 0 { continue; }
                let req = Request { extents, stripes, stripe_size: (stripes > 1).then_some(128), ..Default::default() };
                let Ok(segs) = allocate(&g, &req) else { continue };
                prop_assert_eq!(segs.iter().map(|s| s.extent_count).sum::<u64>(), extents);
                add(&mut g, &format!("lv{i}"), segs);
                for (p, used) in used_extents(&g).iter().enumerate() {
                    let mut end = 0;
                    for &(s, l) in used {
                        prop_assert!(s >= end, "overlap on pv{}", p);
                        end = s + l;
                    }
                    prop_assert!(end <= g.physical_volumes[p].pe_count);
                }
            }
        }
    }
}
