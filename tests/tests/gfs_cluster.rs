//! lock_dlm: two nodes (two `dlm_controld` daemons talking TCP on 127.0.0.1 and 127.0.0.2,
//! two mounts of one device) see each other's changes at once, create concurrently in one
//! directory, and a survivor recovers the journal of a node whose mount process was killed.
//! Everything runs inside `unshare -m --propagation private`; the EXIT trap unmounts and
//! stops the daemons.

use gnbd_tests::gfs_harness::{dlm_pair_ports, mkfs_image, DLM_PAIR_PRELUDE};
use gnbd_tests::{bin_dir, require_tool, run_timeout, OutputExt, TempDir};
use std::process::Command;
use std::time::Duration;

/// After `set -eu` and [`DLM_PAIR_PRELUDE`].
const SCRIPT: &str = r#"
$B/mount_gfs $W/img $W/m1 -f -o journal=0,dlm_socket=$W/d1.sock,log=$W/m1.log,glock_limit=40 &
M1=$!
$B/mount_gfs $W/img $W/m2 -o journal=1,dlm_socket=$W/d2.sock,log=$W/m2.log
for i in $(seq 1 100); do grep -q " $W/m1 fuse" /proc/self/mounts && break; sleep 0.1; done
# Changes on one node are seen on the other at once.
printf hello > $W/m1/a; test "$(cat $W/m2/a)" = hello
mkdir $W/m2/d; test -d $W/m1/d
mv $W/m1/a $W/m1/d/b; test ! -e $W/m2/a; test "$(cat $W/m2/d/b)" = hello
chmod 600 $W/m2/d/b; test "$(stat -c %a $W/m1/d/b)" = 600
head -c 2000000 /dev/urandom > $W/data; cp $W/data $W/m1/big; cmp $W/data $W/m2/big
rm $W/m2/big; test ! -e $W/m1/big
# Concurrent creates in one directory from both nodes.
(for i in $(seq 1 150); do : > $W/m1/d/x$i; done) &
C1=$!
for i in $(seq 1 150); do : > $W/m2/d/y$i; done
wait $C1
test "$(ls $W/m1/d | wc -l)" = 301; test "$(ls $W/m2/d | wc -l)" = 301
# The glocks as the DLM sees them (each daemon dumps what it masters).
{ $B/gfs_tool lockdump $W/m1 --dlm-socket $W/d1.sock; $B/gfs_tool lockdump $W/m2 --dlm-socket $W/d2.sock; } > $W/dump
grep -q 'resource "inode-' $W/dump; grep -q 'resource "rgrp-' $W/dump; grep -q 'resource "journal-1"' $W/dump
# This node's glocks as its mount process holds them.
$B/gfs_tool glocks $W/m1 > $W/glocks
grep -q '^glocks of journal slot 0' $W/glocks; grep -q '^layout .* PR ' $W/glocks; grep -q '^inode-' $W/glocks
# Node 1 reads every file (a PR glock each), node 2 changes them all (node 1 goes to NL):
# node 1 gives idle glocks back to the DLM down to its glock_limit (40) within a few seconds.
stat $W/m1/d/* > /dev/null; chmod 640 $W/m2/d/*
for i in $(seq 1 50); do n=$($B/gfs_tool glocks $W/m1 | head -1 | sed 's/.*: //'); [ "$n" -le 40 ] && break; sleep 0.2; done
test "$n" -le 40; test "$(stat -c %a $W/m1/d/x7)" = 640
# A file open on node 1 and unlinked on node 2 stays readable on node 1 (its iopen lock)
# and is freed at node 1's last close.
head -c 3000000 /dev/urandom > $W/u
F0=$(stat -f -c %f $W/m1)
cp $W/u $W/m1/open
exec 3< $W/m1/open
rm $W/m2/open; test ! -e $W/m1/open
cmp $W/u - <&3
exec 3<&-
# (df on the node that freed them; other nodes see them once it next writes back)
for i in $(seq 1 50); do [ "$(stat -f -c %f $W/m1)" -ge $((F0 - 16)) ] && break; sleep 0.1; done
test "$(stat -f -c %f $W/m1)" -ge $((F0 - 16))
# Space just freed is usable at once (not only after the next checkpoint).
dd if=/dev/zero of=$W/m1/fill bs=1M 2>/dev/null || true
rm $W/m1/fill
dd if=/dev/zero of=$W/m1/fill2 bs=1M count=100 conv=fsync 2>/dev/null
rm $W/m1/fill2
# Node 1 dies after an fsync; node 2 recovers its journal and sees the file.
printf durable > $W/m1/d/last; sync $W/m1/d/last
kill -9 $M1; wait $M1 || true
umount -l $W/m1 2>/dev/null || true
for i in $(seq 1 50); do test "$(cat $W/m2/d/last 2>/dev/null)" = durable && break; sleep 0.2; done
test "$(cat $W/m2/d/last)" = durable
test "$(ls $W/m2/d | wc -l)" = 302
umount $W/m2
echo CLUSTER-OK
"#;

#[test]
fn two_nodes_share_one_filesystem_and_recover_a_dead_node() {
    require_tool("unshare");
    let work = TempDir::new();
    let img = work.join("img");
    mkfs_image(&img, 256, "lock_dlm", "alpha:shared", 2);
    let script = format!("set -eu\n{DLM_PAIR_PRELUDE}{SCRIPT}");
    let out = run_timeout(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env("W", work.path())
            .env("B", bin_dir())
            .envs(dlm_pair_ports()),
        Duration::from_secs(120),
    );
    let logs: String = ["m1.log", "m2.log", "d1.log", "d2.log"]
        .iter()
        .map(|f| format!("--- {f} ---\n{}\n", std::fs::read_to_string(work.join(f)).unwrap_or_default()))
        .collect();
    assert!(out.stdout_str().contains("CLUSTER-OK"), "{}\n{logs}", out.describe());
    let m2 = std::fs::read_to_string(work.join("m2.log")).unwrap_or_default();
    assert!(m2.contains("recovered the journal"), "node 2 did not recover node 1's journal\n{logs}");
    let dev = gfs::open_device(&img.display().to_string()).unwrap();
    let mut fs = gfs::Fs::mount(dev, 0).unwrap();
    let r = fs.check().unwrap();
    assert!(r.problems.is_empty(), "after the cluster run: {:#?}", r.problems);
}
