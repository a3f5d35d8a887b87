#!/usr/bin/env bash
# One device call (timeout_s 600): the PyTorch-integration GPU tests (custom op, torch.compile,
# CUDA graphs, allocation checks, quantization bytes), the quantization benchmark on large
# inputs, then Nsight Compute on one launch each of the two memory-streaming kernels that
# miss their bandwidth targets: the quantization kernel (8192 x 8192 bf16, NVFP4) and the
# fp4-trtllm split-K kernel (M = 1, 8192 x 8192). Everything comes back in logs.tgz.
# See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/profile_streaming.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
T="-q -p no:cacheprovider --tb=short -rfE -m gpu"
timeout ${TEST_CAP:-200} python3 -m pytest $T tests > "$OUT/tests-core.log" 2>&1
echo "core tests rc=$? $(tail -1 "$OUT/tests-core.log")" > "$OUT/summary.txt"
timeout 40 fp4core bench --quantize --m 2048,8192 --json "$OUT/quant.json" 2>/dev/null > "$OUT/quant.txt"
cat > /tmp/quant_case.py <<'PY'
import torch, fp4core
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
gs = torch.ones(1, device="cuda")
for _ in range(3):
    fp4core.quantize_fp4(x, "nvfp4", "128x4", gs)
torch.cuda.synchronize()
PY
cat > /tmp/splitk_case.py <<'PY'
import torch, fp4core
from fp4core.dispatch.synthetic import random_operands
from fp4_trtllm.plugin import TrtllmBackend
be = TrtllmBackend()
p = fp4core.make_problem(1, 8192, 8192, prepared=True, device="cuda")
ops = random_operands(p, device="cuda")
w = be.prepare(p.with_m(None), fp4core.Operands(None, None, ops.b, ops.b_scale)).with_activation(ops.a, ops.a_scale, ops.alpha)
out = torch.empty(1, 8192, dtype=torch.bfloat16, device="cuda")
for _ in range(3):
    be.run(p, w, {"kernel": "splitk", "t": 4, "warps": 4, "split_k": 12}, out)
torch.cuda.synchronize()
PY
SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis"
timeout 90 ncu --clock-control none -k regex:_quant_kernel --launch-skip 2 --launch-count 1 $SECTIONS \
  python3 /tmp/quant_case.py > "$OUT/ncu-quant.txt" 2>&1
echo "ncu quant rc=$?" >> "$OUT/summary.txt"
timeout 90 ncu --clock-control none -k regex:fp4_splitk --launch-skip 2 --launch-count 1 $SECTIONS \
  python3 /tmp/splitk_case.py > "$OUT/ncu-splitk.txt" 2>&1
echo "ncu splitk rc=$?" >> "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
