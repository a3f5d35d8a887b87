#!/usr/bin/env bash
# One device call: install fp4core + fp4-triton (+ the repo's plugins in "full" mode) from
# the working tree, then
#   sweep: time the backend's tactics (--explore: wider) beside bf16 cuBLAS, then GPU tests
#   full:  GPU tests (3 parallel pytest processes) while the bench shapes' kernels compile
#          (4 processes), then `fp4core bench --autotune` of every installed backend, one M
#          at a time (a shared tuning cache; a timeout loses one shape, not the table)
# Logs under $OUT.  run: bash examples/fp4-triton/device_check.sh full   (carry .whl, .carry/jit)
set -uo pipefail
MODE=${1:-full}
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-cache FP4CORE_TUNING_CACHE=$OUT/tuning.json
[ -d .carry/jit ] && export FP4CORE_JIT_CACHE=$PWD/.carry/jit
PY=python3
T0=$(date +%s)
left() { echo $(( ${BUDGET:-280} - ($(date +%s) - T0) )); }
MS=${BENCH_M:-1,16,64,128,256,1024,2048,8192}
if [ "$MODE" = full ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
  EXTRA="-e plugins/fp4-cudnn -e plugins/fp4-trtllm"
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . -e examples/fp4-triton ${EXTRA:-} 2>&1 | tail -2
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } | tee "$OUT/device.txt"
$PY -m fp4core.tools.cli backends 2>&1 | tee "$OUT/backends.txt"
if [ "$MODE" = sweep ]; then
  timeout 175 $PY examples/fp4-triton/bench_triton.py --explore --json "$OUT/sweep-nvfp4.json" --md "$OUT/sweep-nvfp4.md" 2>&1 | tee "$OUT/sweep.log" | grep -E "^\||FAILED|Error" | tail -40
  timeout $(left) $PY -m pytest -q -p no:cacheprovider -x examples/fp4-triton/tests -k "not every_tactic" 2>&1 | tee "$OUT/tests.log" | tail -15
  exit 0
fi
T=examples/fp4-triton/tests
timeout 120 $PY -m pytest -q -p no:cacheprovider $T -k "every_tactic and nvfp4" > "$OUT/tests-1.log" 2>&1 &
timeout 120 $PY -m pytest -q -p no:cacheprovider $T -k "every_tactic and mxfp4" > "$OUT/tests-2.log" 2>&1 &
timeout 120 $PY -m pytest -q -p no:cacheprovider $T -k "not every_tactic" > "$OUT/tests-3.log" 2>&1 &
for w in 0 1 2 3; do
  timeout 120 $PY - "$w" "$MS" > "$OUT/prewarm-$w.log" 2>&1 <<'PY' &
import sys, torch, fp4core
from fp4core.testing import canonical_operands
from fp4_triton.plugin import TritonBackend
w, ms = int(sys.argv[1]), [int(x) for x in sys.argv[2].split(",")]
be = TritonBackend()
jobs = [(m, t) for m in ms for t in be.tactics(fp4core.make_problem(m, 8192, 8192, device="cuda"))]
for m, t in jobs[w::4]:
    p = fp4core.make_problem(m, 8192, 8192, device="cuda")
    out = torch.empty(m, 8192, dtype=torch.bfloat16, device="cuda")
    try:
        be.run(p, canonical_operands(p), t, out); torch.cuda.synchronize(); print("ok", m, t)
    except Exception as e:
        print("FAILED", m, t, type(e).__name__, str(e)[:300])
PY
done
wait
tail -n 3 "$OUT"/tests-*.log; grep -h FAILED "$OUT"/prewarm-*.log | head; echo "tests+prewarm done at $(( $(date +%s) - T0 )) s"
for m in ${MS//,/ }; do
  [ "$(left)" -gt 15 ] || { echo "out of time before M=$m"; break; }
  timeout $(left) $PY -m fp4core.tools.cli bench --autotune --m $m --n 8192 --k 8192 --json "$OUT/bench-m$m.json" 2>&1 | tee -a "$OUT/bench.log" | grep -v "^\s*$" | tail -8
done
echo "total $(( $(date +%s) - T0 )) s"
