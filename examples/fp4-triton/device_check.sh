#!/usr/bin/env bash
# One device call: install fp4core + fp4-triton from the working tree, then (MODE)
#   sweep: time the backend's tactics (--explore: wider) beside bf16 cuBLAS, then the GPU tests
#   full:  the GPU tests, then `fp4core bench --autotune` with every installed backend
# Logs under $OUT. A carried Triton cache (.carry/triton) skips recompiling unchanged kernels.
#   run: bash examples/fp4-triton/device_check.sh sweep
set -uo pipefail
MODE=${1:-sweep}
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
mkdir -p .carry/triton && export TRITON_CACHE_DIR=$PWD/.carry/triton
[ -d .carry/jit ] && export FP4CORE_JIT_CACHE=$PWD/.carry/jit
PY=python3
T0=$(date +%s)
left() { echo $(( ${BUDGET:-280} - ($(date +%s) - T0) )); }
if [ "$MODE" = full ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
  EXTRA="-e plugins/fp4-cudnn -e plugins/fp4-trtllm"
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . -e examples/fp4-triton ${EXTRA:-} 2>&1 | tail -2
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } | tee "$OUT/device.txt"
python3 -m fp4core.cli backends 2>&1 | tee "$OUT/backends.txt"
if [ "$MODE" = sweep ]; then
  timeout 175 $PY examples/fp4-triton/bench_triton.py --explore --json "$OUT/sweep-nvfp4.json" --md "$OUT/sweep-nvfp4.md" 2>&1 | tee "$OUT/sweep.log" | grep -E "^\||FAILED|Error" | tail -40
  timeout $(left) $PY -m pytest -q -p no:cacheprovider -x examples/fp4-triton/tests -k "not every_tactic" 2>&1 | tee "$OUT/tests.log" | tail -15
else
  timeout 110 $PY -m pytest -q -p no:cacheprovider examples/fp4-triton/tests 2>&1 | tee "$OUT/tests.log" | tail -15
  timeout $(left) $PY -m fp4core.cli bench --autotune --m ${BENCH_M:-1,16,64,128,256,1024,2048,8192} --n 8192 --k 8192 \
    --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -60
fi
tar czf "$OUT/triton-cache.tgz" -C .carry triton 2>/dev/null; ls -la "$OUT"
