//! Helpers for the gfs tests: making a filesystem with `mkfs_gfs`, running a shell script
//! in a private mount namespace with a mount point ready, and the shell prelude that starts
//! two `dlm_controld` daemons on 127.0.0.1 and 127.0.0.2 for a two-node lock_dlm cluster.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::{bin, free_port, require_tool, run_timeout, OutputExt};

/// How long `mkfs_gfs` may take.
const MKFS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a script run by [`in_mount_namespace`] may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// `mkfs_gfs -q -p PROTO -t TABLE -j JOURNALS DEVICE` (bounded); panics unless it succeeds.
/// `device` is a file or a `gnbd://` URL.
pub fn mkfs(device: impl AsRef<OsStr>, proto: &str, table: &str, journals: u32) {
    let journals = journals.to_string();
    run_timeout(
        Command::new(bin("mkfs_gfs")).args(["-q", "-p", proto, "-t", table, "-j", &journals]).arg(device),
        MKFS_TIMEOUT,
    )
    .assert_success("mkfs.gfs");
}

/// Creates `img` as a sparse file of `mib` MiB and makes a filesystem on it with [`mkfs`].
pub fn mkfs_image(img: &Path, mib: u64, proto: &str, table: &str, journals: u32) {
    std::fs::File::create(img).expect("create image").set_len(mib << 20).expect("size image");
    mkfs(img, proto, table, journals);
}

/// Runs `body` with `sh -x` in a private mount namespace (`unshare -m --propagation
/// private`) with `set -eu` and $MOUNT (mount.gfs), $GFS_TOOL, $DEV (`device`), $MNT
/// (`work/mnt`, created) and $WORK (`work`) set; the EXIT trap unmounts whatever is still
/// mounted. The script is written to `work/script.sh`; the run is bounded (120 s).
pub fn in_mount_namespace(work: &Path, device: &str, body: &str) -> Output {
    let script = work.join("script.sh");
    let full = format!(
        "set -eu\nMNT={mnt}\nDEV='{device}'\nWORK={work}\nMOUNT={mount}\n\
         cleanup() {{ umount $MNT 2>/dev/null || umount -l $MNT 2>/dev/null || true; }}\ntrap cleanup EXIT\n\
         GFS_TOOL={tool}\nmkdir -p $MNT\n{body}\n",
        mnt = work.join("mnt").display(),
        work = work.display(),
        mount = bin("mount_gfs").display(),
        tool = bin("gfs_tool").display(),
    );
    std::fs::write(&script, full).expect("write the namespace script");
    run_timeout(
        Command::new(require_tool("unshare")).args(["-m", "--propagation", "private", "sh", "-x"]).arg(&script),
        SCRIPT_TIMEOUT,
    )
}

/// Shell prelude for a two-node lock_dlm cluster on one machine. Needs $W (work
/// directory), $B (the binaries' directory, [`crate::bin_dir`]) and $P1/$P2 (free ports,
/// [`dlm_pair_ports`]). It sets an EXIT trap that unmounts `$W/m1` and `$W/m2` and kills
/// both daemons, creates those mount points, starts `dlm_controld` node 1 on 127.0.0.1:$P1
/// (socket `$W/d1.sock`, log `$W/d1.log`, pid $D1) and node 2 on 127.0.0.2:$P2 (`$W/d2.*`,
/// $D2), and waits (bounded) for both sockets.
pub const DLM_PAIR_PRELUDE: &str = r#"
cleanup() {
  umount $W/m1 2>/dev/null || umount -l $W/m1 2>/dev/null || true
  umount $W/m2 2>/dev/null || umount -l $W/m2 2>/dev/null || true
  kill $D1 $D2 2>/dev/null || true
}
D1=; D2=
trap cleanup EXIT
mkdir -p $W/m1 $W/m2
$B/dlm_controld --node-id 1 --socket $W/d1.sock --listen 127.0.0.1:$P1 --peer 2=127.0.0.2:$P2 > $W/d1.out 2>$W/d1.log &
D1=$!
$B/dlm_controld --node-id 2 --socket $W/d2.sock --listen 127.0.0.2:$P2 --peer 1=127.0.0.1:$P1 > $W/d2.out 2>$W/d2.log &
D2=$!
for i in $(seq 1 100); do [ -S $W/d1.sock ] && [ -S $W/d2.sock ] && break; sleep 0.1; done
"#;

/// `P1` and `P2` for [`DLM_PAIR_PRELUDE`]: a free port on 127.0.0.1 and one on 127.0.0.2.
pub fn dlm_pair_ports() -> [(&'static str, String); 2] {
    [("P1", free_port("127.0.0.1").to_string()), ("P2", free_port("127.0.0.2").to_string())]
}
