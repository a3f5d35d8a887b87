#!/usr/bin/env bash
# One device call (timeout_s 600): fp4-trtllm's GPU tests (every tactic against the exact
# reference), its decode table at M = 1, 8, 16, 32, 64 on the three Llama-70B layers and
# gpt-oss 2880 x 1024 (every tactic beside bf16 cuBLAS), and fp4-cudnn's standard sweep in a
# tuned `fp4core bench` beside bf16 cuBLAS (interleaved). Everything comes back in logs.tgz.
# See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/balanced_standard_check.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
timeout 90 python3 -m pytest -q -p no:cacheprovider --tb=short -rfE -m gpu plugins/fp4-trtllm/tests \
  > "$OUT/tests-trtllm.log" 2>&1
echo "trtllm tests rc=$? $(tail -1 "$OUT/tests-trtllm.log")" > "$OUT/summary.txt"
trtllm_bench trtllm ${DECODE_CAP:-200} 1,8,16,32,64 8192:8192,28672:8192,8192:28672,2880:1024
cudnn_bench cudnn-standard ${PREFILL_CAP:-220} benchmarks/shapes/cudnn-standard.txt
cat "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
