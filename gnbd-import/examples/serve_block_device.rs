//! Serves a file (or block device) as a loop device over FUSE with `run_block_device`,
//! until SIGTERM or SIGINT: what the volume manager does for a logical volume.
//!
//! ```text
//! serve_block_device FILE LINK STATE_DIR
//! ```
//!
//! EXAMPLE (as root):
//!     truncate -s 1G /tmp/disk.img
//!     cargo run -p gnbd-import --example serve_block_device -- /tmp/disk.img /dev/demo/disk0 /run/demo &
//!     fio --name=r --filename=/dev/demo/disk0 --direct=1 --rw=randread --bs=4k --iodepth=32 \
//!         --ioengine=libaio --runtime=8 --time_based
//!     kill %1
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;

fn main() -> std::process::ExitCode {
    daemon::finish("serve_block_device", run())
}

fn run() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [file, link, state] = &args[..] else {
        return Err(daemon::Failure::new(2, "usage: serve_block_device FILE LINK STATE_DIR").into());
    };
    let signals = daemon::signals::install().context("cannot install the signal handlers")?;
    daemon::log::init(&daemon::log::LogConfig::new("info", &daemon::log::LogArgs::default()))?;
    let dev = Arc::new(blockdev::FileDevice::open(file)?);
    let cfg = gnbd_import::BlockDeviceConfig::in_dir(state, "demo", "demo", link, "demo");
    gnbd_import::run_block_device(dev, cfg, signals, |r| {
        println!("ready: {} -> {} ({} bytes)", r.config.link.display(), r.loop_device.display(), r.size)
    })
}
