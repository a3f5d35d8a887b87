#!/usr/bin/env bash
# The issues' H100 targets in tuned `fp4core bench` runs beside bf16 cuBLAS (timed interleaved),
# with the device copy bandwidth from the same call (timeout_s 600). Only the GPU-kernel
# backends are loaded (FP4CORE_BACKENDS): the torch fallback and the Triton example would
# spend the call compiling and timing tactics that cannot win here.
# See device_env.sh for what to carry.
#   run: bash benchmarks/target_sweep.sh
set -uo pipefail
export FP4CORE_BACKENDS=${FP4CORE_BACKENDS:-cutlass,trtllm,cudnn}
source "$(dirname "$0")/device_env.sh"
S=benchmarks/shapes
SUFFIX=${SUFFIX:-}  # "-short": the subsets for a tight device budget
DT=${DECODE_CAP:-230} PT=${PREFILL_CAP:-230}
timeout 60 fp4core build 2>&1 | tail -5 | tee "$OUT/build.txt"
timeout $DT fp4core bench --shapes-file $S/h100-decode$SUFFIX.txt --autotune --json "$OUT/decode.json" \
  2>"$OUT/decode-progress.log" | tee "$OUT/decode.txt"
timeout $PT fp4core bench --shapes-file $S/h100-prefill$SUFFIX.txt --autotune --json "$OUT/prefill.json" \
  2>"$OUT/prefill-progress.log" | tee "$OUT/prefill.txt"
