#!/usr/bin/env bash
# One device call (timeout_s 600): the read-bandwidth probe of the decode kernels' access
# pattern (benchmarks/stream_probe.cu), then the GPU tests of the core package (PyTorch
# integration, quantization bytes, CUDA graphs, allocations) on the final tree. Everything
# comes back in logs.tgz. See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/probe_and_verify.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
{ nvcc -O3 -arch=sm_90a -o /tmp/stream_probe benchmarks/stream_probe.cu && timeout 60 /tmp/stream_probe; } \
  > "$OUT/stream-probe.txt" 2>&1
echo "probe rc=$?" > "$OUT/summary.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider --tb=short -rfE -m gpu tests > "$OUT/tests-core.log" 2>&1
echo "core tests rc=$? $(tail -1 "$OUT/tests-core.log")" >> "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
