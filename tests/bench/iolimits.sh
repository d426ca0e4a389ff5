#!/usr/bin/env bash
# loopvol I/O-limit benchmark (root: loop devices, mounts, cgroups):
#
#   tests/bench/iolimits.sh                    # the run recorded in docs/BENCHMARKS.md ("I/O limits")
#   RUNTIME=3 OUT=/tmp/il tests/bench/iolimits.sh   # quick smoke run, docs/ untouched
#
# Starts loopvol-csi on a temporary pool, makes a real cgroup laid out as
# kubelet's cgroupfs driver makes a pod's (`kubepods/burstable/pod<uid>`, in
# the v1 blkio hierarchy or the v2 one with the io controller), and creates,
# stages and publishes a 2 GiB ext4 volume for that pod UID through CSI
# (`csi-bench volume create --pod-uid`, as kubelet's podInfoOnMount does).
# Then fio runs inside the volume from a container cgroup made below the
# pod's after the publish, as kubelet makes them, unlimited and
# after each ControllerModifyVolume (`csi-bench volume modify`): readIOPS 500
# and 2000 for 4 KiB random reads, writeIOPS 500 for 4 KiB random writes,
# readBytesPerSecond 20Mi for 1 MiB sequential reads. Each limited run is
# reported as measured / limit; the unlimited runs also against the same job
# on a plain directory of the pool's filesystem (volume / host).
# Writes $OUT/iolimits.json and the "I/O limits" section of
# docs/BENCHMARKS.md (only with the default OUT). Leaves no mount, loop
# device, image or cgroup behind, also when interrupted.
#
# Environment: RUNTIME (seconds per fio job, default 8), OUT (default
# docs/bench), BUILD=0 (reuse target/release), QUIET_WAIT (default 30).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
ROOT=$PWD

RUNTIME=${RUNTIME:-8}
QUIET_WAIT=${QUIET_WAIT:-30}
OUT=${OUT:-docs/bench}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DOC=$ROOT/docs/BENCHMARKS.md
[ "$(id -u)" = 0 ] || { echo "iolimits.sh needs root (loop devices, mounts, cgroups)" >&2; exit 1; }
command -v fio >/dev/null || apt-get install -y -o DPkg::Lock::Timeout=600 fio >/dev/null

if [ "${BUILD:-1}" != 0 ]; then
  cargo build --release -q -p loopvol-csi -p loopvol-tests --bin loopvol-csi --bin csi-bench
fi
CSI=$ROOT/target/release/loopvol-csi
BENCH=$ROOT/target/release/csi-bench

TMP=$(mktemp -d /var/tmp/loopvol-iolimits.XXXXXX)
POOL=$TMP/pool SOCK=$TMP/csi.sock PIDFILE=$TMP/driver.pid WORK=$TMP/work HOSTDIR=$TMP/host
mkdir -p "$POOL" "$WORK" "$HOSTDIR"

# The pod's cgroup.
UID_=$(printf '%08x-0000-4000-8000-%012x' $$ "$(date +%s)")
if [ -e /sys/fs/cgroup/blkio/blkio.throttle.read_iops_device ]; then
  HIER=/sys/fs/cgroup/blkio CGV=v1
elif grep -qw io /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  HIER=/sys/fs/cgroup CGV=v2
else
  echo "no blkio (v1) or io (v2) cgroup controller" >&2
  exit 1
fi
CG_TOP=$HIER/loopvol-bench-$$
CG=$CG_TOP/kubepods/burstable/pod$UID_
mkcg() {
  local d=$CG_TOP
  [ $CGV = v2 ] && echo +io >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
  for part in "" /kubepods /burstable "/pod$UID_"; do
    d=$d$part
    mkdir "$d"
    [ $CGV = v2 ] && [ "$d" != "$CG" ] && echo +io >"$d/cgroup.subtree_control"
  done
  return 0
}

