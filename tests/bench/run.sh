#!/usr/bin/env bash
# loopvol benchmarks, one command (root: loop devices and mounts):
#
#   tests/bench/run.sh            # the full run recorded in docs/BENCHMARKS.md
#   QUICK=1 tests/bench/run.sh    # smoke run with small counts (results to a temp dir)
#
# Builds the release binaries (stripped: `strip = true` in the release
# profile), starts loopvol-csi on a temporary pool and socket, and the
# reference driver (hostpathplugin from ../shared/csi-sanity, unpacked by its
# install.sh) on its own socket and state directory, runs every benchmark
# with csi-bench (the control-plane ones against both drivers, alternating in
# rounds within one csi-bench run, so that both see the same machine), writes
# the results as docs/bench/*.json (the reference's as
# docs/bench/hostpath/*.json) and regenerates
# docs/bench/latency.svg and the tables in docs/BENCHMARKS.md, ratios to the
# reference included. Without ../shared/csi-sanity it measures loopvol alone
# and says so.
# Leaves no mount or loop device behind, also when interrupted (Ctrl-C: the
# running benchmark undoes what it has in flight, then this script cleans up).
#
# Environment: OUT (result dir, default docs/bench), QUICK=1, BUILD=0 (reuse
# the binaries in target/release, e.g. while the work tree does not build), QUIET_WAIT
# (seconds to wait for other work on the machine to calm down before each
# benchmark, default 120; 0 disables), BENCH_FLAGS (extra csi-bench flags),
# LOOPVOL_SANITY_DIR (default ../shared/csi-sanity), LOOPVOL_PEERS_DIR (where
# its install.sh unpacks, default ${TMPDIR:-/tmp}/loopvol-peers).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
ROOT=$PWD

if [ "$(id -u)" -ne 0 ]; then
  echo "run.sh needs root (loop devices, mount(2))" >&2
  exit 1
fi
QUICK=${QUICK:-0}
QUIET_WAIT=${QUIET_WAIT:-120}
if [ "$QUICK" = 1 ]; then
  OUT=${OUT:-$(mktemp -d /tmp/loopvol-bench-out.XXXXXX)}
  N_MOUNT=20 N_BLOCK=30 N_C16=64 N_SCALE=100 STORM_ROUNDS=2 FLEX_RUNS=21
else
  OUT=${OUT:-docs/bench}
  N_MOUNT=200 N_BLOCK=300 N_C16=1000 N_SCALE=1000 STORM_ROUNDS=10 FLEX_RUNS=201
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The reference driver, measured in the same run.
SANITY_DIR=${LOOPVOL_SANITY_DIR:-$ROOT/../shared/csi-sanity}
HOSTPATH=
if [ -x "$SANITY_DIR/install.sh" ]; then
  PEERS=$("$SANITY_DIR/install.sh" "${LOOPVOL_PEERS_DIR:-${TMPDIR:-/tmp}/loopvol-peers}")
  HOSTPATH=$(printf '%s\n' "$PEERS"/hostpathplugin-v[0-9]* | grep -v '\.tmp$' | sort -V | tail -n 1)
  [ -x "$HOSTPATH" ] || HOSTPATH=
fi
if [ -z "$HOSTPATH" ]; then
  echo "!!! no hostpathplugin in $SANITY_DIR: measuring loopvol alone, the report will have no ratios" >&2
fi
# Results of an earlier run with the reference must not be reported as this run's.
rm -rf "$OUT/hostpath"

if [ "${BUILD:-1}" != 0 ]; then
  echo "== building release binaries"
  cargo build --release --locked -p loopvol-csi -p loopvol-flexvolume -p loopvol-tests --bins
fi
REL=$ROOT/target/release
CSI=$REL/loopvol-csi FLEX=$REL/loopvol BENCH=$REL/csi-bench
{
  for b in "$CSI" "$FLEX" "$BENCH"; do
    printf '%s %s bytes, %s\n' "$(basename "$b")" "$(stat -c %s "$b")" \
      "$(file -b "$b" 2>/dev/null | grep -o 'not stripped\|stripped' || echo '?')"
  done
} >"$OUT/binaries.txt"
cat "$OUT/binaries.txt"

TMP=$(mktemp -d /tmp/loopvol-bench.XXXXXX)
TMP=$(cd "$TMP" && pwd -P)
SOCK=$TMP/csi.sock POOL=$TMP/pool WORK=$TMP/work PIDFILE=$TMP/driver.pid
HP_SOCK=$TMP/hostpath.sock HP_STATE=$TMP/hostpath-state HP_PIDFILE=$TMP/hostpath.pid
mkdir -p "$WORK"


# The reference: hostpathplugin with its defaults (as csi-driver-host-path
# deploys it), its volumes below $HP_STATE (directories in mount mode; in
# block mode files attached to loop devices).
start_hostpath() {
  setsid "$HOSTPATH" --endpoint "unix://$HP_SOCK" --nodeid bench-node --drivername hostpath.csi.k8s.io \
    --statedir "$HP_STATE" >>"$TMP/hostpath.log" 2>&1 </dev/null &
  echo $! >"$HP_PIDFILE"
}


