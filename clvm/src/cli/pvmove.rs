//! pvmove: moves the allocated extents of a PV to other PVs of its VG.
//!
//! The move holds the VG lock exclusively from start to end. It plans new places for every
//! area on the source PV (linear areas may split over several free ranges; a stripe needs one
//! range on a PV its other stripes do not use), copies the data, syncs the destinations, and
//! then commits metadata that points at the new places. A crash before the commit leaves the
//! old metadata in force (the copies sit in space that is still free); after it, the move is
//! done. The LVs must not be in use while they move: a process that has one open (a gfs mount
//! of `lvm:VG/LV`) keeps its old map.

use super::env::{display_size, failed, Env};
use super::tx::Tx;
use crate::alloc::{self, Request};
use crate::vg::{Area, Extra, LogicalVolume, Segment, VolumeGroup};

/// `pvmove SOURCE [DEST...] [-n LV]`
#[derive(Debug, clap::Args)]
pub struct Pvmove {
    /// The PV to empty, then PVs to move to (default: any other PV of the VG).
    #[arg(value_name = "PV", required = true)]
    pub pvs: Vec<String>,
    /// Only move the extents of this LV.
    #[arg(short = 'n', long = "name", value_name = "LV")]
    pub name: Option<String>,
    /// Report progress every N seconds (accepted; progress is reported per area moved).
    #[arg(short = 'i', long = "interval", value_name = "N")]
    pub interval: Option<u64>,
}

/// One area to move: LV, segment index, stripe index, old and new place.
#[derive(Debug, Clone)]
struct Move {
    lv: String,
    seg: usize,
    stripe: usize,
    len: u64,
    from: Area,
    to: Vec<(Area, u64)>,
}

/// The new places for every area on PV `src` (by index), not yet applied.
fn plan(vg: &VolumeGroup, src: usize, dests: &[usize], only: Option<&str>) -> Result<Vec<Move>, String> {
    let src_name = vg.physical_volumes[src].name.clone();
    let mut trial = vg.clone();
    let mut moves = Vec::new();
    for lv in &vg.logical_volumes {
        if only.is_some_and(|n| n != lv.name && !lv.name.starts_with(&format!("{n}_m"))) {
            continue;
        }
        for (si, seg) in lv.segments.iter().enumerate() {
            let per = seg.extent_count / seg.stripes.len().max(1) as u64;
            for (k, a) in seg.stripes.iter().enumerate() {
                if a.name != src_name {
                    continue;
                }
                // Other stripes' PVs stay out, and so does the source.
                let mut exclude: Vec<usize> = seg
                    .stripes
                    .iter()
                    .filter_map(|o| vg.physical_volumes.iter().position(|p| p.name == o.name))
                    .collect();
                exclude.push(src);
                let req = Request { extents: per, allowed: dests.to_vec(), exclude, ..Default::default() };
                let segs = alloc::allocate(&trial, &req).map_err(|e| e.to_string())?;
                if seg.stripes.len() > 1 && segs.len() > 1 {
                    return Err(format!(
                        "Insufficient contiguous free space for stripe {k} of {}: {per} extents in one range are needed",
                        lv.name
                    ));
                }
                let to: Vec<(Area, u64)> = segs.iter().map(|s| (s.stripes[0].clone(), s.extent_count)).collect();
                // Reserve them in the trial VG so later areas do not take them too.
                trial.logical_volumes.push(LogicalVolume {
                    name: format!("pvmove{}", moves.len()),
                    id: String::new(),
                    status: vec![],
                    flags: vec![],
                    creation_time: None,
                    creation_host: None,
                    segments: segs,
                    extra: Extra::default(),
                });
                moves.push(Move { lv: lv.name.clone(), seg: si, stripe: k, len: per, from: a.clone(), to });
            }
        }
    }
    Ok(moves)
}

/// The VG after the moves: each moved area points at its new place (a linear area that went
/// to several ranges becomes several segments).
fn apply(vg: &VolumeGroup, moves: &[Move]) -> VolumeGroup {
    let mut out = vg.clone();
    for lv in &mut out.logical_volumes {
        let mut segs = Vec::new();
        for (si, seg) in lv.segments.iter().enumerate() {
            let here: Vec<&Move> = moves.iter().filter(|m| m.lv == lv.name && m.seg == si).collect();
            if here.is_empty() {
                segs.push(seg.clone());
                continue;
            }
            if seg.stripes.len() == 1 {
                let m = here[0];
                let mut le = seg.start_extent;
                for (a, n) in &m.to {
                    let mut s = seg.clone();
                    s.start_extent = le;
                    s.extent_count = *n;
                    s.stripes = vec![a.clone()];
                    s.stripe_count = Some(1);
                    segs.push(s);
                    le += n;
                }
            } else {
                let mut s: Segment = seg.clone();
                for m in here {
                    s.stripes[m.stripe] = m.to[0].0.clone();
                }
                segs.push(s);
            }
        }
        lv.segments = segs;
    }
    out
}

