#!/usr/bin/env bash
# One device call: install fp4core + fp4-trtllm from the working tree, run the plugin's tests
# (GPU-marked included), compute-sanitizer memcheck + racecheck on a small case, the SASS
# instruction mix, an ncu summary of one launch, and the timing table beside bf16 cuBLAS and
# the copy bandwidth. Logs under $OUT.
#   run: bash plugins/fp4-trtllm/device_check.sh [tests|bench|all]  (carry .carry/trtllm-jit: no nvcc wait)
#   env: BENCH_ARGS (passed to bench_trtllm.py), TEST_TIMEOUT, BENCH_TIMEOUT, SANITIZERS, SANITIZER_TIMEOUT
set -uo pipefail
MODE=${1:-all}
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -d .carry/trtllm-jit ] && export FP4CORE_JIT_CACHE=$PWD/.carry/trtllm-jit
PY=python3
$PY -m pip install -q --no-deps --no-build-isolation -e . -e plugins/fp4-trtllm 2>&1 | tail -2
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader; date -u; nvcc --version | tail -2; } | tee "$OUT/device.txt"
# Build once (a cache hit when carried) and dump the instruction mix of the M<=8 kernel.
$PY - <<'PY' 2>&1 | tee "$OUT/build.txt"
import fp4core
from fp4_trtllm import launcher
print("library", fp4core.kit.jit.build(launcher.LIB_NAME, list(launcher.SOURCES), arch="sm_90a", flags=list(launcher.FLAGS)))
PY
SO=$(ls ${FP4CORE_JIT_CACHE:-$HOME/.cache/fp4core/jit}/fp4_trtllm_gemv-*/libfp4_trtllm_gemv.so | head -1)
cuobjdump -sass "$SO" > /tmp/sass.txt 2>&1 && \
  awk '/Function : .*fp4_sk_kernelILb0ELi4ELi1E/{f=1;next} /Function : /{f=0} f' /tmp/sass.txt > /tmp/k41.txt && \
  { echo "instruction mix, NVFP4 T=4 NT=1 kernel ($(wc -l < /tmp/k41.txt) lines)";
    grep -oE '^\s+/\*[0-9a-f]{4}\*/\s+[A-Z][A-Z0-9.]+' /tmp/k41.txt | awk '{print $2}' | sed 's/\..*//' | sort | uniq -c | sort -rn | head -24; } > "$OUT/sass-mix.txt"
if [ "$MODE" != bench ]; then
  timeout ${TEST_TIMEOUT:-120} $PY -m pytest -q -p no:cacheprovider --maxfail=10 -m "${TEST_MARK:-gpu}" plugins/fp4-trtllm/tests 2>&1 | tee "$OUT/tests.log" | tail -15
  cat > /tmp/small_case.py <<'PY'
import torch, fp4core
from fp4core.dispatch.synthetic import random_operands
from fp4_trtllm.plugin import TrtllmBackend
be = TrtllmBackend()
for nv, m in ((True, 33), (False, 5)):
    p = fp4core.make_problem(m, 1040, 640, use_nvfp4=nv, use_8x4_sf_layout=not nv, prepared=True, device="cuda")
    ops = random_operands(p, device="cuda")
    w = be.prepare(p.with_m(None), fp4core.Operands(None, None, ops.b, ops.b_scale))
    out = torch.empty(m, 1040, dtype=torch.bfloat16, device="cuda")
    for tac in be.tactics(p)[:3]:
        be.run(p, w.with_activation(ops.a, ops.a_scale, ops.alpha), tac, out)
torch.cuda.synchronize(); print("small case done")
PY
  for tool in ${SANITIZERS:-memcheck racecheck}; do
    echo "== $tool"; timeout ${SANITIZER_TIMEOUT:-40} compute-sanitizer --tool $tool --error-exitcode 3 $PY /tmp/small_case.py 2>&1 | tail -4
  done | tee "$OUT/sanitizer.txt"
fi
if [ "$MODE" != tests ] && [ -n "${NCU-1}" ]; then
  # One profiled launch per tactic of M=1 8192x8192 NVFP4: DRAM throughput, stall reasons.
  cat > /tmp/ncu_case.py <<'PY'
import torch, fp4core
from fp4core.dispatch.synthetic import random_operands
from fp4_trtllm.plugin import TrtllmBackend
be = TrtllmBackend()
p = fp4core.make_problem(1, 8192, 8192, prepared=True, device="cuda")
ops = random_operands(p, device="cuda")
w = be.prepare(p.with_m(None), fp4core.Operands(None, None, ops.b, ops.b_scale)).with_activation(ops.a, ops.a_scale, ops.alpha)
out = torch.empty(1, 8192, dtype=torch.bfloat16, device="cuda")
for tac in be.tactics(p)[:3]:
    print(tac)
    for _ in range(3):
        be.run(p, w, tac, out)
torch.cuda.synchronize()
PY
  timeout ${NCU_TIMEOUT:-60} ncu --clock-control none -k regex:fp4_ --launch-count 9 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats --section ComputeWorkloadAnalysis \
    $PY /tmp/ncu_case.py > "$OUT/ncu.txt" 2>&1; tail -3 "$OUT/ncu.txt"
fi
if [ "$MODE" != tests ]; then
  timeout ${BENCH_TIMEOUT:-150} $PY plugins/fp4-trtllm/bench_trtllm.py ${BENCH_ARGS:-} --out "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log"
fi
