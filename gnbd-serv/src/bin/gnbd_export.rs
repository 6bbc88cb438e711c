//! `gnbd_export`: create, remove and list the exports of a running gnbd_serv.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use gnbd_serv::admin::{run, Action};

const AFTER_HELP: &str = "\
DESCRIPTION
    gnbd_export talks to the gnbd_serv of a state directory through its control socket.
    Changes take effect at once and persist across server restarts. Export names are NBD
    export names: a client reaches export NAME as nbd://SERVER:PORT/NAME.

    Exports are uncached by default: reads and writes bypass the server's page cache
    (O_DIRECT), as with GNBD, so what a client wrote is on the device, not in server memory.
    With -c they go through the page cache, which is faster for re-read data; FLUSH and FUA
    still reach stable storage in both modes.

EXAMPLES
    Export a file and a read-only block device:
        gnbd_export -e disk0 -d /srv/disk0.img
        gnbd_export -e shared -d /dev/sdb -o

    Export a logical volume activated on this node (lvchange -ay vg0/data):
        gnbd_export -e data -d vg0/data

    List exports, as a table or as JSON:
        gnbd_export -l
        gnbd_export -l --json

    Export a disk that only TLS clients may open (gnbd_serv --tls selective):
        gnbd_export -e secure0 -d /srv/secure0.img --tls

    Remove an export, disconnecting its clients:
        gnbd_export -r disk0 -O

EXIT STATUS
    0   done
    1   refused or failed (the server is not running, the path does not exist, the name is
        taken, clients are connected, ...): the message says why
    2   bad usage";

/// Manage the exports of a running gnbd_serv.
#[derive(Debug, Parser)]
#[command(name = "gnbd_export", version, after_long_help = AFTER_HELP)]
#[command(group(ArgGroup::new("action").required(true).args(["export", "remove", "list"])))]
struct Args {
    /// State directory of the server to manage.
    #[arg(long, value_name = "DIR", default_value = gnbd_serv::server::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Create export NAME (needs -d).
    #[arg(short = 'e', long = "export", value_name = "NAME", requires = "device")]
    export: Option<String>,
    /// Backing file or block device for -e; VG/LV for an active logical volume (/dev/VG/LV).
    #[arg(short = 'd', long = "device", value_name = "PATH")]
    device: Option<PathBuf>,
    /// Cached export: serve through the page cache instead of O_DIRECT.
    #[arg(short = 'c', long, requires = "export")]
    cached: bool,
    /// Read-only export.
    #[arg(short = 'o', long, requires = "export")]
    readonly: bool,
    /// Serve this export only over TLS: plain-text clients get NBD_REP_ERR_TLS_REQD (needs
    /// gnbd_serv --tls selective or required).
    #[arg(long, requires = "export")]
    tls: bool,
    /// Description shown to clients that list exports.
    #[arg(long, value_name = "TEXT", default_value = "", requires = "export")]
    description: String,
    /// Remove export NAME.
    #[arg(short = 'r', long = "remove", value_name = "NAME")]
    remove: Option<String>,
    /// With -r: remove even while clients are connected (they are disconnected).
    #[arg(short = 'O', long = "force", requires = "remove")]
    force: bool,
    /// List exports with size, mode, access, connected clients and path.
    #[arg(short = 'l', long = "list")]
    list: bool,
    /// With -l: print JSON instead of a table.
    #[arg(long, requires = "list")]
    json: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let action = if let Some(name) = a.export {
        Action::Create {
            name,
            path: a.device.expect("clap requires -d with -e"),
            cached: a.cached,
            readonly: a.readonly,
            description: a.description,
            tls: a.tls,
        }
    } else if let Some(name) = a.remove {
        Action::Remove { name, force: a.force }
    } else {
        Action::List { json: a.json }
    };
    daemon::finish("gnbd_export", run(&a.state_dir, action).map(|out| print!("{out}")))
}
