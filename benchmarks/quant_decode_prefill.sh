#!/usr/bin/env bash
# One device call (timeout_s 600) for the open targets: the GPU tests of the quantization
# kernels, the PyTorch integration and fp4-trtllm; the quantization tile sweep and
# `fp4core bench --quantize`; the fp4-trtllm decode table (every tactic beside bf16 cuBLAS);
# the short prefill target sweep (cutlass, cudnn). Logs under $OUT; caps keep it under 600 s.
# See device_env.sh for what to carry (.whl, .carry/jit).
#   run: bash benchmarks/quant_decode_prefill.sh
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
T="-q -p no:cacheprovider --tb=short -rfE -m gpu"
timeout 100 python3 -m pytest $T tests/test_quantize_gpu.py tests/test_nn.py tests/test_ops.py > "$OUT/tests-core.log" 2>&1
echo "core tests rc=$? $(tail -1 "$OUT/tests-core.log")" | tee "$OUT/summary.txt"
timeout 110 python3 -m pytest $T plugins/fp4-trtllm/tests > "$OUT/tests-trtllm.log" 2>&1
echo "trtllm tests rc=$? $(tail -1 "$OUT/tests-trtllm.log")" | tee -a "$OUT/summary.txt"
timeout 40 python3 -c "
from fp4core.tools.bench_quant import sweep_configs, tiles_env
best = sweep_configs()
print('best', best); print('FP4CORE_QUANT_TILES=' + tiles_env(best))" > "$OUT/quant-sweep.txt" 2>&1
tail -2 "$OUT/quant-sweep.txt" | tee -a "$OUT/summary.txt"
timeout 40 fp4core bench --quantize --m 1,16,2048,8192 --json "$OUT/quant.json" 2>/dev/null > "$OUT/quant.txt"
timeout ${DECODE_CAP:-120} python3 plugins/fp4-trtllm/bench_trtllm.py --verbose --m 1,8,16,32,64 \
  --shapes 8192:8192,28672:8192,8192:28672,2880:1024 --out "$OUT/trtllm.md" > "$OUT/trtllm.log" 2>&1
echo "trtllm bench rc=$?" | tee -a "$OUT/summary.txt"
FP4CORE_BACKENDS=cutlass,trtllm,cudnn timeout ${PREFILL_CAP:-130} fp4core bench \
  --shapes-file benchmarks/shapes/h100-prefill-short.txt --autotune --json "$OUT/prefill.json" \
  2>/dev/null > "$OUT/prefill.txt"
echo "prefill rc=$?" | tee -a "$OUT/summary.txt"
# At most 8 files come back from a device call: everything but the summary goes in one archive.
(cd "$OUT" && tar czf logs.tgz --exclude=summary.txt --exclude=logs.tgz . && find . -type f ! -name summary.txt ! -name logs.tgz -delete)
