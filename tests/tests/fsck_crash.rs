//! gfs_fsck after a node crash: mount.gfs is killed (SIGKILL) during a metadata workload with
//! a file unlinked while open. `gfs_fsck -n` reports the dirty journal (exit 4); `gfs_fsck -p`
//! (preen: safe repairs only) replays it and frees the orphan, exit 1 — nothing else needs a
//! human; then `gfs_fsck -n` finds the filesystem clean and every fsync'ed step is there.

use gnbd_tests::gfs_harness::{in_mount_namespace, mkfs_image};
use gnbd_tests::{bin, require_tool, run_timeout, OutputExt, TempDir};
use std::process::Command;
use std::time::Duration;

const CRASH: &str = r#"
$MOUNT $DEV $MNT -f -o log=$WORK/mount.log &
pid=$!
for i in $(seq 1 100); do grep -q " $MNT fuse" /proc/self/mounts && break; sleep 0.1; done
grep -q " $MNT fuse" /proc/self/mounts
: > $WORK/acked
head -c 100000 /dev/urandom > $MNT/held; exec 3<$MNT/held; rm $MNT/held; sync $MNT
( j=0; while :; do j=$((j+1)); mkdir -p $MNT/churn/$j 2>/dev/null || exit 0; : > $MNT/churn/$j/x 2>/dev/null || exit 0
  rm -rf $MNT/churn/$((j-3)) 2>/dev/null || exit 0; done ) &
i=0
while [ $i -lt 200 ]; do
  i=$((i+1))
  mkdir $MNT/d$i 2>/dev/null || break
  printf "step $i" > $MNT/d$i/file 2>/dev/null || break
  sync $MNT/d$i/file 2>/dev/null || break
  echo $i >> $WORK/acked
  if [ $i = 40 ]; then kill -9 $pid; fi
done
wait $pid || true
exec 3<&-
umount -l $MNT 2>/dev/null || umount $MNT 2>/dev/null || true
wait
echo CRASHED
"#;

#[test]
fn preen_after_a_node_crash() {
    require_tool("unshare");
    let work = TempDir::new();
    let img = work.join("fs.img");
    mkfs_image(&img, 64, "lock_nolock", "test:crash", 2);
    let out = in_mount_namespace(work.path(), &img.display().to_string(), CRASH);
    assert!(out.stdout_str().contains("CRASHED"), "{}", out.describe());
    let fsck = |flag: &str| run_timeout(Command::new(bin("gfs_fsck")).arg(flag).arg(&img), Duration::from_secs(60));
    let n = fsck("-n");
    n.assert_code(4, "gfs_fsck -n after the crash");
    assert!(n.stdout_str().contains("journal 0"), "the crashed node's journal is reported: {}", n.describe());
    fsck("-p").assert_code(1, "gfs_fsck -p after the crash (only safe repairs needed)");
    fsck("-n").assert_code(0, "gfs_fsck -n after preening");
    // Every step whose fsync returned is there.
    let acked = std::fs::read_to_string(work.join("acked")).unwrap();
    let dev = gfs::open_device(img.to_str().unwrap()).unwrap();
    let mut fs = gfs::Fs::mount(dev, 0).unwrap();
    let root = fs.root();
    for i in acked.lines() {
        let d = fs.lookup(root, format!("d{i}").as_bytes()).unwrap_or_else(|e| panic!("d{i} lost: {e}"));
        let f = fs.lookup(d.ino, b"file").unwrap_or_else(|e| panic!("d{i}/file lost: {e}"));
        assert_eq!(fs.read(f.ino, 0, 100).unwrap(), format!("step {i}").into_bytes());
    }
    let report = fs.check().unwrap();
    assert!(report.problems.is_empty(), "gfs's own checker after fsck: {:#?}", report.problems);
    fs.unmount().unwrap();
}

#[test]
fn refuses_a_mounted_filesystem() {
    require_tool("unshare");
    let work = TempDir::new();
    let img = work.join("fs.img");
    mkfs_image(&img, 32, "lock_nolock", "test:mounted", 1);
    // Without -e: the checks' exit statuses are echoed, not fatal.
    let body = format!(
        "set +e\n$MOUNT $DEV $MNT -o log=$WORK/mount.log || exit 1\n\
         {fsck} -n $DEV; echo \"plain=$?\"\n{fsck} -n -f $DEV; echo \"forced=$?\"",
        fsck = bin("gfs_fsck").display(),
    );
    let out = in_mount_namespace(work.path(), &img.display().to_string(), &body);
    let text = out.stdout_str();
    assert!(text.contains("plain=8"), "a mounted filesystem is refused: {}", out.describe());
    assert!(out.stderr_str().contains("is mounted"), "{}", out.describe());
    assert!(text.contains("forced=0") || text.contains("forced=4"), "-f checks anyway: {}", out.describe());
}
