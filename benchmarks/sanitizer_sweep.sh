#!/usr/bin/env bash
# Issue 16 item 1 on a lent GPU: every tactic of every backend under compute-sanitizer
# (memcheck, racecheck, initcheck) over benchmarks/sanitizer_sweep.py's shape grid.
# Carry .whl and .carry/jit (see device_env.sh). TOOLS, SHAPES, FORMATS and BUDGET_<TOOL>
# (seconds of sweep per tool; the run ends each sweep then) select. Logs under $OUT.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
LOGS=$OUT/sanitizer
mkdir -p "$LOGS"
trap 'tar czf "$OUT/sanitizer-logs.tgz" -C "$OUT" sanitizer' EXIT
TOOLS=${TOOLS:-"memcheck racecheck initcheck"}
SHAPES=${SHAPES:-}
FORMATS=${FORMATS:-nvfp4,mxfp4}
# build the JIT kernels and warm Triton's cache outside the sanitizer (it slows compiles too)
timeout 120 python3 benchmarks/sanitizer_sweep.py ${SHAPES:+--shapes $SHAPES} --formats "$FORMATS" \
  > "$LOGS/sweep-plain.log" 2>&1
echo "plain sweep rc=$? $(tail -1 "$LOGS/sweep-plain.log")" | tee -a "$OUT/summary.txt"
for tool in $TOOLS; do
  budget_var=BUDGET_${tool^^}
  budget=${!budget_var:-120}
  extra=()
  [ "$tool" = memcheck ] && extra=(--leak-check no)
  [ "$tool" = initcheck ] && extra=(--track-unused-memory no)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout $((budget + 90)) compute-sanitizer --tool "$tool" "${extra[@]}" \
    --print-limit 20 --target-processes all \
    python3 benchmarks/sanitizer_sweep.py ${SHAPES:+--shapes $SHAPES} --formats "$FORMATS" --budget-s "$budget" \
    > "$LOGS/$tool.log" 2>&1
  rc=$?
  echo "$tool rc=$rc $(grep -E '^SWEEP' "$LOGS/$tool.log" | tail -1) | $(grep -E 'ERROR SUMMARY' "$LOGS/$tool.log" | tail -1)" \
    | tee -a "$OUT/summary.txt"
  # the cases that came before each report
  grep -B3 -E '^========= (Invalid|Race|Uninitialized|Error|Program hit)' "$LOGS/$tool.log" | grep '^CASE' \
    | sort | uniq -c | head -20 | sed "s/^/$tool report after: /" | tee -a "$OUT/summary.txt"
done
cat "$OUT/summary.txt"