LIVE=()
cleanup() {
  set +e
  trap '' INT TERM PIPE
  local name
  for name in "${LIVE[@]}"; do
    "$BENCH" --endpoint "unix://$SOCK" --work-dir "$WORK" volume remove --name "$name"
  done
  stop_driver
  for d in "$CG/container" "$CG" "$CG_TOP/kubepods/burstable" "$CG_TOP/kubepods" "$CG_TOP"; do rmdir "$d" 2>/dev/null; done
  sweep_leftovers "$POOL"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkcg
start_driver
for _ in $(seq 500); do [ -S "$SOCK" ] && break; sleep 0.01; done
TARGET=$("$BENCH" --endpoint "unix://$SOCK" --work-dir "$WORK" volume create --name lim --size 2Gi --pod-uid "$UID_")
LIVE+=(lim)
echo "== volume published at $TARGET for pod $UID_ (cgroup $CGV: $CG)"
mkdir "$CG/container"

modify() { "$BENCH" --endpoint "unix://$SOCK" --work-dir "$WORK" volume modify --name lim "$@"; }

# run_fio DIR RW BS -> IOPS, run from inside the pod's container cgroup.
run_fio() {
  local dir=$1 rw=$2 bs=$3 out=$TMP/fio.json
  sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$CG/container" \
    fio --name=il --directory="$dir" --ioengine=libaio --direct=1 --iodepth=16 --rw="$rw" --bs="$bs" \
    --size=512m --time_based --runtime="$RUNTIME" --ramp_time=1 --filename=fio.dat \
    --output-format=json --output="$out" >/dev/null
  python3 - "$out" "$rw" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = "write" if "write" in sys.argv[2] else "read"
print(f'{j[side]["iops"]:.1f} {j[side]["bw_bytes"]:.0f}')
PY
}

RESULTS=$TMP/results.txt
: >"$RESULTS"
# measure LABEL RW BS LIMIT_KIND LIMIT [modify params...]
measure() {
  local label=$1 rw=$2 bs=$3 kind=$4 limit=$5
  shift 5
  modify "$@"
  wait_quiet
  read -r iops bw < <(run_fio "$TARGET" "$rw" "$bs")
  local host_iops=0 host_bw=0
  if [ "$kind" = none ]; then read -r host_iops host_bw < <(run_fio "$HOSTDIR" "$rw" "$bs"); fi
  echo "   $label: ${iops} IOPS, ${bw} B/s (host ${host_iops} IOPS)"
  echo "$label $rw $bs $kind $limit $iops $bw $host_iops $host_bw" >>"$RESULTS"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
measure "randread, unlimited" randread 4k none 0
measure "randread, readIOPS=500" randread 4k iops 500 --param readIOPS=500
measure "randread, readIOPS=2000" randread 4k iops 2000 --param readIOPS=2000
measure "randwrite, unlimited" randwrite 4k none 0
measure "randwrite, writeIOPS=500" randwrite 4k iops 500 --param writeIOPS=500
measure "seqread 1M, readBytesPerSecond=20Mi" read 1M bps 20971520 --param readBytesPerSecond=20Mi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$RESULTS" "$OUT/iolimits.json" "$CGV" "$RUNTIME" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import json, sys
rows = []
for line in open(sys.argv[1]):
    p = line.split()
    label = " ".join(p[:-8])
    rw, bs, kind, limit, iops, bw, hiops, hbw = p[-8:]
    rows.append(dict(label=label, rw=rw, bs=bs, kind=kind, limit=float(limit), iops=float(iops), bw=float(bw),
                     host_iops=float(hiops), host_bw=float(hbw)))
json.dump(dict(cgroup=sys.argv[3], runtime_s=int(sys.argv[4]), load_before=sys.argv[5], load_after=sys.argv[6],
               rows=rows), open(sys.argv[2], "w"), indent=1)
PY

if [ "$OUT" = "$ROOT/docs/bench" ]; then
  python3 - "$OUT/iolimits.json" "$DOC" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
BEGIN = "<!-- BEGIN iolimits report (generated by tests/bench/iolimits.sh; do not edit by hand) -->"
END = "<!-- END iolimits report -->"
out = [BEGIN, "", "## I/O limits (ModifyVolume)", "",
       f"fio (libaio, O_DIRECT, iodepth 16, {d['runtime_s']} s per job) inside a published ext4 volume, run in "
       f"a container cgroup below a pod cgroup (cgroup {d['cgroup']}, kubelet's cgroupfs layout); each limit was set by "
       "ControllerModifyVolume on the live, published volume. Load average before/after: "
       f"{d['load_before']} / {d['load_after']}.", "",
       "| job | limit | measured | measured / limit | volume / host (unlimited) |", "|---|---|---|---|---|"]
for r in d["rows"]:
    if r["kind"] == "none":
        ratio = f"{r['iops'] / r['host_iops']:.2f}x" if r["host_iops"] else "n/a"
        out.append(f"| {r['label']} | none | {r['iops']:.0f} IOPS | | {ratio} |")
    elif r["kind"] == "iops":
        out.append(f"| {r['label']} | {r['limit']:.0f} IOPS | {r['iops']:.0f} IOPS | {r['iops'] / r['limit']:.3f} | |")
    else:
        out.append(f"| {r['label']} | {r['limit'] / 2**20:.0f} MiB/s | {r['bw'] / 2**20:.1f} MiB/s | "
                   f"{r['bw'] / r['limit']:.3f} | |")
out += ["", END]
section = "\n".join(out)
text = open(sys.argv[2]).read()
if BEGIN in text and END in text:
    text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(sys.argv[2], "w").write(text)
PY
  echo "== wrote the I/O limits section of docs/BENCHMARKS.md"
fi
echo "== results: $OUT/iolimits.json"