pub fn pvmove(env: &Env, a: Pvmove) -> anyhow::Result<()> {
    let source = a.pvs[0].clone();
    // Which VG: found without the lock first, then everything again under it.
    let probe = env.scan_with(&a.pvs);
    let i =
        probe.pv_by_device(&source).ok_or_else(|| failed(format!("Failed to find physical volume \"{source}\".")))?;
    let vg_name = probe
        .vg_of(i)
        .map(|f| f.vg.name.clone())
        .ok_or_else(|| failed(format!("Physical volume {source} not in a volume group")))?;
    drop(probe);
    let tx = Tx::begin(env, false, &[vg_name.as_str()], true, &a.pvs)?;
    let found = tx.vg_for_change(&vg_name)?;
    let idx_of = |spec: &str| -> anyhow::Result<usize> {
        let i =
            tx.scan.pv_by_device(spec).ok_or_else(|| failed(format!("Failed to find physical volume \"{spec}\".")))?;
        let id = tx.scan.pvs[i].uuid();
        found
            .vg
            .physical_volumes
            .iter()
            .position(|p| p.id == id)
            .ok_or_else(|| failed(format!("Physical Volume \"{spec}\" not found in Volume Group \"{vg_name}\".")))
    };
    let src = idx_of(&source)?;
    let dests = a.pvs[1..].iter().map(|d| idx_of(d)).collect::<anyhow::Result<Vec<usize>>>()?;
    if let Some(n) = &a.name {
        if found.vg.lv(n).is_none() {
            return Err(failed(format!("Logical volume {n} not found in volume group {vg_name}.")));
        }
    }
    let moves = plan(&found.vg, src, &dests, a.name.as_deref()).map_err(failed)?;
    if moves.is_empty() {
        return Err(failed(format!("No data to move for {vg_name}.")));
    }
    // Copy every area, then make the copies stable, then commit.
    let es = found.vg.extent_size * 512;
    let dev_of = |pv_name: &str| -> anyhow::Result<(std::sync::Arc<dyn blockdev::Device>, u64)> {
        let p = found.vg.pv(pv_name).ok_or_else(|| failed(format!("no {pv_name} in {vg_name}")))?;
        let i = tx.scan.pv_by_uuid(&p.id).ok_or_else(|| failed(format!("PV {} is missing", p.id)))?;
        Ok((tx.scan.pvs[i].dev.clone(), p.pe_start * 512))
    };
    let total: u64 = moves.iter().map(|m| m.len).sum();
    let mut done = 0u64;
    let mut buf = vec![0u8; (1 << 20).min(es as usize)];
    for m in &moves {
        let (from_dev, from_base) = dev_of(&m.from.name)?;
        let mut src_ext = m.from.start;
        for (to, n) in &m.to {
            let (to_dev, to_base) = dev_of(&to.name)?;
            let bytes = n * es;
            let (from_off, to_off) = (from_base + src_ext * es, to_base + to.start * es);
            let mut off = 0;
            while off < bytes {
                let len = (bytes - off).min(buf.len() as u64) as usize;
                from_dev.read_at(&mut buf[..len], from_off + off).map_err(|e| failed(format!("{source}: {e}")))?;
                to_dev.write_at(&buf[..len], to_off + off).map_err(|e| failed(format!("{}: {e}", to.name)))?;
                off += len as u64;
            }
            to_dev.sync().map_err(|e| failed(format!("{}: {e}", to.name)))?;
            src_ext += n;
            done += n;
        }
        env.say(format!("{source}: Moved: {:.2}%", done as f64 * 100.0 / total as f64));
    }
    let new = apply(&found.vg, &moves);
    let problems = super::vg::check_model(&new);
    if !problems.is_empty() {
        return Err(failed(format!(
            "pvmove planned an inconsistent layout, nothing committed: {}",
            problems.join("; ")
        )));
    }
    let mut tx = tx;
    tx.commit(&found, new, &[])?;
    env.say(format!("{source}: {} moved ({total} extents).", display_size(total * es)));
    Ok(())
}
