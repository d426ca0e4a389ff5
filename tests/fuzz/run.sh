#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and prints executions per target.
#
#   tests/fuzz/run.sh                   # 30 s per target
#   LOOPVOL_FUZZ_SECONDS=300 tests/fuzz/run.sh
#   tests/fuzz/run.sh quantity mountinfo  # only these targets
#
# Needs the nightly toolchain (libFuzzer instrumentation); installs
# cargo-fuzz from crates.io when it is missing. The seed corpora in
# corpus/<target>/ are read, never written: new inputs go to corpus-work/
# (gitignored). A crash leaves its input in artifacts/<target>/ and fails
# the run.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${LOOPVOL_FUZZ_SECONDS:-30}"
toolchain="${LOOPVOL_FUZZ_TOOLCHAIN:-nightly}"

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
  echo "fuzz: the $toolchain toolchain is missing (rustup toolchain install $toolchain)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "+$toolchain" fuzz list --fuzz-dir .)
fi

cargo "+$toolchain" fuzz build --fuzz-dir . -O
summary=()
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus-work/$t" "corpus/$t"
  log="corpus-work/$t.log"
  echo "fuzz: $t for ${seconds}s"
  # -max_len covers the largest seed; -timeout flags a single slow input;
  # -rss_limit_mb bounds memory.
  if cargo "+$toolchain" fuzz run --fuzz-dir . -O "$t" "corpus-work/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    tail -40 "$log" >&2
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  summary+=("$(printf '%-14s %-6s %12s executions in %ss' "$t" "$result" "${execs:-?}" "$seconds")")
done
echo
echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
exit $status
