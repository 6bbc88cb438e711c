//! gfs_grow and gfs_jadd on mounted filesystems, through the real binaries:
//!
//! - lock_nolock: a file-backed filesystem grown while mounted and while a writer runs; df
//!   shows the new size at once; the new space fills; remount and `gfs_fsck -n` are clean;
//!   refusals (device not larger, not a gfs mount, bad numbers, wrong group size) exit
//!   non-zero with a clear message and change nothing.
//! - lock_dlm (two `dlm_controld` daemons, as in gfs_cluster.rs): a filesystem made with one
//!   journal cannot be mounted by a second node; after `gfs_jadd` it can; a grow on node 1
//!   is seen by node 2, which writes into the new space; `gfs_fsck -n` is clean.
//!
//! Everything runs inside `unshare -m --propagation private`; the EXIT trap unmounts and
//! stops the daemons.

use gnbd_tests::gfs_harness::{dlm_pair_ports, mkfs_image, DLM_PAIR_PRELUDE};
use gnbd_tests::{bin, bin_dir, require_tool, run_timeout, OutputExt, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs `script` under `sh -eux` in a private mount namespace with $W (work dir) and $B
/// (binaries) set, plus `env`; returns the output and every *.log of the work dir.
fn run_script(work: &TempDir, script: &str, env: &[(&str, String)]) -> (std::process::Output, String) {
    let mut cmd = Command::new(require_tool("unshare"));
    cmd.args(["-m", "--propagation", "private", "sh", "-eux", "-c", script]).env("W", work.path()).env("B", bin_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_timeout(&mut cmd, Duration::from_secs(150));
    let mut logs = String::new();
    if let Ok(rd) = std::fs::read_dir(work.path()) {
        let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names.iter().filter(|p| p.extension().is_some_and(|x| x == "log")) {
            logs += &format!("--- {} ---\n{}\n", p.display(), std::fs::read_to_string(p).unwrap_or_default());
        }
    }
    (out, logs)
}

fn fsck_clean(img: &Path) {
    let out = run_timeout(Command::new(bin("gfs_fsck")).arg("-n").arg(img), Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "gfs_fsck -n after the run: {}", out.describe());
}

const NOLOCK: &str = r#"
cleanup() { umount $W/mnt 2>/dev/null || umount -l $W/mnt 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p $W/mnt $W/plain
$B/mount_gfs $W/img $W/mnt -o log=$W/mount.log
blocks() { stat -f -c %b $W/mnt; }
B0=$(blocks)
# Refusals: the device is not larger; not a gfs mount; bad numbers; the wrong group size.
! $B/gfs_grow $W/mnt 2> $W/e1 || exit 1
grep -Eq "nothing to grow|blocks past the filesystem's end" $W/e1
! $B/gfs_grow $W/plain 2> $W/e2 || exit 1
grep -q "not the mount point of a mounted gfs filesystem" $W/e2
! $B/gfs_jadd -j 1 $W/plain 2> $W/e3 || exit 1
grep -q "not the mount point of a mounted gfs filesystem" $W/e3
set +e
$B/gfs_grow -r 0 $W/mnt 2> $W/e4; test $? = 2 || exit 1
$B/gfs_jadd -j 0 $W/mnt 2> $W/e5; test $? = 2 || exit 1
$B/gfs_jadd -j 500 $W/mnt 2> $W/e6; test $? = 2 || exit 1
$B/gfs_jadd -j 1 -J 1 $W/mnt 2> $W/e7; test $? = 2 || exit 1
set -e
truncate -s 192M $W/img
! $B/gfs_grow -r 1 $W/mnt 2> $W/e8 || exit 1
grep -q "fixed when it was made" $W/e8
# Test mode changes nothing.
$B/gfs_grow -T $W/mnt > $W/t.out
grep -q "would add" $W/t.out
test "$(blocks)" = "$B0"
# Grow while a writer runs.
mkdir $W/mnt/w
# (It writes until the grow is over, and at least 30 files, so the two overlap.)
( set +x; i=0
  while [ $i -lt 30 ] || { [ ! -f $W/grown ] && [ $i -lt 250 ]; }; do
    head -c 200000 /dev/urandom > $W/mnt/w/f$i; i=$((i+1))
  done; echo $i > $W/writer.done ) &
WR=$!
while [ ! -f $W/mnt/w/f3 ]; do sleep 0.05; done
$B/gfs_grow $W/mnt > $W/grow.out
touch $W/grown
cat $W/grow.out
grep -q "filesystem now: " $W/grow.out
B1=$(blocks)
test "$B1" -gt $((B0 * 2))
wait $WR
test -f $W/writer.done
# Fill the new space (more than the whole old filesystem held).
head -c 100000000 /dev/urandom > $W/mnt/fill
md5sum $W/mnt/fill | cut -d' ' -f1 > $W/fill.md5
(cd $W/mnt/w && md5sum f*) > $W/w.md5
umount $W/mnt
$B/mount_gfs $W/img $W/mnt -o log=$W/mount2.log
test "$(blocks)" = "$B1"
test "$(md5sum $W/mnt/fill | cut -d' ' -f1)" = "$(cat $W/fill.md5)"
(cd $W/mnt/w && md5sum -c --quiet $W/w.md5)
test "$(ls $W/mnt/w | wc -l)" = "$(cat $W/writer.done)"
# Journals from free space.
$B/gfs_jadd -j 2 $W/mnt > $W/jadd.out
grep -q "journals: 4" $W/jadd.out
test "$($B/gfs_tool journals $W/mnt | wc -l)" = 4
umount $W/mnt
echo GROW-OK
"#;

#[test]
fn grow_while_mounted_and_written_then_remount_and_fsck() {
    let work = TempDir::new();
    let img = work.join("img");
    mkfs_image(&img, 64, "lock_nolock", "alpha:grow", 2);
    let (out, logs) = run_script(&work, NOLOCK, &[]);
    assert!(out.stdout_str().contains("GROW-OK"), "{}\n{logs}", out.describe());
    fsck_clean(&img);
    let dev = gfs::open_device(&img.display().to_string()).unwrap();
    let sb = gfs::read_superblock(&*dev).unwrap();
    assert!(sb.block_count > 48_000 && sb.block_count <= 192 << 8, "{sb:?}");
    assert_eq!(sb.journal_count, 4);
}

/// After [`DLM_PAIR_PRELUDE`].
const CLUSTER: &str = r#"
$B/mount_gfs $W/img $W/m1 -o journal=0,dlm_socket=$W/d1.sock,log=$W/m1.log
printf one > $W/m1/a
# One journal: node 2 has no slot.
! $B/mount_gfs $W/img $W/m2 -o journal=1,dlm_socket=$W/d2.sock,log=$W/m2-refused.log 2> $W/refused || exit 1
grep -q "no journal for slot 1" $W/refused
$B/gfs_jadd -j 1 $W/m1 > $W/jadd.out
grep -q "journals: 2" $W/jadd.out
$B/mount_gfs $W/img $W/m2 -o journal=1,dlm_socket=$W/d2.sock,log=$W/m2.log
test "$(cat $W/m2/a)" = one
printf two > $W/m2/b; test "$(cat $W/m1/b)" = two
# Grow on node 1; node 2 sees the new size and writes into the new space.
S2=$(stat -f -c %b $W/m2)
truncate -s 128M $W/img
$B/gfs_grow $W/m1 > $W/grow.out
test "$(stat -f -c %b $W/m2)" -gt $((S2 * 2))
head -c 60000000 /dev/urandom > $W/big
cp $W/big $W/m2/big
test "$(md5sum < $W/m1/big)" = "$(md5sum < $W/big)"
umount $W/m2
umount $W/m1
# umount returns before the mount servers finish their clean unmount (it needs the DLM).
for i in $(seq 1 100); do pgrep -f "mount_gfs $W/img" > /dev/null || break; sleep 0.1; done
kill $D1 $D2
echo CLUSTER-GROW-OK
"#;

#[test]
fn jadd_lets_another_node_mount_and_both_see_a_grow() {
    let work = TempDir::new();
    let img = work.join("img");
    mkfs_image(&img, 40, "lock_dlm", "alpha:grow", 1);
    let (out, logs) = run_script(&work, &format!("{DLM_PAIR_PRELUDE}{CLUSTER}"), &dlm_pair_ports());
    assert!(out.stdout_str().contains("CLUSTER-GROW-OK"), "{}\n{logs}", out.describe());
    fsck_clean(&img);
}
