#!/usr/bin/env bash
# One device call: install fp4core + fp4-cutlass from the working tree (nvidia-cutlass from the
# carried .whl/), run the plugin's tests (GPU-marked included), compute-sanitizer memcheck on a
# small case, the SASS instruction mix, timings beside bf16 cuBLAS and an ncu profile.
#   run: bash plugins/fp4-cutlass/device_check.sh   (carry .whl and .carry/cutlass-jit)
# Env: STEPS="tests memcheck bench ncu fp4bench" (default: all), BENCH_ARGS for bench_cutlass.py.
set -uo pipefail
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=${STEPS:-"tests memcheck sass bench ncu fp4bench"}
if ls .whl/nvidia_cutlass*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cutlass*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
[ -d .carry/cutlass-jit ] && export FP4CORE_JIT_CACHE=$PWD/.carry/cutlass-jit
python3 -m pip install -q --no-deps --no-build-isolation -e . -e plugins/fp4-cutlass 2>&1 | tail -2
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader; date -u; nvcc --version | tail -2; } | tee "$OUT/device.txt"
timeout 120 fp4core build --arch sm_90a --backends cutlass 2>&1 | tail -3 | tee "$OUT/build.txt"
SO=$(ls ${FP4CORE_JIT_CACHE:-$HOME/.cache/fp4core/jit}/fp4_cutlass_sm90-*/libfp4_cutlass_sm90.so | head -1)
if [[ " $STEPS " == *" sass "* ]]; then
  cuobjdump -sass "$SO" > "$OUT/sass.txt" 2>&1
  awk '/Function : .*fp4_gemm_kernelILi256ELi128ELb0E/{f=1;next} f&&/Function :/{f=0} f' "$OUT/sass.txt" | \
    grep -oE '^\s+/\*[0-9a-f]{4}\*/\s+[A-Z][A-Z0-9.]+' | awk '{print $2}' | sed 's/\..*//' | sort | uniq -c | sort -rn | head -25 > "$OUT/sass-mix.txt"
  head -12 "$OUT/sass-mix.txt"
fi
if [[ " $STEPS " == *" tests "* ]]; then
  timeout 60 python3 -m pytest -q -p no:cacheprovider -x plugins/fp4-cutlass/tests 2>&1 | tee "$OUT/tests.log" | tail -15
fi
if [[ " $STEPS " == *" memcheck "* ]]; then
  cat > /tmp/small_case.py <<'PY'
import torch, fp4core
from fp4core.dispatch.synthetic import random_operands
from fp4_cutlass.plugin import CutlassBackend, CutlassTactic
be = CutlassBackend()
for nv in (True, False):
    p = fp4core.make_problem(33, 320, 1088, use_nvfp4=nv, use_8x4_sf_layout=not nv, device="cuda")
    ops = random_operands(p, device="cuda")
    out = torch.empty(33, 320, dtype=torch.bfloat16, device="cuda")
    for tac in (CutlassTactic(tm=64, bn=128, split_k=1, cluster=2), CutlassTactic(tm=32, bn=64, split_k=3, cluster=1, deep=1),
                CutlassTactic(tm=256, bn=64, split_k=1, cluster=2), CutlassTactic(tm=16, bn=128, split_k=2, cluster=2, deep=1),
                CutlassTactic(tm=128, bn=64, split_k=1, cluster=1, deep=1)):
        be.run(p, ops, tac, out)
torch.cuda.synchronize(); print("small case done")
PY
  timeout 60 compute-sanitizer --tool memcheck --error-exitcode 3 python3 /tmp/small_case.py 2>&1 | tail -6 | tee "$OUT/memcheck.txt"
fi
if [[ " $STEPS " == *" bench "* ]]; then
  timeout 130 python3 plugins/fp4-cutlass/bench_cutlass.py ${BENCH_ARGS:-} --out "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log" | tail -14
fi
if [[ " $STEPS " == *" ncu "* ]]; then
  cat > /tmp/ncu_case.py <<'PY'
import torch, fp4core
from fp4core.dispatch.synthetic import random_operands
from fp4_cutlass.plugin import CutlassBackend, CutlassTactic
be = CutlassBackend()
for m, tacs in ((128, [CutlassTactic(tm=128, bn=64, split_k=1, cluster=1, deep=0),
                       CutlassTactic(tm=128, bn=64, split_k=1, cluster=1, deep=1)]),
                (4096, [CutlassTactic(tm=256, bn=128, split_k=1, cluster=1, deep=0)])):
    p = fp4core.make_problem(m, 8192, 8192, device="cuda")
    ops = random_operands(p, device="cuda")
    out = torch.empty(m, 8192, dtype=torch.bfloat16, device="cuda")
    for tac in tacs:
        be.run(p, ops, tac, out)
torch.cuda.synchronize()
PY
  timeout ${NCU_TIMEOUT:-90} ncu --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
    -k regex:"fp4_gemm_kernel|act_dequant" -c 6 python3 /tmp/ncu_case.py > "$OUT/ncu.txt" 2>&1
  grep -E "^  [a-z].*(fp4_gemm|act_dequant)|Duration|Compute \(SM\) Th|L2 Cache Th|DRAM Th" "$OUT/ncu.txt" | head -40
fi
if [[ " $STEPS " == *" fp4bench "* ]]; then
  timeout 130 fp4core bench --backends cutlass --autotune --m 128,256,2048,4096 --n 8192,28672 --k 8192 --json "$OUT/fp4core-bench.json" 2>&1 | tee "$OUT/fp4core-bench.txt" | tail -20
fi
