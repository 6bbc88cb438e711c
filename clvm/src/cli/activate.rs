//! Activation: an LV becomes a local block device `/dev/VG/LV`. Where device-mapper exists
//! LVM2 loads a dm table; here (no device-mapper) each active LV has a device process that
//! serves the LV (through the mapping layer) as a FUSE file attached to a loop device, as
//! gnbd_import does for exports, and links `/dev/VG/LV` to the loop device.
//!
//! In a clustered VG the device process holds the LV's activation lock through clvmd for as
//! long as the LV is active (`-aey`/`-ay` exclusive, `-asy` shared): another node's
//! exclusive activation waits, and a node that dies releases it once fenced.

use super::env::{failed, split_lv_path, Env, EXIT_USAGE};
use super::tx::Tx;
use crate::lock::{ClvmdSession, Scope};
use crate::ops;
use gnbd_import::{BlockDeviceConfig, BlockRecord};
use std::path::PathBuf;

/// How an LV is activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `-ay`, `-aey`: exclusive in a cluster.
    Exclusive,
    /// `-asy`: shared (every node may activate it shared).
    Shared,
    /// `-aly`: this node only, no cluster lock.
    Local,
}

/// `-a` as LVM2 takes it: `y`, `n`, `ey`, `sy`, `ly` (and `e`, `s`, `l` alone).
pub fn parse_activate(v: &str) -> anyhow::Result<Option<Mode>> {
    Ok(match v {
        "y" | "ey" | "e" => Some(Mode::Exclusive),
        "sy" | "s" => Some(Mode::Shared),
        "ly" | "l" => Some(Mode::Local),
        "n" | "en" | "sn" | "ln" => None,
        _ => {
            return Err(daemon::Failure::new(
                EXIT_USAGE,
                format!("Invalid argument for --activate: {v} (y, n, ey, sy, ly)"),
            )
            .into())
        }
    })
}

/// Where activation keeps its state: `activation/run_dir` (default /run/clvm) and
/// `activation/dev_dir` (default /dev).
fn dirs(env: &Env) -> (PathBuf, PathBuf) {
    let get = |k: &str, d: &str| match env.setting(k) {
        Some(crate::text::Value::Str(s)) => PathBuf::from(s),
        _ => PathBuf::from(d),
    };
    (get("activation/run_dir", "/run/clvm"), get("activation/dev_dir", "/dev"))
}

/// device-mapper's name for VG/LV (dashes doubled, joined by one dash).
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// The device process configuration of VG/LV.
pub fn config(env: &Env, vg: &str, lv: &str) -> BlockDeviceConfig {
    let (run, dev) = dirs(env);
    BlockDeviceConfig::in_dir(&run, &dm_name(vg, lv), &format!("{vg}/{lv}"), &dev.join(vg).join(lv), "clvm")
}

/// The record of an active LV whose device process is alive.
pub fn active_record(env: &Env, vg: &str, lv: &str) -> Option<BlockRecord> {
    let cfg = config(env, vg, lv);
    let r = gnbd_import::read_block_record(&cfg.record_path).ok()?;
    std::path::Path::new(&format!("/proc/{}", r.pid)).exists().then_some(r)
}

/// What the device process needs, passed as JSON on its command line.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceJob {
    pub vg: String,
    pub lv: String,
    pub lv_uuid: String,
    pub mode: Mode,
    pub clustered: bool,
    pub devices: Vec<String>,
    pub config: Option<String>,
    pub clvmd_socket: PathBuf,
    pub block: BlockDeviceConfig,
}

