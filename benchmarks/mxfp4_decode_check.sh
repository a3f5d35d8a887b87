#!/usr/bin/env bash
# One device call (timeout_s 300): the fp4-trtllm decode table for MXFP4 (every tactic
# checked against the exact reference, then timed beside bf16 cuBLAS) on the three Llama-70B
# layers at M = 1, 8, 16. See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/mxfp4_decode_check.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh" > /dev/null
timeout 200 python3 plugins/fp4-trtllm/bench_trtllm.py --mx --verbose --m 1,8,16 \
  --shapes 8192:8192,28672:8192,8192:28672 --out "$OUT/trtllm-mx.md" > "$OUT/trtllm-mx.log" 2>&1
echo "rc=$?"; cat "$OUT/trtllm-mx.md"
