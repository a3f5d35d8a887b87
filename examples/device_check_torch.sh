#!/usr/bin/env bash
# One device call for the PyTorch integration (issue 6): install fp4core (+ fp4-trtllm, whose
# kernel library comes prebuilt in .carry/pt-jit), run the GPU tests of the custom ops,
# Fp4Linear and the Triton quantizers, the quantizer tile sweep and `fp4core bench --quantize`
# (with the sweep's best tiles), and the end-to-end MiniLM example (weights from .carry/minilm).
#   run with carry [".carry/minilm", ".carry/pt-jit"] and timeout_s 600 (about 7 minutes); logs under $OUT
# The GPU tests run twice: with FP4CORE_BACKENDS=torch (fp4core's own code only) and with every
# installed backend (a plugin's kernel then sits under the custom op, Fp4Linear and CUDA graphs).
set -uo pipefail
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -d .carry/pt-jit ] && export FP4CORE_JIT_CACHE=$PWD/.carry/pt-jit
export FP4CORE_TUNING_CACHE=/tmp/fp4core-tuning.json
PY=python3
$PY -m pip install -q --no-deps --no-build-isolation -e . -e plugins/fp4-trtllm 2>&1 | tail -2
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader; date -u
  $PY -c "import torch, triton, fp4core; print('torch', torch.__version__, 'triton', triton.__version__);
print([(b.name, b.status, b.error) for b in fp4core.backends()])"; } 2>&1 | tee "$OUT/device.txt"
T="-q -p no:cacheprovider -m gpu --timeout 90 --tb=short -rfEs"
FP4CORE_BACKENDS=torch timeout 150 $PY -m pytest $T tests/test_ops.py tests/test_nn.py 2>&1 | tee "$OUT/tests-torch.log" | tail -15
timeout 120 $PY -m pytest $T tests/test_ops.py tests/test_nn.py 2>&1 | tee "$OUT/tests-all.log" | tail -15
timeout 120 $PY -m pytest $T tests/test_quantize_gpu.py 2>&1 | tee "$OUT/tests-quant.log" | tail -8
timeout 40 $PY -c "
from fp4core.tools.bench_quant import sweep_configs, tiles_env
print('TILES=' + tiles_env(sweep_configs(progress=lambda s: print(s, flush=True))))" 2>&1 | tee "$OUT/sweep.log" | tail -2
TILES=$(grep '^TILES=' "$OUT/sweep.log" | cut -d= -f2-)
[ -n "$TILES" ] && export FP4CORE_QUANT_TILES="$TILES"
echo "FP4CORE_QUANT_TILES=${FP4CORE_QUANT_TILES:-default}" | tee -a "$OUT/device.txt"
timeout 60 $PY -m fp4core.tools.cli bench --quantize --m 1,16,2048,8192 --json "$OUT/quant.json" 2>"$OUT/quant_progress.log" | tee "$OUT/quant_bench.txt"
timeout 100 $PY examples/e2e_model.py --repeat 8 --json "$OUT/e2e.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/e2e.log"
