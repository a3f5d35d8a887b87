#!/usr/bin/env bash
# One call on a lent GPU (timeout_s 600): install fp4core, every plugin and the example plugin
# from the working tree, run the GPU-marked tests of every test folder under a time cap each
# (the CPU tests run in CI; on the GPU machine the compile-only CUDA tests and the CPU compile
# tests would spend the call), then the activation-quantization benchmark. Logs under $OUT.
# See device_env.sh for what to carry (.whl, and .carry with a prebuilt JIT cache:
#   FP4CORE_JIT_CACHE=$PWD/.carry/jit .venv/bin/fp4core build --arch sm_90a).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
T="-q -p no:cacheprovider --tb=short -rfE -m gpu"
step() {  # step SECONDS NAME PYTEST-ARGS...
  local secs=$1 name=$2; shift 2
  echo "== $name (cap ${secs}s)" | tee -a "$OUT/tests.log"
  timeout "$secs" python3 -m pytest $T "$@" > "$OUT/tests-$name.log" 2>&1
  echo "rc=$? $(tail -1 "$OUT/tests-$name.log")" | tee -a "$OUT/tests.log"
}
step 180 core tests
step 90 cutlass plugins/fp4-cutlass/tests
step 100 trtllm plugins/fp4-trtllm/tests
step 70 cudnn plugins/fp4-cudnn/tests
timeout 40 fp4core bench --quantize --m 1,16,2048,8192 --json "$OUT/quant.json" \
  2>"$OUT/quant-progress.log" | tee "$OUT/quant.txt"
step 60 triton examples/fp4-triton/tests
