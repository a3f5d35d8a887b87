#!/usr/bin/env bash
# One device call: Nsight Compute (full set, stall reasons, per-SM active-cycle spread) on
# single launches of the fp4-trtllm split-K ring kernel at M = 1: 28672 x 8192 with 2 and 4
# splits (the 2-split grid was faster although both give the busiest SM the same work) and
# 8192 x 8192 with its best tactic. Logs in logs.tgz. Carry .whl and .carry/jit.
#   run: bash benchmarks/profile_ring.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
cat > /tmp/case.py <<'PY'
import sys, torch, fp4core
from fp4core.synthetic import random_operands
from fp4_trtllm.plugin import TrtllmBackend
n, k, t, w, s = (int(x) for x in sys.argv[1:6])
be = TrtllmBackend()
p = fp4core.make_problem(1, n, k, prepared=True, device="cuda")
ops = random_operands(p, device="cuda")
wp = be.prepare(p.with_m(None), fp4core.Operands(None, None, ops.b, ops.b_scale)).with_activation(ops.a, ops.a_scale, ops.alpha)
out = torch.empty(1, n, dtype=torch.bfloat16, device="cuda")
for _ in range(3):
    be.run(p, wp, {"kernel": "splitk", "t": t, "warps": w, "split_k": s, "ring": 1}, out)
torch.cuda.synchronize()
PY
MET="sm__cycles_active.min,sm__cycles_active.max,sm__cycles_active.avg,sm__warps_active.max,sm__warps_active.avg"
for c in "28672 8192 4 4 2" "28672 8192 4 4 4" "8192 8192 2 4 4"; do
  tag=$(echo $c | tr ' ' '-')
  timeout 100 ncu --clock-control none -k regex:fp4_splitk --launch-skip 2 --launch-count 1 --set full \
    --metrics $MET --print-details all python3 /tmp/case.py $c > "$OUT/ncu-$tag.txt" 2>&1
  echo "ncu $tag rc=$?" >> "$OUT/summary.txt"
done
cat "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
