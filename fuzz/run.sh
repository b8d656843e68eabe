#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after the other (see docs/security.md).
# Usage: fuzz/run.sh BUILD_DIR [SECONDS_PER_TARGET] [TARGET...]
# FUZZ_RUNS=N in the environment runs each target for N executions instead (no time limit).
# Corpora persist in BUILD_DIR/fuzz-corpus/<target> (seeded by fuzz_seeds); a crashing input
# stops its target and lands in BUILD_DIR/fuzz-crashes/<target>/ (fix the parser, then copy
# the input to tests/data/fuzz-regressions/<target>/).
set -euo pipefail
build=${1:?usage: fuzz/run.sh BUILD_DIR [SECONDS] [TARGET...]}
seconds=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(gguf packed_container safetensors safetensors_index llama2c_checkpoint llama2c_tokenizer hf_config spec entropy)
fi
seeds=$build/fuzz-seeds
rm -rf "$seeds"
"$build/fuzz/fuzz_seeds" "$seeds"
total=0
printf '%-20s %12s %9s %8s %8s\n' target executions exec/s crashes corpus
for t in "${targets[@]}"; do
  corpus=$build/fuzz-corpus/$t crashes=$build/fuzz-crashes/$t log=$build/fuzz-logs/$t.log
  mkdir -p "$corpus" "$crashes" "$(dirname "$log")"
  start=$(date +%s)
  if [ -n "${FUZZ_RUNS:-}" ]; then bound=(-runs="$FUZZ_RUNS"); else bound=(-max_total_time="$seconds"); fi
  "$build/fuzz/fuzz_$t" "$corpus" "$seeds/$t" "${bound[@]}" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=2048 -max_len=65536 -print_final_stats=1 -artifact_prefix="$crashes/" >"$log" 2>&1 || true
  elapsed=$(( $(date +%s) - start ))
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  execs=${execs:-0}
  found=$(find "$crashes" -type f | wc -l)
  total=$(( total + found ))
  printf '%-20s %12s %9s %8s %8s\n' "$t" "$execs" "$(( execs / (elapsed > 0 ? elapsed : 1) ))" "$found" \
    "$(find "$corpus" -type f | wc -l)"
done
echo "crash/timeout/oom inputs: $total (logs: $build/fuzz-logs, inputs: $build/fuzz-crashes)"
[ "$total" -eq 0 ]
