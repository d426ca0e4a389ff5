# Shared by the benchmark scripts (tests/bench/run.sh, datapath.sh); sourced,
# not run. Expects CSI, SOCK, POOL, TMP, PIDFILE and QUIET_WAIT to be set.

# Starts loopvol-csi on $POOL and $SOCK. setsid: a Ctrl-C on the terminal
# must reach the benchmark (which undoes its work through the driver), not
# the driver itself.
start_driver() {
  setsid "$CSI" --endpoint "unix://$SOCK" --pool "$POOL" --node-id bench-node \
    >>"$TMP/driver.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
}

# Stops the driver whose PID is in the file $1 (default $PIDFILE) and waits
# until it is gone (a zombie counts as gone: it may be this script's unreaped
# child).
stop_driver() {
  local pid
  pid=$(cat "${1:-$PIDFILE}" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  while [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do sleep 0.005; done
}

# The safety net of a cleanup: unmounts anything left below $TMP (deepest
# first, lazily), detaches loop devices backed below $1, and removes $TMP
# unless something is still mounted there.
sweep_leftovers() {
  local backing_root=$1 m f dev
  grep -o " ${TMP}[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
  for f in /sys/block/loop*/loop/backing_file; do
    [ -e "$f" ] || continue
    case "$(cat "$f" 2>/dev/null)" in "$backing_root"/*)
      dev=/dev/$(basename "$(dirname "$(dirname "$f")")")
      echo "detaching leaked $dev" >&2
      losetup -d "$dev"
      ;;
    esac
  done
  if grep -q " $TMP" /proc/self/mountinfo; then
    echo "still mounted below $TMP; left in place" >&2
  else
    rm -rf "$TMP"
  fi
}

# Waits (at most $QUIET_WAIT s) until the CPU and I/O pressure of the last
# 10 s are low.
wait_quiet() {
  [ "$QUIET_WAIT" -gt 0 ] || return 0
  local waited=0 cpu io
  while [ "$waited" -lt "$QUIET_WAIT" ]; do
    cpu=$(awk '/^some/ {sub("avg10=", "", $2); print int($2)}' /proc/pressure/cpu 2>/dev/null || echo 0)
    io=$(awk '/^some/ {sub("avg10=", "", $2); print int($2)}' /proc/pressure/io 2>/dev/null || echo 0)
    if [ "$cpu" -lt 10 ] && [ "$io" -lt 5 ]; then return 0; fi
    sleep 2
    waited=$((waited + 2))
  done
  echo "   (machine still busy after ${QUIET_WAIT}s: cpu pressure ${cpu}%, io ${io}%; measuring anyway)"
}
