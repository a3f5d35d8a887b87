#!/usr/bin/env bash
# One device call: install fp4core + fp4-trtllm from the working tree, run the plugin's tests
# (GPU-marked included), a compute-sanitizer memcheck on a small case, the SASS instruction mix,
# and the timing table beside bf16 cuBLAS and the copy bandwidth. Logs under $OUT.
#   run: bash plugins/fp4-trtllm/device_check.sh          (carry .carry/jit to skip the build)
set -uo pipefail
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -d .carry/jit ] && export FP4CORE_JIT_CACHE=$PWD/.carry/jit
PY=python3
$PY -m pip install -q --no-deps --no-build-isolation -e . -e plugins/fp4-trtllm 2>&1 | tail -2
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader; date -u; nvcc --version | tail -2; } | tee "$OUT/device.txt"
# Build once (cache hit when carried), and dump the instruction mix of the main kernel.
$PY - <<'PY' 2>&1 | tee "$OUT/build.txt"
import torch, subprocess, fp4core
from fp4_trtllm import launcher
lib = launcher.library(launcher.arch_for(torch.cuda.get_device_capability()))
path = fp4core.jit.build(launcher.LIB_NAME, [launcher.SOURCE], arch="sm_90a", flags=["-lineinfo"])
print("library", path)
PY
SO=$(ls ${FP4CORE_JIT_CACHE:-$HOME/.cache/fp4core/jit}/fp4_trtllm_gemv-*/libfp4_trtllm_gemv.so | head -1)
cuobjdump -sass "$SO" > "$OUT/sass.txt" 2>&1 && \
  awk '/Function : .*Lb0ELi2ELi2ELi4E/{f=1} f&&/Function : .*Lb0ELi2ELi4/{f=0} f' "$OUT/sass.txt" | \
  grep -oE '^\s+/\*[0-9a-f]{4}\*/\s+[A-Z][A-Z0-9.]+' | awk '{print $2}' | sed 's/\..*//' | sort | uniq -c | sort -rn | head -20 | tee "$OUT/sass-mix.txt"
timeout 200 $PY -m pytest -q -p no:cacheprovider --maxfail=10 plugins/fp4-trtllm/tests 2>&1 | tee "$OUT/tests.log" | tail -12
cat > /tmp/small_case.py <<'PY'
import torch, fp4core
from fp4core.synthetic import random_operands
from fp4_trtllm.plugin import TrtllmBackend
be = TrtllmBackend()
for nv in (True, False):
    p = fp4core.make_problem(33, 1040, 640, use_nvfp4=nv, use_8x4_sf_layout=not nv, prepared=True, device="cuda")
    ops = random_operands(p, device="cuda")
    w = be.prepare(p.with_m(None), fp4core.Operands(None, None, ops.b, ops.b_scale))
    out = torch.empty(33, 1040, dtype=torch.bfloat16, device="cuda")
    for tac in be.tactics(p):
        be.run(p, w.with_activation(ops.a, ops.a_scale, ops.alpha), tac, out)
torch.cuda.synchronize(); print("small case done")
PY
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 $PY /tmp/small_case.py 2>&1 | tail -5 | tee "$OUT/memcheck.txt"
timeout 150 $PY plugins/fp4-trtllm/bench_trtllm.py --out "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log"
