#!/usr/bin/env bash
# Runs every fuzz target for a fixed time and prints a table: target, seconds it ran, executions,
# executions per second, new corpus units, crashes (from libFuzzer's final stats,
# `stat::number_of_executed_units`, and the artifacts the run left).
#
#   fuzz/run.sh [seconds-per-target]          default 60
#   TARGETS="verify_meta config" fuzz/run.sh 30   only these targets
#   RUNS=1000000 fuzz/run.sh 300              stop a target at 1M executions (300 s at most)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain; without one, the
# stable toolchain is used with RUSTC_BOOTSTRAP=1 (FUZZ_TOOLCHAIN=stable forces that). Sanitizer: none by default (the code is
# safe Rust, and the goal is executions: ≥ 1M per target); SANITIZER=address for ASan.
# Seeds come from fixtures/ (fuzz/seeds.py); the corpus grows in fuzz/corpus/<target>,
# crashing inputs land in fuzz/artifacts/<target>/, logs in fuzz/runs/<time>/.
# Exit status: 1 when any target crashed or did not run.
set -uo pipefail

secs="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
sanitizer="${SANITIZER:-none}"

if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  cargo=(cargo "+$FUZZ_TOOLCHAIN" fuzz)
  case "$FUZZ_TOOLCHAIN" in nightly*) ;; *) export RUSTC_BOOTSTRAP=1 ;; esac
elif rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  cargo=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  cargo=(cargo fuzz)
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
  exit 2
fi

targets="${TARGETS:-$("${cargo[@]}" list)}"
python3 seeds.py corpus >/dev/null

echo "building the fuzz targets (${cargo[*]} build -s $sanitizer)..." >&2
if ! "${cargo[@]}" build -s "$sanitizer" >&2; then
  echo "build failed" >&2
  exit 2
fi

runs="runs/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$runs"
status=0
total_execs=0
printf '| %-22s | %7s | %12s | %8s | %9s | %7s |\n' target seconds executions "exec/s" "new units" crashes
printf '|%s|%s|%s|%s|%s|%s|\n' "------------------------" "---------" "--------------" "----------" "-----------" "---------"
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  before="$(ls "artifacts/$t" | wc -l)"
  log="$runs/$t.log"
  started=$SECONDS
  "${cargo[@]}" run -s "$sanitizer" "$t" "corpus/$t" -- \
    -max_total_time="$secs" ${RUNS:+-runs="$RUNS"} -print_final_stats=1 -timeout=10 >"$log" 2>&1
  rc=$?
  elapsed=$((SECONDS - started))
  stat() { grep -a "^stat::$1:" "$log" | tail -1 | awk '{print $2}'; }
  execs="$(stat number_of_executed_units)"
  rate="$(stat average_exec_per_sec)"
  units="$(stat new_units_added)"
  after="$(ls "artifacts/$t" | wc -l)"
  crashes=$((after - before))
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes="? (exit $rc, see $log)"
  fi
  if [ "$rc" -ne 0 ] || [ "$crashes" != 0 ]; then status=1; fi
  total_execs=$((total_execs + ${execs:-0}))
  printf '| %-22s | %7s | %12s | %8s | %9s | %7s |\n' "$t" "$elapsed" "${execs:-?}" "${rate:-?}" "${units:-?}" "$crashes"
done
echo "total executions: $total_execs; logs in fuzz/$runs" >&2
exit $status
