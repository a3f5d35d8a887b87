#!/usr/bin/env bash
# One device call: Nsight Compute (full set, stall reasons, per-SM active-cycle spread) on
# single launches of the fp4-trtllm split-K ring kernel at M = 1: 28672 x 8192 with 2 and 4
# splits (the 2-split grid was faster although both give the busiest SM the same work) and
# 8192 x 8192 with its best tactic. Logs in logs.tgz. Carry .whl and .carry/jit.
#   run: bash benchmarks/profile_ring.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
MET="sm__cycles_active.min,sm__cycles_active.max,sm__cycles_active.avg,sm__warps_active.max,sm__warps_active.avg"
for c in "28672 8192 4 4 2" "28672 8192 4 4 4" "8192 8192 2 4 4"; do  # N K t warps splits
  tag=$(echo $c | tr ' ' '-')
  set -- $c
  tac="{\"kernel\": \"splitk\", \"t\": $3, \"warps\": $4, \"split_k\": $5, \"ring\": 1}"
  timeout 100 ncu --clock-control none -k regex:fp4_splitk --launch-skip 2 --launch-count 1 --set full \
    --metrics $MET --print-details all python3 benchmarks/trtllm_case.py 1 $1 $2 "$tac" > "$OUT/ncu-$tag.txt" 2>&1
  echo "ncu $tag rc=$?" >> "$OUT/summary.txt"
done
cat "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
