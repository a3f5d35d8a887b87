#!/usr/bin/env bash
# One call on a lent GPU: install fp4core and every plugin from the working tree, run all
# tests (GPU-marked included), then the standard `fp4core bench` sweep (JSON, PNG plot and
# logs under $OUT). See device_env.sh for the wheels to carry.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
for t in tests plugins/*/tests examples/fp4-triton/tests; do
  [ -d "$t" ] && python3 -m pytest -q -p no:cacheprovider "$t" 2>&1 | tee -a "$OUT/tests.log" | tail -4
done
fp4core bench --m 1,16,128,256,2048,8192 --n 8192 --k 8192 --json "$OUT/bench-8192x8192.json" \
  --plot "$OUT/bench-8192x8192.png" "$@" 2>"$OUT/bench-progress.log" | tee "$OUT/bench.txt"
fp4core bench --m 1,16,2048 --n 28672 --k 8192 --json "$OUT/bench-28672x8192.json" "$@" \
  2>>"$OUT/bench-progress.log" | tee -a "$OUT/bench.txt"