/// Activates VG/LV; `Ok(false)` when it was active already.
pub fn activate(env: &Env, tx: &Tx<'_>, vg: &str, lv: &str, mode: Mode) -> anyhow::Result<bool> {
    if active_record(env, vg, lv).is_some() {
        return Ok(false);
    }
    let found = tx.vg(vg)?;
    let l = found
        .vg
        .lv(lv)
        .filter(|l| l.status.iter().any(|s| s == "VISIBLE"))
        .ok_or_else(|| failed(format!("Failed to find logical volume \"{vg}/{lv}\"")))?;
    let clustered = ops::is_clustered(&found.vg);
    let mirror = l.segments.iter().any(|s| s.segtype == "mirror");
    if clustered && mirror && mode == Mode::Shared {
        return Err(failed(format!(
            "{vg}/{lv} is a mirror: shared activation needs a cluster mirror log, not supported yet (use -aey)"
        )));
    }
    if clustered && mode != Mode::Local && tx.clvmd_mode().is_none() {
        return Err(failed(format!("Cannot activate {vg}/{lv} in clustered VG {vg}: clvmd is not running")));
    }
    let block = config(env, vg, lv);
    let job = DeviceJob {
        vg: vg.into(),
        lv: lv.into(),
        lv_uuid: l.id.clone(),
        mode,
        clustered,
        devices: env.device_list(),
        config: env.common.config.clone(),
        clvmd_socket: env.common.clvmd_socket.clone(),
        block: block.clone(),
    };
    std::fs::create_dir_all(block.record_path.parent().unwrap_or(std::path::Path::new("/")))
        .map_err(|e| failed(format!("{}: {e}", block.record_path.display())))?;
    let log = block.record_path.with_extension("log");
    let exe = std::env::current_exe().map_err(|e| failed(format!("cannot find my own executable: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("lv-device")
        .arg(serde_json::to_string(&job).map_err(|e| failed(e.to_string()))?)
        .arg("--log-file")
        .arg(&log);
    gnbd_import::start_block_device(&mut cmd, "clvm", &block, &log)
        .map_err(|e| failed(format!("Failed to activate {vg}/{lv}: {e}")))?;
    Ok(true)
}

/// Processes that hold `dev` open (their /proc/PID/fd links), as `fuser` finds them: the
/// pid and command name of each.
pub fn holders(dev: &std::path::Path) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == dev)) {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default().trim().to_owned();
            out.push((pid, comm));
        }
    }
    out
}

/// Deactivates VG/LV: refused while it is open (mounted, held) unless `force`.
pub fn deactivate(env: &Env, vg: &str, lv: &str, force: bool) -> anyhow::Result<bool> {
    let cfg = config(env, vg, lv);
    let Ok(r) = gnbd_import::read_block_record(&cfg.record_path) else { return Ok(false) };
    if !force {
        let held = holders(&r.loop_device);
        if let Some((pid, comm)) = held.first() {
            return Err(failed(format!(
                "Logical volume {vg}/{lv} in use: {} (pid {pid}) holds {} open",
                comm,
                r.loop_device.display()
            )));
        }
    }
    gnbd_import::remove_block_device(&r, force).map_err(|e| match e {
        gnbd_import::BlockDeviceError::Busy { .. } => {
            failed(format!("Logical volume {vg}/{lv} in use: unmount it (or close it) first"))
        }
        e => failed(format!("Failed to deactivate {vg}/{lv}: {e}")),
    })?;
    Ok(true)
}

