#!/usr/bin/env bash
# Install the Debian packages that the quickstart, the tests and the benchmarks use.
# Idempotent: does nothing when everything is already there.
set -euo pipefail
need=()
for pair in nbdinfo:libnbd-bin nbdcopy:libnbd-bin nbdfuse:libnbd-bin nbdsh:python3-libnbd qemu-img:qemu-utils \
            qemu-io:qemu-utils qemu-nbd:qemu-utils nbd-server:nbd-server nbd-client:nbd-client \
            nbdkit:nbdkit fio:fio fusermount3:fuse3 iperf3:iperf3 mkfs.ext4:e2fsprogs \
            losetup:mount corosync:corosync corosync-quorumtool:corosync pkg-config:pkg-config \
            openssl:openssl arping:arping haproxy:haproxy wrk:wrk python3:python3 nft:nftables curl:curl ip:iproute2 \
            etcd:etcd-server redis-server:redis-server pvcreate:lvm2; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# Corosync client libraries the cluster crate links against (rust-corosync).
for lib in cpg cfg cmap quorum votequorum; do
  [ -e "/usr/lib/$(uname -m)-linux-gnu/lib$lib.so" ] || need+=("lib$lib-dev")
done
[ -e /usr/include/corosync/corotypes.h ] || need+=(libcorosync-common-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
# POSIX conformance suite run against gfs mounts (a Rust program from crates.io).
command -v pjdfstest >/dev/null 2>&1 || cargo install --quiet --locked pjdfstest --version 0.2.2
