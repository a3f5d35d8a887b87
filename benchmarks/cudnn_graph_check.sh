#!/usr/bin/env bash
# One device call (timeout_s 240): fp4-cudnn's best plan and bf16 cuBLAS at M = 4096 on
# 8192 x 8192, eager vs CUDA-graph replay (plugins/fp4-cudnn/scripts/graph_vs_eager.py),
# and whether an eager call blocks the host (scripts/host_block_probe.py).
#   run: bash benchmarks/cudnn_graph_check.sh
set -uo pipefail
export FP4CORE_BACKENDS=cudnn
source "$(dirname "$0")/device_env.sh" > /dev/null
timeout 90 python3 plugins/fp4-cudnn/scripts/graph_vs_eager.py --shape 4096:8192:8192 > "$OUT/graph_vs_eager.txt" 2>&1
timeout 60 python3 plugins/fp4-cudnn/scripts/host_block_probe.py --shape 4096:8192:8192 >> "$OUT/graph_vs_eager.txt" 2>&1
echo "rc=$?" >> "$OUT/graph_vs_eager.txt"
cat "$OUT/graph_vs_eager.txt"
