//! pvcreate, pvremove, pvck.

use super::env::{failed, parse_size, Env};
use super::tx::Tx;
use crate::disk::{self, PvcreateOptions};
use crate::label::parse_uuid;

/// `pvcreate [--uuid ID] [--metadatasize SIZE] [--dataalignment SIZE] [--pvmetadatacopies N] DEV...`
#[derive(Debug, clap::Args)]
pub struct Pvcreate {
    /// Devices to initialise.
    #[arg(value_name = "DEV", required = true)]
    pub devices: Vec<String>,
    /// Overwrite a PV that belongs to a volume group (-ff), or a PV's label without asking.
    #[arg(short = 'f', long = "force", action = clap::ArgAction::Count)]
    pub force: u8,
    /// The PV UUID to write (with --restorefile or --norestorefile, as vgcfgrestore needs).
    #[arg(short = 'u', long = "uuid", value_name = "UUID")]
    pub uuid: Option<String>,
    /// Accepted for LVM2 compatibility (the UUID is used as given).
    #[arg(long = "norestorefile")]
    pub norestorefile: bool,
    /// Take the PV's layout from this backup file (with --uuid).
    #[arg(long = "restorefile", value_name = "FILE")]
    pub restorefile: Option<String>,
    /// Space for each metadata area (default: up to the first MiB).
    #[arg(long = "metadatasize", value_name = "SIZE")]
    pub metadatasize: Option<String>,
    /// Align the start of the data area to a multiple of SIZE (default 1 MiB).
    #[arg(long = "dataalignment", value_name = "SIZE")]
    pub dataalignment: Option<String>,
    /// Metadata areas on the PV: 0, 1, or 2 (a second copy at the end of the device).
    #[arg(long = "pvmetadatacopies", value_name = "N", default_value_t = 1)]
    pub pvmetadatacopies: u32,
    /// Wipe signatures: accepted (y) for LVM2 compatibility.
    #[arg(short = 'Z', long = "zero", value_name = "y|n")]
    pub zero: Option<String>,
}

pub fn pvcreate(env: &Env, a: Pvcreate) -> anyhow::Result<()> {
    let mut opts = PvcreateOptions { metadata_copies: a.pvmetadatacopies, ..Default::default() };
    if let Some(u) = &a.uuid {
        opts.uuid = Some(parse_uuid(u).ok_or_else(|| failed(format!("Invalid UUID format {u}")))?);
        if !a.norestorefile && a.restorefile.is_none() {
            return Err(failed("--uuid requires --restorefile or --norestorefile"));
        }
    }
    if let Some(s) = &a.metadatasize {
        opts.metadata_size = Some(parse_size(s, 'm').map_err(failed)?);
    }
    if let Some(s) = &a.dataalignment {
        opts.data_alignment = parse_size(s, 'k').map_err(failed)?;
    }
    let tx = Tx::begin(env, true, &[], true, &a.devices)?;
    let mut errors = Vec::new();
    for spec in &a.devices {
        if let Some(i) = tx.scan.pv_by_device(spec) {
            if let Some(f) = tx.scan.vg_of(i) {
                if a.force < 2 {
                    errors.push(format!(
                        "Can't initialize physical volume \"{spec}\" of volume group \"{}\" without -ff",
                        f.vg.name
                    ));
                    continue;
                }
                if !env.confirm(&format!(
                    "Really INITIALIZE physical volume \"{spec}\" of volume group \"{}\"?",
                    f.vg.name
                )) {
                    errors.push(format!("{spec}: physical volume not initialized"));
                    continue;
                }
            }
        }
        let dev = match env.open(spec) {
            Ok(d) => d,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        match disk::pvcreate(spec, dev, &opts) {
            Ok(_) => {
                env.say(format!("Physical volume \"{spec}\" successfully created."));
            }
            Err(e) => errors.push(format!("Cannot create physical volume {e}")),
        }
    }
    drop(tx);
    finish_many(errors)
}

/// All done, or the first refusals as the failure (the rest printed).
pub(super) fn finish_many(errors: Vec<String>) -> anyhow::Result<()> {
    let n = errors.len();
    for (i, e) in errors.into_iter().enumerate() {
        if i + 1 == n {
            return Err(failed(e));
        }
        eprintln!("  {e}");
    }
    Ok(())
}

/// `pvremove DEV...`
#[derive(Debug, clap::Args)]
pub struct Pvremove {
    #[arg(value_name = "DEV", required = true)]
    pub devices: Vec<String>,
    /// Remove a PV that belongs to a VG (-ff), leaving the VG without it.
    #[arg(short = 'f', long = "force", action = clap::ArgAction::Count)]
    pub force: u8,
}

pub fn pvremove(env: &Env, a: Pvremove) -> anyhow::Result<()> {
    let tx = Tx::begin(env, true, &[], true, &a.devices)?;
    let mut errors = Vec::new();
    for spec in &a.devices {
        let Some(i) = tx.scan.pv_by_device(spec) else {
            errors.push(format!("No PV found on device {spec}."));
            continue;
        };
        if let Some(f) = tx.scan.vg_of(i) {
            if a.force < 2 {
                errors.push(format!("PV {spec} is used by VG {} so please use vgreduce first.", f.vg.name));
                continue;
            }
        }
        match disk::pvremove(&tx.scan.pvs[i]) {
            Ok(()) => env.say(format!("Labels on physical volume \"{spec}\" successfully wiped.")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    finish_many(errors)
}

/// `pvck DEV...`
#[derive(Debug, clap::Args)]
pub struct Pvck {
    #[arg(value_name = "DEV", required = true)]
    pub devices: Vec<String>,
}

pub fn pvck(env: &Env, a: Pvck) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for spec in &a.devices {
        let dev = env.open(spec)?;
        match disk::read_pv(spec, dev) {
            Ok(None) => errors.push(format!("Could not find LVM label on {spec}")),
            Err(e) => errors.push(e.to_string()),
            Ok(Some(pv)) => {
                env.say(format!("Found label on {spec}, sector {}, type=LVM2 001", pv.label.sector));
                for (i, m) in pv.mdas.iter().enumerate() {
                    match &m.header {
                        Err(e) => errors.push(format!("{spec}: metadata area {} at {}: {e}", i + 1, m.locn.offset)),
                        Ok(h) => {
                            env.say(format!("Found metadata area {} at {} size {}", i + 1, m.locn.offset, m.locn.size));
                            if h.committed().is_some() {
                                match pv.read_text(i, false) {
                                    Ok(Some(t)) => env.say(format!(
                                        "Metadata text for VG {} seqno {} at {} size {}: checksum correct",
                                        t.vg.name, t.vg.seqno, t.locn.offset, t.locn.size
                                    )),
                                    Ok(None) => {}
                                    Err(e) => errors.push(e.to_string()),
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    finish_many(errors)
}
