//! mount.gfs end to end: POSIX operations through the kernel on a lock_nolock mount, clean
//! unmount and remount, and a crash (SIGKILL of the mount process during a metadata-heavy
//! workload) followed by journal replay. Every mount runs inside
//! `unshare -m --propagation private` with an EXIT trap that unmounts.

use gnbd_tests::gfs_harness::in_mount_namespace;
use gnbd_tests::{bin, require_tool, run_timeout, OutputExt, Server, TempDir};
use std::process::Command;
use std::time::Duration;

fn mkfs(device: &str) {
    gnbd_tests::gfs_harness::mkfs(device, "lock_nolock", "test:gfs", 2);
}

fn check_image(device: &str) -> gfs::CheckReport {
    let dev = gfs::open_device(device).unwrap();
    let mut fs = gfs::Fs::mount(dev, 0).unwrap();
    let r = fs.check().unwrap();
    assert!(r.problems.is_empty(), "filesystem inconsistent: {:#?}", r.problems);
    fs.unmount().unwrap();
    r
}

const POSIX_SCRIPT: &str = r#"
$MOUNT $DEV $MNT -o log=$WORK/mount.log
grep -q " $MNT fuse" /proc/self/mounts
cd $MNT
mkdir -p a/b/c
printf hello > a/b/f
ln a/b/f hard
ln -s a/b/f soft
test "$(cat soft)" = hello
mkfifo fifo; test -p fifo
mknod chr c 1 3; test -c chr
mknod blk b 7 0; test -b blk
python3 -c "import socket; s=socket.socket(socket.AF_UNIX); s.bind('sock')"; test -S sock
head -c 3000000 /dev/urandom > big; md5sum big > $WORK/big.md5
truncate -s 100M sparse; printf x >> sparse; test "$(stat -c %s sparse)" = 104857601
test "$(stat -c %b sparse)" -lt 100
chmod 4751 hard; test "$(stat -c %a a/b/f)" = 4751
chown 1234:5678 hard; test "$(stat -c %a:%u:%g:%h a/b/f)" = 751:1234:5678:2
touch -d '2001-02-03 04:05:06' a/b/f; test "$(stat -c %Y hard)" = "$(date -d '2001-02-03 04:05:06' +%s)"
# rename: across directories, replacing a file, replacing an empty directory
printf new > a/new; mv a/new a/b/f; test "$(cat hard)" = hello; test "$(cat a/b/f)" = new
mkdir d1 d2; mv d1 d2 && test ! -e d1
mkdir e1 e2; touch e1/x; mv -T e2 e1 2>/dev/null && exit 1 || true; mv -T e1 e2; test -e e2/x
# directories: many entries, listing, removal
mkdir many; for i in $(seq 1 600); do : > many/f$i; done
test "$(ls many | wc -l)" = 600
rm -r many; test ! -e many
# permissions as another user (default_permissions, allow_other)
mkdir private; chmod 700 private
setpriv --reuid 4321 --regid 4321 --clear-groups sh -c ': > private/x' 2>/dev/null && exit 1 || true
setpriv --reuid 4321 --regid 4321 --clear-groups ls / >/dev/null
python3 -c "import os; os.setxattr('big', 'user.k', b'v' * 100); assert os.getxattr('big', 'user.k') == b'v' * 100"
python3 -c "import os; os.setxattr('a', 'user.d', b'dir'); os.removexattr('a', 'user.d'); assert os.listxattr('a') == []"
df $MNT | tail -1
$GFS_TOOL df $MNT | grep -q "SB lock table = \"test:gfs\""
sync big
cd /
umount $MNT
# the clean unmount left nothing to replay; remount and check
$MOUNT $DEV $MNT -o log=$WORK/mount2.log
cd $MNT
md5sum -c $WORK/big.md5 >/dev/null
test "$(cat hard)" = hello && test "$(cat a/b/f)" = new && test -d d2/d1 && test -p fifo
test "$(stat -c %a:%u:%g hard)" = 751:1234:5678
python3 -c "import os; assert os.listxattr('big') == ['user.k'] and os.getxattr('big', 'user.k') == b'v' * 100"
cd /
umount $MNT
echo POSIX-OK
"#;

#[test]
fn posix_operations_and_remount_on_a_file() {
    for t in ["unshare", "mkfifo", "mknod", "setpriv", "python3", "md5sum"] {
        require_tool(t);
    }
    let work = TempDir::new();
    let img = work.join("fs.img");
    std::fs::File::create(&img).unwrap().set_len(256 << 20).unwrap();
    let dev = img.display().to_string();
    mkfs(&dev);
    let out = in_mount_namespace(work.path(), &dev, POSIX_SCRIPT);
    let log = std::fs::read_to_string(work.join("mount.log")).unwrap_or_default();
    assert!(out.status.success() && out.stdout_str().contains("POSIX-OK"), "{}\n--- log ---\n{log}", out.describe());
    let r = check_image(&dev);
    assert!(r.inodes >= 10, "{r:?}");
    let ji = run_timeout(Command::new(bin("gfs_tool")).arg("jindex").arg(&img), Duration::from_secs(30));
    assert!(ji.stdout_str().lines().all(|l| l.ends_with("clean")), "{}", ji.describe());
}

