#!/usr/bin/env bash
# One device call (timeout_s 300): fp4-cudnn at the prefill targets split into its halves
# (fused dequantization alone, cuDNN matmul plan alone, default and best plan) beside bf16
# cuBLAS, with plugins/fp4-cudnn/scripts/bench.py. Everything comes back in logs.tgz.
#   run: bash benchmarks/cudnn_split_check.sh
set -uo pipefail
export FP4CORE_BACKENDS=cudnn
source "$(dirname "$0")/device_env.sh"
timeout ${CAP:-150} python3 plugins/fp4-cudnn/scripts/bench.py --shape 4096:8192:8192 --shape 2048:8192:8192 \
  --json "$OUT/cudnn.json" > "$OUT/cudnn.txt" 2>&1
echo "cudnn bench rc=$?" > "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
