#!/usr/bin/env bash
# Runs loopvol's whole test suite. Installs the filesystem tools the
# privileged tests need when they are missing (Debian/Ubuntu, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v mkfs.xfs >/dev/null || missing+=(xfsprogs)
command -v mkfs.btrfs >/dev/null || missing+=(btrfs-progs)
command -v blkid >/dev/null || missing+=(util-linux)
command -v losetup >/dev/null || missing+=(mount)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing tools: ${missing[*]} (install them, or run as root on Debian/Ubuntu)" >&2
  fi
fi
# Loop devices need the loop driver; it is built in on most kernels.
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite (the last binary cargo runs is a
# doc-test run that may hold no test at all).
awk '/^test result:/ {p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}' "$log"
exit "$status"