#[test]
fn mount_over_gnbd_export() {
    require_tool("unshare");
    let server = Server::start();
    let disk = server.path("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(128 << 20).unwrap();
    server.export("gfs", &disk, &[]);
    let url = format!("gnbd://127.0.0.1:{}/gfs", server.port());
    mkfs(&url);
    let work = TempDir::new();
    let out = in_mount_namespace(
        work.path(),
        &url,
        r#"
$MOUNT $DEV $MNT -o log=$WORK/mount.log
head -c 5000000 /dev/urandom > $WORK/data
cp $WORK/data $MNT/data; mkdir $MNT/dir; ln -s data $MNT/dir/link
sync $MNT/data
cmp $WORK/data $MNT/data
umount $MNT
$MOUNT $DEV $MNT -o log=$WORK/mount2.log
cmp $WORK/data $MNT/data
test -L $MNT/dir/link
umount $MNT
echo GNBD-OK
"#,
    );
    assert!(out.stdout_str().contains("GNBD-OK"), "{}", out.describe());
    // What went through the client library is on the exported file.
    check_image(&disk.display().to_string());
}

/// SIGKILL the mount process while two workloads run: one that fsyncs each step and records
/// it outside the filesystem once fsync returned, one that churns metadata without fsync.
/// After replay every recorded step is there and the filesystem is consistent.
const CRASH_SCRIPT: &str = r#"
$MOUNT $DEV $MNT -f -o log=$WORK/mount.log &
pid=$!
for i in $(seq 1 100); do grep -q " $MNT fuse" /proc/self/mounts && break; sleep 0.1; done
grep -q " $MNT fuse" /proc/self/mounts
: > $WORK/acked
# A file unlinked while open when the node dies: freed by the next mount.
head -c 100000 /dev/urandom > $MNT/held; exec 3<$MNT/held; rm $MNT/held; sync $MNT
( j=0; while :; do j=$((j+1)); mkdir -p $MNT/churn/$j 2>/dev/null || exit 0; : > $MNT/churn/$j/x 2>/dev/null || exit 0
  rm -rf $MNT/churn/$((j-3)) 2>/dev/null || exit 0; done ) &
i=0
while [ $i -lt 400 ]; do
  i=$((i+1))
  mkdir $MNT/d$i 2>/dev/null || break
  printf "step $i" > $MNT/d$i/tmp 2>/dev/null || break
  mv $MNT/d$i/tmp $MNT/d$i/file 2>/dev/null || break
  if [ $((i % 4)) = 0 ]; then rm $MNT/d$((i-1))/file 2>/dev/null || break; fi
  sync $MNT/d$i/file 2>/dev/null || break
  echo $i >> $WORK/acked
  if [ $i = 60 ]; then kill -9 $pid; fi
done
wait $pid || true
exec 3<&-
umount -l $MNT 2>/dev/null || umount $MNT 2>/dev/null || true
wait
echo acked $(wc -l < $WORK/acked)
$MOUNT $DEV $MNT -o log=$WORK/mount2.log
for i in $(cat $WORK/acked); do
  if [ $(((i + 1) % 4)) = 0 ] && grep -qx $((i + 1)) $WORK/acked; then
    test ! -e $MNT/d$i/file || { echo "unlink of $i lost"; exit 1; }
  else
    test "$(cat $MNT/d$i/file)" = "step $i" || { echo "lost step $i"; exit 1; }
  fi
done
umount $MNT
echo CRASH-OK
"#;

#[test]
fn sigkill_during_metadata_workload_then_replay() {
    require_tool("unshare");
    let work = TempDir::new();
    let img = work.join("fs.img");
    std::fs::File::create(&img).unwrap().set_len(128 << 20).unwrap();
    let dev = img.display().to_string();
    mkfs(&dev);
    let out = in_mount_namespace(work.path(), &dev, CRASH_SCRIPT);
    let log = std::fs::read_to_string(work.join("mount2.log")).unwrap_or_default();
    assert!(out.stdout_str().contains("CRASH-OK"), "{}\n--- remount log ---\n{log}", out.describe());
    let acked: usize = out.stdout_str().lines().find_map(|l| l.strip_prefix("acked ")?.trim().parse().ok()).unwrap();
    assert!(acked >= 60, "the workload ran past the kill point's fsyncs: {acked}");
    check_image(&dev);
}
