//! A filesystem that refuses O_DIRECT (ramfs; tmpfs accepts it on current kernels): an
//! uncached export there is served through the page cache, with a warning in the log and a
//! mark in `gnbd_export -l`, and data still round-trips. Runs in a private mount namespace.

use gnbd_tests::{export_bin, require_tool, run_timeout, serv_bin, OutputExt, TempDir};
use std::process::Command;
use std::time::Duration;

const SCRIPT: &str = r#"
set -eu
serv=$1; export=$2; work=$3
mnt=$work/ramfs; state=$work/state; pid=""
cleanup() {
    rc=$?
    set +e
    if [ -n "$pid" ]; then kill "$pid"; wait "$pid"; fi
    umount "$mnt"
    exit $rc
}
trap cleanup EXIT
mkdir -p "$mnt"
mount -t ramfs none "$mnt"
head -c 8M /dev/zero > "$mnt/disk.img"
"$serv" --state-dir "$state" --bind 127.0.0.1 -p 0 --foreground > "$work/ready" 2> "$work/log" &
pid=$!
i=0
until grep -q ready "$work/ready"; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "no ready line" >&2; cat "$work/log" >&2; exit 1; }
    sleep 0.1
done
port=$(sed -n 's/.*tcp=127.0.0.1:\([0-9]*\).*/\1/p' "$work/ready")
"$export" --state-dir "$state" -e ram -d "$mnt/disk.img"
"$export" --state-dir "$state" -l | tee "$work/list"
grep -q 'uncached\*' "$work/list"
grep -q 'refuses O_DIRECT' "$work/list"
qemu-io -f raw "nbd://127.0.0.1:$port/ram" \
    -c 'write -P 0x5a 0 64k' -c 'write -P 0x33 4097 999' -c flush \
    -c 'read -P 0x5a 0 4097' -c 'read -P 0x33 4097 999' -c 'read -P 0x5a 5096 60440' \
    -c 'write -P 0x77 1M 2M' -c 'write -z 1M 1536k' -c 'read -P 0 1M 1536k' -c 'read -P 0x77 2560k 512k' \
    | tee "$work/io"
! grep -q 'verification failed' "$work/io"
# ramfs cannot fallocate: zeroing fell back to writing zeroes, and FAST_ZERO must then refuse.
# libnbd's Python binding, run by the system python (pyenv's python can hide it).
/usr/bin/python3 -c '
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
try:
    h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO)
    raise SystemExit("FAST_ZERO succeeded on a store that cannot zero quickly")
except nbd.Error as e:
    print("fast zero refused:", e)
    assert e.errnum == 95, e.errnum
h.zero(65536, 0)
assert h.pread(65536, 0) == bytes(65536)
h.shutdown()
' "nbd://127.0.0.1:$port/ram"
grep -q 'refuses O_DIRECT' "$work/log"
"#;

#[test]
fn uncached_export_on_a_filesystem_without_o_direct_falls_back_to_the_page_cache() {
    require_tool("unshare");
    require_tool("qemu-io");
    require_tool("nbdsh"); // python3-libnbd, which the script imports
    let dir = TempDir::new();
    let out = run_timeout(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh"])
            .arg(serv_bin())
            .arg(export_bin())
            .arg(dir.path()),
        Duration::from_secs(60),
    );
    out.assert_success("ramfs export script");
}
