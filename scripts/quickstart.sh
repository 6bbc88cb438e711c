#!/usr/bin/env bash
# Quickstart: export a file with gnbd_serv on this machine (no cluster), write it and read it
# back with standard NBD clients, then import it with gnbd_import as /dev/gnbd/NAME, put
# ext4 on it and use it. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release -q -p gnbd-serv -p gnbd-client --bins
BIN=$PWD/target/release
WORK=$(mktemp -d /var/tmp/gnbd-quickstart.XXXXXX)
STATE=$WORK/state
cleanup() {
  "$BIN/gnbd_import" --state-dir "$WORK/import" -R -f >/dev/null 2>&1 || true
  if [ -f "$STATE/gnbd_serv.pid" ]; then kill "$(cat "$STATE/gnbd_serv.pid")" 2>/dev/null || true; fi
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== start gnbd_serv (daemon) on 127.0.0.1, a free port, state in $STATE"
ready=$("$BIN/gnbd_serv" --state-dir "$STATE" --bind 127.0.0.1 -p 0)
echo "$ready"
port=${ready##*tcp=127.0.0.1:}; port=${port%% *}

echo "== export a 256 MiB file"
truncate -s 256M "$WORK/disk0.img"
"$BIN/gnbd_export" --state-dir "$STATE" -e disk0 -d "$WORK/disk0.img" --description "quickstart disk"
"$BIN/gnbd_export" --state-dir "$STATE" -l
uri="nbd://127.0.0.1:$port/disk0"

echo "== what a standard client sees: nbdinfo $uri"
nbdinfo "$uri"

echo "== write 64 MiB of random data with nbdcopy, read it back, compare"
head -c 64M /dev/urandom > "$WORK/in.bin"
nbdcopy "$WORK/in.bin" "$uri"
nbdcopy --flush "$uri" "$WORK/out.bin"
a=$(sha256sum < "$WORK/in.bin" | cut -d' ' -f1)
b=$(head -c 64M "$WORK/out.bin" | sha256sum | cut -d' ' -f1)
echo "written: $a"
echo "read:    $b"
[ "$a" = "$b" ] || { echo "quickstart: MISMATCH" >&2; exit 1; }
echo "== allocation map (nbdinfo --map)"
nbdinfo --map "$uri"
echo "== the same bytes through an import: gnbd_import -i 127.0.0.1 -p $port -n disk0"
"$BIN/gnbd_import" --state-dir "$WORK/import" -i 127.0.0.1 -p "$port" -n disk0
"$BIN/gnbd_import" --state-dir "$WORK/import" -l
c=$(head -c 64M /dev/gnbd/disk0 | sha256sum | cut -d' ' -f1)
echo "device:  $c"
[ "$a" = "$c" ] || { echo "quickstart: MISMATCH through /dev/gnbd/disk0" >&2; exit 1; }

echo "== ext4 on /dev/gnbd/disk0: mkfs, mount, write, unmount, re-import, check (private mount namespace)"
mkdir -p "$WORK/mnt"
unshare -m --propagation private sh -euc '
  mkfs.ext4 -q -F /dev/gnbd/disk0
  mount /dev/gnbd/disk0 "$1"
  cp "$2" "$1/in.bin"
  umount "$1"' sh "$WORK/mnt" "$WORK/in.bin"
"$BIN/gnbd_import" --state-dir "$WORK/import" -r disk0
"$BIN/gnbd_import" --state-dir "$WORK/import" -i 127.0.0.1 -p "$port" -n disk0 >/dev/null
unshare -m --propagation private sh -euc '
  e2fsck -fn /dev/gnbd/disk0 >/dev/null
  mount -o ro /dev/gnbd/disk0 "$1"
  cmp "$2" "$1/in.bin"
  df -h "$1"
  umount "$1"' sh "$WORK/mnt" "$WORK/in.bin"
"$BIN/gnbd_import" --state-dir "$WORK/import" -r disk0
echo "quickstart: OK — data written over NBD read back identical, and ext4 on /dev/gnbd/disk0 survived a re-import"
