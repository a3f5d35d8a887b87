#!/usr/bin/env bash
# One device call (timeout_s 600): the GPU tests of the timer lead, of fp4-cudnn's
# dequantization kernel and of fp4-trtllm (every tactic, the L2-prefetch split-K ones
# included, against the exact reference); fp4-cudnn's dequantization tile sweep and its
# prefill shapes split into halves beside bf16 cuBLAS (scripts/bench.py); the fp4-trtllm
# decode table (every tactic beside bf16 cuBLAS). Everything comes back in logs.tgz.
# See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/dequant_prefetch_check.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
T="-q -p no:cacheprovider --tb=short -rfE -m gpu"
timeout 60 python3 -m pytest $T tests/test_timing.py plugins/fp4-cudnn/tests/test_gpu.py -k "timing or lead or dequant" \
  > "$OUT/tests-timing-dequant.log" 2>&1
echo "timing+dequant tests rc=$? $(tail -1 "$OUT/tests-timing-dequant.log")" > "$OUT/summary.txt"
timeout 200 python3 -m pytest $T plugins/fp4-trtllm/tests > "$OUT/tests-trtllm.log" 2>&1
echo "trtllm tests rc=$? $(tail -1 "$OUT/tests-trtllm.log")" >> "$OUT/summary.txt"
FP4CORE_BACKENDS=cudnn timeout 100 python3 plugins/fp4-cudnn/scripts/bench.py --dequant-sweep \
  --shape 4096:8192:8192 --shape 2048:8192:8192 --json "$OUT/cudnn.json" > "$OUT/cudnn.txt" 2>&1
echo "cudnn bench rc=$?" >> "$OUT/summary.txt"
timeout ${DECODE_CAP:-150} python3 plugins/fp4-trtllm/bench_trtllm.py --verbose --m 1,16 \
  --shapes 8192:8192,28672:8192,8192:28672 --out "$OUT/trtllm.md" > "$OUT/trtllm.log" 2>&1
echo "trtllm bench rc=$?" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
