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
BACKENDS=${BACKENDS:-"cudnn triton trtllm cutlass"}
# build the JIT kernels and warm Triton's cache outside the sanitizer (it slows compiles too)
[ "${PLAIN:-1}" = 1 ] && timeout 120 python3 benchmarks/sanitizer_sweep.py ${SHAPES:+--shapes $SHAPES} --formats "$FORMATS" \
  > "$LOGS/sweep-plain.log" 2>&1
[ "${PLAIN:-1}" = 1 ] && echo "plain sweep rc=$? $(tail -1 "$LOGS/sweep-plain.log")" | tee -a "$OUT/summary.txt"
# memcheck: one process per backend, so a fault in one backend's kernel does not hide the
# others (the context is gone after it); the other tools: one process, BUDGET_<TOOL> in all.
for tool in $TOOLS; do
  budget_var=BUDGET_${tool^^}
  budget=${!budget_var:-120}
  extra=(--report-api-errors no --print-limit 200 --target-processes all)
  [ "$tool" = memcheck ] && extra+=(--leak-check no)
  [ "$tool" = initcheck ] && extra+=(--track-unused-memory no)
  if [ "$tool" = memcheck ]; then groups=$BACKENDS; per=$((budget / $(wc -w <<< "$BACKENDS"))); else groups=all; per=$budget; fi
  for g in $groups; do
    sel=(); [ "$g" != all ] && sel=(--backends "$g")
    log="$LOGS/$tool-$g.log"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout $((per + 90)) compute-sanitizer --tool "$tool" "${extra[@]}" \
      python3 benchmarks/sanitizer_sweep.py ${SHAPES:+--shapes $SHAPES} --formats "$FORMATS" --budget-s "$per" "${sel[@]}" \
      > "$log" 2>&1
    rc=$?
    echo "$tool $g rc=$rc $(grep -E '^SWEEP' "$log" | tail -1) | $(grep -E 'ERROR SUMMARY' "$log" | tail -1)" \
      | tee -a "$OUT/summary.txt"
    # the case before each report, and the report's first line
    awk '/^CASE/{c=$0} /^========= (Invalid|Race|Uninitialized|Warp|Cuda|Barrier|Program hit|Out-of)/{print c " :: " $0}' "$log" \
      | sort | uniq -c | sort -rn | head -12 | sed "s/^/  /" | tee -a "$OUT/summary.txt"
    grep -B1 "CONTEXT LOST" "$log" | head -4 | sed "s/^/  /" | tee -a "$OUT/summary.txt"
  done
done
cat "$OUT/summary.txt"
