//! The LVM2 commands: `clvm SUBCOMMAND ...`, or the classic name (`pvcreate ...`) when the
//! binary is called through a link of that name. Flags, messages and exit codes follow LVM2
//! 2.03 (0 done, 3 bad command line, 5 refused or failed).

pub mod activate;
pub mod env;
mod lv;
mod pv;
mod pvmove;
mod reports;
pub mod tx;
mod vg;

use clap::{Parser, Subcommand};
pub use env::{Common, Env};
pub use reports::source as reports_source;
pub use vg::check_model as vg_check;

const AFTER_HELP: &str = "\
DESCRIPTION
    clvm manages LVM2 physical volumes, volume groups and logical volumes on local and
    shared storage: block devices, files, gnbd imports (/dev/gnbd/NAME) and gnbd exports
    (gnbd://SERVER[:PORT]/NAME, reached through the client library, no kernel device needed).
    The on-disk format is LVM2's own: stock lvm2 tools read what clvm writes and the other
    way round.

    Each command is also installed under its LVM2 name (pvcreate, vgcreate, lvcreate, ...);
    called through such a link, clvm behaves as that command.

DEVICES
    Commands scan --devices when given, else the devices/devices list and every device under
    the devices/scan directories (default /dev/gnbd) of $LVM_SYSTEM_DIR/clvm.conf, plus the
    devices named on the command line. clvm.conf uses LVM2's configuration syntax:

        devices {
            devices = [ \"gnbd://storage1/disk0\", \"gnbd://storage2/disk0\", \"/dev/sdb\" ]
            scan = [ \"/dev/gnbd\" ]
        }

LOCKING
    Local VGs are locked with LVM2's lock files (/run/lock/lvm), so clvm and stock lvm2
    exclude each other on one host. Clustered VGs (vgcreate -c y) are changed under DLM locks
    taken through clvmd; see clvm/docs/locking.md.

FILES
    $LVM_SYSTEM_DIR (default /etc/lvm): clvm.conf, backup/VG (after every change),
    archive/VG_NNNNN-*.vg (before every change); vgcfgrestore reads both.

EXIT STATUS
    0   done
    3   bad command line
    5   refused or failed: the message says why";

/// LVM2-compatible volume manager.
#[derive(Debug, Parser)]
#[command(name = "clvm", version, after_long_help = AFTER_HELP, disable_help_subcommand = true)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    #[command(flatten)]
    pub common: Common,
}

/// The subcommands, named as LVM2's commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Initialise devices as physical volumes.
    Pvcreate(pv::Pvcreate),
    /// Wipe the LVM2 label of unused physical volumes.
    Pvremove(pv::Pvremove),
    /// Check a physical volume's label and metadata areas.
    Pvck(pv::Pvck),
    /// Move the allocated extents of a physical volume to other physical volumes of its VG.
    Pvmove(pvmove::Pvmove),
    /// Create a volume group.
    Vgcreate(vg::Vgcreate),
    /// Add physical volumes to a volume group.
    Vgextend(vg::Vgextend),
    /// Remove unused physical volumes from a volume group.
    Vgreduce(vg::Vgreduce),
    /// Remove volume groups.
    Vgremove(vg::Vgremove),
    /// Rename a volume group.
    Vgrename(vg::Vgrename),
    /// Change volume group attributes: clustered (-c), activation (-a).
    Vgchange(vg::Vgchange),
    /// Check the consistency of volume groups.
    Vgck(vg::Vgck),
    /// Back up volume group metadata to a file.
    Vgcfgbackup(vg::Vgcfgbackup),
    /// Restore volume group metadata from a backup or archive file.
    Vgcfgrestore(vg::Vgcfgrestore),
    /// Create a logical volume.
    Lvcreate(lv::Lvcreate),
    /// Grow a logical volume.
    Lvextend(lv::Lvresize),
    /// Shrink a logical volume.
    Lvreduce(lv::Lvresize),
    /// Grow or shrink a logical volume.
    Lvresize(lv::Lvresize),
    /// Remove logical volumes.
    Lvremove(lv::Lvremove),
    /// Rename a logical volume.
    Lvrename(lv::Lvrename),
    /// Activate or deactivate logical volumes (-a y|n|ey|sy|ly).
    Lvchange(activate::Lvchange),
    /// The device process of an active LV (started by lvchange/vgchange -a y).
    #[command(hide = true)]
    LvDevice(LvDeviceArgs),
    /// Report on physical volumes (LVM2's options: -o, -O, -S, --units, --reportformat, ...).
    Pvs(reports::Raw),
    /// Report on volume groups.
    Vgs(reports::Raw),
    /// Report on logical volumes.
    Lvs(reports::Raw),
    /// Show physical volumes (full, -c, -s, -m).
    Pvdisplay(reports::Raw),
    /// Show volume groups (full, -c, -s, -v).
    Vgdisplay(reports::Raw),
    /// Show logical volumes (full, -c, -m).
    Lvdisplay(reports::Raw),
}

/// `clvm lv-device JOB`: the job as JSON (from activate) and the log options.
#[derive(Debug, clap::Args)]
pub struct LvDeviceArgs {
    #[arg(value_name = "JOB")]
    pub job: String,
    #[command(flatten)]
    pub log: daemon::log::LogArgs,
}

/// The classic names the binary answers to (links to it).
pub const COMMANDS: &[&str] = &[
    "pvcreate",
    "pvremove",
    "pvck",
    "pvmove",
    "vgcreate",
    "vgextend",
    "vgreduce",
    "vgremove",
    "vgrename",
    "vgchange",
    "vgck",
    "vgcfgbackup",
    "vgcfgrestore",
    "lvcreate",
    "lvextend",
    "lvreduce",
    "lvresize",
    "lvremove",
    "lvrename",
    "lvchange",
    "pvs",
    "vgs",
    "lvs",
    "pvdisplay",
    "vgdisplay",
    "lvdisplay",
];

/// The arguments with the subcommand inserted when called as `pvcreate` and the like.
pub fn args_from(argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let name = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if COMMANDS.contains(&name.as_str()) {
        let mut out = vec![std::ffi::OsString::from("clvm"), name.into()];
        out.extend(argv.into_iter().skip(1));
        return out;
    }
    argv
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    use crate::report::{Command as R, DisplayCommand as D};
    let env = Env::new(cli.common)?;
    match cli.cmd {
        Cmd::Pvcreate(a) => pv::pvcreate(&env, a),
        Cmd::Pvremove(a) => pv::pvremove(&env, a),
        Cmd::Pvck(a) => pv::pvck(&env, a),
        Cmd::Pvmove(a) => pvmove::pvmove(&env, a),
        Cmd::Vgcreate(a) => vg::vgcreate(&env, a),
        Cmd::Vgextend(a) => vg::vgextend(&env, a),
        Cmd::Vgreduce(a) => vg::vgreduce(&env, a),
        Cmd::Vgremove(a) => vg::vgremove(&env, a),
        Cmd::Vgrename(a) => vg::vgrename(&env, a),
        Cmd::Vgchange(a) => vg::vgchange(&env, a),
        Cmd::Vgck(a) => vg::vgck(&env, a),
        Cmd::Vgcfgbackup(a) => vg::vgcfgbackup(&env, a),
        Cmd::Vgcfgrestore(a) => vg::vgcfgrestore(&env, a),
        Cmd::Lvcreate(a) => lv::lvcreate(&env, a),
        Cmd::Lvextend(a) => lv::lvresize(&env, a, lv::Direction::Grow),
        Cmd::Lvreduce(a) => lv::lvresize(&env, a, lv::Direction::Shrink),
        Cmd::Lvresize(a) => lv::lvresize(&env, a, lv::Direction::Either),
        Cmd::Lvremove(a) => lv::lvremove(&env, a),
        Cmd::Lvrename(a) => lv::lvrename(&env, a),
        Cmd::Lvchange(a) => activate::lvchange(&env, a),
        Cmd::LvDevice(a) => {
            let job: activate::DeviceJob = serde_json::from_str(&a.job)
                .map_err(|e| daemon::Failure::new(env::EXIT_USAGE, format!("bad device job: {e}")))?;
            activate::device_main(job, &a.log)
        }
        // The report layer parses LVM2's report options itself.
        Cmd::Pvs(a) => reports::run_report(env.common, R::Pvs, a),
        Cmd::Vgs(a) => reports::run_report(env.common, R::Vgs, a),
        Cmd::Lvs(a) => reports::run_report(env.common, R::Lvs, a),
        Cmd::Pvdisplay(a) => reports::run_display(env.common, D::Pv, a),
        Cmd::Vgdisplay(a) => reports::run_display(env.common, D::Vg, a),
        Cmd::Lvdisplay(a) => reports::run_display(env.common, D::Lv, a),
    }
}
