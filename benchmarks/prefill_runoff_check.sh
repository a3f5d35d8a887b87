#!/usr/bin/env bash
# One device call (timeout_s 480): the GPU tests of the tuner and the custom op, then the
# short prefill target sweep (`fp4core bench --autotune` with cutlass, trtllm, cudnn beside
# bf16 cuBLAS), which exercises the tuner's interleaved runoff. Everything in logs.tgz.
# See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/prefill_runoff_check.sh
set -uo pipefail
export FP4CORE_BACKENDS=${FP4CORE_BACKENDS:-cutlass,trtllm,cudnn}
source "$(dirname "$0")/device_env.sh"
timeout 60 python3 -m pytest -q -p no:cacheprovider --tb=short -rfE -m gpu tests/test_tuning.py tests/test_ops.py \
  > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")" > "$OUT/summary.txt"
timeout ${PREFILL_CAP:-170} fp4core bench --shapes-file benchmarks/shapes/h100-prefill-short.txt --autotune \
  --json "$OUT/prefill.json" 2>"$OUT/prefill-progress.log" > "$OUT/prefill.txt"
echo "prefill rc=$?" >> "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
