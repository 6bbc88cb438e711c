//! A real filesystem on an export: nbdfuse exposes the export as a file, losetup turns it
//! into a block device, mkfs.ext4 + mount + write files; then, through a new connection,
//! e2fsck and mount again to check the files. Everything runs inside
//! `unshare -m --propagation private` so mounts never leak into other tests' namespaces.

use gnbd_tests::{require_tool, run_timeout, write_pattern_file, OutputExt, Server};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One phase: attach, then `write` (mkfs, copy files) or `verify` (fsck, compare), then
/// detach. The EXIT trap undoes whatever was set up, whichever way the script ends.
const PHASE_SCRIPT: &str = r#"
set -eu
mode=$1; uri=$2; work=$3
mnt=$work/fuse; fs=$work/fs; src=$work/src
loop=""; fsmounted=""; fusepid=""
cleanup() {
    rc=$?
    set +e
    if [ -n "$fsmounted" ]; then umount "$fs" || umount -l "$fs"; fi
    if [ -n "$loop" ]; then losetup -d "$loop" && rm -f "$work/loopdev"; fi
    if [ -n "$fusepid" ]; then
        fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" || umount -l "$mnt"
        wait "$fusepid"
    fi
    echo "phase $mode: exit status $rc" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
mkdir -p "$mnt" "$fs"
nbdfuse "$mnt" "$uri" &
fusepid=$!
i=0
while [ ! -e "$mnt/nbd" ]; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then echo "nbdfuse did not expose $mnt/nbd within 30 s" >&2; exit 1; fi
    if ! kill -0 "$fusepid" 2>/dev/null; then
        fusepid=""; echo "nbdfuse exited before exposing $mnt/nbd" >&2; exit 1
    fi
    sleep 0.1
done
loop=$(losetup -f --show "$mnt/nbd")
# Device and backing file identity, for the test's guard should this script be killed.
echo "$loop $(losetup -n -O BACK-MAJ:MIN,BACK-INO -l "$loop")" > "$work/loopdev"
echo "loop device: $loop" >&2
if [ "$mode" = write ]; then
    mkfs.ext4 -q -F "$loop"
    mount "$loop" "$fs"; fsmounted=1
    mkdir "$fs/dir"
    for f in a b c; do cp "$src/$f" "$fs/dir/$f"; done
    sync
    umount "$fs"; fsmounted=""
else
    e2fsck -fn "$loop"
    mount -o ro "$loop" "$fs"; fsmounted=1
    for f in a b c; do cmp "$src/$f" "$fs/dir/$f"; done
    ls -l "$fs/dir" >&2
    umount "$fs"; fsmounted=""
fi
"#;

/// Detaches the loop device a phase recorded in `work/loopdev` if the script could not
/// (it was killed). The record is removed by the script right after a clean detach, so a
/// record left behind names a device the script attached. To be safe against reuse of
/// the device number, it is detached only if it is still backed by our FUSE file: the
/// same backing device and inode as recorded, or, once the mount namespace and nbdfuse
/// are gone (then the file can no longer be stat'ed), a backing path that is our mount
/// point's `nbd` or the bare `/nbd` the kernel shows for a file of a vanished namespace.
struct LoopGuard {
    record: PathBuf,
    fuse_file: PathBuf,
}

fn loop_identity(dev: &str) -> String {
    Command::new("losetup")
        .args(["-n", "-O", "BACK-MAJ:MIN,BACK-INO", "-l", dev])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let Ok(record) = std::fs::read_to_string(&self.record) else {
            return;
        };
        let mut words = record.split_whitespace();
        let Some(dev) = words.next() else {
            return;
        };
        let recorded = words.collect::<Vec<_>>().join(" ");
        let Some(name) = Path::new(dev).file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let backing = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).unwrap_or_default();
        let backing = backing.trim();
        let identity = loop_identity(dev);
        let ours = (!recorded.is_empty() && identity == recorded)
            || (identity.is_empty() && (backing == "/nbd" || Path::new(backing) == self.fuse_file));
        if ours {
            eprintln!("cleanup: detaching leftover {dev} (backing file {backing})");
            let _ = Command::new("losetup").args(["-d", dev]).status();
        } else if !backing.is_empty() {
            eprintln!("cleanup: {dev} now backs {backing} ({identity}); not ours, left alone");
        }
        let _ = std::fs::remove_file(&self.record);
    }
}

fn phase(script: &Path, mode: &str, uri: &str, work: &Path) {
    let out = run_timeout(
        Command::new(require_tool("unshare"))
            .args(["-m", "--propagation", "private", "sh"])
            .arg(script)
            .args([mode, uri])
            .arg(work),
        Duration::from_secs(180),
    );
    println!("phase {mode}: {}", out.describe());
    out.assert_success(&format!("nbdfuse/ext4 {mode} phase"));
}

#[test]
fn ext4_on_nbdfuse_loop_device_survives_remount() {
    for tool in ["nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "unshare", "mount", "umount"] {
        require_tool(tool);
    }
    let mut server = Server::start();
    let disk = server.path("ext4.img");
    std::fs::File::create(&disk).and_then(|f| f.set_len(64 << 20)).expect("create backing file");
    server.export("ext4", &disk, &[]);
    let uri = server.uri("ext4");

    let work = server.path("work");
    std::fs::create_dir_all(work.join("src")).expect("mkdir work/src");
    write_pattern_file(&work.join("src/a"), 3 << 20, 11);
    write_pattern_file(&work.join("src/b"), 100_000, 12);
    std::fs::write(work.join("src/c"), "hello from gnbd-tests\n").expect("write c");
    let script = server.path("phase.sh");
    std::fs::write(&script, PHASE_SCRIPT).expect("write script");
    let _loop_guard = LoopGuard { record: work.join("loopdev"), fuse_file: work.join("fuse/nbd") };

    phase(&script, "write", &uri, &work);
    phase(&script, "verify", &uri, &work);
    server.assert_alive();
}