/// The device process (`clvm lv-device JOB`): takes the activation lock, opens the LV and
/// serves it until stopped.
pub fn device_main(job: DeviceJob, log: &daemon::log::LogArgs) -> anyhow::Result<()> {
    let signals = daemon::signals::install()?;
    let logfile = job.block.record_path.with_extension("log");
    daemon::log::init(&daemon::log::LogConfig::new("info", log).with_file(Some(logfile)))?;
    // The activation lock, held as long as this process lives.
    let mut _session = None;
    if job.clustered && job.mode != Mode::Local {
        let mut s = ClvmdSession::connect(&job.clvmd_socket)
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| failed("clvmd is not running"))?;
        let scope = Scope::Lv(job.vg.clone(), job.lv_uuid.clone());
        s.lock_with(&scope, job.mode == Mode::Exclusive, true)
            .map_err(|e| failed(format!("{}/{} is active on another node: {e}", job.vg, job.lv)))?;
        _session = Some(s);
    }
    let common = super::env::Common {
        devices: job.devices.clone(),
        config: job.config.clone(),
        clvmd_socket: job.clvmd_socket.clone(),
        ..Default::default()
    };
    let env = Env::new(common)?;
    let dev = crate::activate::open_lv_in(&env, &format!("{}/{}", job.vg, job.lv)).map_err(failed)?;
    let ready = |r: &BlockRecord| {
        daemon::ready::ready(&format!(
            "clvm: ready lv={}/{} device={} loop={}",
            job.vg,
            job.lv,
            r.config.link.display(),
            r.loop_device.display()
        ))
    };
    // Straight on the exports' async clients where it can (linear/striped over gnbd PVs),
    // else through the LV device on the blocking pool.
    match crate::serve::LvBackend::new(dev.clone()) {
        Some(b) => gnbd_import::run_backend_device(std::sync::Arc::new(b), job.block.clone(), signals, ready),
        None => gnbd_import::run_block_device(dev, job.block.clone(), signals, ready),
    }
}

/// `lvchange -a y|n|ey|sy|ly VG/LV...`
#[derive(Debug, clap::Args)]
pub struct Lvchange {
    #[arg(value_name = "VG/LV", required = true)]
    pub lvs: Vec<String>,
    /// Activate (y, ey, sy, ly) or deactivate (n).
    #[arg(short = 'a', long = "activate", value_name = "y|n|ey|sy|ly")]
    pub activate: Option<String>,
}

pub fn lvchange(env: &Env, a: Lvchange) -> anyhow::Result<()> {
    let Some(act) = &a.activate else {
        return Err(daemon::Failure::new(EXIT_USAGE, "Need one or more command options: -a").into());
    };
    let mode = parse_activate(act)?;
    let mut names = Vec::new();
    for s in &a.lvs {
        names.push(split_lv_path(s).ok_or_else(|| failed(format!("Please specify VG/LV, not {s}")))?);
    }
    let vgs: Vec<&str> = names.iter().map(|(v, _)| v.as_str()).collect();
    let tx = Tx::begin(env, false, &vgs, false, &[])?;
    for (vg, lv) in &names {
        match mode {
            Some(m) => {
                activate(env, &tx, vg, lv, m)?;
            }
            None => {
                deactivate(env, vg, lv, false)?;
            }
        }
    }
    Ok(())
}

/// `vgchange -a` for every visible LV of `vg`; prints LVM2's count line.
pub fn vgchange_activate(env: &Env, tx: &Tx<'_>, vg: &str, mode: Option<Mode>) -> anyhow::Result<()> {
    let found = tx.vg(vg)?;
    let lvs: Vec<String> = found
        .vg
        .logical_volumes
        .iter()
        .filter(|l| l.status.iter().any(|s| s == "VISIBLE"))
        .map(|l| l.name.clone())
        .collect();
    for lv in &lvs {
        match mode {
            Some(m) => {
                activate(env, tx, vg, lv, m)?;
            }
            None => {
                deactivate(env, vg, lv, false)?;
            }
        }
    }
    let active = lvs.iter().filter(|lv| active_record(env, vg, lv).is_some()).count();
    env.say(format!("{active} logical volume(s) in volume group \"{vg}\" now active"));
    Ok(())
}

/// Refuses a change that needs the LV inactive.
pub fn refuse_if_active(env: &Env, vg: &str, lv: &str, what: &str) -> anyhow::Result<()> {
    if active_record(env, vg, lv).is_some() {
        return Err(failed(format!(
            "Logical volume {vg}/{lv} is active: deactivate it (lvchange -an {vg}/{lv}) before {what}"
        )));
    }
    Ok(())
}
