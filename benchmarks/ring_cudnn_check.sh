#!/usr/bin/env bash
# One device call (timeout_s 600): fp4-trtllm's GPU tests with compute-sanitizer memcheck and
# racecheck on a small case (the first tactics include a shared-memory ring one), its decode
# table on the three Llama-70B layers at M = 1, 8, 16 (every tactic beside bf16 cuBLAS), and
# fp4-cudnn's prefill targets in a tuned `fp4core bench` beside bf16 cuBLAS (interleaved).
# Everything comes back in logs.tgz. See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/ring_cudnn_check.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
SANITIZERS="memcheck racecheck" SANITIZER_TIMEOUT=60 TEST_TIMEOUT=120 NCU= \
  bash plugins/fp4-trtllm/device_check.sh tests > "$OUT/trtllm-tests.txt" 2>&1
echo "trtllm tests: $(grep -E 'passed|failed' "$OUT/trtllm-tests.txt" | tail -1)" > "$OUT/summary.txt"
grep -A3 "^== " "$OUT/trtllm-tests.txt" >> "$OUT/summary.txt"
trtllm_bench trtllm ${DECODE_CAP:-170} 1,8,16 8192:8192,28672:8192,8192:28672
cudnn_bench cudnn-prefill ${PREFILL_CAP:-200} benchmarks/shapes/cudnn-targets.txt
cat "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
