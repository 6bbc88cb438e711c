//! LVs for their consumers: `lvm:VG/LV` (what mkfs.gfs, mount.gfs and gfs_fsck accept) opens
//! an LV as a device without activating it, through the mapping layer over its PVs' devices
//! (the devices clvm.conf names, as the commands scan them).

use crate::cli::env::{split_lv_path, Common, Env};
use crate::map::LvDevice;
use blockdev::Device;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How often an open mirror probes failed legs and resyncs.
pub const MONITOR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The prefix of an LV named as a device.
pub const LVM_PREFIX: &str = "lvm:";

/// Opens `lvm:VG/LV` (also `lvm:/dev/VG/LV`). Every PV the LV uses must be present; a mirror
/// with a leg missing opens degraded.
pub fn open_lv(spec: &str) -> Result<Arc<dyn Device>, String> {
    let env = Env::new(Common::default()).map_err(|e| e.to_string())?;
    let dev = open_lv_in(&env, spec)?;
    if dev.is_mirror() && dev.clustered() {
        // Each opener keeps its own region state over one disk log: two nodes at once would
        // clear each other's marks (a cluster mirror log is not built yet).
        return Err(format!(
            "{spec} is a mirror in a clustered VG: use it through exclusive activation on one node (lvchange -aey) and its /dev path"
        ));
    }
    Ok(dev)
}

/// As [`open_lv`], scanning the devices `env` names; the LV device itself (mirror state,
/// resync) rather than a plain device.
pub fn open_lv_in(env: &Env, spec: &str) -> Result<Arc<LvDevice>, String> {
    let path = spec.strip_prefix(LVM_PREFIX).unwrap_or(spec);
    let (vg_name, lv_name) = split_lv_path(path).ok_or_else(|| format!("{spec}: expected lvm:VG/LV"))?;
    let scan = env.scan();
    let found = scan.vgs.get(&vg_name).ok_or_else(|| {
        format!(
            "volume group {vg_name} not found on the devices clvm scans ({} devices; see clvm.conf)",
            env.device_list().len()
        )
    })?;
    let lv = found.vg.lv(&lv_name).ok_or_else(|| format!("no logical volume {lv_name} in volume group {vg_name}"))?;
    if !lv.status.iter().any(|s| s == "VISIBLE") {
        return Err(format!("{lv_name} is a sub-volume of another LV, not usable on its own"));
    }
    let pvs: BTreeMap<String, Arc<dyn Device>> = found
        .vg
        .physical_volumes
        .iter()
        .filter_map(|p| scan.pv_by_uuid(&p.id).map(|i| (p.name.clone(), scan.pvs[i].dev.clone())))
        .collect();
    let dev = Arc::new(LvDevice::new(found.vg.clone(), &lv_name, pvs).map_err(|e| e.to_string())?);
    // Mirrors: probe failed legs and resync stale regions in the background.
    dev.start_monitor(MONITOR_INTERVAL);
    Ok(dev)
}
