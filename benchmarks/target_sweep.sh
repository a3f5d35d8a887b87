#!/usr/bin/env bash
# The issues' H100 targets in one tuned `fp4core bench` run beside bf16 cuBLAS (interleaved),
# with the device copy bandwidth from the same call. See device_env.sh for the wheels to carry.
#   run: bash benchmarks/target_sweep.sh [shapes file] [extra fp4core bench args]
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
shapes=${1:-benchmarks/shapes/h100-targets.txt}; shift || true
timeout 240 fp4core build 2>&1 | tail -20 | tee "$OUT/build.txt"
timeout 520 fp4core bench --shapes-file "$shapes" --autotune --json "$OUT/sweep.json" "$@" \
  2>"$OUT/sweep-progress.log" | tee "$OUT/sweep.txt"
