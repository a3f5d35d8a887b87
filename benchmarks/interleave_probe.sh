#!/usr/bin/env bash
# One device call (timeout_s 240): plugins/fp4-cudnn/scripts/interleave_probe.py at M = 4096
# on 8192² with cuDNN plans eng0 and eng4 -- does bf16 slow down when its batches alternate
# with cudnn's? See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/interleave_probe.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh" > /dev/null
for eng in eng0 eng4; do
  timeout 90 python3 plugins/fp4-cudnn/scripts/interleave_probe.py --shape 4096:8192:8192 --engine $eng --rounds 2 \
    >> "$OUT/interleave.txt" 2>&1
done
cat "$OUT/interleave.txt"
