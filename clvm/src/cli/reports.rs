//! pvs, vgs, lvs, pvdisplay, vgdisplay, lvdisplay: the report layer (`crate::report`) over a
//! scan. Their options are LVM2's and parsed by the report layer; the common options
//! (`--devices`, `--config`, `--clvmd-socket`, `--nolocking`) are taken out first.

use super::env::{Common, Env};
use crate::report::{self, DisplayArgs, DisplayCommand, LvState, PvSource, ReportArgs, Source};
use crate::scan::Scan;

/// A report command's arguments, as given.
#[derive(Debug, clap::Args)]
pub struct Raw {
    /// LVM2's report options (-o, -O, -S, --units, --separator, --noheadings,
    /// --reportformat json, ...) and names to report on.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// Takes the common options out of a report's argument list.
pub fn split_common(mut common: Common, raw: Vec<String>) -> (Common, Vec<String>) {
    let mut rest = Vec::new();
    let mut it = raw.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let mut value = |inline: Option<String>| inline.or_else(|| it.next());
        match flag.as_str() {
            "--devices" => {
                if let Some(v) = value(inline) {
                    common.devices.extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_owned));
                }
            }
            "--config" => common.config = value(inline),
            "--clvmd-socket" => {
                if let Some(v) = value(inline) {
                    common.clvmd_socket = v.into();
                }
            }
            "--nolocking" => common.nolocking = true,
            _ => rest.push(a),
        }
    }
    (common, rest)
}

/// The report layer's view of a scan.
pub fn source(scan: &Scan) -> Source {
    let pvs = scan
        .pvs
        .iter()
        .enumerate()
        .map(|(i, p)| PvSource {
            device: p.spec.clone(),
            dev_size: p.dev_size(),
            devno: devno(&p.spec),
            label: p.label.clone(),
            mdas: p.mdas.iter().filter_map(|m| m.header.clone().ok()).collect(),
            vg: scan.vg_of(i).map(|f| f.vg.name.clone()),
        })
        .collect();
    Source { pvs, vgs: scan.vgs.values().map(|f| f.vg.clone()).collect() }
}

/// Major and minor of a block device.
fn devno(path: &str) -> Option<(u32, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).ok()?;
    if !m.file_type().is_block_device() {
        return None;
    }
    let rdev = m.rdev();
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    Some((major as u32, minor as u32))
}

/// What the report prints and the exit code, as an error when it is not 0.
fn emit(out: report::Output) -> anyhow::Result<()> {
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    if out.status != 0 {
        return Err(daemon::Failure::quiet(out.status.clamp(1, 255) as u8).into());
    }
    Ok(())
}

fn refused(e: report::ReportError) -> anyhow::Error {
    eprint!("{}", e.stderr());
    daemon::Failure::quiet(e.exit_code().clamp(1, 255) as u8).into()
}

/// Whether VG/LV is active on this node (its device process alive), as the reports show it.
fn state(env: &Env, vg: &str, lv: &str) -> LvState {
    match super::activate::active_record(env, vg, lv) {
        None => LvState::Inactive,
        Some(r) => LvState::Active(report::ActiveLv {
            open: gnbd_import::is_busy(&r.loop_device),
            devno: devno(&r.loop_device.to_string_lossy()),
            ..Default::default()
        }),
    }
}

pub fn run_report(common: Common, cmd: report::Command, raw: Raw) -> anyhow::Result<()> {
    let (common, rest) = split_common(common, raw.args);
    let args = ReportArgs::parse(cmd, &rest).map_err(refused)?;
    let env = Env::new(common)?;
    let scan = env.scan();
    let out = report::report(&args, &source(&scan), &|vg, lv| state(&env, vg, lv)).map_err(refused)?;
    emit(out)
}

pub fn run_display(common: Common, cmd: DisplayCommand, raw: Raw) -> anyhow::Result<()> {
    let (common, rest) = split_common(common, raw.args);
    let args = DisplayArgs::parse(cmd, &rest).map_err(refused)?;
    let env = Env::new(common)?;
    let scan = env.scan();
    let out = report::display(&args, &source(&scan), &|vg, lv| state(&env, vg, lv)).map_err(refused)?;
    emit(out)
}
