#!/usr/bin/env bash
# One device call (timeout_s 600): the GPU byte-equality tests of the quantization kernels and
# the fp4-trtllm GPU tests (every tactic against the exact reference), the quantization tile
# sweep and `fp4core bench --quantize` on large inputs, and the fp4-trtllm decode table on
# the three Llama-70B layers at M = 1, 8, 16 (every tactic beside bf16 cuBLAS and the copy
# bandwidth of the same run). Everything comes back in logs.tgz.
# See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/quant_decode_check.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
T="-q -p no:cacheprovider --tb=short -rfE -m gpu"
timeout 90 python3 -m pytest $T tests/test_quantize_gpu.py > "$OUT/tests-quant.log" 2>&1
echo "quant tests rc=$? $(tail -1 "$OUT/tests-quant.log")" > "$OUT/summary.txt"
timeout 110 python3 -m pytest $T plugins/fp4-trtllm/tests > "$OUT/tests-trtllm.log" 2>&1
echo "trtllm tests rc=$? $(tail -1 "$OUT/tests-trtllm.log")" >> "$OUT/summary.txt"
timeout 45 python3 -c "
from fp4core.tools.bench_quant import sweep_configs, tiles_env
best = sweep_configs()
print('best', best); print('FP4CORE_QUANT_TILES=' + tiles_env(best))" > "$OUT/quant-sweep.txt" 2>&1
timeout 40 fp4core bench --quantize --m 2048,8192 --json "$OUT/quant.json" 2>/dev/null > "$OUT/quant.txt"
timeout ${DECODE_CAP:-110} python3 plugins/fp4-trtllm/bench_trtllm.py --verbose --m 1,8,16 \
  --shapes 8192:8192,28672:8192,8192:28672 --out "$OUT/trtllm.md" > "$OUT/trtllm.log" 2>&1
echo "trtllm bench rc=$?" >> "$OUT/summary.txt"
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
