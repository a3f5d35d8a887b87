#!/usr/bin/env bash
# One device call (timeout_s 600): the GPU tests of the core (timer, tuner, quantization,
# custom op) and of fp4-cudnn in full, then fp4-cudnn's prefill targets in two tuned
# `fp4core bench` runs beside bf16 cuBLAS (interleaved), to see their spread. Everything comes
# back in logs.tgz. See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/final_cudnn_check.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
T="-q -p no:cacheprovider --tb=short -rfE -m gpu"
timeout 150 python3 -m pytest $T tests > "$OUT/tests-core.log" 2>&1
echo "core tests rc=$? $(tail -1 "$OUT/tests-core.log")" > "$OUT/summary.txt"
timeout 120 python3 -m pytest $T plugins/fp4-cudnn/tests > "$OUT/tests-cudnn.log" 2>&1
echo "cudnn tests rc=$? $(tail -1 "$OUT/tests-cudnn.log")" >> "$OUT/summary.txt"
for run in a b; do
  FP4CORE_BACKENDS=cudnn timeout 110 fp4core bench --shapes-file benchmarks/shapes/cudnn-targets.txt \
    --autotune --json "$OUT/cudnn-targets-$run.json" 2>"$OUT/cudnn-targets-$run-progress.log" > "$OUT/cudnn-targets-$run.txt"
  echo "cudnn targets $run rc=$?" >> "$OUT/summary.txt"
done
cat "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