cleanup() {
  set +e
  stop_driver
  stop_driver "$HP_PIDFILE"
  # Safety net: anything a crash left behind.
  sweep_leftovers "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The restart command of the scale benchmark: stop, start again in the background.
cat >"$TMP/restart.sh" <<EOF
#!/bin/sh
pid=\$(cat "$PIDFILE")
kill -TERM "\$pid"
while [ -e "/proc/\$pid" ] && ! grep -q '^State:.*Z' "/proc/\$pid/status" 2>/dev/null; do sleep 0.005; done
setsid "$CSI" --endpoint "unix://$SOCK" --pool "$POOL" --node-id bench-node >>"$TMP/driver.log" 2>&1 </dev/null &
echo \$! >"$PIDFILE"
EOF
chmod +x "$TMP/restart.sh"


bench() {
  local name=$1
  shift
  wait_quiet
  echo "== $name"
  # shellcheck disable=SC2086
  "$BENCH" --endpoint "unix://$SOCK" --driver-pid-file "$PIDFILE" --pool "$POOL" --work-dir "$WORK" \
    --json "$OUT/$name.json" ${BENCH_FLAGS:-} "$@"
}

# The same benchmark against the reference, right after loopvol's (no wait:
# the two runs should see the same machine).
ref_bench() {
  local name=$1
  shift
  [ -n "$HOSTPATH" ] || return 0
  echo "== $name (reference: hostpath)"
  # shellcheck disable=SC2086
  "$BENCH" --endpoint "unix://$HP_SOCK" --driver-pid-file "$HP_PIDFILE" --pool "$HP_STATE" --work-dir "$WORK" \
    --json "$OUT/hostpath/$name.json" ${BENCH_FLAGS:-} "$@"
}

# Both drivers, the same arguments, one after the other (the idle probe).
both() {
  local rc=0
  bench "$@" || rc=1
  ref_bench "$@" || rc=1
  return $rc
}

# A lifecycle benchmark against both drivers in one csi-bench run that
# alternates between them in 10 rounds, so that the other engineers' builds
# weigh on both alike (the reference's results: $OUT/hostpath/NAME.json).
pair() {
  local name=$1
  shift
  if [ -z "$HOSTPATH" ]; then
    bench "$name" "$@"
    return
  fi
  bench "$name" "$@" --reference-endpoint "unix://$HP_SOCK" --reference-pid-file "$HP_PIDFILE" \
    --reference-pool "$HP_STATE" --reference-json "$OUT/hostpath/$name.json" --rounds 10
}

echo "== starting loopvol-csi (pool $POOL)"
start_driver
if [ -n "$HOSTPATH" ]; then
  echo "== starting $(basename "$HOSTPATH") (state $HP_STATE)"
  mkdir -p "$OUT/hostpath"
  start_hostpath
fi
for _ in $(seq 500); do [ -S "$SOCK" ] && { [ -z "$HOSTPATH" ] || [ -S "$HP_SOCK" ]; } && break; sleep 0.01; done
sleep 1

status=0
both idle probe || status=1
# The control plane, against both drivers (ratios in the report).
pair lifecycle-mount lifecycle --count "$N_MOUNT" --concurrency 1 --access mount --size 10Gi --fs-type ext4 || status=1
pair lifecycle-block lifecycle --count "$N_BLOCK" --concurrency 1 --access block --size 1Gi || status=1
# 1 GiB volumes: 16 x 10 GiB would not fit the pool's space accounting on a small disk.
pair lifecycle-mount-c16 lifecycle --count "$N_C16" --concurrency 16 --access mount --size 1Gi --fs-type ext4 || status=1
pair lifecycle-block-c16 lifecycle --count "$N_C16" --concurrency 16 --access block --size 1Gi || status=1
if [ -n "$HOSTPATH" ]; then
  stop_driver "$HP_PIDFILE"
  rm -f "$HP_PIDFILE"
fi
# loopvol alone from here: restarts, many volumes, FlexVolume.
bench publish-storm publish-storm --volumes 64 --rounds "$STORM_ROUNDS" --concurrency 16 --size 64Mi || status=1
bench scale scale --volumes "$N_SCALE" --concurrency 16 --page-size 100 --access block --size 16Mi \
  --restart-cmd "$TMP/restart.sh" || status=1
wait_quiet
echo "== flex"
"$BENCH" --work-dir "$WORK" --json "$OUT/flex.json" flex --exe "$FLEX" --runs "$FLEX_RUNS" || status=1

echo "== leaks"
leaked=0
if grep " $TMP" /proc/self/mountinfo; then echo "mounts left below $TMP" >&2; leaked=1; fi
for f in /sys/block/loop*/loop/backing_file; do
  [ -e "$f" ] && case "$(cat "$f")" in "$TMP"/*) echo "loop device left: $f" >&2; leaked=1 ;; esac
done
# The reference keeps a volume as a directory (or a file) below its state dir.
if [ -d "$HP_STATE" ] && find "$HP_STATE" -mindepth 1 -maxdepth 1 ! -name state.json | grep .; then
  echo "reference volumes left in $HP_STATE" >&2
  leaked=1
fi
if [ "$leaked" = 0 ]; then echo "none"; else status=1; fi

echo "== report"
if [ "$OUT" = "$ROOT/docs/bench" ]; then
  "$BENCH" report --dir "$OUT" --doc docs/BENCHMARKS.md --svg "$OUT/latency.svg"
else
  cp docs/BENCHMARKS.md "$OUT/BENCHMARKS.md"
  "$BENCH" report --dir "$OUT" --doc "$OUT/BENCHMARKS.md" --svg "$OUT/latency.svg"
  echo "results in $OUT (docs/ untouched)"
fi
exit $status
