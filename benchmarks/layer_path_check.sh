#!/usr/bin/env bash
# Issue 15/16 on a lent GPU (one call, timeout_s 600): the GPU tests of the core, then the
# layer-path measurements: host overhead, activation quantization, the layer benchmark
# (tuned), and auto on prepared weights against every backend. Logs and JSON under $OUT.
# Carry .whl and .carry/jit (see device_env.sh); TEST_K narrows the tests (pytest -k).  STEPS="tests host quant layer auto e2e" selects.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
mkdir -p "$OUT/work"
export FP4CORE_TUNING_CACHE=$OUT/work/tuning-cache.json
# at most 8 files come back: the logs go to $OUT/work and come back as one archive
trap 'tar czf "$OUT/logs.tgz" -C "$OUT" work' EXIT
STEPS=${STEPS:-"tests host quant layer auto"}
has() { [[ " $STEPS " == *" $1 "* ]]; }
if has tests; then
  for d in ${TEST_DIRS:-tests plugins/fp4-trtllm/tests plugins/fp4-cutlass/tests plugins/fp4-cudnn/tests}; do
    timeout ${TEST_CAP:-150} python3 -m pytest -q -p no:cacheprovider --tb=short -rfE -m gpu ${TEST_K:+-k "$TEST_K"} $d \
      > "$OUT/work/tests-${d//\//_}.log" 2>&1
    echo "tests $d rc=$? $(tail -1 "$OUT/work/tests-${d//\//_}.log")" | tee -a "$OUT/summary.txt"
  done
fi
if has host; then
  timeout ${HOST_CAP:-150} python3 benchmarks/host_overhead.py --json "$OUT/work/host.json" 2>&1 | tee "$OUT/host.txt"
  echo "host rc=$?" >> "$OUT/summary.txt"; cp "$OUT/host.txt" "$OUT/work/"
fi
if has quant; then
  timeout 60 fp4core bench --quantize --m 16,2048,8192 --k 8192 2>"$OUT/work/quant-progress.log" | tee "$OUT/quant.txt"
  echo "quant rc=$?" >> "$OUT/summary.txt"
fi
if has layer; then
  timeout ${LAYER_CAP:-240} fp4core bench --layer --preset llama3-70b --m ${LAYER_M:-1,16,128,2048} --autotune \
    --json "$OUT/work/layer.json" 2>"$OUT/work/layer-progress.log" | tee "$OUT/layer.txt"
  echo "layer rc=$?" >> "$OUT/summary.txt"
fi
if has auto; then
  timeout ${AUTO_CAP:-200} python3 benchmarks/auto_prepared.py --m ${AUTO_M:-1,16,128,2048,8192} \
    --json "$OUT/work/auto.json" 2>&1 | tee "$OUT/auto.txt"
  echo "auto rc=$?" >> "$OUT/summary.txt"
fi
if has e2e; then  # carry .carry/minilm (python examples/e2e_model.py --export .carry/minilm)
  timeout ${E2E_CAP:-240} python3 examples/e2e_model.py ${E2E_ARGS:-} --json "$OUT/work/e2e.json" \
    2>"$OUT/work/e2e-progress.log" | tee "$OUT/e2e.txt"
  echo "e2e rc=$?" >> "$OUT/summary.txt"
fi
cat "$OUT/summary.txt"
