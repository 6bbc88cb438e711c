#!/usr/bin/env bash
# Quickstart: export a file with gnbd_serv on this machine (no cluster), write it and read it
# back with standard NBD clients, and compare checksums. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release -q -p gnbd-serv
BIN=$PWD/target/release
WORK=$(mktemp -d /var/tmp/gnbd-quickstart.XXXXXX)
STATE=$WORK/state
cleanup() {
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
echo "quickstart: OK — data written over NBD read back identical"
