#!/usr/bin/env bash
# Builds the libFuzzer drivers (clang, address + undefined) and runs them.
#   tests/fuzz/run.sh          every driver for PARLEY_FUZZ_SECONDS (default 300) each, growing a
#                              working corpus under var/fuzz/ (make fuzz)
#   tests/fuzz/run.sh smoke    replays the seed corpus and every past crasher, then fuzzes each
#                              driver for PARLEY_FUZZ_SMOKE_SECONDS (default 15) (make test)
# Prints one line per driver (executions, coverage, crashes) and fails on any crash. A crash's
# input lands in var/fuzz/crashes/; once fixed, copy it to tests/fuzz/crashers/<driver>/ so
# every later run replays it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mode=${1:-long}
build=${PARLEY_FUZZ_BUILD:-$root/build-fuzz}
drivers=(fuzz_envelope fuzz_wsframe fuzz_handshake fuzz_body fuzz_jwt)

CC=${PARLEY_FUZZ_CC:-clang-14} cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DPARLEY_FUZZ=ON >/dev/null
cmake --build "$build" --target fuzzers >/dev/null

if [ "$mode" = smoke ]; then
  secs=${PARLEY_FUZZ_SMOKE_SECONDS:-15}
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
else
  secs=${PARLEY_FUZZ_SECONDS:-300}
  work=$root/var/fuzz
fi
crashes=$root/var/fuzz/crashes
mkdir -p "$crashes"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

failed=0
for d in "${drivers[@]}"; do
  bin=$build/bin/$d
  seeds=$here/corpus/$d
  past=$here/crashers/$d
  mkdir -p "$work/$d" "$past"
  log=$work/$d.log
  # Every input ever kept, and every past crasher, must run clean before new fuzzing.
  if ! "$bin" -runs=0 "$seeds" "$past" >"$log" 2>&1; then
    echo "fuzz: $d fails on its corpus or a past crasher (see $log)"
    tail -30 "$log"
    failed=1
    continue
  fi
  replayed=$(find "$seeds" "$past" -type f | wc -l)
  # -timeout: an input that runs a second is a hang; -rss_limit_mb bounds memory per input.
  if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$crashes/$d-" "$work/$d" "$seeds" >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  corp=$(find "$work/$d" -type f | wc -l)
  echo "fuzz: $d ${status} executions=${execs:-?} ${cov:-cov: ?} corpus=$corp replayed=$replayed seconds=$secs"
  if [ "$status" != ok ]; then
    grep -E "ERROR|SUMMARY|Test unit written|fuzz_" "$log" | head -20
  fi
done
exit $failed
